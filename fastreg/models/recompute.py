"""A U-Net's full-resolution level that keeps only its input for backward.

``conv_block_pool(x, conv)`` = max_pool(LeakyReLU_0.2(conv(x)), 2), 2-D or 3-D: the first
encoder level of a VoxelMorph U-Net (fastreg.models.blocks.ConvBlock followed by max-pool 2),
with the same values and gradients as those layers run one after the other.

Why: in a U-Net whose decoder stops at half resolution (the cascaded U-Net) the first
level's activation y = LeakyReLU(conv(x)), W channels at the input's full resolution, is the
largest tensor of the network, and autograd keeps it (and the pooling's int64 indices, half
of y's size again) from the forward to the end of the backward. At the backward of that
level autograd then holds y, the pooling's gradient and the LeakyReLU's gradient, three
tensors of y's size, and on CPU the convolution's backward reorders its operands into
oneDNN's blocked layout (another 1.5 y for a 2-channel input): that is the peak of the
training step (cascade, 96x112x96, widths (16, 32): 509 MiB, y = 144 MiB).

How: the level runs in slabs along the first spatial axis (an even number of rows, about
SLAB_BYTES of y each; the convolution of a slab reads one more row of x on either side, zero
beyond the image). The forward keeps x and the weights only. The backward recomputes each
slab's y and pooling indices, applies the LeakyReLU's derivative at the pooled positions
(the pooled value is y at the arg-max, and y > 0 exactly where conv(x) > 0), scatters that
gradient back with the pooling's backward and runs the convolution's backward on the slab,
adding the slabs' weight and input gradients. No tensor of y's full size ever exists; the
recomputed slab is the forward's bit for bit (the same convolution call on the same
operands). Under autocast the recomputation uses the dtype the forward's convolution ran
in and the gradients come back in the dtypes of x and the weights.

Cost: a slab is below the size at which PyTorch picks oneDNN for a 2-channel 3-D
convolution (B * C_in * D * H > 20480), so the slabs run its im2col convolution (a column
buffer of 27 C_in / C_out times the slab's activation, freed at once). At 96x128x96,
2 -> 32 channels, the level's forward + backward takes 1.7x the plain layers' time with
16 MiB slabs (8 MiB: 2.5x, 32 MiB: 1.65x; medians of 4 paired rounds, 2 threads, loaded
machine); the cascade's training step about 1.17x (32 MiB slabs). 16 MiB: at 48x56x48 the
step's peak is 82.8 MiB (32 MiB slabs: 111.8, the column buffer of the one slab). Slabs
along the last axis keep oneDNN (its heuristic does not count W) and may be cheaper: not
tried.

``torch.utils.checkpoint`` (use_reentrant=False) of the same layers was measured and does
not lower the peak: its backward recomputes the whole y and then runs the same
three-tensor LeakyReLU backward (BENCHMARKS.md, "Cascaded U-Net memory").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastreg.models.blocks import SLOPE

SLAB_BYTES = 1 << 24  # about 16 MiB of activation per slab (cost and peak: see above)


def _slabs(x: torch.Tensor, channels: int, itemsize: int) -> list[tuple[int, int]]:
    """Row ranges [a, b) of y along axis 2 (a, b even) covering the rows the pooling reads."""
    rows = 2 * (x.shape[2] // 2)
    row_bytes = x.shape[0] * channels * x[0, 0, 0].numel() * itemsize
    step = max(2, SLAB_BYTES // max(row_bytes, 1) // 2 * 2)
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


def _slab_input(x: torch.Tensor, a: int, b: int) -> tuple[torch.Tensor, int, int]:
    """(rows a-1 .. b of x, zero rows outside the image, the first row's index, pad before)."""
    lo, hi = max(a - 1, 0), min(b + 1, x.shape[2])
    before, after = 1 - (a - lo), 1 - (hi - b)
    pads = [0, 0] * (x.dim() - 3) + [before, after]
    return F.pad(x[:, :, lo:hi], pads), lo, before


def _conv(xs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv(xs), no padding along axis 2 (xs holds the halo rows), padding 1 along the others."""
    ndim = xs.dim() - 2
    return (F.conv2d, F.conv3d)[ndim - 2](xs, weight, bias, padding=(0,) + (1,) * (ndim - 1))


def _pool(y: torch.Tensor):
    return (F.max_pool2d, F.max_pool3d)[y.dim() - 4](y, 2, return_indices=True)


class _ConvBlockPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        pooled = []
        dtype = None
        for a, b in _slabs(x, weight.shape[0], x.element_size()):
            y = F.leaky_relu_(_conv(_slab_input(x, a, b)[0], weight, bias), SLOPE)
            dtype = y.dtype
            pooled.append(_pool(y)[0])
        ctx.save_for_backward(x, weight, bias)
        ctx.compute_dtype = dtype
        return torch.cat(pooled, dim=2)

    @staticmethod
    def backward(ctx, grad_pooled):
        x, weight, bias = ctx.saved_tensors
        ndim = x.dim() - 2
        dtype = ctx.compute_dtype
        want_x, want_w, want_b = ctx.needs_input_grad
        want_b = want_b and bias is not None
        pool_backward = (torch.ops.aten.max_pool2d_with_indices_backward,
                         torch.ops.aten.max_pool3d_with_indices_backward)[ndim - 2]
        with torch.autocast(x.device.type, enabled=False):
            xc, wc = x.to(dtype), weight.to(dtype)
            bc = None if bias is None else bias.to(dtype)
            gx = torch.zeros_like(xc) if want_x else None
            gw = torch.zeros_like(wc) if want_w else None
            gb = torch.zeros_like(bc) if want_b else None
            for a, b in _slabs(x, weight.shape[0], x.element_size()):
                xs, lo, before = _slab_input(xc, a, b)
                y = F.leaky_relu_(_conv(xs, wc, bc), SLOPE)
                pooled, indices = _pool(y)
                g = grad_pooled[:, :, a // 2:b // 2].to(dtype)
                g = torch.where(pooled > 0, g, g * SLOPE)  # LeakyReLU' at the arg-max
                g = pool_backward(g, y, [2] * ndim, [2] * ndim, [0] * ndim, [1] * ndim, False, indices)
                del y, pooled, indices
                gxs, gws, gbs = torch.ops.aten.convolution_backward(
                    g, xs, wc, None if bias is None else [bias.shape[0]], [1] * ndim, [0] + [1] * (ndim - 1),
                    [1] * ndim, False, [0] * ndim, 1, [want_x, want_w, want_b])
                if want_x:
                    rows = min(gxs.shape[2] - before, x.shape[2] - lo)
                    gx[:, :, lo:lo + rows] += gxs[:, :, before:before + rows]
                if want_w:
                    gw += gws
                if want_b:
                    gb += gbs
        return (None if gx is None else gx.to(x.dtype), None if gw is None else gw.to(weight.dtype),
                None if gb is None else gb.to(bias.dtype))


def conv_block_pool(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """(B, C_in, *S) -> (B, C_out, *S // 2): max_pool_2(LeakyReLU_0.2(conv(x))), ``conv`` a
    3^ndim convolution with padding 1, stride 1 (fastreg.models.blocks.ConvBlock's), keeping
    only x and the weights for backward (see the module docstring)."""
    ndim = x.dim() - 2
    if conv.padding != (1,) * ndim or conv.stride != (1,) * ndim or conv.dilation != (1,) * ndim or conv.groups != 1:
        raise ValueError(f"conv: expected a 3^ndim convolution with padding 1, stride 1, got {conv}")
    return _ConvBlockPool.apply(x, conv.weight, conv.bias)
