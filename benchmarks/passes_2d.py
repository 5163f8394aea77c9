"""How many passes a 2-D model should be applied: the synthetic validation CC per number of
passes (fastreg.models.base: Recursion), on the validation stream of its training recipe
(LabelMPairs 224^2, validation seed 1, the first ``--batches`` batches of 8) - the criterion
the shipped unireg-2d's ``passes`` was chosen by (never the real-image evaluation).

    python benchmarks/passes_2d.py --checkpoint runs/unireg-2d-labelm --max-passes 4
"""
from __future__ import annotations

import argparse
import time

import torch

import fastreg
import fastreg.models
from fastreg import metrics
from fastreg.data import LabelMPairs
from fastreg.train.stream import first_batches


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="unireg-2d", help="a pretrained model name (fastreg.models.load)")
    p.add_argument("--checkpoint", default=None, help="a `fastreg train` checkpoint or run folder instead")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--max-passes", type=int, default=4)
    args = p.parse_args(argv)
    model = fastreg.models.load_checkpoint(args.checkpoint) if args.checkpoint else fastreg.models.load(args.model)
    model.eval()
    batches = first_batches(LabelMPairs(224, batch_size=8, seed=1), args.batches)
    print("passes  validation CC  folding %  seconds per batch of 8")
    for passes in range(1, args.max_passes + 1):
        model.set_passes(passes)
        cc, folding, seconds = [], [], 0.0
        with torch.inference_mode():
            for b in batches:
                start = time.perf_counter()
                disp = model(b["fixed"], b["moving"])
                seconds += time.perf_counter() - start
                cc.append(metrics.cc(b["fixed"], fastreg.warp(b["moving"], disp, padding_mode="border")))
                folding.append(metrics.jacobian_stats(disp)["folding_percent"])
        print(f"{passes:6d}  {torch.cat(cc).mean().item():13.5f}  {torch.cat(folding).mean().item():9.4f}  "
              f"{seconds / len(batches):8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
