"""Speed of the synthetic data generators (fastreg.data) against the same recipes written
with F.interpolate + grid_sample (VoxelMorph-style scaling and squaring and warps).

    python benchmarks/data_generators.py [--rounds 3] [--threads 2] [--size 192] [--skip-full]

Rows:
  synthmorph pair  one SynthMorphPairs batch of 1 at size^3 with 26 labels (base label map,
                   two half-resolution deformations, both label maps warped nearest, two
                   dynamic-contrast images): fastreg.data as shipped (per-label velocities
                   integrated on 4 voxels per coarse cell, noise warped on the size/4 grid
                   with fastreg.sample, upsample + argmax in slabs) against
                   * peer-same-grids: the same reduced-resolution recipe with F.interpolate +
                     grid_sample (the numbers fastreg computes, written the usual way);
                   * peer-full-res: the recipe as the paper writes it (each label's velocity
                     upsampled to size^3, integrated and applied there with grid_sample,
                     label by label so memory stays bounded).
  labelm pairs/s   LabelMPairs(224) batches of 32: pairs per second.
Timing: rounds interleave the implementations in one process; the ratio is per round
(peer time / fastreg time) and the median over rounds is reported, robust to a shared
machine's load.
"""
from __future__ import annotations

import argparse
import functools
import math
import statistics
import time

import torch
import torch.nn.functional as F

from fastreg.data import LabelMPairs, SynthMorphPairs, pair_contrast, render
from fastreg.data import _random
from fastreg.data.labels import (
    LABEL_WARP_CELLS, LABEL_WARP_GRID, LABEL_WARP_STD, LABEL_WARP_STEPS, MIN_WORK, NOISE_GRID, REFERENCE_SIZE,
)


# --- the peer: F.interpolate + grid_sample ------------------------------------------------


@functools.lru_cache(maxsize=8)
def _normalized_grid(shape: tuple[int, ...], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """VoxelMorph's precomputed buffers: the identity grid in grid_sample's [-1, 1] units
    (ij order, (1, ndim, *S)) and the factor from voxels to those units per channel."""
    axes = [torch.linspace(-1, 1, s, device=device) for s in shape]
    scale = torch.tensor([2 / (s - 1) for s in shape], device=device).view(1, len(shape), *[1] * len(shape))
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).unsqueeze(0), scale


def grid_warp(image, disp, mode="bilinear", padding_mode="zeros"):
    """VoxelMorph's SpatialTransformer: image sampled at x + disp(x) (voxels, ij order)."""
    grid, scale = _normalized_grid(tuple(disp.shape[2:]), str(disp.device))
    position = torch.addcmul(grid, disp, scale).movedim(1, -1).flip(-1)  # grid_sample wants xy(z)
    return F.grid_sample(image, position, mode=mode, padding_mode=padding_mode, align_corners=True)


def grid_integrate(velocity, steps):
    """VoxelMorph's VecInt: scaling and squaring with grid_sample."""
    disp = velocity / 2**steps
    for _ in range(steps):
        disp = disp + grid_warp(disp, disp)
    return disp


def _linear(ndim):
    return "bilinear" if ndim == 2 else "trilinear"


def peer_velocity(shape, grid, scales, max_std, generator):
    ndim = len(shape)
    velocity = 0
    for s in scales:
        sigma = _random.uniform(0.0, max_std, (1, 1) + (1,) * ndim, generator)
        noise = _random.randn((1, ndim) + (s,) * ndim, generator) * sigma
        velocity = velocity + F.interpolate(noise, size=grid, mode=_linear(ndim), align_corners=True)
    return velocity


def peer_label_map(shape, num_labels, generator, work_factor):
    """SynthMorph random geometry ("medium"); work_factor None: every label at full size."""
    ndim = len(shape)
    grid = NOISE_GRID["medium"]
    work = shape if work_factor is None else tuple(
        min(s, max(MIN_WORK, math.ceil((s - 1) / work_factor) + 1)) for s in shape)
    strength = LABEL_WARP_STD["medium"] * (sum(shape) / ndim / REFERENCE_SIZE) * (work[0] - 1) / (shape[0] - 1)
    noise = _random.randn((1, num_labels) + (grid,) * ndim, generator)
    best = labels = None
    # fastreg's reduced grids integrate on LABEL_WARP_CELLS voxels per coarse cell and resize
    steps_grid = work if work_factor is None else tuple(
        min(w, LABEL_WARP_CELLS * (LABEL_WARP_GRID - 1) + 1) for w in work)
    to_steps = (steps_grid[0] - 1) / (work[0] - 1)
    for j in range(num_labels):
        velocity = peer_velocity(work, steps_grid, (LABEL_WARP_GRID,), strength * to_steps, generator)
        disp = grid_integrate(velocity, LABEL_WARP_STEPS)
        if steps_grid != work:
            disp = F.interpolate(disp, size=work, mode=_linear(ndim), align_corners=True) / to_steps
        up = F.interpolate(noise[:, j:j + 1], size=work, mode=_linear(ndim), align_corners=True)
        warped = grid_warp(up, disp, padding_mode="border")
        if work != shape:
            warped = F.interpolate(warped, size=shape, mode=_linear(ndim), align_corners=True)
        if best is None:
            best, labels = warped, torch.zeros(warped.shape, dtype=torch.int64)
        else:
            better = warped > best
            best = torch.where(better, warped, best)
            labels[better] = j
    return labels


def peer_synthmorph_pair(shape, num_labels, generator, work_factor):
    base = peer_label_map(shape, num_labels, generator, work_factor).float()
    half = tuple(math.ceil(s / 2) for s in shape)
    out = {}
    for name in ("fixed", "moving"):
        velocity = peer_velocity(shape, half, (24, 12, 6), 3.0, generator)
        disp = F.interpolate(grid_integrate(velocity, 5), size=shape, mode=_linear(len(shape)), align_corners=True)
        disp = disp * ((shape[0] - 1) / (half[0] - 1))
        out[f"{name}_labels"] = grid_warp(base, disp, mode="nearest", padding_mode="border").long()
    (mf, sf), (mm, sm) = pair_contrast(1, num_labels, "dynamic", generator=generator)
    out["fixed"] = render(out["fixed_labels"], mf, sf, generator=generator)
    out["moving"] = render(out["moving_labels"], mm, sm, generator=generator)
    return out


# --- timing ---------------------------------------------------------------------------------


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired(named: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each implementation, interleaved round by round."""
    times = {name: [] for name in named}
    for _ in range(rounds):
        for name, fn in named.items():
            times[name].append(_time(fn))
            print(f"  {name}: {times[name][-1]:.3f} s", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--skip-full", action="store_true", help="leave out the (slow) full-resolution peer")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = (args.size,) * 3
    generator = torch.Generator().manual_seed(0)
    stream = SynthMorphPairs(shape, num_labels=26)
    named = {
        "fastreg": lambda: stream.draw(generator),
        "peer-same-grids": lambda: peer_synthmorph_pair(shape, 26, generator, 4),
    }
    if not args.skip_full:
        named["peer-full-res"] = lambda: peer_synthmorph_pair(shape, 26, generator, None)
    stream.draw(generator)  # warm-up: extension load, allocator
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; synthmorph pair {args.size}^3, 26 labels")
    times = paired(named, args.rounds)
    ours = times["fastreg"]
    print(f"synthmorph pair fastreg: median {statistics.median(ours):.3f} s (min {min(ours):.3f})")
    for name, peer in times.items():
        if name != "fastreg":
            ratios = [p / o for p, o in zip(peer, ours)]
            print(f"  {name}: median {statistics.median(peer):.3f} s, ratio {statistics.median(ratios):.2f}x "
                  f"(per round {', '.join(f'{r:.2f}' for r in ratios)})")
    labelm = LabelMPairs(224, batch_size=32)
    labelm.draw(generator)
    rates = [32 / _time(lambda: labelm.draw(generator)) for _ in range(args.rounds * 3)]
    print(f"labelm 224^2 (batches of 32): median {statistics.median(rates):.1f} pairs/s "
          f"(max {max(rates):.1f}, min {min(rates):.1f})")
    multi = LabelMPairs(224, multimodal=True, batch_size=32)
    rates = [32 / _time(lambda: multi.draw(generator)) for _ in range(args.rounds * 3)]
    print(f"multi-labelm 224^2 (batches of 32): median {statistics.median(rates):.1f} pairs/s")


if __name__ == "__main__":
    main()
