"""fastreg.register: inputs of every kind, any grid, affine modes, inverse, labels, stats, save."""
import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastreg
from fastreg import io, metrics, models
from fastreg.register import canonical_grid, normalize


class Constant(models.RegistrationModel):
    """Predicts one fixed displacement vector everywhere (in the grid it is given): the
    geometry of the pipeline is then known exactly."""

    def __init__(self, vector, svf=False):
        super().__init__()
        self.ndim = len(vector)
        self.vector = torch.nn.Parameter(torch.tensor(vector, dtype=torch.float32))
        self.svf = svf

    def velocity(self, fixed, moving):
        return self.vector.view(1, -1, *[1] * self.ndim).expand(fixed.shape[0], -1, *fixed.shape[2:]) * 1.0

    def predict(self, fixed, moving, levels):
        field = self.velocity(fixed, moving)
        return fastreg.integrate_svf(field.contiguous(), padding_mode="border") if self.svf else field


class SmoothSVF(models.RegistrationModel):
    """A velocity model whose velocity is a smooth random field fixed at construction."""

    ndim, svf = 2, True

    def __init__(self, shape):
        super().__init__()
        v = F.avg_pool2d(torch.randn(1, 2, *shape), 9, 1, 4, count_include_pad=False) * 4
        self.register_buffer("v", v)

    def velocity(self, fixed, moving):
        return self.v

    def predict(self, fixed, moving, levels):
        return fastreg.integrate_svf(self.v)


@pytest.fixture(scope="module")
def unireg():
    return models.create("unireg", ndim=2, widths=(4, 8))


def smooth(*shape, scale=200.0):
    x = torch.rand(1, 1, *shape)
    pool = F.avg_pool2d if len(shape) == 2 else F.avg_pool3d
    x = pool(pool(x, 5, 1, 2, count_include_pad=False), 5, 1, 2, count_include_pad=False)[0, 0]
    return (x - x.min()) / (x.max() - x.min()) * scale


def camera_pair(shift, size=64, pad=16):
    """scikit-image's camera at ``size``^2 in a zero frame of ``pad``, and a copy translated by
    ``shift`` (rows, columns) voxels: moving(x + shift) = fixed(x)."""
    from skimage import data

    cam = torch.from_numpy(data.camera().astype(np.float32))[None, None]
    cam = F.interpolate(cam, size=(size, size), mode="area")[0, 0]
    (a, b) = shift
    return F.pad(cam, (pad, pad, pad, pad)), F.pad(cam, (pad + b, pad - b, pad + a, pad - a))


def random_shift():
    return [int(v) for v in (torch.randint(4, 6, (2,)) * (torch.randint(0, 2, (2,)) * 2 - 1))]


def test_inputs_of_every_kind_give_the_same_field(unireg, tmp_path):
    fixed, moving = smooth(32, 28), smooth(32, 28)
    ref = fastreg.register(fixed, moving, model=unireg, affine="off")
    assert ref.disp.shape == (2, 32, 28) and ref.inverse.shape == (2, 32, 28)
    io.save(tmp_path / "f.nii.gz", io.Image(fixed[None]))
    io.save(tmp_path / "m.nii.gz", io.Image(moving[None]))
    for f, m in ((fixed.numpy(), moving.numpy()), (io.Image(fixed[None]), io.Image(moving[None])),
                 (tmp_path / "f.nii.gz", str(tmp_path / "m.nii.gz"))):
        out = fastreg.register(f, m, model=unireg, affine="off")
        torch.testing.assert_close(out.disp, ref.disp, atol=1e-5, rtol=0)
    assert set(ref.timings) == {"load", "affine", "model", "field", "inverse", "stats"}
    assert all(t >= 0 for t in ref.timings.values())


def test_stats_match_the_metrics(unireg):
    fixed, moving = smooth(32, 32), smooth(32, 32)
    r = fastreg.register(fixed, moving, model=unireg, affine="off")
    f, m = normalize(fixed[None])[None], normalize(moving[None])[None]
    assert r.stats["cc_before"] == pytest.approx(float(metrics.cc(f, m)[0]), abs=1e-6)
    warped = fastreg.warp(m, r.disp[None])
    assert r.stats["cc_after"] == pytest.approx(float(metrics.cc(f, warped)[0]), abs=1e-5)
    jac = metrics.jacobian_stats(r.disp[None])
    assert r.stats["folding_percent"] == pytest.approx(float(jac["folding_percent"][0]))
    assert r.stats["ndv_percent"] == pytest.approx(float(jac["ndv_percent"][0]))
    torch.testing.assert_close(r.warped.data[0], fastreg.warp(moving[None, None], r.disp[None])[0, 0])


def test_inverse_of_a_velocity_model_is_exp_minus_v():
    shape = (36, 30)
    net = SmoothSVF(shape)
    r = fastreg.register(smooth(*shape), smooth(*shape), model=net, affine="off")
    expected = fastreg.integrate_svf(-net.v)[0]
    torch.testing.assert_close(r.inverse, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(r.disp, fastreg.integrate_svf(net.v)[0], atol=1e-5, rtol=0)


def test_inverse_of_the_cascade_is_its_own_exact_inverse_on_an_unpadded_size():
    """The cascade integrates on its padded grid (a multiple of 32) and composes two
    exponentials: register takes the model's ``inverse``, not exp(-velocity) stretched onto
    the image's size."""
    net = models.create("cascade", ndim=2, widths=(4, 8))
    fixed, moving = smooth(40, 36), smooth(40, 36)
    f, m = normalize(fixed[None])[None], normalize(moving[None])[None]
    inner = (slice(None), slice(6, -6), slice(6, -6))

    def mean_length(disp):  # voxels, away from the border
        return disp[inner].norm(dim=0).mean()

    with torch.no_grad():
        # Random flow heads give mean lengths of 0.14-3.4 voxels over 60 draws: rescale them
        # to half a voxel whatever the seed.
        heads = [stage.flow.weight for stage in (net.net1, net.net2)]
        for w in heads:
            torch.nn.init.normal_(w, 0.0, 0.5)
        scale = 0.5 / mean_length(net(f, m)[0])
        for w in heads:
            w.mul_(scale)
    r = fastreg.register(fixed, moving, model=net, affine="off")
    with torch.no_grad():
        torch.testing.assert_close(r.disp, net(f, m)[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(r.inverse, net.inverse(f, m)[0], atol=1e-5, rtol=0)
    size = mean_length(r.disp)
    assert size > 0.3
    # 0.002 * size typical, 0.08 the worst of 300 draws; exp(-velocity) stretched onto the
    # image's size leaves 0.36-0.41 * size
    assert mean_length(fastreg.compose(r.disp[None], r.inverse[None])[0]) < 0.2 * size


def test_inverse_round_trip_through_invert_field_and_the_affine(unireg):
    fixed, moving = camera_pair(random_shift())
    r = fastreg.register(fixed, moving, model=unireg, affine="on")
    assert r.affine_used
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert fastreg.compose(r.disp[None], r.inverse[None])[0][inner].abs().max() < 0.05


def test_labels_are_warped_by_nearest_and_keep_their_dtype(unireg, tmp_path):
    fixed, moving = smooth(32, 32), smooth(32, 32)
    labels = (moving / 50).floor().to(torch.int16)
    r = fastreg.register(fixed, moving, model=unireg, affine="off", moving_labels=labels,
                         fixed_labels=(fixed / 50).floor().to(torch.int16))
    out = r.warp_labels(labels)
    assert out.dtype == torch.int16
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())
    torch.testing.assert_close(r.warped_labels.data[0], out.float())
    expected = metrics.dice((fixed / 50).floor().long()[None], out.long()[None])[0]
    found = sorted(set(torch.cat([(fixed / 50).floor().flatten(), out.flatten().float()]).long().tolist()) - {0})
    assert list(r.stats["dice"]) == [str(k) for k in found]
    np.testing.assert_allclose(list(r.stats["dice"].values()), expected.numpy(), equal_nan=True)
    io.save(tmp_path / "l.nii.gz", io.Image(labels[None].float(), dtype=np.int16))
    image = r.warp_labels(tmp_path / "l.nii.gz")
    assert image.dtype == np.int16
    with pytest.raises(ValueError, match="moving_labels: expected an integer label map"):
        fastreg.register(fixed, moving, model=unireg, moving_labels=labels.float() + 0.5)
    with pytest.raises(ValueError, match="moving_labels: expected a label map on the moving image's grid"):
        fastreg.register(fixed, moving, model=unireg, moving_labels=labels[:-1])


@pytest.mark.parametrize("fmt", ["voxel", "world", "itk"])
def test_save_writes_files_read_back_by_io(unireg, tmp_path, fmt):
    fixed, moving = smooth(24, 28), smooth(24, 28)
    affine = np.diag([0.8, 1.5, 1.0, 1.0])
    affine[:2, 3] = torch.randn(2).numpy() * 10
    r = fastreg.register(io.Image(fixed[None], affine), io.Image(moving[None], affine), model=unireg, affine="on",
                         moving_labels=io.Image((moving / 60).floor()[None], affine))
    written = r.save(tmp_path, format=fmt)
    names = {p.name for p in written}
    assert names == {"warped.nii.gz", "field.nii.gz", "inverse.nii.gz", "warped_labels.nii.gz", "affine.txt",
                     "stats.json", "preview.png"}
    torch.testing.assert_close(io.load_field(tmp_path / "field.nii.gz", r.fixed), r.disp, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(io.load_field(tmp_path / "inverse.nii.gz", r.fixed), r.inverse, atol=1e-4, rtol=1e-5)
    world = np.loadtxt(tmp_path / "affine.txt")
    np.testing.assert_allclose(world, r.world_matrix())
    torch.testing.assert_close(io.load(tmp_path / "warped.nii.gz").data, r.warped.data)


def oblique(spacing, angle, origin):
    c, s = math.cos(angle), math.sin(angle)
    affine = np.eye(4)
    affine[:2, :2] = np.array([[c, -s], [s, c]]) @ np.diag(spacing)
    affine[:2, 3] = origin
    return affine


def test_any_grid_field_is_the_same_world_vector():
    """A model predicting one vector c in canonical voxels moves every fixed point by the world
    vector A_c c, whatever the fixed grid (oblique, anisotropic, flipped)."""
    c = (torch.rand(2) * 4 - 2).tolist()
    net = Constant(c)
    for spacing in ((1.0, 2.5), (-1.5, 0.7)):
        affine = oblique(spacing, float(torch.rand(()) * 0.6 - 0.3), torch.randn(2).numpy() * 20)
        fixed = io.Image(smooth(30, 20)[None], affine)
        r = fastreg.register(fixed, fixed, model=net, affine="off")
        canonical = canonical_grid(fixed)
        assert min(canonical.spacing) == pytest.approx(min(abs(s) for s in spacing))
        assert canonical.spacing[0] == pytest.approx(canonical.spacing[1])
        expected = canonical.affine[:2, :2] @ np.array(c)
        world = np.tensordot(affine[:2, :2], r.disp.double().numpy(), axes=1)
        np.testing.assert_allclose(world.reshape(2, -1), np.repeat(expected[:, None], 600, 1), atol=1e-4)


def test_any_grid_3d_oblique_anisotropic():
    c = (torch.rand(3) * 4 - 2).tolist()
    q, _ = torch.linalg.qr(torch.eye(3) + 0.2 * torch.randn(3, 3, dtype=torch.float64))
    affine = np.eye(4)
    affine[:3, :3] = q.numpy() @ np.diag([2.0, 0.9, 1.3])
    affine[:3, 3] = torch.randn(3).numpy() * 10
    fixed = io.Image(smooth(10, 14, 12)[None], affine)
    r = fastreg.register(fixed, fixed, model=Constant(c), affine="off")
    canonical = canonical_grid(fixed)
    assert canonical.axcodes == "RAS"
    np.testing.assert_allclose(canonical.spacing, [0.9] * 3)
    expected = canonical.affine[:3, :3] @ np.array(c)
    world = np.tensordot(affine[:3, :3], r.disp.double().numpy(), axes=1).reshape(3, -1)
    np.testing.assert_allclose(world, np.repeat(expected[:, None], world.shape[1], 1), atol=1e-4)


def test_the_network_runs_at_the_models_spacing_or_the_one_asked_for():
    """A model that declares a voxel size (model.spacing) runs on a canonical grid of that size:
    its constant vector c (canonical voxels) is then the world vector spacing * c on a 1 mm
    anisotropic image; spacing=None keeps the fixed image's smallest spacing, a number wins."""
    c = (torch.rand(3) * 4 - 2).tolist()
    affine = np.diag([1.0, 1.0, 1.6, 1.0])
    fixed = io.Image(smooth(20, 18, 12)[None], affine)
    sizes = {}

    class Sized(Constant):
        def predict(self, fixed, moving, levels):
            sizes[self.spacing] = tuple(fixed.shape[2:])
            return super().predict(fixed, moving, levels)

    net = Sized(c)
    for declared, asked, expected in ((2.0, "model", 2.0), (None, "model", 1.0), (2.0, None, 1.0), (2.0, 0.5, 0.5)):
        net.spacing = declared
        r = fastreg.register(fixed, fixed, model=net, affine="off", spacing=asked)
        world = np.tensordot(affine[:3, :3], r.disp.double().numpy(), axes=1).reshape(3, -1)
        np.testing.assert_allclose(world, np.repeat(expected * np.array(c)[:, None], world.shape[1], 1), atol=1e-4)
        grid = canonical_grid(fixed, None if asked is None else (declared if asked == "model" else asked))
        assert grid.spacing == pytest.approx([expected] * 3)
        assert sizes[declared] == grid.shape
    assert canonical_grid(fixed, 2.0).shape == (10, 9, 9)  # floor(19 / 2, 17 / 2, 11 * 1.6 / 2) + 1
    for bad, error in ((0.0, ValueError), (-2.0, ValueError), ("2", TypeError)):
        with pytest.raises(error, match="spacing: expected"):
            fastreg.register(fixed, fixed, model=net, affine="off", spacing=bad)


class Folding(models.RegistrationModel):
    """A zero field except two neighbouring voxels moved across each other: a local fold."""

    ndim = 2

    def predict(self, fixed, moving, levels):
        field = torch.zeros(fixed.shape[0], 2, *fixed.shape[2:])
        field[:, 0, 10:12, 10] = torch.tensor([2.5, -2.5])
        return field


def test_a_folding_field_reports_its_inverse_instead_of_warning():
    fixed = smooth(24, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folded = fastreg.register(fixed, fixed, model=Folding(), affine="off")
        smooth_field = fastreg.register(fixed, fixed, model=Constant([0.5, -0.3]), affine="off")
    assert folded.stats["inverse_converged"] is False and smooth_field.stats["inverse_converged"] is True


def test_moving_on_another_grid_is_brought_through_the_affines():
    """With a zero field, warped is the moving image resampled onto the fixed grid by world position."""
    net = Constant([0.0, 0.0])
    fixed = io.Image(smooth(30, 26)[None], oblique((1.2, 0.9), 0.2, (3.0, -4.0)))
    moving = io.Image(smooth(40, 34)[None], oblique((0.8, 1.0), -0.1, (1.0, -2.0)))
    r = fastreg.register(fixed, moving, model=net, affine="off")
    torch.testing.assert_close(r.warped.data, io.resample(moving, fixed).data, atol=1e-4, rtol=1e-4)
    assert not r.affine_used


def test_affine_modes(unireg):
    shift = random_shift()
    fixed, moving = camera_pair(shift)
    same = fastreg.register(fixed, fixed + torch.rand_like(fixed), model=unireg, affine="auto")
    assert not same.affine_used and np.array_equal(same.matrix, np.eye(3))
    off = fastreg.register(fixed, moving, model=unireg, affine="off")
    assert not off.affine_used and np.array_equal(off.matrix, np.eye(3))
    auto = fastreg.register(fixed, moving, model=unireg, affine="auto")
    assert auto.affine_used
    centre = np.array([47.5, 47.5, 1.0])
    np.testing.assert_allclose((auto.matrix @ centre)[:2] - centre[:2], shift, atol=0.8)
    assert auto.stats["cc_after"] > auto.stats["cc_before"] + 0.1
    assert fastreg.register(fixed, fixed, model=unireg, affine="on").affine_used


def test_nio_refines_and_half_runs(unireg):
    fixed, moving = smooth(32, 32), smooth(32, 32)
    r = fastreg.register(fixed, moving, model=unireg, affine="off", nio=True, iterations=(3,))
    assert "nio" in r.timings and torch.isfinite(r.disp).all()
    f, m = normalize(fixed[None])[None], normalize(moving[None])[None]
    for similarity in ("lncc", "mi"):  # the field of nio.optimize with that similarity
        r = fastreg.register(fixed, moving, model=unireg, affine="off", nio=True, iterations=(3,),
                             nio_similarity=similarity)
        expected = fastreg.nio.optimize(unireg, f, m, iterations=(3,), similarity=similarity).disp[0]
        torch.testing.assert_close(r.disp, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="nio_similarity: expected one of"):
        fastreg.register(fixed, moving, model=unireg, nio=True, nio_similarity="ncc")
    r = fastreg.register(fixed, moving, model=unireg, affine="off", nio=True, iterations=(3,), half=True)
    expected = fastreg.nio.optimize(unireg, f, m, iterations=(3,), half=True).disp[0]
    torch.testing.assert_close(r.disp, expected, atol=1e-5, rtol=0)  # NIO's steps in bfloat16 too
    h = fastreg.register(fixed, moving, model=unireg, affine="off", half=True)
    full = fastreg.register(fixed, moving, model=unireg, affine="off")
    assert h.disp.dtype == torch.float32
    assert (h.disp - full.disp).abs().max() < 0.05 * full.disp.abs().max() + 1e-3


def test_passes_for_one_call_leave_the_model_as_it_was():
    shipped = models.load("unireg-2d")
    fixed, moving = smooth(40, 36), smooth(40, 36)
    two = fastreg.register(fixed, moving, model=shipped, affine="off")
    one = fastreg.register(fixed, moving, model=shipped, affine="off", passes=1)
    assert shipped.passes == 2
    expected = fastreg.register(fixed, moving, model=_with_passes(shipped, 1), affine="off").disp
    torch.testing.assert_close(one.disp, expected)
    assert not torch.allclose(one.disp, two.disp)
    with pytest.raises(ValueError, match="passes: expected a positive int"):
        fastreg.register(fixed, moving, model=shipped, affine="off", passes=0)
    assert shipped.passes == 2


def _with_passes(model, passes):
    other = copy.deepcopy(model)
    other.set_passes(passes)
    return other


def test_bad_input(unireg, tmp_path, monkeypatch):
    fixed = smooth(32, 32)
    bad = fixed.clone()
    bad[3, 4] = float("nan")
    with pytest.raises(ValueError, match="moving: the image holds NaN"):
        fastreg.register(fixed, bad, model=unireg)
    with pytest.raises(ValueError, match="moving: expected a 2-D image like fixed, got a 3-D one"):
        fastreg.register(fixed, smooth(8, 8, 8), model=unireg)
    with monkeypatch.context() as patch:  # an installation whose 3-D weights file is missing
        patch.setattr(models.weights, "pretrained", lambda: ["unireg-2d"])
        with pytest.raises(ValueError, match=r"no pretrained 3-D model is shipped yet.*fastreg train"):
            fastreg.register(smooth(8, 8, 8), smooth(8, 8, 8), model="auto")
    with pytest.raises(ValueError, match=r"model: expected 'auto', a pretrained name \(cascade-3d, dpvfa-3d, unireg-2d"):
        fastreg.register(fixed, fixed, model="nope")
    with pytest.raises(ValueError, match="model: Constant registers 3-D images, the inputs are 2-D"):
        fastreg.register(fixed, fixed, model=Constant([0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="file not found"):
        fastreg.register(tmp_path / "none.nii.gz", fixed, model=unireg)
    with pytest.raises(ValueError, match="affine: "):
        fastreg.register(fixed, fixed, model=unireg, affine="maybe")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: cuda was asked for, but CUDA is not available"):
            fastreg.register(fixed, fixed, model=unireg, device="cuda")
    with pytest.raises(TypeError, match="fixed: expected a path"):
        fastreg.register([1, 2], fixed, model=unireg)
