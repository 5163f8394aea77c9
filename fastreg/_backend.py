"""Backend selection shared by every op.

Backends: ``reference`` (plain torch, the oracle and fallback), ``cpu`` (C++/OpenMP),
``cuda`` (CUDA C++), ``triton`` (Triton kernels; on CPU tensors only under
``TRITON_INTERPRET=1``). By default the device of the inputs picks: CPU tensors use
``cpu`` (``reference`` without the extension), CUDA tensors use the per-op GPU default
(the faster of ``cuda`` and ``triton`` in BENCHMARKS.md). ``set_backend``, the context
manager ``use_backend`` and the environment variable ``FASTREG_BACKEND`` force one.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Iterator

import torch

from fastreg import _extension

BACKENDS = ("reference", "cpu", "cuda", "triton")

# Per-op GPU default between "cuda" and "triton" (BENCHMARKS.md records why).
GPU_DEFAULT = {"warp": "cuda"}

_forced: str | None = None


def _check_name(name: str | None) -> str | None:
    if name is None or name in ("", "auto"):
        return None
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} or None/'auto', got {name!r}")
    return name


def triton_available() -> bool:
    """Triton is importable (GPU kernels, or the CPU interpreter under TRITON_INTERPRET=1)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available_backends() -> list[str]:
    """The backends that can run on this machine and installation."""
    out = ["reference"]
    if _extension.AVAILABLE:
        out.append("cpu")
        if _extension.WITH_CUDA and torch.cuda.is_available():
            out.append("cuda")
    if triton_available() and (torch.cuda.is_available() or triton_interpret()):
        out.append("triton")
    return out


def set_backend(name: str | None) -> None:
    """Force a backend for every op (``None`` or ``"auto"``: pick by device again)."""
    global _forced
    _forced = _check_name(name)


def get_backend() -> str | None:
    """The forced backend, or ``None`` when the input device picks."""
    return _forced


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Context manager forcing a backend inside the ``with`` block."""
    global _forced
    previous = _forced
    _forced = _check_name(name)
    try:
        yield
    finally:
        _forced = previous


def select(op: str, device: torch.device) -> str:
    """The backend that runs ``op`` on tensors of ``device``."""
    forced = _forced
    if forced is not None:
        _check_runnable(forced, device)
        return forced
    if device.type == "cuda":
        preferred = GPU_DEFAULT.get(op, "cuda")
        for name in (preferred, "cuda", "triton"):
            if _runnable(name, device):
                return name
        return "reference"
    if device.type == "cpu" and _extension.AVAILABLE:
        return "cpu"
    return "reference"


def _runnable(name: str, device: torch.device) -> bool:
    if name == "reference":
        return True
    if name == "cpu":
        return _extension.AVAILABLE and device.type == "cpu"
    if name == "cuda":
        return _extension.WITH_CUDA and device.type == "cuda"
    if name == "triton":
        return triton_available() and (device.type == "cuda" or (device.type == "cpu" and triton_interpret()))
    return False


def _check_runnable(name: str, device: torch.device) -> None:
    if _runnable(name, device):
        return
    if name in ("cpu", "cuda") and not _extension.AVAILABLE:
        why = f"the compiled extension is not available ({_extension.LOAD_ERROR})"
    elif name == "cuda" and not _extension.WITH_CUDA:
        why = "fastreg._C was not compiled with CUDA support"
    elif name == "triton" and not triton_available():
        why = "triton is not installed"
    elif name == "triton":
        why = "Triton runs CPU tensors only under TRITON_INTERPRET=1"
    else:
        why = f"it does not run tensors on {device.type}"
    raise ValueError(f"backend {name!r} cannot run this call on device {device}: {why}")


_forced = _check_name(os.environ.get("FASTREG_BACKEND"))
