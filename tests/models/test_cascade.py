"""The cascaded U-Net: parameter counts, shapes and levels, velocities and the inverse,
backends, gradients, torch.compile, state_dict, a short overfit on a known field, bad input."""
import pytest
import torch
from model_checks import (assert_backends_agree_in_float64, assert_bf16_autocast_keeps_the_field_float32, assert_compiles, assert_rejects_bad_pairs,
                          assert_state_dict_round_trip, field_error, gradients_reach_every_parameter, overfit,
                          smooth_image)

import fastreg
from fastreg.models import CascadeUNet, create


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def small(ndim, scale: float = 0.0):
    """Few filters; ``scale`` > 0 redraws the flow heads N(0, scale) so the fields are about
    a voxel (the paper's init gives ~1e-5 voxel)."""
    model = CascadeUNet(ndim=ndim, widths=(4, 8))
    if scale:
        for net in (model.net1, model.net2):
            torch.nn.init.normal_(net.flow.weight, 0.0, scale)
    return model


def test_parameter_counts_match_the_paper():
    model = CascadeUNet(ndim=3)
    assert (count(model.net1), count(model.net2)) == (1_336_387, 5_326_979)
    two = CascadeUNet(ndim=2)
    assert (count(two.net1), count(two.net2)) == (445_314, 1_775_362)
    assert model.num_levels == 2 and model.multiple == 32 and model.svf


@pytest.mark.parametrize("shape", [(20, 23, 18), (37, 45)])
def test_odd_sizes_give_the_input_size_and_level_one_is_the_first_net(shape):
    ndim = len(shape)
    model = small(ndim, 0.05)
    fixed, moving = smooth_image(shape, batch=2), smooth_image(shape, batch=2)
    with torch.no_grad():
        u = model(fixed, moving)
        u1 = model(fixed, moving, levels=1)
        assert u.shape == u1.shape == (2, ndim, *shape)
        assert torch.equal(model(fixed, moving, levels=2), u)
        v1, v2 = model.velocities(fixed, moving)
        padded = [32 * -(-s // 32) for s in shape]
        assert v1.shape == (2, ndim, *[p // 4 for p in padded]) and v2.shape == (2, ndim, *[p // 2 for p in padded])
        # level 1: exp(v1) resized twice by x2, cropped; the full field composes field 2 after it.
        field1 = fastreg.integrate_svf(v1, 5)
        for _ in range(2):
            field1 = fastreg.resize_field(field1, scale_factor=2.0)
        crop = (...,) + tuple(slice(0, s) for s in shape)
        torch.testing.assert_close(u1, field1[crop])
        # net 2 sees the moving image warped by field 1 (padded grid), then the fixed image.
        f, m = model.pad(fixed), model.pad(moving)
        torch.testing.assert_close(v2, model.net2(torch.cat([fastreg.warp(m, field1), f], 1)))
        field2 = fastreg.resize_field(fastreg.integrate_svf(v2, 5), scale_factor=2.0)
        torch.testing.assert_close(u, fastreg.compose(field1, field2)[crop])


def test_velocity_is_the_second_velocity_when_the_first_net_predicts_nothing():
    model = small(2, 0.5)
    torch.nn.init.zeros_(model.net1.flow.weight)
    fixed, moving = smooth_image((64, 32)), smooth_image((64, 32))
    with torch.no_grad():
        # the velocity is linear in the flow head (zero bias): scale it to a largest vector of
        # one voxel (the draw alone gives 0.07 to a few voxels)
        model.net2.flow.weight.div_(model.velocity(fixed, moving).abs().max())
        v = model.velocity(fixed, moving)
        assert v.shape == (1, 2, 32, 16) and v.abs().max() > 0.5
        torch.testing.assert_close(v, model.velocities(fixed, moving)[1])
        expected = fastreg.resize_field(fastreg.integrate_svf(v, 5), scale_factor=2.0)
        torch.testing.assert_close(model(fixed, moving), expected)


def test_inverse_undoes_the_prediction():
    model = small(2, 0.5)
    fixed, moving = smooth_image((64, 64)), smooth_image((64, 64))
    with torch.no_grad():
        size = field_error(model(fixed, moving), torch.zeros_like(moving.expand(-1, 2, -1, -1)), margin=8)
        for net in (model.net1, model.net2):  # a field of about a voxel whatever the draw (0.16-0.44 seen)
            net.flow.weight.mul_(1.0 / max(size, 1e-3))
        u, inv = model(fixed, moving), model.inverse(fixed, moving)
        size = field_error(u, torch.zeros_like(u), margin=8)
        assert size > 0.2
        assert field_error(fastreg.compose(u, inv), torch.zeros_like(u), margin=8) < 0.05 * size
        assert field_error(fastreg.compose(inv, u), torch.zeros_like(u), margin=8) < 0.05 * size


def test_reference_and_cpu_backends_agree_in_float64():
    assert_backends_agree_in_float64(small(3, 0.5), (32, 24, 16))


def test_gradients_reach_every_trainable_parameter():
    model = small(2)
    assert gradients_reach_every_parameter(model, smooth_image((32, 64)), smooth_image((32, 64))) == []


def test_state_dict_round_trip_through_a_file(tmp_path):
    assert_state_dict_round_trip(small(2, 0.5), small(2), (40, 33), tmp_path / "weights.pt")


@pytest.mark.slow  # about 10 s of compilation
def test_compiled_model_matches_eager_forward_and_backward():
    model = small(3, 0.5)
    assert_compiles(model, (32, 32, 32), model.net1.encoder[0][0].weight)


@pytest.mark.slow
def test_inductor_compiled_model_matches_eager():
    model = small(3, 0.5)
    fixed, moving = smooth_image((32, 32, 32)), smooth_image((32, 32, 32))
    # static shapes: after the other compile tests of this model class dynamo would mark the
    # sizes dynamic, and inductor 2.13 fails on the pooled sizes ("Invalid ranges [0:-1]")
    compiled = torch.compile(model, dynamic=False)
    torch.testing.assert_close(compiled(fixed, moving), model(fixed, moving), rtol=1e-4, atol=1e-5)


def test_overfit_on_a_known_field_lowers_the_loss_and_finds_the_field():
    model = CascadeUNet(ndim=2, widths=(8, 16))
    loss0, loss1, err0, err1 = overfit(model, (32, 32), steps=30, lr=3e-3)
    assert loss1 < 0.5 * loss0
    assert err1 < 0.7 * err0  # relative: the first error follows the drawn field (1.1 of 1.97 seen)


def test_bad_input_names_the_argument():
    model = small(3)
    assert_rejects_bad_pairs(model)
    image = smooth_image((8, 8, 8))
    with pytest.raises(ValueError, match="fixed: expected a 5-D tensor"):
        model.inverse(smooth_image((8, 8)), smooth_image((8, 8)))
    with pytest.raises(ValueError, match="moving: expected the shape of fixed"):
        model.velocities(image, smooth_image((8, 8, 12)))
    with pytest.raises(ValueError, match="levels"):
        model(image, image, levels=3)
    with pytest.raises(ValueError, match="ndim"):
        CascadeUNet(ndim=1)
    with pytest.raises(ValueError, match="widths"):
        CascadeUNet(ndim=2, widths=(16,))
    with pytest.raises(TypeError, match="steps"):
        CascadeUNet(ndim=2, steps=2.5)


def test_registry_builds_the_model():
    assert isinstance(create("cascade", ndim=2, widths=(4, 8)), CascadeUNet)


def test_bf16_autocast_runs_the_networks_low_and_keeps_the_field_float32():
    assert_bf16_autocast_keeps_the_field_float32(small(2, 0.5), (32, 32))
