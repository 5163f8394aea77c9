"""Convolution blocks of the seed models, 2-D or 3-D by ``ndim``.

  conv(ndim, ...)       nn.Conv2d / nn.Conv3d with the given arguments
  ConvBlock             VoxelMorph's block: 3^ndim conv (bias) + LeakyReLU(0.2), no norm
  ResidualBlock         DP-VFA's block: conv3 -> IN -> LReLU -> conv3 -> IN, plus a 1x1 conv
                        -> IN skip (same stride), summed, then LReLU(0.2)
  flow_head(ndim, c)    3^ndim conv c -> ndim displacement channels, N(0, 1e-5) weights,
                        zero bias (VoxelMorph's flow layer: the first prediction is ~0)
  init_kaiming(module)  kaiming-normal (a = 0.2, leaky_relu) weights, zero biases, for
                        every convolution inside ``module`` (DP-VFA)
The LeakyReLUs run in place: their backward needs only their output, so the conv or norm
output before them is not kept as well (same values; the cascade's training step at
48x56x48, widths 16/32, peaks at 114 MiB instead of 152 MiB).
"""
from __future__ import annotations

from torch import nn

SLOPE = 0.2  # LeakyReLU slope of VoxelMorph, DP-VFA and the cascaded U-Net


def conv(ndim: int, *args, **kwargs) -> nn.Module:
    return (nn.Conv2d, nn.Conv3d)[ndim - 2](*args, **kwargs)


def instance_norm(ndim: int, channels: int) -> nn.Module:
    return (nn.InstanceNorm2d, nn.InstanceNorm3d)[ndim - 2](channels, affine=True)


class ConvBlock(nn.Sequential):
    """(B, c_in, *S) -> (B, c_out, *S): 3^ndim conv with bias, LeakyReLU(0.2)."""

    def __init__(self, ndim: int, c_in: int, c_out: int):
        super().__init__(conv(ndim, c_in, c_out, 3, padding=1), nn.LeakyReLU(SLOPE, inplace=True))


class ResidualBlock(nn.Module):
    """(B, c_in, *S) -> (B, c_out, *S / stride): the residual block of DP-VFA's encoder.

    main = conv3 (stride) -> InstanceNorm(affine) -> LReLU(0.2) -> conv3 -> IN;
    skip = 1x1 conv (stride) -> IN; out = LReLU(0.2)(main + skip). Every conv has a bias.
    """

    def __init__(self, ndim: int, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.main = nn.Sequential(
            conv(ndim, c_in, c_out, 3, stride=stride, padding=1),
            instance_norm(ndim, c_out),
            nn.LeakyReLU(SLOPE, inplace=True),
            conv(ndim, c_out, c_out, 3, padding=1),
            instance_norm(ndim, c_out),
        )
        self.skip = nn.Sequential(conv(ndim, c_in, c_out, 1, stride=stride), instance_norm(ndim, c_out))
        self.act = nn.LeakyReLU(SLOPE, inplace=True)

    def forward(self, x):
        return self.act(self.main(x) + self.skip(x))


def flow_head(ndim: int, channels: int) -> nn.Module:
    head = conv(ndim, channels, ndim, 3, padding=1)
    nn.init.normal_(head.weight, 0.0, 1e-5)
    nn.init.zeros_(head.bias)
    return head


def init_kaiming(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, a=SLOPE, nonlinearity="leaky_relu")
            nn.init.zeros_(m.bias)
