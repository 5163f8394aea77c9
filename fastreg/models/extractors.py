"""Frozen 2-D feature extractors of UniReg, and their slice-wise use on 3-D volumes.

Contract of an extractor (built-in or any user ``nn.Module``):
  forward(x) with x (B, 3, H, W) RGB images in [0, 1] (H, W even) -> (B, C, H/2, W/2)
  features; the module applies its own input normalisation. C is measured once on a small
  probe when UniReg is built.
UniReg freezes every extractor (``requires_grad_(False)``) and keeps it in eval mode.

Built-in extractors (Shao & Joshi, UniReg, and its supplementary variants):
  "vgg16"     VGG16's first block (conv1_1, ReLU, conv1_2, ReLU, max-pool 2): 64 channels,
              38,720 parameters, ImageNet weights shipped in fastreg/weights (see
              VGG16_BLOCK1_ATTRIBUTION.md there).
  "resnet50"  ResNet-50 up to its first pooling: conv1 (7x7, stride 2, no bias), bn1, ReLU;
              64 channels at H/2 (the max-pool that follows is left out so every extractor
              gives H/2). 9,536 parameters + BN statistics.
  "googlenet" GoogLeNet (Inception v1) up to its first pooling: conv1 (7x7, stride 2, no bias,
              BN eps 1e-3, ReLU); 64 channels at H/2. 9,536 parameters + BN statistics.
The ResNet-50 and GoogLeNet ImageNet weights are not shipped (no licence-clear source that
installs here, and fastreg never downloads): pass ``weights`` = a path to, or the dict of,
torchvision's full ``resnet50`` / ``googlenet`` state_dict (only the stem's keys are read).
"""
from __future__ import annotations

import os
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

NAMES = ("vgg16", "resnet50", "googlenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _load_state(weights, name: str) -> dict[str, torch.Tensor]:
    """A state_dict from a path or a dict (argument ``name`` in error messages)."""
    if isinstance(weights, (str, os.PathLike)):
        if not os.path.isfile(weights):
            raise ValueError(f"{name}: no such file {os.fspath(weights)!r}")
        try:
            weights = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: say which one
            raise ValueError(f"{name}: {os.fspath(weights)!r} is not a torch state_dict file ({err})") from None
    if not isinstance(weights, dict):
        raise TypeError(f"{name}: expected a path or a state_dict (dict of tensors), got {type(weights).__name__}")
    return weights


def _copy_stem(module: nn.Module, state: dict, keys: dict[str, str], name: str) -> None:
    """Copy ``state[src]`` into ``module``'s ``dst`` for every (dst, src) of ``keys``, checking shapes."""
    missing = [src for src in keys.values() if src not in state]
    if missing:
        raise ValueError(f"{name}: the state_dict lacks {missing} (expected torchvision's keys)")
    own = module.state_dict()
    for dst, src in keys.items():
        value = state[src]
        if not isinstance(value, torch.Tensor) or value.shape != own[dst].shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name}: {src!r} has shape {got}, expected {tuple(own[dst].shape)}")
        own[dst] = value
    module.load_state_dict(own)


class VGG16Block1(nn.Module):
    """The first block of ImageNet VGG16 with the preprocessing its weights expect.

    The shipped weights are the Keras applications' (converted from the original Caffe
    model), so the input is prepared the Caffe way: x in [0, 1] -> x * 255, RGB -> BGR, the
    per-channel means (B 103.939, G 116.779, R 123.68) subtracted, no std division. This
    differs from the torchvision mean/std normalisation of the UniReg spec on purpose: each
    set of weights must see the inputs it was trained on, and these are Caffe's.

    The block's response is multiplied by ``output_scale`` = 1 / (255 * 0.226): Caffe's
    weights see 0-255 inputs without the std division of the torchvision pipeline (mean std
    0.226 in [0, 1] units), so their features are about 58x larger than those the paper's
    FeatureUNet was trained on; the scale brings them back (ReLU and max-pool commute with it),
    and keeps the network's inputs of order 1 so Adam's first steps do not blow the field up.

    Shapes: (B, 3, H, W) RGB in [0, 1] -> (B, 64, H//2, W//2). ``weights``: None for the
    shipped file, or a path / dict with keys conv1.weight (64, 3, 3, 3) [input channels BGR],
    conv1.bias, conv2.weight (64, 64, 3, 3), conv2.bias.
    """

    output_scale = 1.0 / (255.0 * 0.226)

    def __init__(self, weights=None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1)
        self.register_buffer("mean_bgr", torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1), persistent=False)
        if weights is None:
            with resources.as_file(resources.files("fastreg") / "weights" / "vgg16_block1.pt") as path:
                state = _load_state(path, "weights")
        else:
            state = _load_state(weights, "weights")
        _copy_stem(self, state, {k: k for k in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias")}, "weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flip(1) * 255.0 - self.mean_bgr
        x = F.relu(self.conv1(x), inplace=True)
        x = F.relu(self.conv2(x), inplace=True)
        return F.max_pool2d(x, 2) * self.output_scale


class ConvBNStem(nn.Module):
    """A 7x7 stride-2 convolution (no bias), batch norm and ReLU: the stem of ResNet-50 and
    GoogLeNet up to (not including) their first pooling. (B, 3, H, W) in [0, 1] -> (B, 64,
    ceil(H/2), ceil(W/2)). ``mean``/``std``: the input normalisation the weights expect."""


    def __init__(self, mean, std, bn_eps: float):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(64, eps=bn_eps)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv((x - self.mean) / self.std)))


# torchvision key of each stem tensor (ConvBNStem name -> torchvision name).
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
STEM_KEYS = {
    "resnet50": {"conv.weight": "conv1.weight", **{f"bn.{k}": f"bn1.{k}" for k in _BN}},
    "googlenet": {"conv.weight": "conv1.conv.weight", **{f"bn.{k}": f"conv1.bn.{k}" for k in _BN}},
}


def resnet50_stem(weights) -> ConvBNStem:
    """ResNet-50's stem with torchvision's ImageNet normalisation (mean/std above)."""
    stem = ConvBNStem(IMAGENET_MEAN, IMAGENET_STD, bn_eps=1e-5)
    _copy_stem(stem, _load_state(weights, "extractor_weights"), STEM_KEYS["resnet50"], "extractor_weights")
    return stem


def googlenet_stem(weights) -> ConvBNStem:
    """GoogLeNet's stem. torchvision's ImageNet GoogLeNet runs with transform_input=True,
    which maps its mean/std-normalised input back to (x - 0.5) / 0.5: that is the
    normalisation applied here."""
    stem = ConvBNStem((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), bn_eps=1e-3)
    _copy_stem(stem, _load_state(weights, "extractor_weights"), STEM_KEYS["googlenet"], "extractor_weights")
    return stem


def build(extractor, weights=None) -> nn.Module:
    """The frozen extractor named ``extractor`` (one of NAMES) or the given module, in eval mode."""
    if isinstance(extractor, nn.Module):
        if weights is not None:
            raise ValueError("extractor_weights: only used with a named extractor; load weights into your module yourself")
        module = extractor
    elif extractor == "vgg16":
        module = VGG16Block1(weights)
    elif extractor in ("resnet50", "googlenet"):
        if weights is None:
            raise ValueError(
                f"extractor_weights: the {extractor!r} stem needs ImageNet weights, which fastreg does not ship "
                f"and never downloads; pass extractor_weights=<path to, or dict of, torchvision's {extractor} "
                f"state_dict> (e.g. saved with torch.save(torchvision.models.{extractor}(weights='DEFAULT')"
                ".state_dict(), path) where torchvision works), or use extractor='vgg16'"
            )
        module = resnet50_stem(weights) if extractor == "resnet50" else googlenet_stem(weights)
    else:
        raise ValueError(f"extractor: expected one of {NAMES} or an nn.Module, got {extractor!r}")
    module.requires_grad_(False)
    return module.eval()


def out_channels(module: nn.Module) -> int:
    """C of the extractor's (B, C, H/2, W/2) output, measured on a (1, 3, 32, 32) probe
    (which checks the H/2 contract on the way)."""
    param = next(iter(module.parameters()), None)
    probe = torch.rand(1, 3, 32, 32, device=param.device if param is not None else "cpu",
                       dtype=param.dtype if param is not None else torch.float32)
    with torch.no_grad():
        out = module(probe)
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or tuple(out.shape[2:]) != (16, 16):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"extractor: expected (B, 3, H, W) -> (B, C, H/2, W/2), got (1, 3, 32, 32) -> {got}")
    return int(out.shape[1])


# Pixels per extractor call: the extractor's full-resolution activations (64 channels, float32:
# 16 MiB each at this size) are transient, so running it on a few images at a time bounds
# their peak (no gradient is kept for the frozen extractor). It also keeps every block under
# glibc's largest mmap threshold (32 MiB), so freed activations are reused from the heap:
# at 1 << 18 pixels (64 MiB blocks) each call page-faulted all of them back from the kernel,
# 1.5-1.6x the CPU time for 16 images of 224^2 or 48 slices of 112x96 (BENCHMARKS.md, "Page
# faults").
CHUNK_PIXELS = 1 << 16


def _run(module: nn.Module, rgb: torch.Tensor) -> torch.Tensor:
    """module on a (N, 3, P, Q) batch, CHUNK_PIXELS at a time, in channels_last (NHWC) memory
    format, the faster one for oneDNN's CPU convolutions (measured in benchmarks/model_unireg.py)."""
    per_call = max(1, CHUNK_PIXELS // (rgb.shape[2] * rgb.shape[3]))
    parts = [module(part.contiguous(memory_format=torch.channels_last)) for part in rgb.split(per_call)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def features(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Extractor features of (B, 1, *S) images in [0, 1] (grayscale replicated to RGB).

    2-D: (B, 1, H, W) -> (B, C, H/2, W/2).
    3-D: (B, 1, D, H, W) -> (B, C, D/2, H/2, W/2). The 2-D extractor runs on every slice
    along each of the three axes in turn (all slices of a volume batched as one 2-D batch);
    each result is halved along its slicing axis by a max-pool of 2 (the in-plane axes were
    halved by the extractor's own pooling), so the three orientations land on the same
    half-resolution grid, and their mean is returned. Averaging (instead of concatenating)
    keeps C channels whatever the dimension and treats no axis specially.
    """
    rgb = images.expand(-1, 3, *images.shape[2:])
    if images.dim() == 4:
        return _run(module, rgb)
    total = None
    for axis in (2, 3, 4):
        moved = rgb.movedim(axis, 1)  # (B, n, 3, P, Q)
        b, n = moved.shape[:2]
        out = _run(module, moved.reshape(b * n, *moved.shape[2:]))
        out = out.reshape(b, n, *out.shape[1:]).movedim(1, axis)  # (B, C, ...) slicing axis at `axis`
        kernel = [1, 1, 1]
        kernel[axis - 2] = 2
        out = F.max_pool3d(out, kernel)
        total = out if total is None else total + out
    return total / 3.0
