"""Validation: the loss and the papers' numbers on a fixed list of batches, via fastreg.metrics.

Per batch, with ``disp = model(fixed, moving)``:
  loss             the training loss
  cc               Pearson CC of fixed and the warped mono-modal moving image (``moving_mono``
                   when the batch has it, else ``moving``): UniReg's mono-modal number
  mi               mutual information (nats, 32 bins) of fixed and the warped ``moving``
  dice             mean Dice over the labels of ``fixed_labels`` and ``moving_labels`` warped
                   nearest (only when the batch has both)
  folding_percent  % of det J <= 0 (central differences, 2-voxel crop: Learn2Reg)
  sdlogj           Learn2Reg's SDlogJ
Each is the mean over the items of all batches.
"""
from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from fastreg import metrics
from fastreg.ops.warp import warp
from fastreg.train.stream import to_device

# Whether a larger value is better, per metric (best checkpoint selection).
HIGHER_IS_BETTER = {"loss": False, "cc": True, "mi": True, "dice": True, "folding_percent": False, "sdlogj": False}


def metric_names(batches) -> list[str]:
    """The metrics ``evaluate`` gives on ``batches`` (dice only when every batch has labels)."""
    labelled = all("fixed_labels" in b and "moving_labels" in b for b in batches)
    return [k for k in HIGHER_IS_BETTER if k != "dice" or labelled]


@torch.no_grad()
def evaluate(model, batches, loss_fn, device: torch.device, autocast: AbstractContextManager) -> dict[str, float]:
    """The metrics above on ``batches`` (a list of batch dicts); ``model`` is put in eval mode
    for the call and back to its previous mode."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    names = metric_names(batches)
    try:
        for batch in batches:
            batch = to_device(batch, device)
            with autocast:
                disp = model(batch["fixed"], batch["moving"])
                value = loss_value(loss_fn(batch, disp))
            disp = disp.float()
            fixed = batch["fixed"].float()
            items = {"loss": value.detach().double().expand(fixed.shape[0])}
            warped = warp(batch["moving"].float(), disp)
            mono = warp(batch["moving_mono"].float(), disp) if "moving_mono" in batch else warped
            items["cc"] = metrics.cc(fixed, mono)
            items["mi"] = metrics.mutual_information(fixed, warped)
            if "dice" in names:
                labels = warp(batch["moving_labels"].double(), disp.double(), mode="nearest").round().long()
                items["dice"] = metrics.dice(batch["fixed_labels"], labels).nanmean(1)
            stats = metrics.jacobian_stats(disp)
            items["folding_percent"] = stats["folding_percent"]
            items["sdlogj"] = stats["sdlogj"]
            for k, v in items.items():
                sums[k] = sums.get(k, 0.0) + float(v.sum())
            count += fixed.shape[0]
    finally:
        model.train(was_training)
    return {k: v / count for k, v in sums.items()}


def loss_value(out) -> torch.Tensor:
    """The scalar of a loss callable's result: a tensor, or a dict with a ``loss`` entry."""
    value = out["loss"] if isinstance(out, dict) else out
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise TypeError(f"loss: expected a scalar tensor or a dict with a scalar 'loss', got {type(value).__name__}")
    return value.reshape(())
