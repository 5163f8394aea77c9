"""NIO (and IO) per-iteration time on the fused backend vs fastreg.use_backend("reference"), paired.

    python benchmarks/nio.py                                  # LapIRN-like pyramid, 96x112x96
    python benchmarks/nio.py --model dpvfa                    # a registry model (the issue's target)
    python benchmarks/nio.py --shape 64 64 64 --pairs 2 --iterations 4 --rounds 3
    python benchmarks/nio.py --model dpvfa --half             # NIO's steps in bfloat16 vs float32

The same loop (``fastreg.nio.optimize``, one stage with all the model's levels), the same
model and the same pair run under the default backend (the fused kernels: ``cpu`` or
``cuda``) and under ``reference`` (plain torch: grid_sample warps, convolution LNCC) in
alternating order, ``--rounds`` times in one process; each round gives one ratio
reference / fused of the per-iteration times, so both sides of a ratio share the machine's
load. Per-iteration time: (end of the last step - end of the first) / (iterations - 1), from
the run's log, so the first (warm-up) step is left out. The same is measured for
``fastreg.nio.instance_optimize`` (Adam on a dense field: the loss and the warp alone, no
network) on the same pair. ``--batched`` instead times the pairs at once (vmap over per-pair
weights) against one pair at a time; ``--half`` times NIO with ``half=True`` (the network's
steps under bfloat16 autocast) against float32, both fused, paired the same way. Peak
memory: bytes allocated above the start during one run of 2 iterations
(fastreg.bench.timing.peak_memory: CUDA counters, or the CPU profiler's allocation events),
divided by the number of pairs.

``--model pyramid`` (default) is a LapIRN-like three-level network written here, until the
registry's models exist: level k sees both images at 1/2^(3-k) resolution, the moving one
warped by the field so far, through a small encoder-decoder (16/32 channels) and adds a
residual field upsampled to full resolution.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import fastreg
from fastreg import nio
from fastreg.bench.runner import describe_device
from fastreg.bench.timing import peak_memory
from fastreg.data.fields import random_smooth_field
from fastreg.data.intensities import min_max
from fastreg.models import RegistrationModel, create


class LapPyramid(RegistrationModel):
    """The benchmark's stand-in for a trained pyramid network (see the module docstring)."""

    def __init__(self, ndim: int = 3, num_levels: int = 3, width: int = 16):
        super().__init__()
        self.ndim, self.num_levels, self.multiple = ndim, num_levels, 2 ** num_levels
        conv = nn.Conv3d if ndim == 3 else nn.Conv2d
        self.levels = nn.ModuleList(
            nn.ModuleDict(
                dict(
                    inp=conv(2, width, 3, padding=1),
                    down=conv(width, 2 * width, 3, stride=2, padding=1),
                    mid=conv(2 * width, 2 * width, 3, padding=1),
                    up=conv(3 * width, width, 3, padding=1),
                    out=conv(width, ndim, 3, padding=1),
                )
            )
            for _ in range(num_levels)
        )

    def predict(self, fixed, moving, levels):
        mode = "bilinear" if self.ndim == 2 else "trilinear"
        disp = None
        for k in range(levels):
            block = self.levels[k]
            moved = moving if disp is None else fastreg.warp(moving, disp)
            x = torch.cat([fixed, moved], 1)
            factor = 2 ** (self.num_levels - 1 - k)
            if factor > 1:
                x = F.interpolate(x, scale_factor=1 / factor, mode=mode, align_corners=True)
            skip = F.leaky_relu(block["inp"](x), 0.2)
            y = F.leaky_relu(block["mid"](F.leaky_relu(block["down"](skip), 0.2)), 0.2)
            y = F.interpolate(y, size=skip.shape[2:], mode=mode, align_corners=True)
            y = F.leaky_relu(block["up"](torch.cat([y, skip], 1)), 0.2)
            up = fastreg.resize_field(0.1 * block["out"](y), size=fixed.shape[2:])
            disp = up if disp is None else disp + up
        return disp


def make_pair(shape, pairs: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random moving images in [0, 1] and fixed = moving warped by a smooth field."""
    moving = min_max(random_smooth_field(shape, batch=pairs, spacing=8)[:, :1])
    fixed = fastreg.warp(moving, random_smooth_field(shape, batch=pairs, magnitude=3.0, spacing=24))
    return fixed.to(device), moving.to(device)


def seconds_per_step(log: dict) -> float:
    """Per-iteration time from a run's log, the first (warm-up) step left out."""
    return float(log["seconds"][-1] - log["seconds"][0]) / (len(log["seconds"]) - 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="pyramid", help="'pyramid' or a fastreg.models registry name")
    parser.add_argument("--shape", type=int, nargs="+", default=[96, 112, 96])
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=4, help="Adam steps per run (>= 2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--batched", action="store_true",
                        help="instead: time NIO (one step per level stage) on the pairs at once vs one by one")
    parser.add_argument("--half", action="store_true",
                        help="instead: time NIO with half=True (bfloat16 steps) against float32, both fused")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.iterations < 2:
        parser.error("--iterations: expected at least 2 (the first step is left out)")
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ndim = len(args.shape)
    model = LapPyramid(ndim) if args.model == "pyramid" else create(args.model, ndim=ndim)
    model = model.to(device)
    fixed, moving = make_pair(args.shape, args.pairs, device)
    start = random_smooth_field(args.shape, batch=args.pairs, magnitude=2.0).to(device)
    finest = (model.num_levels,)
    if args.batched:
        return compare_batched(model, fixed, moving, args)
    if args.half:
        return compare_half(model, fixed, moving, finest, args)
    loops = {  # name -> run(iterations) -> Result
        "nio": lambda n: nio.optimize(model, fixed, moving, iterations=(n,), levels=finest),
        "io": lambda n: nio.instance_optimize(start, fixed, moving, iterations=n),
    }
    backends = {"fused": None, "reference": "reference"}
    times = {(loop, name): [] for loop in loops for name in backends}
    for r in range(args.rounds):
        order = list(backends) if r % 2 == 0 else list(reversed(backends))
        for loop, run in loops.items():
            for name in order:
                with fastreg.use_backend(backends[name]):
                    times[loop, name].append(seconds_per_step(run(args.iterations).log))
        print(f"round {r}: " + ", ".join(f"{k[0]} {k[1]} {v[-1]:.3f} s/it" for k, v in times.items()), file=sys.stderr)
    params = sum(p.numel() for p in model.parameters())
    print(f"{describe_device(device)}, torch {torch.__version__}")
    print(f"model {args.model} ({params:,} parameters, {model.num_levels} levels), pairs {args.pairs}, "
          f"shape {'x'.join(map(str, args.shape))}, {args.iterations} iterations per run, {args.rounds} rounds")
    for loop, run in loops.items():
        for name, backend in backends.items():
            with fastreg.use_backend(backend):
                peak = peak_memory(lambda: run(2), lambda: None, device)
            memory = "n/a" if peak is None else f"{peak / args.pairs / 2**20:.1f} MiB"
            print(f"  {loop:3s} {name:9s}  median {statistics.median(times[loop, name]):.3f} s/iteration   "
                  f"peak {memory} per pair")
        ratios = [ref / fused for ref, fused in zip(times[loop, "reference"], times[loop, "fused"])]
        print(f"  {loop:3s} ratio reference / fused per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
              f"median {statistics.median(ratios):.2f}x")


def compare_half(model, fixed, moving, finest, args) -> None:
    """NIO per-iteration time with ``half=True`` against float32, paired per round."""
    times = {False: [], True: []}
    for r in range(args.rounds):
        for half in (False, True) if r % 2 == 0 else (True, False):
            log = nio.optimize(model, fixed, moving, iterations=(args.iterations,), levels=finest, half=half).log
            times[half].append(seconds_per_step(log))
        print(f"round {r}: float32 {times[False][-1]:.3f} s/it, half {times[True][-1]:.3f} s/it", file=sys.stderr)
    print(f"{describe_device(device_of(model))}, torch {torch.__version__}")
    print(f"model {args.model}, pairs {args.pairs}, shape {'x'.join(map(str, args.shape))}, "
          f"{args.iterations} iterations per run, {args.rounds} rounds")
    for half in (False, True):
        print(f"  nio {'half' if half else 'float32':7s}  median {statistics.median(times[half]):.3f} s/iteration")
    ratios = [a / b for a, b in zip(times[False], times[True])]
    print(f"  nio ratio float32 / half per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"median {statistics.median(ratios):.2f}x")


def compare_batched(model, fixed, moving, args) -> None:
    """Wall time of ``optimize`` on all pairs at once (vmap over per-pair weights) and on each
    pair alone, in paired rounds after one warm-up call (default backend, ``--iterations`` steps
per stage)."""
    iterations = (args.iterations,) * len(nio.default_levels(model.num_levels))
    start = time.perf_counter()
    nio.optimize(model, fixed, moving, iterations=iterations)  # warm-up, untimed in the rounds
    print(f"first call at once (warm-up): {time.perf_counter() - start:.2f} s", file=sys.stderr)
    ratios = []
    for r in range(args.rounds):
        start = time.perf_counter()
        nio.optimize(model, fixed, moving, iterations=iterations)
        together = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(args.pairs):
            nio.optimize(model, fixed[i : i + 1], moving[i : i + 1], iterations=iterations)
        alone = time.perf_counter() - start
        ratios.append(alone / together)
        print(f"round {r}: {args.pairs} pairs at once {together:.2f} s, one by one {alone:.2f} s", file=sys.stderr)
    print(f"{describe_device(device_of(model))}, torch {torch.__version__}; model {args.model}, "
          f"{args.pairs} pairs of {'x'.join(map(str, args.shape))}, iterations {iterations}")
    print(f"  one by one / at once per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"median {statistics.median(ratios):.2f}x")


def device_of(model) -> torch.device:
    return next(model.parameters()).device


if __name__ == "__main__":
    main()
