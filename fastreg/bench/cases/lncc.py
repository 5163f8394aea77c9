"""Benchmark cases of the lncc op family: the LNCC loss ``-fastreg.lncc(fixed, moving,
window)`` (box window, mean) against VoxelMorph's NCC and MONAI's loss.

Inputs: ``fixed`` (1, 1, *S) a smooth random image in [0, 1] (coarse noise upsampled, a
little white noise), ``moving`` the same image displaced by a smooth random field (so the
windows are correlated, as in registration); the gradient flows to ``moving`` only, as in
training. Peers (installed ones only; MONAI is imported at the first, untimed call):
  vxm-NCC      the legacy VoxelMorph NCC (five convolutions of a ones kernel), from its
               published formula: fastreg.reference.lncc.voxelmorph_ncc
  monai-LNCC   monai.losses.LocalNormalizedCrossCorrelationLoss(ndim, kernel_size=window)
               (separable rectangular kernel), called as loss(moving, fixed)
"""
from __future__ import annotations

import importlib.util
from functools import partial

import torch

import fastreg
from fastreg.bench.case import Case, io_bytes, shape_name
from fastreg.bench.cases import check_sizes
from fastreg.bench.peer_kernels import MonaiLoss
from fastreg.data import random_smooth_field
from fastreg.reference.lncc import voxelmorph_ncc

# (dims, window) per size; "large" holds the target rows: windows 3..15 at 96^3, at a
# full-size 160x192x224 volume and at a 1024^2 image.
_LARGE_3D = [(1, 1, 96, 96, 96), (1, 1, 160, 192, 224)]
SHAPES = {
    "tiny": [((1, 1, 10, 12, 14), 3), ((1, 1, 24, 32), 5)],
    "quick": [((1, 1, 48, 48, 48), 9), ((1, 1, 256, 256), 9)],
    "default": [((1, 1, 64, 64, 64), 3), ((1, 1, 64, 64, 64), 9), ((1, 1, 512, 512), 9)],
    "large": [(dims, w) for dims in (*_LARGE_3D, (1, 1, 1024, 1024)) for w in (3, 5, 7, 9, 15)],
}
GRAD_INPUTS = ("moving",)


def cases(sizes: str, quick: bool) -> list[Case]:
    """LNCC cases for ``sizes`` (see fastreg.bench.cases); ``quick``: one 3-D and one 2-D."""
    shapes = SHAPES[check_sizes(sizes)]
    if quick:
        shapes = [next(s for s in shapes if len(s[0]) == 5), next(s for s in shapes if len(s[0]) == 4)]
    return [_case(dims, window) for dims, window in shapes]


def _case(dims: tuple[int, ...], window: int) -> Case:
    ndim = len(dims) - 2
    return Case(
        op="lncc",
        name=f"{ndim}d {shape_name(dims)} window {window}",
        make_inputs=partial(_make_inputs, dims),
        ours=partial(_ours, window=window),
        peers=_peers(ndim, window),
        grad_inputs=GRAD_INPUTS,
        bytes_moved=_bytes_moved,
        dims=dims,
    )


def _ours(fixed: torch.Tensor, moving: torch.Tensor, window: int) -> torch.Tensor:
    return -fastreg.lncc(fixed, moving, window)


def _make_inputs(dims, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    spatial = dims[2:]
    smooth = random_smooth_field(spatial, batch=1, magnitude=1.0, spacing=8, dtype=torch.float64)[:, :1]
    fixed = (0.5 + 0.15 * smooth + 0.01 * torch.randn(smooth.shape, dtype=torch.float64)).clamp(0, 1)
    fixed = fixed.to(device=device, dtype=dtype)
    disp = random_smooth_field(spatial, batch=1, dtype=dtype, device=device)
    moving = fastreg.warp(fixed, disp)
    return {"fixed": fixed, "moving": moving}


def _bytes_moved(inputs: dict[str, torch.Tensor]) -> tuple[int, int]:
    return io_bytes(inputs, inputs["fixed"].element_size(), GRAD_INPUTS)


def _peers(ndim: int, window: int) -> dict:
    peers = {"vxm-NCC": partial(voxelmorph_ncc, win=window)}
    if importlib.util.find_spec("monai") is not None:
        peers["monai-LNCC"] = MonaiLoss(ndim, window)
    return peers
