"""Random affine transforms in the voxel convention of fastreg.affine (a matrix maps fixed
voxel indices to moving voxel indices), for tests and benchmarks of affine registration."""
from __future__ import annotations

import math
from typing import Sequence

import torch


def random_affine(
    shape: Sequence[int],
    spacing: Sequence[float] | None = None,
    dof: int = 12,
    rotation: float = 10.0,
    scale: float = 0.08,
    shear: float = 0.04,
    shift: float = 4.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random (ndim+1, ndim+1) float64 voxel matrix of ``dof`` 12, 9, 6 or 3 about the
    centre of a grid of ``shape`` with voxel sizes ``spacing`` (default 1).

    In physical space (p = spacing * x): a rotation about a random axis by up to ``rotation``
    degrees (dof >= 6), then per-axis scales 1 +- ``scale`` (dof >= 9), plus a random linear
    part of up to ``shear`` per entry (dof 12), each drawn uniformly; the grid's centre moves
    by up to ``shift`` voxels per axis. Draws from ``generator`` (the global one by default).
    """
    ndim = len(shape)
    if ndim not in (2, 3):
        raise ValueError(f"shape: expected 2 or 3 spatial sizes, got {tuple(shape)}")
    if dof not in (12, 9, 6, 3):
        raise ValueError(f"dof: expected one of (12, 9, 6, 3), got {dof!r}")

    def uniform(*size):
        return 2 * torch.rand(*size, generator=generator, dtype=torch.float64) - 1

    linear = torch.eye(ndim, dtype=torch.float64)
    if dof >= 6:
        axis = uniform(3) if ndim == 3 else torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        axis = axis / axis.norm()
        angle = math.radians(rotation) * uniform(())
        skew = torch.zeros(3, 3, dtype=torch.float64)
        skew[0, 1], skew[0, 2], skew[1, 2] = -axis[2], axis[1], -axis[0]
        skew = (skew - skew.T) * angle
        linear = torch.linalg.matrix_exp(skew)[3 - ndim:, 3 - ndim:]  # 2-D: the rotation about axis 0
    if dof >= 9:
        linear = linear @ torch.diag(1 + scale * uniform(ndim))
    if dof == 12:
        linear = linear + shear * uniform(ndim, ndim)
    sp = torch.ones(ndim, dtype=torch.float64) if spacing is None else torch.tensor(spacing, dtype=torch.float64)
    linear = linear * sp / sp.unsqueeze(-1)  # diag(1 / sp) M diag(sp)
    centre = torch.tensor([(s - 1) / 2 for s in shape], dtype=torch.float64)
    matrix = torch.eye(ndim + 1, dtype=torch.float64)
    matrix[:ndim, :ndim] = linear
    matrix[:ndim, ndim] = centre - linear @ centre + shift * uniform(ndim)
    return matrix
