"""integrate_svf: scaling and squaring of stationary velocity fields.

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
binomial checkpointing schedule (``fastreg._checkpoint.checkpoint_plan``: Griewank and
Walther's revolve, with the forward sweep placing the first snapshots for free). The result does not depend on
``checkpoints``: bit for bit on the CPU, whose scatter is deterministic; up to the order of
atomic adds on CUDA and Triton.
"""
from __future__ import annotations

import torch

from fastreg import _backend, _library
from fastreg import _validate as check
from fastreg._checkpoint import checkpoint_plan
from fastreg.ops.warp import PADDINGS
from fastreg.reference import integrate as reference


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
    ndim = check.spatial_ndim(v, "v", check.FIELD)
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
    backend = _backend.select("integrate_svf", v.device)
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
    return _library.kernel("integrate_svf_forward", backend)(v, steps, padding, keep)[0]


# --- the op family's declaration (fastreg/_library.py) ------------------------------------


def _fake_forward(v, steps, padding, keep):
    return v.new_empty(v.shape), v.new_empty((len(keep), *v.shape))


def _backward_args(steps, padding, keep):
    """The backward's recompute schedule: the plan's pushes, when keep is the plan's for its size."""
    plan_keep, pushes = checkpoint_plan(steps, len(keep)) if steps > 0 else ((), ())
    return steps, padding, list(keep), list(pushes) if tuple(keep) == plan_keep else []


def _reference(v, steps, padding, keep):
    return reference.integrate_svf(v, steps, PADDINGS[padding])


FAMILY = _library.Family(
    name="integrate",
    fakes={"integrate_svf_forward": _fake_forward},
    autograd=(
        _library.Autograd(
            "integrate_svf_forward", "integrate_svf_backward", _reference,
            saved_outputs=(1,), output_mask=False, backward_args=_backward_args,
        ),
    ),
)
if _library.triton_runnable():
    from fastreg.triton import integrate as _triton  # noqa: F401  (defines fastreg::integrate_svf_*_triton)
_library.register(FAMILY)
