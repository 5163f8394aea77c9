"""local_correlation and vfa_attention: local correlation volumes and the fused
vector-field-attention step of DP-VFA.

Contract (every backend; per-element math in csrc/correlation/correlation.h):
  f, m / q, k  (B|1, C, *S)     2-D (H, W) or 3-D (D, H, W) spatial, same C and *S; a
                                batch-1 input broadcasts over the other's batch
  offsets      o_k, k < K = (2r+1)^ndim, ij order, first spatial axis outermost
               (3-D, r = 1: k = 9 (o_D + 1) + 3 (o_H + 1) + (o_W + 1))
  local_correlation(f, m, radius, scale, padding_mode) -> (B, K, *S)
      out[b, k, p] = scale * sum_c f[b, c, p] * m[b, c, p + o_k]; outside the image m is 0
      ("zeros", the product is still formed so NaN/inf in f propagate) or the nearest
      border voxel ("border"). scale: "rsqrt_channels" (C^-1/2, DP-Conv-C), None (1) or a number.
  vfa_attention(q, k, radius, temperature) -> (B, ndim, *S), a displacement in voxels
      w_k(p) = softmax_k(q(p) . k(p + o_k) / T), keys replicate-padded, T = sqrt(C) by
      default (DP-VFA); out[a, p] = sum_k w_k(p) o_k[a] (channel a along spatial axis a).
      Nothing of size K x N is kept: forward stores the per-voxel log-sum-exp (B, *S) and the
      output, backward recomputes the logits (flash-attention style) and holds one (B, K, *S)
      temporary for the gradient of the padded keys.
Gradients flow to f, m, q, k and to a tensor temperature. No (K x C) copy of the features
is built by the kernels (the reference's unfold form builds one, as the VFA papers do).
"""
from __future__ import annotations

import math

import torch

from fastreg import _backend, _library
from fastreg import _validate as check
from fastreg.reference import correlation as reference

PADDINGS = reference.PADDINGS


def local_correlation(
    f: torch.Tensor,
    m: torch.Tensor,
    radius: int = 1,
    scale: str | float | None = "rsqrt_channels",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Cost volume (B, (2r+1)^ndim, *S) of ``f`` against the neighbours of ``m``.

    Args:
        f, m: (B|1, C, *S) feature maps (fixed and moving), 2-D or 3-D.
        radius: neighbourhood radius r >= 1 (offsets -r..r along every axis).
        scale: "rsqrt_channels" (1/sqrt(C), DP-Conv-C's correlation), None (1) or a number.
        padding_mode: "zeros" (DP-Conv-C) or "border" (replicate m).

    Example::

        corr = fastreg.local_correlation(feat_fixed, feat_moving)   # (1, 27, D, H, W)
    """
    f, m = check.feature_pair(*_backend.autocast_promote(f, m), "f", "m")
    check.radius(radius, f.shape[2:])
    s = check.correlation_scale(scale, f.shape[1])
    p = check.choice(padding_mode, "padding_mode", PADDINGS)
    shape = (f.shape[0], _num_offsets(radius, f.dim() - 2), *f.shape[2:])
    if math.prod(shape) == 0:
        return _backend.empty_result(shape, f, m)
    backend = _backend.select("local_correlation", f.device)
    if backend == "reference":
        return _backend.run_reference(reference.local_correlation, f, m, radius, s, padding_mode)
    return _library.kernel("local_correlation_forward", backend)(f, m, radius, s, p)


def vfa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    radius: int = 1,
    temperature: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Vector-field attention (DP-VFA's decoder step): displacement (B, ndim, *S) in voxels.

    Args:
        q: (B|1, C, *S) queries (projected fixed features).
        k: (B|1, C, *S) keys (projected moving features), replicate-padded at the border.
        radius: neighbourhood radius r >= 1 (DP-VFA: 1, 27 neighbours in 3-D).
        temperature: softmax temperature T; None means sqrt(C) (DP-VFA). A number, or a
            one-element tensor (it then receives a gradient).

    Example::

        u = fastreg.vfa_attention(proj(feat_fixed), proj(feat_moving))   # (1, 3, D, H, W)
    """
    q, k = check.feature_pair(*_backend.autocast_promote(q, k), "q", "k")
    check.radius(radius, q.shape[2:])
    if temperature is None:
        scale = q.shape[1] ** -0.5
    elif isinstance(temperature, torch.Tensor):
        check.positive_scalar_tensor(temperature, "temperature")
        # Folding 1/T into the queries keeps the kernels scalar-free; autograd gives dT.
        q = q / temperature.to(q.dtype).reshape(())
        scale = 1.0
    else:
        scale = 1.0 / check.positive_number(temperature, "temperature")
    shape = (q.shape[0], q.dim() - 2, *q.shape[2:])
    if math.prod(shape) == 0:
        return _backend.empty_result(shape, q, k)
    backend = _backend.select("vfa_attention", q.device)
    if backend == "reference":
        return _backend.run_reference(reference.vfa_attention, q, k, radius, 1.0 / scale)
    return _library.kernel("vfa_attention_forward", backend)(q, k, radius, scale)[0]


# --- the op family's declaration (fastreg/_library.py) ------------------------------------


def _num_offsets(radius: int, ndim: int) -> int:
    return (2 * radius + 1) ** ndim


def _fake_correlation_forward(f, m, radius, scale, padding):
    return f.new_empty((f.shape[0], _num_offsets(radius, f.dim() - 2), *f.shape[2:]))


def _fake_vfa_forward(q, k, radius, scale):
    out = q.new_empty((q.shape[0], q.dim() - 2, *q.shape[2:]))
    accumulation = torch.float64 if q.dtype == torch.float64 else torch.float32  # the kernels' sums
    return out, q.new_empty((q.shape[0], *q.shape[2:]), dtype=accumulation)


def _reference_correlation(f, m, radius, scale, padding):
    return reference.local_correlation(f, m, radius, scale, PADDINGS[padding])


def _reference_vfa(q, k, radius, scale):
    return reference.vfa_attention(q, k, radius, 1.0 / scale)


FAMILY = _library.Family(
    name="correlation",
    fakes={"local_correlation_forward": _fake_correlation_forward, "vfa_attention_forward": _fake_vfa_forward},
    autograd=(
        _library.Autograd("local_correlation_forward", "local_correlation_backward", _reference_correlation, inputs=2),
        _library.Autograd("vfa_attention_forward", "vfa_attention_backward", _reference_vfa, inputs=2,
                          saved_outputs=(0, 1)),
    ),
)
if _library.triton_runnable():
    from fastreg.triton import correlation as _triton  # noqa: F401  (defines fastreg::*_triton)
_library.register(FAMILY)
