"""Backend selection shared by every op.

Backends: ``reference`` (plain torch, the oracle and fallback), ``cpu`` (C++/OpenMP),
``cuda`` (CUDA C++), ``triton`` (Triton kernels; on CPU tensors only under
``TRITON_INTERPRET=1``). By default the device of the inputs picks: CPU tensors use
``cpu`` (``reference`` without the extension), CUDA tensors use the per-op GPU default
(the faster of ``cuda`` and ``triton`` in BENCHMARKS.md). ``set_backend``, the context
manager ``use_backend`` (per thread / asyncio context) and the environment variable
``FASTREG_BACKEND`` (any case; unknown names warn and are ignored) force one.
"""
from __future__ import annotations

import contextvars
import importlib.util
import os
import threading
import warnings

import torch

from fastreg import _extension

BACKENDS = ("reference", "cpu", "cuda", "triton")

# Per-op GPU default between "cuda" and "triton", keyed by op name (the kernels' name:
# "warp", "vfa_attention"; fastreg._library): each family's declaration (its ``gpu_default``,
# BENCHMARKS.md records why) fills it at import; an op not in it prefers "cuda".
GPU_DEFAULT: dict[str, str] = {}

# The forced backend: the innermost ``use_backend`` of this thread / asyncio context (a stack
# of (scope, name) entries, each scope removing its own entry on exit, so exits out of
# order cannot leave a stale backend behind), else the process default of ``set_backend``.
_process_default: str | None = None
_scopes: contextvars.ContextVar[tuple[tuple[object, str | None], ...]] = contextvars.ContextVar(
    "fastreg_backend_scopes", default=()
)
# torch.compile cannot read a ContextVar but guards on a threading.local: the innermost
# scope's name of this thread, mirrored on every enter and exit, is what traced code reads
# (asyncio tasks sharing a thread and a compiled function see the thread's latest block).
_traced = threading.local()


def _check_name(name: str | None) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or name.lower() not in (*BACKENDS, "", "auto"):
        raise ValueError(f"backend: expected one of {BACKENDS} or None/'auto', got {name!r}")
    name = name.lower()
    return None if name in ("", "auto") else name


def _environment_default() -> str | None:
    """FASTREG_BACKEND, any case; an unknown name warns and is ignored (the device picks)."""
    value = os.environ.get("FASTREG_BACKEND")
    try:
        return _check_name(value)
    except ValueError:
        warnings.warn(
            f"FASTREG_BACKEND={value!r} is not one of {BACKENDS} or 'auto'; ignored (the input device picks)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


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
    """Set the process default backend (``None`` or ``"auto"``: pick by device again).

    Every thread and context without an enclosing ``use_backend`` block uses it; names are
    case-insensitive."""
    global _process_default
    _process_default = _check_name(name)


def get_backend() -> str | None:
    """The backend forced in this thread / context, or ``None`` when the input device picks."""
    if torch.compiler.is_compiling():
        scoped = getattr(_traced, "scope", ())
        return scoped[0] if scoped else _process_default
    scopes = _scopes.get()
    return scopes[-1][1] if scopes else _process_default


def _set_scopes(scopes: tuple[tuple[object, str | None], ...]) -> None:
    _scopes.set(scopes)
    _traced.scope = (scopes[-1][1],) if scopes else ()


class use_backend:
    """Context manager forcing a backend inside the ``with`` block, for the current thread
    (or asyncio task) only; other threads keep theirs. ``None``/``"auto"`` lets the device
    pick inside the block. Blocks may be left in any order: each removes only itself."""

    def __init__(self, name: str | None):
        self.name = _check_name(name)

    def __enter__(self) -> None:
        _set_scopes((*_scopes.get(), (self, self.name)))

    def __exit__(self, *exc) -> None:
        scopes = _scopes.get()
        for i in range(len(scopes) - 1, -1, -1):
            if scopes[i][0] is self:
                _set_scopes(scopes[:i] + scopes[i + 1 :])
                break


def select(op: str, device: torch.device) -> str:
    """The backend that runs the op named ``op`` (a key of GPU_DEFAULT) on tensors of ``device``."""
    forced = get_backend()
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


def autocast_promote(*tensors):
    """Under ``torch.autocast`` on the tensors' device, the inputs of a multi-input op cast to
    the widest floating dtype among them (autocast's "promote" policy, that of grid_sample, so
    a float32 image warped by a bfloat16 field runs in float32). Outside autocast, or when an
    input is not a floating-point tensor (the validators then name it), they are returned
    unchanged: mixed dtypes without autocast stay a TypeError."""
    if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tensors):
        return tensors
    if not torch.is_autocast_enabled(tensors[0].device.type):
        return tensors
    return promote(*tensors)


def promote(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The floating-point tensors cast to the widest dtype among them (torch.promote_types)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) for t in tensors)


def run_reference(fn, *args):
    """``fn(*args)`` of fastreg.reference with autocast off: the reference computes in its
    inputs' dtype (as the kernels do), not in autocast's lower precision."""
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    with torch.autocast(device.type, enabled=False):
        return fn(*args)


def differentiable_backward(reference_fn, inputs, need, grad_out):
    """First-order gradients that are themselves differentiable, for a backward run with
    ``create_graph=True`` (gradient penalties, Hessian-vector products, double backward).

    The kernels' backward ops have no derivative of their own; in that case every op's
    autograd formula calls this instead: ``reference_fn(*inputs)`` (the same mathematics in
    plain torch, fastreg.reference) is re-run on the saved inputs, which still carry their
    graph, and differentiated by autograd with ``create_graph=True``. Exact on every backend;
    it costs the reference's time and memory, and only when a higher-order graph is asked
    for. Returns one gradient per input (None where ``need`` is False)."""
    with torch.enable_grad(), torch.autocast(inputs[0].device.type, enabled=False):
        # fresh alias nodes: the partial derivatives in each input, not the total ones through
        # an input upstream of another (invert_field's u feeds every iterate w_k)
        inputs = [x.view_as(x) if x.requires_grad else x for x in inputs]
        wanted = [x for x, n in zip(inputs, need) if n]
        out = reference_fn(*inputs)
    grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    result = []
    for x, n in zip(inputs, need):
        g = next(grads) if n else None
        result.append(torch.zeros_like(x) if n and g is None else g)
    return result


def empty_result(shape: tuple[int, ...], *inputs: torch.Tensor) -> torch.Tensor:
    """The result of an op whose output has no element: zeros of ``shape`` (dtype and device
    of ``inputs[0]``) in the autograd graph of ``inputs``, whose gradients are then zeros.
    Every op returns this instead of launching kernels on empty tensors, the same way on
    every backend."""
    out = inputs[0].new_zeros(shape)
    for x in inputs:
        if x.requires_grad:
            out = out + 0 * x.sum()
    return out


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


_process_default = _environment_default()
