"""vfa_attention and local_correlation at the five DP-VFA levels of a 160x192x224 input,
against the shifted-product and unfold forms, each level in its own process.

    python benchmarks/correlation_levels.py [--repeat 3] [--levels 0,1,2,3,4]

Levels (features of widths 16, 32, 32, 64, 64 at 1, 1/2, ..., 1/16 resolution: the inputs of
DP-VFA's attention and of DP-Conv-C's cost volume): level 0 is (1, 16, 160, 192, 224), 440 MB
per feature map. Radius 1 (27 offsets), float32, forward and forward+backward, through the
bench runner (paired rounds; ratio = peer time / fastreg time). The unfold form is run at
levels 3 and 4 only: its batched (1 x C) x (C x 27) products are recorded by the profiler
that measures peak memory as millions of events (4.9 M for one forward + backward at level
2, 10 GB resident when read back: what exhausted memory when these rows ran in one process),
and its neighbourhood copy (27 times the features) exceeds 2 GiB at levels 0 and 1. Each
level runs in a fresh process, so a big level's memory is given back before the next.
"""
import argparse
import json
import math
import subprocess
import sys

LEVELS = [(1, 16, 160, 192, 224), (1, 32, 80, 96, 112), (1, 32, 40, 48, 56), (1, 64, 20, 24, 28), (1, 64, 10, 12, 14)]
UNFOLD_VOXELS = 20_000  # the unfold form runs up to this many voxels (levels 3 and 4)


def peers_of(dims: tuple[int, ...]) -> tuple[str, ...]:
    voxels = math.prod(dims[2:])
    return ("torch-shifted", "vfa-unfold") if voxels <= UNFOLD_VOXELS else ("torch-shifted",)


def run_level(level: int, repeat: int) -> list[dict]:
    """The rows of one level, measured in this process."""
    import torch

    from fastreg.bench import run
    from fastreg.bench.cases import correlation

    torch.set_num_threads(2)
    dims = LEVELS[level]
    return run(correlation.shape_cases(dims, peers_of(dims)), repeat=repeat, warmup=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--levels", default="0,1,2,3,4", help="comma-separated level indices (0 = full resolution)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: one level, rows as JSON
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_level(args.one, args.repeat)))
        return 0
    levels = [int(k) for k in args.levels.split(",")]
    if any(k not in range(len(LEVELS)) for k in levels):
        parser.error(f"--levels: expected indices in 0..{len(LEVELS) - 1}, got {args.levels!r}")
    rows = []
    for level in levels:
        child = subprocess.run([sys.executable, __file__, "--one", str(level), "--repeat", str(args.repeat)],
                               capture_output=True, text=True)
        if child.returncode != 0:
            sys.stderr.write(child.stderr)
            print(f"level {level} {LEVELS[level]}: failed (exit {child.returncode})", file=sys.stderr)
            return 1
        rows += json.loads(child.stdout.strip().splitlines()[-1])
    from fastreg.bench import format_table

    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
