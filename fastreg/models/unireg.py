"""UniReg (Shao & Joshi, "Domain-Shift Immunity in Deep Deformable Registration via Local
Feature Representations"): a frozen local-feature extractor on both images, a FeatureUNet on
the concatenated features, and an extra x2 upsampling to the input resolution.

Shapes (the RegistrationModel contract, fastreg/models/base.py):
  fixed, moving (B, 1, *S) in [0, 1], S = (H, W) or (D, H, W), any size (padded to a
  multiple of 2^len(widths) = 8 inside, the field cropped back)
  -> displacement (B, ndim, *S) in voxels, ij order: fastreg.warp(moving, disp) ~ fixed.
Pipeline on the padded pair:
  features  extractor(fixed), extractor(moving): (B, C, *S/2) each (C = 64 for VGG16; 3-D:
            slice-wise along the three axes, see fastreg.models.extractors.features), both
            images batched together, frozen (no parameter of the extractor trains)
  FeatureUNet on cat(features) (B, 2C, *S/2): three levels at S/2, S/4, S/8 with widths
            (64, 128, 256); encoder: conv block per level, max-pool 2 between levels;
            decoder: nearest x2 upsampling, concatenation with the encoder's skip, conv block
            (computed as two convolutions that store neither, see UpBlock);
            conv block = 3^ndim conv (bias) + LeakyReLU(0.2) (VoxelMorph-like: the paper
            publishes neither widths, norms nor head init)
  head      3^ndim conv -> ndim channels at S/2, weights N(0, 1e-5), zero bias
  upsample  the extra x2 upsampling: fastreg.resize_field(scale_factor=2) (linear,
            align_corners=True, vectors x2: VoxelMorph's ResizeTransform). The paper's "up-sample
            layer" is not specified further; resampling the field instead of running a learned
            full-resolution layer keeps the network at S/2, where it costs 4x (8x in 3-D) less.
Number of levels for NIO: 1. Loss of the paper: fastreg.nn.loss_for("unireg") (MSE + 0.01
L1 forward-difference gradient).
Parameters (defaults): 38,720 frozen (VGG16 block 1) + 997,122 trainable in 2-D
(2,991,811 in 3-D).
Speed: the extractor runs a few images at a time (bounded transient memory), the 2-D network
in channels_last, LeakyReLU in place, decoder blocks without stored concatenations; training under torch.autocast("cpu", torch.bfloat16)
works and is faster still on CPUs with bf16 instructions (BENCHMARKS.md, "UniReg").
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastreg.models import extractors
from fastreg.models.base import RegistrationModel
from fastreg.ops.resize import resize_field


def _conv(ndim: int):
    return nn.Conv2d if ndim == 2 else nn.Conv3d


class ConvBlock(nn.Module):
    """3^ndim convolution (stride 1, padding 1, bias) + LeakyReLU(0.2): (B, cin, *S) -> (B, cout, *S).

    The activation runs in place on the convolution's output (the convolution's backward
    needs only its input, LeakyReLU's only its output), so a block keeps one tensor for
    backward instead of two."""

    def __init__(self, ndim: int, cin: int, cout: int):
        super().__init__()
        self.conv = _conv(ndim)(cin, cout, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def _conv_nd(ndim: int):
    return F.conv2d if ndim == 2 else F.conv3d


class _UpsampledConv(torch.autograd.Function):
    """conv(nearest_x2(x), weight, bias), 3^ndim kernel, padding 1, that keeps x for backward
    instead of its 2^ndim times larger upsampled copy (recomputed in backward: a copy, no
    arithmetic). x (B, cin, *S) -> (B, cout, *2S). Under autocast the convolution runs in the
    autocast dtype and the backward in the dtype of the incoming gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight, bias)
        return _conv_nd(x.dim() - 2)(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        nd = x.dim() - 2
        dtype = grad.dtype
        up = F.interpolate(x.to(dtype), scale_factor=2, mode="nearest")
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        gi, gw, gb = torch.ops.aten.convolution_backward(
            grad, up, weight.to(dtype), [bias.shape[0]], [1] * nd, [1] * nd, [1] * nd, False, [0] * nd, 1, mask)
        gx = None
        if gi is not None:  # nearest x2 upsampling's adjoint: the sum over each 2^ndim block
            gx = ((F.avg_pool2d if nd == 2 else F.avg_pool3d)(gi, 2) * 2 ** nd).to(x.dtype)
        return gx, None if gw is None else gw.to(weight.dtype), None if gb is None else gb.to(bias.dtype)


class UpBlock(nn.Module):
    """Decoder block: LeakyReLU(0.2)(conv(cat(nearest_x2(x), skip))) with the convolution split
    along its input channels, conv_up(nearest_x2(x)) + conv_skip(skip): the same function and
    parameters (initialised as the one convolution), but neither the concatenation nor the
    upsampled copy is stored for backward (skip is kept by the encoder anyway, x by this
    block's predecessor). x (B, cin_up, *S/2), skip (B, cin_skip, *S) -> (B, cout, *S)."""

    def __init__(self, ndim: int, cin_up: int, cin_skip: int, cout: int):
        super().__init__()
        full = _conv(ndim)(cin_up + cin_skip, cout, 3, padding=1)  # torch's default init over the full fan-in
        self.weight_up = nn.Parameter(full.weight[:, :cin_up].detach().clone())
        self.weight_skip = nn.Parameter(full.weight[:, cin_up:].detach().clone())
        self.bias = nn.Parameter(full.bias.detach().clone())
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        out = _UpsampledConv.apply(x, self.weight_up, self.bias)
        return self.act(out + _conv_nd(skip.dim() - 2)(skip, self.weight_skip, padding=1))


class FeatureUNet(nn.Module):
    """Encoder-decoder on feature maps: (B, in_channels, *S) -> (B, widths[0], *S), S divisible
    by 2^(len(widths) - 1). Level k runs at S / 2^k with widths[k] channels."""

    def __init__(self, ndim: int, in_channels: int, widths: Sequence[int]):
        super().__init__()
        self.ndim = ndim
        self.encoder = nn.ModuleList(
            ConvBlock(ndim, cin, cout) for cin, cout in zip((in_channels, *widths[:-1]), widths)
        )
        self.decoder = nn.ModuleList(
            UpBlock(ndim, widths[k + 1], widths[k], widths[k]) for k in reversed(range(len(widths) - 1))
        )
        self.pool = (nn.MaxPool2d if ndim == 2 else nn.MaxPool3d)(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, block in enumerate(self.encoder):
            x = block(x if k == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            x = block(x, skips.pop())
        return x


class UniReg(RegistrationModel):
    """UniReg: frozen local features, FeatureUNet, x2 upsampled displacement (see the module docstring).

    Args:
        ndim: 2 (images (B, 1, H, W)) or 3 (volumes (B, 1, D, H, W)).
        extractor: "vgg16" (default; ImageNet VGG16 block 1, weights shipped), "resnet50",
            "googlenet" (stems up to the first pooling; need ``extractor_weights``), or any
            nn.Module mapping (B, 3, H, W) RGB in [0, 1] to (B, C, H/2, W/2) (it is frozen).
        widths: channels of the FeatureUNet levels, finest first (paper: not published;
            default (64, 128, 256), three levels).
        extractor_weights: path or state_dict for the named extractor (torchvision keys for the
            ResNet-50 / GoogLeNet stems; default None: the shipped VGG16 weights).
        passes: how many times the network is applied, each pass registering the moving image
            warped by the field so far (fastreg.models.base: Recursion; default 1, the paper).

    Example::

        model = fastreg.models.create("unireg")             # 2-D, VGG16
        disp = model(fixed, moving)                          # (B, 2, H, W) voxels
        moved = fastreg.warp(moving, disp)
    """

    num_levels = 1
    svf = False

    def __init__(self, ndim: int = 2, extractor="vgg16", widths: Sequence[int] = (64, 128, 256),
                 extractor_weights=None, passes: int = 1):
        super().__init__()
        self.set_passes(passes)
        if isinstance(ndim, bool) or ndim not in (2, 3):
            raise ValueError(f"ndim: expected 2 or 3, got {ndim!r}")
        if (not isinstance(widths, (list, tuple)) or len(widths) < 2
                or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths)):
            raise ValueError(f"widths: expected two or more positive ints (finest level first), got {widths!r}")
        self.ndim = ndim
        self.multiple = 2 ** len(widths)  # the extractor's pooling, then len(widths) - 1 pools
        self.extractor = extractors.build(extractor, extractor_weights)
        channels = extractors.out_channels(self.extractor)
        self.unet = FeatureUNet(ndim, 2 * channels, tuple(widths))
        self.head = _conv(ndim)(widths[0], ndim, 3, padding=1)
        nn.init.normal_(self.head.weight, 0.0, 1e-5)
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True):
        """Train the FeatureUNet; the frozen extractor stays in eval mode (its BN statistics fixed)."""
        super().train(mode)
        self.extractor.eval()
        return self

    def encode_fixed(self, fixed: torch.Tensor) -> torch.Tensor:
        """The frozen extractor's features of the fixed image, shared by every pass."""
        return extractors.features(self.extractor, fixed)

    def predict(self, fixed: torch.Tensor, moving: torch.Tensor, levels: int,
                fixed_code: torch.Tensor | None = None) -> torch.Tensor:
        if fixed_code is None:
            f, m = extractors.features(self.extractor, torch.cat([fixed, moving], dim=0)).chunk(2, dim=0)
        else:
            f, m = fixed_code, extractors.features(self.extractor, moving)
        x = torch.cat([f, m], dim=1)
        if self.ndim == 2:  # NHWC: oneDNN's faster layout for 2-D convolutions on CPU (1.45x a step)
            x = x.contiguous(memory_format=torch.channels_last)
        half = self.head(self.unet(x))
        return resize_field(half.contiguous(), scale_factor=2.0)
