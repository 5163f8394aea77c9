"""Registration quality of a 2-D model on real images it never saw, side by side with ANTs SyN.

The UniReg protocol (Shao & Joshi): each real image is the fixed image; the moving image is
the same image warped by a random smooth diffeomorphism (``fastreg.data.random_field`` on a
6x6 grid, sigma ~ U(0, b_p) with b_p = 8 voxels, 7 steps: LabelMPairs' training strength;
--max-std changes b_p); the model registers moving to
fixed and is scored by the global correlation CC(fixed, warped moving) and %|J| (share of
det J <= 0 of the predicted field, Learn2Reg crop). ANTs SyN (antspyx,
``type_of_transform="SyNOnly"``) registers the same pairs in the same run; seconds per pair
of both are measured (the model warm, one pair at a time, as a user registers).
With ``--nio N`` each pair is also refined from the model's prediction by neural instance
optimisation (``fastreg.nio.optimize``, N Adam steps on a copy of the weights, the paper's
loss: 0.6 (1 - LNCC window 7) + 0.4 ||grad u||^2) and, given the same wall time, by the
classic instance optimisation of the field itself (``fastreg.nio.instance_optimize`` from
the model's field, dense, its default lr): CC, %|J| and seconds of both.

Images (none of them used in training, which sees synthetic label maps only): the photos and
microscopy images that scikit-image ships, and 2-D slices of the MR volumes that dipy and
nibabel ship, grouped into domains. The nilearn MNI152 templates are not used here: they are
reserved for independent evaluation.

    python benchmarks/quality_2d.py --model unireg-2d             # the shipped weights
    python benchmarks/quality_2d.py --checkpoint runs/unireg-2d-labelm --pairs 2 --json out.json
    python benchmarks/quality_2d.py --pairs 1 --no-syn --nio 30   # NIO and IO from the model's fields
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import fastreg
from fastreg import metrics
from fastreg.bench.peer_registration import syn

from _quality import load_model, mr_volumes, parser, refine, run

SIZE = 224


def _gray(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.mean(-1) if x.ndim == 3 else x


def _square(x: np.ndarray) -> torch.Tensor:
    """Centre-crop to a square, resize to SIZE^2 (antialiased), robust min-max to [0, 1]."""
    h, w = x.shape
    s = min(h, w)
    x = x[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    t = torch.from_numpy(np.ascontiguousarray(x)).float()[None, None]
    t = F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    lo, hi = torch.quantile(t.flatten(), torch.tensor([0.01, 0.99]))
    return ((t - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)


def real_images() -> dict[str, list[tuple[str, torch.Tensor]]]:
    """Domain -> [(name, (1, 1, SIZE, SIZE) image in [0, 1])] from installed packages."""
    import skimage.data as sk

    domains: dict[str, list[tuple[str, torch.Tensor]]] = {"photo": [], "microscopy": [], "mr-slice": []}
    for name in ("camera", "astronaut", "chelsea", "coffee", "moon", "grass", "gravel", "brick"):
        domains["photo"].append((name, _square(_gray(getattr(sk, name)()))))
    for name in ("cell", "retina", "immunohistochemistry", "microaneurysms", "hubble_deep_field"):
        domains["microscopy"].append((name, _square(_gray(getattr(sk, name)()))))
    for name, data in mr_volumes():
        for z in (data.shape[2] // 3, data.shape[2] // 2):
            domains["mr-slice"].append((f"{name} z{z}", _square(data[:, :, z])))
    return domains


def evaluate(args) -> list[dict]:
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = load_model(args)
    rows = []
    with torch.inference_mode():
        warm = torch.rand(1, 1, SIZE, SIZE)
        model(warm, warm)
        for domain, images in real_images().items():
            for name, fixed in images:
                for k in range(args.pairs):
                    phi = fastreg.data.random_field((SIZE, SIZE), scales=(6,), max_std=args.max_std, steps=7,
                                                    generator=generator)
                    moving = fastreg.warp(fixed, phi, padding_mode="border")
                    start = time.perf_counter()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.half):
                        disp = model(fixed, moving).float()
                    warped = fastreg.warp(moving, disp, padding_mode="border")
                    seconds = time.perf_counter() - start
                    row = {
                        "domain": domain, "image": name, "pair": k,
                        "cc_before": float(metrics.cc(fixed, moving)),
                        "cc_model": float(metrics.cc(fixed, warped)),
                        "folding_model": float(metrics.jacobian_stats(disp)["folding_percent"]),
                        "seconds_model": seconds,
                    }
                    if args.nio:
                        def score(name, field):
                            return {f"cc_{name}": float(metrics.cc(fixed, fastreg.warp(moving, field, padding_mode="border"))),
                                    f"folding_{name}": float(metrics.jacobian_stats(field)["folding_percent"])}

                        row.update(refine(model, fixed, moving, disp, (args.nio,), score, args.similarity, args.nio_half))
                    if not args.no_syn:
                        peer = syn(fixed, moving)
                        row.update(cc_syn=float(metrics.cc(fixed, peer["warped"])),
                                   folding_syn=peer["folding_percent"], seconds_syn=peer["seconds"])
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    p = parser(__doc__, "unireg-2d")
    p.add_argument("--pairs", type=int, default=3, help="random deformations per image")
    p.add_argument("--passes", type=int, default=None,
                   help="apply the network this many times (default: the model's own setting)")
    p.add_argument("--max-std", type=float, default=8.0,
                   help="deformation strength b_p in voxels (default 8: LabelMPairs' training strength)")
    p.add_argument("--half", action="store_true",
                   help="run the network under bfloat16 autocast, as `fastreg register --half` on a CPU")
    p.add_argument("--nio", type=int, default=0, metavar="N",
                   help="also refine each pair by N NIO steps, and by instance optimisation in the same time")
    return run(p, evaluate, "domain", argv)


if __name__ == "__main__":
    sys.exit(main())
