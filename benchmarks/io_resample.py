"""Load a 256^3 NIfTI and resample it onto a 160x192x224 grid (fastreg.io), against the peers.

    python -m benchmarks.io_resample [--rounds 5] [--dtype int16] [--threads 2] [--nibabel]

Writes a smooth random 256^3 volume (1 mm, oblique) as .nii and .nii.gz in a temporary
folder, then times in interleaved rounds (robust to a shared machine: every round runs each
step once, medians are reported, ratios are per round):
  load       fastreg.io.load (.nii / .nii.gz)
  resample   fastreg.io.resample onto a rotated 160x192x224 grid of 1.1 mm (trilinear)
  peer       the same resampling with torch's affine_grid + grid_sample (a full grid tensor)
  nibabel    nibabel.processing.resample_from_to, order 1 (scipy; with --nibabel, slow)
The target is load + resample < 1 s on 2 CPU cores. "CPU" is the process's CPU time (all
threads): on a machine shared with other jobs it shows what the wall time would be alone.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import fastreg.io as fio


def rotation(degrees) -> np.ndarray:
    out = np.eye(3)
    for axis, angle in enumerate(np.deg2rad(degrees)):
        c, s = np.cos(angle), np.sin(angle)
        a, b = [i for i in range(3) if i != axis]
        turn = np.eye(3)
        turn[a, a], turn[a, b], turn[b, a], turn[b, b] = c, -s, s, c
        out = out @ turn
    return out


def volume(size: int, dtype: np.dtype, generator: torch.Generator) -> torch.Tensor:
    """(1, size^3) smooth random intensities (coarse noise upsampled, plus fine noise)."""
    coarse = torch.randn((1, 1, 9, 9, 9), generator=generator)
    smooth = F.interpolate(coarse, size=(size,) * 3, mode="trilinear", align_corners=True)[0]
    data = 1000 + 300 * smooth + 20 * torch.randn(smooth.shape, generator=generator)
    return data.round() if np.dtype(dtype).kind in "iu" else data


def grid_sample_resample(image: fio.Image, like: fio.Image) -> torch.Tensor:
    """The usual torch way: a normalized (1, *S, 3) grid from affine_grid, then grid_sample."""
    matrix = np.linalg.inv(image.affine) @ like.affine  # like voxel -> image voxel, ij order
    src, dst = np.array(image.shape, float), np.array(like.shape, float)
    # normalized coords (align_corners=True) are xyz = reversed ij: n = 2 i / (S - 1) - 1
    to_norm = np.diag(list(2 / (src[::-1] - 1)) + [1.0])
    to_norm[:3, 3] = -1
    from_norm = np.diag(list((dst[::-1] - 1) / 2) + [1.0])
    from_norm[:3, 3] = (dst[::-1] - 1) / 2
    flip = np.eye(4)[[2, 1, 0, 3]]
    theta = to_norm @ flip @ matrix @ flip @ from_norm
    grid = F.affine_grid(torch.from_numpy(theta[:3]).float()[None], (1, 1, *like.shape), align_corners=True)
    return F.grid_sample(image.data[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", default="int16", help="on-disk dtype of the volume (int16, float32, ...)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nibabel", action="store_true", help="also time nibabel.processing (scipy, slow)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    source_affine = np.eye(4)
    source_affine[:3, :3] = rotation((8, -5, 12))
    source_affine[:3, 3] = -128
    like = fio.Image(torch.empty(1, 160, 192, 224), np.eye(4))
    like.affine[:3, :3] = rotation((-3, 4, 2)) * 1.1
    like.affine[:3, 3] = -like.affine[:3, :3] @ (np.array(like.shape) - 1) / 2

    with tempfile.TemporaryDirectory() as folder:
        image = fio.Image(volume(256, args.dtype, generator), source_affine, dtype=args.dtype)
        paths = {ext: os.path.join(folder, f"volume{ext}") for ext in (".nii", ".nii.gz")}
        for path in paths.values():
            fio.save(path, image)
        sizes = {ext: os.path.getsize(p) / 2**20 for ext, p in paths.items()}
        times: dict[str, list[float]] = {}
        ratios: list[float] = []

        cpu: dict[str, list[float]] = {}

        def timed(name, fn):
            start, start_cpu = time.perf_counter(), time.process_time()
            out = fn()
            times.setdefault(name, []).append(time.perf_counter() - start)
            cpu.setdefault(name, []).append(time.process_time() - start_cpu)
            return out

        for _ in range(args.rounds):
            loaded = {ext: timed(f"load {ext}", lambda p=p: fio.load(p)) for ext, p in paths.items()}
            ours = timed("resample fastreg.io", lambda: fio.resample(loaded[".nii"], like))
            theirs = timed("resample affine_grid+grid_sample", lambda: grid_sample_resample(loaded[".nii"], like))
            ratios.append(times["resample affine_grid+grid_sample"][-1] / times["resample fastreg.io"][-1])
            if args.nibabel:
                import nibabel as nib
                import nibabel.processing

                target = nib.Nifti1Image(np.zeros(like.shape, np.uint8), like.affine)
                timed("resample nibabel.processing", lambda: nibabel.processing.resample_from_to(
                    nib.load(paths[".nii"]), target, order=1))
        difference = (ours.data - theirs).abs().max().item()

    median = {name: statistics.median(values) for name, values in times.items()}
    best = {name: min(values) for name, values in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds, on-disk {args.dtype}"
          f" 256^3 (.nii {sizes['.nii']:.1f} MiB, .nii.gz {sizes['.nii.gz']:.1f} MiB) -> 160x192x224")
    for name, value in median.items():
        used = statistics.median(cpu[name]) * 1000
        print(f"  {name:<36} {value * 1000:8.1f} ms median, {best[name] * 1000:8.1f} ms best, {used:8.1f} ms CPU")
    for ext in paths:
        total = median[f"load {ext}"] + median["resample fastreg.io"]
        fastest = best[f"load {ext}"] + best["resample fastreg.io"]
        verdict = "< 1 s: ok" if total < 1 else ">= 1 s: MISSED"
        name = f"load {ext} + resample"
        print(f"  {name:<36} {total * 1000:8.1f} ms median, {fastest * 1000:8.1f} ms best  {verdict}")
    print(f"  grid_sample / fastreg.io resample: {statistics.median(ratios):.2f}x (median of per-round ratios);"
          f" max |difference| {difference:.2e}")


if __name__ == "__main__":
    main()
