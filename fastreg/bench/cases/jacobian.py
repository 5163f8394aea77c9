"""Benchmark cases of the jacobian op family: ``fastreg.metrics.jacobian_stats(disp)`` (one
fused pass: folding %, SDlogJ, SDlogJ over det > 0, NDV %, std(|J|)) against the Learn2Reg
evaluation code, which computes only SDlogJ and the fold count.

Inputs: ``disp`` (1, 3, *S) in voxels from fastreg.data.random_smooth_field (smooth,
standard deviation 2 voxels). Both sides use Learn2Reg's convention: central differences
with zero padding, 2 voxels cropped from every border.
Peers:
  l2r-scipy  Learn2Reg's evaluation (from its published formula): nine
             scipy.ndimage.correlate calls with [-0.5, 0, 0.5] (mode='constant'), identity
             added, crop 2, the cofactor determinant, std(log(clip(det + 3, 1e-9, 1e9)))
             and count(det <= 0), in numpy on the CPU (fastreg.bench.peer_kernels).
No backward: the statistics are not differentiable (fastreg.jacobian_det is).
"""
from __future__ import annotations

from functools import partial

import torch

import fastreg
from fastreg.bench.case import Case, shape_name
from fastreg.bench.cases import check_sizes
from fastreg.bench.peer_kernels import learn2reg_sdlogj
from fastreg.data import random_smooth_field

SHAPES = {
    "tiny": [(1, 3, 10, 12, 14), (1, 2, 24, 32)],
    "quick": [(1, 3, 64, 64, 64), (1, 2, 512, 512)],
    "default": [(1, 3, 160, 192, 224), (1, 2, 1024, 1024)],
    "large": [(1, 3, 160, 192, 224), (1, 2, 1024, 1024)],
}


def cases(sizes: str, quick: bool) -> list[Case]:
    """jacobian_stats cases for ``sizes``; ``quick``: the 3-D case only."""
    shapes = SHAPES[check_sizes(sizes)]
    if quick:
        shapes = shapes[:1]
    return [_case(dims) for dims in shapes]


def _case(dims: tuple[int, ...]) -> Case:
    ndim = len(dims) - 2
    return Case(
        op="jacobian",
        op_name="jacobian_stats",
        name=f"{ndim}d {shape_name(dims)} stats",
        make_inputs=partial(_make_inputs, dims),
        ours=_ours,
        peers={"l2r-scipy": learn2reg_sdlogj},
        bytes_moved=lambda inputs: (inputs["disp"].nbytes, inputs["disp"].nbytes),
        dims=dims,
    )


def _make_inputs(dims, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {"disp": random_smooth_field(dims[2:], batch=dims[0], dtype=dtype, device=device)}


def _ours(disp: torch.Tensor) -> torch.Tensor:
    return torch.stack(list(fastreg.metrics.jacobian_stats(disp).values()))
