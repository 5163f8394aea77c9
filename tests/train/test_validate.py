"""Validation metrics equal fastreg.metrics on the warped images of each batch."""
import torch

import fastreg
from fastreg import metrics
from fastreg.train.validate import evaluate, metric_names
from tiny import TinyNet, TinyPairs, tiny_loss


def test_metrics_match_fastreg_metrics():
    model = TinyNet()
    batch = TinyPairs(seed=int(torch.randint(0, 2**30, ())), labels=True).take(0, 3)
    batch["moving_mono"] = torch.rand_like(batch["moving"])
    scores = evaluate(model, [batch], tiny_loss, torch.device("cpu"), torch.no_grad())
    assert list(scores) == metric_names([batch]) == ["loss", "cc", "mi", "dice", "folding_percent", "sdlogj"]
    with torch.no_grad():
        disp = model(batch["fixed"], batch["moving"])
        warped_labels = fastreg.warp(batch["moving_labels"].double(), disp.double(), mode="nearest").long()
        expected = {
            "loss": float(tiny_loss(batch, disp)["loss"]),
            "cc": float(metrics.cc(batch["fixed"], fastreg.warp(batch["moving_mono"], disp)).mean()),
            "mi": float(metrics.mutual_information(batch["fixed"], fastreg.warp(batch["moving"], disp)).mean()),
            "dice": float(metrics.dice(batch["fixed_labels"], warped_labels).nanmean(1).mean()),
            "folding_percent": float(metrics.jacobian_stats(disp)["folding_percent"].mean()),
            "sdlogj": float(metrics.jacobian_stats(disp)["sdlogj"].mean()),
        }
    for k, v in expected.items():
        assert abs(scores[k] - v) <= 1e-6 * max(1.0, abs(v)), k
    assert model.training  # evaluate puts the mode back


def test_dice_only_with_labels():
    assert "dice" not in metric_names([TinyPairs().take(0, 1)])
