"""invert_field in plain differentiable torch: the oracle of the tests and the fallback
backend. The fixed-point loop is written once here; fastreg.ops.invert runs the same loop
with the dispatching warp and differentiates it implicitly, while this module's autograd
unrolls the iterations.

Contract: see fastreg/ops/invert.py.
"""
from __future__ import annotations

from typing import Callable

import torch

from fastreg.reference.warp import warp as reference_warp


def fixed_point(
    u: torch.Tensor,
    iterations: int,
    tol: float,
    padding_mode: str = "border",
    warp: Callable = reference_warp,
) -> tuple[torch.Tensor, float]:
    """Iterate w <- -warp(u, w) from w = -u for u (B, ndim, *S) in voxels.

    Stops after ``iterations`` evaluations of the map, or as soon as the largest change
    max |w_new - w| (NaN entries ignored) is below ``tol`` voxels. Returns the last iterate
    and that last change (inf when ``iterations`` is 1 or ``tol`` is 0: no change was
    measured, and the loop has no data-dependent branch, so torch.compile traces it whole).
    """
    w = -u
    update = float("inf")
    for _ in range(iterations - 1):
        w_next = -warp(u, w, "bilinear", padding_mode)
        if tol > 0:
            update = torch.nan_to_num((w_next - w).detach().abs(), nan=0.0).amax().item()
        w = w_next
        if update < tol:
            break
    return w, update


def invert_field(disp: torch.Tensor, iterations: int = 50, tol: float = 1e-4, padding_mode: str = "border") -> torch.Tensor:
    """Displacement (B, ndim, *S) of the inverse of x -> x + disp(x), gradients through
    every iteration."""
    return fixed_point(disp, iterations, tol, padding_mode)[0]
