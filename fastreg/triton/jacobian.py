"""Triton kernels of jacobian_det (forward, backward) and jacobian_stats.

Contract: the same as csrc/jacobian/jacobian.h (which these kernels mirror line by line):
  disp (B, ndim, *S) contiguous, channel a along spatial axis a, scaled by 1 / spacing[a]
  when loaded; det (B, *S); stats (B, 10) float64 sums over the cropped region in the order
  of fastreg.ops.jacobian (NAN, FOLDS, LOG3_SUM, LOG3_SQ, POSITIVE, LOG_SUM, LOG_SQ,
  DET_SUM, DET_SQ, NDV). mode: 0 central, 1 forward, 2 gradient. Float16/bfloat16 compute in
  float32; statistics accumulate in float64 per block, blocks summed by torch (deterministic).
Defined as the ops fastreg::<kernel>_triton by fastreg._library.triton_op.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastreg import _library

BLOCK = 256
N_STATS = 10  # the sums of one batch item (enum Stats in csrc/jacobian/jacobian.h)


@triton.jit
def _load(ptr, mask, F64: tl.constexpr):
    x = tl.load(ptr, mask=mask, other=0.0)
    if F64:
        return x.to(tl.float64)
    return x.to(tl.float32)


@triton.jit
def _taps(MODE: tl.constexpr, i, n):
    """Weights of u[i-1], u[i], u[i+1] in the derivative at index i (jacobian.h: taps)."""
    has_prev = i > 0
    has_next = i < n - 1
    zero = tl.zeros(i.shape, tl.float32)
    if MODE == 0:
        tp = tl.where(has_prev, -0.5, 0.0)
        tc = zero
        tn = tl.where(has_next, 0.5, 0.0)
    elif MODE == 1:
        tp = zero
        tc = tl.where(has_next, -1.0, 0.0)
        tn = tl.where(has_next, 1.0, 0.0)
    else:
        tp = tl.where(has_prev, tl.where(has_next, -0.5, -1.0), 0.0)
        tc = tl.where(has_prev, tl.where(has_next, 0.0, 1.0), tl.where(has_next, -1.0, 0.0))
        tn = tl.where(has_next, tl.where(has_prev, 0.5, 1.0), 0.0)
    return tp, tc, tn


@triton.jit
def _deriv(ptr, stride, tp, tc, tn, mask, F64: tl.constexpr):
    """Derivative at ptr along an axis; taps of weight 0 are not read (NaN-exact)."""
    p = _load(ptr - stride, mask & (tp != 0), F64)
    c = _load(ptr, mask & (tc != 0), F64)
    n = _load(ptr + stride, mask & (tn != 0), F64)
    return tp * p + tc * c + tn * n


@triton.jit
def _det2(j00, j01, j10, j11):
    return j00 * j11 - j01 * j10


@triton.jit
def _det3(j00, j01, j02, j10, j11, j12, j20, j21, j22):
    return j00 * (j11 * j22 - j12 * j21) - j01 * (j10 * j22 - j12 * j20) + j02 * (j10 * j21 - j11 * j20)


@triton.jit
def _jacobian2(u, numel, v, i0, i1, S0, S1, inv0, inv1, MODE: tl.constexpr, mask, F64: tl.constexpr):
    a0, b0, c0 = _taps(MODE, i0, S0)
    a1, b1, c1 = _taps(MODE, i1, S1)
    p0 = u + v
    p1 = u + numel + v
    j00 = 1.0 + _deriv(p0, S1, a0, b0, c0, mask, F64) * inv0
    j01 = _deriv(p0, 1, a1, b1, c1, mask, F64) * inv0
    j10 = _deriv(p1, S1, a0, b0, c0, mask, F64) * inv1
    j11 = 1.0 + _deriv(p1, 1, a1, b1, c1, mask, F64) * inv1
    return j00, j01, j10, j11


@triton.jit
def _jacobian3(u, numel, v, i0, i1, i2, S0, S1, S2, inv0, inv1, inv2, MODE: tl.constexpr, mask, F64: tl.constexpr):
    a0, b0, c0 = _taps(MODE, i0, S0)
    a1, b1, c1 = _taps(MODE, i1, S1)
    a2, b2, c2 = _taps(MODE, i2, S2)
    st0 = S1 * S2
    p0 = u + v
    p1 = u + numel + v
    p2 = u + 2 * numel + v
    j00 = 1.0 + _deriv(p0, st0, a0, b0, c0, mask, F64) * inv0
    j01 = _deriv(p0, S2, a1, b1, c1, mask, F64) * inv0
    j02 = _deriv(p0, 1, a2, b2, c2, mask, F64) * inv0
    j10 = _deriv(p1, st0, a0, b0, c0, mask, F64) * inv1
    j11 = 1.0 + _deriv(p1, S2, a1, b1, c1, mask, F64) * inv1
    j12 = _deriv(p1, 1, a2, b2, c2, mask, F64) * inv1
    j20 = _deriv(p2, st0, a0, b0, c0, mask, F64) * inv2
    j21 = _deriv(p2, S2, a1, b1, c1, mask, F64) * inv2
    j22 = 1.0 + _deriv(p2, 1, a2, b2, c2, mask, F64) * inv2
    return j00, j01, j02, j10, j11, j12, j20, j21, j22


@triton.jit
def _index3(v, S1, S2):
    i2 = v % S2
    t = v // S2
    return t // S1, t % S1, i2


@triton.jit
def _det_kernel(u_ptr, out_ptr, numel, S0, S1, S2, inv0, inv1, inv2,
                NDIM: tl.constexpr, MODE: tl.constexpr, F64: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    b = tl.program_id(1)
    v = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = v < numel
    u = u_ptr + b.to(tl.int64) * NDIM * numel
    if NDIM == 2:
        i0 = v // S1
        i1 = v % S1
        j00, j01, j10, j11 = _jacobian2(u, numel, v, i0, i1, S0, S1, inv0, inv1, MODE, mask, F64)
        d = _det2(j00, j01, j10, j11)
    else:
        i0, i1, i2 = _index3(v, S1, S2)
        j = _jacobian3(u, numel, v, i0, i1, i2, S0, S1, S2, inv0, inv1, inv2, MODE, mask, F64)
        d = _det3(j[0], j[1], j[2], j[3], j[4], j[5], j[6], j[7], j[8])
    tl.store(out_ptr + b.to(tl.int64) * numel + v, d.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pick(k: tl.constexpr, t):
    """The tap of a neighbour at offset -k (p = q + k e_b reads q with this weight)."""
    if k == 1:
        return t[0]
    elif k == 0:
        return t[1]
    return t[2]


@triton.jit
def _backward2_kernel(u_ptr, g_ptr, out_ptr, numel, S0, S1, inv0, inv1,
                      MODE: tl.constexpr, F64: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    b = tl.program_id(1)
    q = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = q < numel
    u = u_ptr + b.to(tl.int64) * 2 * numel
    go = g_ptr + b.to(tl.int64) * numel
    i0 = q // S1
    i1 = q % S1
    g0 = tl.zeros([BLOCK_SIZE], tl.float64 if F64 else tl.float32)
    g1 = tl.zeros([BLOCK_SIZE], tl.float64 if F64 else tl.float32)
    for axis in tl.static_range(2):
        for kk in tl.static_range(3):
            k: tl.constexpr = kk - 1
            if axis == 0:
                p0 = i0 + k
                p1 = i1
                n = S0
                pi = p0
                step = S1
            else:
                p0 = i0
                p1 = i1 + k
                n = S1
                pi = p1
                step = 1
            valid = mask & (pi >= 0) & (pi < n)
            w = _pick(k, _taps(MODE, pi, n))
            use = valid & (w != 0)
            p = q + k * step
            j00, j01, j10, j11 = _jacobian2(u, numel, p, p0, p1, S0, S1, inv0, inv1, MODE, use, F64)
            gp = _load(go + p, use, F64)
            if axis == 0:  # cofactors of column 0: C00 = j11, C10 = -j01
                c0 = j11
                c1 = -j01
            else:  # column 1: C01 = -j10, C11 = j00
                c0 = -j10
                c1 = j00
            g0 += tl.where(use, gp * c0 * w * inv0, 0.0)
            g1 += tl.where(use, gp * c1 * w * inv1, 0.0)
    o = out_ptr + b.to(tl.int64) * 2 * numel + q
    tl.store(o, g0.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o + numel, g1.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward3_kernel(u_ptr, g_ptr, out_ptr, numel, S0, S1, S2, inv0, inv1, inv2,
                      MODE: tl.constexpr, F64: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    b = tl.program_id(1)
    q = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = q < numel
    u = u_ptr + b.to(tl.int64) * 3 * numel
    go = g_ptr + b.to(tl.int64) * numel
    i0, i1, i2 = _index3(q, S1, S2)
    g0 = tl.zeros([BLOCK_SIZE], tl.float64 if F64 else tl.float32)
    g1 = tl.zeros([BLOCK_SIZE], tl.float64 if F64 else tl.float32)
    g2 = tl.zeros([BLOCK_SIZE], tl.float64 if F64 else tl.float32)
    for axis in tl.static_range(3):
        for kk in tl.static_range(3):
            k: tl.constexpr = kk - 1
            if axis == 0:
                p0 = i0 + k
                p1 = i1
                p2 = i2
                n = S0
                pi = p0
                step = S1 * S2
            elif axis == 1:
                p0 = i0
                p1 = i1 + k
                p2 = i2
                n = S1
                pi = p1
                step = S2
            else:
                p0 = i0
                p1 = i1
                p2 = i2 + k
                n = S2
                pi = p2
                step = 1
            valid = mask & (pi >= 0) & (pi < n)
            w = _pick(k, _taps(MODE, pi, n))
            use = valid & (w != 0)
            p = q + k * step
            j = _jacobian3(u, numel, p, p0, p1, p2, S0, S1, S2, inv0, inv1, inv2, MODE, use, F64)
            gp = _load(go + p, use, F64)
            # cofactors of column `axis`: C[a][b] = J[a+1][b+1] J[a+2][b+2] - J[a+1][b+2] J[a+2][b+1]
            b1: tl.constexpr = (axis + 1) % 3
            b2: tl.constexpr = (axis + 2) % 3
            c0 = j[3 + b1] * j[6 + b2] - j[3 + b2] * j[6 + b1]
            c1 = j[6 + b1] * j[b2] - j[6 + b2] * j[b1]
            c2 = j[b1] * j[3 + b2] - j[b2] * j[3 + b1]
            g0 += tl.where(use, gp * c0 * w * inv0, 0.0)
            g1 += tl.where(use, gp * c1 * w * inv1, 0.0)
            g2 += tl.where(use, gp * c2 * w * inv2, 0.0)
    o = out_ptr + b.to(tl.int64) * 3 * numel + q
    tl.store(o, g0.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o + numel, g1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o + 2 * numel, g2.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _apply(t, p, c, n):
    return tl.where(t[0] != 0, t[0] * p, 0.0) + tl.where(t[1] != 0, t[1] * c, 0.0) + tl.where(t[2] != 0, t[2] * n, 0.0)


@triton.jit
def _neg(d):
    """max(-d, 0) that keeps NaN (so that the voxel is flagged, as in jacobian.h)."""
    return tl.where(d < 0, -d, d * 0.0)


@triton.jit
def _accumulate(d, ndv, region, part, F64: tl.constexpr):
    """Block sums of one voxel block into part[0:10] (jacobian.h: accumulate)."""
    nan = (d != d) | (ndv != ndv)
    ok = region & (nan == 0)
    d64 = tl.where(ok, d, 1.0).to(tl.float64)
    shifted = tl.where(ok, d, 1.0) + 3.0
    clipped = tl.minimum(tl.maximum(shifted, tl.full(d.shape, 1e-9, d.dtype)), 1e9)
    l3 = tl.log(clipped).to(tl.float64) - 1.0986122886681098
    pos = ok & (d > 0)
    l = tl.log(tl.where(pos, d, 1.0)).to(tl.float64)
    zero = tl.zeros(d.shape, tl.float64)
    tl.store(part + 0, tl.sum(tl.where(region & nan, 1.0, zero)))
    tl.store(part + 1, tl.sum(tl.where(ok & (d <= 0), 1.0, zero)))
    tl.store(part + 2, tl.sum(tl.where(ok, l3, zero)))
    tl.store(part + 3, tl.sum(tl.where(ok, l3 * l3, zero)))
    tl.store(part + 4, tl.sum(tl.where(pos, 1.0, zero)))
    tl.store(part + 5, tl.sum(tl.where(pos, l, zero)))
    tl.store(part + 6, tl.sum(tl.where(pos, l * l, zero)))
    tl.store(part + 7, tl.sum(tl.where(ok, d64 - 1.0, zero)))
    tl.store(part + 8, tl.sum(tl.where(ok, (d64 - 1.0) * (d64 - 1.0), zero)))
    tl.store(part + 9, tl.sum(tl.where(ok, ndv.to(tl.float64), zero)))


@triton.jit
def _stats2_kernel(u_ptr, part_ptr, numel, S0, S1, inv0, inv1, crop,
                   MODE: tl.constexpr, F64: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    b = tl.program_id(1)
    pid = tl.program_id(0)
    v = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = v < numel
    i0 = v // S1
    i1 = v % S1
    region = mask & (i0 >= crop) & (i0 < S0 - crop) & (i1 >= crop) & (i1 < S1 - crop)
    m0 = tl.where(i0 > 0, -S1, 0)
    n0 = tl.where(i0 < S0 - 1, S1, 0)
    m1 = tl.where(i1 > 0, -1, 0)
    n1 = tl.where(i1 < S1 - 1, 1, 0)
    x = u_ptr + b.to(tl.int64) * 2 * numel + v
    y = x + numel
    cx = _load(x, region, F64) * inv0
    cy = _load(y, region, F64) * inv1
    # forward / backward differences + identity, [component][axis]
    fx0 = 1.0 + (_load(x + n0, region, F64) * inv0 - cx)
    fy0 = _load(y + n0, region, F64) * inv1 - cy
    fx1 = _load(x + n1, region, F64) * inv0 - cx
    fy1 = 1.0 + (_load(y + n1, region, F64) * inv1 - cy)
    bx0 = 1.0 + (cx - _load(x + m0, region, F64) * inv0)
    by0 = cy - _load(y + m0, region, F64) * inv1
    bx1 = cx - _load(x + m1, region, F64) * inv0
    by1 = 1.0 + (cy - _load(y + m1, region, F64) * inv1)
    ndv = _neg(_det2(fx0, fx1, fy0, fy1)) + _neg(_det2(bx0, fx1, by0, fy1))
    ndv += _neg(_det2(fx0, bx1, fy0, by1)) + _neg(_det2(bx0, bx1, by0, by1))
    ndv = ndv / 4.0
    t0 = _taps(MODE, i0, S0)
    t1 = _taps(MODE, i1, S1)
    px0 = _load(x + m0, region, F64) * inv0
    nx0 = _load(x + n0, region, F64) * inv0
    py0 = _load(y + m0, region, F64) * inv1
    ny0 = _load(y + n0, region, F64) * inv1
    px1 = _load(x + m1, region, F64) * inv0
    nx1 = _load(x + n1, region, F64) * inv0
    py1 = _load(y + m1, region, F64) * inv1
    ny1 = _load(y + n1, region, F64) * inv1
    d = _det2(1.0 + _apply(t0, px0, cx, nx0), _apply(t1, px1, cx, nx1),
              _apply(t0, py0, cy, ny0), 1.0 + _apply(t1, py1, cy, ny1))
    _accumulate(d, ndv, region, part_ptr + (b.to(tl.int64) * tl.num_programs(0) + pid) * 10, F64)


@triton.jit
def _nb(x, y, z, off, inv0, inv1, inv2, mask, F64: tl.constexpr):
    """u(p + off) in voxel units; x, y, z point at voxel p of the three channels."""
    return (_load(x + off, mask, F64) * inv0, _load(y + off, mask, F64) * inv1,
            _load(z + off, mask, F64) * inv2)


@triton.jit
def _tet(p, q, r, c0, c1, c2, op, oq, orr):
    """Determinant of the edges p - c + op, q - c + oq, r - c + orr (columns)."""
    return _det3(op[0] + (p[0] - c0), oq[0] + (q[0] - c0), orr[0] + (r[0] - c0),
                 op[1] + (p[1] - c1), oq[1] + (q[1] - c1), orr[1] + (r[1] - c1),
                 op[2] + (p[2] - c2), oq[2] + (q[2] - c2), orr[2] + (r[2] - c2))


@triton.jit
def _corner(f, c0, c1, c2, s0, s1, s2, p0, p1, p2):
    """A corner tetrahedron: along axis k the forward (f = False) or backward column."""
    e0 = (1.0, 0.0, 0.0)
    e1 = (0.0, 1.0, 0.0)
    e2 = (0.0, 0.0, 1.0)
    return _det3(
        e0[0] + (s0[0] - c0) if f[0] else e0[0] + (c0 - p0[0]),
        e1[0] + (s1[0] - c0) if f[1] else e1[0] + (c0 - p1[0]),
        e2[0] + (s2[0] - c0) if f[2] else e2[0] + (c0 - p2[0]),
        e0[1] + (s0[1] - c1) if f[0] else e0[1] + (c1 - p0[1]),
        e1[1] + (s1[1] - c1) if f[1] else e1[1] + (c1 - p1[1]),
        e2[1] + (s2[1] - c1) if f[2] else e2[1] + (c1 - p2[1]),
        e0[2] + (s0[2] - c2) if f[0] else e0[2] + (c2 - p0[2]),
        e1[2] + (s1[2] - c2) if f[1] else e1[2] + (c2 - p1[2]),
        e2[2] + (s2[2] - c2) if f[2] else e2[2] + (c2 - p2[2]),
    )


@triton.jit
def _stats3_kernel(u_ptr, part_ptr, numel, S0, S1, S2, inv0, inv1, inv2, crop,
                   MODE: tl.constexpr, F64: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    b = tl.program_id(1)
    pid = tl.program_id(0)
    v = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = v < numel
    i0, i1, i2 = _index3(v, S1, S2)
    region = mask & (i0 >= crop) & (i0 < S0 - crop) & (i1 >= crop) & (i1 < S1 - crop)
    region = region & (i2 >= crop) & (i2 < S2 - crop)
    st0 = S1 * S2
    m0 = tl.where(i0 > 0, -st0, 0)  # offsets of the neighbours, replicated at the border
    n0 = tl.where(i0 < S0 - 1, st0, 0)
    m1 = tl.where(i1 > 0, -S2, 0)
    n1 = tl.where(i1 < S1 - 1, S2, 0)
    m2 = tl.where(i2 > 0, -1, 0)
    n2 = tl.where(i2 < S2 - 1, 1, 0)
    x = u_ptr + b.to(tl.int64) * 3 * numel + v
    y = x + numel
    z = y + numel
    c = _nb(x, y, z, 0, inv0, inv1, inv2, region, F64)
    c0 = c[0]
    c1 = c[1]
    c2 = c[2]
    s0 = _nb(x, y, z, n0, inv0, inv1, inv2, region, F64)  # successors along each axis
    s1 = _nb(x, y, z, n1, inv0, inv1, inv2, region, F64)
    s2 = _nb(x, y, z, n2, inv0, inv1, inv2, region, F64)
    p0 = _nb(x, y, z, m0, inv0, inv1, inv2, region, F64)  # predecessors
    p1 = _nb(x, y, z, m1, inv0, inv1, inv2, region, F64)
    p2 = _nb(x, y, z, m2, inv0, inv1, inv2, region, F64)
    # 8 corner tetrahedra (combo bit k set: backward along axis k), then the 2 central ones:
    # p - e_i - e_j in the order (01, 02, 12) and p + e_i + e_j in the order (01, 12, 02)
    ndv = _neg(_corner((True, True, True), c0, c1, c2, s0, s1, s2, p0, p1, p2))
    ndv += _neg(_corner((False, True, True), c0, c1, c2, s0, s1, s2, p0, p1, p2))
    ndv += _neg(_corner((True, False, True), c0, c1, c2, s0, s1, s2, p0, p1, p2))
    ndv += _neg(_corner((False, False, True), c0, c1, c2, s0, s1, s2, p0, p1, p2))
    ndv += _neg(_corner((True, True, False), c0, c1, c2, s0, s1, s2, p0, p1, p2))
    ndv += _neg(_corner((False, True, False), c0, c1, c2, s0, s1, s2, p0, p1, p2))
    ndv += _neg(_corner((True, False, False), c0, c1, c2, s0, s1, s2, p0, p1, p2))
    ndv += _neg(_corner((False, False, False), c0, c1, c2, s0, s1, s2, p0, p1, p2))
    ndv += _neg(_tet(_nb(x, y, z, m0 + m1, inv0, inv1, inv2, region, F64),
                     _nb(x, y, z, m0 + m2, inv0, inv1, inv2, region, F64),
                     _nb(x, y, z, m1 + m2, inv0, inv1, inv2, region, F64),
                     c0, c1, c2, (-1.0, -1.0, 0.0), (-1.0, 0.0, -1.0), (0.0, -1.0, -1.0)))
    ndv += _neg(_tet(_nb(x, y, z, n0 + n1, inv0, inv1, inv2, region, F64),
                     _nb(x, y, z, n1 + n2, inv0, inv1, inv2, region, F64),
                     _nb(x, y, z, n0 + n2, inv0, inv1, inv2, region, F64),
                     c0, c1, c2, (1.0, 1.0, 0.0), (0.0, 1.0, 1.0), (1.0, 0.0, 1.0)))
    ndv = ndv / 12.0
    # the mode's determinant from the same (replicated) neighbours, zero taps left out
    t0 = _taps(MODE, i0, S0)
    t1 = _taps(MODE, i1, S1)
    t2 = _taps(MODE, i2, S2)
    d = _det3(1.0 + _apply(t0, p0[0], c0, s0[0]), _apply(t1, p1[0], c0, s1[0]), _apply(t2, p2[0], c0, s2[0]),
              _apply(t0, p0[1], c1, s0[1]), 1.0 + _apply(t1, p1[1], c1, s1[1]), _apply(t2, p2[1], c1, s2[1]),
              _apply(t0, p0[2], c2, s0[2]), _apply(t1, p1[2], c2, s1[2]), 1.0 + _apply(t2, p2[2], c2, s2[2]))
    _accumulate(d, ndv, region, part_ptr + (b.to(tl.int64) * tl.num_programs(0) + pid) * 10, F64)


def _inverse(spacing):
    return [1.0 / float(s) for s in spacing]


@_library.triton_op("jacobian_det_forward")
def jacobian_det_forward(disp: torch.Tensor, mode: int, spacing: list[float]) -> torch.Tensor:
    disp = disp.contiguous()
    ndim = disp.dim() - 2
    sizes = list(disp.shape[2:]) + [1] * (3 - ndim)
    numel = disp[0, 0].numel()
    out = disp.new_empty((disp.shape[0], *disp.shape[2:]))
    inv = _inverse(spacing) + [1.0] * (3 - ndim)
    grid = (triton.cdiv(numel, BLOCK), disp.shape[0])
    wrap_triton(_det_kernel)[grid](disp, out, numel, *sizes, *inv, NDIM=ndim, MODE=mode,
                                   F64=disp.dtype == torch.float64, BLOCK_SIZE=BLOCK)
    return out


@_library.triton_op("jacobian_det_backward")
def jacobian_det_backward(grad_out: torch.Tensor, disp: torch.Tensor, mode: int, spacing: list[float]) -> torch.Tensor:
    disp = disp.contiguous()
    grad_out = grad_out.contiguous().to(disp.dtype)
    ndim = disp.dim() - 2
    numel = disp[0, 0].numel()
    out = torch.empty_like(disp)
    grid = (triton.cdiv(numel, BLOCK), disp.shape[0])
    f64 = disp.dtype == torch.float64
    if ndim == 2:
        wrap_triton(_backward2_kernel)[grid](disp, grad_out, out, numel, *disp.shape[2:], *_inverse(spacing),
                                             MODE=mode, F64=f64, BLOCK_SIZE=BLOCK)
    else:
        wrap_triton(_backward3_kernel)[grid](disp, grad_out, out, numel, *disp.shape[2:], *_inverse(spacing),
                                             MODE=mode, F64=f64, BLOCK_SIZE=BLOCK)
    return out


@_library.triton_op("jacobian_stats")
def jacobian_stats(disp: torch.Tensor, mode: int, spacing: list[float], crop: int) -> torch.Tensor:
    disp = disp.contiguous()
    ndim = disp.dim() - 2
    numel = disp[0, 0].numel()
    blocks = triton.cdiv(numel, BLOCK)
    part = disp.new_zeros((disp.shape[0], blocks, N_STATS), dtype=torch.float64)
    grid = (blocks, disp.shape[0])
    f64 = disp.dtype == torch.float64
    kernel = _stats2_kernel if ndim == 2 else _stats3_kernel
    wrap_triton(kernel)[grid](disp, part, numel, *disp.shape[2:], *_inverse(spacing), crop,
                              MODE=mode, F64=f64, BLOCK_SIZE=BLOCK)
    return part.sum(1)
