"""A 3-D model on the synthetic validation stream of its training recipe: mean label Dice, CC
and folding per number of passes (fastreg.models.base: Recursion), with the weights as
trained (float32) and rounded to float16 (the shipped file's precision). This is the
criterion of every choice made for a shipped 3-D model (checkpoint, passes, float16); the
MNI152 template (benchmarks/quality_3d.py) is never used for one.

Stream: fastreg.data.SynthMorphPairs (26 labels, dynamic contrast, validation seed 1, the
recipe's validation stream) at ``--shape`` (default 64^3, the size dpvfa-3d trained at),
``--batches`` pairs. Dice: the moving labels warped by nearest neighbour against the fixed
labels, mean over the labels present; folding: % of det J <= 0.

    python benchmarks/validate_3d.py --checkpoint runs/dpvfa-3d-64 --max-passes 2 --half
    python benchmarks/validate_3d.py --model dpvfa-3d --shape 96,96,96
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

import fastreg
import fastreg.models
from fastreg import metrics
from fastreg.data import SynthMorphPairs
from fastreg.train.stream import first_batches


def scores(model, batches) -> tuple[float, float, float, float]:
    """(mean Dice, mean CC, mean folding %, seconds per pair) of ``model`` on ``batches``."""
    dice, cc, folding, seconds = [], [], [], 0.0
    with torch.inference_mode():
        for b in batches:
            start = time.perf_counter()
            disp = model(b["fixed"], b["moving"])
            seconds += time.perf_counter() - start
            labels = fastreg.warp(b["moving_labels"].double(), disp.double(), mode="nearest").round().long()
            dice.append(metrics.dice(b["fixed_labels"], labels).nanmean(1))
            cc.append(metrics.cc(b["fixed"], fastreg.warp(b["moving"], disp, padding_mode="border")))
            folding.append(metrics.jacobian_stats(disp)["folding_percent"])
    mean = lambda xs: torch.cat(xs).double().mean().item()  # noqa: E731
    return mean(dice), mean(cc), mean(folding), seconds / len(batches)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="dpvfa-3d", help="a pretrained model name (fastreg.models.load)")
    p.add_argument("--checkpoint", default=None, help="a `fastreg train` checkpoint or run folder instead")
    p.add_argument("--shape", default="64,64,64")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--max-passes", type=int, default=1)
    p.add_argument("--half", action="store_true", help="also score the weights rounded to float16")
    args = p.parse_args(argv)
    model = fastreg.models.load_checkpoint(args.checkpoint) if args.checkpoint else fastreg.models.load(args.model)
    shape = tuple(int(v) for v in args.shape.split(","))
    batches = first_batches(SynthMorphPairs(shape, batch_size=1, seed=1), args.batches)
    variants = {"float32": model}
    if args.half:
        rounded = copy.deepcopy(model)
        rounded.load_state_dict({k: v.half().to(v.dtype) if v.is_floating_point() else v
                                 for k, v in model.state_dict().items()})
        variants["float16 weights"] = rounded
    print(f"{args.checkpoint or args.model}: SynthMorphPairs {args.shape}, validation seed 1, {args.batches} pairs")
    print("weights          passes  Dice     CC       folding %  s/pair")
    for label, net in variants.items():
        for passes in range(1, args.max_passes + 1):
            net.set_passes(passes)
            d, c, f, s = scores(net.eval(), batches)
            print(f"{label:15s}  {passes:6d}  {d:.4f}   {c:.4f}   {f:9.4f}  {s:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
