"""fastreg.data.random_field / random_velocity: statistics, folding, reproducibility, errors."""
import math

import pytest
import torch

import fastreg
from fastreg.data import random_field, random_velocity
from fastreg.data.fields import fold_free_disps, velocity_to_disp
from fastreg.metrics import jacobian_stats


def _generator():
    return torch.Generator().manual_seed(int(torch.randint(2**31, ())))


@pytest.mark.parametrize("shape", [(40, 36), (20, 18, 22)])
@pytest.mark.parametrize("half_res", [False, True])
def test_shapes_and_dtypes(shape, half_res):
    for dtype in (torch.float32, torch.float64):
        disp = random_field(shape, batch=3, half_res=half_res, dtype=dtype, generator=_generator())
        assert disp.shape == (3, len(shape), *shape) and disp.dtype == dtype
        assert torch.isfinite(disp).all() and disp.abs().max() > 0
    v = random_velocity(shape, batch=2, half_res=half_res, generator=_generator())
    grid = tuple(math.ceil(s / 2) for s in shape) if half_res else shape
    assert v.shape == (2, len(shape), *grid)


@pytest.mark.parametrize("ndim", [2, 3])
def test_std_against_max_std(ndim):
    """At the coarse nodes (which fall on voxels when (S - 1) is a multiple of (s - 1)) the
    plain field is sigma * N(0, 1) with sigma ~ U(0, max_std): its RMS is max_std / sqrt(3)."""
    s, size, max_std = 5, 17, float(torch.empty(()).uniform_(1.0, 6.0))
    batch = 600 if ndim == 2 else 150
    disp = random_field((size,) * ndim, batch=batch, scales=(s,), max_std=max_std, steps=0, generator=_generator())
    nodes = disp[(slice(None), slice(None)) + (slice(None, None, (size - 1) // (s - 1)),) * ndim]
    assert nodes.shape[2:] == (s,) * ndim
    rms = nodes.double().pow(2).mean().sqrt().item()
    assert rms == pytest.approx(max_std / math.sqrt(3), rel=0.1)
    # sigma is drawn per sample: the per-sample RMS spreads over (0, max_std)
    per_sample = nodes.double().pow(2).mean(dim=tuple(range(1, nodes.dim()))).sqrt()
    assert per_sample.max() < 1.3 * max_std and per_sample.min() < 0.3 * max_std
    # between nodes linear interpolation only shrinks the values
    assert disp.abs().max() <= nodes.abs().max() * (1 + 1e-6)


def test_scales_add_up():
    """Two scales: the plain field is the sum of two independent layers (variance adds)."""
    one = random_field((33, 33), batch=800, scales=(5,), max_std=2.0, steps=0, generator=_generator())
    two = random_field((33, 33), batch=800, scales=(5, 5), max_std=2.0, steps=0, generator=_generator())
    ratio = (two.double().var() / one.double().var()).item()
    assert ratio == pytest.approx(2.0, rel=0.15)


@pytest.mark.parametrize("shape", [(128, 112), (40, 48, 44)])
def test_no_folding_at_default_strength(shape):
    disp = random_field(shape, batch=6, steps=5, generator=_generator())
    assert (jacobian_stats(disp)["folding_percent"] == 0).all()
    plain = random_field(shape, batch=6, steps=0, max_std=40.0, generator=_generator())
    assert (jacobian_stats(plain)["folding_percent"] > 0).any()  # the check can fail


def test_folding_draws_are_scaled_down():
    """A strong draw folds when integrated plainly; fold_free_disps scales exactly the folding
    samples' velocities by powers of 0.8 and leaves the others bit for bit."""
    shape = (40, 36)
    v = random_velocity(shape, batch=16, max_std=14.0, generator=_generator())  # ~59 % fold
    plain = [velocity_to_disp(s * v, 5, shape) for s in (1, -1)]
    folded = torch.stack([(fastreg.jacobian_det(d)[:, 2:-2, 2:-2] <= 0).flatten(1).any(1) for d in plain]).any(0)
    assert folded.any() and not folded.all()
    used, (forward, inverse) = fold_free_disps(v, 5, shape, signs=(1, -1))
    for d in (forward, inverse):
        assert (jacobian_stats(d)["folding_percent"] == 0).all()
    torch.testing.assert_close(inverse, velocity_to_disp(-used, 5, shape))
    torch.testing.assert_close(forward[~folded], plain[0][~folded], rtol=0, atol=0)
    ratio = (used[folded].flatten(1).norm(dim=1) / v[folded].flatten(1).norm(dim=1)).double()
    exponent = ratio.log() / math.log(0.8)
    assert (exponent >= 0.5).all() and torch.allclose(exponent, exponent.round(), atol=1e-4)
    torch.testing.assert_close(fold_free_disps(v, 0, shape)[1][0], v)  # steps=0: plain, may fold


def test_steps_integrate_the_velocity():
    seed = int(torch.randint(2**31, ()))
    v = random_velocity((30, 34), batch=2, generator=torch.Generator().manual_seed(seed))
    disp = random_field((30, 34), batch=2, steps=5, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(disp, fastreg.integrate_svf(fold_free_disps(v, 5, (30, 34))[0], 5))


def test_half_res_resizes_the_integrated_field():
    seed = int(torch.randint(2**31, ()))
    v = random_velocity((24, 30, 26), scales=(24, 12, 6), half_res=True, generator=torch.Generator().manual_seed(seed))
    disp = random_field((24, 30, 26), scales=(24, 12, 6), half_res=True, generator=torch.Generator().manual_seed(seed))
    used = fold_free_disps(v, 5, (24, 30, 26))[0]  # at this small size most draws fold
    torch.testing.assert_close(disp, fastreg.resize_field(fastreg.integrate_svf(used, 5), size=(24, 30, 26)))


def test_reproducible_and_distinct():
    seed = int(torch.randint(2**31, ()))
    a = random_field((32, 32), batch=2, generator=torch.Generator().manual_seed(seed))
    b = random_field((32, 32), batch=2, generator=torch.Generator().manual_seed(seed))
    c = random_field((32, 32), batch=2, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(shape=(32,)), ValueError, "shape"),
    (dict(shape=(32, 32.0)), TypeError, "shape"),
    (dict(shape=(32, 1)), ValueError, "shape"),
    (dict(batch=0), ValueError, "batch"),
    (dict(scales=6), ValueError, "scales"),
    (dict(scales=(1,)), ValueError, "scales"),
    (dict(max_std=-1.0), ValueError, "max_std"),
    (dict(max_std=float("nan")), ValueError, "max_std"),
    (dict(steps=-1), ValueError, "steps"),
    (dict(steps=2.0), TypeError, "steps"),
    (dict(half_res=1), TypeError, "half_res"),
    (dict(generator=0), TypeError, "generator"),
    (dict(dtype=torch.int64), TypeError, "dtype"),
])
def test_bad_input(kwargs, error, name):
    kwargs = {"shape": (32, 32), **kwargs}
    with pytest.raises(error, match=name):
        random_field(**kwargs)
