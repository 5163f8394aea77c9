"""Neural instance optimization (NIO) of a trained model, and plain instance optimization (IO)
of a field, one image pair at a time or several pairs at once.

NIO (Mok et al., "Deformable Medical Image Registration Under Distribution Shifts with Neural
Instance Optimization"): for each pair, Adam on a private copy of the network's trainable
weights minimises, coarse to fine,

    loss = (1 - lam) * (1 - LNCC_window(fixed, warp(moving, u))) + lam * ||grad u||^2

where ``u = model(fixed, moving, levels=k)`` is the field of the k coarsest levels, already at
full resolution, so the objective is the same at every stage. ``similarity="mi"`` replaces
1 - LNCC by 1 - normalised mutual information (``fastreg.nn.mi_loss``) for pairs of different
contrasts: LNCC assumes locally linear intensity relations and rewards wrong alignments
where the contrasts differ non-monotonically. IO (the paper's baseline) runs
the same loss with Adam on the field itself. Example::

    from fastreg import nio
    result = nio.optimize(model, fixed, moving)            # eta = (100, 60, 30), lr 1e-4, lam 0.4
    warped = fastreg.warp(moving, result.disp)
    result.log["loss"]                                     # (T, N): one column per pair
    baseline = nio.instance_optimize(model(fixed, moving).detach(), fixed, moving, grid=4)

Conventions:
  fixed, moving  (N, 1, *S) images in [0, 1]; the batch holds N independent *pairs*: each pair
                 has its own weights (or field), its own loss and its own Adam state
  u, disp        (N, ndim, *S) displacement in voxels (ij order, see fastreg.warp)
  LNCC           ``fastreg.lncc`` (box window, squared cc as VoxelMorph's NCC), mean over the
                 voxels of each pair; moving is warped with zero padding
  ||grad u||^2   diffusion regulariser: forward differences of u along each spatial axis,
                 squared, mean over channels and voxels, averaged over the ndim axes; in
                 voxel units (LapIRN measures u in [-1, 1] grid units, which weights this
                 term by roughly (2 / S)^2 less)
The optimiser minimises the sum of the pairs' losses; the pairs share no parameter and Adam
acts per element, so N pairs at once give the results of N single-pair calls (to rounding:
the batched convolutions sum in another order).

Stages (``levels``): stage i optimises the field of ``model(..., levels=levels[i])`` for
``iterations[i]`` Adam steps, continuing from the weights and Adam state of stage i - 1.
Default: the last three level counts, ``(max(1, L - 2), ..., L)``: one stage per level for
L <= 3 levels (the paper's L = 3 LapIRN: 1, 2, 3; the cascade: 1, 2; UniReg: 1) and
(L - 2, L - 1, L) above. With levels that halve the resolution (DP-VFA: 5 levels at 1/16 ..
1), the three stages then end at 1/4, 1/2 and full resolution, the resolutions of LapIRN's
three levels for which the paper's schedule eta = (100, 60, 30) was tuned; the coarsest levels
(1/16, 1/8) are cheap and adapt together with the 1/4 level in the first stage instead of
taking the first 100 iterations on fields too coarse to align a brain.

Which weights come out: per pair, the weights with the lowest loss among those evaluated in
the last stage reached (each step's starting weights and the weights after the last step;
the objective is deterministic, so this is exact), and ``disp`` is the full model's prediction
(``levels=num_levels``) with them. With ``max_seconds`` this is the best so far.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from fastreg import _validate as check
from fastreg.models.base import RegistrationModel
from fastreg.nn.losses import mi_loss
from fastreg.ops.lncc import lncc
from fastreg.ops.warp import warp

SIMILARITIES = ("lncc", "mi")
# The paper's schedule (NIO_m, brain MR); fewer stages take its first entries.
PAPER_ITERATIONS = (100, 60, 30)
# ``tol``: the loss is compared with the loss TOL_EVERY iterations earlier, every TOL_EVERY
# iterations of a stage (one host sync each time).
TOL_EVERY = 10


@dataclass
class Result:
    """What ``optimize`` and ``instance_optimize`` return.

    disp     (N, ndim, *S) displacement in voxels, detached.
    log      per iteration t (T iterations run in all): "loss", "similarity" (1 - LNCC or 1 - NMI) and
             "regulariser" (||grad u||^2), each (T, N) for the weights or field before step t;
             "stage" (T,) int64; "seconds" (T,) float64, wall time since the call began at the
             end of step t (on a GPU only synchronised when ``max_seconds`` or ``callback``
             is given); ``optimize`` adds "levels" (T,) int64.
    stopped  "done", "max_seconds" or "callback".
    weights  ``optimize(..., return_weights=True)``: one state dict per pair (the caller's
             buffers and frozen parameters, the pair's adapted trainable parameters), for
             ``model.load_state_dict``; otherwise None.
    """

    disp: torch.Tensor
    log: dict[str, torch.Tensor]
    stopped: str = "done"
    weights: list[dict[str, torch.Tensor]] | None = field(default=None, repr=False)


def default_levels(num_levels: int) -> tuple[int, ...]:
    """Level counts of the default stages (see the module docstring)."""
    return tuple(range(max(1, num_levels - 2), num_levels + 1))


def _loss(
    fixed: torch.Tensor, moving: torch.Tensor, disp: torch.Tensor, lam: float, window, similarity: str = "lncc"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, similarity, regulariser), each (N,): the objective above, per pair (for one pair
    the value of ``fastreg.nn.losses.loss_for("nio", similarity=...)``, which reduces over the
    batch; the loop needs each pair's value for its log, best weights and ``tol``)."""
    warped = warp(moving, disp)
    if similarity == "mi":
        dissimilarity = mi_loss(fixed, warped, reduction="none")
    else:
        dissimilarity = 1.0 - lncc(fixed, warped, window, reduction="none").flatten(1).mean(1)
    ndim = disp.dim() - 2
    regulariser = sum(disp.diff(dim=2 + a).square().flatten(1).mean(1) for a in range(ndim)) / ndim
    return (1.0 - lam) * dissimilarity + lam * regulariser, dissimilarity, regulariser


def optimize(
    model: RegistrationModel,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    *,
    iterations: Sequence[int] | None = None,
    lr: float = 1e-4,
    lam: float = 0.4,
    window: int | Sequence[int] = 7,
    similarity: str = "lncc",
    levels: Sequence[int] | None = None,
    max_seconds: float | None = None,
    tol: float | None = None,
    callback: Callable[[dict], object] | None = None,
    return_weights: bool = False,
    half: bool = False,
) -> Result:
    """Adapt ``model``'s weights to each pair (fixed[i], moving[i]) and return its fields.

    Args:
        model: a ``RegistrationModel``; never modified (weights, buffers, requires_grad
            flags and train/eval mode stay as they are). Its private copy runs in eval mode
            (normalisation layers use their stored statistics, dropout is off).
        fixed, moving: (N, 1, *S) finite images in [0, 1], on the device and in the dtype of
            the model's parameters; N pairs, each optimised with its own copy of the weights.
        iterations: Adam steps per stage, one per entry of ``levels``. Default: the paper's
            (100, 60, 30), its first entries when there are fewer stages.
        lr: Adam's learning rate (the paper: 1e-4).
        lam: weight of the regulariser in [0, 1] (the paper: 0.4).
        window: LNCC window, odd (the paper: 7).
        similarity: "lncc" (the paper: 1 - LNCC) or "mi" (1 - normalised mutual information,
            ``fastreg.nn.mi_loss``, 32 bins): for pairs of different contrasts, where LNCC
            rewards the wrong alignment.
        levels: increasing level counts in [1, model.num_levels], one per stage. Default:
            ``default_levels(model.num_levels)``.
        max_seconds: stop between iterations once this many seconds have passed.
        tol: end a stage early once, for every pair, the loss fell by less than
            ``tol * |loss|`` over the last TOL_EVERY iterations (checked every TOL_EVERY
            iterations of the stage).
        callback: called after each step with a dict (stage, levels, iteration, loss,
            similarity, regulariser as (N,) tensors, seconds); a true return value stops.
        return_weights: also return the adapted weights (``Result.weights``).
        half: the network's forward and backward of every step under ``torch.autocast`` in
            bfloat16 (on CPU and CUDA alike: no loss scaling needed); the weights, Adam, the
            warps and the loss stay in the images' dtype, and the returned field is predicted
            in that dtype (no autocast) with the adapted weights. On a CPU with AVX512-BF16 a
            DP-VFA step at 96x112x96 is 1.5-1.9x faster, with the same CC on real volumes
            (BENCHMARKS.md).

    Several pairs run as one batch: the model is called through ``torch.func.vmap`` over the
    stacked per-pair weights (fastreg's custom ops inside a model run through vmap's
    per-pair fallback); the loss runs on the whole batch.
    """
    _check_model(model)
    _check_images(model, fixed, moving)
    fixed, moving = fixed.detach(), moving.detach()
    plan = _levels(levels, model.num_levels)
    steps = _iterations(iterations, len(plan))
    window = check.windows(window, fixed.shape[2:])
    check.choice(similarity, "similarity", SIMILARITIES)
    lam = check.probability(lam, "lam")
    lr = check.positive_number(lr, "lr")
    _check_callback(callback)
    if not isinstance(half, bool):
        raise TypeError(f"half: expected a bool, got {type(half).__name__}")

    template = copy.deepcopy(model).eval().requires_grad_(False)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for n, p in model.named_parameters() if p.requires_grad]
    pairs = fixed.shape[0]
    flat = torch.cat([p.detach().reshape(1, -1) for n, p in model.named_parameters() if p.requires_grad], 1)
    flat = flat.repeat(pairs, 1)
    predict = _predictor(template, names, shapes, pairs)

    def objective(weights: torch.Tensor, stage: int):
        with torch.autocast(fixed.device.type, dtype=torch.bfloat16, enabled=half):
            u = predict(weights, fixed, moving, plan[stage])
        return _loss(fixed, moving, u.to(fixed.dtype), lam, window, similarity)

    def on_step(info: dict) -> object:
        info["levels"] = plan[info["stage"]]
        return callback(info)

    flat, log, stopped = _adam(flat, objective, steps, lr, max_seconds, tol, callback and on_step)
    log["levels"] = torch.tensor(plan, dtype=torch.int64)[log["stage"]]
    with torch.no_grad():
        disp = predict(flat, fixed, moving, model.num_levels)
    weights = _state_dicts(model, names, shapes, flat) if return_weights else None
    return Result(disp, log, stopped, weights)


def instance_optimize(
    disp: torch.Tensor,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    *,
    iterations: int = 200,
    lr: float = 0.1,
    lam: float = 0.4,
    window: int | Sequence[int] = 7,
    similarity: str = "lncc",
    grid: int | Sequence[int] | None = None,
    max_seconds: float | None = None,
    tol: float | None = None,
    callback: Callable[[dict], object] | None = None,
) -> Result:
    """Refine the field ``disp`` (N, ndim, *S) in voxels for the pairs (fixed, moving) (N, 1, *S)
    with Adam on the field itself and the NIO loss (the paper's IO baseline, 200 iterations).

    The field is ``disp + r`` with a residual r that starts at zero, so the initial field keeps
    its fine detail. ``grid`` None: r is dense (Adam on every voxel's vector). ``grid`` = a
    control-point spacing in voxels (an int, or one per axis): r lives on a coarse grid of
    ceil((S_a - 1) / spacing_a) + 1 points per axis (at least 2; corners on the image's corner
    voxels, so the actual spacing is (S_a - 1) / (points - 1) <= spacing_a) and is upsampled
    linearly (align_corners=True); its vectors are in full-resolution voxels either way, so
    ``lr`` (voxels per step, roughly: Adam's steps are about lr per element) means the same;
    the default 0.1 lets 200 steps move a vector by up to ~20 voxels.
    ``lam``, ``window``, ``similarity``, ``max_seconds``, ``tol`` and ``callback`` as in
    ``optimize`` (one stage); the returned field is the best one evaluated, per pair.
    """
    check.tensor(disp, "disp")
    ndim = check.spatial_ndim(disp, "disp", "(N, 2, H, W) or (N, 3, D, H, W)")
    check.field(disp, "disp", ndim)
    _check_pair(fixed, moving, ndim, disp.dtype, disp.device, "disp")
    if disp.shape[0] != fixed.shape[0] or disp.shape[2:] != fixed.shape[2:]:
        raise ValueError(
            f"disp: expected shape {(fixed.shape[0], ndim, *fixed.shape[2:])} (one field per pair "
            f"on the fixed grid), got {tuple(disp.shape)}"
        )
    check.finite(disp, "disp")
    fixed, moving = fixed.detach(), moving.detach()
    steps = (check.non_negative_int(iterations, "iterations"),)
    window = check.windows(window, fixed.shape[2:])
    check.choice(similarity, "similarity", SIMILARITIES)
    lam = check.probability(lam, "lam")
    lr = check.positive_number(lr, "lr")
    size = tuple(disp.shape[2:])
    if grid is None:
        coarse = size
    else:
        spacing = check.per_axis(grid, "grid", ndim)
        if any(s < 1 for s in spacing):
            raise ValueError(f"grid: expected control-point spacings >= 1 voxel, got {grid!r}")
        coarse = tuple(max(2, math.ceil((n - 1) / s) + 1) for n, s in zip(size, spacing))
    base = disp.detach()
    residual = base.new_zeros((base.shape[0], ndim, *coarse))
    mode = "bilinear" if ndim == 2 else "trilinear"

    def field_of(r: torch.Tensor) -> torch.Tensor:
        return base + (r if coarse == size else F.interpolate(r, size=size, mode=mode, align_corners=True))

    def objective(r: torch.Tensor, stage: int):
        return _loss(fixed, moving, field_of(r), lam, window, similarity)

    residual, log, stopped = _adam(residual, objective, steps, lr, max_seconds, tol, callback)
    with torch.no_grad():
        out = field_of(residual)
    return Result(out, log, stopped)


# --- the optimisation loop shared by both -----------------------------------------------


def _adam(params: torch.Tensor, objective, steps: Sequence[int], lr: float, max_seconds, tol, callback):
    """Adam on ``params`` (N, ...), one row per pair, stage by stage; ``objective(params, stage)`` gives
    (loss, similarity, regulariser), each (N,). Returns (the best params of the last stage
    reached, per pair; the log; why it stopped)."""
    max_seconds = None if max_seconds is None else check.positive_number(max_seconds, "max_seconds")
    tol = None if tol is None else check.positive_number(tol, "tol")
    _check_callback(callback)
    params = params.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([params], lr=lr, fused=True if params.device.type == "cuda" else None)
    sync = params.device.type == "cuda" and (max_seconds is not None or callback is not None)
    rows = (params.shape[0],) + (1,) * (params.dim() - 1)
    # The log is written into buffers made once: a few small tensors kept per step pin the
    # allocator's freed blocks between the step's large temporaries, and a long run's
    # resident memory grew by about a field per step (3.3 MiB at 96x96x32, 20 GiB seen).
    terms = params.new_empty((3, sum(steps), params.shape[0])).detach()  # loss, similarity, regulariser
    stages: list[int] = []
    seconds: list[float] = []
    stopped, stage, t = "done", 0, 0
    best = params.detach().clone()
    best_loss = params.new_full(params.shape[:1], math.inf)
    start = time.perf_counter()
    for stage, count in enumerate(steps):
        best.copy_(params.detach())
        best_loss.fill_(math.inf)
        for i in range(count):
            if max_seconds is not None and time.perf_counter() - start >= max_seconds:
                stopped = "max_seconds"
                break
            loss, similarity, regulariser = objective(params, stage)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            with torch.no_grad():
                loss = loss.detach()
                improved = loss < best_loss
                best_loss = torch.where(improved, loss, best_loss)
                best.copy_(torch.where(improved.view(rows), params, best))
                terms[0, t], terms[1, t], terms[2, t] = loss, similarity, regulariser
            optimizer.step()
            if sync:
                torch.cuda.synchronize(params.device)
            t += 1
            stages.append(stage)
            seconds.append(time.perf_counter() - start)
            if callback is not None and callback(
                dict(stage=stage, iteration=i, loss=terms[0, t - 1], similarity=terms[1, t - 1],
                     regulariser=terms[2, t - 1], seconds=seconds[-1])
            ):
                stopped = "callback"
                break
            if tol is not None and i >= TOL_EVERY and i % TOL_EVERY == 0:
                before = terms[0, t - 1 - TOL_EVERY]
                if bool(((before - loss) < tol * before.abs()).all()):
                    break
        if stopped != "done":
            break
    with torch.no_grad():
        last = objective(params, stage)[0]
        params = torch.where((last <= best_loss).view(rows), params, best)
    log = dict(zip(("loss", "similarity", "regulariser"), terms[:, :t].clone()))
    log["stage"] = torch.tensor(stages, dtype=torch.int64)
    log["seconds"] = torch.tensor(seconds, dtype=torch.float64)
    return params.detach(), log, stopped


# --- the model as a function of one flat weight row per pair ------------------------------


def _predictor(template: RegistrationModel, names: list[str], shapes: list[torch.Size], pairs: int):
    """predict(flat, fixed, moving, levels) -> (N, ndim, *S): ``template`` run with pair i's
    trainable weights taken from row i of ``flat`` (N, P) (frozen parameters and buffers are
    the template's own, shared by every pair)."""
    sizes = [math.prod(s) for s in shapes]

    def one(row: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor, levels: int) -> torch.Tensor:
        weights = {n: w.view(s) for n, w, s in zip(names, row.split(sizes), shapes)}
        return functional_call(template, weights, (fixed, moving), {"levels": levels})

    def predict(flat, fixed, moving, levels):
        if pairs == 1:
            return one(flat[0], fixed, moving, levels)
        return vmap(lambda row, f, m: one(row, f[None], m[None], levels)[0])(flat, fixed, moving)

    return predict


def _state_dicts(model: RegistrationModel, names, shapes, flat: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """One state dict per pair: the model's, with the pair's trainable parameters (under every
    name a tied parameter has)."""
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    by_name = dict(model.named_parameters())
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = []
    for row in flat:
        state = dict(base)
        for name, w, s in zip(names, row.split([math.prod(s) for s in shapes]), shapes):
            for alias in aliases[id(by_name[name])]:
                state[alias] = w.view(s).clone()
        out.append(state)
    return out


# --- argument checks ------------------------------------------------------------------------


def _check_model(model) -> None:
    if not isinstance(model, RegistrationModel):
        raise TypeError(
            f"model: expected a fastreg.models.RegistrationModel (it exposes its levels), got {type(model).__name__}"
        )
    levels = getattr(model, "num_levels", None)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"model: expected num_levels, an int >= 1 (the levels NIO adapts), got {levels!r}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model: expected trainable parameters (every parameter has requires_grad=False)")


def _check_images(model: RegistrationModel, fixed, moving) -> None:
    reference = next(p for p in model.parameters() if p.requires_grad)
    _check_pair(fixed, moving, model.ndim, reference.dtype, reference.device, "the model's parameters")


def _check_pair(fixed, moving, ndim: int, dtype: torch.dtype, device: torch.device, like: str) -> None:
    """fixed, moving: (N, 1, *S) finite float images of ``ndim`` spatial axes, same shape, in
    ``dtype`` on ``device`` (those of ``like``)."""
    for name, x in (("fixed", fixed), ("moving", moving)):
        check.tensor(x, name)
        if x.dim() != ndim + 2 or x.shape[1] != 1:
            raise ValueError(f"{name}: expected a (N, 1, *S) image with {ndim} spatial axes, got shape {tuple(x.shape)}")
        if x.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} like {like}, got {x.dtype}")
        if x.device != device:
            raise ValueError(f"{name}: expected a tensor on {device} like {like}, got {x.device}")
    if moving.shape != fixed.shape:
        raise ValueError(f"moving: expected the shape of fixed {tuple(fixed.shape)}, got {tuple(moving.shape)}")
    check.finite(fixed, "fixed")
    check.finite(moving, "moving")


def _check_callback(callback) -> None:
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable or None, got {type(callback).__name__}")


def _levels(levels, num_levels: int) -> tuple[int, ...]:
    if levels is None:
        return default_levels(num_levels)
    if isinstance(levels, int) and not isinstance(levels, bool):
        levels = (levels,)
    if not isinstance(levels, (list, tuple)) or not levels:
        raise ValueError(f"levels: expected a non-empty sequence of level counts, got {levels!r}")
    if any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_levels for k in levels):
        raise ValueError(f"levels: expected level counts in [1, {num_levels}] (the model's num_levels), got {levels!r}")
    if any(b <= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"levels: expected increasing level counts (coarse to fine), got {levels!r}")
    return tuple(levels)


def _iterations(iterations, stages: int) -> tuple[int, ...]:
    if iterations is None:
        if stages > len(PAPER_ITERATIONS):
            raise ValueError(f"iterations: no default for {stages} stages; give one count per stage")
        return PAPER_ITERATIONS[:stages]
    if not isinstance(iterations, (list, tuple)):
        raise TypeError(f"iterations: expected a sequence of {stages} ints (one per stage), got {iterations!r}")
    if len(iterations) != stages:
        raise ValueError(
            f"iterations: expected {stages} counts (one per stage of levels), got {len(iterations)}: {tuple(iterations)}"
        )
    return tuple(check.non_negative_int(n, "iterations") for n in iterations)
