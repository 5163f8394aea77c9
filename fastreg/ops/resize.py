"""resize_field: resampling of displacement fields to another grid (linear, align_corners=True)
with their vectors rescaled to the new voxel size. Plain torch (F.interpolate) on every
backend: no kernel of its own."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from fastreg import _backend
from fastreg import _validate as check


def resize_field(
    u: torch.Tensor,
    size: int | Sequence[int] | None = None,
    scale_factor: float | Sequence[float] | None = None,
) -> torch.Tensor:
    """Resample the displacement ``u`` (B, ndim, *S) to another grid and rescale its vectors.

    Give exactly one of ``size`` (the new spatial size) and ``scale_factor`` (a float, or one
    per axis). Linear interpolation with align_corners=True (voxel centres at integer
    indices, corners fixed), then channel a is multiplied by the factor f_a of its axis:
      * ``scale_factor``: f_a = scale_factor[a], and the new size is floor(S_a * f_a), exactly
        VoxelMorph's ``ResizeTransform(vel_resize=1/f, ndims)`` (its ``VxmDense(int_downsize)``
        resizing) and ``ResizeDisplacementField(scale_factor=f)``. A factor of 1 on every axis
        returns ``u`` itself, as VoxelMorph does.
      * ``size``: f_a = (size_a - 1) / (S_a - 1), the exact factor between the two grids under
        align_corners=True (1 where S_a == 1); ``size == S`` returns ``u`` itself.
    Returns (B, ndim, *S_new). Gradients flow to ``u``.
    """
    check.tensor(u, "u")
    ndim = check.spatial_ndim(u, "u", check.FIELD)
    check.field(u, "u", ndim)
    kind, target = check.resize_target(size, scale_factor, ndim)
    old = tuple(u.shape[2:])
    if kind == "scale_factor":
        factors = target
        if all(f == 1 for f in factors):
            return u
        new = tuple(math.floor(s * f) for s, f in zip(old, factors))
    else:
        new = target
        if new == old:
            return u
        factors = tuple((n - 1) / (o - 1) if o > 1 else 1.0 for n, o in zip(new, old))
    resize = {kind: target}
    if u.numel() == 0 or math.prod(new) == 0:
        if 0 in old and math.prod(new) > 0:
            raise ValueError(f"u: cannot resize the empty spatial axes of a {tuple(u.shape)} field to size {new}")
        return _backend.empty_result((u.shape[0], ndim, *new), u)
    if len(set(factors)) == 1:
        scale = factors[0]
    else:
        scale = torch.tensor(factors, dtype=u.dtype, device=u.device).view(1, ndim, *([1] * ndim))
    mode = "bilinear" if ndim == 2 else "trilinear"
    # Scale the smaller of the two fields (VoxelMorph's order: shrink first, grow last).
    if math.prod(new) < math.prod(old):
        return F.interpolate(u, mode=mode, align_corners=True, **resize) * scale
    return F.interpolate(u * scale, mode=mode, align_corners=True, **resize)
