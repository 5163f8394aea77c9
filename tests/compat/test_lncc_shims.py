"""The LNCC shims (fastreg/compat/_lncc.py) against their originals: the legacy VoxelMorph
NCC (its formula, fastreg.reference.lncc.voxelmorph_ncc) and MONAI 1.6.1's
LocalNormalizedCrossCorrelationLoss, values and gradients to 1e-6, on every kernel backend."""
import pytest
import torch

from fastreg.compat._lncc import NCC, LocalNormalizedCrossCorrelationLoss
from fastreg.reference.lncc import voxelmorph_ncc

monai_losses = pytest.importorskip("monai.losses")


def _values_and_grads(fn, p, t):
    p, t = p.detach().requires_grad_(), t.detach().requires_grad_()
    out = fn(p, t)
    return (out, *torch.autograd.grad(out.sum(), (p, t)))


def _assert_same(got, want, tol):
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=tol, atol=tol * max(1.0, w.abs().max().item()))


@pytest.mark.parametrize("shape,win", [((2, 1, 17, 19), None), ((2, 1, 17, 19), 5), ((1, 1, 9, 11, 13), [3, 3, 3])])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_voxelmorph_ncc(backend, device, shape, win, dtype):
    y_true = torch.rand(shape, dtype=dtype, device=device)
    y_pred = (y_true + 0.5 * torch.rand(shape, dtype=dtype, device=device)).to(dtype)
    got = _values_and_grads(lambda p, t: NCC(win).loss(t, p), y_pred, y_true)
    # the original in float64 (float32 convolutions are the less accurate side)
    want = _values_and_grads(lambda p, t: voxelmorph_ncc(t, p, win), y_pred.double(), y_true.double())
    _assert_same([g.double() for g in got], want, 1e-6 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize(
    "dims,shape",
    [(1, (2, 2, 31)), (2, (2, 2, 17, 19)), (3, (1, 2, 9, 11, 10))],
)
@pytest.mark.parametrize("kernel_type", ["rectangular", "triangular", "gaussian"])
@pytest.mark.parametrize("kernel_size", [3, 7])
def test_monai_lncc(backend, device, dims, shape, kernel_type, kernel_size):
    pred = torch.rand(shape, dtype=torch.float64, device=device)
    target = (pred + 0.5 * torch.rand(shape, dtype=torch.float64, device=device)).to(torch.float64)
    kwargs = dict(kernel_size=kernel_size, kernel_type=kernel_type, reduction="none", smooth_nr=1e-4, smooth_dr=1e-3)
    got = _values_and_grads(LocalNormalizedCrossCorrelationLoss(dims, **kwargs), pred, target)
    want = _values_and_grads(monai_losses.LocalNormalizedCrossCorrelationLoss(dims, **kwargs).to(device), pred, target)
    _assert_same(got, want, 1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_monai_reductions(backend, device, reduction):
    pred = torch.rand(2, 1, 13, 12, dtype=torch.float64, device=device)
    target = torch.rand(2, 1, 13, 12, dtype=torch.float64, device=device)
    kwargs = dict(kernel_size=5, kernel_type="gaussian", reduction=reduction)
    got = _values_and_grads(LocalNormalizedCrossCorrelationLoss(2, **kwargs), pred, target)
    want = _values_and_grads(monai_losses.LocalNormalizedCrossCorrelationLoss(2, **kwargs), pred, target)
    _assert_same(got, want, 1e-6)


def test_monai_defaults_float32(backend, device):
    pred = torch.rand(1, 1, 12, 10, 11, device=device)
    target = torch.rand(1, 1, 12, 10, 11, device=device)
    got = _values_and_grads(LocalNormalizedCrossCorrelationLoss(), pred, target)
    want = _values_and_grads(monai_losses.LocalNormalizedCrossCorrelationLoss(), pred.double(), target.double())
    _assert_same([g.double() for g in got], want, 1e-5)


def test_shim_bad_input():
    with pytest.raises(ValueError, match="kernel_size"):
        LocalNormalizedCrossCorrelationLoss(3, kernel_size=4)
    with pytest.raises(ValueError, match="kernel_type"):
        LocalNormalizedCrossCorrelationLoss(3, kernel_type="box")
    with pytest.raises(ValueError, match="spatial_dims"):
        LocalNormalizedCrossCorrelationLoss(4)
    loss = LocalNormalizedCrossCorrelationLoss(2)
    with pytest.raises(ValueError, match="pred"):
        loss(torch.rand(1, 1, 5, 5, 5), torch.rand(1, 1, 5, 5, 5))
    with pytest.raises(ValueError, match="target"):
        loss(torch.rand(1, 1, 5, 5), torch.rand(1, 1, 5, 6))
    with pytest.raises(TypeError, match="y_true"):
        NCC(3).loss(torch.rand(1, 1, 8, 8).int(), torch.rand(1, 1, 8, 8))
