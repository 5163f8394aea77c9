"""Triton kernels of local_correlation and vfa_attention (contract: fastreg/ops/correlation.py
and csrc/correlation/correlation.h; the same math as the C++ kernels).

  f, m / q, k  (B, C, *S) contiguous      out (B, K, *S) / displacement (B, ndim, *S)
One program handles a (KP, BV) tile: every offset (K rounded up to a power of two) of BV
voxels of one batch item (and, for the gradients, of one channel).
2-D inputs run as 3-D with a leading axis of size 1 (its offset is always 0). Half
types accumulate in float32, float64 in float64. Gradients of the padded operand are
gathers (no atomics, deterministic). vfa_attention stores no logits: forward is an online
softmax that keeps the per-voxel log-sum-exp; backward recomputes the logits and writes
d loss / d logit into one (B, K, *S) temporary for the key gradient.
Defined as the ops fastreg::<kernel>_triton by fastreg._library.triton_op.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastreg import _library


@triton.jit
def _offsets(R: tl.constexpr, NDIM: tl.constexpr, KP: tl.constexpr):
    """All offsets o_k (ij order, first axis outermost) as (KP, 1) columns, KP = K rounded
    up to a power of two (rows k >= K are masked); 2-D has o0 = 0."""
    W: tl.constexpr = 2 * R + 1
    K: tl.constexpr = W * W * W if NDIM == 3 else W * W
    kk = tl.arange(0, KP)[:, None]
    o2 = kk % W - R
    o1 = (kk // W) % W - R
    if NDIM == 3:
        o0 = kk // (W * W) - R
    else:
        o0 = kk * 0
    return kk, kk < K, o0, o1, o2


@triton.jit
def _neighbour(i, o, n, PADDING: tl.constexpr):
    """Index of i + o along an axis of size n after padding, and whether it is inside."""
    j = i + o
    if PADDING == 0:
        ok = (j >= 0) & (j < n)
        j = tl.where(ok, j, 0)
    else:
        ok = j == j
        j = tl.minimum(tl.maximum(j, 0), n - 1)
    return j, ok


@triton.jit
def _sources(q, o, n, PADDING: tl.constexpr):
    """The interval [lo, hi] of p along an axis of size n with pad(p + o) == q."""
    lo = q - o
    hi = q - o
    if PADDING == 1:
        lo = tl.where(q == 0, 0, lo)
        hi = tl.where(q == n - 1, n - 1, hi)
    return tl.maximum(lo, 0), tl.minimum(hi, n - 1)


@triton.jit
def _voxels(S1, S2, N, BV: tl.constexpr):
    """The BV voxels of this program as (1, BV) rows: flat index, in-bounds, axis indices."""
    v = (tl.program_id(0) * BV + tl.arange(0, BV))[None, :]
    return v, v < N, v // (S1 * S2), (v // S2) % S1, v % S2


@triton.jit
def _neighbour_index(i0, i1, i2, o0, o1, o2, S0, S1, S2, PADDING: tl.constexpr):
    """(KP, BV) flat index of every neighbour and whether it lies inside (always, with border)."""
    j0, ok0 = _neighbour(i0, o0, S0, PADDING)
    j1, ok1 = _neighbour(i1, o1, S1, PADDING)
    j2, ok2 = _neighbour(i2, o2, S2, PADDING)
    return (j0 * S1 + j1) * S2 + j2, ok0 & ok1 & ok2


@triton.jit
def _dots(a_ptr, b_ptr, C, N, S0, S1, S2, PADDING: tl.constexpr, R: tl.constexpr, NDIM: tl.constexpr,
          ACC: tl.constexpr, KP: tl.constexpr, BV: tl.constexpr):
    """(KP, BV) tile of sum_c a[c, p] * pad(b)[c, p + o_k] for one batch item."""
    v, inb, i0, i1, i2 = _voxels(S1, S2, N, BV)
    kk, kok, o0, o1, o2 = _offsets(R, NDIM, KP)
    nv, ok = _neighbour_index(i0, i1, i2, o0, o1, o2, S0, S1, S2, PADDING)
    ok = ok & kok & inb
    acc = tl.zeros([KP, BV], dtype=ACC)
    for c in range(C):
        a = tl.load(a_ptr + c * N + v, mask=inb, other=0.0).to(ACC)
        b = tl.load(b_ptr + c * N + nv, mask=ok, other=0.0).to(ACC)
        acc += a * b
    return acc


@triton.jit
def _correlation_forward_kernel(f_ptr, m_ptr, out_ptr, C, N, S0, S1, S2, scale_ptr,
                                R: tl.constexpr, NDIM: tl.constexpr, PADDING: tl.constexpr,
                                ACC: tl.constexpr, KP: tl.constexpr, BV: tl.constexpr):
    scale = tl.load(scale_ptr)  # in the accumulation type (a Python float would be fp32)
    b = tl.program_id(1).to(tl.int64)
    v, inb, i0, i1, i2 = _voxels(S1, S2, N, BV)
    kk, kok, o0, o1, o2 = _offsets(R, NDIM, KP)
    K: tl.constexpr = (2 * R + 1) ** NDIM
    acc = _dots(f_ptr + b * C * N, m_ptr + b * C * N, C, N, S0, S1, S2, PADDING, R, NDIM, ACC, KP, BV)
    tl.store(out_ptr + (b * K + kk) * N + v, (acc * scale).to(out_ptr.dtype.element_ty), mask=kok & inb)


@triton.jit
def _neighbour_gather_kernel(g_ptr, b_ptr, out_ptr, C, N, S0, S1, S2, scale_ptr,
                             R: tl.constexpr, NDIM: tl.constexpr, PADDING: tl.constexpr,
                             ACC: tl.constexpr, KP: tl.constexpr, BV: tl.constexpr):
    """out[c, p] = scale * sum_k g[k, p] * pad(b)[c, p + o_k] (gradient of the unpadded operand)."""
    scale = tl.load(scale_ptr)  # in the accumulation type (a Python float would be fp32)
    bc = tl.program_id(1).to(tl.int64)
    batch = bc // C
    v, inb, i0, i1, i2 = _voxels(S1, S2, N, BV)
    kk, kok, o0, o1, o2 = _offsets(R, NDIM, KP)
    K: tl.constexpr = (2 * R + 1) ** NDIM
    nv, ok = _neighbour_index(i0, i1, i2, o0, o1, o2, S0, S1, S2, PADDING)
    g = tl.load(g_ptr + (batch * K + kk) * N + v, mask=kok & inb, other=0.0).to(ACC)
    x = tl.load(b_ptr + bc * N + nv, mask=ok & kok & inb, other=0.0).to(ACC)
    out = tl.sum(g * x, axis=0)[None, :] * scale
    tl.store(out_ptr + bc * N + v, out.to(out_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _source_gather_kernel(g_ptr, a_ptr, out_ptr, C, N, S0, S1, S2, scale_ptr,
                          R: tl.constexpr, NDIM: tl.constexpr, PADDING: tl.constexpr,
                          ACC: tl.constexpr, KP: tl.constexpr, BV: tl.constexpr,
                          EXT0: tl.constexpr, EXT: tl.constexpr):
    """out[c, q] = scale * sum_k sum_{p : pad(p + o_k) = q} g[k, p] * a[c, p] (gradient of the
    padded operand, as a gather: along an axis the sources form an interval of at most EXT
    voxels, R + 1 with border padding, 1 with zeros; EXT0 = 1 on the dummy axis of 2-D)."""
    scale = tl.load(scale_ptr)  # in the accumulation type (a Python float would be fp32)
    bc = tl.program_id(1).to(tl.int64)
    batch = bc // C
    v, inb, i0, i1, i2 = _voxels(S1, S2, N, BV)
    kk, kok, o0, o1, o2 = _offsets(R, NDIM, KP)
    K: tl.constexpr = (2 * R + 1) ** NDIM
    lo0, hi0 = _sources(i0, o0, S0, PADDING)
    lo1, hi1 = _sources(i1, o1, S1, PADDING)
    lo2, hi2 = _sources(i2, o2, S2, PADDING)
    acc = tl.zeros([KP, BV], dtype=ACC)
    for t0 in tl.static_range(EXT0):
        for t1 in tl.static_range(EXT):
            for t2 in tl.static_range(EXT):
                p0 = lo0 + t0
                p1 = lo1 + t1
                p2 = lo2 + t2
                ok = (p0 <= hi0) & (p1 <= hi1) & (p2 <= hi2) & kok & inb
                p = tl.where(ok, (p0 * S1 + p1) * S2 + p2, 0)
                g = tl.load(g_ptr + (batch * K + kk) * N + p, mask=ok, other=0.0).to(ACC)
                x = tl.load(a_ptr + bc * N + p, mask=ok, other=0.0).to(ACC)
                acc += g * x
    out = tl.sum(acc, axis=0)[None, :] * scale
    tl.store(out_ptr + bc * N + v, out.to(out_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _softmax_weights(q_ptr, k_ptr, C, N, S0, S1, S2, scale, R: tl.constexpr, NDIM: tl.constexpr,
                     ACC: tl.constexpr, KP: tl.constexpr, BV: tl.constexpr):
    """Logits (KP, BV) of one batch item, rows k >= K at -inf, and their column max."""
    kk, kok, o0, o1, o2 = _offsets(R, NDIM, KP)
    logits = scale * _dots(q_ptr, k_ptr, C, N, S0, S1, S2, 1, R, NDIM, ACC, KP, BV)
    logits = tl.where(kok, logits, float("-inf"))
    return logits


@triton.jit
def _vfa_forward_kernel(q_ptr, k_ptr, out_ptr, lse_ptr, C, N, S0, S1, S2, scale_ptr,
                        R: tl.constexpr, NDIM: tl.constexpr, ACC: tl.constexpr, KP: tl.constexpr,
                        BV: tl.constexpr):
    scale = tl.load(scale_ptr)  # in the accumulation type (a Python float would be fp32)
    b = tl.program_id(1).to(tl.int64)
    v, inb, i0, i1, i2 = _voxels(S1, S2, N, BV)
    kk, kok, o0, o1, o2 = _offsets(R, NDIM, KP)
    logits = _softmax_weights(q_ptr + b * C * N, k_ptr + b * C * N, C, N, S0, S1, S2, scale,
                              R, NDIM, ACC, KP, BV)
    mx = tl.max(logits, axis=0)[None, :]
    e = tl.exp(logits - mx)  # a NaN logit makes its column's sum, and so every output, NaN
    total = tl.sum(e, axis=0)[None, :]
    tl.store(lse_ptr + b * N + v, mx + tl.log(total), mask=inb)
    ty = out_ptr.dtype.element_ty
    d1 = (tl.sum(e * o1, axis=0)[None, :] / total).to(ty)
    d2 = (tl.sum(e * o2, axis=0)[None, :] / total).to(ty)
    if NDIM == 3:
        d0 = (tl.sum(e * o0, axis=0)[None, :] / total).to(ty)
        tl.store(out_ptr + (b * 3) * N + v, d0, mask=inb)
        tl.store(out_ptr + (b * 3 + 1) * N + v, d1, mask=inb)
        tl.store(out_ptr + (b * 3 + 2) * N + v, d2, mask=inb)
    else:
        tl.store(out_ptr + (b * 2) * N + v, d1, mask=inb)
        tl.store(out_ptr + (b * 2 + 1) * N + v, d2, mask=inb)


@triton.jit
def _vfa_dlogit_kernel(g_ptr, q_ptr, k_ptr, out_ptr, lse_ptr, dl_ptr, C, N, S0, S1, S2, scale_ptr,
                       R: tl.constexpr, NDIM: tl.constexpr, ACC: tl.constexpr, KP: tl.constexpr,
                       BV: tl.constexpr):
    """dl[k, p] = scale * w_k (G_k - g . out), G_k = g . o_k, w_k = exp(logit_k - lse) recomputed."""
    scale = tl.load(scale_ptr)  # in the accumulation type (a Python float would be fp32)
    b = tl.program_id(1).to(tl.int64)
    v, inb, i0, i1, i2 = _voxels(S1, S2, N, BV)
    kk, kok, o0, o1, o2 = _offsets(R, NDIM, KP)
    K: tl.constexpr = (2 * R + 1) ** NDIM
    base = b * NDIM * N + v
    G = tl.zeros([KP, BV], dtype=ACC)
    gdo = tl.zeros([1, BV], dtype=ACC)
    for a in tl.static_range(NDIM):
        g = tl.load(g_ptr + base + a * N, mask=inb, other=0.0).to(ACC)
        gdo += g * tl.load(out_ptr + base + a * N, mask=inb, other=0.0).to(ACC)
        if a == NDIM - 1:
            G += g * o2
        elif a == NDIM - 2:
            G += g * o1
        else:
            G += g * o0
    lse = tl.load(lse_ptr + b * N + v, mask=inb, other=0.0)
    logits = _softmax_weights(q_ptr + b * C * N, k_ptr + b * C * N, C, N, S0, S1, S2, scale,
                              R, NDIM, ACC, KP, BV)
    dl = scale * tl.exp(logits - lse) * (G - gdo)
    tl.store(dl_ptr + (b * K + kk) * N + v, dl, mask=kok & inb)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the log-sum-exp and of the kernels' sums (float32 for half types)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Launch:
    """Sizes and meta-parameters of one call: 2-D runs as 3-D with a leading size-1 axis."""

    def __init__(self, x: torch.Tensor, radius: int):
        self.device = x.device
        self.dtype = _accumulation_dtype(x.dtype)
        self.ndim = x.dim() - 2
        self.sizes = (1, *x.shape[2:]) if self.ndim == 2 else tuple(x.shape[2:])
        self.n = self.sizes[0] * self.sizes[1] * self.sizes[2]
        self.count = (2 * radius + 1) ** self.ndim
        kp = triton.next_power_of_2(self.count)
        self.meta = dict(
            R=radius,
            NDIM=self.ndim,
            ACC=tl.float64 if self.dtype == torch.float64 else tl.float32,
            KP=kp,
            BV=max(16, min(128, 4096 // kp)),  # a (KP, BV) tile per program
        )

    def scale(self, value: float) -> torch.Tensor:
        """A scale factor as a one-element tensor of the accumulation type (exact in float64)."""
        return torch.full((1,), value, dtype=self.dtype, device=self.device)

    def grid(self, programs: int):
        return (triton.cdiv(self.n, self.meta["BV"]), programs)


def _gradients(dl, a, b, radius: int, scale: float, padding: int, output_mask):
    """Gradients of sum_k dl[k] * (a . pad(b) shifted by o_k) with respect to a and b."""
    run = _Launch(a, radius)
    grad_a = torch.empty_like(a) if output_mask[0] else a.new_empty((0,))
    grad_b = torch.empty_like(b) if output_mask[1] else b.new_empty((0,))
    if a.numel() == 0:
        return grad_a, grad_b
    grid = run.grid(a.shape[0] * a.shape[1])
    args = (a.shape[1], run.n, *run.sizes, run.scale(scale))
    if output_mask[0]:
        wrap_triton(_neighbour_gather_kernel)[grid](dl, b, grad_a, *args, PADDING=padding, **run.meta)
    if output_mask[1]:
        ext = radius + 1 if padding == 1 else 1
        wrap_triton(_source_gather_kernel)[grid](
            dl, a, grad_b, *args, PADDING=padding, **run.meta, EXT0=ext if run.ndim == 3 else 1, EXT=ext
        )
    return grad_a, grad_b


@_library.triton_op("local_correlation_forward")
def local_correlation_forward(f: torch.Tensor, m: torch.Tensor, radius: int, scale: float, padding: int) -> torch.Tensor:
    f, m = f.contiguous(), m.contiguous()
    run = _Launch(f, radius)
    out = f.new_empty((f.shape[0], run.count, *f.shape[2:]))
    if out.numel() == 0:
        return out
    wrap_triton(_correlation_forward_kernel)[run.grid(f.shape[0])](
        f, m, out, f.shape[1], run.n, *run.sizes, run.scale(scale), PADDING=padding, **run.meta
    )
    return out


@_library.triton_op("local_correlation_backward")
def local_correlation_backward(
    grad_out: torch.Tensor, f: torch.Tensor, m: torch.Tensor, radius: int, scale: float, padding: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    g = grad_out.contiguous().to(f.dtype)
    return _gradients(g, f.contiguous(), m.contiguous(), radius, scale, padding, output_mask)


@_library.triton_op("vfa_attention_forward")
def vfa_attention_forward(q: torch.Tensor, k: torch.Tensor, radius: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    q, k = q.contiguous(), k.contiguous()
    run = _Launch(q, radius)
    out = q.new_empty((q.shape[0], run.ndim, *q.shape[2:]))
    lse = q.new_empty((q.shape[0], *q.shape[2:]), dtype=_accumulation_dtype(q.dtype))
    if out.numel() == 0:
        return out, lse
    wrap_triton(_vfa_forward_kernel)[run.grid(q.shape[0])](
        q, k, out, lse, q.shape[1], run.n, *run.sizes, run.scale(scale), **run.meta
    )
    return out, lse


@_library.triton_op("vfa_attention_backward")
def vfa_attention_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    radius: int, scale: float, output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    q, k = q.contiguous(), k.contiguous()
    run = _Launch(q, radius)
    dtype = _accumulation_dtype(q.dtype)
    dl = q.new_empty((q.shape[0], run.count, *q.shape[2:]), dtype=dtype)
    if q.numel() and (output_mask[0] or output_mask[1]):
        g = grad_out.contiguous().to(q.dtype)
        wrap_triton(_vfa_dlogit_kernel)[run.grid(q.shape[0])](
            g, q, k, out.contiguous().to(q.dtype), lse.contiguous().to(dtype), dl, q.shape[1], run.n,
            *run.sizes, run.scale(scale), **run.meta
        )
    return _gradients(dl, q, k, radius, 1.0, 1, output_mask)
