"""Affine pre-alignment of a real head volume moved by known random affines: time and
recovered-transform error of fastreg.affine_register, and of ANTsPy's affine registration
in the same process (interleaved rounds, same pairs).

    PYTHONPATH=. python benchmarks/affine.py                # dof 12 and 6, 3 pairs each, 2 threads
    PYTHONPATH=. python benchmarks/affine.py --threads 1 --no-peer
(PYTHONPATH=. from the repository root uses this checkout, not an installed fastreg.)

The volume is dipy's bundled aniso_vox.nii.gz (a 58 x 58 x 24 head of 4 x 4 x 5 mm voxels,
no download), intensities clipped at the 99.5th percentile to [0, 1] and resampled
trilinearly to 91 x 109 x 91 voxels (the size of a 2 mm MNI brain; spacing 2.53 x 2.11 x
1.28 mm, passed to both tools). Each pair: fixed = that volume, moving = the volume sampled
through the inverse of a random affine of the dof (fastreg.data.affines.random_affine:
rotation up to 10 degrees, scales 1 +- 0.08, shear 0.04, shift up to 4 voxels). Error:
mean and largest distance in mm over the head voxels (intensity > 0.1) between where the
recovered and the true matrix send them. Wall and process CPU time per registration.
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

SIZE = (91, 109, 91)


def head_volume() -> tuple[torch.Tensor, tuple[float, ...]]:
    import dipy.data
    import nibabel

    image = nibabel.load(os.path.join(os.path.dirname(dipy.data.__file__), "files", "aniso_vox.nii.gz"))
    x = torch.tensor(np.asarray(image.dataobj), dtype=torch.float32)
    x = (x / torch.quantile(x.flatten(), 0.995)).clamp(0, 1)[None, None]
    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    spacing = tuple(h * (s - 1) / (n - 1) for h, s, n in zip(zooms, x.shape[2:], SIZE))
    return F.interpolate(x, size=SIZE, mode="trilinear", align_corners=True), spacing


def fastreg_affine(fixed, moving, spacing, dof):
    import fastreg

    return fastreg.affine_register(fixed, moving, dof=dof, spacing=spacing)[0]


def ants_affine(fixed, moving, spacing, dof):
    """ANTsPy registration ("Affine" for dof 12, "Rigid" for 6) as a voxel matrix: ANTs
    physical points are index * spacing here (origin 0, identity direction), and its
    transform maps fixed points p to moving points M (p - c) + t + c."""
    import ants

    kind = {12: "Affine", 6: "Rigid"}[dof]
    to_ants = lambda x: ants.from_numpy(x[0, 0].numpy().astype(np.float32), spacing=spacing)  # noqa: E731
    with tempfile.TemporaryDirectory() as out:
        result = ants.registration(to_ants(fixed), to_ants(moving), type_of_transform=kind,
                                   outprefix=os.path.join(out, "x"))
        transform = ants.read_transform(result["fwdtransforms"][0])
    params = np.asarray(transform.parameters, dtype=np.float64)
    centre = torch.tensor(np.asarray(transform.fixed_parameters, dtype=np.float64))
    linear = torch.tensor(params[:9].reshape(3, 3))
    shift = torch.tensor(params[9:12]) + centre - linear @ centre
    sp = torch.tensor(spacing, dtype=torch.float64)
    matrix = torch.eye(4, dtype=torch.float64)
    matrix[:3, :3] = linear * sp / sp.unsqueeze(-1)
    matrix[:3, 3] = shift / sp
    return matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dof", type=int, nargs="+", default=[12, 6])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peer", action="store_true", help="skip ANTsPy")
    args = parser.parse_args()
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)

    import fastreg
    from fastreg.data.affines import random_affine

    fixed, spacing = head_volume()
    mask = fixed[0, 0] > 0.1
    generator = torch.Generator().manual_seed(args.seed)
    tools = {"fastreg": fastreg_affine} | ({} if args.no_peer else {"ants": ants_affine})
    fastreg_affine(fixed, fixed, spacing, 6)  # warm-up (first-call costs)
    print(f"head volume {SIZE} spacing {tuple(round(s, 3) for s in spacing)} mm, torch threads {args.threads}, "
          f"machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'dof':>3} {'tool':>8} {'wall s':>8} {'cpu s':>7} {'err mean mm':>12} {'err max mm':>11}  (per pair)")
    for dof in args.dof:
        rows = {name: [] for name in tools}
        for _ in range(args.pairs):
            truth = random_affine(SIZE, spacing, dof, generator=generator)
            moving = fastreg.sample(fixed, fastreg.affine_coords(torch.linalg.inv(truth), SIZE))
            for name, tool in tools.items():  # interleaved: the same load for both
                wall, cpu = time.perf_counter(), time.process_time()
                matrix = tool(fixed, moving, spacing, dof)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                mean, worst = fastreg.affine_error(matrix, truth, SIZE, spacing, mask)
                rows[name].append((wall, cpu, mean.item(), worst.item()))
                print(f"{dof:>3} {name:>8} {wall:8.2f} {cpu:7.2f} {mean.item():12.3f} {worst.item():11.3f}", flush=True)
        for name, values in rows.items():
            med = [statistics.median(v[k] for v in values) for k in range(4)]
            print(f"{dof:>3} {name:>8} median: wall {med[0]:.2f} s, cpu {med[1]:.2f} s, error {med[2]:.3f} mm mean, "
                  f"{max(v[3] for v in values):.3f} mm max")
        if "ants" in rows:
            ratios = [a[0] / f[0] for f, a in zip(rows["fastreg"], rows["ants"])]
            print(f"{dof:>3} ants / fastreg wall time per pair: {', '.join(f'{r:.1f}x' for r in ratios)}")


if __name__ == "__main__":
    main()
