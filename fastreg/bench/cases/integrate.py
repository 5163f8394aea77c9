"""Benchmark cases of the integrate op family: ``fastreg.integrate_svf(v, steps)`` (scaling
and squaring, zero padding) against the grid_sample loops of VoxelMorph and MONAI.

Input: ``v`` (1, ndim, *S) in voxels from fastreg.data.random_smooth_field (smooth,
standard deviation 2 voxels). Peers (installed ones only; heavy packages are imported at
the first, untimed call):
  vxm-grid_sample  VoxelMorph's legacy torch ``VecInt(inshape, nsteps)``, from its published
                   formula: ``vec * 2**-nsteps``, then nsteps times ``vec + transformer(vec, vec)``
                   with the legacy SpatialTransformer (fastreg.bench.peer_kernels.VxmLegacyVecInt)
  vxm-0.3.4        voxelmorph.nn.modules.IntegrateVelocityField(steps=steps)
  monai-DVF2DDF    monai.networks.blocks.DVF2DDF(num_steps=steps, padding_mode="zeros")
"""
from __future__ import annotations

import importlib.util
from functools import partial

import torch

import fastreg
from fastreg.bench.case import Case, io_bytes, shape_name
from fastreg.bench.cases import check_sizes
from fastreg.bench.peer_kernels import LazyModule, VxmLegacyVecInt
from fastreg.data import random_smooth_field

# (dims, steps): "large" holds the sizes of the performance goals (CPU: 80^3 and 128^3, 5 and
# 7 steps; GPU: 1x3x160x192x224, 7 steps).
SHAPES = {
    "tiny": [((1, 3, 10, 12, 14), 7), ((1, 2, 24, 32), 7)],
    "quick": [((1, 3, 40, 40, 40), 7), ((1, 2, 256, 256), 7)],
    "default": [((1, 3, 64, 64, 64), 7), ((1, 2, 512, 512), 7)],
    "large": [((1, 3, 80, 80, 80), 5), ((1, 3, 80, 80, 80), 7), ((1, 3, 128, 128, 128), 5), ((1, 3, 128, 128, 128), 7),
              ((1, 3, 160, 192, 224), 7)],
}
GRAD_INPUTS = ("v",)


def cases(sizes: str, quick: bool) -> list[Case]:
    """Integration cases for ``sizes`` (see fastreg.bench.cases); ``quick``: one 3-D, one 2-D."""
    shapes = SHAPES[check_sizes(sizes)]
    if quick:
        shapes = [next(s for s in shapes if len(s[0]) == 5), *[s for s in shapes if len(s[0]) == 4][:1]]
    return [_case(dims, steps) for dims, steps in shapes]


def _case(dims: tuple[int, ...], steps: int) -> Case:
    ndim = len(dims) - 2
    return Case(
        op="integrate",
        op_name="integrate_svf",
        name=f"{ndim}d {shape_name(dims)} {steps} steps",
        make_inputs=partial(_make_inputs, dims),
        ours=partial(fastreg.integrate_svf, steps=steps, padding_mode="zeros"),
        peers=_peers(steps),
        grad_inputs=GRAD_INPUTS,
        bytes_moved=_bytes_moved,
        dims=dims,
    )


def _make_inputs(dims, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {"v": random_smooth_field(dims[2:], batch=dims[0], dtype=dtype, device=device)}


def _bytes_moved(inputs: dict[str, torch.Tensor]) -> tuple[int, int]:
    return io_bytes(inputs, inputs["v"].nbytes, GRAD_INPUTS)


def _peers(steps: int) -> dict:
    peers = {"vxm-grid_sample": VxmLegacyVecInt(steps)}
    if importlib.util.find_spec("voxelmorph") is not None:
        peers["vxm-0.3.4"] = LazyModule("voxelmorph.nn.modules", "IntegrateVelocityField", steps=steps)
    if importlib.util.find_spec("monai") is not None:
        peers["monai-DVF2DDF"] = LazyModule("monai.networks.blocks", "DVF2DDF", num_steps=steps, padding_mode="zeros")
    return peers
