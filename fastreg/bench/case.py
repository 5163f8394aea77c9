"""One benchmark case: an op call on fixed-size inputs, our implementation and its peers.

A case is measured by fastreg.bench.runner: ``ours(**inputs)`` under each requested
backend, each peer with the same inputs, forward and forward+backward. Peers use the
same calling convention as ``ours`` (keyword arguments named like the keys of the
inputs dict) and must compute the same thing (same mode, padding, conventions), so a
ratio compares like with like. Only peers that are installed are listed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

Inputs = dict[str, torch.Tensor]


@dataclass
class Case:
    """A benchmark case.

    Attributes:
        op: op family, the registry key in fastreg.bench.cases (e.g. "warp").
        name: human-readable size and variant, e.g. "3d 1x1x96^3 trilinear".
        make_inputs: ``(device, dtype) -> {name: tensor}``, fresh random inputs.
        ours: the fastreg path, called as ``ours(**inputs)``; returns a tensor.
        peers: peer name -> callable with the same convention (installed peers only).
        grad_inputs: keys of the inputs that require grad in the forward+backward timing.
        bytes_moved: ``inputs -> (forward, forward+backward)`` minimal bytes: every input
            read once and every output written once (see `io_bytes`); None if unknown.
        dims: optional metadata, e.g. the (B, C, *spatial) size of the main input.
        op_name: the op ``ours`` runs, the key of fastreg._backend.select that resolves the
            reported backend (e.g. "vfa_attention"); None: ``op`` (warp, lncc).
    """

    op: str
    name: str
    make_inputs: Callable[[torch.device, torch.dtype], Inputs]
    ours: Callable[..., torch.Tensor]
    peers: dict[str, Callable[..., torch.Tensor]] = field(default_factory=dict)
    grad_inputs: tuple[str, ...] = ()
    bytes_moved: Callable[[Inputs], tuple[int, int]] | None = None
    dims: tuple = ()
    op_name: str | None = None


def io_bytes(inputs: Inputs, out_bytes: int, grad_inputs: Sequence[str]) -> tuple[int, int]:
    """The memory-traffic floor of an op in bytes: (forward, forward+backward).

    Forward reads every input tensor once and writes the output (``out_bytes``) once.
    Forward+backward additionally reads the output's gradient once and writes the
    gradient of every input in ``grad_inputs`` once.
    """
    read = sum(t.nbytes for t in inputs.values() if isinstance(t, torch.Tensor))
    forward = read + out_bytes
    backward = out_bytes + sum(inputs[name].nbytes for name in grad_inputs)
    return forward, forward + backward


def shape_name(dims: Sequence[int]) -> str:
    """(1, 1, 96, 96, 96) -> "1x1x96^3"; (1, 1, 160, 192, 224) -> "1x1x160x192x224"."""
    lead = "x".join(str(d) for d in dims[:2])
    spatial = list(dims[2:])
    if len(spatial) > 1 and len(set(spatial)) == 1:
        return f"{lead}x{spatial[0]}^{len(spatial)}"
    return "x".join([lead, *(str(s) for s in spatial)])
