"""``fastreg``: the package's command line (thin: parse, call, print).

    fastreg info                 # version, torch, compiled extension, available backends
    fastreg bench [ARGS...]      # the same as fastreg-bench ARGS...
    fastreg train RECIPE [...]   # train a model by a recipe (see fastreg train --help)
    fastreg register F M -o OUT  # register two images (see fastreg register --help)
    fastreg apply FIELD IMG -o O # warp an image by a saved field (see fastreg apply --help)
"""
from __future__ import annotations

import argparse
import sys

import torch

import fastreg
from fastreg import _extension
from fastreg.cli import bench, register, train


def info() -> str:
    """A few lines describing this installation."""
    compiled = "yes (with CUDA)" if _extension.WITH_CUDA else "yes" if _extension.AVAILABLE else f"no ({_extension.LOAD_ERROR})"
    return "\n".join(
        [
            f"fastreg {fastreg.__version__}",
            f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}, {torch.get_num_threads()} CPU threads)",
            f"compiled kernels: {compiled}",
            f"available backends: {', '.join(fastreg.available_backends())}",
            f"forced backend: {fastreg.get_backend() or 'none (the input device picks)'}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return bench.main(argv[1:])
    if argv[:1] == ["train"]:
        return train.main(argv[1:])
    if argv[:1] == ["register"]:
        return register.main(argv[1:])
    if argv[:1] == ["apply"]:
        return register.apply_main(argv[1:])
    p = argparse.ArgumentParser(prog="fastreg", description="fastreg: fast kernels for deformable registration.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, compiled kernels and available backends")
    sub.add_parser("bench", help="time the ops against their peers (see fastreg-bench --help)")
    sub.add_parser("train", help="train a model by a recipe (see fastreg train --help)")
    sub.add_parser("register", help="register two images (see fastreg register --help)")
    sub.add_parser("apply", help="warp an image by a saved field (see fastreg apply --help)")
    args = p.parse_args(argv)
    if args.command == "info":
        print(info())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
