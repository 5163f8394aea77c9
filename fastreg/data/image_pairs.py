"""ImagePairs: real image files (with optional label maps) as registration pairs, for fine-tuning.

Two ways to list the pairs:
  CSV      a header row with the columns fixed,moving and optionally fixed_labels,moving_labels
           (both or neither); paths relative to the CSV's folder.
  folder   either files named fixed_<key>.<ext> and moving_<key>.<ext> (pairs by equal key;
           label maps fixed_labels_<key>.<ext>, moving_labels_<key>.<ext> where present),
           or, with no fixed_/moving_ files, every image of the folder registered to every
           other (all ordered pairs, in name order), label maps in a ``labels`` subfolder under
           the same file name where present.
Extensions: those of `fastreg.io` (NIfTI, MGH, PNG/JPEG/TIFF); every image holds one channel.

Each item is a dict with the keys of the synthetic streams: ``fixed`` and ``moving``
(1, *S) float32 on the fixed image's grid (the moving image resampled through the affines,
`fastreg.io.resample`), intensities mapped from the [low, high] percentiles to [0, 1] and
clipped; with label maps also ``fixed_labels`` and ``moving_labels`` (1, *S) int64 (the
moving map resampled with nearest neighbours). A DataLoader batches them into (B, 1, *S)
when the fixed images share one shape.
"""
from __future__ import annotations

import csv
import os

import numpy as np
import torch

from fastreg import io
from fastreg.io.image import EXTENSIONS

COLUMNS = ("fixed", "moving", "fixed_labels", "moving_labels")


class ImagePairs(torch.utils.data.Dataset):
    """Map-style dataset of registration pairs read from image files (layouts: module docstring).

    Args:
        source: a CSV file or a folder.
        percentiles: (low, high) intensity percentiles mapped to 0 and 1; (0, 100) is plain min-max.
    Attributes:
        pairs: one tuple (fixed, moving, fixed_labels | None, moving_labels | None) of paths per item.
    """

    def __init__(self, source, percentiles: tuple[float, float] = (0.5, 99.5)):
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"source: expected a CSV file or a folder (path), got {type(source).__name__}")
        source = os.fspath(source)
        low, high = (float(p) for p in percentiles)
        if not 0 <= low < high <= 100:
            raise ValueError(f"percentiles: expected 0 <= low < high <= 100, got {percentiles!r}")
        self.percentiles = (low, high)
        if os.path.isdir(source):
            self.pairs = _folder_pairs(source)
        elif os.path.isfile(source) and source.lower().endswith(".csv"):
            self.pairs = _csv_pairs(source)
        else:
            raise ValueError(f"source: expected a CSV file or a folder, got {source!r} (no such folder or .csv file)")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        fixed_path, moving_path, fixed_labels, moving_labels = self.pairs[index]
        fixed = io.load(fixed_path, channels=1)
        moving = io.load(moving_path, ndim=fixed.ndim, channels=1)
        item = {
            "fixed": self._normalized(fixed).data,
            "moving": io.resample(self._normalized(moving), fixed).data,
        }
        if fixed_labels is not None:
            item["fixed_labels"] = _labels(fixed_labels, fixed).data.round().long()
            moved = io.resample(_labels(moving_labels, moving), fixed, mode="nearest")
            item["moving_labels"] = moved.data.round().long()
        return item

    def _normalized(self, image: io.Image) -> io.Image:
        values = image.data.numpy().ravel()
        low, high = np.percentile(values, self.percentiles)
        scale = 1.0 / (high - low) if high > low else 0.0
        data = ((image.data - low) * scale).clamp_(0, 1)
        return io.Image(data, image.affine, image.header, image.dtype, image.path)


def _labels(path: str, image: io.Image) -> io.Image:
    labels = io.load(path, ndim=image.ndim, channels=1)
    if labels.shape != image.shape:
        raise ValueError(f"{path}: expected the shape {image.shape} of its image {image.path}, got {labels.shape}")
    return labels


def _check_files(paths, where: str) -> None:
    for path in paths:
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{where}: file not found: {path}")


def _csv_pairs(path: str) -> list[tuple]:
    folder = os.path.dirname(os.path.abspath(path))
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
        columns = tuple(rows[0].keys()) if rows else ()
    if not rows or not {"fixed", "moving"} <= set(columns):
        raise ValueError(
            f"{path}: expected a header row with the columns fixed,moving and at least one pair, got {columns}"
        )
    labelled = "fixed_labels" in columns or "moving_labels" in columns
    if labelled and not {"fixed_labels", "moving_labels"} <= set(columns):
        raise ValueError(f"{path}: expected both columns fixed_labels and moving_labels or neither, got {columns}")
    pairs = []
    for line, row in enumerate(rows, start=2):
        cells = [(row.get(c) or "").strip() for c in COLUMNS[: 4 if labelled else 2]]
        if not all(cells):
            raise ValueError(f"{path}, line {line}: expected a path in every column {COLUMNS[:len(cells)]}, got {row}")
        paths = tuple(os.path.join(folder, c) for c in cells) + (None,) * (4 - len(cells))
        _check_files(paths, f"{path}, line {line}")
        pairs.append(paths)
    return pairs


def _stem(name: str) -> str | None:
    """The file name without its image extension, or None for other files."""
    lower = name.lower()
    for ext in EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return None


def _folder_pairs(folder: str) -> list[tuple]:
    images = {}
    for name in sorted(os.listdir(folder)):
        stem = _stem(name)
        if stem is not None and os.path.isfile(os.path.join(folder, name)):
            images[stem] = os.path.join(folder, name)
    named = {k: v for k, v in images.items() if k.startswith(("fixed_", "moving_"))}
    if named:
        return _named_pairs(folder, named)
    if len(images) < 2:
        raise ValueError(
            f"source: the folder {folder} has no readable pairs: expected fixed_<key>/moving_<key> image files"
            f" or at least two images (extensions {EXTENSIONS}), found {len(images)}"
        )
    label_folder = os.path.join(folder, "labels")
    labels = {s: os.path.join(label_folder, os.path.basename(p)) for s, p in images.items()}
    labelled = [os.path.isfile(p) for p in labels.values()]
    if any(labelled) and not all(labelled):
        missing = [p for p in labels.values() if not os.path.isfile(p)]
        raise ValueError(f"source: {label_folder} has label maps for some images only; missing {missing}")
    stems = list(images)
    return [
        (images[f], images[m], labels[f] if all(labelled) else None, labels[m] if all(labelled) else None)
        for f in stems for m in stems if f != m
    ]


def _named_pairs(folder: str, named: dict[str, str]) -> list[tuple]:
    def role(prefix: str) -> dict[str, str]:
        return {k[len(prefix):]: v for k, v in named.items() if k.startswith(prefix)}

    fixed_labels, moving_labels = role("fixed_labels_"), role("moving_labels_")
    fixed = {k: v for k, v in role("fixed_").items() if not k.startswith("labels_")}
    moving = {k: v for k, v in role("moving_").items() if not k.startswith("labels_")}
    if set(fixed) != set(moving):
        unmatched = sorted(set(fixed) ^ set(moving))
        raise ValueError(
            f"source: in {folder}, fixed_<key> and moving_<key> files do not pair up; unmatched keys {unmatched}"
        )
    labelled = [k in fixed_labels and k in moving_labels for k in fixed]
    if any(labelled) and not all(labelled):
        missing = [k for k, ok in zip(fixed, labelled) if not ok]
        raise ValueError(
            f"source: in {folder}, label maps fixed_labels_<key> and moving_labels_<key> are missing for keys {missing}"
        )
    return [
        (fixed[k], moving[k], fixed_labels.get(k), moving_labels.get(k))
        for k in sorted(fixed)
    ]
