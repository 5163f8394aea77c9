"""Loads the compiled kernels (fastreg._C) once; the package works without them.

When the extension is missing (not built, or built against another torch) the `cpu` and
`cuda` backends are unavailable and ops fall back to the `reference` backend; one
warning says so, at import.
"""
from __future__ import annotations

import warnings

try:
    from fastreg import _C  # noqa: F401  (registers the torch.ops.fastreg schemas)

    AVAILABLE = True
    WITH_CUDA = bool(getattr(_C, "WITH_CUDA", False))
    LOAD_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only on installs without the build
    AVAILABLE = False
    WITH_CUDA = False
    LOAD_ERROR = str(exc)
    warnings.warn(
        f"fastreg: compiled kernels (fastreg._C) not found ({exc}); using the reference "
        "torch backend. Build them with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )
