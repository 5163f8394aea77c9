"""``fastreg register --pairs CSV``: many pairs with one model, I/O overlapped with compute.

The CSV has a header naming the columns fixed, moving and optionally fixed_labels,
moving_labels (paths relative to the CSV's folder). Pair k (its row, from 0) goes to
OUT/pair-k/ and one row per pair is appended to OUT/results.csv (RESULT_COLUMNS).

Streaming: while pair k is registered, a reader thread loads pair k+1 and a writer thread
saves pair k-1 (each pair's folder through a staging folder, renamed into place once
complete, then its results row), so file I/O hides behind the network on every device.

Resuming: pairs listed in results.csv are skipped; a pair folder without its row (a run
interrupted while writing it) is redone.

Several processes: under ``torchrun --nproc-per-node N -m fastreg.cli.main register --pairs
...`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment; no process group is needed)
process r takes the pairs k with k % N == r, on cuda:LOCAL_RANK when CUDA is used; every
process appends to the same results.csv under an exclusive file lock (fcntl), so rows are
never interleaved. Each process prints its own pairs and its throughput (pairs/s).
"""
from __future__ import annotations

import csv
import fcntl
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from fastreg import io
from fastreg.cli.output import staging
from fastreg.register import device_for, resolve_model

RESULT_COLUMNS = (
    "pair", "fixed", "moving", "cc_before", "cc_after", "folding_percent", "sdlogj", "dice_mean", "seconds",
)
LABEL_COLUMNS = ("fixed_labels", "moving_labels")


def register_pairs(args, iterations, register_one) -> int:
    """Register every row of ``args.pairs`` into ``args.out`` (module docstring).

    ``register_one(args, fixed, moving, fixed_labels, moving_labels, model, iterations)`` runs
    one registration on loaded images (fastreg.io.Image or None for absent labels).
    """
    rows = read_pairs(args.pairs)
    rank, world, local = shard()
    out = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    device = args.device
    if world > 1 and device in (None, "cuda") and torch.cuda.is_available():
        device = f"cuda:{local}"
    args.device = device
    first = io.load(rows[0]["fixed"])
    model, _ = resolve_model(args.model, first.ndim, device_for(device))
    results = out / "results.csv"
    done = finished(results)
    todo = [k for k in range(len(rows)) if k % world == rank and pair_name(k) not in done]
    start = time.perf_counter()
    with ThreadPoolExecutor(1, "fastreg-read") as reader, ThreadPoolExecutor(1, "fastreg-write") as writer:
        pending: Future | None = None
        loading = reader.submit(load_pair, rows[todo[0]]) if todo else None
        for i, k in enumerate(todo):
            images = loading.result()
            if i + 1 < len(todo):
                loading = reader.submit(load_pair, rows[todo[i + 1]])
            reg = register_one(args, *images, model, iterations)
            if pending is not None:
                pending.result()  # one save in flight at a time; its errors surface here
            pending = writer.submit(save_pair, reg, rows[k], out / pair_name(k), results, args)
        if pending is not None:
            pending.result()
    seconds = time.perf_counter() - start
    share = f" (process {rank} of {world})" if world > 1 else ""
    rate = f", {len(todo) / seconds:.2f} pairs/s" if todo else ""
    print(f"{len(rows)} pairs ({len(done)} done before){share}: {len(todo)} registered in {seconds:.1f} s{rate}; "
          f"results in {results}")
    return 0


def read_pairs(path: Path) -> list[dict]:
    """The rows of the pairs CSV as dicts of absolute paths (None for an empty label cell)."""
    if not path.is_file():
        raise ValueError(f"--pairs: {path}: file not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        if not {"fixed", "moving"} <= columns:
            raise ValueError(f"--pairs: {path}: expected a header with columns fixed, moving; got {sorted(columns)}")
        rows = [{k: (str(path.parent / v) if v else None) for k, v in row.items() if k in
                 ("fixed", "moving", *LABEL_COLUMNS)} for row in reader]
    if not rows:
        raise ValueError(f"--pairs: {path}: no pairs")
    for i, row in enumerate(rows):
        if not row["fixed"] or not row["moving"]:
            raise ValueError(f"--pairs: {path}: row {i + 1} lacks a fixed or moving path")
    return rows


def shard() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    try:
        rank, world, local = (int(os.environ.get(k, d)) for k, d in
                              (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE, LOCAL_RANK: expected integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK, WORLD_SIZE: expected 0 <= RANK < WORLD_SIZE, got {rank} and {world}")
    return rank, world, local


def pair_name(k: int) -> str:
    return f"pair-{k:05d}"


def finished(results: Path) -> set[str]:
    """The pairs that have a row in ``results`` (read under the shared lock)."""
    if not results.is_file():
        return set()
    with open(results, newline="") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        try:
            return {row["pair"] for row in csv.DictReader(f)}
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_pair(row: dict) -> tuple:
    """(fixed, moving, fixed_labels | None, moving_labels | None) as fastreg.io.Images."""
    return tuple(io.load(row[k]) if row.get(k) else None for k in ("fixed", "moving", *LABEL_COLUMNS))


def save_pair(reg, row: dict, target: Path, results: Path, args) -> None:
    """Write one registration into ``target`` (staged: complete or absent), then its row."""
    with staging(target) as stage:  # replaces a folder left by an interrupted run
        reg.save(stage, format=args.format, preview=not args.no_preview)
    s = reg.stats
    seconds = sum(reg.timings.values())
    append_row(results, {"pair": target.name, "fixed": row["fixed"], "moving": row["moving"],
                         "cc_before": s["cc_before"], "cc_after": s["cc_after"],
                         "folding_percent": s["folding_percent"], "sdlogj": s["sdlogj"],
                         "dice_mean": s.get("dice_mean", ""), "seconds": seconds})
    print(f"{target.name}: CC {s['cc_before']:.4f} -> {s['cc_after']:.4f}, {seconds:.2f} s", flush=True)


def append_row(results: Path, row: dict) -> None:
    """Append ``row`` to the CSV under an exclusive lock (header first when the file is empty)."""
    with open(results, "a", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            writer = csv.DictWriter(f, RESULT_COLUMNS)
            if f.seek(0, os.SEEK_END) == 0:
                writer.writeheader()
            writer.writerow(row)
            f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
