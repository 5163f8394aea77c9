"""NIO from a model's prediction and, in the same wall time, instance optimisation of its
field: the refinement step both quality scripts (quality_2d.py, quality_3d.py) run."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

import fastreg.nio


def refine(model, fixed: torch.Tensor, moving: torch.Tensor, disp: torch.Tensor, iterations: Sequence[int],
           score: Callable[[str, torch.Tensor], dict]) -> dict:
    """``fastreg.nio.optimize(model, fixed, moving, iterations=iterations)`` (Adam steps on a
    copy of the weights, the paper's loss) and ``fastreg.nio.instance_optimize`` from the
    model's field ``disp`` (dense, its default lr, the same loss) given the same wall time
    (at most 100 steps per NIO step). ``score(name, field)`` gives the metrics of a field
    ("nio" or "io"); the seconds and steps of each are added (``seconds_nio``, ``steps_io``...).
    Runs outside inference mode, on copies of the tensors."""
    out = {}
    with torch.inference_mode(False), torch.enable_grad():
        fixed, moving, disp = fixed.clone(), moving.clone(), disp.clone()  # normal tensors, not inference ones
        start = time.perf_counter()
        nio = fastreg.nio.optimize(model, fixed, moving, iterations=tuple(iterations))
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        io = fastreg.nio.instance_optimize(disp, fixed, moving, iterations=100 * sum(iterations), max_seconds=seconds)
        seconds_io = time.perf_counter() - start
    for name, result, sec in (("nio", nio, seconds), ("io", io, seconds_io)):
        with torch.no_grad():
            out.update(score(name, result.disp.detach()))
        out.update({f"seconds_{name}": sec, f"steps_{name}": int(result.log["loss"].shape[0])})
    return out
