"""invert_field on realistic smooth 3-D fields: time of the kernel backend against the
reference backend (grid_sample) in the same process, interleaved rounds, and the residual.

    PYTHONPATH=. python benchmarks/invert.py [--threads 2] [--rounds 3]

Fields: fastreg.data.random_smooth_field (std 0.75 voxel, control points every 16 voxels:
max |grad u| about 0.73, no folds; at std 2 about 1.4% of the voxels fold and the iteration
cannot converge there), and the same field with a local fold (two neighbouring voxels
displaced 2.5 voxels across each other: the few folding voxels a trained network leaves,
which never converge, so they get the Newton steps while the rest stop at the tolerance),
float32; invert_field with its defaults (at most 50 iterations, tol 1e-4 voxels).
Residual: max |compose(u, w)| (the fixed-point equation), and the mean of |compose(w, u)|
over voxels at least 8 from the border.
"""
import argparse
import statistics
import time
import warnings

import torch

import fastreg
from fastreg.data import random_smooth_field
from fastreg.ops.invert import InversionWarning

SIZES = ((96, 96, 96), (160, 192, 224))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"torch threads {args.threads}; backends cpu (fastreg._C) and reference (grid_sample)")
    cases = []
    for size in SIZES:
        u = random_smooth_field(size, magnitude=0.75, spacing=16, generator=generator)
        folded = u.clone()
        centre = tuple(n // 2 for n in size)
        folded[0, 0, centre[0]:centre[0] + 2, centre[1], centre[2]] += torch.tensor([2.5, -2.5])
        cases += [("x".join(map(str, size)), u), ("x".join(map(str, size)) + " with a local fold", folded)]
    for name, u in cases:
        times = {"cpu": [], "reference": []}
        for _ in range(args.rounds):
            for backend in times:
                with fastreg.use_backend(backend):
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", InversionWarning)
                        w = fastreg.invert_field(u)
                    times[backend].append(time.perf_counter() - start)
        back = fastreg.compose(w, u)[:, :, 8:-8, 8:-8, 8:-8]
        ratios = [r / c for c, r in zip(times["cpu"], times["reference"])]
        print(f"{name}: cpu {statistics.median(times['cpu']):.3f} s, reference "
              f"{statistics.median(times['reference']):.3f} s, ratio per round {', '.join(f'{r:.2f}x' for r in ratios)}; "
              f"max |compose(u, w)| {fastreg.compose(u, w).abs().max():.2e}, mean |compose(w, u)| {back.abs().mean():.2e} voxels",
              flush=True)


if __name__ == "__main__":
    main()
