"""Drop-in integrators and field resizers with the peers' signatures, over fastreg ops.

VoxelMorph (legacy voxelmorph/torch/layers.py): ``VecInt(inshape, nsteps)`` and
``ResizeTransform(vel_resize, ndims)``; MONAI (monai.networks.blocks): ``DVF2DDF(num_steps,
mode, padding_mode)``. Same constructors, forwards and state_dicts; each equals the original
to 1e-6. Re-exported by fastreg.compat.voxelmorph and fastreg.compat.monai.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fastreg import _validate as check
from fastreg.compat._warp import SpatialTransformer, Warp
from fastreg.ops.integrate import integrate_svf
from fastreg.ops.resize import resize_field


class VecInt(nn.Module):
    """Scaling and squaring of a velocity field (VoxelMorph ``layers.VecInt``).

    Args:
        inshape: spatial size (H, W) or (D, H, W) of the fields.
        nsteps: squaring steps (>= 0); zero padding, as the original.

    forward(vec (B, ndim, *inshape) in voxels, ij order) -> displacement (B, ndim, *inshape).
    The original's ``transformer`` (a SpatialTransformer with its float32 ``grid`` buffer) is
    kept so that VoxelMorph state_dicts load unchanged; the integration never reads it.
    """

    def __init__(self, inshape: Sequence[int], nsteps: int):
        super().__init__()
        self.nsteps = check.squaring_steps(nsteps, "nsteps")
        self.scale = 1.0 / (2**self.nsteps)
        self.transformer = SpatialTransformer(inshape)

    def forward(self, vec: torch.Tensor) -> torch.Tensor:
        return integrate_svf(vec, self.nsteps, "zeros")


class ResizeTransform(nn.Module):
    """Resize a displacement field and rescale its vectors (VoxelMorph ``layers.ResizeTransform``).

    Args:
        vel_resize: the field is resized by ``factor = 1 / vel_resize`` (linear interpolation,
            align_corners=True) and its vectors are multiplied by ``factor``; factor 1 returns
            the input unchanged.
        ndims: 2 or 3.

    forward(x (B, ndims, *S)) -> (B, ndims, *floor(S * factor)).
    """

    def __init__(self, vel_resize: float, ndims: int):
        super().__init__()
        if ndims not in (2, 3):
            raise ValueError(f"ndims: expected 2 or 3, got {ndims!r}")
        self.factor = 1.0 / vel_resize
        self.mode = "bilinear" if ndims == 2 else "trilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_field(x, scale_factor=self.factor)


class DVF2DDF(nn.Module):
    """Dense velocity field to dense displacement field by scaling and squaring (MONAI ``DVF2DDF``).

    Args:
        num_steps: squaring steps, a positive int (MONAI's default 7; an integral float such
            as 7.0 is accepted).
        mode, padding_mode: those of ``warp_layer`` (fastreg.compat.monai.Warp, MONAI's
            options): "bilinear" (default, integers too) integrates with one fused fastreg
            kernel per step; "nearest" and "bicubic" run ``ddf + warp_layer(ddf, ddf)`` per
            step as MONAI does. padding "zeros" (default), "border" or "reflection".

    forward(dvf (B, ndim, *S) in voxels, ij order) -> ddf (B, ndim, *S).
    """

    def __init__(self, num_steps: int = 7, mode="bilinear", padding_mode="zeros"):
        super().__init__()
        if isinstance(num_steps, float) and num_steps.is_integer():
            num_steps = int(num_steps)
        self.num_steps = check.int_in_range(num_steps, "num_steps", 1, check.MAX_STEPS)
        self.warp_layer = Warp(mode=mode, padding_mode=padding_mode)

    @property
    def mode(self) -> str:
        return self.warp_layer.mode

    @property
    def padding_mode(self) -> str:
        return self.warp_layer.padding_mode

    def forward(self, dvf: torch.Tensor) -> torch.Tensor:
        if self.warp_layer.mode == "bilinear" and not self.warp_layer.jitter:
            return integrate_svf(dvf, self.num_steps, self.warp_layer.padding_mode)
        ddf = dvf / 2**self.num_steps
        for _ in range(self.num_steps):
            ddf = ddf + self.warp_layer(ddf, ddf)
        return ddf
