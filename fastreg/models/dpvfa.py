"""DP-VFA and DP-Conv-C (Liu, Ruan, Sheng, MIDL 2025): a dual-stream pyramid encoder and a
coarse-to-fine decoder that refines the field by composition, one matching step per level.

Shapes and units (the interface of fastreg.models.base): fixed, moving (B, 1, *S) in
[0, 1], 2-D (H, W) or 3-D (D, H, W); the displacement (B, ndim, *S) is in voxels, ij order.
Inputs are replicate-padded to a multiple of 2^(L-1) = 16 (L = 5 levels), and to at least 32
per axis (the instance norms need more than one voxel at the coarsest level), and the field is
cropped back.

Encoder (shared weights; fixed and moving run as one batch of 2B, instance norm keeps them
independent): level 0 = 1x1 conv 1 -> C_0, then a residual block (stride 1); level l >= 1 =
a residual block of stride 2 (fastreg.models.blocks.ResidualBlock). Channels C = [16, 32,
32, 64, 64] at resolutions 1, 1/2, ..., 1/16. Kaiming-normal (a = 0.2) weights, zero biases.

Decoder, from the coarsest level L-1 down to 0 (spec: specs/models.md, DP-VFA):
  coarsest:  u = match(F_f, F_m)
  finer:     u_up = resize_field(u, x2)           (2 * trilinear x2, align_corners=True)
             u_res = match(F_f, warp(F_m, u_up, border padding))
             u = compose(u_up, u_res) = u_res + warp(u_up, u_res)   (border padding)
  DPVFA.match:   vfa_attention(proj(F_f), proj(F~_m), radius 1), proj a 3^ndim conv C -> A
                 with A = [16, 32, 32, 64, 64] shared by both streams; keys replicate-padded,
                 weights softmax(q . k / sqrt(A)), displacement sum_k w_k o_k (voxels of the
                 level). No output conv, no beta.
  DPConvC.match: local_correlation(F_f, F~_m, radius 1, C^-1/2, zero padding) ((2r+1)^ndim
                 = 27 channels), a residual block of width [32, 64, 64, 128, 128], then a
                 flow conv (N(0, 1e-5) weights, zero bias).
Levels (base-class contract): ``levels=k`` runs the k coarsest decoder steps and returns
that field resized (x 2^(L-k), vectors scaled alike) to the input's resolution.

Parameter counts (default widths): DPVFA 3-D 791,104 = encoder 507,504 + projections
283,600 (the paper's); 2-D 270,400 = 175,728 + 94,672 (the same
layers with 3x3 kernels).
DPConvC 3-D 1,993,023 = encoder 507,504 + decoder 1,485,519: per level a residual block
27 -> W (27*27*W + 27*W*W + 27*W weights, 9*W biases and norm affines) and a flow conv
(27*W*3 + 3), W = 32, 64, 64, 128, 128: 52,128 + 2,595, 159,552 + 5,187 (twice), 540,288 +
10,371 (twice). The spec's "about 1.99 M" is this count. 2-D: 602,266 (9 correlation
channels, 3x3 kernels).
"""
from __future__ import annotations

import torch
from torch import nn

from fastreg import _validate as check
from fastreg.models.base import RegistrationModel
from fastreg.models.blocks import ResidualBlock, conv, flow_head, init_kaiming
from fastreg.models.kernels import FASTREG, Kernels

CHANNELS = (16, 32, 32, 64, 64)  # encoder channels per level, fine to coarse
ATTENTION = (16, 32, 32, 64, 64)  # DP-VFA projection widths A_i
CONV_WIDTHS = (32, 64, 64, 128, 128)  # DP-Conv-C decoder block widths


class PyramidEncoder(nn.Module):
    """(B, 1, *S) -> [(B, C_l, *S / 2^l) for l < L], fine to coarse."""

    def __init__(self, ndim: int, channels: tuple[int, ...]):
        super().__init__()
        self.stem = conv(ndim, 1, channels[0], 1)
        self.blocks = nn.ModuleList(
            [ResidualBlock(ndim, channels[0], channels[0], 1)]
            + [ResidualBlock(ndim, c_in, c_out, 2) for c_in, c_out in zip(channels[:-1], channels[1:])]
        )
        init_kaiming(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


class PyramidRegistration(RegistrationModel):
    """The shared dual-stream pyramid and coarse-to-fine composition; subclasses give
    ``match(level, fixed_features, moving_features) -> (B, ndim, *S_level)``."""

    svf = False
    kernels: Kernels = FASTREG

    def __init__(self, ndim: int, channels):
        super().__init__()
        self.ndim = check.model_ndim(ndim)
        channels = check.positive_ints(channels, "channels")
        self.num_levels = len(channels)
        self.multiple = 2 ** (len(channels) - 1)
        self.min_size = 2 * self.multiple  # instance norm needs > 1 voxel at the coarsest level
        self.encoder = PyramidEncoder(self.ndim, channels)

    def match(self, level: int, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_fixed(self, fixed: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's pyramid of the fixed image (fine to coarse), shared by every pass."""
        return [f.to(fixed.dtype) for f in self.encoder(fixed)]

    def predict(self, fixed: torch.Tensor, moving: torch.Tensor, levels: int,
                fixed_code: list[torch.Tensor] | None = None) -> torch.Tensor:
        k = self.kernels
        # Under autocast the network may run in a lower precision; the features, fields and
        # registration ops stay in the images' dtype.
        if fixed_code is None:
            both = [f.to(fixed.dtype) for f in self.encoder(torch.cat([fixed, moving]))]
            pyramids = [f.chunk(2) for f in both]
        else:
            pyramids = list(zip(fixed_code, (f.to(fixed.dtype) for f in self.encoder(moving))))
        u = None
        top = self.num_levels - 1
        for level in range(top, top - levels, -1):
            f_fixed, f_moving = pyramids[level]
            if u is None:
                u = self.match(level, f_fixed, f_moving)
                continue
            u_up = k.resize_field(u, scale_factor=2.0)
            u_res = self.match(level, f_fixed, k.warp(f_moving, u_up, padding_mode="border"))
            u = k.compose(u_up, u_res)
        return k.resize_field(u, scale_factor=float(2 ** (top - levels + 1)))


class DPVFA(PyramidRegistration):
    """DP-VFA: the pyramid with one vector-field-attention step per level
    (``fastreg.vfa_attention``). See the module docstring for the architecture.

    Args:
        ndim: 2 or 3 spatial dimensions.
        channels: encoder channels per level, fine to coarse (paper: 16, 32, 32, 64, 64);
            their number is the number of levels L (inputs padded to a multiple of 2^(L-1)).
        attention: projection widths A per level (paper: equal to ``channels``).
        radius: attention neighbourhood radius (paper: 1, 27 neighbours in 3-D).

    Example::

        model = fastreg.models.DPVFA(ndim=3)         # 791,104 parameters
        disp = model(fixed, moving)                  # (B, 3, D, H, W) voxels
        coarse = model(fixed, moving, levels=2)      # the two coarsest levels only
    """

    def __init__(self, ndim: int = 3, channels=CHANNELS, attention=ATTENTION, radius: int = 1):
        super().__init__(ndim, channels)
        channels = check.positive_ints(channels, "channels")
        attention = check.positive_ints(attention, "attention", len(channels))
        self.radius = check.non_negative_int(radius, "radius")
        if self.radius < 1:
            raise ValueError(f"radius: expected an int >= 1, got {radius}")
        self.projections = nn.ModuleList(conv(self.ndim, c, a, 3, padding=1) for c, a in zip(channels, attention))
        init_kaiming(self.projections)

    def match(self, level: int, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        proj = self.projections[level]
        q, k = proj(fixed).to(fixed.dtype), proj(moving).to(fixed.dtype)
        return self.kernels.vfa_attention(q, k, radius=self.radius)


class DPConvC(PyramidRegistration):
    """DP-Conv-C: the pyramid with a correlation + convolution step per level
    (``fastreg.local_correlation``). See the module docstring for the architecture and the
    parameter count (3-D: 1,993,023).

    Args:
        ndim: 2 or 3 spatial dimensions.
        channels: encoder channels per level, fine to coarse (paper: 16, 32, 32, 64, 64).
        widths: decoder residual-block width per level (paper: 32, 64, 64, 128, 128).
        radius: correlation radius (paper: 1, 27 channels in 3-D).
    """

    def __init__(self, ndim: int = 3, channels=CHANNELS, widths=CONV_WIDTHS, radius: int = 1):
        super().__init__(ndim, channels)
        widths = check.positive_ints(widths, "widths", self.num_levels)
        self.radius = check.non_negative_int(radius, "radius")
        if self.radius < 1:
            raise ValueError(f"radius: expected an int >= 1, got {radius}")
        cost = (2 * self.radius + 1) ** self.ndim
        self.blocks = nn.ModuleList(ResidualBlock(self.ndim, cost, w) for w in widths)
        init_kaiming(self.blocks)
        self.flows = nn.ModuleList(flow_head(self.ndim, w) for w in widths)

    def match(self, level: int, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        cost = self.kernels.local_correlation(fixed, moving, self.radius, "rsqrt_channels", "zeros")
        return self.flows[level](self.blocks[level](cost)).to(fixed.dtype)
