"""warp in Triton: the ops fastreg::warp_forward_triton and fastreg::warp_backward_triton.

Contract (exactly that of fastreg::warp_forward / warp_backward, see csrc/warp/warp.h):
  image  (B, C, *S_in)       2-D (H, W) or 3-D (D, H, W) spatial; float32/float64/float16/bfloat16
  loc    (Bl, ndim, *S_out)  Bl in {1, B}, dtype of image; channel a moves along spatial axis a
           displacement=True : position = index of the output voxel + loc  (S_out == S_in)
           displacement=False: position = loc (absolute voxel coordinates)
  out    (B, C, *S_out)      image interpolated at the positions
  mode 0 bilinear (linear in every axis) / 1 nearest (round half to even) / 2 bicubic (cubic
  convolution, A = -0.75, over 4 taps per axis, each tap index padded; contract in
  fastreg/ops/warp.py); padding 0 zeros / 1 border / 2 reflection, with
  grid_sample(align_corners=True) semantics and gradients (0 where clamped). A size-1 axis
  always samples index 0; a NaN position gives NaN in every channel (and a NaN position
  gradient in bilinear and bicubic mode, no image-gradient contribution).
  backward(grad_out (B, C, *S_out), image, loc, mode, padding, displacement, output_mask)
  -> (grad_image (B, C, *S_in) or shape (0,), grad_loc (Bl, ndim, *S_out) or shape (0,)),
  grad_loc is zero in nearest mode.

Kernels: one program per BLOCK output voxels of one positions batch item; the stencil
(offsets, weights, d weight / d position of the 2^ndim corners, 4^ndim taps in bicubic mode,
as a (BLOCK, corners) tile)
is built once and reused for every channel and, when the positions broadcast, every batch
item. Arithmetic runs in float32 for float32/float16/bfloat16 and float64 for float64.
Offsets are int64 when a tensor has 2**31 elements or more.

Image gradient: scattered with atomic adds (into a float32 buffer for float16/bfloat16).
When torch.are_deterministic_algorithms_enabled(), it is accumulated in 64-bit fixed point
instead (integer atomics commute, so the result is bit-identical run to run): every
contribution w * g is rounded to a multiple of 1 / scale, scale = 2**(62 - L - e) with
max|grad_out| < 2**e (finite values) and n_out < 2**L; a sum at one image voxel has at most
n_out contributions of magnitude <= max|grad_out|, so it stays below 2**62. Bicubic: the taps
of one output voxel that land on one image voxel (clamped or mirrored indices) weigh at most
sum |w| <= 1.375**ndim < 4 together, so scale = 2**(60 - L - e) there. Rounding adds an
absolute error of at most one unit 2**(e + L - 62) (2**(e + L - 60) bicubic) per
contribution to each image-gradient element, e.g. 4e-12 * max|grad_out| per contribution for
256**3 output voxels. Non-finite
contributions are recorded as flags (NaN, +inf, -inf) and combined as IEEE addition would.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fastreg import _library

_SIZE_ARGS = ["B", "C", "n_in", "n_out", "sz0", "sz1", "sz2", "o1", "o2"]
_INT64_NUMEL = 2**31  # offsets switch to int64 from this many elements in a tensor


@triton.jit
def _source(p, size, PADDING: tl.constexpr):
    """Coordinate sampled along one axis for positions p (per padding) and d coordinate / d p."""
    hi = (size - 1).to(p.dtype)
    g = tl.zeros_like(p) + 1.0
    s = p
    if PADDING != 0:
        if PADDING == 2:  # reflection about the border voxel centres
            neg = s < 0
            s = tl.where(neg, -s, s)
            g = tl.where(neg, -g, g)
            span = tl.maximum(hi, 1.0)  # size-1 axes are overridden below
            if p.dtype == tl.float32:
                flips = tl.floor(tl.math.div_rn(s, span + tl.zeros_like(s)))
            else:
                flips = tl.floor(s / span)
            extra = s % span
            odd = flips % 2.0 != 0
            s = tl.where(odd, span - extra, extra)
            g = tl.where(odd, -g, g)
        low = s <= 0
        high = s >= hi
        s = tl.where(low, 0.0, tl.where(high, hi, s))
        g = tl.where(low | high, 0.0, g)
    single = size == 1  # grid_sample samples index 0 of a size-1 axis
    s = tl.where(single, p * 0.0, s)
    g = tl.where(single, 0.0, g)
    return s, g


@triton.jit
def _linear_axis(p, size, PADDING: tl.constexpr, IDX: tl.constexpr):
    """Lower neighbour index, validity, weights and d weight / d position of both neighbours.
    Weights of invalid neighbours are 0 so that products over axes stay finite."""
    s, g = _source(p, size, PADDING)
    f = tl.floor(s)
    last = (size - 1).to(p.dtype)
    ok0 = (f >= 0) & (f <= last)
    ok1 = (f >= -1) & (f < last)
    i = tl.where((f >= -1) & (f <= last), f, 0.0).to(IDX)
    t = s - f
    w0 = tl.where(ok0, 1.0 - t, 0.0)
    w1 = tl.where(ok1, t, 0.0)
    d0 = tl.where(ok0, -g, 0.0)
    d1 = tl.where(ok1, g, 0.0)
    return i, ok0, ok1, w0, w1, d0, d1


@triton.jit
def _nearest_axis(p, size, PADDING: tl.constexpr, IDX: tl.constexpr):
    """Nearest index (round half to even) and its validity."""
    s, g = _source(p, size, PADDING)
    r = tl.floor(s + 0.5)
    r = tl.where((r - s == 0.5) & (r % 2.0 != 0), r - 1.0, r)
    ok = (r >= 0) & (r <= (size - 1).to(p.dtype))
    i = tl.where(ok, r, 0.0).to(IDX)
    return i, ok


@triton.jit
def _cubic_tap(c, size, PADDING: tl.constexpr, IDX: tl.constexpr):
    """Voxel index read by the integer-valued tap coordinates c, and whether it reads at all
    (zeros padding reads nothing outside the image; border clamps; reflection mirrors)."""
    hi = (size - 1).to(c.dtype)
    ok = c == c
    if PADDING == 0:
        ok = (c >= 0) & (c <= hi)
    if PADDING == 2:
        c, _ = _source(c, size, PADDING)  # mirrored about the border voxel centres, clamped
    i = tl.where(c <= 0, 0.0, tl.where(c >= hi, hi, c)).to(IDX)
    return i, ok


@triton.jit
def _cubic_axis(p, size, PADDING: tl.constexpr, IDX: tl.constexpr):
    """Indices, validity, Keys weights (A = -0.75) and d weight / d position of the taps
    floor(p) - 1 .. floor(p) + 2 of positions p (NaN positions are the caller's)."""
    single = size == 1  # grid_sample maps every finite coordinate of a size-1 axis to 0
    g = tl.where(single, 0.0, 1.0).to(p.dtype)
    p = tl.where(single | (p != p), 0.0, p)
    top = (size + 1).to(p.dtype)
    none = p != p  # all false
    if PADDING == 1:  # beyond [-2, size + 1] every tap clamps to the edge voxel
        p = tl.minimum(tl.maximum(p, -2.0), top)
    else:
        none = ~((p >= -2.0) & (p < top))  # no tap inside
        if PADDING == 2:
            none = none & ((p - p) != 0)  # reflection: only an infinite position reads nothing
        p = tl.where(none, 0.0, p)
    f = tl.floor(p)
    t = p - f
    A: tl.constexpr = -0.75
    x0 = t + 1.0
    x2 = 1.0 - t
    x3 = 2.0 - t
    w0 = ((A * x0 - 5.0 * A) * x0 + 8.0 * A) * x0 - 4.0 * A
    w1 = ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0
    w2 = ((A + 2.0) * x2 - (A + 3.0)) * x2 * x2 + 1.0
    w3 = ((A * x3 - 5.0 * A) * x3 + 8.0 * A) * x3 - 4.0 * A
    d0 = g * ((3.0 * A * x0 - 10.0 * A) * x0 + 8.0 * A)
    d1 = g * ((3.0 * (A + 2.0) * t - 2.0 * (A + 3.0)) * t)
    d2 = -g * ((3.0 * (A + 2.0) * x2 - 2.0 * (A + 3.0)) * x2)
    d3 = -g * ((3.0 * A * x3 - 10.0 * A) * x3 + 8.0 * A)
    i0, ok0 = _cubic_tap(f - 1.0, size, PADDING, IDX)
    i1, ok1 = _cubic_tap(f, size, PADDING, IDX)
    i2, ok2 = _cubic_tap(f + 1.0, size, PADDING, IDX)
    i3, ok3 = _cubic_tap(f + 2.0, size, PADDING, IDX)
    return (i0, i1, i2, i3, ok0 & ~none, ok1 & ~none, ok2 & ~none, ok3 & ~none,
            w0, w1, w2, w3, d0, d1, d2, d3)


@triton.jit
def _pick4(tap, a0, a1, a2, a3):
    """(BLOCK, taps) tile: a_k where the tap's digit along this axis is k."""
    return tl.where(tap == 0, a0[:, None], tl.where(tap == 1, a1[:, None], tl.where(tap == 2, a2[:, None], a3[:, None])))


@triton.jit
def _pick(bit, a0, a1):
    """(BLOCK, corners) tile: a1 where the corner's bit along this axis is set, else a0."""
    return tl.where(bit != 0, a1[:, None], a0[:, None])


@triton.jit
def _stencil(loc, v, mask, n_out, sz0, sz1, sz2, o1, o2, NDIM: tl.constexpr, MODE: tl.constexpr,
             PADDING: tl.constexpr, DISPLACEMENT: tl.constexpr, ACC64: tl.constexpr):
    """Stencil of output voxels v (loc points at one positions batch item (NDIM, n_out)).

    Returns (offset, valid, weight, dz, dy, dx) tiles of shape (BLOCK, corners), corner bits
    ordered first axis most significant; d* = d weight / d position along that axis (dz is
    meaningful in 3-D only); nan (BLOCK,) and psum (BLOCK,), the sum of the positions (NaN
    exactly where a position is NaN)."""
    px = tl.load(loc + (NDIM - 1) * n_out + v, mask=mask, other=0.0)
    py = tl.load(loc + (NDIM - 2) * n_out + v, mask=mask, other=0.0)
    if ACC64:
        px = px.to(tl.float64)
        py = py.to(tl.float64)
    else:
        px = px.to(tl.float32)
        py = py.to(tl.float32)
    ix_out = v % o2
    rest = v // o2
    if DISPLACEMENT:
        px = px + ix_out.to(px.dtype)
        py = py + (rest % o1).to(px.dtype)
    nan = (px != px) | (py != py)
    psum = px + py
    if NDIM == 3:
        pz = tl.load(loc + v, mask=mask, other=0.0).to(px.dtype)
        if DISPLACEMENT:
            pz = pz + (rest // o1).to(px.dtype)
        nan = nan | (pz != pz)
        psum = psum + pz
    IDX: tl.constexpr = v.dtype
    sy = sz2.to(IDX)
    sz = sy * sz1
    if MODE == 0:
        kk = tl.arange(0, 1 << NDIM)[None, :]
        bx = kk & 1
        by = (kk >> 1) & 1
        ix, okx0, okx1, wx0, wx1, dx0, dx1 = _linear_axis(px, sz2, PADDING, IDX)
        iy, oky0, oky1, wy0, wy1, dy0, dy1 = _linear_axis(py, sz1, PADDING, IDX)
        wx = _pick(bx, wx0, wx1)
        wy = _pick(by, wy0, wy1)
        off = (iy[:, None] + by) * sy + (ix[:, None] + bx)
        ok = _pick(by, oky0, oky1) & _pick(bx, okx0, okx1)
        w = wy * wx
        dy = _pick(by, dy0, dy1) * wx
        dx = wy * _pick(bx, dx0, dx1)
        dz = dx
        if NDIM == 3:
            bz = (kk >> 2) & 1
            iz, okz0, okz1, wz0, wz1, dz0, dz1 = _linear_axis(pz, sz0, PADDING, IDX)
            wz = _pick(bz, wz0, wz1)
            off = off + (iz[:, None] + bz) * sz
            ok = ok & _pick(bz, okz0, okz1)
            dz = _pick(bz, dz0, dz1) * w
            dy = wz * dy
            dx = wz * dx
            w = wz * w
    elif MODE == 2:
        kk = tl.arange(0, 1 << (2 * NDIM))[None, :]
        tx = kk & 3
        ty = (kk >> 2) & 3
        ix0, ix1, ix2, ix3, okx0, okx1, okx2, okx3, wx0, wx1, wx2, wx3, dx0, dx1, dx2, dx3 = _cubic_axis(
            px, sz2, PADDING, IDX)
        iy0, iy1, iy2, iy3, oky0, oky1, oky2, oky3, wy0, wy1, wy2, wy3, dy0, dy1, dy2, dy3 = _cubic_axis(
            py, sz1, PADDING, IDX)
        wx = _pick4(tx, wx0, wx1, wx2, wx3)
        wy = _pick4(ty, wy0, wy1, wy2, wy3)
        off = _pick4(ty, iy0, iy1, iy2, iy3) * sy + _pick4(tx, ix0, ix1, ix2, ix3)
        ok = _pick4(ty, oky0, oky1, oky2, oky3) & _pick4(tx, okx0, okx1, okx2, okx3)
        w = wy * wx
        dy = _pick4(ty, dy0, dy1, dy2, dy3) * wx
        dx = wy * _pick4(tx, dx0, dx1, dx2, dx3)
        dz = dx
        if NDIM == 3:
            tz = (kk >> 4) & 3
            iz0, iz1, iz2, iz3, okz0, okz1, okz2, okz3, wz0, wz1, wz2, wz3, dz0, dz1, dz2, dz3 = _cubic_axis(
                pz, sz0, PADDING, IDX)
            wz = _pick4(tz, wz0, wz1, wz2, wz3)
            off = off + _pick4(tz, iz0, iz1, iz2, iz3) * sz
            ok = ok & _pick4(tz, okz0, okz1, okz2, okz3)
            dz = _pick4(tz, dz0, dz1, dz2, dz3) * w
            dy = wz * dy
            dx = wz * dx
            w = wz * w
    else:
        ix, okx = _nearest_axis(px, sz2, PADDING, IDX)
        iy, oky = _nearest_axis(py, sz1, PADDING, IDX)
        off1 = iy * sy + ix
        ok1 = oky & okx
        if NDIM == 3:
            iz, okz = _nearest_axis(pz, sz0, PADDING, IDX)
            off1 = off1 + iz * sz
            ok1 = ok1 & okz
        off = off1[:, None]
        ok = ok1[:, None]
        w = tl.where(ok, 1.0, 0.0).to(px.dtype)
        dx = w * 0.0
        dy = dx
        dz = dx
    ok = ok & (~nan & mask)[:, None]
    return off, ok, w, dz, dy, dx, nan, psum


@triton.jit(do_not_specialize=_SIZE_ARGS)
def _forward_kernel(image, loc, out, B, C, n_in, n_out, sz0, sz1, sz2, o1, o2,
                    NDIM: tl.constexpr, MODE: tl.constexpr, PADDING: tl.constexpr,
                    DISPLACEMENT: tl.constexpr, BROADCAST: tl.constexpr, ACC64: tl.constexpr,
                    INT64: tl.constexpr, BLOCK: tl.constexpr):
    bl = tl.program_id(1)
    v = tl.arange(0, BLOCK)
    if INT64:
        bl = bl.to(tl.int64)
        n_in = n_in.to(tl.int64)
        n_out = n_out.to(tl.int64)
        v = v.to(tl.int64) + tl.program_id(0).to(tl.int64) * BLOCK
    else:
        v = v + tl.program_id(0) * BLOCK
    mask = v < n_out
    off, ok, w, dz, dy, dx, nan, psum = _stencil(loc + bl * NDIM * n_out, v, mask, n_out, sz0, sz1,
                                                 sz2, o1, o2, NDIM, MODE, PADDING, DISPLACEMENT, ACC64)
    if BROADCAST:
        b0 = 0
        b1 = B
    else:
        b0 = bl
        b1 = bl + 1
    for b in range(b0, b1):
        for c in range(C):
            row = b * C + c
            vals = tl.load(image + row * n_in + off, mask=ok, other=0.0).to(w.dtype)
            acc = tl.where(nan, psum, tl.sum(w * vals, axis=1))
            tl.store(out + row * n_out + v, acc.to(out.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_SIZE_ARGS)
def _backward_kernel(grad_out, image, loc, grad_image, flags, scale_ptr, grad_loc, B, C, n_in,
                     n_out, sz0, sz1, sz2, o1, o2, NDIM: tl.constexpr, MODE: tl.constexpr,
                     PADDING: tl.constexpr, DISPLACEMENT: tl.constexpr, BROADCAST: tl.constexpr,
                     ACC64: tl.constexpr, INT64: tl.constexpr, NEED_IMAGE: tl.constexpr,
                     NEED_LOC: tl.constexpr, FIXED: tl.constexpr, BLOCK: tl.constexpr):
    bl = tl.program_id(1)
    v = tl.arange(0, BLOCK)
    if INT64:
        bl = bl.to(tl.int64)
        n_in = n_in.to(tl.int64)
        n_out = n_out.to(tl.int64)
        v = v.to(tl.int64) + tl.program_id(0).to(tl.int64) * BLOCK
    else:
        v = v + tl.program_id(0) * BLOCK
    mask = v < n_out
    off, ok, w, dz, dy, dx, nan, psum = _stencil(loc + bl * NDIM * n_out, v, mask, n_out, sz0, sz1,
                                                 sz2, o1, o2, NDIM, MODE, PADDING, DISPLACEMENT, ACC64)
    gz = tl.zeros_like(psum)  # not psum * 0: an infinite position would make it NaN
    gy = gz
    gx = gz
    if FIXED:
        scale = tl.load(scale_ptr)
    if BROADCAST:
        b0 = 0
        b1 = B
    else:
        b0 = bl
        b1 = bl + 1
    for b in range(b0, b1):
        for c in range(C):
            row = b * C + c
            g = tl.load(grad_out + row * n_out + v, mask=mask, other=0.0).to(w.dtype)
            if NEED_IMAGE:
                contrib = w * g[:, None]
                if FIXED:
                    x = contrib.to(tl.float64) * scale
                    finite = (x - x) == 0
                    q = tl.where(finite, tl.where(x >= 0, x + 0.5, x - 0.5), 0.0).to(tl.int64)
                    tl.atomic_add(grad_image + row * n_in + off, q, mask=ok & finite, sem="relaxed")
                    flag = tl.where(x != x, 1, tl.where(x > 0, 2, 4))
                    tl.atomic_or(flags + row * n_in + off, flag, mask=ok & ~finite, sem="relaxed")
                else:
                    tl.atomic_add(grad_image + row * n_in + off, contrib.to(grad_image.dtype.element_ty),
                                  mask=ok, sem="relaxed")
            if NEED_LOC:
                vals = tl.load(image + row * n_in + off, mask=ok, other=0.0).to(w.dtype)
                gv = vals * g[:, None]
                gx += tl.sum(dx * gv, axis=1)
                gy += tl.sum(dy * gv, axis=1)
                if NDIM == 3:
                    gz += tl.sum(dz * gv, axis=1)
    if NEED_LOC:
        dst = grad_loc + bl * NDIM * n_out + v
        tl.store(dst + (NDIM - 1) * n_out, tl.where(nan, psum, gx).to(grad_loc.dtype.element_ty), mask=mask)
        tl.store(dst + (NDIM - 2) * n_out, tl.where(nan, psum, gy).to(grad_loc.dtype.element_ty), mask=mask)
        if NDIM == 3:
            tl.store(dst, tl.where(nan, psum, gz).to(grad_loc.dtype.element_ty), mask=mask)


# --- host side ------------------------------------------------------------------------------


def _geometry(image: torch.Tensor, loc: torch.Tensor, displacement: bool) -> dict:
    """The kernels' size arguments. The public ops validate (fastreg/_validate.py); these
    asserts only guard direct calls of the op (the same layout as csrc/warp/warp_shapes.h)."""
    ndim = image.dim() - 2
    assert ndim in (2, 3) and loc.dim() == image.dim() and loc.shape[1] == ndim, (image.shape, loc.shape)
    assert loc.shape[0] in (1, image.shape[0]), (image.shape, loc.shape)
    assert loc.dtype == image.dtype and loc.device == image.device, (loc.dtype, image.dtype, loc.device, image.device)
    assert not displacement or loc.shape[2:] == image.shape[2:], (image.shape, loc.shape)
    sizes = (1,) * (3 - ndim) + tuple(image.shape[2:])
    n_out = math.prod(loc.shape[2:])
    batch, channels = image.shape[0], image.shape[1]
    largest = max(image.numel(), loc.numel(), batch * channels * n_out)
    return dict(
        B=batch, C=channels, n_in=math.prod(image.shape[2:]), n_out=n_out,
        sz0=sizes[0], sz1=sizes[1], sz2=sizes[2], o1=loc.shape[-2], o2=loc.shape[-1],
        NDIM=ndim, BROADCAST=bool(loc.shape[0] != batch), ACC64=image.dtype == torch.float64,
        INT64=bool(largest >= _INT64_NUMEL),
    )


def _block(ndim: int, mode: int) -> int:
    if mode == 2:  # (BLOCK, 4^ndim) tiles
        return 32 if ndim == 3 else 128
    return 128 if (ndim == 3 and mode == 0) else 256


def _check_options(mode: int, padding: int) -> None:
    # mode 0 bilinear, 1 nearest, 2 bicubic; padding 0 zeros, 1 border, 2 reflection
    assert mode in (0, 1, 2) and padding in (0, 1, 2), (mode, padding)


@_library.triton_op("warp_forward")
def _forward_op(image: torch.Tensor, loc: torch.Tensor, mode: int, padding: int, displacement: bool) -> torch.Tensor:
    _check_options(mode, padding)
    geo = _geometry(image, loc, displacement)
    image, loc = image.contiguous(), loc.contiguous()
    out = image.new_empty((image.shape[0], image.shape[1], *loc.shape[2:]))
    if out.numel() == 0:
        return out
    block = _block(geo["NDIM"], mode)
    grid = (triton.cdiv(geo["n_out"], block), loc.shape[0])
    torch.library.wrap_triton(_forward_kernel)[grid](
        image, loc, out, **geo, MODE=mode, PADDING=padding, DISPLACEMENT=displacement, BLOCK=block,
    )
    return out


def _fixed_point_scale(grad_out: torch.Tensor, n_out: int, bits: int = 62) -> torch.Tensor:
    """2**(bits - L - e) (float64, 0-d) with max finite |grad_out| < 2**e and n_out < 2**L."""
    mag = grad_out.abs().to(torch.float64)
    top = torch.where(torch.isfinite(mag), mag, 0.0).amax()
    _, e = torch.frexp(top)
    k = torch.clamp(bits - int(n_out).bit_length() - e.to(torch.int64), min=-1022, max=1023)
    return ((k + 1023) << 52).view(torch.float64)  # the power of two built from its exponent bits


def _from_fixed_point(acc: torch.Tensor, flags: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The sums held as integers (units of 1 / scale) with the IEEE meaning of non-finite flags."""
    total = acc.to(torch.float64) / scale
    nan = ((flags & 1) != 0) | ((flags & 6) == 6)
    total = torch.where(flags == 2, float("inf"), torch.where(flags == 4, float("-inf"), total))
    return torch.where(nan, float("nan"), total)


@_library.triton_op("warp_backward")
def _backward_op(
    grad_out: torch.Tensor,
    image: torch.Tensor,
    loc: torch.Tensor,
    mode: int,
    padding: int,
    displacement: bool,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_options(mode, padding)
    geo = _geometry(image, loc, displacement)
    out_shape = (image.shape[0], image.shape[1], *loc.shape[2:])
    assert tuple(grad_out.shape) == out_shape, (grad_out.shape, out_shape)
    image, loc = image.contiguous(), loc.contiguous()
    grad_out = grad_out.contiguous().to(image.dtype)
    need_image, need_loc = bool(output_mask[0]), bool(output_mask[1]) and mode != 1
    fixed = need_image and grad_out.numel() > 0 and torch.are_deterministic_algorithms_enabled()
    acc_dtype = torch.float64 if geo["ACC64"] else torch.float32
    if fixed:
        grad_image = torch.zeros(image.shape, dtype=torch.int64, device=image.device)
        flags = torch.zeros(image.shape, dtype=torch.int32, device=image.device)
        scale = _fixed_point_scale(grad_out, geo["n_out"], 60 if mode == 2 else 62)
    else:
        grad_image = torch.zeros(image.shape, dtype=acc_dtype, device=image.device) if need_image else None
        flags = scale = None
    grad_loc = torch.zeros_like(loc) if output_mask[1] else loc.new_empty((0,))
    if (need_image or need_loc) and grad_out.numel() > 0:
        block = _block(geo["NDIM"], mode)
        grid = (triton.cdiv(geo["n_out"], block), loc.shape[0])
        torch.library.wrap_triton(_backward_kernel)[grid](
            grad_out, image, loc, grad_image, flags, scale, grad_loc, **geo, MODE=mode, PADDING=padding,
            DISPLACEMENT=displacement, NEED_IMAGE=need_image, NEED_LOC=need_loc, FIXED=fixed, BLOCK=block,
        )
    if not need_image:
        return image.new_empty((0,)), grad_loc
    if fixed:
        grad_image = _from_fixed_point(grad_image, flags, scale)
    return grad_image.to(image.dtype), grad_loc
