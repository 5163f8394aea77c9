"""``fastreg-bench``: time the fastreg ops against their peers and print a table (or JSON).

Example::

    fastreg-bench                                   # every op, default sizes, input-device backend
    fastreg-bench --ops warp --sizes large --device cuda --backends cuda,triton --json
    fastreg-bench --quiet --plot ratios.png         # table only, and a bar chart of the ratios
    fastreg-bench --models dpvfa,cascade --sizes large   # training steps and inference of models
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from fastreg import _backend
from fastreg.bench import format_table, load_cases, run
from fastreg.bench.cases import REGISTRY, SIZES
from fastreg.bench.model_cases import MODELS, model_cases, run_models
from fastreg.bench.plot import plot_ratios
from fastreg.bench.runner import check_backends

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastreg-bench",
        description="Time the fastreg ops against their peers (median times, GB/s, peak memory, and ratios paired by round).",
    )
    p.add_argument("--ops", type=_choices(REGISTRY, "op family"), default=list(REGISTRY),
                   help=f"comma-separated op families (default: all: {','.join(REGISTRY)})")
    p.add_argument("--models", type=_choices(MODELS, "model"), nargs="?", const=list(MODELS), default=None,
                   help=f"time models instead of ops: comma-separated names (alone: all: {','.join(MODELS)}); "
                        "'fwd' is inference, 'fwd+bwd' a training step (loss, backward, Adam) against the same "
                        "network on the peers' ops; the first --dtype is used")
    p.add_argument("--sizes", choices=SIZES, default="default", help="input sizes (default: default)")
    p.add_argument("--dtype", type=_choices(DTYPES, "dtype"), default=["float32"],
                   help=f"comma-separated dtypes among {','.join(DTYPES)} (default: float32)")
    p.add_argument("--backends", type=_choices(("auto", *_backend.BACKENDS), "backend"), default=["auto"],
                   help=f"comma-separated fastreg backends among auto,{','.join(_backend.BACKENDS)} (default: "
                        "auto, the one the input device picks); the first is the baseline of the ratios")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="device of the inputs (default: cuda when available, else cpu)")
    p.add_argument("--repeat", type=_count(1), default=None,
                   help="timed calls per measurement (default: 20 on cuda, 3 on cpu)")
    p.add_argument("--warmup", type=_count(0), default=None,
                   help="untimed calls first, at least 1 (default: 3 on cuda, 1 on cpu)")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress lines (progress goes to stderr, only when it is a terminal)")
    p.add_argument("--plot", metavar="PNG", default=None, help="also draw the ratios per op and size into this PNG (matplotlib)")
    p.add_argument("--no-peers", action="store_true", help="time fastreg only")
    p.add_argument("--no-backward", action="store_true", help="time the forward pass only")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device: cuda requested but no CUDA device is available")
    backends = [None if b == "auto" else b for b in args.backends]
    try:
        check_backends(backends, device)
    except ValueError as exc:
        p.error(f"--backends: {exc}")
    gpu = device.type == "cuda"
    log = _progress(args.quiet)
    if args.models is not None:
        rows = run_models(model_cases(args.models, args.sizes), device=device, dtype=DTYPES[args.dtype[0]],
                          repeat=args.repeat or (20 if gpu else 3), warmup=args.warmup if args.warmup is not None else 1,
                          peers=not args.no_peers, log=log)
    else:
        rows = run(
            load_cases(args.ops, args.sizes, quick=args.sizes in ("tiny", "quick")),
            device=device,
            dtypes=[DTYPES[d] for d in args.dtype],
            backends=backends,
            repeat=args.repeat or (20 if gpu else 3),
            warmup=args.warmup if args.warmup is not None else (3 if gpu else 1),
            peers=not args.no_peers,
            backward=not args.no_backward,
            log=log,
        )
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    if args.plot:
        try:
            plot_ratios(rows, args.plot)
        except (ValueError, OSError) as exc:
            print(f"fastreg-bench: --plot: {exc}", file=sys.stderr)
            return 2
    return 1 if any(r["error"] and r["impl"] == "fastreg" for r in rows) else 0


def _progress(quiet: bool):
    """Progress lines on stderr, only for a person watching a terminal."""
    if quiet or not sys.stderr.isatty():
        return None
    return lambda msg: print(f"... {msg}", file=sys.stderr, flush=True)


def _choices(options, what: str):
    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        bad = [n for n in names if n not in options]
        if not names or bad:
            expected = ", ".join(options)
            raise argparse.ArgumentTypeError(f"unknown {what} {bad or text!r}; expected a comma list of {expected}")
        return names

    return parse


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


if __name__ == "__main__":
    sys.exit(main())
