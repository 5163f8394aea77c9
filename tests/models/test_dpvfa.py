"""DP-VFA and DP-Conv-C: parameter counts, shapes and levels, backends, gradients,
torch.compile, state_dict, a short overfit on a known field, bad input."""
import pytest
import torch
from model_checks import (assert_backends_agree_in_float64, assert_bf16_autocast_keeps_the_field_float32, assert_compiles, assert_rejects_bad_pairs,
                          assert_state_dict_round_trip, gradients_reach_every_parameter, overfit, smooth_image)

import fastreg
from fastreg.models import DPVFA, DPConvC, create

SMALL = dict(channels=(8, 16, 16))  # 3 levels (multiple 4): the fast instances of the tests


def small(cls, ndim, paper_init: bool = False):
    """A 3-level instance (multiple 4) with few channels. Unless ``paper_init``, DP-Conv-C's
    flow heads get weights large enough for a field of about a voxel (the paper's init gives
    ~1e-5 voxel, which would hide a wrong field in the comparisons)."""
    if cls is DPVFA:
        return cls(ndim=ndim, **SMALL, attention=(8, 16, 16))
    model = cls(ndim=ndim, **SMALL, widths=(8, 16, 16))
    if not paper_init:
        for flow in model.flows:
            torch.nn.init.normal_(flow.weight, 0.0, 0.05)
    return model


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_paper_and_the_documented_counts():
    vfa = DPVFA(ndim=3)
    assert (count(vfa), count(vfa.encoder), count(vfa.projections)) == (791_104, 507_504, 283_600)
    conv = DPConvC(ndim=3)
    assert (count(conv), count(conv.encoder), count(conv.blocks) + count(conv.flows)) == (1_993_023, 507_504, 1_485_519)
    assert count(DPVFA(ndim=2)) == 270_400
    assert count(DPConvC(ndim=2)) == 602_266
    assert vfa.num_levels == 5 and vfa.multiple == 16 and not vfa.svf


@pytest.mark.parametrize("cls", [DPVFA, DPConvC])
@pytest.mark.parametrize("shape", [(11, 13, 9), (37, 45), (4, 5, 3)])
def test_odd_sizes_give_the_input_size_and_levels_are_upsampled_coarse_fields(cls, shape):
    ndim = len(shape)
    model = small(cls, ndim)
    fixed, moving = smooth_image(shape, batch=2), smooth_image(shape, batch=2)
    with torch.no_grad():
        full = model(fixed, moving)
        assert full.shape == (2, ndim, *shape) and torch.isfinite(full).all()
        assert torch.equal(model(fixed, moving, levels=3), full)
        # levels=1: the coarsest matching step alone, resized x4 to the input size.
        f, m = model.pad(fixed), model.pad(moving)
        feats = model.encoder(torch.cat([f, m]))
        coarse = model.match(2, feats[2][:2], feats[2][2:])
        expected = fastreg.resize_field(coarse, scale_factor=4.0)[(...,) + tuple(slice(0, s) for s in shape)]
        torch.testing.assert_close(model(fixed, moving, levels=1), expected)
        # levels=2: upsample, warp the moving features by it (border), match, compose.
        up = fastreg.resize_field(coarse, scale_factor=2.0)
        warped = fastreg.warp(feats[1][2:], up, padding_mode="border")
        two = fastreg.compose(up, model.match(1, feats[1][:2], warped))
        expected = fastreg.resize_field(two, scale_factor=2.0)[(...,) + tuple(slice(0, s) for s in shape)]
        torch.testing.assert_close(model(fixed, moving, levels=2), expected)


@pytest.mark.parametrize("cls", [DPVFA, DPConvC])
def test_two_passes_encode_the_fixed_image_once(cls):
    """passes=2: the one-pass network, then again on the moving image warped by its field,
    the fields composed; the encoder sees the fixed batch once and the moving batch per pass."""
    once = small(cls, 2)
    twice = small(cls, 2)
    twice.load_state_dict(once.state_dict())
    twice.set_passes(2)
    seen = []
    twice.encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    fixed, moving = smooth_image((20, 28), batch=2), smooth_image((20, 28), batch=2)  # unpadded
    with torch.no_grad():
        u = once(fixed, moving)
        u = fastreg.compose(u, once(fixed, fastreg.warp(moving, u, padding_mode="border")))
        torch.testing.assert_close(twice(fixed, moving), u, atol=1e-5, rtol=1e-5)
    assert seen == [2, 2, 2]
    assert u.abs().max() > 0.1


@pytest.mark.parametrize("cls", [DPVFA, DPConvC])
def test_reference_and_cpu_backends_agree_in_float64(cls):
    assert_backends_agree_in_float64(small(cls, 3), (12, 16, 8))


@pytest.mark.parametrize("cls", [DPVFA, DPConvC])
def test_gradients_reach_every_trainable_parameter(cls):
    model = small(cls, 2)
    assert gradients_reach_every_parameter(model, smooth_image((16, 24)), smooth_image((16, 24))) == []


@pytest.mark.parametrize("cls", [DPVFA, DPConvC])
def test_state_dict_round_trip_through_a_file(cls, tmp_path):
    assert_state_dict_round_trip(small(cls, 2), small(cls, 2), (24, 20), tmp_path / "weights.pt")


@pytest.mark.slow  # about 20 s of compilation
@pytest.mark.parametrize("cls", [DPVFA, DPConvC])
def test_compiled_model_matches_eager_forward_and_backward(cls):
    model = small(cls, 3)
    assert_compiles(model, (8, 12, 8), model.encoder.stem.weight)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [DPVFA, DPConvC])
def test_inductor_compiled_model_matches_eager(cls):
    model = small(cls, 3)
    fixed, moving = smooth_image((8, 12, 8)), smooth_image((8, 12, 8))
    # static shapes: after the other compile tests of this model class dynamo would mark the
    # sizes dynamic, and inductor 2.13 fails on the pooled sizes ("Invalid ranges [0:-1]")
    compiled = torch.compile(model, dynamic=False)
    expected = model(fixed, moving)
    # inductor reorders float32 sums: 1e-5 of the field's largest vector (CI seed 29152397
    # missed a 1e-5 absolute bound by 3 %); a wrong axis or sign is off by the field itself
    scale = expected.abs().max().item()
    torch.testing.assert_close(compiled(fixed, moving), expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


@pytest.mark.parametrize("cls, lr", [(DPVFA, 3e-3), (DPConvC, 1e-3)])
def test_overfit_on_a_known_field_lowers_the_loss_and_finds_the_field(cls, lr):
    loss0, loss1, err0, err1 = overfit(small(cls, 2, paper_init=True), (32, 32), steps=30, lr=lr)
    assert loss1 < 0.5 * loss0
    # relative: the first error follows the drawn field (0.96-2.13 voxels). DP-VFA: 0.23-0.60
    # over 56 draws, 0.81-1.73 with the field's axes swapped in the warp; DP-Conv-C: at most
    # 0.26 over 30 draws
    assert err1 < 0.7 * err0


@pytest.mark.parametrize("cls", [DPVFA, DPConvC])
def test_bad_input_names_the_argument(cls):
    model = small(cls, 3)
    assert_rejects_bad_pairs(model)
    image = smooth_image((8, 8, 8))
    with pytest.raises(ValueError, match="levels"):
        model(image, image, levels=4)
    with pytest.raises(ValueError, match="ndim"):
        cls(ndim=4)
    with pytest.raises(TypeError, match="channels"):
        cls(ndim=2, channels=16)
    with pytest.raises(ValueError, match="radius"):
        cls(ndim=2, radius=0)
    with pytest.raises(ValueError, match="attention" if cls is DPVFA else "widths"):
        cls(ndim=2, **{("attention" if cls is DPVFA else "widths"): (16, 32)})


def test_registry_builds_both_models():
    assert isinstance(create("dpvfa", ndim=2), DPVFA)
    assert isinstance(create("dpconvc", ndim=2), DPConvC)


@pytest.mark.parametrize("cls", [DPVFA, DPConvC])
def test_bf16_autocast_runs_the_network_low_and_keeps_the_field_float32(cls):
    assert_bf16_autocast_keeps_the_field_float32(small(cls, 2), (16, 20))
