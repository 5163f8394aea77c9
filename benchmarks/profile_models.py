"""Where a model's training step spends its time, and what speeds the network.

    python benchmarks/profile_models.py profile dpvfa 96,112,96            # shares of one step
    python benchmarks/profile_models.py variants cascade 96,112,96 --widths 16,32

``profile``: one training step of fastreg.bench.model_cases (forward, LNCC + Grad-L2 loss,
backward, Adam) under torch.profiler, self CPU time summed by category: convolutions
(forward and backward), instance norm, registration ops (fastreg's warp, compose, integrate,
attention/correlation and the trilinear resizes; with --peer the grid_sample, unfold, bmm and
softmax forms), loss (the ops of the loss's forward and fastreg's lncc backward), optimizer
(the ops inside Adam's step), other (activations, pooling, elementwise, copies, the rest of
the backward). ``variants``: training steps of fastreg's model eager float32 (baseline) and with
one change each, paired in rounds: channels_last(_3d) memory format, bf16 autocast of the
network (the fields and the registration ops stay float32), torch.compile of the model.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from fastreg import models
from fastreg.bench.model_cases import IMPLEMENTATIONS, MODELS, make_pair, training_step

CATEGORIES = [
    ("loss", ("lncc",)),
    ("convolutions", ("conv",)),
    ("instance norm", ("instance_norm", "batch_norm", "native_batch_norm")),
    ("registration ops", ("fastreg", "grid_sampler", "upsample_linear", "upsample_bilinear", "upsample_trilinear",
                          "unfold", "bmm", "softmax", "im2col")),
]


def category(name: str) -> str:
    lowered = name.lower()
    for label, keys in CATEGORIES:
        if any(k in lowered for k in keys):
            return label
    return "other"


def build(name: str, shape, widths, peer: bool = False):
    """The model; ``peer``: the peer version's network (MODELS[name].peer_kwargs)."""
    kwargs = dict(MODELS[name].peer_kwargs) if peer else {}
    if widths:
        kwargs.update(dict(widths=widths) if name == "cascade" else dict(channels=widths, attention=widths))
    return models.create(name, ndim=len(shape), **kwargs)


def shares(name: str, shape, widths, peer: bool) -> dict[str, float]:
    model = build(name, shape, widths, peer)
    kernels, similarity = IMPLEMENTATIONS["peer-ops" if peer else "fastreg"]
    model.kernels = kernels
    fixed, moving = make_pair((1, 1, *shape), "cpu", torch.float32)
    step = training_step(model, kernels, similarity, fixed, moving, MODELS[name].regularization)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    totals = defaultdict(float)
    others = defaultdict(float)
    for event in prof.events():
        label = _region(event) or category(event.name)
        totals[label] += event.self_cpu_time_total / 1e6
        if label == "other":
            others[event.name] += event.self_cpu_time_total / 1e6
    for key, seconds in sorted(others.items(), key=lambda kv: -kv[1])[:6]:
        print(f"    other: {key:50s} {seconds:7.2f} s")
    return dict(totals)


def _region(event) -> str | None:
    """"optimizer" or "loss" when the op ran inside Adam's step or the loss's forward."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return "optimizer"
        if parent.name == "loss":
            return "loss"
        parent = parent.cpu_parent
    return None


def variants(name: str, shape, widths, rounds: int) -> dict[str, list[float]]:
    fixed, moving = make_pair((1, 1, *shape), "cpu", torch.float32)
    kernels, similarity = IMPLEMENTATIONS["fastreg"]
    base = build(name, shape, widths)
    memory = torch.channels_last_3d if len(shape) == 3 else torch.channels_last

    def make(kind):
        model = build(name, shape, widths)
        model.load_state_dict(base.state_dict())
        if kind == "channels_last":
            model = model.to(memory_format=memory)
        if kind == "compile":
            model = torch.compile(model)
        step = training_step(model, kernels, similarity, fixed, moving, MODELS[name].regularization)
        if kind != "bf16 autocast":
            return step

        def autocast_step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                step()

        return autocast_step

    calls = {}
    for kind in ("eager float32", "channels_last", "bf16 autocast", "compile"):
        try:
            calls[kind] = make(kind)
            start = time.perf_counter()
            calls[kind]()
            print(f"{kind}: first step {time.perf_counter() - start:.1f} s", flush=True)
        except Exception as exc:  # a variant that cannot run is reported
            print(f"{kind}: fails: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            calls.pop(kind, None)
    times = defaultdict(list)
    for _ in range(rounds):
        for kind, call in calls.items():
            start = time.perf_counter()
            call()
            times[kind].append(time.perf_counter() - start)
    return times


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("profile", "variants"))
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("shape", type=lambda s: tuple(int(v) for v in s.split(",")))
    p.add_argument("--widths", type=lambda s: tuple(int(v) for v in s.split(",")), default=None)
    p.add_argument("--peer", action="store_true", help="profile the model on the peers' ops")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(f"{args.what} {args.model} {args.shape} widths={args.widths}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    if args.what == "profile":
        totals = shares(args.model, args.shape, args.widths, args.peer)
        whole = sum(totals.values())
        for label, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"  {label:18s} {seconds:8.2f} s  {seconds / whole:6.1%}")
        return
    times = variants(args.model, args.shape, args.widths, args.rounds)
    base = times["eager float32"]
    for kind, t in times.items():
        ratio = statistics.median(b / x for b, x in zip(base, t))
        print(f"  {kind:15s} median {statistics.median(t):8.2f} s  speedup vs eager (paired) {ratio:5.2f}x")


if __name__ == "__main__":
    main()
