"""The cascade's recomputed full-resolution level (fastreg.models.recompute): the same values
and gradients as the layers it replaces, over several slabs, in float64, float32 and under
bf16 autocast; fewer bytes kept for backward; bad arguments."""
import copy

import pytest
import torch
import torch.nn.functional as F
from model_checks import smooth_image

from fastreg.models import CascadeUNet
from fastreg.models import recompute
from fastreg.models.blocks import ConvBlock


def layers(block, x):
    """The plain form: ConvBlock (conv, in-place LeakyReLU) then max-pool 2."""
    return (F.max_pool2d, F.max_pool3d)[x.dim() - 4](block(x), 2)


@pytest.mark.parametrize("shape", [(11, 9, 10), (13, 12)])
@pytest.mark.parametrize("slab_bytes", [1, 1 << 25])  # one pair of rows per slab, or one slab
def test_conv_block_pool_matches_the_layers_in_float64(shape, slab_bytes, monkeypatch):
    monkeypatch.setattr(recompute, "SLAB_BYTES", slab_bytes)
    block = ConvBlock(len(shape), 3, 5).double()
    x = torch.randn(2, 3, *shape, dtype=torch.float64, requires_grad=True)
    expected, got = layers(block, x), recompute.conv_block_pool(x, block[0])
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-14)
    weights = torch.randn_like(expected)
    inputs = [x, block[0].weight, block[0].bias]
    for g, e in zip(torch.autograd.grad(got, inputs, weights), torch.autograd.grad(expected, inputs, weights)):
        assert e.abs().max() > 0
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def pair_of_models(ndim):
    """(plain, recomputing) cascades with the same weights, fields of about a voxel."""
    plain = CascadeUNet(ndim=ndim, widths=(4, 8), recompute=False)
    for net in (plain.net1, plain.net2):
        torch.nn.init.normal_(net.flow.weight, 0.0, 0.5)
    lean = copy.deepcopy(plain)
    lean.net1.recompute = lean.net2.recompute = True
    return plain, lean


def field_and_gradients(model, fixed, moving):
    disp = model(fixed, moving)
    loss = (disp * torch.linspace(-1, 1, disp.numel()).view_as(disp)).sum()
    return disp, torch.autograd.grad(loss, [fixed] + list(model.parameters()))


@pytest.mark.parametrize("shape", [(20, 23, 18), (37, 45)])
def test_recomputing_cascade_gives_the_same_field_and_gradients(shape, monkeypatch):
    monkeypatch.setattr(recompute, "SLAB_BYTES", 4096)  # several slabs at these sizes
    plain, lean = pair_of_models(len(shape))
    assert not plain.net1.recompute and lean.net2.recompute and CascadeUNet(ndim=2).net2.recompute
    fixed, moving = smooth_image(shape, batch=2).requires_grad_(True), smooth_image(shape, batch=2)
    u0, g0 = field_and_gradients(plain, fixed, moving)
    u1, g1 = field_and_gradients(lean, fixed, moving)
    assert u0.abs().max() > 0.1
    torch.testing.assert_close(u1, u0, rtol=0, atol=1e-6)
    for a, b in zip(g1, g0):
        # float32 sums over slabs in another order: a few 1e-4 of the largest entry
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item())


def test_recomputing_cascade_under_bf16_autocast_gives_the_plain_gradients():
    plain, lean = pair_of_models(2)
    fixed, moving = smooth_image((32, 40)).requires_grad_(True), smooth_image((32, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u0, g0 = field_and_gradients(plain, fixed, moving)
        u1, g1 = field_and_gradients(lean, fixed, moving)
    assert u1.dtype == torch.float32 and all(g.dtype == torch.float32 for g in g1[1:])
    torch.testing.assert_close(u1, u0, rtol=0, atol=1e-6)
    for a, b in zip(g1[1:], g0[1:]):  # bf16 rounding in either backward: 1 % of the largest entry
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.01 * b.abs().max().item())


def saved_bytes(model, fixed, moving) -> int:
    """Bytes of the tensors autograd keeps for backward during one forward (each time saved)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(fixed, moving)
    return total


def test_recomputing_keeps_neither_the_full_resolution_activation_nor_its_indices():
    plain, lean = pair_of_models(3)
    shape = (32, 32, 32)  # no padding: net 2's first level is (1, 8, 32, 32, 32)
    fixed, moving = smooth_image(shape), smooth_image(shape)
    activation = 8 * 32 ** 3 * 4  # float32
    indices = 8 * 16 ** 3 * 8  # int64, at the pooled size
    saved_plain, saved_lean = saved_bytes(plain, fixed, moving), saved_bytes(lean, fixed, moving)
    # plain keeps net 2's activation (for the LeakyReLU and the pooling) and the indices, the
    # lean form the 2-channel input it already shares with the warp; net 1 saves a little too
    assert saved_plain - saved_lean >= activation + indices
    with torch.no_grad():
        torch.testing.assert_close(lean(fixed, moving), plain(fixed, moving), rtol=0, atol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="recompute: expected True or False"):
        CascadeUNet(ndim=2, recompute="yes")
    strided = torch.nn.Conv2d(2, 4, 3, stride=2, padding=1)
    with pytest.raises(ValueError, match="conv: expected a 3\\^ndim convolution"):
        recompute.conv_block_pool(torch.rand(1, 2, 8, 8), strided)
