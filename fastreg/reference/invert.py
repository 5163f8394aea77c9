"""invert_field in plain differentiable torch: the oracle of the tests and the fallback
backend. The fixed-point loop is written once here; fastreg.ops.invert runs the same loop
with the dispatching warp and differentiates it implicitly, while this module's autograd
unrolls the iterations.

Contract: see fastreg/ops/invert.py.
"""
from __future__ import annotations

from typing import Callable

import torch

from fastreg.reference.warp import identity_grid
from fastreg.reference.warp import sample as reference_sample
from fastreg.reference.warp import warp as reference_warp


def fixed_point(
    u: torch.Tensor,
    iterations: int,
    tol: float,
    padding_mode: str = "border",
    warp: Callable = reference_warp,
    sample: Callable = reference_sample,
) -> tuple[torch.Tensor, float]:
    """Iterate w <- -warp(u, w) from w = -u for u (B, ndim, *S) in voxels.

    The equation w(x) + u(x + w(x)) = 0 holds voxel by voxel (w(x) depends on u alone, not on
    w elsewhere), so each voxel is iterated only until its own change |w_new - w| (its
    residual; NaN counted as converged) is below ``tol``: once most voxels have converged the
    iterations sample u at the few remaining ones (``sample`` at their positions) instead of
    warping the whole grid. Stops after ``iterations`` evaluations, or when every voxel has
    converged; voxels still moving then get Newton steps (``newton``). Returns the last
    iterate and the largest last change of the voxels iterated last (inf when
    ``iterations`` is 1 or ``tol`` is 0: no change was measured, and the loop over the whole
    grid has no data-dependent branch, so torch.compile traces it whole).
    """
    if tol <= 0 or iterations == 1:
        w = -u
        for _ in range(iterations - 1):
            w = -warp(u, w, "bilinear", padding_mode)
        return w, float("inf")
    items = [_fixed_point_item(u[b:b + 1], iterations, tol, padding_mode, warp, sample) for b in range(u.shape[0])]
    return torch.cat([w for w, _ in items]), max(update for _, update in items)


def _fixed_point_item(u, iterations, tol, padding_mode, warp, sample) -> tuple[torch.Tensor, float]:
    """``fixed_point`` of one item u (1, ndim, *S) on its active voxels."""
    ndim, shape = u.shape[1], u.shape[2:]
    w = -u.flatten(2)  # (1, ndim, V)
    grid = None
    active = None  # None: every voxel
    update = float("inf")
    for _ in range(iterations - 1):
        if active is None:
            new = -warp(u, w.view(u.shape), "bilinear", padding_mode).flatten(2)
            old = w
        else:
            if grid is None:
                grid = identity_grid(shape, u.device, u.dtype).flatten(2)  # (1, ndim, V)
            old = w[:, :, active]
            new = -sample(u, _points(grid[:, :, active] + old, ndim), "bilinear", padding_mode).flatten(2)
        change = torch.nan_to_num((new - old).detach().abs(), nan=0.0).amax(1)[0]
        w = new if active is None else w.index_copy(2, active, new)
        update = change.amax().item() if change.numel() else 0.0
        if update < tol:
            return w.view(u.shape), update
        moving = torch.nonzero(change >= tol)[:, 0]
        active = moving if active is None else active[moving]
    if active is None:
        active = torch.arange(w.shape[2], device=u.device)
    if grid is None:
        grid = identity_grid(shape, u.device, u.dtype).flatten(2)  # (1, ndim, V)
    new, update = newton(u, grid[:, :, active], w[:, :, active], iterations, tol, padding_mode, sample)
    return w.index_copy(2, active, new).view(u.shape), update


def _points(coords: torch.Tensor, ndim: int) -> torch.Tensor:
    """(1, ndim, N) point coordinates as the (1, ndim, N, 1[, 1]) grid ``sample`` takes."""
    return coords.reshape(*coords.shape, *(1,) * (ndim - 1))


def newton(u: torch.Tensor, x: torch.Tensor, w: torch.Tensor, iterations: int, tol: float, padding_mode: str,
           sample: Callable) -> tuple[torch.Tensor, float]:
    """Continue from ``w`` (1, ndim, N) at the voxels ``x`` (1, ndim, N) of u (1, ndim, *S)
    where the plain iteration did not converge (|grad u| >= 1 there): at most ``iterations``
    Newton steps on w + u(x + w) = 0, w <- w - (I + J)^-1 (w + u(x + w)), with J the
    central-difference gradient of u sampled linearly at x + w (zero beyond the grid, where a
    border-padded field is constant); where det(I + J) <= 0.05 (a fold, no inverse) the plain
    step. Returns the last iterate and its largest change."""
    ndim = u.shape[1]
    grads = torch.stack([_derivative(u, 2 + a) for a in range(ndim)], 2).flatten(1, 2)  # [c, a] = d u_c / d x_a
    update = float("inf")
    for _ in range(iterations):
        at = _points(x + w, ndim)
        residual = w + sample(u, at, "bilinear", padding_mode).flatten(2)
        jac = sample(grads, at, "bilinear", "zeros").flatten(2).unflatten(1, (ndim, ndim))
        w_next = w - _solve(jac, residual)
        update = _change(w_next, w)
        w = w_next
        if update < tol:
            break
    return w, update


def _change(new: torch.Tensor, old: torch.Tensor) -> float:
    """max |new - old| over all entries, NaN entries ignored."""
    return torch.nan_to_num((new - old).detach().abs(), nan=0.0).amax().item()


def _derivative(u: torch.Tensor, dim: int) -> torch.Tensor:
    """Central differences of u along ``dim`` (one-sided at the ends; 0 on a size-1 axis)."""
    if u.shape[dim] < 2:
        return torch.zeros_like(u)
    return torch.gradient(u, dim=dim)[0]


def _solve(jac: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(I + J)^-1 r per voxel by the adjugate, J (B, n, n, *S), r (B, n, *S); r itself where
    det(I + J) <= 0.05."""
    n = r.shape[1]
    a = [[jac[:, i, j] + (1.0 if i == j else 0.0) for j in range(n)] for i in range(n)]
    if n == 2:
        det = a[0][0] * a[1][1] - a[0][1] * a[1][0]
        x = [a[1][1] * r[:, 0] - a[0][1] * r[:, 1], a[0][0] * r[:, 1] - a[1][0] * r[:, 0]]
    else:
        cof = [[a[(j + 1) % 3][(i + 1) % 3] * a[(j + 2) % 3][(i + 2) % 3]
                - a[(j + 1) % 3][(i + 2) % 3] * a[(j + 2) % 3][(i + 1) % 3] for j in range(3)] for i in range(3)]
        det = a[0][0] * cof[0][0] + a[0][1] * cof[1][0] + a[0][2] * cof[2][0]
        x = [sum(cof[i][k] * r[:, k] for k in range(3)) for i in range(3)]
    safe = det > 0.05
    step = torch.stack([xi / torch.where(safe, det, torch.ones_like(det)) for xi in x], 1)
    return torch.where(safe.unsqueeze(1), step, r)


def invert_field(disp: torch.Tensor, iterations: int = 50, tol: float = 1e-4, padding_mode: str = "border") -> torch.Tensor:
    """Displacement (B, ndim, *S) of the inverse of x -> x + disp(x), gradients through
    every iteration."""
    return fixed_point(disp, iterations, tol, padding_mode)[0]
