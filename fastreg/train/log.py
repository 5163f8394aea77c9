"""Metrics of a run: CSV files in the run's folder and TensorBoard when it is installed.

  train.csv        step, loss (and the loss's other terms), lr, pairs_per_s, data_wait
                   (share of step time spent waiting for the next batch)
  validation.csv   step and the metrics of fastreg.train.validate
  tensorboard/     the same scalars (``train/...``, ``validation/...``)
A resumed run first drops the rows after its checkpoint's step, so each file reads as one run.
"""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path


class MetricsLog:
    def __init__(self, out: Path, resume_step: int, tensorboard: bool):
        self.out = Path(out)
        self.files: dict[str, tuple] = {}
        for name in ("train", "validation"):
            _truncate(self.out / f"{name}.csv", resume_step)
        self.writer = None
        if tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=resume_step + 1)

    def write(self, name: str, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **values}
        if name not in self.files:
            path = self.out / f"{name}.csv"
            header = _header(path)
            f = open(path, "a", newline="")
            writer = csv.DictWriter(f, fieldnames=header or list(row), extrasaction="ignore", restval="")
            if header is None:
                writer.writeheader()
            self.files[name] = (f, writer)
        f, writer = self.files[name]
        writer.writerow(row)
        f.flush()
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{name}/{key}", value, step)

    def close(self) -> None:
        for f, _ in self.files.values():
            f.close()
        self.files.clear()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _header(path: Path) -> list[str] | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, newline="") as f:
        return next(csv.reader(f), None)


def _truncate(path: Path, step: int) -> None:
    """Keep the header and the rows of steps <= ``step``."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(kept)
