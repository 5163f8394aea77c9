"""fastreg.register end to end (warm, process start excluded): the 2-D 224^2 pair of
`fastreg register --example` with the shipped unireg-2d (2 passes; ``--passes`` changes it),
fastreg's kernels against the same pipeline under fastreg.use_backend("reference") in the same
process, paired interleaved rounds. Also: seconds of `import fastreg` + loading unireg-2d
(checksum verified) in a fresh interpreter.

Usage: python benchmarks/register.py [--rounds 5] [--threads 2] [--affine off|auto|on] [--model CHECKPOINT]
          [--passes N] [--half]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import fastreg
from fastreg import models
from fastreg.cli.register import write_example


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--affine", default="off", choices=("off", "auto", "on"))
    p.add_argument("--model", default=None, help="a checkpoint (default: the shipped unireg-2d)")
    p.add_argument("--passes", type=int, default=None, help="network passes (default: the model's own)")
    p.add_argument("--half", action="store_true", help="the network under bf16 autocast (register's half=True)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    net = models.load_checkpoint(args.model) if args.model else models.load("unireg-2d")
    if args.passes is not None:
        net.set_passes(args.passes)
    with tempfile.TemporaryDirectory() as folder:
        fixed, moving = (fastreg.io.load(path) for path in write_example(Path(folder)))

    def run():
        return fastreg.register(fixed, moving, model=net, affine=args.affine, device="cpu", half=args.half)

    def reference():
        with fastreg.use_backend("reference"):
            return run()

    for call in (run, reference):
        call()
    times = {"fastreg": [], "reference": []}
    stages = []
    for _ in range(args.rounds):
        for name, call in (("fastreg", run), ("reference", reference)):
            start = time.perf_counter()
            result = call()
            times[name].append(time.perf_counter() - start)
            if name == "fastreg":
                stages.append(result.timings)
    ratios = [r / f for f, r in zip(times["fastreg"], times["reference"])]
    print(f"cpu ({args.threads} threads), torch {torch.__version__}; 224x224 pair, affine={args.affine}, "
          f"passes={net.passes}, half={args.half}")
    print(f"  fastreg   median {statistics.median(times['fastreg']):.3f} s per pair")
    print(f"  reference median {statistics.median(times['reference']):.3f} s per pair")
    print(f"  reference / fastreg per round: {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}x")
    print("  fastreg stages (median s): " + ", ".join(
        f"{k} {statistics.median(s[k] for s in stages):.3f}" for k in stages[0]))
    code = "import time; t = time.perf_counter(); import fastreg, fastreg.models as m; m.load('unireg-2d'); print(time.perf_counter() - t)"
    seconds = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
               for _ in range(3)]
    print(f"  import fastreg + load unireg-2d: median {statistics.median(seconds):.2f} s (3 fresh interpreters)")


if __name__ == "__main__":
    main()
