"""Training steps with glibc's default allocator settings against the command-line tools'
(`fastreg._allocator.keep_freed_memory`): wall and CPU seconds per step, minor page faults.

The setting is process-wide and cannot be undone exactly (glibc stops adapting its mmap
threshold once it is set), so each measurement is a fresh process, FASTREG_MALLOC=system
and FASTREG_MALLOC=keep alternating round by round; the ratio is taken per round.

Steps (what `fastreg train` runs for each recipe, on random images):
  unireg   UniReg 2-D, batch 8 at 224^2, float32, loss_for("unireg")
  dpvfa    DP-VFA 3-D at 64^3, bf16 autocast, loss_for("dpvfa")
  cascade  cascaded U-Net 3-D at 64^3, bf16 autocast, loss_for("dpvfa") (an image loss: the
           label loss allocates the same tensors plus the one-hot maps)

    python benchmarks/allocator.py [--models unireg,dpvfa,cascade] [--rounds 3] [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def child(model: str, steps: int) -> dict:
    import torch

    import fastreg
    import fastreg.models
    from fastreg._allocator import keep_freed_memory

    took = keep_freed_memory()
    torch.manual_seed(0)
    if model == "unireg":
        net, shape, batch, bf16 = fastreg.models.create("unireg"), (224, 224), 8, False
    else:
        net, shape, batch, bf16 = fastreg.models.create(model, ndim=3), (64, 64, 64), 1, True
    loss_fn = fastreg.nn.loss_for("unireg" if model == "unireg" else "dpvfa")
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    fixed, moving = torch.rand(batch, 1, *shape), torch.rand(batch, 1, *shape)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            disp = net(fixed, moving)
        disp = disp.float()
        loss_fn(fixed, fastreg.warp(moving, disp), disp).backward()
        optimizer.step()

    step()  # the first step grows the heap
    usage = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter()
    for _ in range(steps):
        step()
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"took": took, "wall": wall / steps, "user": (after.ru_utime - usage.ru_utime) / steps,
            "sys": (after.ru_stime - usage.ru_stime) / steps, "faults": (after.ru_minflt - usage.ru_minflt) / steps}


def measure(model: str, choice: str, steps: int) -> dict:
    env = {**os.environ, "FASTREG_MALLOC": choice}
    out = subprocess.run([sys.executable, __file__, "--child", model, "--steps", str(steps)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="unireg,dpvfa,cascade")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return 0
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds of {args.steps} steps")
    print("model    allocator  wall s  user s  sys s  faults/step  wall ratio  cpu ratio")
    for model in args.models.split(","):
        rows = {"system": [], "keep": []}
        for _ in range(args.rounds):
            for choice in rows:
                rows[choice].append(measure(model, choice, args.steps))
        for choice, runs in rows.items():
            med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "user", "sys", "faults")}
            wall = statistics.median(s["wall"] / r["wall"] for s, r in zip(rows["system"], runs))
            cpu = statistics.median((s["user"] + s["sys"]) / (r["user"] + r["sys"]) for s, r in zip(rows["system"], runs))
            print(f"{model:8s} {choice:9s} {med['wall']:7.3f} {med['user']:7.3f} {med['sys']:6.3f} "
                  f"{med['faults']:12.0f} {wall:10.2f}x {cpu:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
