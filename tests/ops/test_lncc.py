"""fastreg.lncc on every kernel backend against the conv-based reference (fastreg/reference/lncc.py):
what the op contract (tests/test_op_contract.py: parity in float64 and float32 for windows from
1 to the image's size, box and gaussian, float32 keeping float64 accuracy at intensities of
3800-4095, gradients, gradcheck, opcheck, compile, NaN, strides, bad input) does not hold: float32
gradients of smooth images, reductions and loss forms, gaussian sigmas, constant regions,
cc <= 1, and NaN/inf windows with their gradients."""
import pytest
import torch

import fastreg
from fastreg.data import random_smooth_field
from fastreg.nn import LNCCLoss
from fastreg.ops.lncc import gaussian_taps
from fastreg.reference import lncc as reference

F64 = dict(rtol=1e-10, atol=1e-12)


def _taps(window, kernel, ndim):
    windows = (window,) * ndim if isinstance(window, int) else window
    return windows, ([] if kernel == "box" else gaussian_taps(windows, None))


def _ref_map(a, b, window, kernel):
    windows, taps = _taps(window, kernel, a.dim() - 2)
    return reference.lncc_map(a, b, windows, taps, 0.0, 0.0, 1e-5)


def _image(shape, dtype, device, scale=1.0):
    """A smooth random image (B, C, *S) with a little noise, in [0, scale]."""
    b, c, *spatial = shape
    smooth = random_smooth_field(spatial, batch=b * c, magnitude=1.0, spacing=4, dtype=torch.float64)[:, :1]
    x = 0.5 + 0.15 * smooth.reshape(b, c, *spatial) + 0.01 * torch.randn(shape, dtype=torch.float64)
    return (x.clamp(0, 1) * scale).to(dtype=dtype, device=device)


def test_float32_gradients(backend, device):
    shape, window = (1, 2, 6, 9, 8), (3, 5, 3)
    a = _image(shape, torch.float32, device, 4095.0).requires_grad_()
    b = _image(shape, torch.float32, device, 4095.0).requires_grad_()
    ga, gb = torch.autograd.grad(fastreg.lncc(a, b, window), (a, b))
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    ra, rb = torch.autograd.grad(_ref_map(a64, b64, window, "box").mean(), (a64, b64))
    for got, want in ((ga, ra), (gb, rb)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_gradient_to_one_input(backend, device):
    shape = (2, 1, 7, 8)
    a = torch.rand(shape, dtype=torch.float64, device=device)
    b = torch.rand(shape, dtype=torch.float64, device=device, requires_grad=True)
    (gb,) = torch.autograd.grad(fastreg.lncc(a, b, 5, reduction="sum"), (b,))
    b_ref = b.detach().requires_grad_()
    (want,) = torch.autograd.grad(_ref_map(a, b_ref, 5, "box").sum(), (b_ref,))
    torch.testing.assert_close(gb, want, rtol=1e-9, atol=1e-10)


def test_reductions_and_loss_forms(backend, device):
    a = torch.rand(2, 2, 9, 8, device=device, dtype=torch.float64)
    b = torch.rand(2, 2, 9, 8, device=device, dtype=torch.float64)
    cc = fastreg.lncc(a, b, 3, reduction="none")
    assert cc.shape == a.shape
    torch.testing.assert_close(fastreg.lncc(a, b, 3), cc.mean(), **F64)
    torch.testing.assert_close(fastreg.lncc(a, b, 3, reduction="sum"), cc.sum(), **F64)
    torch.testing.assert_close(LNCCLoss(3)(a, b), -cc.mean(), **F64)
    torch.testing.assert_close(LNCCLoss(3, form="one_minus")(a, b), 1 - cc.mean(), **F64)
    torch.testing.assert_close(fastreg.lncc(b, a, 3, reduction="none"), cc, **F64)  # symmetric


def test_gaussian_sigma(backend, device):
    a = torch.rand(1, 1, 9, 10, dtype=torch.float64, device=device)
    b = torch.rand(1, 1, 9, 10, dtype=torch.float64, device=device)
    got = fastreg.lncc(a, b, 5, "gaussian", sigma=(0.8, 2.5), reduction="none")
    taps = gaussian_taps((5, 5), (0.8, 2.5))
    torch.testing.assert_close(got, reference.lncc_map(a, b, (5, 5), taps, 0.0, 0.0, 1e-5), **F64)
    default = fastreg.lncc(a, b, 5, "gaussian", reduction="none")
    torch.testing.assert_close(default, fastreg.lncc(a, b, 5, "gaussian", sigma=5 / 3, reduction="none"), **F64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_and_empty_regions_are_finite(backend, device, dtype):
    shape = (1, 1, 8, 7, 9)
    b = torch.rand(shape, dtype=dtype, device=device, requires_grad=True)
    for a in (torch.full(shape, 1234.5, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)):
        a.requires_grad_()
        cc = fastreg.lncc(a, b, 3, reduction="none")
        # zero padding makes the border windows of a constant image non-constant
        assert torch.isfinite(cc).all() and cc[..., 1:-1, 1:-1, 1:-1].abs().max() < 1e-6
        ga, gb = torch.autograd.grad(cc.sum(), (a, b))
        assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    z = torch.zeros(shape, dtype=dtype, device=device)
    assert torch.equal(fastreg.lncc(z, z, 5, reduction="none"), torch.zeros_like(z))


def test_cc_never_above_one(backend, device):
    a = _image((1, 1, 12, 11, 10), torch.float32, device, 4095.0)
    for b in (a, 3 * a + 7, -a + 4095):
        cc = fastreg.lncc(a, b, 5, reduction="none")
        assert cc.max().item() <= 1 + 1e-6 and cc.min().item() >= 0
        # linearly related windows are perfectly correlated (inside: zeros pad the border)
        assert cc[..., 2:-2, 2:-2, 2:-2].min().item() > 0.999


def test_window_one_and_full_size(backend, device):
    a = torch.rand(1, 1, 5, 7, dtype=torch.float64, device=device)
    b = torch.rand(1, 1, 5, 7, dtype=torch.float64, device=device)
    torch.testing.assert_close(fastreg.lncc(a, b, 1, reduction="none"), torch.zeros_like(a), **F64)
    torch.testing.assert_close(fastreg.lncc(a, b, (5, 7), reduction="none"), _ref_map(a, b, (5, 7), "box"), **F64)
    tiny = torch.rand(1, 1, 1, 3, 1, dtype=torch.float64, device=device)
    torch.testing.assert_close(
        fastreg.lncc(tiny, tiny * 2, (1, 3, 1), reduction="none"), _ref_map(tiny, tiny * 2, (1, 3, 1), "box"), **F64
    )


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # numpy, in the Triton interpreter
@pytest.mark.parametrize("kernel", ["box", "gaussian"])
def test_nan_in_gives_nan_out_where_the_window_holds_it(backend, device, kernel):
    a = torch.rand(1, 1, 9, 10, 11, dtype=torch.float64, device=device)
    b = torch.rand(1, 1, 9, 10, 11, dtype=torch.float64, device=device)
    a[0, 0, 4, 5, 6] = float("nan")
    b[0, 0, 1, 1, 1] = float("inf")
    out = fastreg.lncc(a, b, 3, kernel, reduction="none")
    ref = _ref_map(a, b, 3, kernel)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out).any()
    finite = ~torch.isnan(ref)
    torch.testing.assert_close(out[finite], ref[finite], **F64)
    a.requires_grad_()
    (ga,) = torch.autograd.grad(fastreg.lncc(a, b, 3, kernel), (a,))
    assert torch.isnan(ga).any()
