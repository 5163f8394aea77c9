"""jacobian_det and jacobian_stats: parity of every kernel backend with the reference, with
test-local copies of the published formulas (Learn2Reg's scipy evaluation, VoxelMorph's
np.gradient, Liu et al.'s non-diffeomorphic volume), gradcheck, opcheck, compile, errors."""
import math

import numpy as np
import pytest
import scipy.ndimage
import torch

import fastreg
from fastreg import _library
from fastreg import _validate as check
from fastreg.data import random_smooth_field
from fastreg.ops import jacobian as ops
from fastreg.reference import jacobian as reference

MODES = ("central", "forward", "gradient")
SHAPES = [(9, 11), (6, 7, 8)]


def field(shape, batch=2, magnitude=1.2, spacing=3, dtype=torch.float64, device="cpu"):
    """A smooth random field folded in places (magnitude ~ the control-point spacing)."""
    return random_smooth_field(shape, batch=batch, magnitude=magnitude, spacing=spacing, dtype=dtype, device=device)


# --- test-local copies of the published formulas (numpy/scipy) ----------------------------


def l2r_jacdet(disp):
    """Learn2Reg evaluation: correlate with [-0.5, 0, 0.5] (zero padding), add identity."""
    ndim = disp.shape[1]
    grads = []
    for b in range(ndim):
        shape = [1] * (ndim + 1)
        shape[1 + b] = 3
        kernel = np.array([-0.5, 0, 0.5]).reshape(shape)
        grads.append(np.stack([scipy.ndimage.correlate(disp[:, a], kernel, mode="constant", cval=0.0)
                               for a in range(ndim)], axis=1))
    J = np.stack(grads, 2) + np.eye(ndim).reshape(1, ndim, ndim, *([1] * ndim))  # (B, a, b, *S)
    return np.linalg.det(np.moveaxis(J, (1, 2), (-2, -1)))


def vxm_jacdet(disp):
    """VoxelMorph jacobian_determinant: np.gradient of disp + grid."""
    ndim = disp.shape[1]
    out = []
    for item in disp:
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in item.shape[1:]], indexing="ij"))
        phi = item + grid
        J = np.stack([np.stack(np.gradient(phi[a]), 0) for a in range(ndim)], 0)  # (a, b, *S)
        out.append(np.linalg.det(np.moveaxis(J, (0, 1), (-2, -1))))
    return np.stack(out)


def liu_ndv_percent(disp, crop=0):
    """Liu et al. NDV (digital_diffeomorphism): displacement edge-padded, finite differences
    of the deformation (D0, D+, D-, and the two central tetrahedra), sum -0.5*min(det,0)/6."""
    ndim = disp.shape[1]
    out = []
    for item in disp:
        pad = np.pad(item, [(0, 0)] + [(1, 1)] * ndim, mode="edge")
        grid = np.stack(np.meshgrid(*[np.arange(-1, s + 1) for s in item.shape[1:]], indexing="ij"))
        phi = pad + grid
        inner = tuple(slice(1, -1) for _ in range(ndim))

        def at(offset):
            return phi[(slice(None),) + tuple(slice(1 + o, phi.shape[1 + k] - 1 + o) for k, o in enumerate(offset))]

        def unit(k, s):
            return [s if j == k else 0 for j in range(ndim)]

        c = phi[(slice(None),) + inner]
        dplus = [at(unit(k, 1)) - c for k in range(ndim)]
        dminus = [c - at(unit(k, -1)) for k in range(ndim)]
        dets = []
        for signs in np.ndindex(*([2] * ndim)):
            cols = [dplus[k] if s == 0 else dminus[k] for k, s in enumerate(signs)]
            dets.append(np.linalg.det(np.moveaxis(np.stack(cols, 1), (0, 1), (-2, -1))))
        if ndim == 3:
            j1 = [at([-1, -1, 0]) - c, at([-1, 0, -1]) - c, at([0, -1, -1]) - c]
            j2 = [at([1, 1, 0]) - c, at([0, 1, 1]) - c, at([1, 0, 1]) - c]
            for cols in (j1, j2):
                dets.append(np.linalg.det(np.moveaxis(np.stack(cols, 1), (0, 1), (-2, -1))))
        weight = 0.5 / (6 if ndim == 3 else 2)
        ndv = sum(-weight * np.minimum(d, 0) for d in dets)
        region = tuple(slice(crop, s - crop) for s in ndv.shape)
        out.append(100 * ndv[region].sum() / ndv[region].size)
    return np.array(out)


# --- determinant map ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_published_formulas(shape):
    disp = field(shape)
    np.testing.assert_allclose(reference.jacobian_det(disp, "central").numpy(), l2r_jacdet(disp.numpy()), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(reference.jacobian_det(disp, "gradient").numpy(), vxm_jacdet(disp.numpy()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_det_matches_reference_float64(backend, device, shape, mode):
    disp = field(shape, device=device)
    out = fastreg.jacobian_det(disp, mode)
    assert out.shape == (2, *shape) and out.dtype == torch.float64
    torch.testing.assert_close(out, reference.jacobian_det(disp, mode), rtol=1e-10, atol=1e-10)
    if mode == "central":
        np.testing.assert_allclose(out.cpu().numpy(), l2r_jacdet(disp.cpu().numpy()), rtol=1e-10, atol=1e-10)
    if mode == "gradient":
        np.testing.assert_allclose(out.cpu().numpy(), vxm_jacdet(disp.cpu().numpy()), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_det_float32_noncontiguous_and_spacing(backend, device, shape):
    disp = field(shape, dtype=torch.float32, device=device)
    spacing = (0.7, 1.3, 2.1)[: len(shape)]
    physical = disp * torch.tensor(spacing, device=device).view(1, -1, *([1] * len(shape)))
    expected = reference.jacobian_det(disp.double(), "central")
    out = fastreg.jacobian_det(physical, spacing=spacing)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    strided = torch.flip(disp.transpose(0, 1).contiguous().transpose(0, 1), dims=[-1])
    assert not strided.is_contiguous()
    torch.testing.assert_close(fastreg.jacobian_det(strided, "forward"),
                               reference.jacobian_det(strided, "forward"), rtol=1e-5, atol=1e-5)


def test_det_half_precision(backend, device):
    if device.type == "cpu" and backend == "triton":
        pytest.skip("half precision Triton runs on GPU only")
    disp = field((5, 6, 7), dtype=torch.float32, device=device, magnitude=0.5)
    out = fastreg.jacobian_det(disp.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference.jacobian_det(disp.to(torch.bfloat16).float()), rtol=2e-2, atol=2e-2)


def test_size_one_axis(backend, device):
    disp = field((1, 6, 7), device=device)
    for mode in ("central", "forward"):
        torch.testing.assert_close(fastreg.jacobian_det(disp, mode), reference.jacobian_det(disp, mode), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(backend, device, shape, mode):
    small = tuple(max(3, s // 2) for s in shape)
    disp = field(small, batch=1, spacing=2, device=device).requires_grad_()
    spacing = (0.8, 1.25, 1.5)[: len(shape)]
    # The Triton interpreter is slow: there, check random vector-Jacobian products (fast mode).
    fast = backend == "triton" and device.type == "cpu"
    assert torch.autograd.gradcheck(lambda d: fastreg.jacobian_det(d, mode, spacing), (disp,), eps=1e-6, atol=1e-7,
                                    fast_mode=fast)


def test_gradient_matches_reference_autograd(backend, device):
    disp = field((6, 7, 5), device=device).requires_grad_()
    weights = torch.randn(2, 6, 7, 5, dtype=torch.float64, device=device)
    for mode in MODES:
        (g,) = torch.autograd.grad((fastreg.jacobian_det(disp, mode) * weights).sum(), disp)
        (r,) = torch.autograd.grad((reference.jacobian_det(disp, mode) * weights).sum(), disp)
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_nan_in_nan_out(backend, device):
    disp = field((6, 7, 8), device=device)
    disp[1, 2, 3, 3, 4] = math.nan
    for mode in MODES:
        out = fastreg.jacobian_det(disp, mode)
        expected = reference.jacobian_det(disp, mode)
        assert torch.equal(torch.isnan(out), torch.isnan(expected)) and torch.isnan(out[1]).any()
        assert not torch.isnan(out[0]).any()
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10, equal_nan=True)
        stats = fastreg.metrics.jacobian_stats(disp, mode)
        assert all(torch.isnan(v[1]) and not torch.isnan(v[0]) for v in stats.values())


def test_opcheck():
    if not fastreg._extension.AVAILABLE:
        pytest.skip("compiled extension not available")
    disp = field((5, 6, 7), batch=1).requires_grad_()
    sp = [1.0, 0.5, 2.0]
    torch.library.opcheck(torch.ops.fastreg.jacobian_det_forward, (disp, 0, sp))
    torch.library.opcheck(torch.ops.fastreg.jacobian_det_backward, (torch.randn(1, 5, 6, 7, dtype=torch.float64), disp.detach(), 2, sp))
    torch.library.opcheck(torch.ops.fastreg.jacobian_stats, (disp.detach(), 1, sp, 1))


def test_opcheck_triton():
    if not torch.cuda.is_available():
        pytest.skip("opcheck of Triton ops needs a GPU (the interpreter cannot run fake tensors)")
    disp = field((4, 5), batch=1, device="cuda").requires_grad_()
    torch.library.opcheck(torch.ops.fastreg.jacobian_det_forward_triton.default, (disp, 0, [1.0, 2.0]), test_utils=("test_schema", "test_faketensor"))


def test_compile(backend, device):
    if backend == "triton" and device.type == "cpu":
        pytest.skip("compiling Triton ops needs a GPU (the interpreter cannot run fake tensors)")
    disp = field((5, 6, 7), device=device)
    fn = torch.compile(lambda d: torch.relu(-fastreg.jacobian_det(d)).mean(), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(fn(disp), torch.relu(-reference.jacobian_det(disp)).mean(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "make, kwargs, error, match",
    [
        (lambda: torch.randn(2, 3, 5, 6), {}, ValueError, "channels"),
        (lambda: torch.randn(2, 2, 5, 6, 7), {}, ValueError, "channels"),
        (lambda: torch.randn(2, 3, 5), {}, ValueError, "4-D or 5-D"),
        (lambda: torch.randn(2, 2, 5, 6), {"mode": "sobel"}, ValueError, "mode"),
        (lambda: torch.randn(2, 2, 1, 6), {"mode": "gradient"}, ValueError, "gradient"),
        (lambda: torch.randn(2, 2, 5, 6), {"spacing": (1.0, -1.0)}, ValueError, "spacing"),
        (lambda: torch.randn(2, 2, 5, 6), {"spacing": (1.0, 1.0, 1.0)}, ValueError, "spacing"),
        (lambda: torch.randint(0, 3, (2, 2, 5, 6)), {}, TypeError, "floating"),
        (lambda: [[1.0]], {}, TypeError, "Tensor"),
    ],
)
def test_bad_input(make, kwargs, error, match):
    with pytest.raises(error, match=match):
        fastreg.jacobian_det(make(), **kwargs)


# --- statistics -----------------------------------------------------------------------------


def l2r_stats(disp, crop=2):
    """Learn2Reg's SDlogJ and the fold count on its cropped determinant."""
    det = l2r_jacdet(disp)
    region = (slice(None),) + tuple(slice(crop, s - crop) for s in det.shape[1:])
    det = det[region].reshape(det.shape[0], -1)
    return np.log((det + 3).clip(1e-9, 1e9)).std(1), 100 * (det <= 0).mean(1), det


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
    the middle and near the end of long rows)."""
    if backend == "reference":
        pytest.skip("the reference computes no sums")
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


def test_stats_default_is_learn2reg():
    disp = field((12, 13, 14), batch=1, magnitude=0.7)
    sdlogj, folds, _ = l2r_stats(disp.numpy())
    out = fastreg.metrics.jacobian_stats(disp)
    np.testing.assert_allclose(out["sdlogj"].numpy(), sdlogj, rtol=1e-10)
    np.testing.assert_allclose(out["folding_percent"].numpy(), folds, rtol=1e-12)


def test_stats_bad_crop():
    disp = field((5, 6, 7), batch=1)
    with pytest.raises(ValueError, match="crop"):
        fastreg.metrics.jacobian_stats(disp, crop=3)
    with pytest.raises(ValueError, match="crop"):
        fastreg.metrics.jacobian_stats(disp, crop=-1)


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
