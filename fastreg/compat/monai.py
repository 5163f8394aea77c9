"""Drop-in replacements for MONAI's registration blocks and LNCC loss (MONAI 1.6.1).

``Warp(mode, padding_mode, jitter)`` (``monai.networks.blocks``): one fastreg kernel, MONAI's
grid_sample path semantics. ``DVF2DDF(num_steps, mode, padding_mode)``: scaling and squaring
by ``fastreg.integrate_svf``. ``LocalNormalizedCrossCorrelationLoss`` (``monai.losses``):
``fastreg.lncc``. ``patch()``: these shims in place inside MONAI's own modules (its networks,
e.g. ``monai.networks.nets.VoxelMorph``, build them inside), as a function or a context
manager. The zero-displacement kink of the field gradient: see fastreg.compat._warp.
"""
from __future__ import annotations

from fastreg.compat._integrate import DVF2DDF
from fastreg.compat._lncc import LocalNormalizedCrossCorrelationLoss
from fastreg.compat._patch import Patch
from fastreg.compat._warp import Warp

__all__ = ["Warp", "DVF2DDF", "LocalNormalizedCrossCorrelationLoss", "patch"]


def patch() -> Patch:
    """Put Warp, DVF2DDF and LocalNormalizedCrossCorrelationLoss in place of MONAI's in every
    imported ``monai`` module (``monai.networks.blocks``, ``monai.losses``, the networks that
    imported them by name). Call it once (``handle.restore()`` undoes it), or use
    ``with fastreg.compat.monai.patch(): net = monai.networks.nets.VoxelMorph()``."""
    import monai.losses.image_dissimilarity as losses
    import monai.networks.blocks.warp as blocks
    import monai.networks.nets  # noqa: F401  (imported so its modules are patched too)

    return Patch("monai", {
        blocks.Warp: Warp,
        blocks.DVF2DDF: DVF2DDF,
        losses.LocalNormalizedCrossCorrelationLoss: LocalNormalizedCrossCorrelationLoss,
    })
