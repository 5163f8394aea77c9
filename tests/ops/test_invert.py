"""invert_field: what the op contract (tests/test_op_contract.py: parity of values and implicit
gradients with the reference, which differentiates through the iterations, for every padding;
gradcheck, opcheck, compile, NaN, strides, bad input) does not hold: float32 convergence,
round trips, exp(v) vs exp(-v), independent batch items, the stopping rule and its warnings,
Newton steps, NaN without a stall, and the reference backend."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastreg
from fastreg.data import random_smooth_field
from fastreg.ops.invert import InversionWarning
from fastreg.reference import invert as ref

PADDINGS = ("zeros", "border", "reflection")
SHAPES = {2: (6, 7), 3: (4, 5, 4)}
SMOOTH_SHAPES = {2: (32, 36), 3: (20, 22, 18)}
TIGHT = dict(iterations=300, tol=1e-13)


def max_grad(u):
    """Largest spectral norm of the central-difference Jacobian of u (B, ndim, *S)."""
    ndim = u.shape[1]
    rows = [torch.stack(torch.gradient(u[:, c], dim=tuple(range(1, ndim + 1))), -1) for c in range(ndim)]
    return torch.linalg.matrix_norm(torch.stack(rows, -2), ord=2).amax()


def field(shape, batch=2, gradient=0.4, spacing=3, blur=0, dtype=torch.float64, device="cpu"):
    """A random smooth field scaled so that max |grad u| = gradient (< 1: invertible, the
    iteration contracts); ``blur`` box filters of width 5 round the kinks of the linear
    upsampling, so the inverse interpolates well between voxels."""
    u = random_smooth_field(shape, batch=batch, magnitude=1.0, spacing=spacing, dtype=torch.float64)
    pool = F.avg_pool2d if len(shape) == 2 else F.avg_pool3d
    for _ in range(blur):
        u = pool(u, 5, 1, 2, count_include_pad=False)
    return (u * (gradient / max_grad(u))).to(dtype=dtype, device=device)


def interior(x, margin=3):
    return x[(slice(None), slice(None)) + (slice(margin, -margin),) * (x.dim() - 2)]


def skip_in_interpreter(backend, device):
    if backend == "triton" and device.type == "cpu":
        pytest.skip("Triton interpreter: too slow for tens of iterations; parity is tested")


# --- parity with the reference ----------------------------------------------------------


@pytest.mark.parametrize("ndim", (2, 3))
def test_matches_reference_float32(backend, device, ndim):
    skip_in_interpreter(backend, device)
    u = field(SMOOTH_SHAPES[ndim], spacing=8, device=device)
    out = fastreg.invert_field(u.float(), iterations=100, tol=1e-5)
    out_ref = ref.invert_field(u, iterations=100, tol=1e-12)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), out_ref, rtol=0, atol=1e-4)


# --- properties -------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", (2, 3))
def test_round_trip_is_identity(ndim):
    """compose(u, w) = 0 is the fixed-point equation itself (exact to the tolerance);
    compose(w, u) = 0 holds up to the interpolation of w between voxels (interior: at the
    border x + u(x) leaves the grid)."""
    u = field(SMOOTH_SHAPES[ndim], gradient=0.25, spacing=8, blur=1)
    w = fastreg.invert_field(u, iterations=100, tol=1e-10)
    assert fastreg.compose(u, w).abs().max() < 1e-8
    assert interior(fastreg.compose(w, u)).abs().max() < 0.1
    assert interior(fastreg.compose(w, u)).abs().mean() < 0.01 * u.abs().max()


@pytest.mark.parametrize("ndim", (2, 3))
def test_inverse_of_exp_is_exp_of_minus_v(ndim):
    v = field(SMOOTH_SHAPES[ndim], gradient=0.12, spacing=8, blur=1)
    w = fastreg.invert_field(fastreg.integrate_svf(v, 7), iterations=100, tol=1e-10)
    expected = fastreg.integrate_svf(-v, 7)
    assert interior(w - expected).abs().max() < 0.02
    assert (w - expected).abs().max() < 0.2


def test_batch_items_are_inverted_independently():
    u = field(SMOOTH_SHAPES[2], batch=3, spacing=8)
    u[1] *= 1.5  # the items converge at different rates: the batch stops on the slowest
    w = fastreg.invert_field(u, iterations=100, tol=1e-11)
    for b in range(3):
        torch.testing.assert_close(w[b:b + 1], fastreg.invert_field(u[b:b + 1], iterations=100, tol=1e-11), rtol=0, atol=1e-9)


def test_one_iteration_is_minus_u_and_tol_zero_runs_all_without_warning():
    u = field(SHAPES[2])
    assert torch.equal(fastreg.invert_field(u, iterations=1, tol=0), -u)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = fastreg.invert_field(u, iterations=7, tol=0)
    torch.testing.assert_close(w, ref.fixed_point(u, 7, 0.0)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("slope,padding", [(-2.5, "zeros"), (2.5, "border"), (-1.5, "reflection")])
def test_folding_or_steep_field_warns_and_returns_the_last_iterate(slope, padding):
    """slope < -1: det(I + grad u) < 0 (a fold); slope > 1: |grad u| > 1, no contraction."""
    shape = (12, 13)
    u = random_smooth_field(shape, batch=1, magnitude=0.3, dtype=torch.float64)
    u[:, 0] += slope * (torch.arange(shape[0], dtype=torch.float64) - 6).view(-1, 1)
    with pytest.warns(InversionWarning, match="last change"):
        w = fastreg.invert_field(u, iterations=20, padding_mode=padding)
    assert w.shape == u.shape and torch.isfinite(w).all()
    # the last iterate of the same loop (plain steps, then Newton steps) with the same warp and
    # sample: the Newton steps on a fold amplify the last-bit differences between backends
    same = ref.fixed_point(u, 20, 1e-4, padding, warp=fastreg.warp, sample=fastreg.sample)[0]
    torch.testing.assert_close(w, same, rtol=0, atol=1e-10)


def test_each_voxel_stops_at_its_own_tolerance():
    """The voxels that converge early stop early (later iterations sample only the others):
    the result is the whole-grid iteration run to convergence, to the tolerance, also next to
    a local fold whose voxels never converge (they get the Newton steps and a warning)."""
    u = field(SMOOTH_SHAPES[3], batch=1, gradient=0.6, spacing=6)
    full = ref.fixed_point(u, 200, 0.0)[0]
    w = fastreg.invert_field(u, iterations=200, tol=1e-9)
    torch.testing.assert_close(w, full, rtol=0, atol=1e-8)
    folded = u.clone()
    folded[0, 0, 9:11, 10, 9] += torch.tensor([2.5, -2.5], dtype=u.dtype)  # two voxels cross
    with pytest.warns(InversionWarning):
        w = fastreg.invert_field(folded, iterations=200, tol=1e-9)
    far = torch.ones_like(w[:, :1], dtype=torch.bool)
    far[..., 5:15, 5:16, 4:15] = False  # well away from the fold, where w does not sample it
    torch.testing.assert_close(w[far.expand_as(w)], full[far.expand_as(w)], rtol=0, atol=1e-8)


def test_steep_invertible_field_converges_by_newton_steps():
    """|grad u| about 1.4 (no contraction: the plain iteration oscillates) but det(I + grad u)
    > 0.8 (a smooth step of 11 voxels along axis 0: steep, never folding): the Newton steps
    after the plain ones converge (linearly: the Jacobian is sampled from central
    differences), without a warning. (A bump instead of a step would fold on one flank.)"""
    shape = (40, 44)
    u = random_smooth_field(shape, batch=1, magnitude=0.3, dtype=torch.float64)
    step = torch.tanh((torch.arange(shape[0], dtype=torch.float64) - 20) / 4).view(-1, 1)
    u[:, 0] += 5.6 * step  # d u_0 / d x_0 reaches about 1.4 at the step's centre
    grads = [[torch.gradient(u[0, c], dim=a)[0] for a in range(2)] for c in range(2)]
    assert max(g.abs().max().item() for row in grads for g in row) > 1.2
    assert ((1 + grads[0][0]) * (1 + grads[1][1]) - grads[0][1] * grads[1][0]).min() > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = fastreg.invert_field(u, iterations=200, tol=1e-7)
    assert fastreg.compose(u, w).abs().max() < 1e-6


def test_nan_in_gives_nan_out():
    u = field(SMOOTH_SHAPES[2], spacing=8)
    u[0, 1, 10, 12] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN entries do not stall the stopping test
        w = fastreg.invert_field(u)
    assert torch.isnan(w[0, :, 10, 12]).all()
    assert torch.isfinite(w[1]).all() and torch.isfinite(w[0, :, :3]).all()


@pytest.mark.parametrize("ndim", (2, 3))
def test_nan_gradient_where_the_inverse_is_nan(backend, device, ndim):
    """The gradient to u is NaN at exactly the voxels where w is NaN (every channel), the
    reference's there too (its unrolled iterations may spread it further), and the reference's
    values wherever the reference's is finite."""
    skip_in_interpreter(backend, device)
    u = field(SMOOTH_SHAPES[ndim], spacing=8, device=device)
    for item, channel, i, j in ((0, 0, 11, 12), (1, 1, 5, 20)):  # one entry of each batch item
        u[(item, channel, i, j) + (7,) * (ndim - 2)] = float("nan")
    weight = torch.randn_like(u)
    leaf = u.clone().requires_grad_(True)
    w = fastreg.invert_field(leaf, **TIGHT)
    (grad,) = torch.autograd.grad(w, leaf, weight)
    leaf_ref = u.clone().requires_grad_(True)
    (grad_ref,) = torch.autograd.grad(ref.invert_field(leaf_ref, **TIGHT), leaf_ref, weight)
    undefined = torch.isnan(w).any(dim=1, keepdim=True).expand_as(grad)
    assert undefined.any()
    assert torch.equal(torch.isnan(grad), undefined)
    assert torch.isnan(grad_ref[undefined]).all()
    finite = ~torch.isnan(grad_ref)
    torch.testing.assert_close(grad[finite], grad_ref[finite], rtol=1e-6, atol=1e-6)  # seeds reach 1.7e-7


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        fastreg.invert_field(field(SHAPES[2]), 10)


def test_reference_backend_runs_the_reference():
    u = field(SHAPES[3]).requires_grad_(True)
    with fastreg.use_backend("reference"):
        w = fastreg.invert_field(u, **TIGHT)
    assert w.grad_fn is not None and "Implicit" not in type(w.grad_fn).__name__
    torch.testing.assert_close(w, ref.invert_field(u, **TIGHT), rtol=0, atol=0)
