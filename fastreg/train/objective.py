"""From a registration loss on images to the loss ``fit`` calls on a batch and a field.

fastreg.nn's presets (``fastreg.nn.loss_for(name)``) have the signature
``loss(fixed, warped, disp, *, fixed_labels=None, warped_labels=None)``; ``fit`` calls
``loss(batch, disp)``. ``pair_loss`` joins them: it warps the moving image (its mono-modal
twin ``moving_mono`` when the batch has one: the multimodal setting of UniReg compares fixed
with the warped twin) and, with ``labels=True``, the moving label map as one-hot
probabilities (linear interpolation, differentiable in ``disp``: the cascaded U-Net's soft
Dice), and passes the fixed labels (B, 1, *S) int64 as they are.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastreg.ops.warp import warp


def one_hot(labels: torch.Tensor, num_labels: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, *S) integer labels in [0, num_labels) -> (B, num_labels, *S) one-hot of ``dtype``."""
    return F.one_hot(labels[:, 0], num_labels).movedim(-1, 1).to(dtype)


def pair_loss(fn, *, labels: bool = False, num_labels: int | None = None):
    """``loss(batch, disp)`` calling ``fn(fixed, warped, disp, ...)`` as described above.

    ``num_labels``: the one-hot size (default: 1 + the largest label of the batch's two maps).
    """

    def loss(batch: dict, disp: torch.Tensor):
        if disp.dtype in (torch.float16, torch.bfloat16):  # under autocast: the loss in float32
            disp = disp.float()
        moving = batch.get("moving_mono", batch["moving"])
        warped = warp(moving.to(disp.dtype), disp)
        if not labels:
            return fn(batch["fixed"], warped, disp)
        if "fixed_labels" not in batch or "moving_labels" not in batch:
            raise ValueError("data: this loss needs 'fixed_labels' and 'moving_labels' in every batch")
        fixed_labels, moving_labels = batch["fixed_labels"], batch["moving_labels"]
        n = num_labels or int(torch.maximum(fixed_labels.max(), moving_labels.max())) + 1
        warped_labels = warp(one_hot(moving_labels, n, disp.dtype), disp)
        return fn(batch["fixed"], warped, disp, fixed_labels=fixed_labels, warped_labels=warped_labels)

    return loss
