"""fastreg.register end to end (warm, process start excluded), fastreg's kernels against the
same pipeline under fastreg.use_backend("reference") in the same process, paired interleaved
rounds. Also: seconds of `import fastreg` + loading the model (checksum verified) in a fresh
interpreter.

2-D (default): the 224^2 pair of `fastreg register --example` with the shipped unireg-2d (2
passes; ``--passes`` changes it). 3-D (``--ndim 3``): a SynthMorph-style pair
(fastreg.data.SynthMorphPairs, random label maps and contrasts, never a real image) of
``--shape`` (default 160x192x224) at 1 mm with the shipped dpvfa-3d, which runs at its own voxel
size (``model.spacing``; ``--spacing`` overrides it).

Usage: python benchmarks/register.py [--ndim 2|3] [--rounds 5] [--threads 2] [--affine off|auto|on]
          [--model NAME|CHECKPOINT] [--passes N] [--half] [--shape D,H,W] [--spacing MM]
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
from fastreg.data import SynthMorphPairs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--affine", default="off", choices=("off", "auto", "on"))
    p.add_argument("--ndim", type=int, default=2, choices=(2, 3))
    p.add_argument("--model", default=None,
                   help="a shipped name or a checkpoint (default: the shipped unireg-2d / dpvfa-3d)")
    p.add_argument("--shape", default="160,192,224", help="3-D pair size")
    p.add_argument("--spacing", type=float, default=None, help="voxel size the network runs at (default: the model's)")
    p.add_argument("--passes", type=int, default=None, help="network passes (default: the model's own)")
    p.add_argument("--half", action="store_true", help="the network under bf16 autocast (register's half=True)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = args.model or ("unireg-2d" if args.ndim == 2 else "dpvfa-3d")
    net = models.load(model) if model in models.weights.names() else models.load_checkpoint(model)
    if args.passes is not None:
        net.set_passes(args.passes)
    if args.ndim == 2:
        with tempfile.TemporaryDirectory() as folder:
            fixed, moving = (fastreg.io.load(path) for path in write_example(Path(folder)))
        size = "224x224"
    else:
        shape = tuple(int(v) for v in args.shape.split(","))
        pair = SynthMorphPairs(shape, batch_size=1).draw(torch.Generator().manual_seed(0))
        fixed, moving = (fastreg.io.Image(pair[k][0]) for k in ("fixed", "moving"))
        size = "x".join(map(str, shape))
    spacing = "model" if args.spacing is None else args.spacing

    def run():
        return fastreg.register(fixed, moving, model=net, affine=args.affine, device="cpu", half=args.half,
                                spacing=spacing)

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
    print(f"cpu ({args.threads} threads), torch {torch.__version__}; {size} pair, {model}, affine={args.affine}, "
          f"passes={net.passes}, half={args.half}, network spacing={spacing if spacing != 'model' else net.spacing}")
    print(f"  fastreg   median {statistics.median(times['fastreg']):.3f} s per pair")
    print(f"  reference median {statistics.median(times['reference']):.3f} s per pair")
    print(f"  reference / fastreg per round: {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}x")
    print("  fastreg stages (median s): " + ", ".join(
        f"{k} {statistics.median(s[k] for s in stages):.3f}" for k in stages[0]))
    load = f"m.load({model!r})" if model in models.weights.names() else f"m.load_checkpoint({model!r})"
    code = f"import time; t = time.perf_counter(); import fastreg, fastreg.models as m; {load}; print(time.perf_counter() - t)"
    seconds = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
               for _ in range(3)]
    print(f"  import fastreg + load {model}: median {statistics.median(seconds):.2f} s (3 fresh interpreters)")


if __name__ == "__main__":
    main()
