"""Drop-in replacements for MONAI's registration blocks (``monai.networks.blocks``).

``Warp(mode, padding_mode)``: same constructor and ``forward(image, ddf)`` as MONAI 1.6.1's
``Warp`` with PyTorch's grid_sample path (default padding "border"), run as one fastreg kernel.
``LocalNormalizedCrossCorrelationLoss``: MONAI's LNCC loss (``monai.losses``), computed by
``fastreg.lncc``.
``DVF2DDF(num_steps, mode, padding_mode)``: scaling and squaring by ``fastreg.integrate_svf``.
"""
from __future__ import annotations

import torch
from torch import nn

from fastreg import _validate as check
from fastreg.compat._integrate import DVF2DDF  # noqa: F401  (re-exported)
from fastreg.compat._lncc import LocalNormalizedCrossCorrelationLoss  # noqa: F401  (re-exported)
from fastreg.ops.warp import MODES, PADDINGS, warp


class Warp(nn.Module):
    """Warp an image with a dense displacement field (MONAI ``Warp``).

    Args:
        mode: "bilinear" or "nearest" (MONAI's "bicubic" and integer spline orders are not supported).
        padding_mode: "border" (MONAI's default), "zeros" or "reflection".
        jitter: must be False (MONAI's random sub-voxel jitter of the reference grid is not supported).

    forward(image (B, C, *S), ddf (B, ndim, *S) in voxels, ij order) -> (B, C, *S).
    """

    def __init__(self, mode: str = "bilinear", padding_mode: str = "border", jitter: bool = False):
        super().__init__()
        check.choice(mode, "mode", MODES)
        check.choice(padding_mode, "padding_mode", PADDINGS)
        if jitter:
            raise ValueError("jitter: fastreg.compat.monai.Warp supports only jitter=False")
        self.mode = mode
        self.padding_mode = padding_mode

    def forward(self, image: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
        spatial = image.dim() - 2
        expected = (image.shape[0], spatial, *image.shape[2:])
        if tuple(ddf.shape) != expected:
            raise ValueError(f"ddf: expected shape {expected} for image shape {tuple(image.shape)}, got {tuple(ddf.shape)}")
        return warp(image, ddf, self.mode, self.padding_mode)
