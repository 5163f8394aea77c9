"""nn.Module faces of the integrate ops (thin wrappers; the functions are in
fastreg.ops.integrate)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fastreg import _validate as check
from fastreg.ops.integrate import integrate_svf
from fastreg.ops.resize import resize_field
from fastreg.ops.warp import PADDINGS


class VecInt(nn.Module):
    """Integrate a stationary velocity field by scaling and squaring: ``fastreg.integrate_svf``.

    Args:
        steps: squaring steps (VoxelMorph's ``int_steps=7`` and MONAI's ``num_steps=7``).
        padding_mode: "zeros" (VoxelMorph and MONAI DVF2DDF), "border" or "reflection".
        checkpoints: intermediate fields kept for the backward (1: about 5 fields at the peak
            of forward+backward; 0: 4; None: all, no recomputation). Changes memory and time,
            never the result; see ``fastreg.integrate_svf``.

    Shapes: v (B, ndim, *S) in voxels (ij order) -> displacement (B, ndim, *S).

    Example::

        integrate = fastreg.nn.VecInt(steps=7)
        flow = integrate(velocity)
    """

    def __init__(self, steps: int = 7, padding_mode: str = "zeros", checkpoints: int | None = 1):
        super().__init__()
        self.steps = check.squaring_steps(steps, "steps")
        check.choice(padding_mode, "padding_mode", PADDINGS)
        self.padding_mode = padding_mode
        self.checkpoints = None if checkpoints is None else check.non_negative_int(checkpoints, "checkpoints")

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return integrate_svf(v, self.steps, self.padding_mode, self.checkpoints)

    def extra_repr(self) -> str:
        return f"steps={self.steps}, padding_mode={self.padding_mode!r}, checkpoints={self.checkpoints}"


class ResizeField(nn.Module):
    """Resample a displacement field to another grid and rescale its vectors:
    ``fastreg.resize_field`` (VoxelMorph's ResizeTransform with ``scale_factor = 1 / vel_resize``).

    Args (exactly one): size (new spatial size) or scale_factor (float or one per axis).

    Shapes: u (B, ndim, *S) -> (B, ndim, *S_new).
    """

    def __init__(self, size: int | Sequence[int] | None = None, scale_factor: float | Sequence[float] | None = None):
        super().__init__()
        check.resize_options(size, scale_factor)
        self.size = size
        self.scale_factor = scale_factor

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return resize_field(u, self.size, self.scale_factor)

    def extra_repr(self) -> str:
        return f"size={self.size!r}" if self.size is not None else f"scale_factor={self.scale_factor!r}"
