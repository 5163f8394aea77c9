"""``fastreg register`` and ``fastreg apply`` (thin: parse, call `fastreg.register`, write, print).

    fastreg register fixed.nii.gz moving.nii.gz -o out/ [--model NAME|CHECKPOINT] [--nio [--nio-similarity mi]]
    fastreg register --example -o out/ [--model CHECKPOINT]     # a generated 2-D pair
    fastreg register --pairs pairs.csv -o out/                   # many pairs, model loaded once
    fastreg apply out/field.nii.gz labels.nii.gz -o warped_labels.nii.gz --like fixed.nii.gz --nearest

``register`` writes OUT/ (``Registration.save``: warped, field, inverse, warped_labels,
affine.txt, stats.json, preview.png) through a hidden staging folder next to it, renamed into
place once complete: a failure leaves no partial OUT. An existing non-empty OUT is refused
unless --force. ``--pairs``: many pairs, I/O overlapped with compute, resumable, sharded
over the processes of torchrun (fastreg.cli.pairs).
Exit status: 0 done, 2 bad arguments or input (nothing written).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fastreg import io
from fastreg._allocator import keep_freed_memory
from fastreg.cli.output import check_out, staging
from fastreg.cli.pairs import register_pairs
from fastreg.io.image import PICTURE, extension
from fastreg.nio import SIMILARITIES
from fastreg.register import FIELD_FORMATS, register

EXAMPLE_SIZE = 224


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastreg register", description="Register MOVING to FIXED (NIfTI, MGH, PNG/JPEG).")
    p.add_argument("fixed", nargs="?", help="the fixed image")
    p.add_argument("moving", nargs="?", help="the moving image")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--model", default="auto",
                   help="a pretrained name, a `fastreg train` checkpoint or run folder (default: auto)")
    p.add_argument("--nio", action="store_true", help="refine by neural instance optimisation")
    p.add_argument("--iterations", default=None, help="NIO Adam steps per stage, e.g. 100,60,30")
    p.add_argument("--max-seconds", type=float, default=None, help="NIO time budget")
    p.add_argument("--nio-similarity", choices=SIMILARITIES, default="lncc",
                   help="NIO's similarity: lncc (the paper; same contrast) or mi (different contrasts)")
    p.add_argument("--affine", choices=("auto", "on", "off"), default="auto", help="affine pre-alignment")
    p.add_argument("--moving-labels", default=None, help="label map on the moving grid (warped)")
    p.add_argument("--fixed-labels", default=None, help="label map on the fixed grid (Dice)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--half", action="store_true",
                   help="run the network (and NIO's steps) in half precision; fields stay float32")
    p.add_argument("--passes", type=int, default=None,
                   help="apply the network N times (default: the model's own; unireg-2d: 2, 1 is fastest)")
    p.add_argument("--spacing", type=float, default=None,
                   help="voxel size (mm) the network runs at (default: the model's own, else the fixed image's)")
    p.add_argument("--format", choices=FIELD_FORMATS, default="voxel", help="field file convention")
    p.add_argument("--intensity", choices=("mr", "ct", "none"), default="mr", help="intensity normalisation")
    p.add_argument("--no-preview", action="store_true", help="skip preview.png")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty OUT")
    p.add_argument("--example", action="store_true", help="register a generated example pair")
    p.add_argument("--pairs", type=Path, default=None, help="a CSV of pairs (module docstring)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    modes = sum([args.example, args.pairs is not None, args.fixed is not None])
    if modes != 1 or (args.fixed is not None) != (args.moving is not None):
        p.error("give FIXED and MOVING, or --example, or --pairs CSV")
    try:
        keep_freed_memory()
        iterations = _iterations(args.iterations)
        if args.pairs is not None:
            return register_pairs(args, iterations, _register)
        check_out(args.out, args.force)
        with staging(args.out) as stage:
            if args.example:
                args.fixed, args.moving = write_example(stage)
            reg = _register(args, args.fixed, args.moving, args.fixed_labels, args.moving_labels, args.model,
                            iterations)
            reg.save(stage, format=args.format, preview=not args.no_preview)
        print(summary(reg, args.out))
    except (ValueError, TypeError, OSError) as exc:
        print(f"fastreg register: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _register(args, fixed, moving, fixed_labels, moving_labels, model, iterations):
    return register(fixed, moving, model=model, nio=args.nio, affine=args.affine, fixed_labels=fixed_labels,
                    moving_labels=moving_labels, device=args.device, half=args.half,
                    intensity=args.intensity, iterations=iterations, max_seconds=args.max_seconds,
                    nio_similarity=args.nio_similarity, passes=args.passes,
                    spacing="model" if args.spacing is None else args.spacing)


def _iterations(text):
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ValueError(f"--iterations: expected positive integers separated by commas, e.g. 100,60,30, got {text!r}")
    return values


def write_example(folder: Path) -> tuple[Path, Path]:
    """scikit-image's camera at EXAMPLE_SIZE^2 (fixed.png) and a copy warped by a random smooth
    field of a few pixels (moving.png), written into ``folder``."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from skimage import data

    from fastreg.data.fields import random_smooth_field
    from fastreg.ops.warp import warp

    camera = torch.from_numpy(data.camera().astype(np.float32))[None, None]
    fixed = F.interpolate(camera, size=(EXAMPLE_SIZE, EXAMPLE_SIZE), mode="area")
    field = random_smooth_field((EXAMPLE_SIZE, EXAMPLE_SIZE), magnitude=4.0, spacing=48,
                                generator=torch.Generator().manual_seed(0))
    moving = warp(fixed, field, padding_mode="border")
    paths = folder / "fixed.png", folder / "moving.png"
    for path, image in zip(paths, (fixed, moving)):
        io.save(path, io.Image(image[0].round().clamp(0, 255), dtype=np.uint8))
    return paths


def summary(reg, out: Path) -> str:
    s, t = reg.stats, reg.timings
    lines = [
        f"registered with {reg.model_name}{' after affine pre-alignment' if reg.affine_used else ''}",
        f"CC {s['cc_before']:.4f} -> {s['cc_after']:.4f}   MI {s['mi_before']:.4f} -> {s['mi_after']:.4f}",
        f"folding {s['folding_percent']:.4f} %   SDlogJ {s['sdlogj']:.4f}   NDV {s['ndv_percent']:.4f} %",
    ]
    if not s.get("inverse_converged", True):
        lines.append("inverse: the field folds at some voxels, where it has no inverse (inverse.nii.gz is approximate there)")
    if "dice_mean" in s:
        lines.append(f"Dice mean {s['dice_mean']:.4f} over {len(s['dice'])} labels")
    lines.append("seconds: " + "  ".join(f"{k} {v:.3f}" for k, v in t.items()) + f"  total {sum(t.values()):.3f}")
    lines.append(f"written to {out}/")
    return "\n".join(lines)


# -- fastreg apply -------------------------------------------------------------------------------
def apply_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastreg apply", description="Warp IMAGE by a saved FIELD onto the fixed grid.")
    p.add_argument("field", type=Path, help="a field file (voxel, world or itk; detected from its header)")
    p.add_argument("image", type=Path, help="the image or label map to warp (on any grid)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output image file")
    p.add_argument("--like", type=Path, default=None, help="the fixed image (default: the field's own grid)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--nearest", action="store_const", const="nearest", dest="mode", help="for label maps")
    mode.add_argument("--linear", action="store_const", const="bilinear", dest="mode", help="(default)")
    mode.add_argument("--cubic", action="store_const", const="bicubic", dest="mode",
                      help="cubic convolution (A = -0.75, as torch's bicubic; tricubic in 3-D)")
    p.add_argument("--format", choices=FIELD_FORMATS, default=None, help="override the detected field format")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    return p


def apply_main(argv: list[str] | None = None) -> int:
    args = apply_parser().parse_args(argv)
    try:
        keep_freed_memory()
        if args.out.exists() and not args.force:
            raise ValueError(f"--out: {args.out} exists; pass --force to replace it")
        image = io.load(args.image)
        like = io.load(args.like, ndim=image.ndim) if args.like is not None else _field_grid(args.field, image.ndim)
        disp = io.load_field(args.field, like, format=args.format)
        warped = io.apply_field(image, disp, like, mode=args.mode or "bilinear")
        if extension(args.out) in PICTURE and image.dtype.kind in "iu":
            import numpy as np

            info = np.iinfo(image.dtype)
            warped = io.Image(warped.data.round().clamp(info.min, info.max), warped.affine, None, image.dtype)
        io.save(args.out, warped)
    except (ValueError, TypeError, OSError) as exc:
        print(f"fastreg apply: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


def _field_grid(path: Path, ndim: int) -> io.Image:
    """An empty Image on the grid a field file is stored on (its affine, its first ndim axes)."""
    import torch

    from fastreg.io.image import read_nibabel

    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    img, _ = read_nibabel(os.fspath(path))
    shape = img.shape[:ndim]
    return io.Image(torch.empty((1, *shape)), img.affine)
