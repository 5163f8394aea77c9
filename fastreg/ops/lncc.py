"""lncc: local normalized cross-correlation, O(N) whatever the window, exact gradients.

Contract (every backend; per-voxel math in csrc/lncc/lncc.h):
  a, b    (B, C, *S)    2-D (H, W) or 3-D (D, H, W), same shape, dtype and device; each
                        channel is windowed on its own
  window  odd int or one odd int per spatial axis, 1 <= window <= size of that axis
  out     reduction "mean" / "sum": a 0-d tensor; "none": the cc map (B, C, *S)
Semantics are VoxelMorph's NCC: windowed sums with zero padding over a window of volume n
(n stays the full window volume at the borders), cross = S_ab - S_a S_b / n,
var_x = S_xx - S_x^2 / n, cc = cross^2 / (var_a var_b + eps). The variances are clamped at
0 before the product, so rounding cannot push cc above 1 or make it negative, and with
eps > 0 constant or all-zero windows give cc = 0 (no NaN or inf); with eps = 0 they give
0 / 0 = NaN, as VoxelMorph's formula does (keep eps > 0 for a loss). kernel="gaussian" weights the sums by
w(x) = exp(-x^2 / (2 sigma^2)) per axis (peak 1, truncated to the window) with
n = the sum of the weights; sigma defaults to window / 3, MONAI's convention
(monai.losses.LocalNormalizedCrossCorrelationLoss, make_gaussian_kernel). Box sums are
running sums (cost independent of the window); Gaussian sums cost O(window) per axis.
All sums accumulate in float64, so float32 inputs keep float64 accuracy (also on 0-4095
intensities). NaN or inf inputs give NaN exactly where the window holds them.
Gradients flow to both inputs (derived analytically: the backward is again windowed sums).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from fastreg import _backend, _library
from fastreg import _validate as check
from fastreg.reference import lncc as reference

KERNELS = ("box", "gaussian")
REDUCTIONS = ("mean", "sum", "none")


def lncc(
    a: torch.Tensor,
    b: torch.Tensor,
    window: int | Sequence[int] = 9,
    kernel: str = "box",
    sigma: float | Sequence[float] | None = None,
    reduction: str = "mean",
    eps: float = 1e-5,
) -> torch.Tensor:
    """Local normalized (squared) cross-correlation of ``a`` and ``b`` (B, C, *S).

    Returns the mean (or sum) of the per-voxel cc map, or the map (B, C, *S) itself with
    ``reduction="none"``. Example::

        loss = -fastreg.lncc(fixed, moved, window=9)        # VoxelMorph's NCC loss
        cc = fastreg.lncc(a, b, 7, kernel="gaussian", reduction="none")
    """
    a, b = _backend.autocast_promote(a, b)
    check.tensor(a, "a")
    check.tensor(b, "b")
    ndim = check.spatial_ndim(a, "a")
    if tuple(b.shape) != tuple(a.shape):
        raise ValueError(f"b: expected shape {tuple(a.shape)} (that of a), got {tuple(b.shape)}")
    check.same_device([("a", a), ("b", b)])
    check.same_dtype([("a", a), ("b", b)])
    check.lncc_options(window, kernel, sigma, eps, KERNELS)
    windows = check.windows(window, a.shape[2:])
    check.choice(reduction, "reduction", REDUCTIONS)
    taps = [] if kernel == "box" else gaussian_taps(windows, sigma)
    cc = lncc_map(a, b, windows, taps, 0.0, 0.0, 0.0, float(eps))
    if reduction == "mean":
        return cc.mean()
    if reduction == "sum":
        return cc.sum()
    return cc


def gaussian_taps(windows: Sequence[int], sigma) -> list[float]:
    """Per-axis Gaussian weights exp(-x^2 / (2 sigma^2)), x = -k//2..k//2, concatenated;
    sigma defaults to k / 3 per axis (MONAI)."""
    sigmas = [k / 3.0 for k in windows] if sigma is None else check.sigmas(sigma, len(windows))
    taps = []
    for k, s in zip(windows, sigmas):
        taps += [math.exp(-0.5 * (x / s) ** 2) for x in range(-(k // 2), k // 2 + 1)]
    return taps


def lncc_map(
    a: torch.Tensor,
    b: torch.Tensor,
    window: Sequence[int],
    taps: Sequence[float],
    norm: float,
    smooth_nr: float,
    floor: float,
    eps: float,
) -> torch.Tensor:
    """The cc map (B, C, *S) with the general per-voxel formula of csrc/lncc/lncc.h
    (``(cross^2 + smooth_nr) / (max(var_a, floor) max(var_b, floor) + eps)``; ``taps``
    empty: box; ``norm`` > 0 replaces n, the sum of the weights). Inputs must be validated
    by the caller (``lncc``, the compat shims)."""
    window, taps = list(window), [float(t) for t in taps]
    if a.numel() == 0:
        return _backend.empty_result(a.shape, a, b)
    backend = _backend.select("lncc", a.device)
    if backend == "reference":
        return _backend.run_reference(reference.lncc_map, a, b, window, taps, norm, smooth_nr, floor, eps)
    return _library.kernel("lncc_forward", backend)(a, b, window, taps, norm, smooth_nr, floor, eps)


# --- the op family's declaration (fastreg/_library.py) ------------------------------------


def _fake_forward(a, b, window, taps, norm, smooth_nr, floor, eps):
    return a.new_empty(a.shape)


FAMILY = _library.Family(
    name="lncc",
    fakes={"lncc_forward": _fake_forward},
    autograd=(_library.Autograd("lncc_forward", "lncc_backward", reference.lncc_map, inputs=2),),
)
if _library.triton_runnable():
    from fastreg.triton import lncc as _triton  # noqa: F401  (defines fastreg::lncc_*_triton)
_library.register(FAMILY)
