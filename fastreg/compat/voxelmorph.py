"""Drop-in replacements for VoxelMorph's (legacy, widely copied) PyTorch layers.

``SpatialTransformer(size, mode)``: same constructor, same ``forward(src, flow)``, same
state_dict (the float32 ``grid`` buffer (1, ndim, *size) that the original registers), but
the warp runs as one fastreg kernel without building the normalised sampling grid.
``NCC(win).loss(y_true, y_pred)``: the windowed NCC loss, computed by ``fastreg.lncc``.
``VecInt(inshape, nsteps)`` and ``ResizeTransform(vel_resize, ndims)``: scaling and squaring and
field resizing, computed by ``fastreg.integrate_svf`` and ``fastreg.resize_field``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fastreg import _validate as check
from fastreg.compat._integrate import ResizeTransform, VecInt  # noqa: F401  (re-exported)
from fastreg.compat._lncc import NCC  # noqa: F401  (re-exported: voxelmorph.torch.losses.NCC)
from fastreg.ops.warp import MODES, PADDINGS, warp
from fastreg.reference.warp import identity_grid


class SpatialTransformer(nn.Module):
    """N-D spatial transformer (VoxelMorph ``layers.SpatialTransformer``).

    Args:
        size: spatial size (H, W) or (D, H, W) of the images and flows.
        mode: "bilinear" or "nearest" (zero padding, align_corners=True, as the original).

    forward(src (B, C, *size), flow (B|1, ndim, *size) in voxels, ij order) -> (B, C, *size).
    """

    def __init__(self, size: Sequence[int], mode: str = "bilinear"):
        super().__init__()
        check.choice(mode, "mode", MODES)
        self.mode = mode
        self.register_buffer("grid", identity_grid(tuple(size), "cpu", torch.float32))

    def forward(self, src: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        size = tuple(self.grid.shape[2:])
        if tuple(flow.shape[2:]) != size:
            raise ValueError(f"flow: expected spatial size {size} (the transformer's size), got {tuple(flow.shape[2:])}")
        return warp(src, flow, self.mode, "zeros")
