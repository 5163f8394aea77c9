"""A tiny registration model, pair stream and loss for the training-loop tests (importable by
name in recipes as "tiny:TinyNet", "tiny:TinyPairs", "tiny:tiny_loss" with this folder on
PYTHONPATH), so the loop is tested without the real models and generators."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import fastreg
from fastreg.data import random_smooth_field
from fastreg.models import RegistrationModel


class TinyNet(RegistrationModel):
    """Two 3x3 convolutions on cat(fixed, moving) -> a 2-D displacement in voxels; ``dropout``
    makes the forward draw from torch's generator (to test that resume restores it)."""

    ndim = 2

    def __init__(self, width: int = 8, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(2, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2, 3, padding=1)
        self.dropout = dropout

    def predict(self, fixed, moving, levels):
        x = F.leaky_relu(self.conv1(torch.cat([fixed, moving], 1)), 0.2)
        return self.conv2(F.dropout(x, self.dropout, self.training))


class TinyPairs:
    """An indexed stream (fastreg.train.stream) of 16x16 pairs: item i is drawn from a generator
    seeded by (seed, i); moving is fixed warped by a smooth field; ``labels`` adds label maps."""

    def __init__(self, seed: int = 0, batch_size: int = 2, size: int = 16, labels: bool = False):
        self.seed, self.batch_size, self.size, self.labels = seed, batch_size, size, labels

    def take(self, start: int, count: int) -> dict:
        generators = [torch.Generator().manual_seed(self.seed * 1_000_003 + i) for i in range(start, start + count)]
        return _pairs(generators, self.size, self.labels)


class TinyDrawn:
    """A drawn stream (fastreg.train.stream) of the same pairs: ``draw(generator)`` makes a batch."""

    def __init__(self, seed: int = 0, batch_size: int = 2, size: int = 16):
        self.seed, self.batch_size, self.size = seed, batch_size, size

    def draw(self, generator: torch.Generator) -> dict:
        return _pairs([generator] * self.batch_size, self.size, labels=False)


class TinyMap:
    """A map-style dataset of ``n`` single pairs (1, 1, size, size) like fastreg.data.ImagePairs'
    items, pair ``i`` drawn from seed i; ``odd`` pairs (indices) have one row less."""

    def __init__(self, n: int = 5, size: int = 16, odd: tuple = ()):
        self.n, self.size, self.odd = n, size, set(odd)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        pair = _pairs([torch.Generator().manual_seed(i)], self.size, labels=False)
        pair = {k: v[0] for k, v in pair.items()}  # (1, *S): one item, no batch dimension
        return {k: v[:, :-1] for k, v in pair.items()} if i in self.odd else pair


def _pairs(generators, size: int, labels: bool) -> dict:
    """One pair per generator, batched."""
    items = []
    for g in generators:
        fixed = F.interpolate(torch.rand(1, 1, 5, 5, generator=g), size=(size,) * 2, mode="bilinear", align_corners=True)
        disp = random_smooth_field((size,) * 2, magnitude=1.0, spacing=8, generator=g)
        item = {"fixed": fixed, "moving": fastreg.warp(fixed, disp), "disp": disp}
        if labels:
            item["fixed_labels"] = (fixed * 3.999).long()
            item["moving_labels"] = (item["moving"] * 3.999).long()
        items.append(item)
    return {k: torch.cat([it[k] for it in items]) for k in items[0]}


class FolderPairs:
    """Pairs read from ``path``: one ``*.pt`` file per pair holding {"fixed", "moving"} (1, 1, H, W)
    tensors (a stand-in for fastreg.data.ImagePairs, to test what the loop does with a folder
    holding no pairs or mismatched ones)."""

    def __init__(self, path, batch_size: int = 1, seed: int = 0):
        self.files = sorted(Path(path).glob("*.pt"))

    def __iter__(self):
        for f in self.files:
            yield torch.load(f)


def tiny_loss(batch, disp):
    """MSE of fixed and warped moving + 0.1 mean squared forward differences of disp (in
    float32 under autocast)."""
    disp = disp.float()
    mse = F.mse_loss(fastreg.warp(batch["moving"], disp), batch["fixed"])
    smooth = sum(d.pow(2).mean() for d in (disp.diff(dim=2), disp.diff(dim=3)))
    return {"loss": mse + 0.1 * smooth, "mse": mse, "smooth": smooth}


# The environment of a subprocess that resolves this module's names (and this checkout's fastreg).
SUBPROCESS_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[2])]),
    "OMP_NUM_THREADS": "1",
}

# A recipe training TinyNet on TinyPairs (this folder must be on PYTHONPATH to resolve it).
RECIPE = """
description = "TinyNet on TinyPairs"

[model]
name = "tiny:TinyNet"

[model.args]
width = 8

[data]
kind = "tiny:TinyPairs"
batch_size = 2

[loss]
name = "tiny:tiny_loss"

[train]
steps = 3
lr = 1e-2
device = "cpu"

[validation]
every = 2
batches = 1
best = "cc"

[checkpoint]
every = 2

[log]
every = 1
progress = false
tensorboard = false
"""
