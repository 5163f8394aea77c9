"""Random smooth displacement/velocity fields: coarse Gaussian noise upsampled.

``random_smooth_field``: one fixed-strength field for op tests and benchmarks.
``random_field`` / ``random_velocity``: the training-data deformations (random strength per
sample and scale, integrated as a stationary velocity field).

Realistic fields for tests and benchmarks (smooth, a few voxels in size): white noise
would destroy cache locality and misstate real speed, zeros would hide bugs.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from fastreg import _validate as check
from fastreg.data import _random
from fastreg.ops.integrate import integrate_svf
from fastreg.ops.jacobian import jacobian_det
from fastreg.ops.resize import resize_field


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


def random_velocity(
    shape: Sequence[int],
    *,
    batch: int = 1,
    scales: Sequence[int] = (6,),
    max_std: float = 3.0,
    half_res: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    grid: Sequence[int] | None = None,
) -> torch.Tensor:
    """A random stationary velocity field (batch, ndim, *grid) in voxels of ``grid``.

    ``grid`` (the grid the velocity lives and is integrated on) defaults to ``shape`` or, with
    ``half_res``, ``ceil(shape / 2)`` per axis; ``velocity_to_disp`` brings it to ``shape``.
    For each scale
    s in ``scales`` a coarse grid of s^ndim normal draws (every component) with standard
    deviation sigma ~ U(0, max_std), drawn per sample and scale, is upsampled linearly
    (align_corners=True) to ``grid``; the velocity is their sum. See ``random_field``.
    """
    shape = check.spatial_shape(shape)
    batch = check.positive_int(batch, "batch")
    if isinstance(scales, int) or not isinstance(scales, (list, tuple)) or not scales:
        raise ValueError(f"scales: expected a non-empty sequence of coarse grid sizes, got {scales!r}")
    scales = tuple(check.positive_int(s, "scales", minimum=2) for s in scales)
    max_std = check.non_negative(max_std, "max_std")
    if not isinstance(half_res, bool):
        raise TypeError(f"half_res: expected a bool, got {type(half_res).__name__}")
    check.generator(generator)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
    ndim = len(shape)
    if grid is None:
        grid = tuple(max(2, math.ceil(s / 2)) for s in shape) if half_res else shape
    elif half_res:
        raise ValueError("grid, half_res: expected at most one of them")
    else:
        grid = check.spatial_shape(grid, "grid")
        if len(grid) != ndim:
            raise ValueError(f"grid: expected {ndim} sizes like shape {shape}, got {grid}")
    mode = "bilinear" if ndim == 2 else "trilinear"
    velocity = None
    for s in scales:
        sigma = _random.uniform(0.0, max_std, (batch, 1) + (1,) * ndim, generator, device, dtype)
        noise = _random.randn((batch, ndim) + (s,) * ndim, generator, device, dtype) * sigma
        layer = F.interpolate(noise, size=grid, mode=mode, align_corners=True)
        velocity = layer if velocity is None else velocity.add_(layer)
    return velocity


def velocity_to_disp(velocity: torch.Tensor, steps: int, shape: Sequence[int]) -> torch.Tensor:
    """Displacement (B, ndim, *shape) in voxels of ``shape`` of exp(velocity): scaling and
    squaring with ``steps`` steps on the velocity's grid (``steps=0``: the velocity itself),
    then ``fastreg.resize_field`` to ``shape`` when the grids differ (vectors rescaled)."""
    disp = integrate_svf(velocity, check.non_negative_int(steps, "steps"))
    return resize_field(disp, size=tuple(shape))


def _folds(disp: torch.Tensor) -> torch.Tensor:
    """(B,) bool: det J <= 0 at some voxel at least 2 from the border (jacobian_stats' crop:
    the outermost voxels of an integrated field fold where it leaves the image)."""
    det = jacobian_det(disp)
    inner = tuple(slice(2, -2) if size > 4 else slice(None) for size in det.shape[1:])
    return (det[(slice(None),) + inner] <= 0).flatten(1).any(1)


# each round scales a folding sample's velocity by this; 0.8^20 ~ 0.01 unfolds any finite draw
_SHRINK, _MAX_ROUNDS = 0.8, 20


def fold_free_disps(velocity: torch.Tensor, steps: int, shape: Sequence[int],
                    signs: Sequence[int] = (1,)) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``velocity_to_disp(sign * velocity, steps, shape)`` for each sign, with no fold.

    Scaling and squaring of a smooth velocity is diffeomorphic in the continuum, but a rare
    tail draw compresses so strongly that the sampled displacement folds a few voxels (det J
    <= 0 by central differences more than 2 voxels inside the border, as
    ``fastreg.jacobian_stats`` counts it: about one 3-D field of the default strength in a
    thousand at 40x48x44; one of two SynthMorph-recipe fields at 160x192x224). For ``steps`` > 0 the velocity of every sample
    whose displacement folds for any sign is scaled by 0.8 and integrated again, until none
    folds (at most 20 times: 0.8^20 ~ 0.012 of the draw); ``steps=0`` returns the plain
    fields. A NaN velocity gives NaN fields.

    Returns (the velocity used (B, ndim, *grid), [displacement (B, ndim, *shape) per sign]).
    """
    disps = [velocity_to_disp(sign * velocity, steps, shape) for sign in signs]
    if steps == 0:
        return velocity, disps
    for _ in range(_MAX_ROUNDS):
        folds = torch.stack([_folds(d) for d in disps]).any(0)
        if not folds.any():
            break
        index = folds.nonzero().squeeze(1)
        velocity = velocity.index_copy(0, index, velocity[index] * _SHRINK)
        disps = [d.index_copy(0, index, velocity_to_disp(sign * velocity[index], steps, shape))
                 for d, sign in zip(disps, signs)]
    return velocity, disps


def random_field(
    shape: Sequence[int],
    *,
    batch: int = 1,
    scales: Sequence[int] = (6,),
    max_std: float = 3.0,
    steps: int = 5,
    half_res: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A random smooth displacement; for ``steps`` >= 1 it does not fold (``fold_free_disps``).

    Returns (batch, ndim, *shape) in voxels of ``shape`` (ij channel order, fastreg's field
    convention). Recipe (SynthMorph, Hoffmann et al. 2022; the cascaded U-Net paper):
      1. ``random_velocity``: for each scale s a coarse grid of s^ndim normal draws with
         sigma ~ U(0, max_std) (in voxels of the integration grid, drawn per sample and
         scale), upsampled linearly and summed;
      2. ``fastreg.integrate_svf(v, steps)`` (``steps=0``: the plain, possibly folding
         displacement); a sample whose displacement would fold somewhere (a rare tail draw)
         has its velocity scaled down until it does not (``fold_free_disps``);
      3. with ``half_res`` the velocity lives and is integrated on ``ceil(shape / 2)`` and the
         displacement is upsampled with ``fastreg.resize_field`` (vectors doubled). The cascaded
         U-Net's pair deformations: ``scales=(24, 12, 6), max_std=3, steps=5, half_res=True``.
    Small draws happen on the generator's device (see fastreg.data._random), so one
    ``generator`` seed gives the same field on the CPU and on a GPU; the upsampling and the
    integration run on ``device``. Example::

        g = torch.Generator().manual_seed(0)
        disp = fastreg.data.random_field((160, 192, 224), generator=g)   # (1, 3, 160, 192, 224)
    """
    steps = check.non_negative_int(steps, "steps")
    velocity = random_velocity(shape, batch=batch, scales=scales, max_std=max_std, half_res=half_res,
                               generator=generator, device=device, dtype=dtype)
    return fold_free_disps(velocity, steps, shape)[1][0]
