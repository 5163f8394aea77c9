"""Benchmark cases of the warp op family: ``fastreg.warp(image, disp)`` against the
grid_sample paths of VoxelMorph and MONAI.

Inputs: ``image`` (B, C, *S) standard normal, ``disp`` (B, ndim, *S) in voxels from
fastreg.data.random_smooth_field (smooth, standard deviation 2 voxels), one field per
batch item (8x1x224^2 is UniReg's 2-D training batch). Linear
interpolation ("bilinear", trilinear in 3-D), zero padding, align_corners=True: what
every peer computes by default (MONAI's Warp is asked for padding_mode="zeros").
Peers (installed ones only; the heavy packages are imported at the first, untimed call):
  vxm-grid_sample  VoxelMorph's legacy torch SpatialTransformer, from its published
                   formula (fastreg.bench.peer_kernels.VxmLegacyTransformer)
  vxm-0.3.4        voxelmorph.nn.modules.SpatialTransformer
  monai-Warp       monai.networks.blocks.Warp(mode, padding_mode="zeros")
"""
from __future__ import annotations

import importlib.util
from functools import partial

import torch

import fastreg
from fastreg.bench.case import Case, io_bytes, shape_name
from fastreg.bench.cases import check_sizes
from fastreg.bench.peer_kernels import LazyModule, VxmLegacyTransformer
from fastreg.data import random_smooth_field

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
        peers["vxm-0.3.4"] = LazyModule("voxelmorph.nn.modules", "SpatialTransformer", interpolation_mode=vxm_mode)
    if importlib.util.find_spec("monai") is not None:
        peers["monai-Warp"] = LazyModule("monai.networks.blocks", "Warp", mode=mode, padding_mode="zeros")
    return peers
