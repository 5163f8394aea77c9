"""Gray and colour images from label maps: contrasts, corruptions, random recolouring.

Shapes: label maps (B, 1, *S) int64 in [0, J) (``fastreg.data.label_map``), images
(B, C, *S) float32 with intensities in [0, 1] (C = 1 gray, 3 colour), 2-D or 3-D.

  pair_contrast    per-label intensity mean and std for the two images of a pair (the
                   cascaded U-Net paper, after SynthMorph): mean ~ U(0.1, 1), std ~
                   U(0.02, 0.1); "static" one draw for both images, "dynamic" one per image,
                   "dynamic*" one per image with std ~ U(0.05, 0.2).
  render           voxel-wise N(mean[label], std[label]^2), label 0 zeroed with p = 0.2,
                   optional SynthMorph corruptions (off by default, as in the paper), then
                   min-max scaled to [0, 1] per image.
  random_colormap  random continuous, monotonic maps [0, 1] -> [0, 1]^C (UniReg's
                   multi-modal BSD: dark stays dark, bright stays bright), as lookup knots;
  apply_colormap   maps a gray image through them (linear between knots).
  recolor_labels   a random intensity (or colour) per label: UniReg's Multi-LabelM.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastreg import _validate as check
from fastreg.data import _random

CONTRASTS = ("static", "dynamic", "dynamic*")
MEAN_RANGE = (0.1, 1.0)
STD_RANGE = {"static": (0.02, 0.1), "dynamic": (0.02, 0.1), "dynamic*": (0.05, 0.2)}
BACKGROUND_ZERO_P = 0.2
BIAS_GRID = 4


def pair_contrast(
    batch: int,
    num_labels: int,
    contrast: str = "dynamic",
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Per-label intensity parameters ``((mean_f, std_f), (mean_m, std_m))`` of a pair,
    each (batch, num_labels) float32 (intensity units before min-max scaling)."""
    batch = check.positive_int(batch, "batch")
    num_labels = check.positive_int(num_labels, "num_labels")
    check.choice(contrast, "contrast", CONTRASTS)
    check.generator(generator)

    def draw():
        mean = _random.uniform(*MEAN_RANGE, (batch, num_labels), generator, device)
        std = _random.uniform(*STD_RANGE[contrast], (batch, num_labels), generator, device)
        return mean, std

    first = draw()
    return first, (first if contrast == "static" else draw())


def render(
    labels: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    background_zero_p: float = BACKGROUND_ZERO_P,
    blur_std: float = 0.0,
    bias_std: float = 0.0,
    gamma_std: float = 0.0,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A gray image (B, 1, *S) float32 in [0, 1] from ``labels`` (B, 1, *S) int64.

    Each voxel draws N(mean[b, label], std[b, label]^2) (``mean``, ``std``: (B, J), e.g.
    from ``pair_contrast``); with probability ``background_zero_p`` per image label 0 is set
    to 0. Optional SynthMorph corruptions (0 = off, the default), each strength drawn per
    image as U(0, given):
      blur_std   Gaussian blur, sigma in voxels;
      bias_std   multiplicative bias field exp(b), b smooth noise on a 4^ndim grid;
      noise_std  additive Gaussian noise (intensity units);
      gamma_std  after scaling, intensity ** exp(N(0, gamma_std^2)) (std not drawn).
    Then min-max scaled per image to [0, 1] (a constant image becomes 0).
    """
    _check_labels(labels, "labels")
    batch, ndim = labels.shape[0], labels.dim() - 2
    for name, value in (("mean", mean), ("std", std)):
        check.tensor(value, name)
        if value.dim() != 2 or value.shape[0] != batch:
            raise ValueError(f"{name}: expected (B, J) = ({batch}, num_labels), got {tuple(value.shape)}")
    if int(labels.max()) >= mean.shape[1] or std.shape[1] != mean.shape[1]:
        raise ValueError(f"labels: expected values in [0, {mean.shape[1]}) (the columns of mean and std), "
                         f"got a maximum of {int(labels.max())} (std has {std.shape[1]} columns)")
    p = check.probability(background_zero_p, "background_zero_p")
    blur_std, bias_std, gamma_std, noise_std = (
        check.non_negative(v, n) for v, n in ((blur_std, "blur_std"), (bias_std, "bias_std"),
                                               (gamma_std, "gamma_std"), (noise_std, "noise_std")))
    check.generator(generator)
    device, spatial = labels.device, labels.shape[2:]
    mean, std = mean.to(device, torch.float32), std.to(device, torch.float32)
    zero = _random.rand((batch, 1), generator, device) < p
    mean = torch.cat([torch.where(zero, 0.0, mean[:, :1]), mean[:, 1:]], dim=1)
    std = torch.cat([torch.where(zero, 0.0, std[:, :1]), std[:, 1:]], dim=1)
    flat = labels.reshape(batch, -1)
    image = torch.gather(std, 1, flat).mul_(_random.randn(flat.shape, generator, device))
    image = image.add_(torch.gather(mean, 1, flat)).view(batch, 1, *spatial)
    if blur_std > 0:
        sigmas = _random.uniform(0.0, blur_std, (batch,), generator, "cpu").tolist()
        image = torch.cat([gaussian_blur(image[b:b + 1], s) for b, s in enumerate(sigmas)])
    if bias_std > 0:
        sigma = _random.uniform(0.0, bias_std, (batch, 1) + (1,) * ndim, generator, device)
        coarse = _random.randn((batch, 1) + (BIAS_GRID,) * ndim, generator, device) * sigma
        mode = "bilinear" if ndim == 2 else "trilinear"
        image = image * F.interpolate(coarse, size=tuple(spatial), mode=mode, align_corners=True).exp_()
    if noise_std > 0:
        sigma = _random.uniform(0.0, noise_std, (batch, 1) + (1,) * ndim, generator, device)
        image = image + sigma * _random.randn(image.shape, generator, device)
    image = min_max(image)
    if gamma_std > 0:
        gamma = (gamma_std * _random.randn((batch, 1) + (1,) * ndim, generator, device)).exp_()
        image = image.pow(gamma)
    return image


def min_max(image: torch.Tensor) -> torch.Tensor:
    """``image`` (B, C, *S) scaled per batch item to [0, 1] (a constant item becomes 0)."""
    flat = image.reshape(image.shape[0], -1)
    low, high = flat.amin(1), flat.amax(1)
    shape = (-1,) + (1,) * (image.dim() - 1)
    scale = torch.where(high > low, high - low, torch.ones_like(high)).view(shape)
    return (image - low.view(shape)) / scale


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``image`` (B, C, *S) convolved with a Gaussian of std ``sigma`` voxels along every
    spatial axis (separable, truncated at 3 sigma, border replicated)."""
    if sigma <= 0:
        return image
    ndim = image.dim() - 2
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    conv = (F.conv2d, F.conv3d)[ndim - 2]
    out = image
    for axis in range(ndim):
        shape = [1] * ndim
        shape[axis] = kernel.numel()
        weight = kernel.view(1, 1, *shape).repeat(channels, 1, *([1] * ndim))
        pad = [0, 0] * ndim
        pad[2 * (ndim - 1 - axis)] = pad[2 * (ndim - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), weight, groups=channels)
    return out


def random_colormap(
    batch: int = 1,
    channels: int = 3,
    *,
    knots: int = 8,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random continuous monotonic maps [0, 1] -> [0, 1]^channels: (batch, channels, knots).

    Row [b, c] holds the values of channel c at ``knots`` equally spaced gray levels 0 .. 1,
    non-decreasing from 0 to 1 (sorted uniform draws between fixed ends): low intensities
    stay dark and high ones bright in every channel, as UniReg's multi-modal BSD mapping.
    ``apply_colormap`` interpolates linearly between the knots.
    """
    batch = check.positive_int(batch, "batch")
    channels = check.positive_int(channels, "channels")
    knots = check.positive_int(knots, "knots", minimum=2)
    check.generator(generator)
    inner = _random.rand((batch, channels, knots - 2), generator, device).sort(dim=-1).values
    ends = torch.zeros((batch, channels, 1), device=inner.device)
    return torch.cat([ends, inner, ends + 1], dim=-1)


def apply_colormap(image: torch.Tensor, colormap: torch.Tensor) -> torch.Tensor:
    """Map a gray ``image`` (B, 1, *S) in [0, 1] through ``colormap`` (B|1, C, K) knots
    (``random_colormap``): (B, C, *S), linear between knots, inputs clamped to [0, 1]."""
    check.tensor(image, "image")
    check.tensor(colormap, "colormap")
    if image.dim() not in (4, 5) or image.shape[1] != 1:
        raise ValueError(f"image: expected a gray image (B, 1, *S), got shape {tuple(image.shape)}")
    if colormap.dim() != 3 or colormap.shape[0] not in (1, image.shape[0]) or colormap.shape[2] < 2:
        raise ValueError(f"colormap: expected (B or 1, C, K >= 2) knots, got shape {tuple(colormap.shape)}")
    batch, channels, knots = image.shape[0], colormap.shape[1], colormap.shape[2]
    colormap = colormap.to(image.device, image.dtype).expand(batch, -1, -1)
    position = image.clamp(0, 1).reshape(batch, 1, -1) * (knots - 1)
    low = position.floor().clamp_max(knots - 2)
    weight = position - low
    index = low.long().expand(-1, channels, -1)
    left = torch.gather(colormap, 2, index)
    right = torch.gather(colormap, 2, index + 1)
    return torch.lerp(left, right, weight).view(batch, channels, *image.shape[2:])


def recolor_labels(
    labels: torch.Tensor,
    num_labels: int,
    channels: int = 1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random intensity per label and channel, U(0, 1): (B, channels, *S) float32 from
    ``labels`` (B, 1, *S) int64 (UniReg's Multi-LabelM recolouring: the regions keep their
    shape, their gray levels and order change)."""
    _check_labels(labels, "labels")
    num_labels = check.positive_int(num_labels, "num_labels")
    channels = check.positive_int(channels, "channels")
    check.generator(generator)
    if int(labels.max()) >= num_labels:
        raise ValueError(f"labels: expected values in [0, {num_labels}) (num_labels), got a maximum of {int(labels.max())}")
    batch = labels.shape[0]
    colors = _random.rand((batch, channels, num_labels), generator, labels.device)
    flat = labels.reshape(batch, 1, -1).expand(-1, channels, -1)
    return torch.gather(colors, 2, flat).view(batch, channels, *labels.shape[2:])


def _check_labels(labels, name: str) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of int64 labels, got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise TypeError(f"{name}: expected int64 labels (B, 1, *S), got {labels.dtype}")
    if labels.dim() not in (4, 5) or labels.shape[1] != 1:
        raise ValueError(f"{name}: expected a label map (B, 1, H, W) or (B, 1, D, H, W), got shape {tuple(labels.shape)}")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{name}: expected labels >= 0, got a minimum of {int(labels.min())}")
