"""nn.Module faces of the warp ops (thin wrappers; the functions are in fastreg.ops.warp)."""
from __future__ import annotations

import torch
from torch import nn

from fastreg import _validate as check
from fastreg.ops.warp import MODES, PADDINGS, warp


class SpatialTransformer(nn.Module):
    """Warp an image by a displacement field: ``fastreg.warp`` as a module.

    Args:
        mode: "bilinear" (linear in every axis) or "nearest".
        padding_mode: "zeros" (VoxelMorph's default), "border" (MONAI's default) or "reflection".

    Shapes: image (B, C, *S), disp (B|1, ndim, *S) in voxels (ij order) -> (B, C, *S).

    Example::

        transformer = fastreg.nn.SpatialTransformer()
        moved = transformer(moving, flow)
    """

    def __init__(self, mode: str = "bilinear", padding_mode: str = "zeros"):
        super().__init__()
        check.choice(mode, "mode", MODES)
        check.choice(padding_mode, "padding_mode", PADDINGS)
        self.mode = mode
        self.padding_mode = padding_mode

    def forward(self, image: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        return warp(image, disp, self.mode, self.padding_mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, padding_mode={self.padding_mode!r}"
