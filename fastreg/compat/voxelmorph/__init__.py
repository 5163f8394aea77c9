"""Drop-in replacements for VoxelMorph's PyTorch layers, computed by fastreg ops.

Legacy API (voxelmorph/torch/layers.py and losses.py, widely copied):
``SpatialTransformer(size, mode)`` (same state_dict: the float32 ``grid`` buffer),
``VecInt(inshape, nsteps)``, ``ResizeTransform(vel_resize, ndims)``, ``NCC(win).loss``.
Current API (voxelmorph 0.3.4, ``voxelmorph.nn.modules``): ``fastreg.compat.voxelmorph.nn.modules``
with ``SpatialTransformer``, ``IntegrateVelocityField`` and ``ResizeDisplacementField``.
``patch()``: the current-API shims in place inside voxelmorph's modules (its models, e.g.
``VxmPairwise``, build them inside), as a function or a context manager.
The zero-displacement kink of the field gradient: see fastreg.compat._warp.
"""
from __future__ import annotations

from fastreg.compat._integrate import ResizeTransform, VecInt
from fastreg.compat._lncc import NCC
from fastreg.compat._patch import Patch
from fastreg.compat._warp import SpatialTransformer
from fastreg.compat.voxelmorph import nn

__all__ = ["SpatialTransformer", "VecInt", "ResizeTransform", "NCC", "nn", "patch"]


def patch() -> Patch:
    """Put fastreg.compat.voxelmorph.nn.modules' classes in place of voxelmorph 0.3.4's
    (``voxelmorph.nn.modules``) in every imported ``voxelmorph`` module. Call it once
    (``handle.restore()`` undoes it), or ``with fastreg.compat.voxelmorph.patch(): ...``."""
    import voxelmorph.nn.modules as original

    return Patch("voxelmorph", {
        original.SpatialTransformer: nn.modules.SpatialTransformer,
        original.IntegrateVelocityField: nn.modules.IntegrateVelocityField,
        original.ResizeDisplacementField: nn.modules.ResizeDisplacementField,
    })
