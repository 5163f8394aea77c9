"""Registration quality of a 3-D model on a real brain it never saw, side by side with ANTs SyN.

Image: the MNI152 2009a T1 template that nilearn ships, at 2 mm (99x117x95), min-max scaled
to [0, 1]. This is the project's independent evaluation set: it is never used for training,
validation or checkpoint selection (score the run's ``best.pt``, chosen on its synthetic
validation stream, or a shipped model). Labels: six structures made from nilearn's tissue
templates inside its brain mask, CSF / grey / white matter (the largest of 1 - gm - wm, gm,
wm) in the left and the right hemisphere (split at world x = 0).

Protocol (the UniReg protocol in 3-D, at the training pairs' strength): for each pair a random
smooth diffeomorphism phi is drawn as the SynthMorph-style training deformations are
(``fastreg.data.random_field`` with scales (24, 12, 6), sigma ~ U(0, --max-std) voxels, 5
steps, velocity at half resolution); fixed = the template, moving = template o phi, moving
labels = labels o phi (nearest). With ``--contrast remap`` the moving image's intensities also
go through a random non-monotonic lookup table (8 knots, background kept at 0): the
cross-contrast setting that training on synthetic contrasts is meant for. The model registers
moving to fixed; scores: mean Dice of the six labels (warped moving labels against the fixed
ones, nearest), CC(fixed, warped), %|J| (share of det J <= 0 of the field, Learn2Reg crop),
SDlogJ, and seconds per pair (the model warm, one pair at a time). ANTs SyN (antspyx,
``SyNOnly``) registers the same pairs in the same run.

With ``--images volumes`` the fixed images are instead the 3-D MR volumes that dipy and
nibabel ship (thin slabs of 10-25 slices, none used in training; no labels, so CC only): the
real images of the NIO evaluation, which may not use the MNI152 template. With ``--images
synthetic`` they are SynthMorph-style label-map images outside the training distribution
(``SYNTHETIC``: label maps of another generator, LabelM-style, and the SynthMorph corruptions
that training had off: bias field, gamma, noise, blur; a seed no training or validation stream
uses), scored by the Dice of all their labels: the synthetic contrast-shifted pairs of the
NIO evaluation. ``--nio 100,60,30``
also refines each pair by NIO from the model (Adam steps per stage on a copy of its weights)
and, in the same wall time, by instance optimisation of the model's field
(``benchmarks/_quality.py``), scored the same way.

    python benchmarks/quality_3d.py --checkpoint /path/to/run            # best.pt of a run
    python benchmarks/quality_3d.py --model dpvfa-3d --pairs 5 --contrast remap --json out.json
    python benchmarks/quality_3d.py --images volumes --no-syn --nio 100,60,30
    python benchmarks/quality_3d.py --images synthetic --contrast remap --pairs 2 --nio 100,60,30
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

import fastreg
from fastreg import metrics
from fastreg.bench.peer_registration import syn

from _quality import load_model, mr_volumes, parser, refine, run

LABELS = ("L-csf", "L-gm", "L-wm", "R-csf", "R-gm", "R-wm")
SYNTHETIC = dict(shape=(64, 64, 64), images=3, seed=7, kind="labelm", bias_std=0.3, gamma_std=0.25,
                 noise_std=0.05, blur_std=1.0)


def mni_brain() -> tuple[torch.Tensor, torch.Tensor]:
    """nilearn's MNI152 T1 at 2 mm: ((1, 1, *S) image in [0, 1], (1, 1, *S) int64 labels 0-6)."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=2)
    data = np.asarray(t1.get_fdata(), dtype=np.float64)
    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata()
    mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0.5
    tissue = 1 + np.argmax(np.stack([np.clip(1 - gm - wm, 0, 1), gm, wm]), axis=0)
    i, j, k = np.meshgrid(*(np.arange(n) for n in data.shape), indexing="ij")
    right = (t1.affine[0, :3] @ np.stack([i.ravel(), j.ravel(), k.ravel()]) + t1.affine[0, 3]).reshape(data.shape) > 0
    labels = np.where(mask, tissue + 3 * right, 0)
    image = (data - data.min()) / (data.max() - data.min())
    to = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(dt)[None, None]  # noqa: E731
    return to(image, torch.float32), to(labels, torch.int64)


def volumes() -> list[tuple[str, torch.Tensor]]:
    """``_quality.mr_volumes(small=True)`` as (1, 1, *S) images in [0, 1] (robust min-max:
    1st-99th percentile)."""
    out = []
    for name, data in mr_volumes(small=True):
        lo, hi = np.percentile(data, [1, 99])
        image = np.clip((data - lo) / max(hi - lo, 1e-6), 0, 1)
        out.append((name, torch.from_numpy(np.ascontiguousarray(image)).float()[None, None]))
    return out


def synthetic() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``SYNTHETIC["images"]`` fixed images with their label maps, (1, 1, *S) each."""
    spec = dict(SYNTHETIC)
    shape, count, seed = spec.pop("shape"), spec.pop("images"), spec.pop("seed")
    stream = fastreg.data.SynthMorphPairs(shape, batch_size=1, seed=seed, **spec)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for k in range(count):
        pair = stream.draw(generator)
        out.append((f"synthetic-{k}", pair["fixed"], pair["fixed_labels"]))
    return out


def remap(image: torch.Tensor, generator: torch.Generator, knots: int = 8) -> torch.Tensor:
    """A random non-monotonic intensity lookup table (``knots`` values drawn U(0, 1) on a
    uniform grid of [0, 1], 0 kept at 0), applied by linear interpolation."""
    values = torch.rand(knots, generator=generator, dtype=torch.float64)
    values[0] = 0.0
    grid = np.linspace(0.0, 1.0, knots)
    return torch.from_numpy(np.interp(image.double().numpy(), grid, values.numpy())).float()


def warp_labels(labels: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """An int64 label map warped by nearest neighbour (zeros outside)."""
    return fastreg.warp(labels.float(), disp, mode="nearest").to(torch.int64)


def _scores(name: str, fixed, fixed_labels, warped, warped_labels) -> dict:
    out = {f"cc_{name}": float(metrics.cc(fixed, warped))}
    if fixed_labels is not None:  # every label of the fixed map (MNI152: the six of LABELS)
        found = [int(v) for v in torch.unique(fixed_labels) if v != 0]
        out[f"dice_{name}"] = float(metrics.dice(fixed_labels, warped_labels, labels=found).nanmean())
    return out


def images(kind: str) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
    if kind == "mni":
        return [("mni152", *mni_brain())]
    if kind == "synthetic":
        return synthetic()
    return [(name, image, None) for name, image in volumes()]


def evaluate(args) -> list[dict]:
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = load_model(args)
    rows = []
    with torch.inference_mode():
        for name, fixed, fixed_labels in images(args.images):
            shape = tuple(fixed.shape[2:])
            model(fixed, fixed)  # warm-up at this size
            for k in range(args.pairs):
                phi = fastreg.data.random_field(shape, scales=(24, 12, 6), max_std=args.max_std, steps=5,
                                                half_res=True, generator=generator)
                moving = fastreg.warp(fixed, phi, padding_mode="zeros")
                moving_labels = None if fixed_labels is None else warp_labels(fixed_labels, phi)
                if args.contrast == "remap":
                    moving = remap(moving, generator)

                def score(tag, disp):
                    labels = None if moving_labels is None else warp_labels(moving_labels, disp)
                    stats = metrics.jacobian_stats(disp)
                    return {**_scores(tag, fixed, fixed_labels, fastreg.warp(moving, disp), labels),
                            f"folding_{tag}": float(stats["folding_percent"]), f"sdlogj_{tag}": float(stats["sdlogj"])}

                start = time.perf_counter()
                disp = model(fixed, moving)
                fastreg.warp(moving, disp)
                seconds = time.perf_counter() - start
                row = {"image": name, "pair": k, **_scores("before", fixed, fixed_labels, moving, moving_labels),
                       **score("model", disp), "seconds_model": seconds}
                if args.nio:
                    row.update(refine(model, fixed, moving, disp, args.nio, score, args.similarity, args.nio_half))
                if not args.no_syn:
                    peer = syn(fixed, moving, moving_labels)
                    row.update(_scores("syn", fixed, fixed_labels, peer["warped"], peer["labels"]),
                               folding_syn=peer["folding_percent"], seconds_syn=peer["seconds"])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    p = parser(__doc__, "dpvfa-3d")
    p.add_argument("--pairs", type=int, default=5, help="random deformations of the template")
    p.add_argument("--passes", type=int, default=None, help="network passes (default: the model's own)")
    p.add_argument("--max-std", type=float, default=3.0,
                   help="deformation strength in voxels of the half-resolution velocity (default 3: the training pairs')")
    p.add_argument("--contrast", choices=("same", "remap"), default="same",
                   help="moving image in the template's contrast, or remapped by a random lookup table")
    p.add_argument("--images", choices=("mni", "volumes", "synthetic"), default="mni",
                   help="the MNI152 template with six labels, the MR volumes of dipy and nibabel (CC only), or"
                        " synthetic label-map images outside the training distribution (module docstring)")
    p.add_argument("--nio", type=lambda v: tuple(int(x) for x in v.split(",")), default=(), metavar="N[,N...]",
                   help="also refine by NIO with these steps per stage, and by instance optimisation in the same time")
    return run(p, evaluate, "image", argv)


if __name__ == "__main__":
    sys.exit(main())
