"""Benchmark cases of the correlation op family: ``fastreg.vfa_attention(q, k)`` (DP-VFA's
decoder step) and ``fastreg.local_correlation(f, m)`` (DP-Conv-C's cost volume), radius 1,
against the two plain-torch forms of fastreg.reference.correlation.

Inputs: ``q, k`` / ``f, m`` (1, C, *S) standard normal feature maps. vfa_attention: keys
replicate-padded, T = sqrt(C); local_correlation: scale C^-1/2, zero padding (DP-Conv-C).
Peers (the same computation):
  torch-shifted  pad once, one shifted slice, product and channel sum per offset
                 (K = 27 in 3-D), then softmax and the offset sum for vfa_attention
  vfa-unfold     the VFA papers' form: unfold the padded moving features into a
                 (B, N, C, K) neighbourhood copy (K times the features), batched matmul
                 with the queries
"""
from __future__ import annotations

from functools import partial

import torch

import fastreg
from fastreg.bench.case import Case, io_bytes, shape_name
from fastreg.bench.cases import check_sizes
from fastreg.reference import correlation as reference

SHAPES = {
    "tiny": [(1, 4, 6, 8, 10), (1, 4, 16, 24)],
    "quick": [(1, 16, 24, 32, 24), (1, 32, 96, 96)],
    "default": [(1, 16, 24, 32, 24), (1, 32, 128, 128)],
    "large": [(1, 32, 40, 48, 40), (1, 16, 80, 96, 112), (1, 64, 256, 256)],
}
RADIUS = 1


def cases(sizes: str, quick: bool) -> list[Case]:
    """Cases for ``sizes`` (see fastreg.bench.cases): both ops on every shape; ``quick``:
    vfa_attention in 3-D and local_correlation in 2-D."""
    shapes = SHAPES[check_sizes(sizes)]
    three = [s for s in shapes if len(s) == 5]
    two = [s for s in shapes if len(s) == 4]
    if quick:
        return [_vfa_case(three[0]), _correlation_case(two[0])]
    return [case for dims in three + two for case in shape_cases(dims)]


def shape_cases(dims: tuple[int, ...], peers: tuple[str, ...] | None = None) -> list[Case]:
    """Both ops' cases on one shape ``dims`` = (1, C, *S), with the named peers only
    (``None``: all)."""
    cases = [_vfa_case(dims), _correlation_case(dims)]
    if peers is not None:
        for case in cases:
            case.peers = {name: fn for name, fn in case.peers.items() if name in peers}
    return cases


def _vfa_case(dims: tuple[int, ...]) -> Case:
    ndim = len(dims) - 2
    return Case(
        op="correlation",
        op_name="vfa_attention",
        name=f"{ndim}d {shape_name(dims)} vfa_attention r{RADIUS}",
        make_inputs=partial(_make_inputs, dims, ("q", "k")),
        ours=partial(fastreg.vfa_attention, radius=RADIUS),
        peers={
            "torch-shifted": partial(reference.vfa_attention, radius=RADIUS),
            "vfa-unfold": partial(reference.vfa_attention_unfold, radius=RADIUS),
        },
        grad_inputs=("q", "k"),
        bytes_moved=partial(_bytes_moved, ("q", "k"), ndim),
        dims=dims,
    )


def _correlation_case(dims: tuple[int, ...]) -> Case:
    ndim = len(dims) - 2
    return Case(
        op="correlation",
        op_name="local_correlation",
        name=f"{ndim}d {shape_name(dims)} local_correlation r{RADIUS}",
        make_inputs=partial(_make_inputs, dims, ("f", "m")),
        ours=partial(fastreg.local_correlation, radius=RADIUS, scale="rsqrt_channels", padding_mode="zeros"),
        peers={
            "torch-shifted": partial(_scaled, reference.local_correlation),
            "vfa-unfold": partial(_scaled, reference.local_correlation_unfold),
        },
        grad_inputs=("f", "m"),
        bytes_moved=partial(_bytes_moved, ("f", "m"), (2 * RADIUS + 1) ** ndim),
        dims=dims,
    )


def _scaled(form, f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """A reference form of local_correlation with DP-Conv-C's scale C^-1/2 and zero padding."""
    return form(f, m, RADIUS, f.shape[1] ** -0.5, "zeros")


def _make_inputs(dims, names, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {name: torch.randn(dims, device=device, dtype=dtype) for name in names}


def _bytes_moved(names, out_channels: int, inputs: dict[str, torch.Tensor]) -> tuple[int, int]:
    x = inputs[names[0]]
    return io_bytes(inputs, x.nbytes // x.shape[1] * out_channels, names)
