"""Drop-in means drop-in: every option the originals accept runs and equals them (kernel path
or, where the kernels cannot, the original formula with a warning), the voxelmorph 0.3.4 API,
and patch() putting the shims inside the peers' own networks."""
import warnings

import pytest
import torch

import fastreg
from fastreg.compat import monai as fr_monai
from fastreg.compat import voxelmorph as fr_vxm
from fastreg.reference.lncc import voxelmorph_ncc

monai = pytest.importorskip("monai")
from monai.losses import LocalNormalizedCrossCorrelationLoss as MonaiLNCC  # noqa: E402
from monai.networks.blocks import DVF2DDF as MonaiDVF2DDF  # noqa: E402
from monai.networks.blocks import Warp as MonaiWarp  # noqa: E402


def _quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def _field(*shape, scale=2.0, dtype=torch.float64):
    return (scale * (2 * torch.rand(*shape, dtype=torch.float64) - 1)).to(dtype)


@pytest.mark.parametrize("mode, padding", [(0, 0), (1, 7), (3, 1), ("nearest", "zeros"), ("bilinear", "reflection")])
def test_monai_warp_integer_and_named_options(mode, padding):
    image, ddf = torch.rand(2, 2, 7, 8, dtype=torch.float64), _field(2, 2, 7, 8)
    ours = _quiet(fr_monai.Warp, mode, padding)(image, ddf)
    torch.testing.assert_close(ours, _quiet(MonaiWarp, mode, padding)(image, ddf), rtol=1e-10, atol=1e-10)


def test_monai_warp_jitter_and_bicubic():
    image, ddf = torch.rand(2, 1, 5, 6, 7, dtype=torch.float64), _field(2, 3, 5, 6, 7)
    jittered = _quiet(fr_monai.Warp(jitter=True), image, ddf)
    torch.testing.assert_close(jittered, _quiet(MonaiWarp(jitter=True), image, ddf), rtol=1e-10, atol=1e-10)
    image2, ddf2 = torch.rand(1, 1, 7, 8, dtype=torch.float64), _field(1, 2, 7, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # bicubic runs fastreg's kernels, no fallback
        cubic = fr_monai.Warp("bicubic")(image2, ddf2)
    torch.testing.assert_close(cubic, _quiet(MonaiWarp("bicubic"), image2, ddf2), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", 1])
def test_monai_dvf2ddf_modes_float_steps_and_warp_layer(mode):
    dvf = _field(2, 2, 9, 8, scale=3.0)
    theirs = _quiet(MonaiDVF2DDF, 5, mode)
    ours = fr_monai.DVF2DDF(5.0, mode)
    assert ours.num_steps == 5 and isinstance(ours.warp_layer, fr_monai.Warp)
    torch.testing.assert_close(ours(dvf), theirs(dvf), rtol=1e-9, atol=1e-9)


def test_monai_lncc_large_kernel_and_mixed_dtypes():
    pred, target = torch.rand(2, 1, 6, 7, 8), torch.rand(2, 1, 6, 7, 8)
    with pytest.warns(RuntimeWarning, match="kernel_size"):
        big = fr_monai.LocalNormalizedCrossCorrelationLoss(3, kernel_size=11)(pred, target)
    torch.testing.assert_close(big, MonaiLNCC(3, kernel_size=11)(pred, target), rtol=1e-5, atol=1e-6)
    mixed = fr_monai.LocalNormalizedCrossCorrelationLoss(3, 5)(pred, target.double())
    assert mixed.dtype == torch.float64
    torch.testing.assert_close(mixed, MonaiLNCC(3, 5)(pred, target.double()), rtol=1e-6, atol=1e-7)
    half = fr_monai.LocalNormalizedCrossCorrelationLoss(3, 5)(pred, target.half())
    torch.testing.assert_close(half, MonaiLNCC(3, 5)(pred, target.half().float()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("win, shape", [([9, 5, 3], (12, 11, 10)), ([4, 4, 4], (9, 10, 11)), ([13, 13], (9, 10)),
                                        ([5], (20,)), ([4], (20,)), ([5, 5], (9, 10))])
def test_legacy_ncc_windows_quirk_and_1d(win, shape):
    """VoxelMorph pads every axis by win[0] // 2: unequal or even windows give its shifted,
    larger map, matched exactly (with a warning that the torch formula runs)."""
    a, b = torch.rand(2, 1, *shape, dtype=torch.float64), torch.rand(2, 1, *shape, dtype=torch.float64)
    fast = len(set(win)) == 1 and win[0] % 2 == 1 and win[0] <= min(shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = fr_vxm.NCC(win).loss(a, b)
    assert any("legacy VoxelMorph formula" in str(w.message) for w in caught) != fast
    torch.testing.assert_close(got, voxelmorph_ncc(a, b, win), rtol=1e-7, atol=1e-9)


def test_legacy_transformer_and_ncc_mixed_dtypes():
    image, flow = torch.rand(1, 1, 6, 7), _field(1, 2, 6, 7, dtype=torch.bfloat16)
    out = fr_vxm.SpatialTransformer((6, 7))(image, flow)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fastreg.warp(image, flow.float()))
    a, b = torch.rand(1, 1, 9, 9), torch.rand(1, 1, 9, 9)
    torch.testing.assert_close(fr_vxm.NCC([3, 3]).loss(a, b.half()), fr_vxm.NCC([3, 3]).loss(a, b.half().float()))


vxm = pytest.importorskip("voxelmorph")


@pytest.mark.parametrize("mode, corners", [("linear", True), ("nearest", True), ("linear", False)])
def test_voxelmorph_current_api(mode, corners):
    image, disp = torch.rand(2, 2, 6, 7, 5, dtype=torch.float64), _field(2, 3, 6, 7, 5)
    theirs = vxm.nn.modules.SpatialTransformer(mode, corners)(image, disp)
    ours = _quiet(fr_vxm.nn.modules.SpatialTransformer(mode, corners), image, disp)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    v = _field(2, 3, 6, 7, 5, scale=1.5)
    for steps in (0, 3):
        theirs = vxm.nn.modules.IntegrateVelocityField(steps=steps, interpolation_mode=mode, align_corners=corners)(v)
        ours = _quiet(fr_vxm.nn.modules.IntegrateVelocityField(steps=steps, interpolation_mode=mode,
                                                               align_corners=corners), v)
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    labels = torch.randint(0, 4, (1, 1, 6, 7, 5))
    nearest = fr_vxm.nn.modules.SpatialTransformer("nearest")(labels, disp[:1].float())
    assert nearest.dtype == labels.dtype
    assert torch.equal(nearest, vxm.nn.modules.SpatialTransformer("nearest")(labels, disp[:1].float()))
    for factor in (2.0, 0.5):
        theirs = vxm.nn.modules.ResizeDisplacementField(factor)(v)
        torch.testing.assert_close(fr_vxm.nn.modules.ResizeDisplacementField(factor)(v), theirs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode, ndim", [("bilinear", 3), ("trilinear", 3), ("bicubic", 2)])
def test_voxelmorph_current_api_grid_sample_mode_names(mode, ndim):
    """The original passes names other than "linear" to grid_sample: they run fastreg's kernels."""
    shape = (6, 7, 5)[:ndim]
    image, disp = torch.rand(2, 2, *shape, dtype=torch.float64), _field(2, ndim, *shape)
    theirs = vxm.nn.modules.SpatialTransformer(mode)(image, disp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = fr_vxm.nn.modules.SpatialTransformer(mode)(image, disp)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    v = _field(2, ndim, *shape, scale=1.5)
    theirs = vxm.nn.modules.IntegrateVelocityField(steps=3, interpolation_mode=mode)(v)
    torch.testing.assert_close(fr_vxm.nn.modules.IntegrateVelocityField(steps=3, interpolation_mode=mode)(v), theirs,
                               rtol=1e-9, atol=1e-9)


def test_monai_patch_builds_voxelmorph_net_with_shims_and_matches():
    from monai.networks.blocks import warp as blocks
    from monai.networks.nets import VoxelMorph

    torch.manual_seed(0)
    original = VoxelMorph()
    with fr_monai.patch() as handle:
        assert handle.active and blocks.Warp is fr_monai.Warp
        patched = VoxelMorph()
    assert blocks.Warp is MonaiWarp and blocks.DVF2DDF is MonaiDVF2DDF
    assert isinstance(patched.dvf2ddf, fr_monai.DVF2DDF) and isinstance(patched.warp, fr_monai.Warp)
    patched.load_state_dict(original.state_dict())
    moving, fixed = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        want, got = _quiet(original, moving, fixed), patched(moving, fixed)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    handle = fr_monai.patch()  # the function form
    try:
        assert monai.losses.LocalNormalizedCrossCorrelationLoss is fr_monai.LocalNormalizedCrossCorrelationLoss
    finally:
        handle.restore()
    assert monai.losses.LocalNormalizedCrossCorrelationLoss is MonaiLNCC


def test_voxelmorph_patch_builds_vxm_pairwise_with_shims_and_matches():
    original_cls = vxm.nn.modules.SpatialTransformer
    torch.manual_seed(0)
    original = vxm.nn.models.VxmPairwise(ndim=2, source_channels=1, target_channels=1, nb_features=(8, 8, 8),
                                         integration_steps=5)
    with fr_vxm.patch():
        patched = vxm.nn.models.VxmPairwise(ndim=2, source_channels=1, target_channels=1, nb_features=(8, 8, 8),
                                            integration_steps=5)
    assert vxm.nn.modules.SpatialTransformer is original_cls
    assert isinstance(patched.spatial_transformer, fr_vxm.nn.modules.SpatialTransformer)
    assert isinstance(patched.velocity_field_integrator, fr_vxm.nn.modules.IntegrateVelocityField)
    patched.load_state_dict(original.state_dict())
    source, target = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        want, got = original(source, target), patched(source, target)
    want = want if isinstance(want, (tuple, list)) else [want]
    got = got if isinstance(got, (tuple, list)) else [got]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
