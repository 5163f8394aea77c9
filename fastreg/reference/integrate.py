"""integrate_svf in plain differentiable torch: the oracle of every test and the fallback
backend. Scaling and squaring exactly as VoxelMorph's VecInt and MONAI's DVF2DDF:
``u = v / 2**steps``, then ``steps`` times ``u = u + warp(u, u)`` (linear interpolation).

Contract (shared by every backend, see csrc/integrate/integrate.h):
  v (B, ndim, *S) velocity in voxels, channel a along spatial axis a (ij order), voxel
  centres at integer indices; returns the displacement (B, ndim, *S) of exp(v).
"""
from __future__ import annotations

import torch

from fastreg.reference.warp import warp


def integrate_svf(v: torch.Tensor, steps: int = 7, padding_mode: str = "zeros") -> torch.Tensor:
    """Displacement (B, ndim, *S) of the flow of the stationary velocity v (B, ndim, *S)."""
    u = v / 2**steps
    for _ in range(steps):
        u = u + warp(u, u, "bilinear", padding_mode)
    return u
