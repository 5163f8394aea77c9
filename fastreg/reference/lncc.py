"""lncc in plain differentiable torch (convolutions): the oracle of every test and the
fallback backend, plus the legacy VoxelMorph NCC exactly as VoxelMorph computes it (the
peer of the shims' tests and of the benchmarks).

Contract (shared by every backend, see csrc/lncc/lncc.h):
  a, b (B, C, *S), 2-D or 3-D; each channel windowed on its own. With the window weights
  K = outer product of the per-axis weights (box: ones), zero padding, n = sum(K) (or norm):
    S_x = K * x, cross = S_ab - S_a S_b / n, var_x = max(S_xx - S_x^2 / n, floor),
    cc = (cross^2 + smooth_nr) / (var_a var_b + eps)            -> (B, C, *S)
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def window_kernel(window: Sequence[int], taps: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """The full window K (*window) as the outer product of the per-axis weights
    (``taps`` concatenated per axis; empty: box)."""
    kernel = None
    offset = 0
    for k in window:
        w = torch.tensor(taps[offset : offset + k], dtype=like.dtype, device=like.device) if taps else like.new_ones(k)
        offset += k
        kernel = w if kernel is None else kernel[..., None] * w
    return kernel


def lncc_map(
    a: torch.Tensor,
    b: torch.Tensor,
    window: Sequence[int],
    taps: Sequence[float] = (),
    norm: float = 0.0,
    smooth_nr: float = 0.0,
    floor: float = 0.0,
    eps: float = 1e-5,
) -> torch.Tensor:
    """The cc map (B, C, *S) of a, b (B, C, *S) by five grouped convolutions."""
    ndim = a.dim() - 2
    channels = a.shape[1]
    kernel = window_kernel(window, taps, a)
    n = norm if norm > 0 else float(kernel.sum())
    weight = kernel.expand(channels, 1, *window)
    conv = (F.conv2d, F.conv3d)[ndim - 2]
    padding = [k // 2 for k in window]

    def wsum(x):
        return conv(x, weight, padding=padding, groups=channels)

    sa, sb = wsum(a), wsum(b)
    saa, sbb, sab = wsum(a * a), wsum(b * b), wsum(a * b)
    cross = sab - sa * sb / n
    var_a = torch.clamp(saa - sa * sa / n, min=floor)
    var_b = torch.clamp(sbb - sb * sb / n, min=floor)
    return (cross * cross + smooth_nr) / (var_a * var_b + eps)


def voxelmorph_ncc(y_true: torch.Tensor, y_pred: torch.Tensor, win=None) -> torch.Tensor:
    """The legacy VoxelMorph ``NCC(win).loss(y_true, y_pred)`` (voxelmorph/torch/losses.py):
    five convolutions of a ones kernel (single channel, zero padding win // 2), the
    expanded cross and variance forms, ``cc = cross^2 / (I_var J_var + 1e-5)``, ``-mean(cc)``."""
    ndims = y_true.dim() - 2
    win = [9] * ndims if win is None else ([win] * ndims if isinstance(win, int) else list(win))
    sum_filt = torch.ones([1, 1, *win], dtype=y_true.dtype, device=y_true.device)
    pad_no = math.floor(win[0] / 2)
    stride = (1,) * ndims
    padding = (pad_no,) * ndims
    conv_fn = getattr(F, f"conv{ndims}d")
    ii, jj = y_true, y_pred
    i2, j2, ij = ii * ii, jj * jj, ii * jj
    i_sum = conv_fn(ii, sum_filt, stride=stride, padding=padding)
    j_sum = conv_fn(jj, sum_filt, stride=stride, padding=padding)
    i2_sum = conv_fn(i2, sum_filt, stride=stride, padding=padding)
    j2_sum = conv_fn(j2, sum_filt, stride=stride, padding=padding)
    ij_sum = conv_fn(ij, sum_filt, stride=stride, padding=padding)
    win_size = math.prod(win)
    u_i = i_sum / win_size
    u_j = j_sum / win_size
    cross = ij_sum - u_j * i_sum - u_i * j_sum + u_i * u_j * win_size
    i_var = i2_sum - 2 * u_i * i_sum + u_i * u_i * win_size
    j_var = j2_sum - 2 * u_j * j_sum + u_j * u_j * win_size
    cc = cross * cross / (i_var * j_var + 1e-5)
    return -torch.mean(cc)
