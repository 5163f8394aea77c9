"""lncc as Triton kernels (GPU; CPU tensors under TRITON_INTERPRET=1).

Contract: that of fastreg::lncc_forward / fastreg::lncc_backward (csrc/lncc/lncc.h):
  a, b (B, C, *S) 2-D or 3-D, window: one odd size per spatial axis, taps: empty (box) or
  the per-axis weights concatenated, norm > 0 replaces n = the sum of the weights;
  cc = (cross^2 + smooth_nr) / (max(var_a, floor) max(var_b, floor) + eps)  -> (B, C, *S).
Layout of the work: the five products (a, b, a^2, b^2, ab) are written to a float64 buffer
(5, B, C, *S); each spatial axis is then filtered by one launch, one program per block of
lines along that axis (box: a running sum, cost independent of the window; non-finite
values are counted so that they make NaN exactly the windows holding them), ping-ponging
between two buffers; a pointwise kernel forms cc. The backward recomputes the sums, forms
d loss / d sums pointwise (G_a, beta, alpha, G_b, gamma: only those the requested
gradients need), filters them the same way (the filter is its own adjoint) and combines.
Every intermediate is float64, so float32 inputs keep float64 accuracy.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastreg import _library
from fastreg._backend import triton_interpret

# Elements per program of the pointwise kernels, lines per program of the filter. The
# interpreter runs programs one by one in Python: there, fewer and wider ones are faster.
_BLOCK = 8192 if triton_interpret() else 256
_LINES = 2048 if triton_interpret() else 64

# Quantity indices, as in csrc/lncc/lncc.h.
_GA, _ALPHA, _GRADS = 0, 2, 5


@triton.jit
def _narrow(x, ptr):
    """float64 x in the dtype of ptr; half types go through float32 (the interpreter turns a
    direct float64 -> bfloat16 cast into 0)."""
    if ptr.dtype.element_ty == tl.float64:
        return x
    return x.to(tl.float32).to(ptr.dtype.element_ty)


@triton.jit
def _moments_kernel(a_ptr, b_ptr, out_ptr, total, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    a = tl.load(a_ptr + offs, mask=mask).to(tl.float64)
    b = tl.load(b_ptr + offs, mask=mask).to(tl.float64)
    tl.store(out_ptr + offs, a, mask=mask)
    tl.store(out_ptr + total + offs, b, mask=mask)
    tl.store(out_ptr + 2 * total + offs, a * a, mask=mask)
    tl.store(out_ptr + 3 * total + offs, b * b, mask=mask)
    tl.store(out_ptr + 4 * total + offs, a * b, mask=mask)


@triton.jit
def _filter_kernel(in_ptr, out_ptr, w_ptr, n_lines, length, inner, r, BOX: tl.constexpr, LINES: tl.constexpr):
    # Lines along one axis of a (outer, length, inner) view; zero padding outside [0, length).
    line = tl.program_id(0) * LINES + tl.arange(0, LINES)
    lmask = line < n_lines
    base = (line // inner) * length * inner + line % inner
    if BOX:
        acc = tl.zeros((LINES,), dtype=tl.float64)
        bad = tl.zeros((LINES,), dtype=tl.int32)
        for j in range(0, r):
            v = tl.load(in_ptr + base + j * inner, mask=lmask & (j < length), other=0.0)
            fin = (v - v) == 0.0
            acc += tl.where(fin, v, 0.0)
            bad += tl.where(fin, 0, 1)
        for i in range(0, length):
            v = tl.load(in_ptr + base + (i + r) * inner, mask=lmask & (i + r < length), other=0.0)
            fin = (v - v) == 0.0
            acc += tl.where(fin, v, 0.0)
            bad += tl.where(fin, 0, 1)
            tl.store(out_ptr + base + i * inner, tl.where(bad > 0, float("nan"), acc), mask=lmask)
            v = tl.load(in_ptr + base + (i - r) * inner, mask=lmask & (i - r >= 0), other=0.0)
            fin = (v - v) == 0.0
            acc -= tl.where(fin, v, 0.0)
            bad -= tl.where(fin, 0, 1)
    else:
        for i in range(0, length):
            acc = tl.zeros((LINES,), dtype=tl.float64)
            for j in range(0, 2 * r + 1):
                p = i + j - r
                w = tl.load(w_ptr + j).to(tl.float64)
                v = tl.load(in_ptr + base + p * inner, mask=lmask & (p >= 0) & (p < length), other=0.0)
                acc += w * v
            tl.store(out_ptr + base + i * inner, acc, mask=lmask)


@triton.jit
def _cc_kernel(s_ptr, out_ptr, total, inv_n, smooth_nr, floor, eps, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    sa = tl.load(s_ptr + offs, mask=mask, other=0.0)
    sb = tl.load(s_ptr + total + offs, mask=mask, other=0.0)
    saa = tl.load(s_ptr + 2 * total + offs, mask=mask, other=0.0)
    sbb = tl.load(s_ptr + 3 * total + offs, mask=mask, other=0.0)
    sab = tl.load(s_ptr + 4 * total + offs, mask=mask, other=0.0)
    cross = sab - sa * sb * inv_n
    va = saa - sa * sa * inv_n
    vb = sbb - sb * sb * inv_n
    va = tl.where(va < floor, floor, va)  # keeps NaN
    vb = tl.where(vb < floor, floor, vb)
    cc = (cross * cross + smooth_nr) / (va * vb + eps)
    tl.store(out_ptr + offs, _narrow(cc, out_ptr), mask=mask)


@triton.jit
def _sum_grads_kernel(s_ptr, g_ptr, out_ptr, total, inv_n, smooth_nr, floor, eps, Q0: tl.constexpr,
                      Q1: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    sa = tl.load(s_ptr + offs, mask=mask, other=0.0)
    sb = tl.load(s_ptr + total + offs, mask=mask, other=0.0)
    saa = tl.load(s_ptr + 2 * total + offs, mask=mask, other=0.0)
    sbb = tl.load(s_ptr + 3 * total + offs, mask=mask, other=0.0)
    sab = tl.load(s_ptr + 4 * total + offs, mask=mask, other=0.0)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    cross = sab - sa * sb * inv_n
    va_raw = saa - sa * sa * inv_n
    vb_raw = sbb - sb * sb * inv_n
    va = tl.where(va_raw < floor, floor, va_raw)
    vb = tl.where(vb_raw < floor, floor, vb_raw)
    den = va * vb + eps
    cc = (cross * cross + smooth_nr) / den
    alpha = g * 2.0 * cross / den
    beta = tl.where(va_raw < floor, 0.0, -g * cc * vb / den)
    gamma = tl.where(vb_raw < floor, 0.0, -g * cc * va / den)
    # G_a, beta, alpha, G_b, gamma; quantities Q0..Q1-1 are stored, from slot 0.
    if Q0 == 0:
        tl.store(out_ptr + offs, -(alpha * sb + 2.0 * beta * sa) * inv_n, mask=mask)
        tl.store(out_ptr + total + offs, beta, mask=mask)
    tl.store(out_ptr + (2 - Q0) * total + offs, alpha, mask=mask)
    if Q1 == 5:
        tl.store(out_ptr + (3 - Q0) * total + offs, -(alpha * sa + 2.0 * gamma * sb) * inv_n, mask=mask)
        tl.store(out_ptr + (4 - Q0) * total + offs, gamma, mask=mask)


@triton.jit
def _combine_kernel(f_ptr, a_ptr, b_ptr, ga_ptr, gb_ptr, total, Q0: tl.constexpr, Q1: tl.constexpr,
                    BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    alpha = tl.load(f_ptr + (2 - Q0) * total + offs, mask=mask, other=0.0)
    if Q0 == 0:
        fga = tl.load(f_ptr + offs, mask=mask, other=0.0)
        beta = tl.load(f_ptr + total + offs, mask=mask, other=0.0)
        tl.store(ga_ptr + offs, _narrow(fga + 2.0 * a * beta + b * alpha, ga_ptr), mask=mask)
    if Q1 == 5:
        fgb = tl.load(f_ptr + (3 - Q0) * total + offs, mask=mask, other=0.0)
        gamma = tl.load(f_ptr + (4 - Q0) * total + offs, mask=mask, other=0.0)
        tl.store(gb_ptr + offs, _narrow(fgb + 2.0 * b * gamma + a * alpha, gb_ptr), mask=mask)


def _norm(window: list[int], taps: list[float], norm: float) -> float:
    if norm > 0:
        return norm
    if not taps:
        return float(math.prod(window))
    n, offset = 1.0, 0
    for k in window:
        n *= sum(taps[offset : offset + k])
        offset += k
    return n


def _window_sums(x: torch.Tensor, spatial: list[int], window: list[int], taps: list[float]) -> torch.Tensor:
    """Filter the float64 buffer x (Q, B, C, *spatial) along every spatial axis."""
    y = torch.empty_like(x)
    weights = torch.tensor(taps, dtype=torch.float64, device=x.device) if taps else x
    offset = 0
    for ax, (length, k) in enumerate(zip(spatial, window)):
        inner = math.prod(spatial[ax + 1 :])
        n_lines = x.numel() // length
        grid = (triton.cdiv(n_lines, _LINES),)
        w = weights[offset:] if taps else weights
        wrap_triton(_filter_kernel)[grid](x, y, w, n_lines, length, inner, k // 2, BOX=not taps, LINES=_LINES)
        offset += k
        x, y = y, x
    return x


def _sums(a: torch.Tensor, b: torch.Tensor, window: list[int], taps: list[float]) -> torch.Tensor:
    total = a.numel()
    x = torch.empty((5, *a.shape), dtype=torch.float64, device=a.device)
    wrap_triton(_moments_kernel)[(triton.cdiv(total, _BLOCK),)](a, b, x, total, BLOCK=_BLOCK)
    return _window_sums(x, list(a.shape[2:]), window, taps)


@_library.triton_op("lncc_forward")
def lncc_forward(
    a: torch.Tensor,
    b: torch.Tensor,
    window: list[int],
    taps: list[float],
    norm: float,
    smooth_nr: float,
    floor: float,
    eps: float,
) -> torch.Tensor:
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty_like(a)
    total = a.numel()
    if total == 0:
        return out
    s = _sums(a, b, window, taps)
    inv_n = 1.0 / _norm(window, taps, norm)
    grid = (triton.cdiv(total, _BLOCK),)
    wrap_triton(_cc_kernel)[grid](s, out, total, inv_n, smooth_nr, floor, eps, BLOCK=_BLOCK)
    return out


@_library.triton_op("lncc_backward")
def lncc_backward(
    grad_out: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    window: list[int],
    taps: list[float],
    norm: float,
    smooth_nr: float,
    floor: float,
    eps: float,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = a.contiguous(), b.contiguous()
    g = grad_out.contiguous()
    need_a, need_b = bool(output_mask[0]), bool(output_mask[1])
    ga = torch.empty_like(a) if need_a else a.new_empty((0,))
    gb = torch.empty_like(b) if need_b else b.new_empty((0,))
    total = a.numel()
    if total == 0 or not (need_a or need_b):
        return ga, gb
    q0 = _GA if need_a else _ALPHA
    q1 = _GRADS if need_b else _ALPHA + 1
    s = _sums(a, b, window, taps)
    inv_n = 1.0 / _norm(window, taps, norm)
    grid = (triton.cdiv(total, _BLOCK),)
    G = torch.empty((q1 - q0, *a.shape), dtype=torch.float64, device=a.device)
    wrap_triton(_sum_grads_kernel)[grid](s, g, G, total, inv_n, smooth_nr, floor, eps, Q0=q0, Q1=q1, BLOCK=_BLOCK)
    del s
    f = _window_sums(G, list(a.shape[2:]), window, taps)
    wrap_triton(_combine_kernel)[grid](f, a, b, ga if need_a else a, gb if need_b else b, total, Q0=q0, Q1=q1,
                                       BLOCK=_BLOCK)
    return ga, gb


