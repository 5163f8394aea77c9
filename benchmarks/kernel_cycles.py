"""CPU time per call and per voxel of the raw kernels (below autograd), best of N calls, to
compare two builds (run it once per build with PYTHONPATH pointing at each) or fastreg's 2-D
warp with PyTorch's own grid sampler kernels.

    PYTHONPATH=. python benchmarks/kernel_cycles.py warp --threads 2
    PYTHONPATH=. python benchmarks/kernel_cycles.py correlation --threads 1

warp: ``fastreg::warp_forward`` / ``warp_backward`` (both gradients; bilinear, zeros,
displacement) on the bench's inputs (standard normal image, fastreg.data.random_smooth_field
displacement), and for 2-D ``aten::grid_sampler_2d`` and its backward on the same positions.
correlation: ``fastreg.vfa_attention`` / ``fastreg.local_correlation`` (radius 1) forward,
and forward + backward minus forward, at two DP-VFA level shapes. Cycles per voxel assume
--ghz (the VM's 2.6 GHz); CPU time (time.process_time, all threads) and wall time are the
best of --calls calls.
"""
import argparse
import math
import time

import torch

import fastreg
from fastreg.data import random_smooth_field
from fastreg.reference.warp import identity_grid


def best(fn, calls: int) -> tuple[float, float]:
    """(best CPU seconds, best wall seconds) of ``calls`` calls after one warm-up call."""
    fn()
    cpu, wall = [], []
    for _ in range(calls):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return min(cpu), min(wall)


def warp_rows() -> list:
    rows = []
    for dims in [(8, 1, 224, 224), (1, 3, 1024, 1024), (1, 1, 96, 96, 96)]:
        torch.manual_seed(0)
        image, gout = torch.randn(dims), torch.randn(dims)
        disp = random_smooth_field(dims[2:], batch=dims[0])
        voxels = dims[0] * math.prod(dims[2:])
        name = "x".join(map(str, dims))
        rows.append((f"warp {name} fastreg fwd", lambda i=image, d=disp: torch.ops.fastreg.warp_forward(i, d, 0, 0, True), voxels))
        rows.append((f"warp {name} fastreg bwd", lambda g=gout, i=image, d=disp: torch.ops.fastreg.warp_backward(
            g, i, d, 0, 0, True, [True, True]), voxels))
        if len(dims) == 4:  # grid_sample's positions: normalised, (x, y) last
            grid = identity_grid(dims[2:], disp.device, disp.dtype) + disp
            for a, n in enumerate(dims[2:]):
                grid[:, a] = 2 * (grid[:, a] / (n - 1) - 0.5)
            grid = grid.permute(0, 2, 3, 1)[..., [1, 0]].contiguous()
            rows.append((f"warp {name} aten fwd", lambda i=image, g=grid: torch.ops.aten.grid_sampler_2d(i, g, 0, 0, True), voxels))
            rows.append((f"warp {name} aten bwd", lambda go=gout, i=image, g=grid: torch.ops.aten.grid_sampler_2d_backward(
                go, i, g, 0, 0, True, [True, True]), voxels))
    return rows


def correlation_rows() -> list:
    rows = []
    for dims in [(1, 32, 40, 48, 56), (1, 64, 20, 24, 28)]:
        rows += _correlation_shape(dims)
    return rows


def _correlation_shape(dims: tuple[int, ...]) -> list:
    torch.manual_seed(0)
    a, b = torch.randn(dims, requires_grad=True), torch.randn(dims, requires_grad=True)
    voxels, name, rows = math.prod(dims[2:]), "x".join(map(str, dims)), []
    ops = {"vfa_attention": lambda: fastreg.vfa_attention(a, b, radius=1),
           "local_correlation": lambda: fastreg.local_correlation(a, b, radius=1, scale="rsqrt_channels",
                                                                  padding_mode="zeros")}
    for op, fn in ops.items():
        grad = torch.randn_like(fn())

        def both(fn=fn, grad=grad):
            fn().backward(grad)
            a.grad = b.grad = None

        rows += [(f"{op} {name} fwd", fn, voxels), (f"{op} {name} fwd+bwd", both, voxels)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=["warp", "correlation"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--ghz", type=float, default=2.6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = (warp_rows if args.family == "warp" else correlation_rows)()
    print(f"{fastreg.__file__}, {args.threads} threads, best of {args.calls} calls")
    for name, fn, voxels in rows:
        cpu, wall = best(fn, args.calls)
        print(f"{name:45s} wall {wall * 1e3:8.3f} ms  cpu {cpu * 1e3:8.3f} ms  {cpu * args.ghz * 1e9 / voxels:7.1f} cycles/voxel")


if __name__ == "__main__":
    main()
