"""Training throughput of a recipe: pairs/s, peak memory and the share of step time spent
waiting for data, with fastreg's kernels against the same recipe on plain torch ops
(``fastreg.use_backend("reference")``), paired in the same process.

    python benchmarks/train_throughput.py unireg-2d-labelm --set data.args.size=224
    python benchmarks/train_throughput.py dpvfa-3d-synth --set data.args.shape=[96,112,96] --steps 2

Each timed call is ``fastreg.train.fit`` for ``--steps`` steps (no files written) of one model
copy per backend, both copies starting from the same weights and reading the same batches;
the backends run in interleaved rounds (fastreg.bench.timing.round_times), so each round's
ratio compares them under the same machine load, and the reported ratio is the median of
the per-round ratios. Pairs/s and the data-wait share come from fit's own counters (the loop's
step time, without its setup); peak memory is one more call per backend under the torch
profiler (fastreg.bench.timing.peak_memory: bytes of torch's CPU allocator, or CUDA's peak).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch

import fastreg
from fastreg import recipes
from fastreg.bench.runner import describe_device
from fastreg.bench.timing import peak_memory, round_times
from fastreg.train import fit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", help="a shipped recipe name or a .toml file")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe overrides, as fastreg train --set (e.g. a smaller data.args.shape)")
    p.add_argument("--steps", type=int, default=3, help="training steps per timed call (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--backends", default="auto,reference",
                   help="comma list; auto = the one the device picks; the first is the baseline (default auto,reference)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    recipe = recipes.override(recipes.load(args.recipe), ["validation.every=0", *args.assignments])
    torch.manual_seed(recipe["train"]["seed"])
    model, data, _, loss, kwargs = recipes.resolve(recipe, device)
    kwargs = {**kwargs, "steps": args.steps, "progress": False, "tensorboard": False, "device": device}
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    results: dict[str, list] = {b: [] for b in backends}

    def call_for(backend: str):
        replica = copy.deepcopy(model)

        def call():
            with fastreg.use_backend(None if backend == "auto" else backend):
                results[backend].append(fit(replica, data, loss, **kwargs))

        return call, lambda: None

    calls = [call_for(b) for b in backends]
    for call, _ in calls:  # warm-up: one-time imports, kernel selection, allocator growth
        call()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    times = round_times(calls, device, args.rounds)
    peaks = [peak_memory(call, reset, device) for call, reset in calls]
    rows = []
    for i, backend in enumerate(backends):
        timed = results[backend][1:1 + args.rounds]
        pairs = sum(r.pairs for r in timed)
        seconds = sum(r.seconds for r in timed)
        ratio = statistics.median(t / b for t, b in zip(times[i], times[0]))
        rows.append({
            "recipe": args.recipe, "backend": backend, "steps": args.steps, "rounds": args.rounds,
            "pairs_per_s": pairs / seconds, "data_wait": sum(r.data_seconds for r in timed) / seconds,
            "peak_mib": None if peaks[i] is None else peaks[i] / 2**20, "time_ratio": ratio,
        })
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{started}; {describe_device(device)}, torch {torch.__version__}; recipe {args.recipe} "
          f"({', '.join(args.assignments) or 'as shipped'}); {args.steps} steps x {args.rounds} rounds")
    print("time ratio = median over rounds of (call time / the first backend's); > 1: slower than the first")
    print(f"{'backend':<10} {'pairs/s':>9} {'data wait':>9} {'peak MiB':>9} {'time ratio':>10}")
    for r in rows:
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        print(f"{r['backend']:<10} {r['pairs_per_s']:>9.2f} {r['data_wait']:>9.1%} {peak:>9} {r['time_ratio']:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
