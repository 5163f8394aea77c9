"""The integration shims and modules equal VoxelMorph's and MONAI's to 1e-6: VecInt and
ResizeTransform (legacy published formulas, voxelmorph 0.3.4), DVF2DDF (MONAI 1.6.1)."""
import warnings

import pytest
import torch

import fastreg
from fastreg.bench.peer_kernels import VxmLegacyVecInt, vxm_legacy_resize
from fastreg.compat._integrate import DVF2DDF, ResizeTransform, VecInt
from fastreg.data import random_smooth_field
from grad_checks import assert_grad_close_but_kinks

SHAPES = {2: (12, 10), 3: (8, 9, 7)}


def field(ndim, dtype=torch.float64, batch=2):
    return random_smooth_field(SHAPES[ndim], batch=batch, magnitude=2.5, spacing=3, dtype=dtype)


def compare(ours, theirs, v, tol):
    """Values and gradients of ours(v) and theirs(v) agree to tol."""
    outs, grads = [], []
    weight = None
    for fn in (ours, theirs):
        x = v.clone().requires_grad_(True)
        out = fn(x)
        weight = torch.randn_like(out) if weight is None else weight
        outs.append(out)
        grads.append(torch.autograd.grad((out * weight).sum(), x)[0])
    torch.testing.assert_close(outs[0], outs[1], rtol=tol, atol=tol)
    if v.dtype == torch.float64:
        torch.testing.assert_close(grads[0], grads[1], rtol=tol, atol=tol)
    else:  # float32: positions of the two sides' arithmetic may straddle a voxel boundary
        assert_grad_close_but_kinks(grads[0].double(), grads[1].double(), rtol=tol)


@pytest.mark.parametrize("ndim", (2, 3))
@pytest.mark.parametrize("nsteps", (0, 5, 7))
def test_vecint_equals_legacy_formula(ndim, nsteps):
    shim = VecInt(SHAPES[ndim], nsteps)
    compare(shim, VxmLegacyVecInt(nsteps), field(ndim), 1e-6)
    compare(shim, VxmLegacyVecInt(nsteps), field(ndim, torch.float32), 1e-5)  # float32 grid round trip


def test_vecint_state_dict_is_legacy():
    shim = VecInt((4, 5, 6), 7)
    assert list(shim.state_dict()) == ["transformer.grid"]
    assert shim.state_dict()["transformer.grid"].shape == (1, 3, 4, 5, 6)
    assert shim.nsteps == 7 and shim.scale == 1 / 128
    with pytest.raises(ValueError, match="nsteps"):
        VecInt((4, 5), -1)


@pytest.mark.parametrize("ndim", (2, 3))
@pytest.mark.parametrize("steps", (1, 7))
def test_integrate_equals_voxelmorph_0_3_4(ndim, steps):
    from voxelmorph.nn.modules import IntegrateVelocityField

    compare(lambda v: fastreg.integrate_svf(v, steps), IntegrateVelocityField(steps=steps), field(ndim), 1e-6)


@pytest.mark.parametrize("ndim", (2, 3))
@pytest.mark.parametrize("padding", ("zeros", "border", "reflection"))
def test_dvf2ddf_equals_monai(ndim, padding):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MONAI announces its native grid_sample path
        from monai.networks.blocks import DVF2DDF as MonaiDVF2DDF

        theirs = MonaiDVF2DDF(num_steps=7, mode="bilinear", padding_mode=padding)
        compare(DVF2DDF(7, "bilinear", padding), theirs, field(ndim), 1e-6)
        compare(DVF2DDF(7, "bilinear", padding), theirs, field(ndim, torch.float32), 1e-5)


def test_dvf2ddf_defaults_and_bad_arguments():
    shim = DVF2DDF()
    assert (shim.num_steps, shim.mode, shim.padding_mode) == (7, "bilinear", "zeros")
    with pytest.raises(ValueError, match="num_steps"):
        DVF2DDF(0)
    with pytest.raises(ValueError, match="mode"):
        DVF2DDF(7, "cubic")
    with pytest.raises(TypeError, match="num_steps"):
        DVF2DDF(7.5)
    with pytest.raises(ValueError, match="padding_mode"):
        DVF2DDF(7, "bilinear", "wrap")


@pytest.mark.parametrize("ndim", (2, 3))
@pytest.mark.parametrize("vel_resize", (0.5, 2, 1))
def test_resize_transform_equals_legacy_and_voxelmorph_0_3_4(ndim, vel_resize):
    from voxelmorph.nn.modules import ResizeDisplacementField

    x = field(ndim)
    compare(ResizeTransform(vel_resize, ndim), lambda u: vxm_legacy_resize(u, 1.0 / vel_resize), x, 1e-6)
    if vel_resize != 1:
        compare(ResizeTransform(vel_resize, ndim), ResizeDisplacementField(scale_factor=1 / vel_resize), x, 1e-6)
    assert ResizeTransform(1, ndim)(x) is x


def test_nn_modules():
    v = field(3)
    assert torch.equal(fastreg.nn.VecInt(steps=5, padding_mode="border")(v), fastreg.integrate_svf(v, 5, "border"))
    assert torch.equal(fastreg.nn.VecInt(checkpoints=0)(v), fastreg.integrate_svf(v))
    assert torch.equal(fastreg.nn.ResizeField(scale_factor=2)(v), fastreg.resize_field(v, scale_factor=2))
    assert fastreg.nn.ResizeField(size=(4, 5, 6))(v).shape == (2, 3, 4, 5, 6)
    assert "steps=7" in repr(fastreg.nn.VecInt())
    with pytest.raises(ValueError, match="steps"):
        fastreg.nn.VecInt(steps=-2)
    with pytest.raises(ValueError, match="size, scale_factor"):
        fastreg.nn.ResizeField()
