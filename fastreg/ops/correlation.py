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
import numbers

import torch

from fastreg import _backend, _extension
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
    f, m = _check_pair(*_backend.autocast_promote(f, m), "f", "m")
    _check_radius(radius, f.shape[2:])
    s = _scale(scale, f.shape[1])
    p = check.choice(padding_mode, "padding_mode", PADDINGS)
    shape = (f.shape[0], _num_offsets(radius, f.dim() - 2), *f.shape[2:])
    if math.prod(shape) == 0:
        return _backend.empty_result(shape, f, m)
    backend = _backend.select("local_correlation", f.device)
    if backend == "reference":
        return _backend.run_reference(reference.local_correlation, f, m, radius, s, padding_mode)
    if backend == "triton":
        from fastreg.triton import correlation as triton_correlation

        return triton_correlation.local_correlation_forward(f, m, radius, s, p)
    return torch.ops.fastreg.local_correlation_forward(f, m, radius, s, p)


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
    q, k = _check_pair(*_backend.autocast_promote(q, k), "q", "k")
    _check_radius(radius, q.shape[2:])
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
    if backend == "triton":
        from fastreg.triton import correlation as triton_correlation

        return triton_correlation.vfa_attention_forward(q, k, radius, scale)[0]
    return torch.ops.fastreg.vfa_attention_forward(q, k, radius, scale)[0]


def _check_pair(a, b, name_a: str, name_b: str) -> tuple[torch.Tensor, torch.Tensor]:
    check.tensor(a, name_a)
    check.tensor(b, name_b)
    check.spatial_ndim(a, name_a)
    check.channels(a, name_a)
    check.same_device([(name_a, a), (name_b, b)])
    check.same_dtype([(name_a, a), (name_b, b)])
    if b.dim() != a.dim():
        raise ValueError(f"{name_b}: expected a {a.dim()}-D tensor like {name_a}, got shape {tuple(b.shape)}")
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"{name_b}: expected {a.shape[1]} channels (those of {name_a}), got {b.shape[1]}")
    if b.shape[2:] != a.shape[2:]:
        raise ValueError(
            f"{name_b}: expected spatial size {tuple(a.shape[2:])} (that of {name_a}), got {tuple(b.shape[2:])}"
        )
    if a.shape[0] != b.shape[0]:
        if b.shape[0] == 1:
            b = b.expand(a.shape[0], *b.shape[1:])
        elif a.shape[0] == 1:
            a = a.expand(b.shape[0], *a.shape[1:])
        else:
            check.batch_broadcast(b, name_b, a.shape[0], name_a)
    return a, b


def _check_radius(radius, shape) -> None:
    """1 <= radius <= the largest spatial size (beyond it every added offset reads padding
    only, and the (2r+1)^ndim offsets grow without bound)."""
    check.int_in_range(radius, "radius", 1, max(max(shape), 1), f"at most the largest spatial size of {tuple(shape)}")


def _scale(scale, channels: int) -> float:
    if scale is None:
        return 1.0
    if isinstance(scale, str):
        if scale != "rsqrt_channels":
            raise ValueError(f"scale: expected 'rsqrt_channels', None or a number, got {scale!r}")
        return channels**-0.5
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale: expected 'rsqrt_channels', None or a number, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number, got {scale}")
    return float(scale)


# --- torch.library registration: fake (meta) kernels and autograd -----------------------


def _num_offsets(radius: int, ndim: int) -> int:
    return (2 * radius + 1) ** ndim


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the log-sum-exp and of the kernels' sums (float32 for half types)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake_correlation_forward(f, m, radius, scale, padding):
    return f.new_empty((f.shape[0], _num_offsets(radius, f.dim() - 2), *f.shape[2:]))


def _fake_correlation_backward(grad_out, f, m, radius, scale, padding, output_mask):
    grad_f = f.new_empty(f.shape) if output_mask[0] else f.new_empty((0,))
    grad_m = m.new_empty(m.shape) if output_mask[1] else m.new_empty((0,))
    return grad_f, grad_m


def _fake_vfa_forward(q, k, radius, scale):
    ndim = q.dim() - 2
    out = q.new_empty((q.shape[0], ndim, *q.shape[2:]))
    lse = q.new_empty((q.shape[0], *q.shape[2:]), dtype=accumulation_dtype(q.dtype))
    return out, lse


def _fake_vfa_backward(grad_out, q, k, out, lse, radius, scale, output_mask):
    grad_q = q.new_empty(q.shape) if output_mask[0] else q.new_empty((0,))
    grad_k = k.new_empty(k.shape) if output_mask[1] else k.new_empty((0,))
    return grad_q, grad_k


def _setup_correlation(ctx, inputs, output):
    f, m, radius, scale, padding = inputs
    ctx.save_for_backward(f, m)
    ctx.args = (radius, scale, padding)


def _setup_vfa(ctx, inputs, output):
    q, k, radius, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, out, lse)
    ctx.args = (radius, scale)


def register_autograd(correlation_ops: tuple[str, object], vfa_ops: tuple[str, object]) -> None:
    """Register the backward ops (same schemas as fastreg::local_correlation_backward and
    fastreg::vfa_attention_backward) as the gradients of the forward ops named beside them."""
    correlation_forward, correlation_backward = correlation_ops
    vfa_forward, vfa_backward = vfa_ops

    def correlation_grad(ctx, grad):
        f, m = ctx.saved_tensors
        need = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])]
        if torch.is_grad_enabled():  # create_graph=True
            radius, scale, padding = ctx.args
            grad_f, grad_m = _backend.differentiable_backward(
                lambda x, y: reference.local_correlation(x, y, radius, scale, PADDINGS[padding]), (f, m), need, grad
            )
        else:
            grad_f, grad_m = correlation_backward(grad, f, m, *ctx.args, need)
        return (grad_f if need[0] else None, grad_m if need[1] else None, None, None, None)

    def vfa_grad(ctx, grad, _grad_lse):
        q, k, out, lse = ctx.saved_tensors
        need = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])]
        if torch.is_grad_enabled():  # create_graph=True
            radius, scale = ctx.args
            grad_q, grad_k = _backend.differentiable_backward(
                lambda x, y: reference.vfa_attention(x, y, radius, 1.0 / scale), (q, k), need, grad
            )
        else:
            grad_q, grad_k = vfa_backward(grad, q, k, out, lse, *ctx.args, need)
        return (grad_q if need[0] else None, grad_k if need[1] else None, None, None)

    torch.library.register_autograd(correlation_forward, correlation_grad, setup_context=_setup_correlation)
    torch.library.register_autograd(vfa_forward, vfa_grad, setup_context=_setup_vfa)


def register_fakes(names: tuple[str, str, str, str]) -> None:
    """Fake kernels for (correlation forward, correlation backward, vfa forward, vfa backward)."""
    fakes = (_fake_correlation_forward, _fake_correlation_backward, _fake_vfa_forward, _fake_vfa_backward)
    for name, fake in zip(names, fakes):
        torch.library.register_fake(name)(fake)


if _extension.AVAILABLE:
    register_fakes(
        (
            "fastreg::local_correlation_forward",
            "fastreg::local_correlation_backward",
            "fastreg::vfa_attention_forward",
            "fastreg::vfa_attention_backward",
        )
    )
    register_autograd(
        ("fastreg::local_correlation_forward", torch.ops.fastreg.local_correlation_backward),
        ("fastreg::vfa_attention_forward", torch.ops.fastreg.vfa_attention_backward),
    )
