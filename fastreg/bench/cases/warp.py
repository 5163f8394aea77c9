"""Benchmark cases of the warp op family: ``fastreg.warp(image, disp)`` against the
grid_sample paths of VoxelMorph and MONAI.

Inputs: ``image`` (B, C, *S) standard normal, ``disp`` (B, ndim, *S) in voxels from
fastreg.data.random_smooth_field (smooth, standard deviation 2 voxels), one field per
batch item (8x1x224^2 is UniReg's 2-D training batch). Linear
interpolation ("bilinear", trilinear in 3-D), zero padding, align_corners=True: what
every peer computes by default (MONAI's Warp is asked for padding_mode="zeros").
Peers (installed ones only; the heavy packages are imported at the first, untimed call):
  vxm-grid_sample  VoxelMorph's legacy torch SpatialTransformer, from its published
                   formula (a precomputed ij grid buffer, normalisation, grid_sample)
  vxm-0.3.4        voxelmorph.nn.modules.SpatialTransformer
  monai-Warp       monai.networks.blocks.Warp(mode, padding_mode="zeros")
"""
from __future__ import annotations

import importlib
import importlib.util
import warnings
from functools import partial

import torch
import torch.nn.functional as F

import fastreg
from fastreg.bench.case import Case, io_bytes, shape_name
from fastreg.bench.cases import check_sizes
from fastreg.data import random_smooth_field
from fastreg.reference.warp import identity_grid

SHAPES = {
    "tiny": [(1, 1, 10, 12, 14), (1, 3, 24, 32)],
    "quick": [(1, 1, 64, 64, 64), (1, 3, 512, 512)],
    "default": [(1, 1, 96, 96, 96), (1, 3, 1024, 1024), (8, 1, 224, 224)],
    "large": [(1, 1, 96, 96, 96), (1, 3, 1024, 1024), (8, 1, 224, 224), (1, 1, 160, 192, 224)],
}
GRAD_INPUTS = ("image", "disp")


def cases(sizes: str, quick: bool) -> list[Case]:
    """Warp cases for ``sizes`` (see fastreg.bench.cases); ``quick``: one 3-D and one 2-D."""
    shapes = SHAPES[check_sizes(sizes)]
    if quick:
        shapes = [next(s for s in shapes if len(s) == 5), next(s for s in shapes if len(s) == 4)]
    return [_case(dims, "bilinear") for dims in shapes]


def _case(dims: tuple[int, ...], mode: str) -> Case:
    ndim = len(dims) - 2
    label = "trilinear" if (mode == "bilinear" and ndim == 3) else mode
    return Case(
        op="warp",
        name=f"{ndim}d {shape_name(dims)} {label}",
        make_inputs=partial(_make_inputs, dims),
        ours=partial(fastreg.warp, mode=mode, padding_mode="zeros"),
        peers=_peers(mode),
        grad_inputs=GRAD_INPUTS,
        bytes_moved=_bytes_moved,
        dims=dims,
    )


def _make_inputs(dims, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    image = torch.randn(dims, device=device, dtype=dtype)
    disp = random_smooth_field(dims[2:], batch=dims[0], dtype=dtype, device=device)
    return {"image": image, "disp": disp}


def _bytes_moved(inputs: dict[str, torch.Tensor]) -> tuple[int, int]:
    return io_bytes(inputs, inputs["image"].nbytes, GRAD_INPUTS)


def _peers(mode: str) -> dict:
    peers = {"vxm-grid_sample": VxmLegacyTransformer(mode)}
    if importlib.util.find_spec("voxelmorph") is not None:
        vxm_mode = "linear" if mode == "bilinear" else mode
        peers["vxm-0.3.4"] = _LazyModule("voxelmorph.nn.modules", "SpatialTransformer", interpolation_mode=vxm_mode)
    if importlib.util.find_spec("monai") is not None:
        peers["monai-Warp"] = _LazyModule("monai.networks.blocks", "Warp", mode=mode, padding_mode="zeros")
    return peers


class VxmLegacyTransformer:
    """VoxelMorph's legacy ``SpatialTransformer`` (voxelmorph/torch/layers.py) from its
    published formula: an ij meshgrid buffer made once per size (the module holds it),
    ``new_locs = grid + flow``, each axis normalised as ``2 * (loc / (size - 1) - 0.5)``,
    channels moved last and reversed to (x, y[, z]), then
    ``F.grid_sample(image, new_locs, align_corners=True, mode=mode)`` (zero padding;
    ``padding_mode`` "border" is the feature warp of the VFA/DP-VFA code).

    Called as ``transformer(image=(B, C, *S), disp=(B|1, ndim, *S))``.
    """

    def __init__(self, mode: str = "bilinear", padding_mode: str = "zeros"):
        self.mode, self.padding_mode = mode, padding_mode
        self.grid: torch.Tensor | None = None

    def __call__(self, image: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        shape = disp.shape[2:]
        grid = self.grid
        if grid is None or grid.shape[2:] != shape or grid.device != disp.device or grid.dtype != disp.dtype:
            grid = self.grid = identity_grid(shape, disp.device, disp.dtype)
        new_locs = grid + disp
        for i, size in enumerate(shape):
            new_locs[:, i, ...] = 2 * (new_locs[:, i, ...] / (size - 1) - 0.5)
        ndim = len(shape)
        new_locs = new_locs.permute(0, *range(2, ndim + 2), 1)[..., list(range(ndim - 1, -1, -1))]
        return F.grid_sample(image, new_locs, align_corners=True, mode=self.mode, padding_mode=self.padding_mode)


class _LazyModule:
    """A peer nn.Module built at its first call on a device and dtype (importing its
    package then) and held after, one instance per (device, dtype) as a user would."""

    def __init__(self, module: str, cls: str, **kwargs):
        self.module, self.cls, self.kwargs = module, cls, kwargs
        self.instances: dict = {}

    def __call__(self, *args: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        tensors = (*args, *inputs.values())  # the case's inputs, in order, passed positionally
        key = (tensors[0].device, tensors[0].dtype)
        if key not in self.instances:
            with warnings.catch_warnings():  # MONAI announces its native grid_sample path
                warnings.simplefilter("ignore", UserWarning)
                self.instances[key] = getattr(importlib.import_module(self.module), self.cls)(**self.kwargs)
        return self.instances[key](*tensors)
