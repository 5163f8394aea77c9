"""Drop-in replacements for voxelmorph 0.3.4's ``voxelmorph.nn.modules`` (the API ``pip install
voxelmorph`` gives today), computed by fastreg ops; same constructors, forwards and values.

  SpatialTransformer(interpolation_mode="linear", align_corners=True, device=None)
  IntegrateVelocityField(shape=None, steps=1, interpolation_mode="linear", align_corners=True, device=None)
  ResizeDisplacementField(scale_factor=1.0, interpolation_mode="linear", align_corners=True)

Fields are (B, ndim, *S) in voxels, ij order, zero padding. interpolation_mode "linear"
(or "bilinear", "trilinear"), "nearest" or "bicubic" run fastreg kernels;
``align_corners=False`` (VoxelMorph then normalises the coordinates for align_corners=True
and samples with align_corners=False) runs that formula with torch.grid_sample and a warning.
Integer images are sampled as float32 (nearest mode casts back), mixed float dtypes in the
wider one, as the original. ``device`` and ``shape`` are accepted and unused, as in the
original.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from fastreg import _backend
from fastreg import _validate as check
from fastreg.compat._warp import grid_sample_warp
from fastreg.ops.integrate import integrate_svf
from fastreg.ops.resize import resize_field
from fastreg.ops.warp import warp

# interpolation_mode -> fastreg mode: "linear" as the original infers it, the other names go
# to grid_sample unchanged there ("trilinear" read as "bilinear"; "bicubic" is 2-D only there,
# fastreg's tricubic in 3-D here).
_MODES = {"linear": "bilinear", "bilinear": "bilinear", "trilinear": "bilinear", "nearest": "nearest",
          "bicubic": "bicubic"}


class SpatialTransformer(nn.Module):
    """Warp ``moving_image`` (B, C, *S) by ``deformation_field`` (B, ndim, *S) in voxels
    (voxelmorph.nn.modules.SpatialTransformer)."""

    def __init__(self, interpolation_mode: str = "linear", align_corners: bool = True, device=None):
        super().__init__()
        check.choice(interpolation_mode, "interpolation_mode", tuple(_MODES))
        self.interpolation_mode = interpolation_mode
        self.align_corners = bool(align_corners)

    def forward(self, moving_image: torch.Tensor, deformation_field: torch.Tensor) -> torch.Tensor:
        if not isinstance(moving_image, torch.Tensor):
            raise TypeError(f"moving_image: expected a torch.Tensor, got {type(moving_image).__name__}")
        check.tensor(deformation_field, "deformation_field")
        mode = _MODES[self.interpolation_mode]
        restore = None
        image = moving_image
        if not image.is_floating_point():
            restore = image.dtype if mode == "nearest" else None
            image = image.float()
        image, field = _backend.promote(image, deformation_field)
        if self.align_corners:
            out = warp(image, field, mode, "zeros")
        else:
            warnings.warn("fastreg.compat.voxelmorph.nn.modules.SpatialTransformer: align_corners=False runs "
                          "torch grid_sample (VoxelMorph's formula), not fastreg's kernels", RuntimeWarning, stacklevel=2)
            out = grid_sample_warp(image, field, mode, "zeros", align_corners=False)
        return out if restore is None else out.to(restore)


class IntegrateVelocityField(nn.Module):
    """Scaling and squaring of a velocity field (voxelmorph.nn.modules.IntegrateVelocityField):
    ``vec / 2**steps``, then ``steps`` times ``disp + transformer(disp, disp)``. Linear mode
    with align_corners=True is one fused fastreg kernel per step; the others run the
    ``transformer`` (this module's SpatialTransformer, as the original's attribute)."""

    def __init__(self, shape=None, steps: int = 1, interpolation_mode: str = "linear", align_corners: bool = True,
                 device=None):
        super().__init__()
        self.steps = check.squaring_steps(steps, "steps")
        self.scale = 1.0 / (2**self.steps)
        self.transformer = SpatialTransformer(interpolation_mode=interpolation_mode, align_corners=align_corners)

    def forward(self, velocity_field: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        if _MODES[t.interpolation_mode] == "bilinear" and t.align_corners:
            return integrate_svf(velocity_field, self.steps, "zeros")
        disp = velocity_field * self.scale if self.steps else velocity_field
        for _ in range(self.steps):
            disp = disp + t(disp, disp)
        return disp


class ResizeDisplacementField(nn.Module):
    """Resize a displacement field and scale its vectors by ``scale_factor``
    (voxelmorph.nn.modules.ResizeDisplacementField). Linear with align_corners=True is
    ``fastreg.resize_field``; other modes ("nearest", "bicubic") and align_corners=False
    interpolate with torch as the original."""

    def __init__(self, scale_factor: float = 1.0, interpolation_mode: str = "linear", align_corners: bool = True):
        super().__init__()
        check.positive_number(scale_factor, "scale_factor")
        check.choice(interpolation_mode, "interpolation_mode", ("linear", "nearest", "bicubic"))
        self.scale_factor, self.interpolation_mode, self.align_corners = scale_factor, interpolation_mode, align_corners

    def forward(self, disp: torch.Tensor) -> torch.Tensor:
        if self.interpolation_mode == "linear" and self.align_corners:
            return resize_field(disp, scale_factor=float(self.scale_factor))
        mode = self.interpolation_mode
        if mode == "linear":
            mode = "bilinear" if disp.dim() == 4 else "trilinear"
        corners = None if mode == "nearest" else self.align_corners
        return F.interpolate(disp * self.scale_factor, scale_factor=self.scale_factor, mode=mode, align_corners=corners)
