"""integrate_svf in Triton: the ops fastreg::integrate_svf_forward_triton / _backward_triton.

Contract (exactly that of fastreg::integrate_svf_forward / _backward, see
csrc/integrate/integrate.h and integrate_loop.h):
  v (B, ndim, *S) in voxels, 2-D (H, W) or 3-D (D, H, W); float32/float64/float16/bfloat16.
  forward(v, steps, padding, keep) -> (u, saved): u_0 = v / 2**steps (folded into the first
  step), u_{k+1} = u_k + warp(u_k, u_k) (linear, padding 0 zeros / 1 border / 2 reflection,
  align_corners=True); saved = u_k for k in keep (len(keep), *v.shape).
  backward(grad_out, v, saved, steps, padding, keep, pushes) -> grad_v (recomputes the
  fields not saved, storing `pushes` on its way; fastreg._checkpoint).
Kernels: one program per BLOCK voxels of one batch item; one fused kernel per step reads the
field at its voxels and their stencils and writes the new field once; one per step of the
backward adds g + (d sample / d position)^T g at each voxel and scatters the sampled
gradient to the stencil corners with atomic adds (not bit-reproducible run to run, like
grid_sample on GPU; refused under torch.use_deterministic_algorithms(True)).
Arithmetic in float32 (float64 for float64); gradients accumulate in that type.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fastreg import _library
from fastreg._checkpoint import backward_sweep
from fastreg.triton.warp import _linear_axis  # warp's per-axis interpolation and padding

BLOCK = 128


@triton.jit
def _voxel(v, p, mask, n, S0, S1, S2, scale, NDIM: tl.constexpr, ACC: tl.constexpr):
    """Indices (z, y, x; z = 0 in 2-D) of voxels p and the scaled field there, in ACC."""
    x = p % S2
    y = (p // S2) % S1
    z = p // (S2 * S1)
    ux = tl.load(v + (NDIM - 1) * n + p, mask=mask, other=0.0).to(ACC) * scale
    uy = tl.load(v + (NDIM - 2) * n + p, mask=mask, other=0.0).to(ACC) * scale
    uz = ux * 0.0
    if NDIM == 3:
        uz = tl.load(v + p, mask=mask, other=0.0).to(ACC) * scale
    return z, y, x, uz, uy, ux


@triton.jit
def _step_kernel(v, out, n, S0, S1, S2, scale, NDIM: tl.constexpr, PADDING: tl.constexpr,
                 ACC: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = p < n
    v += b * NDIM * n
    out += b * NDIM * n
    z, y, x, uz, uy, ux = _voxel(v, p, mask, n, S0, S1, S2, scale, NDIM, ACC)
    pz = z.to(ACC) + uz
    py = y.to(ACC) + uy
    px = x.to(ACC) + ux
    nan = (pz != pz) | (py != py) | (px != px)
    iz, okz0, okz1, wz0, wz1, dz0, dz1 = _linear_axis(pz, S0, PADDING, tl.int64)
    iy, oky0, oky1, wy0, wy1, dy0, dy1 = _linear_axis(py, S1, PADDING, tl.int64)
    ix, okx0, okx1, wx0, wx1, dx0, dx1 = _linear_axis(px, S2, PADDING, tl.int64)
    a0 = ux * 0.0
    a1 = a0
    a2 = a0
    for bz in tl.static_range(NDIM - 1):  # one z layer in 2-D
        for by in tl.static_range(2):
            for bx in tl.static_range(2):
                if bz == 0:
                    wz, okz = wz0, okz0
                else:
                    wz, okz = wz1, okz1
                if by == 0:
                    wy, oky = wy0, oky0
                else:
                    wy, oky = wy1, oky1
                if bx == 0:
                    wx, okx = wx0, okx0
                else:
                    wx, okx = wx1, okx1
                ok = okz & oky & okx & mask & ~nan
                w = wz * wy * wx
                off = ((iz + bz) * S1 + iy + by) * S2 + ix + bx
                a0 += w * tl.load(v + off, mask=ok, other=0.0).to(ACC)
                a1 += w * tl.load(v + n + off, mask=ok, other=0.0).to(ACC)
                if NDIM == 3:
                    a2 += w * tl.load(v + 2 * n + off, mask=ok, other=0.0).to(ACC)
    # As the C++ kernel: the sample is rounded to the field's dtype, then added to u(p).
    dtype = out.dtype.element_ty
    a0 = tl.where(nan, pz + py + px, a0).to(dtype).to(ACC)
    a1 = tl.where(nan, pz + py + px, a1).to(dtype).to(ACC)
    a2 = tl.where(nan, pz + py + px, a2).to(dtype).to(ACC)
    if NDIM == 3:
        tl.store(out + p, ((uz / scale + a0) * scale).to(dtype), mask=mask)
        tl.store(out + n + p, ((uy / scale + a1) * scale).to(dtype), mask=mask)
        tl.store(out + 2 * n + p, ((ux / scale + a2) * scale).to(dtype), mask=mask)
    else:
        tl.store(out + p, ((uy / scale + a0) * scale).to(dtype), mask=mask)
        tl.store(out + n + p, ((ux / scale + a1) * scale).to(dtype), mask=mask)


@triton.jit
def _step_backward_kernel(g, v, grad, n, S0, S1, S2, scale, NDIM: tl.constexpr,
                          PADDING: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = p < n
    v += b * NDIM * n
    g += b * NDIM * n
    grad += b * NDIM * n
    z, y, x, uz, uy, ux = _voxel(v, p, mask, n, S0, S1, S2, scale, NDIM, ACC)
    pz = z.to(ACC) + uz
    py = y.to(ACC) + uy
    px = x.to(ACC) + ux
    nan = (pz != pz) | (py != py) | (px != px)
    iz, okz0, okz1, wz0, wz1, dz0, dz1 = _linear_axis(pz, S0, PADDING, tl.int64)
    iy, oky0, oky1, wy0, wy1, dy0, dy1 = _linear_axis(py, S1, PADDING, tl.int64)
    ix, okx0, okx1, wx0, wx1, dx0, dx1 = _linear_axis(px, S2, PADDING, tl.int64)
    g0 = tl.load(g + p, mask=mask, other=0.0).to(ACC)
    g1 = tl.load(g + n + p, mask=mask, other=0.0).to(ACC)
    g2 = g0 * 0.0
    if NDIM == 3:
        g2 = tl.load(g + 2 * n + p, mask=mask, other=0.0).to(ACC)
    dz = g0 * 0.0  # d loss / d position, per axis
    dy = dz
    dx = dz
    for bz in tl.static_range(NDIM - 1):
        for by in tl.static_range(2):
            for bx in tl.static_range(2):
                if bz == 0:
                    wz, okz, sz = wz0, okz0, dz0
                else:
                    wz, okz, sz = wz1, okz1, dz1
                if by == 0:
                    wy, oky, sy = wy0, oky0, dy0
                else:
                    wy, oky, sy = wy1, oky1, dy1
                if bx == 0:
                    wx, okx, sx = wx0, okx0, dx0
                else:
                    wx, okx, sx = wx1, okx1, dx1
                ok = okz & oky & okx & mask & ~nan
                w = wz * wy * wx
                off = ((iz + bz) * S1 + iy + by) * S2 + ix + bx
                # sum over channels of g_c * v_c(corner): the position gradient's weight
                gv = g0 * tl.load(v + off, mask=ok, other=0.0).to(ACC)
                gv += g1 * tl.load(v + n + off, mask=ok, other=0.0).to(ACC)
                tl.atomic_add(grad + off, scale * w * g0, mask=ok, sem="relaxed")
                tl.atomic_add(grad + n + off, scale * w * g1, mask=ok, sem="relaxed")
                if NDIM == 3:
                    gv += g2 * tl.load(v + 2 * n + off, mask=ok, other=0.0).to(ACC)
                    tl.atomic_add(grad + 2 * n + off, scale * w * g2, mask=ok, sem="relaxed")
                    dz += sz * wy * wx * gv
                dy += wz * sy * wx * gv
                dx += wz * wy * sx * gv
    # At p itself: g + (d sample / d position)^T g, both into v by the chain rule (the
    # sampled values carry one factor of scale, the position another).
    bad = tl.where(nan, pz + py + px, 0.0)
    if NDIM == 3:
        tl.atomic_add(grad + p, scale * (g0 + scale * dz + bad), mask=mask, sem="relaxed")
        tl.atomic_add(grad + n + p, scale * (g1 + scale * dy + bad), mask=mask, sem="relaxed")
        tl.atomic_add(grad + 2 * n + p, scale * (g2 + scale * dx + bad), mask=mask, sem="relaxed")
    else:
        tl.atomic_add(grad + p, scale * (g0 + scale * dy + bad), mask=mask, sem="relaxed")
        tl.atomic_add(grad + n + p, scale * (g1 + scale * dx + bad), mask=mask, sem="relaxed")


# --- host side ------------------------------------------------------------------------------


def _check(v: torch.Tensor, steps: int, padding: int, keep: list[int]) -> None:
    """The launchers' preconditions (the public op validated the arguments)."""
    assert v.dim() - 2 in (2, 3) and v.shape[1] == v.dim() - 2, tuple(v.shape)
    assert 0 <= steps < 64 and padding in (0, 1, 2), (steps, padding)
    assert all(1 <= k < steps for k in keep) and keep == sorted(set(keep)), keep


def _launch(kernel, v: torch.Tensor, args: tuple, scale: float, padding: int) -> None:
    ndim = v.dim() - 2
    sizes = (1,) * (3 - ndim) + tuple(v.shape[2:])
    n = math.prod(sizes)
    if v.numel() == 0:
        return
    acc = tl.float64 if v.dtype == torch.float64 else tl.float32
    grid = (triton.cdiv(n, BLOCK), v.shape[0])
    torch.library.wrap_triton(kernel)[grid](*args, n, *sizes, scale, NDIM=ndim, PADDING=padding, ACC=acc, BLOCK=BLOCK)


def _scale(k: int, steps: int) -> float:
    return 2.0**-steps if k == 0 else 1.0


def _advance(u: torch.Tensor, start: int, stop: int, steps: int, padding: int) -> torch.Tensor:
    """u_stop from u = u_start (u itself when stop == start), each step into a fresh tensor."""
    for k in range(start, stop):
        out = torch.empty_like(u)
        _launch(_step_kernel, u, (u, out), _scale(k, steps), padding)
        u = out
    return u


@_library.triton_op("integrate_svf_forward")
def _forward_op(v: torch.Tensor, steps: int, padding: int, keep: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    _check(v, steps, padding, keep)
    v = v.contiguous()
    saved = v.new_empty((len(keep), *v.shape))
    if steps == 0:
        return v.clone(), saved
    out = torch.empty_like(v)
    cur, stored = v, dict(zip(keep, saved))
    for k in range(steps):
        dst = out if k == steps - 1 else stored[k + 1] if k + 1 in stored else torch.empty_like(v)
        _launch(_step_kernel, v, (cur, dst), _scale(k, steps), padding)
        cur = dst
    return out, saved


@_library.triton_op("integrate_svf_backward")
def _backward_op(grad_out: torch.Tensor, v: torch.Tensor, saved: torch.Tensor, steps: int, padding: int,
                 keep: list[int], pushes: list[int]) -> torch.Tensor:
    """csrc/integrate/integrate_loop.h's backward_loop: the same schedule, run by
    fastreg._checkpoint.backward_sweep."""
    _check(v, steps, padding, keep)
    assert all(1 <= k < steps for k in pushes) and saved.shape == (len(keep), *v.shape), (pushes, saved.shape)
    if torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled():
        raise RuntimeError("fastreg integrate_svf backward (Triton) scatters with atomic adds and has no "
                           "deterministic implementation; use the cpu backend or disable deterministic algorithms")
    v = v.contiguous()
    if steps == 0:
        return grad_out.to(v.dtype, memory_format=torch.contiguous_format, copy=True)
    acc = torch.float64 if v.dtype == torch.float64 else torch.float32
    g = grad_out.contiguous().to(acc)  # gradients stay in the accumulation type between steps

    def step_backward(g: torch.Tensor, u: torch.Tensor, k: int) -> torch.Tensor:
        grad = torch.zeros(v.shape, dtype=acc, device=v.device)
        _launch(_step_backward_kernel, v, (g, u, grad), _scale(k, steps), padding)
        return grad

    def advance(u: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return _advance(u, start, stop, steps, padding)

    saved = [u.contiguous() for u in saved]
    return backward_sweep(g, v, saved, steps, keep, pushes, advance, step_backward).to(v.dtype)
