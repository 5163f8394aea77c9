"""Losses and regularisers of deformable registration, and the seed papers' training losses.

Every loss is a function and a thin nn.Module; each returns a 0-d tensor (reduction "mean")
unless stated. Shapes: images (B, C, *S); displacements (B, ndim, *S) in voxels, ij order;
S = (H, W) or (D, H, W).

  similarity                       function              module
  MSE mean((a - b)^2)              torch F.mse_loss      torch.nn.MSELoss (nothing to add)
  1 - LNCC (squared cc, VoxelMorph)lncc_loss             LNCCLoss(form="one_minus")
  1 - normalised MI (any contrasts) mi_loss               MILoss
  soft Dice over labels            dice_loss             DiceLoss
  regulariser
  Grad-L1 / Grad-L2 (diffusion)    grad_loss             GradLoss
  bending energy                   bending_energy        BendingEnergyLoss
  Jacobian folding penalty         jacobian_loss         JacobianLoss (fastreg.nn.jacobian)

The papers' losses are presets, ``loss = fastreg.nn.loss_for(name)``, all with one signature
(the one the training loop and NIO call)::

    loss(fixed, warped, disp, *, fixed_labels=None, warped_labels=None) -> 0-d tensor
    loss.terms(fixed, warped, disp, *, fixed_labels=None, warped_labels=None)
        -> {"similarity", "regularization", "total"} (unweighted terms, weighted total)

  fixed, warped   (B, C, *S) the fixed image and the moving image warped by disp
                  (unused by "cascade", may be None there)
  disp            (B, ndim, *S) the displacement that was applied, in voxels
  fixed_labels, warped_labels   labels for "cascade" (see dice_loss): the fixed labels
                  as int (B, 1, *S) or probabilities (B, L, *S), the warped moving labels
                  as probabilities (B, L, *S) (the one-hot moving labels warped linearly,
                  as the cascade paper does) or int (hard, no gradient)

  name      total                                                     source
  "unireg"  MSE(fixed, warped) + 0.01 * grad_loss(disp, "l1", "sum")   Shao & Joshi eq. 2-3
  "dpvfa"   (1 - LNCC_9(fixed, warped)) + 1.0 * grad_loss(disp, "l2")  Liu, Ruan & Sheng
  "cascade" dice_loss(fixed_labels, warped_labels) + 0.75 * grad_loss(disp, "l2")
                                                                       Kolenbrander et al.
  "synthmorph" dice_loss(fixed_labels, warped_labels) + 1.0 * grad_loss(disp, "l2")
                                                                       Hoffmann et al. 2022
  "nio"     0.6 * (1 - LNCC_7(fixed, warped)) + 0.4 * grad_loss(disp, "l2")   Mok et al.
Every preset argument can be overridden: ``loss_for("dpvfa", reg_weight=0.5)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastreg import _validate as check
from fastreg.ops.lncc import lncc
from fastreg.nn.lncc import LNCCLoss

PENALTIES = ("l1", "l2")
AXIS_REDUCTIONS = ("mean", "sum")
REDUCTIONS = ("mean", "sum", "none")
SIMILARITIES = ("mse", "lncc", "mi", "dice")


def reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """x.mean(), x.sum() or x itself for reduction "mean", "sum", "none" (validated by the caller)."""
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


def _field(disp, name: str = "disp") -> int:
    check.tensor(disp, name)
    ndim = check.spatial_ndim(disp, name, "(B, ndim, H, W) or (B, ndim, D, H, W)")
    check.field(disp, name, ndim)
    return ndim


# --- similarity ----------------------------------------------------------------------------


def lncc_loss(fixed: torch.Tensor, warped: torch.Tensor, window=9, kernel: str = "box") -> torch.Tensor:
    """1 - mean(cc), cc the squared local correlation of fastreg.lncc (VoxelMorph's NCC
    without the sign: 1 - mean(cc^2) in the DP-VFA paper's words). (B, C, *S) each -> 0-d.
    Module: ``LNCCLoss(window, kernel, form="one_minus")``."""
    return 1.0 - lncc(fixed, warped, window, kernel)


def mi_loss(fixed: torch.Tensor, warped: torch.Tensor, bins: int = 32, reduction: str = "mean") -> torch.Tensor:
    """1 - normalised mutual information of fixed and warped (B, C, *S) in [0, 1]: per item,
    1 - 2 MI(a, b) / (H(a) + H(b)) (the symmetric uncertainty, in [0, 1]: 0 when either
    image's bins determine the other's, 1 when they are independent), from a joint histogram
    of all channels and voxels with linear Parzen windows: a value x (clamped to [0, 1]) sits
    at s = x (bins - 1) and adds 1 - frac(s) to bin floor(s) and frac(s) to the next, so the
    histogram, and the loss, are continuous and differentiable in both images (Mattes et
    al.'s Parzen-window MI, with linear windows; ANTs uses 32 bins). It depends only on which intensities co-occur,
    not on how they map to each other: the similarity for images of different contrasts,
    where LNCC (linear relations) fails. Entropies in nats over p > 0; a constant item gives
    H = 0 for it and the loss 1; an item with a NaN or infinite value gives NaN. The
    windows spread values between bin centres over two bins, so a perfect match of such
    images scores above 0 (about 0.25 for uniform noise with 32 bins; 0 on bin centres). reduction "mean" (0-d), "sum" or "none" ((B,)).
    Module: ``MILoss(bins)``."""
    check.tensor(fixed, "fixed")
    check.tensor(warped, "warped")
    if fixed.shape != warped.shape:
        raise ValueError(f"warped: expected the shape of fixed {tuple(fixed.shape)}, got {tuple(warped.shape)}")
    check.spatial_ndim(fixed, "fixed", "(B, C, H, W) or (B, C, D, H, W)")
    bins = check.positive_int(bins, "bins", 2)
    check.choice(reduction, "reduction", REDUCTIONS)
    batch = fixed.shape[0]
    a, b = fixed.flatten(1), warped.flatten(1)
    finite = torch.isfinite(a).all(1) & torch.isfinite(b).all(1)
    ia, wa = _parzen(a, bins)  # (B, V, 2) each: bin index, weight
    ib, wb = _parzen(b, bins)
    index = (ia.unsqueeze(3) * bins + ib.unsqueeze(2)).flatten(1)  # (B, V * 4): the 2 x 2 bin pairs
    weight = (wa.unsqueeze(3) * wb.unsqueeze(2)).flatten(1)
    joint = weight.new_zeros(batch, bins * bins).scatter_add(1, index, weight) / fixed[0].numel()
    joint = joint.view(batch, bins, bins)
    h_a, h_b, h_ab = _entropy(joint.sum(2)), _entropy(joint.sum(1)), _entropy(joint.flatten(1))
    total = h_a + h_b
    nmi = torch.where(total > 0, 2.0 * (total - h_ab) / total.clamp_min(1e-12), torch.zeros_like(total))
    return reduce(torch.where(finite, 1.0 - nmi, torch.full_like(nmi, float("nan"))), reduction)


def _parzen(x: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear Parzen window of values x (B, V): (bin indices, weights), each (B, V, 2)."""
    s = x.nan_to_num(0.0).clamp(0.0, 1.0) * (bins - 1)  # a non-finite item's loss is NaN (caller)
    low = s.detach().floor().clamp(max=bins - 2)
    frac = s - low
    index = low.long().unsqueeze(2) + torch.arange(2, device=x.device)
    return index, torch.stack([1.0 - frac, frac], 2)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """-sum p log p over the last axis of (B, K) probabilities, terms with p = 0 left out
    (their gradient too: log is taken of p clamped away from 0)."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(1)


class MILoss(nn.Module):
    """``mi_loss`` as a module: forward(fixed, warped) -> 0-d tensor (``reduction``)."""

    def __init__(self, bins: int = 32, reduction: str = "mean"):
        super().__init__()
        self.bins = check.positive_int(bins, "bins", 2)
        self.reduction = reduction
        check.choice(reduction, "reduction", REDUCTIONS)

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        return mi_loss(fixed, warped, self.bins, self.reduction)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, reduction={self.reduction!r}"


def _labels(x, name: str):
    """('int', (B, 1, *S) long) or ('prob', (B, L, *S) float)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of labels, got {type(x).__name__}")
    check.spatial_ndim(x, name, "(B, 1, *S) int labels or (B, L, *S) probabilities")
    if x.is_floating_point():
        return "prob", x
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name}: expected int labels or float probabilities, got {x.dtype}")
    if x.shape[1] != 1:
        raise ValueError(f"{name}: expected int labels of shape (B, 1, *S), got {tuple(x.shape)}")
    return "int", x.long()


def _label_count(x: torch.Tensor, num_labels: int, name: str) -> torch.Tensor:
    """Per (batch, label) voxel counts (B, L) of int labels (B, 1, *S), no one-hot copy."""
    flat = x.flatten(1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_labels):
        raise ValueError(f"{name}: expected labels in [0, {num_labels}), got [{int(flat.min())}, {int(flat.max())}]")
    return torch.zeros(x.shape[0], num_labels, dtype=torch.float64, device=x.device).scatter_add_(
        1, flat, torch.ones(flat.shape, dtype=torch.float64, device=x.device))


def dice_loss(fixed_labels: torch.Tensor, warped_labels: torch.Tensor, num_labels: int | None = None,
              include_background: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> torch.Tensor:
    """Soft Dice loss, MONAI's ``DiceLoss(include_background, to_onehot_y=True)`` semantics:
    per batch item b and label l, 1 - (2 sum(p q) + smooth_nr) / (sum(p) + sum(q) + smooth_dr),
    averaged over b and the labels (label 0, the background, left out unless
    ``include_background``).

    Each argument is either int labels (B, 1, *S) (values 0..L-1) or probabilities (B, L, *S)
    (e.g. one-hot labels warped linearly: the cascaded U-Net's loss). With one int argument no
    one-hot copy is made: sum(p q) gathers the other's probability at each voxel's label and
    accumulates it per label. Two int arguments give the hard Dice loss (no gradient).
    ``num_labels`` (L): taken from a probability argument, else needed or max label + 1.
    Returns a 0-d tensor; gradients flow to probability arguments.
    """
    kind_f, f = _labels(fixed_labels, "fixed_labels")
    kind_w, w = _labels(warped_labels, "warped_labels")
    if f.shape[0] != w.shape[0] or f.shape[2:] != w.shape[2:]:
        raise ValueError(f"warped_labels: expected batch and spatial size of fixed_labels {tuple(f.shape)}, "
                         f"got {tuple(w.shape)}")
    check.same_device([("fixed_labels", f), ("warped_labels", w)])
    channels = {x.shape[1] for kind, x in ((kind_f, f), (kind_w, w)) if kind == "prob"}
    if len(channels) > 1:
        raise ValueError(f"warped_labels: expected {f.shape[1]} label channels like fixed_labels, got {w.shape[1]}")
    if channels:
        count = channels.pop()
        if num_labels is not None and num_labels != count:
            raise ValueError(f"num_labels: expected {count} (the label channels), got {num_labels}")
        num_labels = count
    elif num_labels is None:
        num_labels = int(max(f.max(), w.max())) + 1
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < (1 if include_background else 2):
        raise ValueError(f"num_labels: expected an int >= {1 if include_background else 2}, got {num_labels!r}")
    dims = tuple(range(2, f.dim()))
    if kind_f == "prob" and kind_w == "prob":
        inter, size_f, size_w = (f * w).sum(dims), f.sum(dims), w.sum(dims)
    elif kind_f == "int" and kind_w == "int":
        size_f = _label_count(f, num_labels, "fixed_labels")
        size_w = _label_count(w, num_labels, "warped_labels")
        same = torch.where(f == w, f, torch.full_like(f, num_labels))  # mismatches go to a spare bin
        inter = _label_count(same, num_labels + 1, "fixed_labels")[:, :num_labels]
    else:
        (labels, name), probs = ((f, "fixed_labels"), w) if kind_f == "int" else ((w, "warped_labels"), f)
        size_f = _label_count(labels, num_labels, name).to(probs.dtype)
        size_w = probs.sum(dims)
        flat = labels.flatten(1)
        picked = probs.flatten(2).gather(1, flat.unsqueeze(1)).squeeze(1)  # (B, N): q at each voxel's label
        inter = torch.zeros_like(size_w).scatter_add(1, flat, picked)
    dice = (2.0 * inter + smooth_nr) / (size_f + size_w + smooth_dr)
    if not include_background:
        dice = dice[:, 1:]
    return 1.0 - dice.mean()


class DiceLoss(nn.Module):
    """``dice_loss`` as a module: forward(fixed_labels, warped_labels) -> 0-d tensor."""

    def __init__(self, num_labels: int | None = None, include_background: bool = False,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5):
        super().__init__()
        self.num_labels, self.include_background = num_labels, include_background
        self.smooth_nr, self.smooth_dr = smooth_nr, smooth_dr

    def forward(self, fixed_labels: torch.Tensor, warped_labels: torch.Tensor) -> torch.Tensor:
        return dice_loss(fixed_labels, warped_labels, self.num_labels, self.include_background,
                         self.smooth_nr, self.smooth_dr)

    def extra_repr(self) -> str:
        return f"num_labels={self.num_labels}, include_background={self.include_background}"


# --- regularisers --------------------------------------------------------------------------


def grad_loss(disp: torch.Tensor, penalty: str = "l2", axes: str = "mean") -> torch.Tensor:
    """Diffusion regulariser on forward differences d_a u = u[x + e_a] - u[x] (B, ndim, *S).

    t_a = mean over batch, components and the S_a - 1 difference positions of |d_a u|
    (penalty "l1") or (d_a u)^2 ("l2"). ``axes="mean"``: mean_a t_a, VoxelMorph's
    ``Grad(penalty)`` (neurite's ``spatial_gradient``; DP-VFA, cascade and NIO's ||grad u||^2).
    ``axes="sum"``: ndim * sum_a t_a, the per-voxel sum over axes and components
    (1/N) sum_x (||d_x u||_1 + ||d_y u||_1) of UniReg's eq. 2. Returns a 0-d tensor.
    """
    ndim = _field(disp)
    check.choice(penalty, "penalty", PENALTIES)
    check.choice(axes, "axes", AXIS_REDUCTIONS)
    terms = []
    for axis in range(2, 2 + ndim):
        d = torch.diff(disp, dim=axis)
        terms.append((d.abs() if penalty == "l1" else d * d).mean())
    total = sum(terms)
    return total / ndim if axes == "mean" else total * ndim


class GradLoss(nn.Module):
    """``grad_loss`` as a module: forward(disp) -> 0-d tensor."""

    def __init__(self, penalty: str = "l2", axes: str = "mean"):
        super().__init__()
        check.choice(penalty, "penalty", PENALTIES)
        check.choice(axes, "axes", AXIS_REDUCTIONS)
        self.penalty, self.axes = penalty, axes

    def forward(self, disp: torch.Tensor) -> torch.Tensor:
        return grad_loss(disp, self.penalty, self.axes)

    def extra_repr(self) -> str:
        return f"penalty={self.penalty!r}, axes={self.axes!r}"


def _second(u: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Central second difference d2u/da db on the interior (every spatial axis cropped by one
    voxel each side): [1, -2, 1] for a == b, the 4-point (++ - +- - -+ + --) / 4 otherwise."""
    ndim = u.dim() - 2

    def part(shift: dict) -> torch.Tensor:
        index = [slice(None), slice(None)]
        for axis in range(2, 2 + ndim):
            s = shift.get(axis, 0)
            index.append(slice(1 + s, u.shape[axis] - 1 + s))
        return u[tuple(index)]

    if a == b:
        return part({a: 1}) - 2.0 * part({}) + part({a: -1})
    return (part({a: 1, b: 1}) - part({a: 1, b: -1}) - part({a: -1, b: 1}) + part({a: -1, b: -1})) / 4.0


def bending_energy(disp: torch.Tensor, normalize: bool = False, reduction: str = "mean") -> torch.Tensor:
    """Bending energy, MONAI's ``BendingEnergyLoss`` (1.6) semantics: on the interior voxels
    (every axis cropped by one each side), per component, sum_a (d2u/da2)^2 +
    2 sum_{a<b} (d2u/da db)^2 with central stencils (see ``_second``); ``normalize`` scales the
    derivatives along axes a, b by S_a S_b / S_c for component c (MONAI). reduction "mean"
    (over batch, components and voxels), "sum", or "none": the (B, ndim, *(S - 2)) map.
    Every spatial size must be > 2.
    """
    ndim = _field(disp)
    check.choice(reduction, "reduction", REDUCTIONS)
    if min(disp.shape[2:]) <= 2:
        raise ValueError(f"disp: expected every spatial size > 2, got {tuple(disp.shape[2:])}")
    sizes = disp.shape[2:]
    scale = disp.new_tensor([float(s) for s in sizes]).view(1, ndim, *[1] * ndim) if normalize else None
    energy = 0.0
    for a in range(2, 2 + ndim):
        for b in range(a, 2 + ndim):
            d2 = _second(disp, a, b)
            if normalize:
                d2 = d2 * (sizes[a - 2] * sizes[b - 2] / scale)
            energy = energy + (d2 * d2 if a == b else 2.0 * d2 * d2)
    return reduce(energy, reduction)


class BendingEnergyLoss(nn.Module):
    """``bending_energy`` as a module: forward(disp) -> 0-d tensor (or the map, reduction="none")."""

    def __init__(self, normalize: bool = False, reduction: str = "mean"):
        super().__init__()
        check.choice(reduction, "reduction", REDUCTIONS)
        self.normalize, self.reduction = bool(normalize), reduction

    def forward(self, disp: torch.Tensor) -> torch.Tensor:
        return bending_energy(disp, self.normalize, self.reduction)

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}, reduction={self.reduction!r}"


# --- the papers' losses --------------------------------------------------------------------


class RegistrationLoss(nn.Module):
    """sim_weight * similarity + reg_weight * grad_loss(disp, penalty, axes), with the call
    signature of the module docstring.

    Args:
        similarity: "mse" (F.mse_loss(fixed, warped)), "lncc" (lncc_loss with ``window``,
            ``kernel``), "mi" (mi_loss with ``bins``) or "dice" (dice_loss(fixed_labels,
            warped_labels, include_background)).
        sim_weight, reg_weight: weights of the two terms.
        penalty, axes: of grad_loss.
    """

    def __init__(self, similarity: str = "mse", sim_weight: float = 1.0, reg_weight: float = 0.01,
                 penalty: str = "l2", axes: str = "mean", window=9, kernel: str = "box",
                 include_background: bool = False, bins: int = 32):
        super().__init__()
        check.choice(similarity, "similarity", SIMILARITIES)
        check.choice(penalty, "penalty", PENALTIES)
        check.choice(axes, "axes", AXIS_REDUCTIONS)
        for name, value in (("sim_weight", sim_weight), ("reg_weight", reg_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
        self.similarity, self.sim_weight, self.reg_weight = similarity, float(sim_weight), float(reg_weight)
        self.penalty, self.axes, self.include_background = penalty, axes, include_background
        self.lncc = LNCCLoss(window, kernel, form="one_minus") if similarity == "lncc" else None
        self.bins = check.positive_int(bins, "bins", 2)

    def terms(self, fixed, warped, disp, *, fixed_labels=None, warped_labels=None) -> dict[str, torch.Tensor]:
        if self.similarity == "dice":
            if fixed_labels is None or warped_labels is None:
                raise ValueError("fixed_labels, warped_labels: the dice similarity needs both, got None")
            sim = dice_loss(fixed_labels, warped_labels, include_background=self.include_background)
        else:
            check.tensor(fixed, "fixed")
            check.tensor(warped, "warped")
            if fixed.shape != warped.shape:
                raise ValueError(f"warped: expected the shape of fixed {tuple(fixed.shape)}, got {tuple(warped.shape)}")
            if self.similarity == "mse":
                sim = F.mse_loss(fixed, warped)
            elif self.similarity == "mi":
                sim = mi_loss(fixed, warped, self.bins)
            else:
                sim = self.lncc(fixed, warped)
        reg = grad_loss(disp, self.penalty, self.axes)
        return {"similarity": sim, "regularization": reg, "total": self.sim_weight * sim + self.reg_weight * reg}

    def forward(self, fixed, warped, disp, *, fixed_labels=None, warped_labels=None) -> torch.Tensor:
        return self.terms(fixed, warped, disp, fixed_labels=fixed_labels, warped_labels=warped_labels)["total"]

    def extra_repr(self) -> str:
        return (f"similarity={self.similarity!r}, sim_weight={self.sim_weight}, reg_weight={self.reg_weight}, "
                f"penalty={self.penalty!r}, axes={self.axes!r}")


PRESETS = {
    "unireg": dict(similarity="mse", reg_weight=0.01, penalty="l1", axes="sum"),
    "dpvfa": dict(similarity="lncc", window=9, reg_weight=1.0, penalty="l2"),
    "cascade": dict(similarity="dice", reg_weight=0.75, penalty="l2"),
    "synthmorph": dict(similarity="dice", reg_weight=1.0, penalty="l2"),
    "nio": dict(similarity="lncc", window=7, sim_weight=0.6, reg_weight=0.4, penalty="l2"),
}


def loss_for(name: str, **overrides) -> RegistrationLoss:
    """The training loss of a paper by name (see PRESETS and the module docstring);
    keyword arguments override the preset's ``RegistrationLoss`` arguments."""
    check.choice(name, "name", tuple(PRESETS))
    return RegistrationLoss(**{**PRESETS[name], **overrides})
