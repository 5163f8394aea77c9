"""jacobian_det and jacobian_stats: the reference against the published formulas
(fastreg.bench.peer_kernels: Learn2Reg's scipy evaluation, VoxelMorph's np.gradient, Liu et
al.'s non-diffeomorphic volume), spacing, half precision, the statistics on every kernel backend
(values, NaN counts, crops) and JacobianLoss. The op contract of jacobian_det (parity with
spacing in float64 and float32, gradients, opcheck, compile, NaN, strides, size-1 axes, bad
input) and jacobian_stats' opcheck, compile, empty batch and bad crop are in
tests/test_op_contract.py."""
import math

import numpy as np
import pytest
import torch

import fastreg
from fastreg import _library
from fastreg import _validate as check
from fastreg.data import random_smooth_field
from fastreg.ops import jacobian as ops
from fastreg.bench.peer_kernels import learn2reg_jacdet as l2r_jacdet
from fastreg.bench.peer_kernels import learn2reg_stats as l2r_stats
from fastreg.bench.peer_kernels import liu_ndv_percent, vxm_jacdet
from fastreg.reference import jacobian as reference

MODES = ("central", "forward", "gradient")
SHAPES = [(9, 11), (6, 7, 8)]


def field(shape, batch=2, magnitude=1.2, spacing=3, dtype=torch.float64, device="cpu"):
    """A smooth random field folded in places (magnitude ~ the control-point spacing)."""
    return random_smooth_field(shape, batch=batch, magnitude=magnitude, spacing=spacing, dtype=dtype, device=device)


# --- determinant map ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_published_formulas(shape):
    disp = field(shape)
    np.testing.assert_allclose(reference.jacobian_det(disp, "central").numpy(), l2r_jacdet(disp.numpy()), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(reference.jacobian_det(disp, "gradient").numpy(), vxm_jacdet(disp.numpy()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_spacing_turns_a_field_in_mm_into_voxels(shape):
    """A field in mm with its spacing has the determinant of the same field in voxels (the op
    contract holds every backend to the reference with spacing, in float64 and float32)."""
    disp = field(shape)
    spacing = (0.7, 1.3, 2.1)[: len(shape)]
    physical = disp * torch.tensor(spacing, dtype=torch.float64).view(1, -1, *([1] * len(shape)))
    expected = reference.jacobian_det(disp, "central")
    torch.testing.assert_close(reference.jacobian_det(physical, "central", spacing), expected)


def test_det_half_precision(backend, device):
    if device.type == "cpu" and backend == "triton":
        pytest.skip("half precision Triton runs on GPU only")
    disp = field((5, 6, 7), dtype=torch.float32, device=device, magnitude=0.5)
    out = fastreg.jacobian_det(disp.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference.jacobian_det(disp.to(torch.bfloat16).float()), rtol=2e-2, atol=2e-2)


# --- statistics -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("crop", [0, 2])
def test_stats_match_reference(backend, device, shape, mode, crop):
    disp = field(shape, batch=2, device=device, magnitude=0.8)
    spacing = (1.0, 0.5, 2.0)[: len(shape)] if mode == "forward" else None
    out = fastreg.metrics.jacobian_stats(disp, mode, spacing, crop)
    expected = reference.jacobian_stats(disp, mode, spacing and list(spacing), crop)
    assert set(out) == set(reference.STAT_KEYS)
    for key in reference.STAT_KEYS:
        assert out[key].shape == (2,) and out[key].dtype == torch.float64
        torch.testing.assert_close(out[key], expected[key], rtol=1e-10, atol=1e-10)
    if spacing is None:
        np.testing.assert_allclose(out["ndv_percent"].cpu().numpy(), liu_ndv_percent(disp.cpu().numpy(), crop), rtol=1e-10, atol=1e-12)
    if mode == "central":
        sdlogj, folds, det = l2r_stats(disp.cpu().numpy(), crop)
        np.testing.assert_allclose(out["sdlogj"].cpu().numpy(), sdlogj, rtol=1e-10)
        np.testing.assert_allclose(out["folding_percent"].cpu().numpy(), folds, rtol=1e-12)
        np.testing.assert_allclose(out["jdet_std"].cpu().numpy(), det.std(1), rtol=1e-10)
        plain = [np.log(d[d > 0]).std() for d in det]
        np.testing.assert_allclose(out["sdlogj_plain"].cpu().numpy(), plain, rtol=1e-10)


def test_stats_float32(backend, device):
    disp = field((10, 11, 12), batch=1, device=device, dtype=torch.float32, magnitude=0.6)
    out = fastreg.metrics.jacobian_stats(disp)
    expected = reference.jacobian_stats(disp.double())
    for key in reference.STAT_KEYS:
        torch.testing.assert_close(out[key], expected[key], rtol=1e-4, atol=0.05 if key == "folding_percent" else 1e-4)


LONG_ROWS = [(5, 6, 70), (6, 150)]  # rows long enough for the main bodies of vectorized row loops


@pytest.mark.parametrize("shape", LONG_ROWS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stats_long_rows(backend, device, shape, mode, dtype):
    disp = field(shape, batch=2, device=device, dtype=dtype, magnitude=0.8)
    spacing = (1.0, 0.5, 2.0)[-len(shape):] if mode == "forward" else None
    for crop in (0, 2):
        out = fastreg.metrics.jacobian_stats(disp, mode, spacing, crop)
        expected = reference.jacobian_stats(disp.double(), mode, spacing and list(spacing), crop)
        one_voxel = 100.0 / math.prod(s - 2 * crop for s in shape)  # a float32 det may flip sign at 0
        for key in reference.STAT_KEYS:
            if dtype == torch.float64:
                torch.testing.assert_close(out[key], expected[key], rtol=1e-10, atol=1e-10)
            else:
                atol = one_voxel if key == "folding_percent" else 1e-4
                torch.testing.assert_close(out[key], expected[key], rtol=1e-4, atol=atol)


@pytest.mark.parametrize("mode", MODES)
def test_stats_nan_count(backend, device, mode):
    """The kernels' NaN sum counts exactly the region voxels whose stencils read a NaN (NaNs in
    the middle and near the end of long rows); every statistic is NaN for that batch item only."""
    disp = field(LONG_ROWS[0], batch=2, device=device, dtype=torch.float32)
    disp[1, 1, 2, 2, 33] = math.nan
    disp[1, 0, 1, 3, 68] = math.nan
    _, mode_index, spacing = check.jacobian(disp, mode, None, ops.MODES)
    for crop in (0, 2):
        sums = _library.kernel("jacobian_stats", backend)(disp, mode_index, list(spacing), crop)
        flagged = torch.isnan(reference.jacobian_det(disp.double(), mode))
        for t in reference.tetrahedra_dets(disp.double()):
            flagged |= torch.isnan(t)
        region = (slice(None),) + tuple(slice(crop, n - crop) for n in LONG_ROWS[0])
        assert sums[:, ops.NAN].tolist() == flagged[region].flatten(1).sum(1).double().tolist()
        assert sums[1, ops.NAN] > 0
        stats = fastreg.metrics.jacobian_stats(disp, mode, None, crop)
        assert all(torch.isnan(v[1]) and not torch.isnan(v[0]) for v in stats.values())


def test_stats_default_is_learn2reg():
    disp = field((12, 13, 14), batch=1, magnitude=0.7)
    sdlogj, folds, _ = l2r_stats(disp.numpy())
    out = fastreg.metrics.jacobian_stats(disp)
    np.testing.assert_allclose(out["sdlogj"].numpy(), sdlogj, rtol=1e-10)
    np.testing.assert_allclose(out["folding_percent"].numpy(), folds, rtol=1e-12)


def test_jacobian_loss():
    disp = field((6, 7, 8), batch=2).requires_grad_()
    loss = fastreg.nn.JacobianLoss(eps=0.1)(disp)
    expected = torch.relu(0.1 - reference.jacobian_det(disp)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    loss.backward()
    assert disp.grad is not None and disp.grad.abs().sum() > 0
    assert fastreg.nn.JacobianLoss(reduction="none")(disp).shape == (2, 6, 7, 8)
    with pytest.raises(ValueError, match="reduction"):
        fastreg.nn.JacobianLoss(reduction="max")
