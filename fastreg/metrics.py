"""The numbers registration papers report, on batched torch tensors.

Images are (B, C, *S) (C may be 1), label maps (B, *S) or (B, 1, *S) of integers, fields
(B, ndim, *S) in voxels (ij order), landmarks (B, N, ndim) in voxel coordinates (ij order),
spatial size 2-D (H, W) or 3-D (D, H, W). Every function returns one value per batch item
(and per label or landmark where it says so).

  jacobian_stats      folding %, SDlogJ (Learn2Reg), SDlogJ over det > 0, NDV %, std(|J|)
  cc                  global Pearson correlation (UniReg's CC)
  mutual_information  joint-histogram MI in nats (UniReg's MI)
  dice                Dice per label, from a bincount of label pairs (no one-hot)
  hd95                95th-percentile symmetric Hausdorff distance, as MONAI
  tre                 target registration error of landmarks through the field
  ssim                structural similarity, as skimage.metrics.structural_similarity
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from fastreg import _validate as check
from fastreg.ops.warp import sample
from fastreg.ops.jacobian import jacobian_stats

__all__ = ["jacobian_stats", "cc", "mutual_information", "dice", "hd95", "tre", "ssim"]


def _images(a, b, name_a: str = "a", name_b: str = "b") -> None:
    check.tensor(a, name_a)
    check.tensor(b, name_b)
    check.spatial_ndim(a, name_a)
    if a.shape != b.shape:
        raise ValueError(f"{name_b}: expected shape {tuple(a.shape)} (that of {name_a}), got {tuple(b.shape)}")
    check.same_device([(name_a, a), (name_b, b)])


def cc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of a and b (B, C, *S) over all channels and voxels: (B,) float64.
    Same as numpy.corrcoef of the flattened items; NaN for a constant image."""
    _images(a, b)
    x = a.flatten(1).double()
    y = b.flatten(1).double()
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    return (x * y).sum(1) / torch.sqrt((x * x).sum(1) * (y * y).sum(1))


def _bin(x: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-width bins from each item's min to its max (numpy.histogram's rule: the last bin
    includes the maximum); (B, N) -> (B, N) int64 in [0, bins)."""
    lo = x.min(1, keepdim=True).values
    hi = x.max(1, keepdim=True).values
    width = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return torch.clamp(((x - lo) / width * bins).floor().long(), 0, bins - 1)


def mutual_information(a: torch.Tensor, b: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """Mutual information (B,) float64 in nats of a and b (B, C, *S), from the joint histogram
    of all channels and voxels with ``bins`` equal-width bins per image, spanning each item's
    own [min, max] (numpy.histogram2d's default rule). A constant image puts every voxel in
    bin 0 (MI = 0); an item with a NaN or infinite voxel in either image gives NaN."""
    _images(a, b)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins: expected an integer >= 2, got {bins!r}")
    ia = _bin(a.flatten(1).double(), bins)
    ib = _bin(b.flatten(1).double(), bins)
    batch = a.shape[0]
    offset = torch.arange(batch, device=a.device).unsqueeze(1) * bins * bins
    joint = torch.bincount((offset + ia * bins + ib).flatten(), minlength=batch * bins * bins)
    p = joint.view(batch, bins, bins).double() / ia.shape[1]
    pa = p.sum(2, keepdim=True)
    pb = p.sum(1, keepdim=True)
    ratio = torch.where(p > 0, p / (pa * pb), torch.ones_like(p))
    mi = (p * torch.log(ratio)).sum((1, 2))
    finite = torch.isfinite(a.flatten(1)).all(1) & torch.isfinite(b.flatten(1)).all(1)
    return torch.where(finite, mi, torch.full_like(mi, float("nan")))


def _label_maps(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    for name, x in (("labels_a", a), ("labels_b", b)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name}: expected an integer label map, got {x.dtype}")
        if x.dim() not in (3, 4, 5):
            raise ValueError(f"{name}: expected (B, *S) or (B, 1, *S) with 2 or 3 spatial dims, got {tuple(x.shape)}")
        if x.dim() == 5 and x.shape[1] != 1:
            raise ValueError(f"{name}: expected (B, 1, D, H, W) for a 5-D label map, got {tuple(x.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"labels_b: expected shape {tuple(a.shape)} (that of labels_a), got {tuple(b.shape)}")
    check.same_device([("labels_a", a), ("labels_b", b)])
    return a, b


def _label_list(a, b, labels) -> torch.Tensor:
    if labels is None:
        present = torch.unique(torch.cat([a.flatten(), b.flatten()]))
        return present[present != 0]
    if isinstance(labels, (list, tuple)) and len(labels) == 0:
        return torch.zeros(0, dtype=torch.long, device=a.device)
    labels = torch.as_tensor(labels, device=a.device).flatten()
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels: expected integer labels, got {labels.dtype}")
    return labels


def dice(labels_a: torch.Tensor, labels_b: torch.Tensor, labels: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    """Dice 2|A∩B| / (|A| + |B|) per batch item and label: (B, L) float64.

    labels_a, labels_b: integer maps (B, *S) or (B, 1, *S) (a 4-D map with size 1 at dim 1 is
    read as (B, 1, H, W)). ``labels``: the labels to score, in
    that order (a repeated label gets the same column twice; [] gives (B, 0)); default every
    label present in either map except 0 (background), ascending.
    NaN where a label is in neither map. One bincount of the (label_a, label_b) pairs of all
    items (a (B, L+1, L+1) confusion matrix), no one-hot tensors.
    """
    a, b = _label_maps(labels_a, labels_b)
    wanted, columns = torch.unique(_label_list(a, b, labels), return_inverse=True)
    n = wanted.numel()
    batch = a.shape[0]

    def index(x):  # 0 for labels not scored, k + 1 for wanted[k] (wanted is sorted and unique)
        flat = x.reshape(batch, -1).contiguous()
        if n == 0:
            return torch.zeros_like(flat)
        pos = torch.searchsorted(wanted, flat).clamp(max=n - 1)
        return torch.where(wanted[pos] == flat, pos + 1, torch.zeros_like(pos))

    k = n + 1
    offset = torch.arange(batch, device=a.device).unsqueeze(1) * k * k
    pairs = offset + index(a) * k + index(b)
    confusion = torch.bincount(pairs.flatten(), minlength=batch * k * k).view(batch, k, k).double()
    inter = torch.diagonal(confusion, dim1=1, dim2=2)[:, 1:]
    size_a = confusion.sum(2)[:, 1:]
    size_b = confusion.sum(1)[:, 1:]
    return (2.0 * inter / (size_a + size_b))[:, columns]


def hd95(
    labels_a: torch.Tensor,
    labels_b: torch.Tensor,
    spacing: float | Sequence[float] | None = None,
    labels: Sequence[int] | torch.Tensor | None = None,
    percentile: float = 95.0,
) -> torch.Tensor:
    """95th-percentile Hausdorff distance per batch item and label: (B, L) float64, in the
    units of ``spacing`` (voxel sizes per axis; default 1 = voxels).

    Convention (MONAI compute_hausdorff_distance(percentile=95, directed=False), used by the
    Learn2Reg evaluations through the same definition): the surface of a mask is its voxels
    removed by one binary erosion (scipy.ndimage.binary_erosion, outside = background); the
    distance of each surface voxel of one mask to the nearest surface voxel of the other is
    the Euclidean distance transform (scipy, with ``spacing``); the result is the larger of the
    two directed 95th percentiles (linear interpolation, numpy.percentile's default). NaN where
    a label is missing from either map. ``labels`` as in ``dice``. Runs scipy on the CPU.
    """
    import numpy as np
    from scipy import ndimage

    a, b = _label_maps(labels_a, labels_b)
    wanted = _label_list(a, b, labels).tolist()
    batch = a.shape[0]
    if a.dim() == 5 or (a.dim() == 4 and a.shape[1] == 1):  # (B, 1, *S)
        a, b = a[:, 0], b[:, 0]
    a_np, b_np = a.cpu().numpy(), b.cpu().numpy()
    sp = check.spacing(spacing, "spacing", a_np.ndim - 1)
    out = torch.full((batch, len(wanted)), float("nan"), dtype=torch.float64)
    for i in range(batch):
        for j, label in enumerate(wanted):
            ma, mb = a_np[i] == label, b_np[i] == label
            if not ma.any() or not mb.any():
                continue
            ea = ma ^ ndimage.binary_erosion(ma)
            eb = mb ^ ndimage.binary_erosion(mb)
            d_ab = ndimage.distance_transform_edt(~eb, sampling=sp)[ea]
            d_ba = ndimage.distance_transform_edt(~ea, sampling=sp)[eb]
            out[i, j] = max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile))
    return out.to(a.device)


def tre(
    points_f: torch.Tensor,
    points_m: torch.Tensor,
    disp: torch.Tensor,
    spacing: float | Sequence[float] | None = None,
) -> torch.Tensor:
    """Target registration error per landmark: (B, N) in the units of ``spacing``.

    points_f, points_m: (B, N, ndim) corresponding landmarks of the fixed and moving image in
    voxel coordinates (ij order; float or integer indices, computed in disp's dtype); disp (B|1, ndim, *S) the field on the fixed grid that warps
    the moving image (warped(x) = moving(x + disp(x)), fastreg.warp's convention). Each fixed
    landmark moves to p + disp(p), disp interpolated linearly with fastreg.sample (border
    padding); TRE = || spacing * (p + disp(p) - q) ||.
    """
    check.tensor(disp, "disp")
    ndim = check.spatial_ndim(disp, "disp", "(B, 2, H, W) or (B, 3, D, H, W)")
    check.field(disp, "disp", ndim)
    for name, p in (("points_f", points_f), ("points_m", points_m)):
        if not isinstance(p, torch.Tensor) or p.dtype.is_complex or p.dtype == torch.bool:
            raise TypeError(f"{name}: expected a real (float or integer) tensor of landmarks, got "
                            f"{p.dtype if isinstance(p, torch.Tensor) else type(p).__name__}")
        if p.dim() != 3 or p.shape[2] != ndim:
            raise ValueError(f"{name}: expected (B, N, {ndim}) landmarks, got shape {tuple(p.shape)}")
    if points_f.shape != points_m.shape:
        raise ValueError(f"points_m: expected shape {tuple(points_f.shape)} (that of points_f), got {tuple(points_m.shape)}")
    check.same_device([("disp", disp), ("points_f", points_f), ("points_m", points_m)])
    sp = torch.tensor(check.spacing(spacing, "spacing", ndim), dtype=disp.dtype, device=disp.device)
    batch = max(disp.shape[0], points_f.shape[0])
    coords = points_f.to(disp.dtype).permute(0, 2, 1).reshape(points_f.shape[0], ndim, -1, *([1] * (ndim - 1)))
    if coords.shape[0] != batch:
        coords = coords.expand(batch, *coords.shape[1:])
    field = disp.expand(batch, *disp.shape[1:]) if disp.shape[0] != batch else disp
    moved = sample(field, coords, padding_mode="border").reshape(batch, ndim, -1).permute(0, 2, 1)
    error = (points_f.to(disp.dtype) + moved - points_m.to(disp.dtype)) * sp
    return torch.linalg.vector_norm(error, dim=2)


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean structural similarity (B,) float64 of a and b (B, C, *S), averaged over channels.

    Exactly skimage.metrics.structural_similarity with its defaults (uniform win_size^ndim
    window, K1 = 0.01, K2 = 0.03, sample covariance NP / (NP - 1), the mean over the voxels at
    least (win_size - 1) / 2 from every border) and the given ``data_range`` (default 1.0,
    images scaled to [0, 1], as MONAI's SSIMMetric).
    """
    _images(a, b)
    ndim = a.dim() - 2
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size: expected an odd integer >= 3, got {win_size!r}")
    if min(a.shape[2:]) < win_size:
        raise ValueError(f"win_size: {win_size} is larger than the spatial size {tuple(a.shape[2:])}")
    check.positive_number(data_range, "data_range")
    pool = F.avg_pool2d if ndim == 2 else F.avg_pool3d
    x = a.double().flatten(0, 1).unsqueeze(1)
    y = b.double().flatten(0, 1).unsqueeze(1)
    mean = lambda t: pool(t, win_size, stride=1)  # noqa: E731  (valid window: skimage's crop)
    np_ = win_size**ndim
    cov_norm = np_ / (np_ - 1)
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).view(a.shape[0], a.shape[1]).mean(1)
