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
math chained) and builds no per-step autograd graph. What it keeps is set by
``checkpoints``, the number of intermediate fields u_k stored for the backward: the fields
it lacks are recomputed from the nearest stored one below (v is always at hand) on a
binomial checkpointing schedule (``checkpoint_plan``: Griewank and Walther's revolve, with
the forward sweep placing the first snapshots for free). The result does not depend on
``checkpoints``: bit for bit on the CPU, whose scatter is deterministic; up to the order of
atomic adds on CUDA and Triton.
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


def integrate_svf(v: torch.Tensor, steps: int = 7, padding_mode: str = "zeros", checkpoints: int | None = 1) -> torch.Tensor:
    """Integrate the stationary velocity ``v`` (B, ndim, *S) by scaling and squaring.

    Returns the displacement (B, ndim, *S) in voxels. ``steps=0`` returns ``v`` itself.
    Defaults follow VoxelMorph's ``VxmDense(int_steps=7)`` and MONAI's ``DVF2DDF(num_steps=7,
    padding_mode="zeros")``.

    ``checkpoints``: how many intermediate fields (each the size of v) the backward may hold
    at once; it changes memory and time, never the result. Peak memory of forward+backward
    is ``checkpoints + 4`` fields (output, two gradients, the field being differentiated or
    two while recomputing; on the CPU also a few slices of halo), and the backward recomputes the missing fields with as few
    extra steps as that allows (``checkpoint_plan``):
      * 1 (default): 5 fields; 7 steps recompute 9 steps, 5 steps 4;
      * 0: 4 fields, ``steps * (steps - 1) / 2`` extra steps;
      * None (or >= steps - 1): keeps every field, ``steps + 2`` fields, no recomputation.
    No field is kept when no gradient is needed. Example::

        disp = fastreg.integrate_svf(velocity)                   # VoxelMorph VecInt(inshape, 7)
        disp = fastreg.integrate_svf(velocity, checkpoints=None)  # fastest backward, most memory
    """
    check.tensor(v, "v")
    ndim = check.spatial_ndim(v, "v", FIELD)
    check.field(v, "v", ndim)
    steps = check.squaring_steps(steps, "steps")
    padding = check.choice(padding_mode, "padding_mode", PADDINGS)
    if checkpoints is not None:
        checkpoints = check.non_negative_int(checkpoints, "checkpoints")
    if steps == 0:
        return v
    if v.numel() == 0:
        return _backend.empty_result(v.shape, v)
    keep_all = checkpoints is None or checkpoints >= steps - 1
    backend = _backend.select("integrate", v.device)
    if backend == "reference":
        if not keep_all:
            return _backend.run_reference(
                lambda *a: torch.utils.checkpoint.checkpoint(reference.integrate_svf, *a, use_reentrant=False),
                v, steps, padding_mode,
            )
        return _backend.run_reference(reference.integrate_svf, v, steps, padding_mode)
    # Fields are kept for the backward only when one will run.
    needs_grad = torch.is_grad_enabled() and v.requires_grad
    keep = list(checkpoint_plan(steps, steps if keep_all else checkpoints)[0]) if needs_grad else []
    if backend == "triton":
        from fastreg.triton import integrate as triton_integrate

        return triton_integrate.integrate_svf_forward(v, steps, padding, keep)[0]
    return torch.ops.fastreg.integrate_svf_forward(v, steps, padding, keep)[0]


def checkpoint_plan(steps: int, checkpoints: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The checkpointing schedule of ``steps`` squaring steps with ``checkpoints`` fields.

    Returns ``(keep, pushes)``, both of step indices k in [1, steps - 1] (u_k is the field
    before step k; u_0 = v is always at hand):
      keep    the fields the forward stores for the backward (increasing); autograd holds
              them until the backward ends;
      pushes  the fields the backward stores while it recomputes, in the order it makes them
              (each freed once the steps above it are done).
    The backward reverses the steps from the last: for step k it drops the stored fields
    above k, makes the next ``pushes`` entries that lie between the highest stored field
    and k (each advanced from the one below), then advances from the highest stored field
    to u_k. At most ``checkpoints`` fields are stored at once: len(keep) + the pushes alive.

    Minimal recomputation: the kept fields cut the steps into segments, each reversed from
    its first field with the s = checkpoints - len(keep) slots left, by binomial
    checkpointing (Griewank and Walther's revolve):
      F(L, s) = min(F(L, s - 1), min_j  j + F(L - j, s - 1) + F(j, s)),  F(1, s) = 0,
      F(L, 0) = L (L - 1) / 2  (every field of the segment recomputed from its start).
    The number kept and the cuts minimise the sum of F over the segments; ties go to fewer
    kept fields, then to the shorter first segment and the smaller j.
    """
    slots = max(min(checkpoints, steps - 1), 0)
    if slots == steps - 1:  # every field kept
        return tuple(range(1, steps)), ()
    if torch.compiler.is_compiling():  # traced once into constants; no cache to mutate (or guard)
        return _plan(steps, slots)
    key = (steps, slots)
    if key not in _PLANS:  # a dict, not functools.lru_cache, which torch.compile warns about
        _PLANS[key] = _plan(steps, slots)
    return _PLANS[key]


_PLANS: dict[tuple[int, int], tuple[tuple[int, ...], tuple[int, ...]]] = {}


def _plan(steps: int, slots: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    best = None  # (extra steps, kept, segment lengths)
    for kept in range(slots + 1):
        table = _revolve_table(steps, slots - kept)
        cost, lengths = _best_cuts(steps, kept, [row[slots - kept][0] for row in table])
        if best is None or cost < best[0]:
            best = (cost, kept, lengths, table)
    _, kept, lengths, table = best
    keep: list[int] = []
    pushes: list[int] = []

    def reverse(start: int, length: int, free: int) -> None:
        while free > 0 and table[length][free][1] == 0:
            free -= 1  # this segment gains nothing from its last slot
        if length <= 1 or free == 0:
            return
        j = table[length][free][1]
        pushes.append(start + j)
        reverse(start + j, length - j, free - 1)
        reverse(start, j, free)

    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    keep.extend(starts[1:])
    for start, length in reversed(list(zip(starts, lengths))):  # the backward's order
        reverse(start, length, slots - kept)
    return tuple(keep), tuple(pushes)


def _revolve_table(steps: int, slots: int) -> list[list[tuple[int, int]]]:
    """table[L][s] = (F(L, s), its split j; 0: the s-th slot is not used) for L <= steps."""
    table = [[(0, 0)] * (slots + 1) for _ in range(steps + 1)]
    for length in range(2, steps + 1):
        table[length][0] = (length * (length - 1) // 2, 0)
        for s in range(1, slots + 1):
            best = (table[length][s - 1][0], 0)
            for j in range(1, length):
                cost = j + table[length - j][s - 1][0] + table[j][s][0]
                if cost < best[0]:
                    best = (cost, j)
            table[length][s] = best
    return table


def _best_cuts(steps: int, kept: int, cost: list[int]) -> tuple[int, list[int]]:
    """Cuts steps into kept + 1 positive lengths minimising sum(cost[length])."""
    if kept >= steps:
        return (1 << 62), []
    # best[i, k]: (cost, lengths) of the first i steps in k + 1 segments (plain loops: the
    # planner runs under torch.compile's tracing too)
    best = {(i, 0): (cost[i], [i]) for i in range(1, steps + 1)}
    for k in range(1, kept + 1):
        for i in range(k + 1, steps + 1):
            for length in range(1, i - k + 1):
                before_cost, before = best[i - length, k - 1]
                option = (before_cost + cost[length], before + [length])
                if (i, k) not in best or option < best[i, k]:
                    best[i, k] = option
    return best[steps, kept]


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
    if u.numel() == 0 or math.prod(new) == 0:
        if 0 in old and math.prod(new) > 0:
            raise ValueError(f"u: cannot resize the empty spatial axes of a {tuple(u.shape)} field to size {new}")
        return _backend.empty_result((u.shape[0], ndim, *new), u)
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


def _fake_forward(v, steps, padding, keep):
    return v.new_empty(v.shape), v.new_empty((len(keep), *v.shape))


def _fake_backward(grad_out, v, saved, steps, padding, keep, pushes):
    return v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    v, steps, padding, keep = inputs
    ctx.save_for_backward(v, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # else autograd allocates zeros for all saved fields
    # The backward's recompute schedule: the plan's, when keep is the plan's for its size.
    plan_keep, pushes = checkpoint_plan(steps, len(keep)) if steps > 0 else ((), ())
    ctx.args = (steps, padding, list(keep), list(pushes) if tuple(keep) == plan_keep else [])


def register_autograd(forward_op, backward_op) -> None:
    """Register ``backward_op`` (schema of fastreg::integrate_svf_backward) as the gradient
    of ``forward_op`` (schema of fastreg::integrate_svf_forward)."""

    def backward(ctx, grad_out, grad_saved):
        if grad_out is None:
            return None, None, None, None
        v, saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            steps, padding = ctx.args[:2]
            (grad_v,) = _backend.differentiable_backward(
                lambda x: reference.integrate_svf(x, steps, PADDINGS[padding]), (v,), [True], grad_out
            )
            return grad_v, None, None, None
        return backward_op(grad_out, v, saved, *ctx.args), None, None, None

    torch.library.register_autograd(forward_op, backward, setup_context=_setup_context)


def register_fakes(forward_op, backward_op) -> None:
    torch.library.register_fake(forward_op)(_fake_forward)
    torch.library.register_fake(backward_op)(_fake_backward)


if _extension.AVAILABLE:
    register_fakes("fastreg::integrate_svf_forward", "fastreg::integrate_svf_backward")
    register_autograd("fastreg::integrate_svf_forward", torch.ops.fastreg.integrate_svf_backward)
