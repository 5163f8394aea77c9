"""Bicubic warp: fastreg's kernel backend against torch.grid_sample(mode="bicubic") in 2-D,
forward+backward (gradients to image and displacement), paired in the same process with
interleaved rounds (robust to a shared machine); 3-D tricubic against the trilinear kernel
(grid_sample has no 3-D bicubic).

    PYTHONPATH=. python benchmarks/warp_bicubic.py [--threads 2] [--rounds 5]

Inputs: float32 images, smooth random displacements (fastreg.data.random_smooth_field,
std 2 voxels), zeros padding. grid_sample gets the normalised grid built outside the timed
region (its best case). Reported: median time of each and the median of the per-round
ratios (> 1: fastreg faster).
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import fastreg
from fastreg.data import random_smooth_field
from fastreg.reference.warp import identity_grid

CASES_2D = ((1, 3, 512, 512), (8, 1, 224, 224))
CASES_3D = ((1, 1, 96, 96, 96),)


def _timed(fn, *inputs) -> float:
    inputs = [x.detach().requires_grad_(True) for x in inputs]
    start = time.perf_counter()
    out = fn(*inputs)
    torch.autograd.grad(out.sum(), inputs)
    return time.perf_counter() - start


def _normalised_grid(disp: torch.Tensor) -> torch.Tensor:
    pos = identity_grid(disp.shape[2:], disp.device, disp.dtype) + disp
    sizes = disp.shape[2:]
    return torch.stack([pos[:, a] * (2.0 / (sizes[a] - 1)) - 1 for a in range(len(sizes))][::-1], dim=-1)


def _pair(name_a, fn_a, args_a, name_b, fn_b, args_b, rounds):
    times = {name_a: [], name_b: []}
    for fn, args in ((fn_a, args_a), (fn_b, args_b)):  # warm-up
        _timed(fn, *args)
    for _ in range(rounds):
        times[name_a].append(_timed(fn_a, *args_a))
        times[name_b].append(_timed(fn_b, *args_b))
    ratio = statistics.median(b / a for a, b in zip(times[name_a], times[name_b]))
    return statistics.median(times[name_a]) * 1e3, statistics.median(times[name_b]) * 1e3, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"torch threads {args.threads}; fastreg backends {fastreg.available_backends()} (CPU tensors: cpu)")
    print("| case | fastreg bicubic ms | peer ms | peer | peer / fastreg |")
    print("|---|---|---|---|---|")
    for b, c, *size in CASES_2D:
        image = torch.rand(b, c, *size, generator=generator)
        disp = random_smooth_field(tuple(size), batch=b, magnitude=2.0, spacing=16, generator=generator)
        ours = lambda i, d: fastreg.warp(i, d, "bicubic", "zeros")  # noqa: E731
        peer = lambda i, g: F.grid_sample(i, g, mode="bicubic", padding_mode="zeros", align_corners=True)  # noqa: E731
        t_ours, t_peer, ratio = _pair("ours", ours, (image, disp), "peer", peer, (image, _normalised_grid(disp)),
                                      args.rounds)
        print(f"| 2d {b}x{c}x{size[0]}^2 | {t_ours:.1f} | {t_peer:.1f} | grid_sample bicubic | {ratio:.2f} |")
    for b, c, *size in CASES_3D:
        image = torch.rand(b, c, *size, generator=generator)
        disp = random_smooth_field(tuple(size), batch=b, magnitude=2.0, spacing=16, generator=generator)
        ours = lambda i, d: fastreg.warp(i, d, "bicubic", "zeros")  # noqa: E731
        linear = lambda i, d: fastreg.warp(i, d, "bilinear", "zeros")  # noqa: E731
        t_ours, t_peer, ratio = _pair("ours", ours, (image, disp), "peer", linear, (image, disp), args.rounds)
        print(f"| 3d {size[0]}^3 | {t_ours:.1f} | {t_peer:.1f} | fastreg trilinear | {ratio:.2f} |")


if __name__ == "__main__":
    main()
