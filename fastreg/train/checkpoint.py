"""Training checkpoints: atomic files, what they hold, and the checks before resuming.

Layout of a run's folder (only rank 0 writes):
  checkpoints/step-00000100.pt   the last ``keep_last`` checkpoints (the highest step resumes)
  checkpoints/best.pt            the checkpoint with the best validation metric so far
A checkpoint is one ``torch.save`` dict (FORMAT below): the model's class and parameter
shapes, the model, optimizer, scheduler, GradScaler and EMA states, the step, the RNG states
of every rank (torch, CUDA, numpy, python), the data position and the best validation value.
Every write goes to a temporary file in the same folder, is flushed to disk, then
``os.replace``-d over its name: a crash leaves the previous good file, never a partial one.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

import fastreg

FORMAT = 1
_STEP_FILE = re.compile(r"^step-(\d{8})\.pt$")


def write_atomic(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary sibling of ``path``, then move it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def folder(out: Path) -> Path:
    return Path(out) / "checkpoints"


def step_path(out: Path, step: int) -> Path:
    return folder(out) / f"step-{step:08d}.pt"


def best_path(out: Path) -> Path:
    return folder(out) / "best.pt"


def step_files(out: Path) -> list[Path]:
    """The step checkpoints in ``out``, by increasing step."""
    d = folder(out)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _STEP_FILE.match(p.name))


def model_signature(model: torch.nn.Module) -> dict:
    """What a checkpoint must match to load into ``model``: its class and parameter shapes."""
    cls = type(model)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "shapes": {k: tuple(v.shape) for k, v in model.state_dict().items()},
    }


def rng_state() -> dict:
    """The states of every generator this process draws from."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save(path: Path, state: dict) -> None:
    """Write ``state`` (see ``load``) atomically, stamped with the format and fastreg version."""
    state = {"format": FORMAT, "fastreg": fastreg.__version__, **state}
    write_atomic(path, lambda f: torch.save(state, f))


def load(path: Path, model: torch.nn.Module, world_size: int) -> dict:
    """The checkpoint at ``path``, checked against ``model`` and the number of processes before
    anything is loaded; ValueError naming the file and the mismatch otherwise."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise ValueError(f"{path}: not a readable fastreg checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise ValueError(f"{path}: not a fastreg training checkpoint")
    if state["format"] != FORMAT or state.get("fastreg") != fastreg.__version__:
        raise ValueError(
            f"{path}: written by fastreg {state.get('fastreg')} (checkpoint format {state['format']}); this is "
            f"fastreg {fastreg.__version__} (format {FORMAT}): resume with that version or start a new run"
        )
    expected = model_signature(model)
    if state["model_signature"]["class"] != expected["class"]:
        raise ValueError(f"{path}: a checkpoint of {state['model_signature']['class']}, not of {expected['class']}")
    theirs, ours = state["model_signature"]["shapes"], expected["shapes"]
    if theirs != ours:
        diff = sorted(set(theirs) ^ set(ours)) or sorted(k for k in ours if theirs[k] != ours[k])
        raise ValueError(f"{path}: the model's parameters differ from this model's (first differences: {diff[:5]})")
    if state["world_size"] != world_size:
        raise ValueError(
            f"{path}: written by a run of {state['world_size']} processes, this one has {world_size}; "
            "exact resume needs the same number"
        )
    return state


def prune(out: Path, keep_last: int) -> None:
    """Delete all but the ``keep_last`` newest step checkpoints."""
    for p in step_files(out)[:-keep_last]:
        p.unlink()
