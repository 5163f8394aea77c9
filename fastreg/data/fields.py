"""Random smooth displacement/velocity fields: coarse Gaussian noise upsampled.

Realistic fields for tests and benchmarks (smooth, a few voxels in size): white noise
would destroy cache locality and misstate real speed, zeros would hide bugs.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def random_smooth_field(
    shape: Sequence[int],
    batch: int = 1,
    magnitude: float = 2.0,
    spacing: int = 16,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A smooth random field (batch, ndim, *shape) in voxels.

    Args:
        shape: spatial size (H, W) or (D, H, W).
        batch: batch size.
        magnitude: standard deviation of every component, in voxels.
        spacing: distance in voxels between the control points of the coarse noise.
        generator: torch.Generator for reproducible draws (drawn on the CPU).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"shape: expected 2 or 3 spatial sizes, got {shape}")
    if spacing < 1:
        raise ValueError(f"spacing: expected a positive integer, got {spacing}")
    ndim = len(shape)
    coarse = tuple(max(2, math.ceil(s / spacing) + 1) for s in shape)
    noise = torch.randn((batch, ndim, *coarse), generator=generator, dtype=torch.float64)
    mode = "bilinear" if ndim == 2 else "trilinear"
    field = F.interpolate(noise, size=shape, mode=mode, align_corners=True)
    field = field * (magnitude / field.std().clamp_min(1e-12))
    return field.to(dtype=dtype, device=device)
