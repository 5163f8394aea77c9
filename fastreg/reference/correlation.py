"""local_correlation and vfa_attention in plain differentiable torch: the oracle of every
test, the fallback backend and the benchmark peers (two forms of each op).

Contract (shared by every backend, see csrc/correlation/correlation.h):
  f, m / q, k  (B, C, *S)   2-D (H, W) or 3-D (D, H, W) spatial, same shape
  offsets o_k, k < K = (2r+1)^ndim, in ij order, first spatial axis outermost
  local_correlation -> (B, K, *S): scale * sum_c f[c, p] * m[c, p + o_k], m zero-padded
                       ("zeros") or replicate-padded ("border") outside the image
  vfa_attention     -> (B, ndim, *S): sum_k softmax_k(q(p) . k(p + o_k) / T) * o_k, a
                       displacement in voxels (channel a along spatial axis a); keys
                       replicate-padded, T = sqrt(C) by default
Two forms: "shifted products" (pad once, one slice and channel sum per offset: memory
O(K * N)) and "unfold + matmul" as in the VFA papers (a (B, N, C, K) neighbourhood copy of
the features, K times their size, then a batched matmul with the queries).
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

PADDINGS = ("zeros", "border")


def offsets(radius: int, ndim: int) -> list[tuple[int, ...]]:
    """The K = (2r+1)^ndim neighbour offsets in ij order, first axis outermost."""
    return list(itertools.product(range(-radius, radius + 1), repeat=ndim))


def offset_table(radius: int, ndim: int, dtype, device) -> torch.Tensor:
    """The offsets as a (K, ndim) tensor."""
    return torch.tensor(offsets(radius, ndim), dtype=dtype, device=device)


def _pad(x: torch.Tensor, radius: int, padding_mode: str) -> torch.Tensor:
    ndim = x.dim() - 2
    pads = [radius] * (2 * ndim)
    if padding_mode == "zeros":
        return F.pad(x, pads)
    return F.pad(x, pads, mode="replicate")


def _shifted(padded: torch.Tensor, radius: int, offset: tuple[int, ...], shape) -> torch.Tensor:
    """The view of a padded tensor holding x[p + offset] at p."""
    index = [slice(None), slice(None)]
    index += [slice(radius + o, radius + o + s) for o, s in zip(offset, shape)]
    return padded[tuple(index)]


def local_correlation(f, m, radius: int = 1, scale: float = 1.0, padding_mode: str = "zeros"):
    """Cost volume (B, K, *S) by shifted products (pad m once, one product per offset)."""
    shape = f.shape[2:]
    mp = _pad(m, radius, padding_mode)
    out = [(f * _shifted(mp, radius, o, shape)).sum(1) for o in offsets(radius, f.dim() - 2)]
    return torch.stack(out, 1) * scale


def _neighbourhood(m, radius: int, padding_mode: str) -> torch.Tensor:
    """(B, N, C, K): the K neighbours of every voxel, an explicit copy (the unfold form)."""
    b, c = m.shape[:2]
    ndim = m.dim() - 2
    width = 2 * radius + 1
    x = _pad(m, radius, padding_mode)
    for a in range(ndim):
        x = x.unfold(2 + a, width, 1)  # (B, C, *S, width, ...) windows, first axis outermost
    x = x.reshape(b, c, -1, width**ndim)
    return x.permute(0, 2, 1, 3)


def local_correlation_unfold(f, m, radius: int = 1, scale: float = 1.0, padding_mode: str = "zeros"):
    """Cost volume (B, K, *S) by unfold + batched matmul (the VFA papers' form)."""
    b, c = f.shape[:2]
    nb = _neighbourhood(m, radius, padding_mode)
    query = f.reshape(b, c, -1).transpose(1, 2).unsqueeze(2)  # (B, N, 1, C)
    corr = torch.matmul(query, nb).squeeze(2)  # (B, N, K)
    return (corr.transpose(1, 2) * scale).reshape(b, -1, *f.shape[2:])


def _attend(logits: torch.Tensor, radius: int, ndim: int) -> torch.Tensor:
    """Softmax over dim 1 of (B, K, *S) logits, times the offsets: (B, ndim, *S)."""
    weights = torch.softmax(logits, dim=1)
    table = offset_table(radius, ndim, logits.dtype, logits.device)
    return torch.einsum("bk...,ka->ba...", weights, table)


def _inverse_temperature(q, temperature):
    if temperature is None:
        return q.shape[1] ** -0.5
    return 1.0 / temperature


def vfa_attention(q, k, radius: int = 1, temperature=None):
    """Vector-field attention (B, ndim, *S) by shifted products: logits q . k(p + o) / T."""
    logits = local_correlation(q, k, radius, 1.0, "border") * _inverse_temperature(q, temperature)
    return _attend(logits, radius, q.dim() - 2)


def vfa_attention_unfold(q, k, radius: int = 1, temperature=None):
    """Vector-field attention (B, ndim, *S) by unfold + matmul (the VFA papers' form)."""
    logits = local_correlation_unfold(q, k, radius, 1.0, "border") * _inverse_temperature(q, temperature)
    return _attend(logits, radius, q.dim() - 2)
