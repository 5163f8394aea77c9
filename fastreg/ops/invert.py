"""invert_field: the inverse of a displacement field by fixed-point iteration.

Contract (every backend; each iteration is one fused fastreg.warp call, no grid tensor):
  disp  (B, ndim, *S)  displacement u of the map phi(x) = x + u(x), in voxels; channel a
                       moves along spatial axis a (ij order: (D, H, W) in 3-D); 2-D (H, W)
                       or 3-D (D, H, W); float32/float64 (float16/bfloat16 where warp runs them)
  out   (B, ndim, *S)  displacement w of phi^-1 on the same grid, the fixed point of
                       w(x) = -u(x + w(x)): phi(x + w(x)) = x, so compose(u, w) = 0, and
                       compose(w, u) ~ 0 where phi is invertible
Iteration: w_1 = -u, then w_{k+1} = -warp(u, w_k) (linear interpolation, voxel centres at
integer indices, ``padding_mode`` beyond the grid: "border" continues the edge displacement).
The map w -> -u(x + w) is a contraction with rate max |grad u| (the Jacobian's spectral norm,
per voxel) wherever that is below 1, so the iteration converges geometrically: |grad u| <=
0.5 gains a factor 2 per iteration. The equation is voxel-wise (w(x) depends on u alone), so
each voxel stops as soon as its own change |w_{k+1} - w_k| is below ``tol`` voxels, and the
later iterations sample u only at the voxels still moving (fastreg.sample at their
positions): a few steep or folding voxels no longer cost whole-grid iterations. The call
stops after ``iterations`` evaluations or when every voxel has stopped.

Steep fields: where |grad u| >= 1 the map is no contraction and the plain iteration may
oscillate; at the voxels that have not converged after ``iterations`` evaluations (and
``tol`` > 0), up to ``iterations`` Newton steps follow from their last iterate, w <- w - (I + J)^-1 (w + u(x + w)),
J the central-difference gradient of u sampled at x + w (fastreg/reference/invert.py): they
converge wherever det(I + grad u) > 0 (linearly, J being approximate), so a steep but
invertible field (a two-pass model's, say) is inverted. Non-convergence: a folding field
(det(I + grad u) <= 0 somewhere) has no inverse; then the last iterate is returned and an
``InversionWarning`` (a RuntimeWarning) states the last change. (With "border" padding the
iterates of a fold may instead settle on one branch of it: compose(u, w) = 0 still holds there
but compose(w, u) cannot; look for folds with fastreg.jacobian_det.) ``tol=0`` runs exactly
``iterations`` evaluations and never warns. NaN in u gives NaN in w where u is NaN and where
w samples it; the stopping test ignores NaN entries. The gradient to u is NaN at every voxel
where w is NaN (all channels; the ``reference`` backend's unrolled iterations also spread it
to the voxels they sampled on the way there) and the same on every backend elsewhere.

Gradient (the ``cpu``/``cuda``/``triton`` backends): implicit, at the fixed point, not through
the iterations. From w + u(x + w) = 0: dw = -(I + J)^-1 du(x + w), J = grad u at x + w(x)
(the exact derivative of the linear interpolant, warp's position gradient). The backward
solves (I + J)^T lam = grad_w per voxel and returns grad_u = -warp's image gradient of lam:
ndim + 1 warp backward calls, only u and w stored, whatever the number of iterations. It is
exact when the forward converged (error of the order of the last change otherwise). A
backward with ``create_graph=True`` (a gradient penalty, a Hessian-vector product) instead
repeats the iterations with u in the graph and differentiates through them, as the
``reference`` backend always does (fastreg/reference/invert.py); the two agree at convergence. invert_field is a Python
function over the warp custom op, not a custom op itself: its iteration count depends on
the data, so torch.compile breaks the graph around the loop and traces each warp (with
``tol=0`` the loop is fixed and compiles with ``fullgraph=True``). Under torch.compile the
gradient goes through the iterations of the warp op (dynamo cannot trace the implicit
backward), as on the ``reference`` backend.
"""
from __future__ import annotations

import warnings

import torch

from fastreg import _backend
from fastreg import _validate as check
from fastreg.ops.warp import PADDINGS, sample, warp
from fastreg.reference import invert as reference


class InversionWarning(RuntimeWarning):
    """invert_field stopped before its change fell below ``tol``."""


def invert_field(
    disp: torch.Tensor,
    *,
    iterations: int = 50,
    tol: float = 1e-4,
    padding_mode: str = "border",
) -> torch.Tensor:
    """Inverse (B, ndim, *S) in voxels of the displacement ``disp`` (B, ndim, *S) in voxels.

    ``iterations``: most evaluations of the fixed-point map (the first is free: w = -u);
    ``tol``: stop once the largest change is below this many voxels (default 1e-4; the
    float32 rounding of a few-voxel field is about 1e-6). Example::

        inverse = fastreg.invert_field(disp)
        assert fastreg.compose(disp, inverse).abs().max() < 1e-3   # for a smooth disp
    """
    check.tensor(disp, "disp")
    ndim = check.spatial_ndim(disp, "disp", check.FIELD)
    check.field(disp, "disp", ndim)
    iterations = check.positive_int(iterations, "iterations")
    tol = check.non_negative(tol, "tol")
    check.choice(padding_mode, "padding_mode", PADDINGS)
    if disp.numel() == 0:
        return _backend.empty_result(tuple(disp.shape), disp)
    if _backend.select("warp", disp.device) == "reference":
        w, update = _backend.run_reference(reference.fixed_point, disp, iterations, tol, padding_mode)
    elif torch.compiler.is_compiling():  # dynamo cannot trace _Implicit's backward: unroll
        w, update = reference.fixed_point(disp, iterations, tol, padding_mode, warp=warp, sample=sample)
    else:
        w, update = _Implicit.apply(disp, iterations, tol, padding_mode)
    if tol > 0 and not update < tol:
        warnings.warn(
            f"invert_field: stopped after {iterations} iterations with a last change of {update:.3g} voxels "
            f"(tol {tol:g}); the field may fold or have |grad u| >= 1, the result is the last iterate",
            InversionWarning,
            stacklevel=2,
        )
    return w


class _Implicit(torch.autograd.Function):
    """The fixed point with the implicit-function gradient (the module docstring)."""

    @staticmethod
    def forward(ctx, u, iterations, tol, padding_mode):
        with torch.no_grad():
            w, update = reference.fixed_point(u, iterations, tol, padding_mode, warp=warp, sample=sample)
        ctx.save_for_backward(u, w)
        ctx.padding_mode, ctx.iterations, ctx.tol = padding_mode, iterations, tol
        return w, update

    @staticmethod
    def backward(ctx, grad_w, _grad_update):
        u, w = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate through the iterations
            w_unrolled, _ = reference.fixed_point(u, ctx.iterations, ctx.tol, ctx.padding_mode)
            (grad_u,) = torch.autograd.grad(w_unrolled, u, grad_w, create_graph=True)
            return grad_u, None, None, None
        ndim = u.shape[1]
        with torch.enable_grad():
            u_ = u.detach().requires_grad_(True)
            w_ = w.detach().requires_grad_(True)
            sampled = warp(u_, w_, "bilinear", ctx.padding_mode)
            rows = []  # rows[c][:, a] = d u_c / d x_a at x + w(x)
            for c in range(ndim):
                pick = torch.zeros_like(sampled)
                pick[:, c] = 1
                rows.append(torch.autograd.grad(sampled, w_, pick, retain_graph=True)[0])
            jac = torch.stack(rows, dim=1)  # (B, c, a, *S)
            # (I + J)^T lam = grad_w per voxel: system matrix [a, c] = delta_ac + J[c, a]
            system = jac.movedim((1, 2), (-1, -2)) + torch.eye(ndim, dtype=u.dtype, device=u.device)
            lam = torch.linalg.solve_ex(system, grad_w.movedim(1, -1).unsqueeze(-1))[0]
            lam = lam.squeeze(-1).movedim(-1, 1)
            (grad_u,) = torch.autograd.grad(sampled, u_, -lam)
        # w(x) is NaN where it sampled a NaN of u: its derivative is undefined there
        undefined = torch.isnan(w).any(dim=1, keepdim=True)
        return torch.where(undefined, torch.full_like(grad_u, float("nan")), grad_u), None, None, None
