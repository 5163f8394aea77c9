"""The registration ops a model calls, gathered in one swappable table.

Models call warp, compose, resize_field, integrate_svf, vfa_attention and local_correlation
through ``self.kernels`` (a ``Kernels``; by default fastreg's fused ops) rather than by name,
so the same architecture with the same weights can run on other implementations of the
ops: ``fastreg.bench.models`` swaps in the peers' forms (grid_sample warps, the VecInt
loop, unfold + matmul attention) to time a network against itself. Each entry has the
signature and contract of the fastreg op of the same name (fastreg/ops).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fastreg.ops.correlation import local_correlation, vfa_attention
from fastreg.ops.integrate import integrate_svf
from fastreg.ops.resize import resize_field
from fastreg.ops.warp import compose, warp


@dataclass(frozen=True)
class Kernels:
    """One implementation of each op a model uses (default: fastreg's)."""

    warp: Callable = warp
    compose: Callable = compose
    resize_field: Callable = resize_field
    integrate_svf: Callable = integrate_svf
    vfa_attention: Callable = vfa_attention
    local_correlation: Callable = local_correlation


FASTREG = Kernels()
