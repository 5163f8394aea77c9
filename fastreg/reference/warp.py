"""warp, sample and compose in plain differentiable torch: the oracle of every test and
the fallback backend. Bilinear and nearest are ``F.grid_sample`` (align_corners=True) exactly
as VoxelMorph's SpatialTransformer and MONAI's Warp call it; bicubic is the separable cubic
convolution written out over the 4^ndim taps (grid_sample's formula in 2-D, the same in 3-D,
where grid_sample has none).

Contract (shared by every backend, see csrc/warp/warp.h):
  image (B, C, *S_in); positions (B|1, ndim, *S_out) in voxels, channel a along spatial
  axis a (ij order), voxel centres at integer indices. A size-1 axis always samples
  index 0; a NaN position gives NaN in every channel of that output voxel and a NaN gradient
  to itself (0 in nearest mode); an infinite one gives 0 (zeros, reflection padding) or the
  edge voxel (border).
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

CUBIC_A = -0.75  # Keys' coefficient, grid_sample's and upsample's


def identity_grid(shape, device, dtype) -> torch.Tensor:
    """The voxel grid (1, ndim, *shape): channel a holds the index along axis a."""
    axes = [torch.arange(s, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).unsqueeze(0)


def sample(image: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Sample image (B, C, *S_in) at absolute voxel coordinates (B|1, ndim, *S_out)."""
    if mode == "bicubic":
        return _bicubic(image, coords, padding_mode)
    ndim = coords.shape[1]
    sizes = image.shape[2:]
    # An infinite position lies outside at infinite distance: 0 with zeros and reflection
    # padding (grid_sample gives NaN, or reflects it to an arbitrary voxel), the edge voxel
    # with border padding (grid_sample's clamp does that already).
    infinite = torch.isinf(coords).any(dim=1, keepdim=True) if padding_mode != "border" else None
    if infinite is not None:
        coords = torch.where(torch.isinf(coords), torch.zeros_like(coords), coords)
    # A NaN position gives NaN (set below) and a NaN gradient to itself (_NanToZero; nearest
    # mode's position gradient is 0 everywhere); grid_sample gets 0 instead, as its CPU
    # backward crashes (segfault) on a NaN position with border padding (torch 2.13).
    nan = torch.isnan(coords).any(dim=1, keepdim=True)
    coords = _NanToZero.apply(coords) if mode != "nearest" else torch.where(nan, torch.zeros_like(coords), coords)
    channels = []
    for a in range(ndim):
        c = coords[:, a]
        # align_corners=True: voxel 0 -> -1, voxel size-1 -> +1; grid_sample puts every
        # coordinate of a size-1 axis at index 0.
        channels.append(c * 0 if sizes[a] == 1 else c * (2.0 / (sizes[a] - 1)) - 1.0)
    grid = torch.stack(channels[::-1], dim=-1)  # grid_sample wants (x, y[, z]) last
    if grid.shape[0] != image.shape[0]:
        grid = grid.expand(image.shape[0], *grid.shape[1:])
    out = F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    if infinite is not None:
        out = torch.where(infinite, torch.zeros_like(out), out)
    return torch.where(nan, torch.full_like(out, float("nan")), out)


class _NanToZero(torch.autograd.Function):
    """Positions x (B, ndim, *S) with every position holding a NaN set to 0; the gradient passes
    unchanged, NaN at those positions (all ndim entries, as on the kernel backends)."""

    @staticmethod
    def forward(ctx, x):
        mask = torch.isnan(x).any(dim=1, keepdim=True).expand_as(x)
        ctx.save_for_backward(mask)
        return torch.where(mask, torch.zeros_like(x), x)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return torch.where(mask, torch.full_like(grad, float("nan")), grad)


def cubic_weights(t: torch.Tensor) -> list[torch.Tensor]:
    """Weights of the taps floor(p) - 1 .. floor(p) + 2 at fraction t = p - floor(p) in [0, 1):
    Keys' cubic convolution kernel with A = CUBIC_A (they sum to 1)."""
    a = CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def cubic_tap(c: torch.Tensor, size: int, padding_mode: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The voxel index read for the integer tap coordinate c (float) along an axis of `size`
    voxels, as grid_sample's bicubic mode maps it: zeros reads nothing outside [0, size - 1]
    (returns the validity mask), border clamps, reflection mirrors about the border voxel
    centres. Returns (index as long, valid or None)."""
    hi = size - 1
    valid = None
    if padding_mode == "zeros":
        valid = (c >= 0) & (c <= hi)
    elif padding_mode == "reflection" and hi > 0:
        c = c.abs()
        flips = torch.floor(c / hi)
        extra = torch.fmod(c, hi)
        c = torch.where(torch.fmod(flips, 2) == 0, extra, hi - extra)
    return c.clamp(0, hi).long(), valid


def _bicubic(image: torch.Tensor, coords: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """Cubic convolution over the 4^ndim taps around each position (contract in
    fastreg/ops/warp.py): the position itself is not padded, each tap index is."""
    ndim = coords.shape[1]
    sizes = image.shape[2:]
    batch, channels = image.shape[:2]
    out_shape = coords.shape[2:]
    nan = torch.isnan(coords).any(dim=1, keepdim=True)
    coords = _NanToZero.apply(coords)
    infinite = None
    if padding_mode == "border":  # beyond [-2, size + 1] every tap clamps to the edge voxel
        coords = torch.stack([coords[:, a].clamp(-2.0, sizes[a] + 1.0) for a in range(ndim)], dim=1)
    else:  # an infinite position reads nothing
        infinite = torch.isinf(coords).any(dim=1, keepdim=True)
        coords = torch.where(torch.isinf(coords), torch.zeros_like(coords), coords)
    taps = []  # per axis: [(flat offset, weight)] for the 4 taps
    stride = 1
    strides = []
    for a in reversed(range(ndim)):
        strides.insert(0, stride)
        stride *= sizes[a]
    for a in range(ndim):
        p = coords[:, a] * 0 if sizes[a] == 1 else coords[:, a]  # a size-1 axis samples index 0
        f = torch.floor(p).detach()
        weights = cubic_weights(p - f)
        axis = []
        for k in range(4):
            index, valid = cubic_tap(f + (k - 1), sizes[a], padding_mode)
            axis.append((index * strides[a], weights[k], valid))
        taps.append(axis)
    flat = image.reshape(batch, channels, -1)
    out = None
    for combo in itertools.product(*taps):
        offset = sum(o for o, _, _ in combo).reshape(coords.shape[0], 1, -1).expand(batch, channels, -1)
        weight = combo[0][1]
        for _, w, _ in combo[1:]:
            weight = weight * w
        term = weight.unsqueeze(1) * torch.gather(flat, 2, offset).reshape(batch, channels, *out_shape)
        masks = [v for _, _, v in combo if v is not None]
        if masks:  # a tap outside the image (zeros padding) reads nothing, not even a NaN
            valid = masks[0]
            for v in masks[1:]:
                valid = valid & v
            term = torch.where(valid.unsqueeze(1), term, torch.zeros_like(term))
        out = term if out is None else out + term
    if infinite is not None:
        out = torch.where(infinite, torch.zeros_like(out), out)
    return torch.where(nan, torch.full_like(out, float("nan")), out)


def warp(image: torch.Tensor, disp: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Sample image (B, C, *S) at x + disp(x), disp (B|1, ndim, *S) in voxels."""
    grid = identity_grid(disp.shape[2:], disp.device, disp.dtype)
    return sample(image, grid + disp, mode, padding_mode)


def compose(u: torch.Tensor, v: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Displacement of u∘v (apply v first): v + u(x + v(x))."""
    if u.shape[0] < v.shape[0]:
        u = u.expand(v.shape[0], *u.shape[1:])
    return v + warp(u, v, "bilinear", padding_mode)
