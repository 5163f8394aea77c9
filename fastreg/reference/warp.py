"""warp, sample and compose in plain differentiable torch: the oracle of every test and
the fallback backend. Built on ``F.grid_sample`` (align_corners=True) exactly as
VoxelMorph's SpatialTransformer and MONAI's Warp call it.

Contract (shared by every backend, see csrc/warp/warp.h):
  image (B, C, *S_in); positions (B|1, ndim, *S_out) in voxels, channel a along spatial
  axis a (ij order), voxel centres at integer indices. A size-1 axis always samples
  index 0; a NaN position gives NaN in every channel of that output voxel; an infinite one
  gives 0 (zeros, reflection padding) or the edge voxel (border).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def identity_grid(shape, device, dtype) -> torch.Tensor:
    """The voxel grid (1, ndim, *shape): channel a holds the index along axis a."""
    axes = [torch.arange(s, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).unsqueeze(0)


def sample(image: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Sample image (B, C, *S_in) at absolute voxel coordinates (B|1, ndim, *S_out)."""
    ndim = coords.shape[1]
    sizes = image.shape[2:]
    # An infinite position lies outside at infinite distance: 0 with zeros and reflection
    # padding (grid_sample gives NaN, or reflects it to an arbitrary voxel), the edge voxel
    # with border padding (grid_sample's clamp does that already).
    infinite = torch.isinf(coords).any(dim=1, keepdim=True) if padding_mode != "border" else None
    if infinite is not None:
        coords = torch.where(torch.isinf(coords), torch.zeros_like(coords), coords)
    channels = []
    for a in range(ndim):
        c = coords[:, a]
        # align_corners=True: voxel 0 -> -1, voxel size-1 -> +1; grid_sample puts every
        # coordinate of a size-1 axis at index 0.
        channels.append(c * 0 if sizes[a] == 1 else c * (2.0 / (sizes[a] - 1)) - 1.0)
    grid = torch.stack(channels[::-1], dim=-1)  # grid_sample wants (x, y[, z]) last
    if grid.shape[0] != image.shape[0]:
        grid = grid.expand(image.shape[0], *grid.shape[1:])
    out = F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    if infinite is not None:
        out = torch.where(infinite, torch.zeros_like(out), out)
    nan = torch.isnan(coords).any(dim=1, keepdim=True)
    return torch.where(nan, torch.full_like(out, float("nan")), out)


def warp(image: torch.Tensor, disp: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Sample image (B, C, *S) at x + disp(x), disp (B|1, ndim, *S) in voxels."""
    grid = identity_grid(disp.shape[2:], disp.device, disp.dtype)
    return sample(image, grid + disp, mode, padding_mode)


def compose(u: torch.Tensor, v: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Displacement of u∘v (apply v first): v + u(x + v(x))."""
    if u.shape[0] < v.shape[0]:
        u = u.expand(v.shape[0], *u.shape[1:])
    return v + warp(u, v, "bilinear", padding_mode)
