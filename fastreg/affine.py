"""affine_register: affine pre-alignment of two images (moments, then multi-scale Adam).

Contract:
  fixed    (B, 1, *S_f) or (1, *S_f)   2-D (H, W) or 3-D (D, H, W), intensities in [0, 1]
  moving   (B|1, 1, *S_m) or (1, *S_m) same dimensionality; its size may differ from fixed's
  matrix   (B, ndim + 1, ndim + 1) float64 (no batch axis for unbatched inputs), homogeneous,
           in VOXEL coordinates (ij order): it maps a voxel index x of the fixed grid to the
           voxel index A x + t of the moving grid where the fixed voxel's content lies, so
           warped(x) = moving(A x + t) = fastreg.sample(moving, affine_coords(matrix, S_f)).
  spacing / moving_spacing   voxel sizes (e.g. mm) per axis of the fixed / moving grid. The
           transform is rigid (dof 6) or scaled (dof 9) in the physical space p = spacing * x
           (no origin or direction: orienting the grids is the caller's job, fastreg.io's).
(A 4-D tensor with size 1 at dim 1 is read as a batched 2-D image (B, 1, H, W); other 4-D
tensors as one 3-D image (1, D, H, W).)

Method: intensity moments initialise the transform (centres of mass matched; for dof >= 6
the principal axes of the second moments, trying every sign of the axes that keeps a
rotation, and the identity rotation, keeping the candidate of best similarity at the coarsest
level; for dof 9 and 12 an isotropic scale from the ratio of the moments). Adam then
optimises the parameters coarse to fine on images average-pooled by ``levels``, each step
sampling the moving image once with fastreg.sample at coordinates built from the matrix (no
identity grid is kept: the coordinates are a broadcast sum of per-axis index vectors).
Parameters, in the physical space about the fixed centre of mass c_f (y = c_m + M (p - c_f)
+ r tau, r the fixed image's mean half-extent, so a unit of every parameter moves the
image's edge by about r):
  dof 3   tau (translation)                   M = I
  dof 6   tau, rotation vector w              M = R0 expm([w]x)
  dof 9   tau, w, log-scales sigma per axis   M = R0 expm([w]x) diag(s0 exp(sigma))
  dof 12  tau, the full linear part           M = s0 R0 + Delta
Similarity (maximised): "mi" Mattes' mutual information (fixed intensities in equal-width
bins, the moving ones spread over 4 bins by a cubic B-spline Parzen window, so MI is
differentiable), "lncc" fastreg.lncc (box window ``window``), "mse" minus the mean squared
difference. MI bins each image between its own minimum and maximum. Samples outside the
moving image read its nearest edge voxel (border padding). affine_field turns the matrix
into a displacement on the fixed grid that composes with a deformable field.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from fastreg import _validate as check
from fastreg.metrics import _bin
from fastreg.ops.lncc import lncc
from fastreg.ops.warp import sample

DOFS = (12, 9, 6, 3)
SIMILARITIES = ("mi", "lncc", "mse")
INITS = ("moments", "identity")


def affine_register(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    *,
    dof: int = 12,
    similarity: str = "mi",
    spacing=None,
    moving_spacing=None,
    levels: Sequence[int] = (8, 4, 2),
    iterations: Sequence[int] = (100, 50, 15),
    lr: float = 0.02,
    init: str = "moments",
    bins: int = 32,
    window: int = 5,
) -> torch.Tensor:
    """The affine matrix (B, ndim + 1, ndim + 1) in voxel coordinates that maps the fixed
    grid onto the moving image (the module docstring gives the conventions).

    ``levels``: average-pooling factors, coarse to fine, each run for the matching count
    of ``iterations`` Adam steps (learning rate ``lr`` at the first level, halved at each
    next one, decaying linearly to a tenth within a level; a level whose pooled image would
    have an axis under 4 voxels is skipped). The defaults end at half resolution, where a
    2 mm brain is aligned to about 0.1 voxel in well under a second of CPU (BENCHMARKS.md);
    add a level 1 for full-resolution accuracy at about twice the time. The result is never
    worse than the start by the finest level's similarity: coarse levels of a small image
    can mislead the optimisation, and then the start (per batch item) is kept.
    ``init``: "moments" or "identity" (physical identity, centres not matched). ``bins``:
    histogram bins of "mi"; ``window``: box window of "lncc" (clipped to the pooled size).
    Deterministic: the same inputs give the same matrix. Example::

        matrix = fastreg.affine_register(fixed, moving, dof=6, spacing=(2, 2, 2))
        aligned = fastreg.sample(moving, fastreg.affine_coords(matrix, fixed.shape[2:]))
    """
    fixed, moving, unbatched = _images(fixed, moving)
    ndim = fixed.dim() - 2
    if isinstance(dof, bool) or dof not in DOFS:
        raise ValueError(f"dof: expected one of {DOFS}, got {dof!r}")
    check.choice(similarity, "similarity", SIMILARITIES)
    check.choice(init, "init", INITS)
    sp_f = check.spacing(spacing, "spacing", ndim)
    sp_m = check.spacing(moving_spacing if moving_spacing is not None else spacing, "moving_spacing", ndim)
    schedule = _schedule(levels, iterations, fixed.shape[2:], moving.shape[2:])
    lr = check.non_negative(lr, "lr")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 4:
        raise ValueError(f"bins: expected an integer >= 4, got {bins!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window: expected an odd positive integer, got {window!r}")

    batch = max(fixed.shape[0], moving.shape[0])
    fixed = fixed.expand(batch, *fixed.shape[1:])
    moving = moving.expand(batch, *moving.shape[1:])
    geometry = _Geometry(sp_f, sp_m, fixed.shape[2:], fixed.device)
    coarse = schedule[0][0] if schedule else 1
    centre_f, centre_m, candidates, scale0 = _initial(fixed, moving, geometry, coarse, dof, init)
    params = _Parameters(dof, ndim, batch, geometry.radius, scale0)

    if schedule:  # keep the candidate rotation of best similarity at the coarsest level
        loss = _LevelLoss(fixed, moving, coarse, geometry, centre_f, centre_m, similarity, bins, window)
        with torch.no_grad():
            scores = torch.stack([loss(params.linear(r0), params.shift()) for r0 in candidates])  # (K, B)
        best = scores.argmin(0)
        params.rotation0 = torch.stack(candidates)[best, torch.arange(batch)]
    else:
        params.rotation0 = candidates[0]

    start = params.snapshot()
    for index, (factor, steps) in enumerate(schedule):
        if index > 0:
            loss = _LevelLoss(fixed, moving, factor, geometry, centre_f, centre_m, similarity, bins, window)
        optimizer = torch.optim.Adam(params.tensors, lr=lr * 0.5**index)
        decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1 - 0.9 * k / max(steps - 1, 1))
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            value = loss(params.linear(), params.shift()).sum()
            value.backward()
            optimizer.step()
            decay.step()
    if schedule:  # never worse than the start at the finest level (coarse levels can mislead)
        with torch.no_grad():
            found = params.snapshot()
            after = loss(params.linear(), params.shift())
            params.restore(start)
            before = loss(params.linear(), params.shift())
            params.restore([torch.where(_rows(after <= before, f), f, s) for f, s in zip(found, start)])

    with torch.no_grad():
        matrix = geometry.voxel_matrix(params.linear(), params.shift(), centre_f, centre_m)
    return matrix[0] if unbatched else matrix


def affine_coords(matrix: torch.Tensor, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Moving-grid voxel coordinates (B, ndim, *shape) of every voxel of the fixed grid of
    size ``shape`` under ``matrix`` ((B, ndim+1, ndim+1) or (ndim+1, ndim+1), voxel
    coordinates): the ``coords`` argument of fastreg.sample(moving, coords)."""
    matrix = _matrix(matrix, len(shape))
    ndim = len(shape)
    return _coords(matrix[:, :ndim, :ndim], matrix[:, :ndim, ndim], shape, dtype)


def affine_field(matrix: torch.Tensor, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The displacement (B, ndim, *shape) in voxels of ``matrix`` on the fixed grid:
    u(x) = A x + t - x. For a moving image on a grid of the same size,
    fastreg.warp(moving, u) is the affinely aligned image, and a deformable field d found
    on the aligned pair composes with it as fastreg.compose(u, d): moving(A (x + d) + t)."""
    coords = affine_coords(matrix, shape, dtype)
    identity = torch.eye(len(shape), dtype=torch.float64, device=coords.device).expand(coords.shape[0], -1, -1)
    return coords - _coords(identity, torch.zeros_like(identity[:, 0]), shape, dtype)


def affine_error(
    estimate: torch.Tensor,
    truth: torch.Tensor,
    shape: Sequence[int],
    spacing=None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and largest distance (B,) float64, in the units of ``spacing`` (voxel sizes of
    the moving grid; default voxels), between the points where two voxel matrices send the
    voxels of a fixed grid of size ``shape`` (only those where ``mask`` (*shape, bool) holds)."""
    diff = affine_coords(estimate, shape, torch.float64) - affine_coords(truth, shape, torch.float64)
    sp = torch.tensor(check.spacing(spacing, "spacing", len(shape)), dtype=torch.float64, device=diff.device)
    dist = (diff * sp.view(1, -1, *[1] * len(shape))).norm(dim=1).flatten(1)
    if mask is not None:
        dist = dist[:, mask.flatten().to(dist.device)]
    return dist.mean(1), dist.amax(1)


# --- geometry -----------------------------------------------------------------------------


def _coords(linear: torch.Tensor, shift: torch.Tensor, shape: Sequence[int], dtype) -> torch.Tensor:
    """A x + t for every index x of ``shape``: (B, ndim, *shape), a sum of broadcast
    per-axis index vectors (linear (B, ndim, ndim), shift (B, ndim))."""
    ndim = len(shape)
    batch = linear.shape[0]
    lead = (batch, ndim) + (1,) * ndim
    out = shift.to(dtype).reshape(lead).expand(batch, ndim, *shape)
    for b, size in enumerate(shape):
        view = [1] * ndim
        view[b] = size
        index = torch.arange(size, device=linear.device, dtype=dtype).view(1, 1, *view)
        out = out + linear[:, :, b].to(dtype).reshape(lead) * index
    return out


def _matrix(matrix, ndim: int) -> torch.Tensor:
    if not isinstance(matrix, torch.Tensor):
        raise TypeError(f"matrix: expected a torch.Tensor, got {type(matrix).__name__}")
    if matrix.dim() == 2:
        matrix = matrix.unsqueeze(0)
    if matrix.dim() != 3 or matrix.shape[1:] != (ndim + 1, ndim + 1):
        raise ValueError(f"matrix: expected ({ndim + 1}, {ndim + 1}) or (B, {ndim + 1}, {ndim + 1}) for a "
                         f"{ndim}-D shape, got {tuple(matrix.shape)}")
    return matrix


class _Geometry:
    """Physical coordinates p = spacing * x of both grids and the voxel matrix."""

    def __init__(self, sp_f, sp_m, shape_f, device):
        self.sp_f = torch.tensor(sp_f, dtype=torch.float64, device=device)
        self.sp_m = torch.tensor(sp_m, dtype=torch.float64, device=device)
        self.radius = 0.5 * float(sum((s - 1) * h for s, h in zip(shape_f, sp_f))) / len(sp_f)
        self.radius = max(self.radius, 1e-6)

    def voxel_matrix(self, linear, shift, centre_f, centre_m) -> torch.Tensor:
        """(B, n+1, n+1): x -> diag(1/sp_m) (c_m + M (sp_f x - c_f) + shift)."""
        a = linear * self.sp_f / self.sp_m.unsqueeze(-1)
        t = (centre_m + shift - (linear @ centre_f.unsqueeze(-1)).squeeze(-1)) / self.sp_m
        batch, ndim = t.shape
        out = torch.zeros(batch, ndim + 1, ndim + 1, dtype=torch.float64, device=t.device)
        out[:, :ndim, :ndim] = a
        out[:, :ndim, ndim] = t
        out[:, ndim, ndim] = 1
        return out


def _pool(image: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return image
    pool = F.avg_pool2d if image.dim() == 4 else F.avg_pool3d
    return pool(image, factor)


def _level_matrix(matrix: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear part and shift of ``matrix`` between grids pooled by ``factor``: pooled voxel
    j is the original x = f j + (f - 1) / 2 on either grid."""
    ndim = matrix.shape[1] - 1
    a, t = matrix[:, :ndim, :ndim], matrix[:, :ndim, ndim]
    offset = (factor - 1) / 2
    return a, (a.sum(-1) * offset + t - offset) / factor


def _moments(image: torch.Tensor, factor: int, spacing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intensity-weighted centre (B, ndim) and second-moment matrix (B, ndim, ndim) in
    physical units, on the image pooled by ``factor``."""
    pooled = _pool(image, factor)[:, 0].double().clamp_min(0)
    ndim = pooled.dim() - 1
    mass = pooled.flatten(1).sum(1).clamp_min(1e-12)
    axes = []
    for a, size in enumerate(pooled.shape[1:]):
        view = [1] * ndim
        view[a] = size
        x = (torch.arange(size, dtype=torch.float64, device=image.device) * factor + (factor - 1) / 2) * spacing[a]
        axes.append(x.view(1, *view))
    centre = torch.stack([(pooled * x).flatten(1).sum(1) / mass for x in axes], -1)
    cov = torch.empty(pooled.shape[0], ndim, ndim, dtype=torch.float64, device=image.device)
    for a in range(ndim):
        for b in range(a, ndim):
            da = axes[a] - centre[:, a].view(-1, *[1] * ndim)
            db = axes[b] - centre[:, b].view(-1, *[1] * ndim)
            cov[:, a, b] = cov[:, b, a] = (pooled * da * db).flatten(1).sum(1) / mass
    return centre, cov


def _initial(fixed, moving, geometry, factor, dof, init):
    """Centres (B, ndim) x 2, candidate rotations [(B, ndim, ndim)], isotropic scale (B,)."""
    batch, ndim = fixed.shape[0], fixed.dim() - 2
    eye = torch.eye(ndim, dtype=torch.float64, device=fixed.device).expand(batch, ndim, ndim)
    centre_f, cov_f = _moments(fixed, factor, geometry.sp_f)
    if init == "identity":
        return centre_f, centre_f.clone(), [eye], torch.ones(batch, dtype=torch.float64, device=fixed.device)
    centre_m, cov_m = _moments(moving, factor, geometry.sp_m)
    scale = torch.ones(batch, dtype=torch.float64, device=fixed.device)
    if dof in (9, 12):
        ratio = torch.linalg.det(cov_m) / torch.linalg.det(cov_f).clamp_min(1e-30)
        scale = ratio.clamp(1e-6, 1e6) ** (1 / (2 * ndim))
    candidates = [eye]
    if dof >= 6:
        vals_f, vecs_f = torch.linalg.eigh(cov_f)
        vals_m, vecs_m = torch.linalg.eigh(cov_m)
        for signs in _sign_patterns(ndim):
            flip = torch.tensor(signs, dtype=torch.float64, device=fixed.device)
            rotation = (vecs_m * flip) @ vecs_f.transpose(1, 2)
            # eigh's vectors have either handedness: keep the sign patterns giving rotations
            rotation = torch.where(torch.linalg.det(rotation).view(-1, 1, 1) > 0, rotation, eye)
            candidates.append(rotation)
    return centre_f, centre_m, candidates, scale


def _sign_patterns(ndim: int) -> list[tuple[float, ...]]:
    """Every choice of axis signs (2**ndim); each per item gives a rotation or a reflection."""
    return [tuple(-1.0 if (k >> a) & 1 else 1.0 for a in range(ndim)) for k in range(2**ndim)]


class _Parameters:
    """The optimised tensors of one dof and the physical linear part and shift they give."""

    def __init__(self, dof, ndim, batch, radius, scale0):
        opts = dict(dtype=torch.float64, device=scale0.device)
        self.dof, self.ndim, self.radius, self.scale0 = dof, ndim, radius, scale0
        self.tau = torch.zeros(batch, ndim, requires_grad=True, **opts)
        self.tensors = [self.tau]
        self.rotation0 = None
        if dof in (6, 9):
            self.omega = torch.zeros(batch, 1 if ndim == 2 else 3, requires_grad=True, **opts)
            self.tensors.append(self.omega)
        if dof == 9:
            self.sigma = torch.zeros(batch, ndim, requires_grad=True, **opts)
            self.tensors.append(self.sigma)
        if dof == 12:
            self.delta = torch.zeros(batch, ndim, ndim, requires_grad=True, **opts)
            self.tensors.append(self.delta)

    def snapshot(self) -> list[torch.Tensor]:
        return [t.detach().clone() for t in self.tensors]

    def restore(self, values: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for t, v in zip(self.tensors, values):
                t.copy_(v)

    def shift(self) -> torch.Tensor:
        return self.radius * self.tau

    def linear(self, rotation0: torch.Tensor | None = None) -> torch.Tensor:
        r0 = self.rotation0 if rotation0 is None else rotation0
        if self.dof == 3:
            return r0
        if self.dof == 12:
            return self.scale0.view(-1, 1, 1) * r0 + self.delta
        m = r0 @ torch.linalg.matrix_exp(_skew(self.omega, self.ndim))
        if self.dof == 9:
            m = m * (self.scale0.view(-1, 1) * torch.exp(self.sigma)).unsqueeze(1)
        return m


def _rows(keep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The per-item flag ``keep`` (B,) broadcastable against ``like`` (B, ...)."""
    return keep.view(-1, *[1] * (like.dim() - 1))


def _skew(omega: torch.Tensor, ndim: int) -> torch.Tensor:
    """The skew-symmetric matrix (B, ndim, ndim) of a rotation vector (B, 1) or (B, 3)."""
    zero = torch.zeros_like(omega[:, 0])
    if ndim == 2:
        rows = [[zero, -omega[:, 0]], [omega[:, 0], zero]]
    else:
        x, y, z = omega.unbind(1)
        rows = [[zero, -z, y], [z, zero, -x], [-y, x, zero]]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


# --- similarity ---------------------------------------------------------------------------


class _LevelLoss:
    """Minus the similarity (B,) of the fixed image and the moving image sampled through a
    transform, on images pooled by ``factor``."""

    def __init__(self, fixed, moving, factor, geometry, centre_f, centre_m, similarity, bins, window):
        self.fixed = _pool(fixed, factor).contiguous()
        self.moving = _pool(moving, factor).contiguous()
        self.factor, self.geometry, self.centres = factor, geometry, (centre_f, centre_m)
        self.similarity, self.bins = similarity, bins
        self.window = min(window, *[s - (1 - s % 2) for s in self.fixed.shape[2:]])
        if similarity == "mi":
            batch = self.fixed.shape[0]
            fixed_bins = _bin(self.fixed.flatten(1).double(), bins)
            # joint-histogram row of each voxel: (item, fixed bin), then width moving bins
            self.rows = (torch.arange(batch, device=fixed.device).view(-1, 1) * bins + fixed_bins) * (bins + 2)
            self.moving_range = _range(self.moving.flatten(1))

    def __call__(self, linear, shift) -> torch.Tensor:
        matrix = self.geometry.voxel_matrix(linear, shift, *self.centres)
        a, t = _level_matrix(matrix, self.factor)
        coords = _coords(a, t, self.fixed.shape[2:], self.fixed.dtype)
        warped = sample(self.moving, coords, padding_mode="border")
        if self.similarity == "mse":
            return (warped - self.fixed).pow(2).flatten(1).mean(1)
        if self.similarity == "lncc":
            cc = lncc(self.fixed, warped, window=self.window, reduction="none")
            return -cc.flatten(1).mean(1)
        lo, width = self.moving_range
        return -_parzen_mi(self.rows, (warped.flatten(1) - lo) / width, self.bins)


def _range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo = x.min(1, keepdim=True).values
    hi = x.max(1, keepdim=True).values
    return lo, torch.where(hi > lo, hi - lo, torch.ones_like(hi))


def _parzen_mi(rows: torch.Tensor, moving: torch.Tensor, bins: int) -> torch.Tensor:
    """Mutual information (B,) in nats, differentiable in ``moving`` (B, N), intensities in
    [0, 1] (clamped), spread by the cubic B-spline over the 4 bins around moving * (bins - 1)
    (Mattes et al. 2003); the fixed intensities are in equal-width bins (numpy.histogram's
    rule, fastreg.metrics): ``rows`` (B, N) int64 is (item * bins + fixed bin) * (bins + 2),
    the first entry of the voxel's row of the (B, bins, bins + 2) joint histogram (moving
    bins -1 .. bins: the B-spline's support at both ends)."""
    batch, n = moving.shape
    z = moving.clamp(0, 1) * (bins - 1)
    base = z.detach().floor().clamp(max=bins - 2)
    t = z - base
    s = 1 - t
    t2 = t * t
    t3 = t2 * t
    weights = torch.stack((s * s * s, 3 * t3 - 6 * t2 + 4, -3 * t3 + 3 * t2 + 3 * t + 1, t3)) / 6
    index = (rows + base.long()).unsqueeze(0) + torch.arange(4, device=rows.device).view(4, 1, 1)
    joint = torch.zeros(batch * bins * (bins + 2), dtype=moving.dtype, device=moving.device)
    joint = joint.index_add(0, index.flatten(), weights.flatten())
    p = (joint.view(batch, bins, bins + 2) / n).double()
    p_fixed = p.sum(2, keepdim=True)
    p_moving = p.sum(1, keepdim=True)
    ratio = p.clamp_min(1e-12) / (p_fixed * p_moving).clamp_min(1e-12)
    return (p * torch.log(ratio)).sum((1, 2))


# --- argument checks ----------------------------------------------------------------------


def _images(fixed, moving) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(B, 1, *S) views of both images, and whether they came without a batch axis."""
    out, unbatched = [], []
    for name, x in (("fixed", fixed), ("moving", moving)):
        check.tensor(x, name)
        if x.dim() == 3 or (x.dim() == 4 and x.shape[1] != 1 and x.shape[0] == 1):
            x, single = x.unsqueeze(0), True
        elif x.dim() in (4, 5) and x.shape[1] == 1:
            single = False
        else:
            raise ValueError(f"{name}: expected (B, 1, *S) or (1, *S) with 2 or 3 spatial dims, got {tuple(x.shape)}")
        if min(x.shape[2:]) < 2:
            raise ValueError(f"{name}: expected at least 2 voxels along every axis, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name}: expected finite intensities, got NaN or inf")
        out.append(x)
        unbatched.append(single)
    fixed, moving = out
    if fixed.dim() != moving.dim():
        raise ValueError(f"moving: expected a {fixed.dim() - 2}-D image like fixed, got shape {tuple(moving.shape)}")
    check.same_device([("fixed", fixed), ("moving", moving)])
    check.same_dtype([("fixed", fixed), ("moving", moving)])
    if fixed.shape[0] != moving.shape[0] and 1 not in (fixed.shape[0], moving.shape[0]):
        raise ValueError(f"moving: expected batch 1 or {fixed.shape[0]} (the batch of fixed), got {moving.shape[0]}")
    return fixed, moving, all(unbatched)


def _schedule(levels, iterations, shape_f, shape_m) -> list[tuple[int, int]]:
    """(factor, steps) per level, skipping levels that would pool an axis below 4 voxels."""
    if not isinstance(levels, (list, tuple)) or not isinstance(iterations, (list, tuple)):
        raise TypeError(f"levels, iterations: expected sequences, got {levels!r} and {iterations!r}")
    if len(levels) != len(iterations):
        raise ValueError(f"iterations: expected one count per level ({len(levels)}), got {len(iterations)}")
    factors = [check.positive_int(f, "levels") for f in levels]
    steps = [check.non_negative_int(s, "iterations") for s in iterations]
    smallest = min(*shape_f, *shape_m)
    return [(f, s) for f, s in zip(factors, steps) if smallest // f >= 4 or f == 1]
