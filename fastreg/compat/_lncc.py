"""Drop-in LNCC losses with the signatures and values of their originals, computed by
fastreg's O(N) kernels (fastreg.ops.lncc):

  NCC(win).loss(y_true, y_pred)          the legacy VoxelMorph loss (voxelmorph/torch/losses.py):
                                         -mean(cross^2 / (I_var J_var + 1e-5)), box window,
                                         win an int, a list, or None (9 per axis); 1-, 2- or 3-D
  LocalNormalizedCrossCorrelationLoss    monai.losses.LocalNormalizedCrossCorrelationLoss
                                         (MONAI 1.6.1): rectangular / triangular / gaussian
                                         kernels built exactly as MONAI builds them,
                                         var = max(var, smooth_dr),
                                         ncc = (cross^2 + smooth_nr) / (t_var p_var), -reduce(ncc)
The legacy NCC pads every axis by win[0] // 2, whatever the other window sizes: with unequal
per-axis windows ([9, 5, 3]) its map is larger than the image and shifted, and with even
windows one voxel larger; both (and windows larger than the image) are computed by that
formula in torch (fastreg.reference.lncc.voxelmorph_ncc), quirk included, with a warning.
MONAI's kernel_size larger than the image (zero padding) runs fastreg.reference's formula,
with a warning. Inputs of mixed float dtypes are computed in the wider one.
Differences: the variances of NCC are clamped at 0 on the kernel path (VoxelMorph's can
round below 0 and give cc < 0 or > 1); each channel is windowed on its own (VoxelMorph
accepts one channel); MONAI's gradient at an exact tie var == smooth_dr is halved there,
full here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

import warnings

from fastreg import _backend
from fastreg import _validate as check
from fastreg.ops.lncc import lncc, lncc_map
from fastreg.reference import lncc as reference


class NCC:
    """Local (over window) normalized cross correlation loss (legacy VoxelMorph API)."""

    def __init__(self, win=None):
        self.win = win

    def loss(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        check.tensor(y_true, "y_true")
        check.tensor(y_pred, "y_pred")
        y_true, y_pred = _backend.promote(y_true, y_pred)
        ndim = y_true.dim() - 2
        if ndim not in (1, 2, 3):
            raise ValueError(f"y_true: expected (B, C, *S) with 1 to 3 spatial axes, got shape {tuple(y_true.shape)}")
        window = 9 if self.win is None else self.win
        windows = [window] * ndim if isinstance(window, int) else list(window)
        if len(set(windows)) != 1 or windows[0] % 2 == 0 or windows[0] > min(y_true.shape[2:]):
            warnings.warn(f"fastreg.compat NCC: window {window!r} (unequal, even or larger than the image) runs the legacy "
                          "VoxelMorph formula in torch, not fastreg's kernels", RuntimeWarning, stacklevel=2)
            return _backend.run_reference(reference.voxelmorph_ncc, y_true, y_pred, windows)
        if ndim == 1:  # as 2-D with a size-1 axis and a window of 1 along it
            return -lncc(y_true.unsqueeze(2), y_pred.unsqueeze(2), window=(1, windows[0]))
        return -lncc(y_true, y_pred, window=windows[0])


def _triangular(kernel_size: int) -> torch.Tensor:
    fsize = (kernel_size + 1) // 2
    if fsize % 2 == 0:
        fsize -= 1
    f = torch.ones((1, 1, fsize), dtype=torch.float).div(fsize)
    padding = (kernel_size - fsize) // 2 + fsize // 2
    return F.conv1d(f, f, padding=padding).reshape(-1)


def _gaussian(kernel_size: int) -> torch.Tensor:
    sigma = kernel_size / 3.0
    half = kernel_size // 2
    x = torch.arange(-half, half + 1, dtype=torch.float)
    return torch.exp(-0.5 / (sigma * sigma) * x**2)


# MONAI builds its kernels in float32; so do these (the weights are then used in float64).
_KERNELS = {"rectangular": None, "triangular": _triangular, "gaussian": _gaussian}


class LocalNormalizedCrossCorrelationLoss(_Loss):
    """Local squared zero-normalized cross-correlation loss (MONAI 1.6.1 API and values).

    forward(pred, target): (B, C, *S) each with ``spatial_dims`` spatial axes (1, 2 or 3).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        kernel_size: int = 3,
        kernel_type: str = "rectangular",
        reduction: str = "mean",
        smooth_nr: float = 0.0,
        smooth_dr: float = 1e-5,
    ) -> None:
        reduction = getattr(reduction, "value", reduction)
        check.choice(reduction, "reduction", ("none", "mean", "sum"))
        super().__init__(reduction=reduction)
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims: expected 1, 2 or 3, got {spatial_dims!r}")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd int >= 1, got {kernel_size!r}")
        check.choice(kernel_type, "kernel_type", tuple(_KERNELS))
        self.ndim, self.kernel_size, self.kernel_type = spatial_dims, kernel_size, kernel_type
        make = _KERNELS[kernel_type]
        kernel = torch.ones(kernel_size) if make is None else make(kernel_size)
        self.taps = [] if make is None else kernel.tolist()
        # MONAI's kernel_vol: the float32 sum of the outer product of the kernels.
        vol = kernel
        for _ in range(spatial_dims - 1):
            vol = torch.matmul(vol.unsqueeze(-1), kernel.unsqueeze(0))
        self.norm = float(torch.sum(vol))
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check.tensor(pred, "pred")
        check.tensor(target, "target")
        if pred.dim() - 2 != self.ndim:
            raise ValueError(f"pred: expected {self.ndim} spatial dimensions, got shape {tuple(pred.shape)}")
        if target.shape != pred.shape:
            raise ValueError(f"target: expected shape {tuple(pred.shape)} (that of pred), got {tuple(target.shape)}")
        check.same_device([("pred", pred), ("target", target)])
        t, p = _backend.promote(target, pred)
        windows = (self.kernel_size,) * self.ndim
        taps = list(self.taps) * self.ndim
        if self.ndim == 1:  # run 1-D as 2-D with a size-1 axis and a window of 1 along it
            t, p = t.unsqueeze(2), p.unsqueeze(2)
            windows, taps = (1, *windows), ([1.0] + taps if taps else [])
        if self.kernel_size > min(pred.shape[2:]):
            warnings.warn(f"fastreg.compat LocalNormalizedCrossCorrelationLoss: kernel_size {self.kernel_size} is larger "
                          f"than the image {tuple(pred.shape[2:])}: MONAI's zero-padded formula runs in torch, not "
                          "fastreg's kernels", RuntimeWarning, stacklevel=2)
            ncc = _backend.run_reference(reference.lncc_map, t, p, list(windows), taps, self.norm, self.smooth_nr,
                                         self.smooth_dr, 0.0)
        else:
            ncc = lncc_map(t, p, check.windows(windows, t.shape[2:]), taps, self.norm, self.smooth_nr, self.smooth_dr, 0.0)
        if self.ndim == 1:
            ncc = ncc.squeeze(2)
        if self.reduction == "sum":
            return ncc.sum().neg()
        if self.reduction == "none":
            return ncc.neg()
        return ncc.mean().neg()
