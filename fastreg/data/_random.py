"""Random draws shared by the generators: where they are drawn and how streams are seeded.

Every generator takes ``generator`` (a torch.Generator or None for torch's global one) and
``device``. Small draws (coarse noise grids, per-label parameters: at most ``SMALL`` values)
are made on the generator's device and moved, so a seed gives the same coarse draws on the
CPU and on a GPU; large ones (per-voxel noise) are drawn on ``device``, through a generator
on that device seeded from ``generator`` when the two devices differ.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

SMALL = 1 << 16


def _draw(fn, shape, generator, device, dtype, **kwargs) -> torch.Tensor:
    device = torch.device(device) if device is not None else torch.device("cpu")
    if generator is None:
        return fn(shape, device=device, dtype=dtype, **kwargs)
    same = generator.device.type == device.type
    if same or int(np.prod(shape)) <= SMALL:
        return fn(shape, generator=generator, device=generator.device, dtype=dtype, **kwargs).to(device)
    local = torch.Generator(device).manual_seed(int(torch.randint(2**62, (), generator=generator)))
    return fn(shape, generator=local, device=device, dtype=dtype, **kwargs)


def randn(shape: Sequence[int], generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal draws of ``shape`` on ``device`` (see the module docstring)."""
    return _draw(torch.randn, tuple(shape), generator, device, dtype)


def rand(shape: Sequence[int], generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Uniform draws in [0, 1) of ``shape`` on ``device`` (see the module docstring)."""
    return _draw(torch.rand, tuple(shape), generator, device, dtype)


def uniform(low: float, high: float, shape: Sequence[int], generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Uniform draws in [low, high) of ``shape`` on ``device``."""
    return low + (high - low) * rand(shape, generator, device, dtype)


def randint(high: int, shape: Sequence[int], generator=None, device=None) -> torch.Tensor:
    """Integers in [0, high) of ``shape`` (int64) on ``device``."""
    return _draw(lambda s, **kw: torch.randint(high, s, **kw), tuple(shape), generator, device, torch.int64)


def stream_seed(seed: int, *stream: int) -> int:
    """A 63-bit seed for the stream ``(seed, *stream)`` (e.g. seed, rank, worker id): distinct
    streams get statistically independent seeds (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(seed), *(int(s) for s in stream)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
