"""Batches for the training loop: the data protocol, each rank's share, resuming mid-stream.

A batch is a dict of batched tensors (the keys of fastreg.data's pair streams):
  fixed, moving        (B, 1, *S) floating images in [0, 1]                      (required)
  moving_mono          (B, 1, *S) the mono-modal twin of a multimodal moving image: the loss
                       and the CC metric compare ``fixed`` with it, warped
  disp                 (B, ndim, *S) the true field, in voxels (not used by the loop)
  fixed_labels, moving_labels  (B, 1, *S) int64 label maps (Dice, label losses)

Kinds of data, told apart by what they have:

Indexed streams (exact resume and exact multi-process equivalence) have
  ``batch_size``               items in one batch of one process;
  ``take(start, count)``       the batch of the ``count`` items ``start, ..., start+count-1``
                               of the stream (each tensor's first dimension is ``count``),
where item ``i`` is a pure function of the stream's seed and ``i`` (e.g. drawn with a
``torch.Generator`` seeded from (seed, i)), the same whichever batch it falls in. The loop
asks rank ``r`` of ``W`` for micro-batch ``m`` (``m = step * grad_accum + a``) as
``take((m * W + r) * B, B)``: resuming at step ``k`` starts at ``m = k * grad_accum`` with no
replay, and the ``W`` ranks together see exactly the items of one process with batch
``W * B``.

Drawn streams (exact resume, no replay; each rank its own batches) have
  ``seed``                     an int, and optionally ``device`` (where to make the generator);
  ``draw(generator)``          one batch drawn from the given ``torch.Generator``;
micro-batch ``m`` of rank ``r`` of ``W`` is ``draw`` from a generator seeded by
``batch_seed(seed, m * W + r)``: a function of the position in the stream only, so resuming
needs no replay and the number of workers does not matter; ranks draw distinct batches, but
``W`` ranks are not one process with a ``W`` times larger batch (that needs ``take``).

For both, DataLoader workers (``workers > 0``) make every ``workers``-th micro-batch in turn,
so the stream does not depend on the number of workers either. Batches may be made on any
device (generators may run on the GPU; then keep ``workers = 0``).

Map-style datasets of single pairs (``len`` and ``dataset[i]`` -> a dict of (1, *S) tensors,
e.g. fastreg.data.ImagePairs) become an indexed stream through ``Shuffled``: epoch after epoch
of seeded permutations.

Any other iterable of batch dicts works too, with weaker guarantees: each rank keeps every
``W``-th batch of one pass over ``iter(data)`` (micro-batch ``m`` of rank ``r`` is batch
``m * W + r``), and resuming at step ``k`` re-draws and drops the batches before it, which is
exact only when ``iter(data)`` starts the same stream again each time.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

IMAGE_KEYS = ("fixed", "moving", "moving_mono")
LABEL_KEYS = ("fixed_labels", "moving_labels")


def is_indexed(data) -> bool:
    """Whether ``data`` follows the indexed protocol (``batch_size`` and ``take``)."""
    return callable(getattr(data, "take", None)) and isinstance(getattr(data, "batch_size", None), int)


def is_drawn(data) -> bool:
    """Whether ``data`` follows the drawn protocol (``seed`` and ``draw``)."""
    seed = getattr(data, "seed", None)
    return callable(getattr(data, "draw", None)) and isinstance(seed, int) and not isinstance(seed, bool)


def batch_seed(seed: int, index: int) -> int:
    """A 63-bit seed for batch ``index`` of the stream of ``seed`` (numpy's SeedSequence hash:
    neighbouring indices give independent generators)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def micro_batch(data, index: int, rank: int, world_size: int) -> dict:
    """Micro-batch ``index`` of ``rank`` from an indexed or drawn stream."""
    if is_indexed(data):
        size = data.batch_size
        return data.take((index * world_size + rank) * size, size)
    generator = torch.Generator(getattr(data, "device", None) or "cpu")
    return data.draw(generator.manual_seed(batch_seed(data.seed, index * world_size + rank)))


class Shuffled:
    """An indexed stream over a map-style dataset of single pairs: item ``i`` is
    ``dataset[p_e[i % n]]`` with ``n = len(dataset)``, epoch ``e = i // n`` and ``p_e`` a random
    permutation of range(n) seeded by ``batch_seed(seed, e)``; items (1, *S) are stacked into
    batches (B, 1, *S), so every item of a batch must have one shape (batch_size 1 takes pairs
    of any shapes)."""

    def __init__(self, dataset, batch_size: int, seed: int = 0):
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"data: expected a map-style dataset (len and [i]), got {type(dataset).__name__}")
        if len(dataset) == 0:
            raise ValueError(f"data: the dataset holds no pairs ({dataset!r})")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self._epoch = (-1, None)

    def order(self, epoch: int) -> list[int]:
        if self._epoch[0] != epoch:
            g = torch.Generator().manual_seed(batch_seed(self.seed, epoch))
            self._epoch = (epoch, torch.randperm(len(self.dataset), generator=g).tolist())
        return self._epoch[1]

    def take(self, start: int, count: int) -> dict:
        n = len(self.dataset)
        picks = [self.order(i // n)[i % n] for i in range(start, start + count)]
        items = [self.dataset[j] for j in picks]
        batch = {}
        for key in items[0]:
            shapes = {tuple(it[key].shape) for it in items}
            if len(shapes) > 1:
                raise ValueError(
                    f"data: the pairs {picks} of one batch have '{key}' of different shapes {sorted(shapes)}; "
                    "a batch needs one shape (batch_size = 1 takes pairs of any shapes)"
                )
            batch[key] = torch.stack([it[key] for it in items])
        return batch


class _Micro(IterableDataset):
    """Micro-batches ``first, first + 1, ...`` of one rank of an indexed or drawn stream;
    DataLoader worker ``w`` of ``n`` makes those with ``(index - first) % n == w``."""

    def __init__(self, data, first: int, rank: int, world_size: int):
        self.data, self.first, self.rank, self.world_size = data, first, rank, world_size

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for m in itertools.count(self.first + worker, workers):
            yield micro_batch(self.data, m, self.rank, self.world_size)


def micro_batches(data, *, first: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0) -> Iterator[dict]:
    """This rank's micro-batches ``first, first + 1, ...`` of ``data`` (see the module docstring)."""
    if is_indexed(data) or is_drawn(data):
        source = _Micro(data, first, rank, world_size)
        if workers == 0:
            return iter(source)
        # Its own generator: creating the loader draws worker seeds, never from torch's global one.
        loader = DataLoader(source, batch_size=None, num_workers=workers, generator=torch.Generator().manual_seed(0))
        return iter(loader)
    if not isinstance(data, Iterable):
        raise TypeError(f"data: expected an iterable of batch dicts or an indexed stream (batch_size, take), got {type(data).__name__}")
    return itertools.islice(iter(data), first * world_size + rank, None, world_size)


def first_batches(data, count: int) -> list[dict]:
    """The first ``count`` batches of ``data`` (a fixed validation set, drawn once)."""
    batches = list(itertools.islice(micro_batches(data), count))
    if len(batches) < count:
        raise ValueError(f"validation: expected {count} batches, the stream yielded {len(batches)}")
    for batch in batches:
        check_batch(batch, "validation")
    return batches


def check_batch(batch, name: str = "data") -> dict:
    """A batch holds floating ``fixed`` and ``moving`` (B, 1, *S) of one shape, optional
    ``moving_mono`` of that shape and integer label maps (B, 1, *S)."""
    if not isinstance(batch, dict):
        raise TypeError(f"{name}: expected batches as dicts of tensors, got {type(batch).__name__}")
    missing = [k for k in ("fixed", "moving") if k not in batch]
    if missing:
        raise ValueError(f"{name}: every batch needs 'fixed' and 'moving', missing {missing} (keys {sorted(batch)})")
    fixed = batch["fixed"]
    for key in IMAGE_KEYS + LABEL_KEYS:
        if key not in batch:
            continue
        x = batch[key]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: '{key}' expected a torch.Tensor, got {type(x).__name__}")
        if key in IMAGE_KEYS and not x.is_floating_point():
            raise TypeError(f"{name}: '{key}' expected a floating-point image in [0, 1], got {x.dtype}")
        if key in LABEL_KEYS and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
            raise TypeError(f"{name}: '{key}' expected an integer label map, got {x.dtype}")
        if x.dim() not in (4, 5) or x.shape[1] != 1:
            raise ValueError(f"{name}: '{key}' expected (B, 1, H, W) or (B, 1, D, H, W), got shape {tuple(x.shape)}")
        if x.shape != fixed.shape:
            raise ValueError(f"{name}: '{key}' has shape {tuple(x.shape)}, 'fixed' has {tuple(fixed.shape)}: pairs must match")
    return batch


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
