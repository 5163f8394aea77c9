"""Random label maps: the spatial structure of the synthetic training images.

``label_map(shape, num_labels=J, kind=...)`` returns (batch, 1, *shape) int64 labels in
[0, J), 2-D (H, W) or 3-D (D, H, W). Labels are exchangeable (each has expected share 1/J)
and can repeat in space (several blobs of one label). Kinds:

  "labelm"      UniReg's LabelM (Shao & Joshi): J noise images N(0, 1) on a coarse grid of
                r_p^ndim nodes, upsampled linearly (align_corners=True), label = argmax over j.
  "synthmorph"  SynthMorph's random geometry (Hoffmann et al. 2022; the cascaded U-Net
                paper, appendix A): as "labelm" on an s_L^ndim grid, but each label's noise
                image is first warped by its own random diffeomorphism (velocity: 6^ndim grid,
                sigma ~ U(0, b) per label, 5 steps of scaling and squaring on a grid of 4
                voxels per coarse cell, resized), then argmax.
                The paper's sizes: (s_L, b) = (12, 10) small, (6, 50) medium, (3, 50) large,
                b in voxels at 192^3 (scaled with the image size here, so a map looks alike
                at any resolution). The per-label spatial-noise scale sigma ~ U(0, 1) of the
                specs is one factor per map, which the argmax ignores: it is left out.
  "spheres"     balls (disks in 2-D) of random centre, label and radius, painted in a random
                order: radius U(15, 25) voxels at 192^3 for "medium" (the paper), U(5, 10)
                "small", U(30, 45) "large" (scaled with the size). Enough balls to cover
                each voxel about 4 times (the paper paints 2000 per label, mostly hidden);
                label 0 also fills what no ball covers (e^-4, ~2 %).
  "rectangles"  axis-aligned boxes painted the same way, half-extents per axis drawn from
                the same ranges as the radii (the paper takes the argmax of sparse random
                values on 8^3 grids upsampled, boxes of one size; here their sizes vary).

For the noise kinds ``size`` picks the coarse grid (r_p = s_L): 12 "small", 6 "medium",
3 "large". Speed: "synthmorph" warps each label's noise on a grid of ``shape / work_factor``
(default 4, at least 48 voxels per axis: the noise and its deformations vary over tens of
voxels; with a 48^3 work grid for 96^3 labels, 96.5 % of the voxels got the label of
``work_factor=1`` in our check, the others lie along the boundaries) with the fused
``fastreg.sample``, then upsamples all labels linearly and takes the argmax in slabs
(``upsampled_argmax``), so peak memory stays a few volumes whatever J is; no grid tensor
of the full image is built.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from fastreg import _validate as check
from fastreg.data import _random
from fastreg.ops.integrate import integrate_svf
from fastreg.ops.resize import resize_field
from fastreg.ops.warp import sample

KINDS = ("labelm", "synthmorph", "spheres", "rectangles")
SIZES = ("small", "medium", "large")
NOISE_GRID = {"small": 12, "medium": 6, "large": 3}
LABEL_WARP_STD = {"small": 10.0, "medium": 50.0, "large": 50.0}  # voxels at REFERENCE_SIZE
SHAPE_RADIUS = {"small": (5.0, 10.0), "medium": (15.0, 25.0), "large": (30.0, 45.0)}
REFERENCE_SIZE = 192
LABEL_WARP_GRID = 6
LABEL_WARP_STEPS = 5
LABEL_WARP_CELLS = 4  # integration grid of the per-label velocities: voxels per coarse cell
COVERAGE = 4.0
MIN_WORK = 48  # the work grid of "synthmorph" keeps at least this many voxels per axis
SLAB_VALUES = 1 << 23  # values per slab of the upsample + argmax (32 MiB in float32)
LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def label_map(
    shape: Sequence[int],
    *,
    num_labels: int,
    kind: str = "labelm",
    size: str = "medium",
    batch: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    work_factor: int = 4,
) -> torch.Tensor:
    """A batch of random label maps (batch, 1, *shape) int64 in [0, num_labels).

    See the module docstring for the kinds and sizes. ``work_factor``: "synthmorph" warps
    the per-label noise on a grid ``work_factor`` times coarser than ``shape`` but at least
    MIN_WORK (48) voxels per axis (1: at full resolution). Reproducible from ``generator``. Example::

        labels = fastreg.data.label_map((192,) * 3, num_labels=26, kind="synthmorph")
    """
    shape = check.spatial_shape(shape)
    num_labels = check.positive_int(num_labels, "num_labels")
    check.choice(kind, "kind", KINDS)
    check.choice(size, "size", SIZES)
    batch = check.positive_int(batch, "batch")
    check.generator(generator)
    work_factor = check.positive_int(work_factor, "work_factor")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if num_labels == 1:
        return torch.zeros((batch, 1, *shape), dtype=torch.int64, device=device)
    if kind in ("spheres", "rectangles"):
        return _painted(shape, num_labels, kind, size, batch, generator, device)
    grid = NOISE_GRID[size]
    noise = _random.randn((batch, num_labels) + (grid,) * len(shape), generator, device)
    if kind == "synthmorph":
        noise = _warped_noise(noise, shape, size, work_factor, generator)
    return upsampled_argmax(noise, shape)


def _warped_noise(noise: torch.Tensor, shape: tuple[int, ...], size: str, work_factor: int, generator) -> torch.Tensor:
    """Each label's coarse noise (B, J, *g) warped by its own random diffeomorphism, sampled
    on the work grid ``shape / work_factor``: (B, J, *work), at most SLAB_VALUES field values
    at once."""
    batch, labels = noise.shape[:2]
    ndim = len(shape)
    work = tuple(min(s, max(MIN_WORK, math.ceil((s - 1) / work_factor) + 1)) for s in shape)
    to_work = [(w - 1) / (s - 1) for w, s in zip(work, shape)]
    strength = LABEL_WARP_STD[size] * (sum(shape) / ndim / REFERENCE_SIZE) * sum(to_work) / ndim
    grid = noise.shape[2:]
    # Position x + u(x) on the work grid, in the coordinates of the coarse noise grid: the
    # noise upsampled to any grid and warped there is the coarse noise sampled here
    # (linear interpolation and border padding commute with the change of grid).
    identity = [
        torch.linspace(0, g - 1, w, device=noise.device).view((w,) + (1,) * (ndim - 1 - axis))
        for axis, (g, w) in enumerate(zip(grid, work))
    ]
    flat = noise.reshape(batch * labels, 1, *grid)
    # One coarse velocity per label (random_field's recipe with one scale), all drawn first so
    # the draws do not depend on the chunking; upsampled and integrated a few labels at a time.
    count = batch * labels
    sigma = _random.uniform(0.0, strength, (count, 1) + (1,) * ndim, generator, noise.device)
    coarse = _random.randn((count, ndim) + (LABEL_WARP_GRID,) * ndim, generator, noise.device) * sigma
    # The velocities vary over (work - 1) / (LABEL_WARP_GRID - 1) voxels: integrating them on
    # a grid of LABEL_WARP_CELLS voxels per coarse cell and resizing the result loses little.
    steps_grid = tuple(min(w, LABEL_WARP_CELLS * (LABEL_WARP_GRID - 1) + 1) for w in work)
    coarse = coarse * torch.tensor([(g - 1) / (w - 1) for g, w in zip(steps_grid, work)],
                                   device=noise.device).view(1, ndim, *[1] * ndim)
    chunk = max(1, SLAB_VALUES // (ndim * math.prod(work)))
    out = []
    for start in range(0, count, chunk):
        velocity = F.interpolate(coarse[start:start + chunk], size=steps_grid, mode=LINEAR[ndim], align_corners=True)
        coords = resize_field(integrate_svf(velocity, LABEL_WARP_STEPS), size=work)
        for axis in range(ndim):
            coords[:, axis].mul_((grid[axis] - 1) / (work[axis] - 1)).add_(identity[axis])
        out.append(sample(flat[start:start + chunk], coords, padding_mode="border"))
    return torch.cat(out).view(batch, labels, *work)


def upsampled_argmax(values: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """argmax over channels of ``values`` (B, J, *g) upsampled linearly (align_corners=True)
    to ``shape``: (B, 1, *shape) int64, without holding the J upsampled volumes.

    Linear upsampling is separable: along the first axis each output row lies between two
    coarse planes, which are upsampled over the other axes (F.interpolate) once each, and the
    rows between them are their linear blends, made and reduced a slab at a time
    (at most SLAB_VALUES values)."""
    batch, labels = values.shape[:2]
    grid, ndim = values.shape[2:], len(shape)
    out = torch.empty((batch, 1, *shape), dtype=torch.int64, device=values.device)
    position = torch.linspace(0, grid[0] - 1, shape[0], dtype=torch.float64)
    cell = position.floor().clamp(max=grid[0] - 2).long()
    weight = (position - cell).to(device=values.device, dtype=values.dtype)
    rows_per_slab = max(1, SLAB_VALUES // (batch * labels * math.prod(shape[1:])))

    def plane(k: int) -> torch.Tensor:
        return F.interpolate(values[:, :, k], size=tuple(shape[1:]), mode=LINEAR[ndim - 1], align_corners=True)

    upper, upper_index = None, -1
    bounds = torch.searchsorted(cell, torch.arange(grid[0], dtype=torch.int64)).tolist() + [shape[0]]
    for k in range(grid[0] - 1):
        first, last = bounds[k], bounds[k + 1]
        if first == last:
            continue
        low = upper if upper_index == k else plane(k)
        upper, upper_index = plane(k + 1), k + 1
        for start in range(first, last, rows_per_slab):
            stop = min(last, start + rows_per_slab)
            w = weight[start:stop].view((1, 1, stop - start) + (1,) * (ndim - 1))
            blend = torch.lerp(low.unsqueeze(2), upper.unsqueeze(2), w)
            out[:, :, start:stop] = blend.max(1, keepdim=True).indices
    return out


def _painted(shape, num_labels, kind, size, batch, generator, device) -> torch.Tensor:
    """Balls or boxes of random label painted in a random order over label 0."""
    ndim = len(shape)
    scale = sum(shape) / ndim / REFERENCE_SIZE
    low, high = (r * scale for r in SHAPE_RADIUS[size])
    low, high = max(low, 1.0), max(high, 1.0)
    mean_radius = (low + high) / 2
    unit = math.pi ** (ndim / 2) / math.gamma(ndim / 2 + 1) if kind == "spheres" else 2.0**ndim
    count = max(1, round(COVERAGE * math.prod(shape) / (unit * mean_radius**ndim)))
    out = torch.zeros((batch, 1, *shape), dtype=torch.int64, device=device)
    centres = _random.rand((batch, count, ndim), generator, "cpu", torch.float64) * torch.tensor(shape, dtype=torch.float64)
    radii = _random.uniform(low, high, (batch, count, ndim if kind == "rectangles" else 1), generator, "cpu", torch.float64)
    labels = _random.randint(num_labels, (batch, count), generator, "cpu")
    for b in range(batch):
        for k in range(count):
            centre, radius = centres[b, k], radii[b, k].expand(ndim)
            lo = [max(0, math.floor(c - r)) for c, r in zip(centre.tolist(), radius.tolist())]
            hi = [min(s, math.ceil(c + r) + 1) for c, r, s in zip(centre.tolist(), radius.tolist(), shape)]
            if any(h <= l for l, h in zip(lo, hi)):
                continue
            region = out[(b, 0) + tuple(slice(l, h) for l, h in zip(lo, hi))]
            if kind == "rectangles":
                region.fill_(labels[b, k])
                continue
            inside = None
            for axis in range(ndim):
                d = (torch.arange(lo[axis], hi[axis], device=device, dtype=torch.float64) - centre[axis]) / radius[axis]
                d = (d * d).view((-1,) + (1,) * (ndim - 1 - axis))
                inside = d if inside is None else inside + d
            region.masked_fill_(inside <= 1, labels[b, k])
    return out
