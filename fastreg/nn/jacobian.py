"""JacobianLoss: a folding penalty on the Jacobian determinant of a displacement field.

Contract: disp (B, ndim, *S) in voxels (or physical units with ``spacing``), ij order;
returns mean(relu(eps - det)) over batch and voxels (or the (B, *S) map, reduction="none"),
det = fastreg.jacobian_det(disp, mode, spacing).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fastreg import _validate as check
from fastreg.nn.losses import REDUCTIONS, reduce
from fastreg.ops.jacobian import MODES, jacobian_det


def jacobian_loss(disp: torch.Tensor, eps: float = 0.0, mode: str = "central",
                  spacing: float | Sequence[float] | None = None, reduction: str = "mean") -> torch.Tensor:
    """The folding penalty relu(eps - det) of ``JacobianLoss`` as a function (arguments there)."""
    check.choice(reduction, "reduction", REDUCTIONS)
    return reduce(torch.relu(eps - jacobian_det(disp, mode, spacing)), reduction)


class JacobianLoss(nn.Module):
    """Penalty relu(eps - det(I + du/dx)) on folding voxels.

    Args:
        eps: margin below which a determinant is penalized; the default 0 penalizes exactly
            the folding voxels (det < 0), the negative-Jacobian loss of Mok & Chung
            (SYMNet, CVPR 2020): mean of ReLU(-|J|). A small positive eps (e.g. 0.01) also
            pushes determinants away from 0.
        mode: derivative scheme of fastreg.jacobian_det (default "central", the Learn2Reg
            evaluation, so the loss penalizes what the folding metric counts).
        spacing: voxel sizes per axis (disp then in physical units), default voxels.
        reduction: "mean" (default), "sum" or "none" (the (B, *S) map).

    Example::

        loss = sim_loss + 0.1 * fastreg.nn.JacobianLoss()(flow)
    """

    def __init__(self, eps: float = 0.0, mode: str = "central", spacing: float | Sequence[float] | None = None,
                 reduction: str = "mean"):
        super().__init__()
        check.choice(mode, "mode", MODES)
        check.choice(reduction, "reduction", REDUCTIONS)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps != eps:
            raise TypeError(f"eps: expected a number, got {eps!r}")
        if spacing is not None:
            count = (spacing.numel() if isinstance(spacing, torch.Tensor)
                     else len(spacing) if isinstance(spacing, (list, tuple)) else 1)
            check.spacing(spacing, "spacing", count)  # the count of axes is checked against disp in forward
        self.eps, self.mode, self.spacing, self.reduction = float(eps), mode, spacing, reduction

    def forward(self, disp: torch.Tensor) -> torch.Tensor:
        return jacobian_loss(disp, self.eps, self.mode, self.spacing, self.reduction)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, mode={self.mode!r}, spacing={self.spacing}, reduction={self.reduction!r}"
