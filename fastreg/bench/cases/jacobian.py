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
             and count(det <= 0), in numpy on the CPU.
No backward: the statistics are not differentiable (fastreg.jacobian_det is).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch

import fastreg
from fastreg.bench.case import Case, shape_name
from fastreg.bench.cases import check_sizes
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


def learn2reg_sdlogj(disp: torch.Tensor) -> torch.Tensor:
    """Learn2Reg's SDlogJ and fold count per batch item (2, B), from its published formula."""
    from scipy.ndimage import correlate

    u = disp.detach().cpu().numpy()
    ndim = u.shape[1]
    grads = []
    for b in range(ndim):
        shape = [1] * (ndim + 1)
        shape[1 + b] = 3
        kernel = np.array([-0.5, 0, 0.5]).reshape(shape)
        grads.append(np.stack([correlate(u[:, a], kernel, mode="constant", cval=0.0) for a in range(ndim)], 1))
    J = np.stack(grads, 2) + np.eye(ndim).reshape(1, ndim, ndim, *([1] * ndim))
    J = J[(slice(None),) * 3 + (slice(2, -2),) * ndim]
    if ndim == 2:
        det = J[:, 0, 0] * J[:, 1, 1] - J[:, 0, 1] * J[:, 1, 0]
    else:
        det = (J[:, 0, 0] * (J[:, 1, 1] * J[:, 2, 2] - J[:, 1, 2] * J[:, 2, 1])
               - J[:, 1, 0] * (J[:, 0, 1] * J[:, 2, 2] - J[:, 0, 2] * J[:, 2, 1])
               + J[:, 2, 0] * (J[:, 0, 1] * J[:, 1, 2] - J[:, 0, 2] * J[:, 1, 1]))
    det = det.reshape(det.shape[0], -1)
    sdlogj = np.log((det + 3).clip(1e-9, 1e9)).std(1)
    return torch.from_numpy(np.stack([sdlogj, (det <= 0).sum(1)]))
