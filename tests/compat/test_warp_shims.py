"""The warp shims equal VoxelMorph's and MONAI's transformers to 1e-6 (values and gradients)."""
import warnings

import pytest
import torch

import fastreg
from fastreg.bench.peer_kernels import VxmLegacyTransformer
from fastreg.compat import monai as fr_monai
from fastreg.compat import voxelmorph as fr_vxm
from fastreg.data import random_smooth_field


def pair(shape, batch=2, channels=2):
    image = torch.rand(batch, channels, *shape)
    flow = random_smooth_field(shape, batch=batch, magnitude=2.0, spacing=3) + 0.3 * torch.randn(batch, len(shape), *shape)
    return image, flow


def compare(make_ours, make_theirs, image, flow):
    """Equal to 1e-6 in float64; in float32 the originals' normalise-and-unnormalise round
    trip of the coordinates costs about size * eps, so 1e-5 there."""
    _compare(make_ours().double(), make_theirs().double(), image.double(), flow.double(), 1e-6)
    _compare(make_ours(), make_theirs(), image, flow, 1e-5)


def _compare(ours, theirs, image, flow, tol):
    a = image.clone().requires_grad_(True)
    b = flow.clone().requires_grad_(True)
    out = ours(a, b)
    weight = torch.randn_like(out)
    g = torch.autograd.grad((out * weight).sum(), (a, b))
    a2 = image.clone().requires_grad_(True)
    b2 = flow.clone().requires_grad_(True)
    expected = theirs(a2, b2)
    g2 = torch.autograd.grad((expected * weight).sum(), (a2, b2))
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    torch.testing.assert_close(g[0], g2[0], rtol=tol, atol=tol)
    torch.testing.assert_close(g[1], g2[1], rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(9, 11), (6, 7, 8)])
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_voxelmorph_spatial_transformer_matches_published_formula(shape, mode):
    if mode == "bicubic" and len(shape) == 3:
        pytest.skip("grid_sample has no 3-D bicubic (the tricubic kernel is tested in tests/ops/test_warp.py)")
    image, flow = pair(shape)
    ours, theirs = fr_vxm.SpatialTransformer(shape, mode), VxmLegacyTransformer(mode, size=shape)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["grid"]
    torch.testing.assert_close(ours.state_dict()["grid"], theirs.state_dict()["grid"], rtol=0, atol=0)
    ours.load_state_dict(theirs.state_dict())
    compare(lambda: fr_vxm.SpatialTransformer(shape, mode), lambda: VxmLegacyTransformer(mode, size=shape), image, flow)


def test_voxelmorph_package_spatial_transformer():
    vxm_modules = pytest.importorskip("voxelmorph.nn.modules")
    shape = (6, 7, 8)
    image, flow = pair(shape)
    compare(
        lambda: fr_vxm.SpatialTransformer(shape),
        lambda: vxm_modules.SpatialTransformer(interpolation_mode="linear"),
        image,
        flow,
    )


@pytest.mark.parametrize("shape", [(9, 11), (6, 7, 8)])
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["border", "zeros", "reflection"])
def test_monai_warp(shape, mode, padding_mode):
    blocks = pytest.importorskip("monai.networks.blocks")
    if mode == "bicubic" and len(shape) == 3:
        pytest.skip("MONAI's grid_sample path has no 3-D bicubic (the tricubic kernel is tested in tests/ops/test_warp.py)")

    def theirs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return blocks.Warp(mode=mode, padding_mode=padding_mode)

    image, flow = pair(shape)
    compare(lambda: fr_monai.Warp(mode, padding_mode), theirs, image, flow)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_monai_warp_gradcheck_as_monai_tests_it(mode, padding_mode):
    """MONAI's TestWarp.test_grad (tests/networks/blocks/warp/test_warp.py) on the shim, at
    its size (20 x 20) for bicubic with border and zeros padding, 8 x 8 for the other cases
    (time), with gradcheck's own tolerances rather than MONAI's loose atol=1e-2, eps=1e-2 (the
    warp is linear in the image, so finite differences are exact; MONAI's file itself runs
    through scripts/monai_warp_tests.py); then, for the differentiable modes, to the ddf too."""
    warp_layer = fr_monai.Warp(mode=mode, padding_mode=padding_mode)
    size = 20 if mode == "bicubic" and padding_mode != "reflection" else 8
    image = (torch.rand(2, 3, size, size, dtype=torch.float64) * 10.0).requires_grad_(True)
    ddf = torch.rand(2, 2, size, size, dtype=torch.float64) * 2.0
    assert torch.autograd.gradcheck(warp_layer, (image, ddf), fast_mode=True)
    if mode != "nearest":
        small = image.detach()[:1, :2, :6, :7].clone().requires_grad_(True)
        field = (ddf[:1, :, :6, :7] * 2 - 1).requires_grad_(True)
        assert torch.autograd.gradcheck(warp_layer, (small, field))


def test_defaults_follow_the_originals():
    assert fr_monai.Warp().padding_mode == "border"
    assert fr_vxm.SpatialTransformer((4, 4)).mode == "bilinear"
    assert fastreg.nn.SpatialTransformer().padding_mode == "zeros"


def test_shims_reject_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        fr_monai.Warp(mode="bicubicc")
    with pytest.raises(ValueError, match="interpolation_mode"):
        fr_vxm.nn.modules.SpatialTransformer("cubic")
    with pytest.raises(ValueError, match="padding_mode"):
        fr_monai.Warp(padding_mode="wrap")
    with pytest.raises(ValueError, match="ddf"):
        fr_monai.Warp()(torch.rand(2, 1, 5, 5), torch.rand(1, 2, 5, 5))
    with pytest.raises(ValueError, match="flow"):
        fr_vxm.SpatialTransformer((5, 5))(torch.rand(1, 1, 6, 6), torch.rand(1, 2, 6, 6))
