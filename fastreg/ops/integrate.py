"""integrate_svf, resize_field: scaling and squaring of stationary velocity fields, and
resampling of displacement fields to another grid.

Contract (every backend; per-element math in csrc/integrate/integrate.h):
  v    (B, ndim, *S)   stationary velocity in voxels; channel a moves along spatial axis a
                       (ij order: (D, H, W) in 3-D); 2-D (H, W) or 3-D (D, H, W) spatial
  out  (B, ndim, *S)   displacement of exp(v): u = v / 2**steps, then ``steps`` times
                       u = u + warp(u, u) with linear interpolation and voxel centres at
                       integer indices (align_corners=True): exactly VoxelMorph's VecInt and
                       MONAI's DVF2DDF for the same steps and padding_mode.
One fused kernel per step (each voxel reads u at itself and its stencil, writes once); no
grid tensor. The backward runs one fused kernel per step (g + the sampling's position
gradient at each voxel, its value gradient scattered to the stencil corners: exact, warp's
math chained) and keeps one field per step (steps - 1 fields besides v; none when no
gradient is needed) and no per-step autograd graph. ``checkpoint=True`` keeps no field:
the backward recomputes each u_k from v (steps * (steps - 1) / 2 extra forward steps, at
most two fields alive), with the same result (bit for bit on the CPU, whose scatter is
deterministic; CUDA and Triton scatter with atomic adds).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from fastreg import _backend, _extension
from fastreg import _validate as check
from fastreg.ops.warp import PADDINGS
from fastreg.reference import integrate as reference

FIELD = "(B, 2, H, W) or (B, 3, D, H, W)"


def integrate_svf(v: torch.Tensor, steps: int = 7, padding_mode: str = "zeros", checkpoint: bool = False) -> torch.Tensor:
    """Integrate the stationary velocity ``v`` (B, ndim, *S) by scaling and squaring.

    Returns the displacement (B, ndim, *S) in voxels. ``steps=0`` returns ``v`` itself.
    Defaults follow VoxelMorph's ``VxmDense(int_steps=7)`` and MONAI's ``DVF2DDF(num_steps=7,
    padding_mode="zeros")``. ``checkpoint=True`` stores no intermediate field for the backward
    (recomputes them from v: O(1) fields instead of steps - 1, for large volumes, at the cost
    of steps * (steps - 1) / 2 extra forward steps). Example::

        disp = fastreg.integrate_svf(velocity)               # VoxelMorph VecInt(inshape, 7)
        disp = fastreg.integrate_svf(velocity, steps=5, checkpoint=True)
    """
    check.tensor(v, "v")
    ndim = check.spatial_ndim(v, "v", FIELD)
    check.field(v, "v", ndim)
    steps = check.non_negative_int(steps, "steps")
    padding = check.choice(padding_mode, "padding_mode", PADDINGS)
    if not isinstance(checkpoint, bool):
        raise TypeError(f"checkpoint: expected a bool, got {type(checkpoint).__name__}")
    if steps == 0:
        return v
    backend = _backend.select("integrate", v.device)
    if backend == "reference":
        if checkpoint:
            return torch.utils.checkpoint.checkpoint(
                reference.integrate_svf, v, steps, padding_mode, use_reentrant=False
            )
        return reference.integrate_svf(v, steps, padding_mode)
    # Fields are kept for the backward only when one will run and checkpointing is off.
    save = not checkpoint and torch.is_grad_enabled() and v.requires_grad
    if backend == "triton":
        from fastreg.triton import integrate as triton_integrate

        return triton_integrate.integrate_svf_forward(v, steps, padding, save)[0]
    return torch.ops.fastreg.integrate_svf_forward(v, steps, padding, save)[0]


def resize_field(
    u: torch.Tensor,
    size: int | Sequence[int] | None = None,
    scale_factor: float | Sequence[float] | None = None,
) -> torch.Tensor:
    """Resample the displacement ``u`` (B, ndim, *S) to another grid and rescale its vectors.

    Give exactly one of ``size`` (the new spatial size) and ``scale_factor`` (a float, or one
    per axis). Linear interpolation with align_corners=True (voxel centres at integer
    indices, corners fixed), then channel a is multiplied by the factor f_a of its axis:
      * ``scale_factor``: f_a = scale_factor[a], and the new size is floor(S_a * f_a), exactly
        VoxelMorph's ``ResizeTransform(vel_resize=1/f, ndims)`` (its ``VxmDense(int_downsize)``
        resizing) and ``ResizeDisplacementField(scale_factor=f)``. A factor of 1 on every axis
        returns ``u`` itself, as VoxelMorph does.
      * ``size``: f_a = (size_a - 1) / (S_a - 1), the exact factor between the two grids under
        align_corners=True (1 where S_a == 1); ``size == S`` returns ``u`` itself.
    Returns (B, ndim, *S_new). Gradients flow to ``u``.
    """
    check.tensor(u, "u")
    ndim = check.spatial_ndim(u, "u", FIELD)
    check.field(u, "u", ndim)
    if (size is None) == (scale_factor is None):
        raise ValueError("size, scale_factor: expected exactly one of them, got "
                         f"size={size!r}, scale_factor={scale_factor!r}")
    old = tuple(u.shape[2:])
    if scale_factor is not None:
        factors = _per_axis(scale_factor, "scale_factor", ndim, float)
        if any(not math.isfinite(f) or f <= 0 for f in factors):
            raise ValueError(f"scale_factor: expected positive finite factors, got {scale_factor!r}")
        if all(f == 1 for f in factors):
            return u
        resize = dict(scale_factor=factors)
        new = tuple(math.floor(s * f) for s, f in zip(old, factors))
    else:
        new = _per_axis(size, "size", ndim, int)
        if any(s < 1 for s in new):
            raise ValueError(f"size: expected positive sizes, got {size!r}")
        if new == old:
            return u
        factors = tuple((n - 1) / (o - 1) if o > 1 else 1.0 for n, o in zip(new, old))
        resize = dict(size=new)
    if len(set(factors)) == 1:
        scale = factors[0]
    else:
        scale = torch.tensor(factors, dtype=u.dtype, device=u.device).view(1, ndim, *([1] * ndim))
    mode = "bilinear" if ndim == 2 else "trilinear"
    # Scale the smaller of the two fields (VoxelMorph's order: shrink first, grow last).
    if math.prod(new) < math.prod(old):
        return F.interpolate(u, mode=mode, align_corners=True, **resize) * scale
    return F.interpolate(u * scale, mode=mode, align_corners=True, **resize)


def _per_axis(value, name: str, ndim: int, kind: type) -> tuple:
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected a number or a sequence of {ndim}, got bool")
    if isinstance(value, (int, float)) and (kind is float or isinstance(value, int)):
        return (kind(value),) * ndim
    if isinstance(value, Sequence) and len(value) == ndim and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and (kind is float or isinstance(x, int)) for x in value
    ):
        return tuple(kind(x) for x in value)
    what = "int" if kind is int else "number"
    raise TypeError(f"{name}: expected an {what} or a sequence of {ndim} of them (one per spatial axis), got {value!r}")


# --- torch.library registration: fake (meta) kernels and autograd -----------------------


def _fake_forward(v, steps, padding, save):
    saved = v.new_empty((steps - 1, *v.shape)) if save and steps > 0 else v.new_empty((0,))
    return v.new_empty(v.shape), saved


def _fake_backward(grad_out, v, saved, steps, padding):
    return v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    v, steps, padding, save = inputs
    ctx.save_for_backward(v, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # else autograd allocates zeros for all saved fields
    ctx.args = (steps, padding)


def register_autograd(forward_op, backward_op) -> None:
    """Register ``backward_op`` (schema of fastreg::integrate_svf_backward) as the gradient
    of ``forward_op`` (schema of fastreg::integrate_svf_forward)."""

    def backward(ctx, grad_out, grad_saved):
        if grad_out is None:
            return None, None, None, None
        v, saved = ctx.saved_tensors
        return backward_op(grad_out, v, saved, *ctx.args), None, None, None

    torch.library.register_autograd(forward_op, backward, setup_context=_setup_context)


def register_fakes(forward_op, backward_op) -> None:
    torch.library.register_fake(forward_op)(_fake_forward)
    torch.library.register_fake(backward_op)(_fake_backward)


if _extension.AVAILABLE:
    register_fakes("fastreg::integrate_svf_forward", "fastreg::integrate_svf_backward")
    register_autograd("fastreg::integrate_svf_forward", torch.ops.fastreg.integrate_svf_backward)
