"""The cascaded U-Net (Kolenbrander, Maspero, Pluim, MELBA 2025): two VoxelMorph-style
U-Nets, each predicting a stationary velocity field, integrated and composed.

Shapes and units (the interface of fastreg.models.base): fixed, moving (B, 1, *S) in
[0, 1], 2-D or 3-D; the displacement (B, ndim, *S) in voxels, ij order. Inputs are
replicate-padded to a multiple of 32 (net 1 sees half the resolution and pools 4 times).

Each net (UNet): a VoxelMorph U-Net on cat(moving, fixed) with one width W everywhere:
encoder 4 ConvBlocks (3^ndim conv + LeakyReLU 0.2, no norm), each followed by max-pool 2;
decoder 4 ConvBlocks, the first three followed by nearest x2 upsampling and concatenation
of the skip (so the output is at half the net's input resolution), 2 more ConvBlocks and a
flow conv (N(0, 1e-5) weights, zero bias) -> a velocity. Parameters in 3-D: W = 64:
1,336,387 (net 1), W = 128: 5,326,979 (net 2); 2-D: 445,314 and 1,775,362.

Pipeline (P = padded size):
  net 1 on avg_pool(k3, s2, p1, count_include_pad=False) of both images:
      v1 (B, ndim, P/4);  u1 = resize x2 (resize x2 (integrate_svf(v1, 5)))  -> P
  net 2 on (warp(moving, u1), fixed) at full resolution:
      v2 (B, ndim, P/2);  u2 = resize x2 (integrate_svf(v2, 5))              -> P
  u = compose(u1, u2) = u2 + warp(u1, u2)   (border padding; u1 acts after u2)
Resizes are ``resize_field(scale_factor=2)`` (trilinear, align_corners=True, vectors x2).
Levels: 2; ``levels=1`` returns u1 alone.

Velocity: the composition of two SVF deformations is not the exponential of one SVF.
``velocities`` gives both (v1 on P/4, v2 on P/2) and ``inverse`` the inverse of the
prediction phi = phi1 o phi2 as the reverse composition phi2^-1 o phi1^-1 =
compose(inv2, inv1), inv_i the displacement of exp(-v_i) resized exactly as the forward
resizes exp(v_i) (exact up to the interpolation of the resized fields). ``velocity``
(the base contract) returns v = 2 * upsample(v1) + v2 on P/2, the first-order
(Baker-Campbell-Hausdorff) logarithm of the composition: exp(-v) is an approximate inverse
that is exact when the two stages commute; use ``inverse`` for the exact one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastreg import _validate as check
from fastreg.models.base import RegistrationModel
from fastreg.models.blocks import ConvBlock, flow_head
from fastreg.models.kernels import FASTREG, Kernels
from fastreg.models.recompute import conv_block_pool

WIDTHS = (64, 128)  # filters of net 1 (half resolution) and net 2 (full resolution)
STEPS = 5  # scaling-and-squaring steps


class UNet(nn.Module):
    """VoxelMorph-style U-Net: (B, 2, *S) -> velocity (B, ndim, *S / 2), S divisible by 16.

    ``recompute``: the first encoder level (conv, LeakyReLU, max-pool at full resolution)
    keeps only its input for backward and recomputes the rest
    (fastreg.models.recompute.conv_block_pool): the same values and gradients, less memory.
    """

    def __init__(self, ndim: int, width: int, in_channels: int = 2, recompute: bool = False):
        super().__init__()
        self.recompute = recompute
        self.encoder = nn.ModuleList(ConvBlock(ndim, c, width) for c in (in_channels, width, width, width))
        self.decoder = nn.ModuleList(ConvBlock(ndim, c, width) for c in (width, 2 * width, 2 * width, 2 * width))
        self.extra = nn.Sequential(ConvBlock(ndim, width, width), ConvBlock(ndim, width, width))
        self.flow = flow_head(ndim, width)
        self.pool = (F.max_pool2d, F.max_pool3d)[ndim - 2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            if i == 0 and self.recompute and torch.is_grad_enabled():
                # the full-resolution skip is never concatenated (the decoder stops at 1/2)
                skips.append(None)
                x = conv_block_pool(x, block[0])
                continue
            x = block(x)
            skips.append(x)
            x = self.pool(x, 2)
        for i, block in enumerate(self.decoder):
            x = block(x)
            if i < len(self.decoder) - 1:
                x = torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skips.pop()], dim=1)
        return self.flow(self.extra(x))


class CascadeUNet(RegistrationModel):
    """Two cascaded VoxelMorph U-Nets with SVF integration (see the module docstring).

    Args:
        ndim: 2 or 3 spatial dimensions.
        widths: filters of net 1 and net 2 (paper: 64, 128); fewer for CPU experiments,
            e.g. (16, 32).
        steps: scaling-and-squaring steps of each velocity (paper: 5).
        recompute: each U-Net's full-resolution level keeps only its input for backward
            and recomputes its activation there (``UNet``); the same fields and gradients.
            Default True: the training step's peak memory at 96x112x96, widths (16, 32), is
            298 MiB instead of 509 MiB, for about 17 % more time (32 MiB slabs, 4 paired rounds
            on a loaded machine, BENCHMARKS.md). No effect without a graph (inference).

    Example::

        model = fastreg.models.CascadeUNet(ndim=3)         # 1,336,387 + 5,326,979 parameters
        disp = model(fixed, moving)                        # (B, 3, D, H, W) voxels
        inv = model.inverse(fixed, moving)                 # exact inverse of disp
    """

    num_levels = 2
    multiple = 32
    svf = True
    kernels: Kernels = FASTREG

    def __init__(self, ndim: int = 3, widths=WIDTHS, steps: int = STEPS, recompute: bool = True):
        super().__init__()
        self.ndim = check.model_ndim(ndim)
        widths = check.positive_ints(widths, "widths", 2)
        self.steps = check.non_negative_int(steps, "steps")
        recompute = check.boolean(recompute, "recompute")
        self.net1 = UNet(self.ndim, widths[0], recompute=recompute)
        self.net2 = UNet(self.ndim, widths[1], recompute=recompute)
        self.downsample = (F.avg_pool2d, F.avg_pool3d)[self.ndim - 2]

    # -- the two stages (padded inputs) -------------------------------------------------
    def _velocity1(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        half = self.downsample(torch.cat([moving, fixed], 1), 3, stride=2, padding=1, count_include_pad=False)
        return self.net1(half).to(fixed.dtype)  # under autocast: the field in the images' dtype

    def _velocity2(self, fixed: torch.Tensor, moving: torch.Tensor, u1: torch.Tensor) -> torch.Tensor:
        return self.net2(torch.cat([self.kernels.warp(moving, u1), fixed], 1)).to(fixed.dtype)

    def _field(self, v: torch.Tensor, doublings: int) -> torch.Tensor:
        """exp(v) resized ``doublings`` times x2 (vectors x2 each time)."""
        u = self.kernels.integrate_svf(v, self.steps)
        for _ in range(doublings):
            u = self.kernels.resize_field(u, scale_factor=2.0)
        return u

    def predict(self, fixed: torch.Tensor, moving: torch.Tensor, levels: int) -> torch.Tensor:
        u1 = self._field(self._velocity1(fixed, moving), 2)
        if levels == 1:
            return u1
        u2 = self._field(self._velocity2(fixed, moving, u1), 1)
        return self.kernels.compose(u1, u2)

    def _velocities(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v1 = self._velocity1(fixed, moving)
        return v1, self._velocity2(fixed, moving, self._field(v1, 2))

    # -- velocity interface ------------------------------------------------------------
    def velocities(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(v1 (B, ndim, P/4), v2 (B, ndim, P/2)): both stages' velocities in voxels of their
        grids, P the input size padded to a multiple of 32 (trailing end)."""
        self.check_pair(fixed, moving)
        return self._velocities(self.pad(fixed), self.pad(moving))

    def velocity(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """(B, ndim, P/2): 2 * upsample(v1) + v2, the first-order logarithm of the predicted
        deformation (approximate: see the module docstring; ``inverse`` is exact)."""
        v1, v2 = self.velocities(fixed, moving)
        return self.kernels.resize_field(v1, scale_factor=2.0) + v2

    def inverse(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """(B, ndim, *S): the displacement of the inverse of ``self(fixed, moving)`` (on the
        moving grid): compose(inv2, inv1), inv_i = exp(-v_i) resized as in the forward."""
        self.check_pair(fixed, moving)
        shape = tuple(fixed.shape[2:])
        v1, v2 = self._velocities(self.pad(fixed), self.pad(moving))
        inv1, inv2 = self._field(-v1, 2), self._field(-v2, 1)
        return self.crop(self.kernels.compose(inv2, inv1), shape)
