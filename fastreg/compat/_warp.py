"""Warp layers with the peers' signatures over fastreg.warp: MONAI's ``Warp`` and the legacy
VoxelMorph ``SpatialTransformer`` (re-exported by fastreg.compat.monai and
fastreg.compat.voxelmorph).

Gradient at zero displacement: there the position sits on a voxel centre and linear
interpolation has a kink; fastreg takes the one-sided difference towards the next voxel at
every voxel, grid_sample picks a side per voxel by the rounding of its normalised
coordinates. Values agree; the field gradient of such voxels can differ (visible in the first
step of a network whose output starts at exactly zero, e.g. MONAI's LocalNet).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastreg import _backend
from fastreg import _validate as check
from fastreg.ops.warp import MODES, PADDINGS, warp
from fastreg.reference.warp import identity_grid


def native_options(mode, padding_mode) -> tuple[str, str]:
    """The grid_sample mode and padding MONAI's Warp runs for its arguments without its
    compiled extension: names as given (checked), integers (the spline orders and bounds of
    its C++ path) fall back to "bilinear" and "border", as MONAI does."""
    if not isinstance(mode, str) and isinstance(mode, int):
        mode = "bilinear"
    if not isinstance(padding_mode, str) and isinstance(padding_mode, int):
        padding_mode = "border"
    check.choice(mode, "mode", MODES)
    check.choice(padding_mode, "padding_mode", PADDINGS)
    return mode, padding_mode


class Warp(nn.Module):
    """Warp an image with a dense displacement field (MONAI ``Warp``).

    Args:
        mode: "bilinear", "nearest" or "bicubic" (fastreg kernels; bicubic is grid_sample's
            cubic convolution, A = -0.75); integers (MONAI's compiled spline orders) mean
            "bilinear", as MONAI's grid_sample path does (its compiled path reads them as
            B-spline orders: 3 is a cubic B-spline, not grid_sample's bicubic).
        padding_mode: "border" (MONAI's default), "zeros" or "reflection"; integers mean "border".
        jitter: add MONAI's reference-grid jitter (uniform [0, 1) noise drawn with seed 0,
            the same for every call).

    forward(image (B, C, *S), ddf (B, ndim, *S) in voxels, ij order) -> (B, C, *S), in the
    wider dtype of image and ddf.
    """

    def __init__(self, mode="bilinear", padding_mode="border", jitter: bool = False):
        super().__init__()
        self.mode, self.padding_mode = native_options(mode, padding_mode)
        self.jitter = bool(jitter)
        self._jitter_cache: torch.Tensor | None = None

    def _jitter(self, ddf: torch.Tensor) -> torch.Tensor:
        cached = self._jitter_cache
        if cached is None or cached.shape != ddf.shape or cached.dtype != ddf.dtype or cached.device != ddf.device:
            devices = [ddf.device] if ddf.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.random.manual_seed(0)
                cached = torch.rand(ddf.shape, dtype=ddf.dtype, device=ddf.device)
            self._jitter_cache = cached
        return cached

    def forward(self, image: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
        check.tensor(image, "image")
        check.tensor(ddf, "ddf")
        spatial = image.dim() - 2
        expected = (image.shape[0], spatial, *image.shape[2:])
        if tuple(ddf.shape) != expected:
            raise ValueError(f"ddf: expected shape {expected} for image shape {tuple(image.shape)}, got {tuple(ddf.shape)}")
        image, ddf = _backend.promote(image, ddf)
        if self.jitter:
            ddf = ddf + self._jitter(ddf)
        return warp(image, ddf, self.mode, self.padding_mode)


def grid_sample_warp(image: torch.Tensor, ddf: torch.Tensor, mode: str, padding_mode: str,
                     align_corners: bool = True) -> torch.Tensor:
    """The peers' grid_sample formula (MONAI's native Warp, VoxelMorph's spatial_transform):
    voxel grid + ddf, normalised by 2 / (size - 1) per axis, grid_sample with ``align_corners``
    (VoxelMorph keeps that normalisation with align_corners=False too)."""
    grid = identity_grid(ddf.shape[2:], ddf.device, ddf.dtype) + ddf
    sizes = ddf.shape[2:]
    grid = torch.stack([grid[:, a] * 2 / max(s - 1, 1) - 1 for a, s in enumerate(sizes)][::-1], dim=-1)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)



class SpatialTransformer(nn.Module):
    """N-D spatial transformer (legacy VoxelMorph ``layers.SpatialTransformer``).

    Args:
        size: spatial size (H, W) or (D, H, W) of the images and flows.
        mode: "bilinear", "nearest" or "bicubic" (zero padding, align_corners=True, as the
            original; bicubic in 3-D is fastreg's tricubic, where the original's grid_sample
            has none).

    forward(src (B, C, *size), flow (B|1, ndim, *size) in voxels, ij order) -> (B, C, *size),
    in the wider dtype of src and flow (the original adds its float32 grid to the flow).
    Keeps the original's float32 ``grid`` buffer (1, ndim, *size), so state_dicts load
    unchanged; the warp never reads it.
    """

    def __init__(self, size: Sequence[int], mode: str = "bilinear"):
        super().__init__()
        check.choice(mode, "mode", MODES)
        self.mode = mode
        self.register_buffer("grid", identity_grid(tuple(size), "cpu", torch.float32))

    def forward(self, src: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        size = tuple(self.grid.shape[2:])
        if tuple(flow.shape[2:]) != size:
            raise ValueError(f"flow: expected spatial size {size} (the transformer's size), got {tuple(flow.shape[2:])}")
        check.tensor(src, "src")
        check.tensor(flow, "flow")
        return warp(*_backend.promote(src, flow), self.mode, "zeros")
