"""What the quality scripts (quality_2d.py, quality_3d.py) share: the model to score, NIO and
equal-time instance optimisation from its prediction, the common options, the summary table
and the run."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable, Sequence

import numpy as np
import torch

import fastreg.models
import fastreg.nio


def load_model(args) -> torch.nn.Module:
    """--checkpoint (a `fastreg train` checkpoint or run folder) or --model (a shipped name),
    in eval mode; --passes where the script has it."""
    model = fastreg.models.load_checkpoint(args.checkpoint) if args.checkpoint else fastreg.models.load(args.model)
    if getattr(args, "passes", None) is not None:
        model.set_passes(args.passes)
    return model.eval()


def mr_volumes(small: bool = False) -> list[tuple[str, np.ndarray]]:
    """The MR volumes dipy and nibabel ship, as float64 3-D arrays (the first volume of 4-D
    files): dipy's S0_10slices, test_piesno and aniso_vox, nibabel's example4d, and with
    ``small`` also nibabel's 33x41x25 anatomical.nii (too small to give 224^2 slices)."""
    import dipy
    import nibabel as nib
    from nibabel.testing import data_path

    files = os.path.join(os.path.dirname(dipy.__file__), "data", "files")
    paths = [("dipy S0_10slices", os.path.join(files, "S0_10slices.nii.gz")),
             ("dipy test_piesno", os.path.join(files, "test_piesno.nii.gz")),
             ("dipy aniso_vox", os.path.join(files, "aniso_vox.nii.gz")),
             ("nibabel example4d", os.path.join(data_path, "example4d.nii.gz"))]
    if small:
        paths.append(("nibabel anatomical", os.path.join(data_path, "anatomical.nii")))
    out = []
    for name, path in paths:
        data = np.asarray(nib.load(path).dataobj, dtype=np.float64)
        out.append((name, data.reshape(*data.shape[:3], -1)[..., 0]))
    return out


def refine(model, fixed: torch.Tensor, moving: torch.Tensor, disp: torch.Tensor, iterations: Sequence[int],
           score: Callable[[str, torch.Tensor], dict], similarity: str = "lncc", half: bool = False) -> dict:
    """``fastreg.nio.optimize(model, fixed, moving, iterations=iterations, half=half)`` (Adam steps
    on a copy of the weights, the paper's loss with ``similarity``) and ``fastreg.nio.instance_optimize``
    from the model's field ``disp`` (dense, its default lr, the same loss) given the same wall time
    (at most 100 steps per NIO step). ``score(name, field)`` gives the metrics of a field
    ("nio" or "io"); the seconds and steps of each are added (``seconds_nio``, ``steps_io``...).
    Runs outside inference mode, on copies of the tensors."""
    out = {}
    with torch.inference_mode(False), torch.enable_grad():
        fixed, moving, disp = fixed.clone(), moving.clone(), disp.clone()  # normal tensors, not inference ones
        start = time.perf_counter()
        nio = fastreg.nio.optimize(model, fixed, moving, iterations=tuple(iterations), similarity=similarity, half=half)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        io = fastreg.nio.instance_optimize(disp, fixed, moving, iterations=100 * sum(iterations), max_seconds=seconds,
                                           similarity=similarity)
        seconds_io = time.perf_counter() - start
    for name, result, sec in (("nio", nio, seconds), ("io", io, seconds_io)):
        with torch.no_grad():
            out.update(score(name, result.disp.detach()))
        out.update({f"seconds_{name}": sec, f"steps_{name}": int(result.log["loss"].shape[0])})
    return out


def parser(doc: str, model: str) -> argparse.ArgumentParser:
    """The options every quality script has; ``model`` is the default of --model."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--model", default=model, help="a pretrained model name (fastreg.models.load)")
    p.add_argument("--checkpoint", default=None, help="a `fastreg train` checkpoint or run folder instead of --model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-syn", action="store_true", help="skip ANTs SyN")
    p.add_argument("--json", default=None, help="write every pair's row to this JSON file")
    p.add_argument("--similarity", choices=fastreg.nio.SIMILARITIES, default="lncc",
                   help="the similarity of NIO and instance optimisation (--nio): lncc (the paper) or mi")
    p.add_argument("--nio-half", action="store_true",
                   help="NIO's steps in bfloat16 (fastreg.nio.optimize(half=True)); IO stays float32")
    return p


def summary(rows: list[dict], group: str) -> str:
    """Mean of every numeric column per value of ``group`` and over all rows (a markdown table)."""
    keys = [k for k, v in rows[0].items() if k != "pair" and isinstance(v, (int, float))]
    lines = [f"| {group} | pairs | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for value in [*dict.fromkeys(r[group] for r in rows), "all"]:
        members = [r for r in rows if value in ("all", r[group])]
        cells = [f"{statistics.mean(r[k] for r in members):.4g}" for k in keys]
        lines.append(f"| {value} | {len(members)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(p: argparse.ArgumentParser, evaluate: Callable, group: str, argv=None) -> int:
    """Parse, score every pair (``evaluate(args)`` -> rows), write --json, print the table."""
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FASTREG_THREADS", torch.get_num_threads())))
    rows = evaluate(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    extra = "".join(f", {k} {getattr(args, k)}" for k in ("contrast", "images") if hasattr(args, k))
    print(f"{len(rows)} pairs, {torch.get_num_threads()} threads, seed {args.seed}{extra}")
    print(summary(rows, group))
    return 0
