"""The registration ops the way the models' authors' public code computes them, as one
``fastreg.models.kernels.Kernels`` table (PEER_KERNELS): a model with
``model.kernels = PEER_KERNELS`` is the same architecture with the same weights on the
peers' ops, the baseline of the model benchmarks (fastreg.bench.model_cases).

  warp           VoxelMorph's legacy SpatialTransformer (an ij grid buffer per size and
                 padding, normalised, F.grid_sample; fastreg.bench.cases.warp)
  compose        v + warp(u, v) with that transformer (border padding, as fastreg.compose)
  resize_field   VoxelMorph's ResizeTransform: vectors times the factor, then
                 F.interpolate(linear, align_corners=True); ``size`` as fastreg's
  integrate_svf  VoxelMorph's legacy VecInt loop (fastreg.bench.cases.integrate), one per size
  vfa_attention, local_correlation
                 unfold + matmul, the VFA papers' form (fastreg.reference.correlation)
The loss's similarity of the peers is VoxelMorph's convolution NCC
(fastreg.reference.lncc.voxelmorph_ncc): ``peer_lncc``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastreg.bench.cases.integrate import VxmLegacyVecInt
from fastreg.bench.cases.warp import VxmLegacyTransformer
from fastreg.models.kernels import Kernels
from fastreg.reference import correlation
from fastreg.reference.lncc import voxelmorph_ncc

_TRANSFORMERS: dict = {}  # (padding_mode, spatial shape) -> the module a model would hold
_INTEGRATORS: dict = {}  # (steps, spatial shape) -> VecInt


def _transformer(padding_mode: str, shape) -> VxmLegacyTransformer:
    key = (padding_mode, tuple(shape))
    if key not in _TRANSFORMERS:
        _TRANSFORMERS[key] = VxmLegacyTransformer("bilinear", padding_mode)
    return _TRANSFORMERS[key]


def warp(image: torch.Tensor, disp: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    return _transformer(padding_mode, disp.shape[2:])(image, disp)


def compose(u: torch.Tensor, v: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    return v + warp(u, v, padding_mode)


def resize_field(u: torch.Tensor, size=None, scale_factor=None) -> torch.Tensor:
    ndim = u.dim() - 2
    mode = ("bilinear", "trilinear")[ndim - 2]
    if scale_factor is not None:
        return F.interpolate(u * scale_factor, scale_factor=scale_factor, mode=mode, align_corners=True)
    factors = [(n - 1) / (o - 1) if o > 1 else 1.0 for n, o in zip(size, u.shape[2:])]
    scale = torch.tensor(factors, dtype=u.dtype, device=u.device).view(1, ndim, *[1] * ndim)
    return F.interpolate(u, size=tuple(size), mode=mode, align_corners=True) * scale


def integrate_svf(v: torch.Tensor, steps: int = 7) -> torch.Tensor:
    key = (steps, tuple(v.shape[2:]))
    if key not in _INTEGRATORS:
        _INTEGRATORS[key] = VxmLegacyVecInt(steps)
    return _INTEGRATORS[key](v)


def vfa_attention(q: torch.Tensor, k: torch.Tensor, radius: int = 1) -> torch.Tensor:
    return correlation.vfa_attention_unfold(q, k, radius)


def local_correlation(f, m, radius: int = 1, scale="rsqrt_channels", padding_mode: str = "zeros") -> torch.Tensor:
    value = f.shape[1] ** -0.5 if scale == "rsqrt_channels" else (1.0 if scale is None else scale)
    return correlation.local_correlation_unfold(f, m, radius, value, padding_mode)


def peer_lncc(fixed: torch.Tensor, moved: torch.Tensor, window: int = 9) -> torch.Tensor:
    """Mean squared local cc (9^ndim box) by VoxelMorph's five convolutions."""
    return -voxelmorph_ncc(fixed, moved, window)


PEER_KERNELS = Kernels(
    warp=warp,
    compose=compose,
    resize_field=resize_field,
    integrate_svf=integrate_svf,
    vfa_attention=vfa_attention,
    local_correlation=local_correlation,
)
