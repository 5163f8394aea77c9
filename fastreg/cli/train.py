"""``fastreg train``: train a model by a recipe (thin: parse, call, print).

    fastreg train unireg-2d-labelm --out runs/unireg --steps 20000
    fastreg train my.toml --resume --set train.lr=3e-4 --set data.args.size=128
    torchrun --nproc-per-node 4 -m fastreg.cli.train dpvfa-3d-synth --out runs/dpvfa

Exit status: 0 done, 130 stopped by Ctrl-C (a checkpoint was written; --resume continues),
2 bad arguments or input (nothing was trained or overwritten), 1 the run diverged (non-finite
loss or gradient step after step; the last checkpoint holds finite weights).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fastreg import recipes
from fastreg._allocator import keep_freed_memory
from fastreg.train import distributed


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastreg train",
        description="Train a registration model by a recipe (a shipped name or a .toml file). "
                    f"Shipped recipes: {', '.join(recipes.available())}.",
    )
    p.add_argument("recipe", help="a shipped recipe name or a path to a .toml recipe")
    p.add_argument("--out", type=Path, default=None, help="the run's folder (default: runs/RECIPE)")
    p.add_argument("--steps", type=int, default=None, help="train up to this step (train.steps)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="train.device")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None, help="autocast precision (train.amp)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (train.compile)")
    p.add_argument("--data", default=None, help="a CSV file or folder of image pairs (data.path)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe key, e.g. train.lr=3e-4 or model.args.ndim=2 (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    flags = [f"train.steps={args.steps}"] if args.steps is not None else []
    flags += [f'train.device="{args.device}"'] if args.device else []
    flags += [f'train.amp="{args.amp}"'] if args.amp else []
    flags += ["train.compile=true"] if args.compile else []
    flags += [f"data.path={_quote(args.data)}"] if args.data is not None else []
    try:
        keep_freed_memory()
        recipe = recipes.override(recipes.load(args.recipe), flags + args.assignments)
        name = Path(args.recipe).stem
        result = recipes.run(recipe, args.out or Path("runs") / name, resume=args.resume)
    except (ValueError, TypeError, FloatingPointError) as exc:  # FloatingPointError: the run diverged
        print(f"fastreg train: error: {exc}", file=sys.stderr)
        distributed.teardown(wait=False)
        code = 1 if isinstance(exc, FloatingPointError) else 2
    else:
        distributed.teardown(wait=True)
        if os.environ.get("RANK", "0") == "0":
            print(_summary(result))
        code = 130 if result.interrupted else 0
    if distributed.launched():
        distributed.exit_now(code)
    return code


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _summary(result) -> str:
    lines = [f"{'interrupted at' if result.interrupted else 'trained to'} step {result.step}"]
    if result.seconds > 0:
        lines.append(f"{result.pairs / result.seconds:.3g} pairs/s, {result.data_seconds / result.seconds:.1%} of step time waiting for data")
    if result.checkpoint is not None:
        lines.append(f"checkpoint: {result.checkpoint}")
    if result.best is not None:
        lines.append(f"best validation {result.best['metric']}: {result.best['value']:.6g} at step {result.best['step']}")
    if result.interrupted:
        lines.append("continue with --resume")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
