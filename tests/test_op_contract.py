"""The contract every public op keeps on every backend that runs here (reference, cpu,
triton under the interpreter; cuda where there is a GPU), driven by one ``samples(device,
dtype)`` per op: parity with reference in float64, zero-size batches and axes (an empty
result, gradients included), stride-0 / expanded / non-contiguous / channels-last inputs
(the same result as contiguous ones), NaN in -> NaN out at the same voxels as the
reference, and bad input raising the same error type and wording on every backend.
Shapes are tiny: the Triton interpreter runs all of it. Per-family files keep the
mathematics of each family."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import fastreg


def _rand(*shape, device="cpu", dtype=torch.float64, low=-1.0, high=1.0):
    return (low + (high - low) * torch.rand(*shape, dtype=torch.float64)).to(device=device, dtype=dtype)


@dataclass(frozen=True)
class Op:
    """One public op: ``call(*tensors)`` runs it with fixed options; ``samples(device, dtype)``
    gives argument tuples (2-D and 3-D); ``bad(device)`` gives (label, thunk) pairs of
    invalid calls."""

    call: Callable
    samples: Callable
    bad: Callable
    differentiable: int  # how many leading arguments take a gradient
    linear: bool = False  # linear in its inputs: the second derivatives vanish


def _warp_samples(device, dtype):
    return [
        (_rand(2, 2, 5, 6, device=device, dtype=dtype), _rand(2, 2, 5, 6, device=device, dtype=dtype, low=-2, high=2)),
        (_rand(2, 1, 3, 4, 5, device=device, dtype=dtype), _rand(1, 3, 3, 4, 5, device=device, dtype=dtype, low=-2, high=2)),
    ]


def _sample_samples(device, dtype):
    return [
        (_rand(2, 2, 5, 6, device=device, dtype=dtype), _rand(2, 2, 3, 4, device=device, dtype=dtype, low=-1, high=6)),
        (_rand(1, 1, 3, 4, 5, device=device, dtype=dtype), _rand(1, 3, 2, 3, 2, device=device, dtype=dtype, low=-1, high=5)),
    ]


def _field_samples(device, dtype, scale=1.5):
    return [
        (_rand(2, 2, 5, 6, device=device, dtype=dtype, low=-scale, high=scale),),
        (_rand(1, 3, 3, 4, 5, device=device, dtype=dtype, low=-scale, high=scale),),
    ]


def _pair_samples(device, dtype, channels=3):
    return [
        (_rand(2, channels, 5, 6, device=device, dtype=dtype), _rand(2, channels, 5, 6, device=device, dtype=dtype)),
        (_rand(1, channels, 3, 4, 5, device=device, dtype=dtype), _rand(1, channels, 3, 4, 5, device=device, dtype=dtype)),
    ]


def _common_bad(fn, first, second=None):
    """Wrong type, integer dtype, wrong rank, mixed dtypes: for an op of one or two tensors."""
    args = lambda *xs: (lambda: fn(*xs))  # noqa: E731
    out = [
        ("list", args([[1.0]], *([] if second is None else [second]))),
        ("int dtype", args(first.long(), *([] if second is None else [second]))),
        ("rank 3", args(first[0], *([] if second is None else [second]))),
    ]
    if second is not None:
        out.append(("mixed dtype", args(first, second.float())))
    return out


def _warp_bad(device):
    image, disp = _rand(2, 2, 5, 6, device=device), _rand(2, 2, 5, 6, device=device)
    return _common_bad(fastreg.warp, image, disp) + [
        ("disp size", lambda: fastreg.warp(image, disp[..., :4])),
        ("disp batch", lambda: fastreg.warp(image, torch.cat([disp, disp]))),
        ("mode", lambda: fastreg.warp(image, disp, mode="bicubicc")),
        ("padding", lambda: fastreg.warp(image, disp, padding_mode="wrap")),
    ]


def _sample_bad(device):
    image, coords = _rand(2, 2, 5, 6, device=device), _rand(2, 2, 3, 3, device=device)
    return _common_bad(fastreg.sample, image, coords) + [
        ("empty image", lambda: fastreg.sample(image[:, :, :0], coords)),
        ("coords channels", lambda: fastreg.sample(image, coords[:, :1])),
    ]


def _compose_bad(device):
    u = _rand(2, 2, 5, 6, device=device)
    return _common_bad(fastreg.compose, u, u) + [("v size", lambda: fastreg.compose(u, u[..., :3]))]


def _lncc_bad(device):
    a, b = _rand(2, 1, 5, 6, device=device), _rand(2, 1, 5, 6, device=device)
    return _common_bad(lambda x, y: fastreg.lncc(x, y, 3), a, b) + [
        ("even window", lambda: fastreg.lncc(a, b, 4)),
        ("window > image", lambda: fastreg.lncc(a, b, 7)),
        ("float window", lambda: fastreg.lncc(a, b, 2.5)),
        ("sigma with box", lambda: fastreg.lncc(a, b, 3, sigma=1.0)),
        ("negative eps", lambda: fastreg.lncc(a, b, 3, eps=-1.0)),
        ("b shape", lambda: fastreg.lncc(a, b[..., :5], 3)),
    ]


def _integrate_bad(device):
    v = _rand(2, 2, 5, 6, device=device)
    return _common_bad(fastreg.integrate_svf, v) + [
        ("steps 64", lambda: fastreg.integrate_svf(v, steps=64)),
        ("steps -1", lambda: fastreg.integrate_svf(v, steps=-1)),
        ("float steps", lambda: fastreg.integrate_svf(v, steps=7.0)),
        ("channels", lambda: fastreg.integrate_svf(v[:, :1])),
    ]


def _jacobian_bad(device):
    disp = _rand(2, 2, 5, 6, device=device)
    return _common_bad(fastreg.jacobian_det, disp) + [
        ("mode", lambda: fastreg.jacobian_det(disp, mode="backward")),
        ("spacing", lambda: fastreg.jacobian_det(disp, spacing=(1.0, -2.0))),
        ("gradient on size 1", lambda: fastreg.jacobian_det(disp[..., :1], mode="gradient")),
    ]


def _correlation_bad(device):
    f, m = _rand(2, 3, 2, 3, device=device), _rand(2, 3, 2, 3, device=device)
    return _common_bad(fastreg.local_correlation, f, m) + [
        ("radius > image", lambda: fastreg.local_correlation(f, m, radius=800)),
        ("radius 0", lambda: fastreg.local_correlation(f, m, radius=0)),
        ("zero channels", lambda: fastreg.local_correlation(f[:, :0], m[:, :0])),
        ("channels differ", lambda: fastreg.local_correlation(f, m[:, :2])),
        ("scale", lambda: fastreg.local_correlation(f, m, scale=float("inf"))),
    ]


def _vfa_bad(device):
    q, k = _rand(2, 3, 2, 2, 2, device=device), _rand(2, 3, 2, 2, 2, device=device)
    return _common_bad(fastreg.vfa_attention, q, k) + [
        ("radius 800", lambda: fastreg.vfa_attention(q, k, radius=800)),
        ("zero channels", lambda: fastreg.vfa_attention(q[:, :0], k[:, :0])),
        ("temperature 0", lambda: fastreg.vfa_attention(q, k, temperature=0.0)),
        ("temperature tensor -1", lambda: fastreg.vfa_attention(q, k, temperature=torch.tensor(-1.0, dtype=q.dtype))),
        ("temperature tensor 0", lambda: fastreg.vfa_attention(q, k, temperature=torch.zeros(1, dtype=q.dtype))),
        ("temperature tensor nan", lambda: fastreg.vfa_attention(q, k, temperature=torch.tensor(float("nan")))),
        ("temperature shape", lambda: fastreg.vfa_attention(q, k, temperature=torch.ones(2))),
    ]


def _resize_bad(device):
    u = _rand(2, 2, 5, 6, device=device)
    return _common_bad(lambda x: fastreg.resize_field(x, scale_factor=2.0), u) + [
        ("size and scale", lambda: fastreg.resize_field(u, size=(4, 4), scale_factor=2.0)),
        ("neither", lambda: fastreg.resize_field(u)),
        ("size rank", lambda: fastreg.resize_field(u, size=(4, 4, 4))),
        ("zero factor", lambda: fastreg.resize_field(u, scale_factor=0.0)),
        ("channels", lambda: fastreg.resize_field(u[:, :1], scale_factor=2.0)),
    ]


def _invert_bad(device):
    u = _rand(2, 2, 5, 6, device=device, low=-0.1, high=0.1)
    return _common_bad(fastreg.invert_field, u) + [
        ("iterations 0", lambda: fastreg.invert_field(u, iterations=0)),
        ("negative tol", lambda: fastreg.invert_field(u, tol=-1.0)),
        ("padding", lambda: fastreg.invert_field(u, padding_mode="wrap")),
        ("channels", lambda: fastreg.invert_field(u[:, :1])),
    ]


OPS = {
    "warp": Op(fastreg.warp, _warp_samples, _warp_bad, 2),
    "warp_bicubic": Op(lambda i, d: fastreg.warp(i, d, "bicubic", "reflection"), _warp_samples, _warp_bad, 2),
    "sample": Op(fastreg.sample, _sample_samples, _sample_bad, 2),
    "compose": Op(fastreg.compose, lambda d, t: [s + s for s in _field_samples(d, t, 1.0)], _compose_bad, 2),
    "lncc": Op(lambda a, b: fastreg.lncc(a, b, 3, reduction="none"), lambda d, t: _pair_samples(d, t, 1), _lncc_bad, 2),
    "integrate_svf": Op(lambda v: fastreg.integrate_svf(v, 3), _field_samples, _integrate_bad, 1),
    "jacobian_det": Op(fastreg.jacobian_det, _field_samples, _jacobian_bad, 1),
    "local_correlation": Op(fastreg.local_correlation, _pair_samples, _correlation_bad, 2),
    "vfa_attention": Op(lambda q, k: fastreg.vfa_attention(2 * q, k), _pair_samples, _vfa_bad, 2),
    "resize_field": Op(lambda u: fastreg.resize_field(u, scale_factor=2.0), _field_samples, _resize_bad, 1, linear=True),
    # fields of |grad u| < 0.5: the fixed point contracts, 25 iterations reach float64 rounding
    "invert_field": Op(lambda u: fastreg.invert_field(u, iterations=25, tol=0.0),
                       lambda d, t: _field_samples(d, t, 0.12), _invert_bad, 1),
}


def _grads(op: Op, args, out):
    leaves = [a for a in args[: op.differentiable]]
    weights = torch.rand_like(out)
    return torch.autograd.grad((out * weights).sum(), leaves, allow_unused=True), weights


def _with_grad(args, n):
    return tuple(a.detach().requires_grad_(i < n) for i, a in enumerate(args))


@pytest.mark.parametrize("name", OPS)
def test_matches_reference_float64(any_device, name):
    op, device = OPS[name], any_device
    if device.type == "cpu" and fastreg.get_backend() == "reference":
        pytest.skip("the reference is the oracle")
    for args in op.samples(device, torch.float64)[:1]:  # 3-D parity: the per-family files
        args = _with_grad(args, op.differentiable)
        out = op.call(*args)
        grads, weights = _grads(op, args, out)
        ref_args = _with_grad([a.detach().cpu() for a in args], op.differentiable)
        with fastreg.use_backend("reference"):
            expected = op.call(*ref_args)
        expected_grads = torch.autograd.grad((expected * weights.cpu()).sum(), ref_args[: op.differentiable])
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-9, atol=1e-10)
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g.cpu(), e, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("axis", ["batch", "spatial"])
def test_zero_size_gives_an_empty_result(any_device, name, axis):
    op, device = OPS[name], any_device
    for args in op.samples(device, torch.float32)[:1]:
        if axis == "batch":
            cut = tuple(a[:0] for a in args)
        else:  # every tensor loses its first spatial axis
            cut = tuple(a[:, :, :0] for a in args)
        cut = _with_grad(cut, op.differentiable)
        out = op.call(*cut)
        assert out.numel() == 0 and out.dtype == torch.float32 and out.device.type == device.type
        full_shape = op.call(*args).shape
        expected_shape = list(full_shape)
        expected_shape[0 if axis == "batch" else 2] = 0
        if name == "jacobian_det" and axis == "spatial":
            expected_shape = [full_shape[0], 0, *full_shape[2:]]
        assert list(out.shape) == expected_shape
        grads = torch.autograd.grad(out.sum(), cut[: op.differentiable])
        for g, a in zip(grads, cut):
            assert g.shape == a.shape


@pytest.mark.parametrize("name", OPS)
def test_strided_inputs_match_contiguous(any_device, name):
    """Expanded (stride-0 batch and channels), transposed-strided and channels-last inputs
    give exactly the contiguous result."""
    op, device = OPS[name], any_device
    for args in op.samples(device, torch.float64)[:1]:
        expanded = tuple(a[:1].expand(a.shape) for a in args)
        for variant in (
            expanded,
            tuple(a.transpose(-1, -2).contiguous().transpose(-1, -2) for a in args),
            tuple(a.contiguous(memory_format=torch.channels_last if a.dim() == 4 else torch.channels_last_3d) for a in args),
            tuple(a[:, :1].expand(a.shape) if a.shape[1] > 1 and i > 0 else a for i, a in enumerate(args)),
        ):
            got = op.call(*variant)
            expected = op.call(*(v.contiguous() for v in variant))
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", OPS)
def test_nan_in_gives_nan_out_where_the_reference_has_it(any_device, name):
    op, device = OPS[name], any_device
    args = op.samples(device, torch.float64)[0]
    found = False
    for which in {0, len(args) - 1}:  # the image (or first input), then the positions
        poisoned = [a.clone() for a in args]
        poisoned[which].view(-1)[poisoned[which].numel() // 2] = float("nan")
        out = op.call(*poisoned)
        with fastreg.use_backend("reference"):
            expected = op.call(*(p.cpu() for p in poisoned))
        assert torch.equal(out.isnan().cpu(), expected.isnan()), which
        found |= bool(out.isnan().any())
    assert found


@pytest.mark.parametrize("name", OPS)
def test_bad_input_same_error_on_every_backend(name):
    """Each invalid call raises a ValueError or TypeError naming an argument, with the same
    type and wording on every backend that runs here."""
    for label, thunk in OPS[name].bad(torch.device("cpu")):
        seen = {}
        for backend in ("reference", "cpu", "triton"):
            if backend not in fastreg.available_backends():
                continue
            with fastreg.use_backend(backend):
                with pytest.raises((ValueError, TypeError)) as info:
                    thunk()
            seen[backend] = (type(info.value), str(info.value))
        assert len(set(seen.values())) == 1, (label, seen)
        message = next(iter(seen.values()))[1]
        assert message.split(":")[0].strip() and ":" in message, (label, message)


def test_jacobian_stats_of_an_empty_batch(any_device):
    stats = fastreg.metrics.jacobian_stats(_rand(0, 3, 6, 6, 6, device=any_device))
    assert all(v.shape == (0,) and v.dtype == torch.float64 for v in stats.values())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: fastreg.nn.VecInt(steps=64), "steps"),
        (lambda: fastreg.nn.LNCCLoss(window=4), "window"),
        (lambda: fastreg.nn.LNCCLoss(window=[3, 2.0]), "window"),
        (lambda: fastreg.nn.LNCCLoss(window=3.0), "window"),
        (lambda: fastreg.nn.LNCCLoss(sigma=1.0), "sigma"),
        (lambda: fastreg.nn.LNCCLoss(kernel="gaussian", sigma=-1.0), "sigma"),
        (lambda: fastreg.nn.LNCCLoss(eps=-1e-5), "eps"),
        (lambda: fastreg.nn.JacobianLoss(spacing=(1.0, 0.0)), "spacing"),
        (lambda: fastreg.nn.SpatialTransformer(mode="cubic"), "mode"),
        (lambda: fastreg.nn.ResizeField(size=(4, 0)), "size"),
        (lambda: fastreg.nn.ResizeField(scale_factor=-2.0), "scale_factor"),
    ],
)
def test_nn_modules_validate_at_construction(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_infinite_positions_agree_on_every_backend(any_device, padding, mode):
    """±inf lies outside at infinite distance: 0 with zeros/reflection, the edge with border."""
    image = _rand(1, 2, 4, 5, device=any_device)
    disp = _rand(1, 2, 4, 5, device=any_device).requires_grad_()
    inf = torch.zeros(1, 2, 4, 5, device=any_device, dtype=torch.float64)
    inf[0, 1, 1, 2], inf[0, 0, 2, 3] = float("inf"), -float("inf")
    out = fastreg.warp(image, disp + inf, mode, padding)
    (grad,) = torch.autograd.grad(out.sum(), disp)
    hit = torch.isinf(inf).any(1, keepdim=True).expand_as(out)
    if padding == "border":  # as far as a large finite position goes
        far = fastreg.warp(image, disp.detach() + torch.nan_to_num(inf, posinf=1e6, neginf=-1e6), mode, padding)
        torch.testing.assert_close(out[hit], far[hit])
    else:
        assert (out[hit] == 0).all()
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", OPS)
def test_autocast_promotes_mixed_inputs(any_device, name):
    """Under torch.autocast (CPU bfloat16 here; CUDA float16/bfloat16 alike) the inputs
    promote to the widest dtype (grid_sample's policy): a float32 image with a bfloat16 field
    gives the float32 result of the bfloat16-rounded field, gradients in each input's dtype;
    a bfloat16 input alone runs in bfloat16 as outside autocast."""
    op, device = OPS[name], any_device
    args = op.samples(device, torch.float32)[0]
    mixed = _with_grad((args[0], *(a.bfloat16() for a in args[1:])), op.differentiable)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = op.call(*mixed)
    expected = op.call(*(a.detach().float() for a in mixed))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grads = torch.autograd.grad(out.sum(), mixed[: op.differentiable])
    assert [g.dtype for g in grads] == [a.dtype for a in mixed[: op.differentiable]]
    low = tuple(a.detach().bfloat16() for a in args)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out_low = op.call(*low)
    assert out_low.dtype == torch.bfloat16
    torch.testing.assert_close(out_low, op.call(*low), rtol=0, atol=0)


def _second_order(op: Op, args, weights, directions):
    """d/d inputs of <d<out, weights>/d inputs, directions>: a Hessian-vector product."""
    args = _with_grad(args, op.differentiable)
    out = op.call(*args)
    firsts = torch.autograd.grad((out * weights).sum(), args[: op.differentiable], create_graph=True)
    terms = [(g * d).sum() for g, d in zip(firsts, directions) if g.requires_grad]
    if not terms:  # a linear op: its first derivatives do not depend on the inputs
        return [g.detach() for g in firsts], [None] * op.differentiable
    return [g.detach() for g in firsts], torch.autograd.grad(sum(terms), args[: op.differentiable], allow_unused=True)


@pytest.mark.parametrize("name", OPS)
def test_double_backward_matches_the_reference(any_device, name):
    """create_graph=True gives differentiable gradients on every backend (a gradient penalty
    or a Hessian-vector product), never silent zeros."""
    op, device = OPS[name], any_device
    args = op.samples(device, torch.float64)[0]
    out = op.call(*args)
    weights = torch.rand_like(out)
    directions = [torch.rand_like(a) for a in args[: op.differentiable]]
    firsts, seconds = _second_order(op, args, weights, directions)
    with fastreg.use_backend("reference"):
        cpu = lambda ts: [t.cpu() for t in ts]  # noqa: E731
        ref_firsts, ref_seconds = _second_order(op, tuple(cpu(args)), weights.cpu(), cpu(directions))
    assert op.linear or any(s is not None and s.abs().sum() > 0 for s in seconds)
    for got, expected in zip([*firsts, *seconds], [*ref_firsts, *ref_seconds]):
        if expected is None:
            assert got is None or not got.abs().sum()
        else:
            torch.testing.assert_close(got.cpu(), expected, rtol=1e-8, atol=1e-9)


def test_double_backward_through_inputs_that_share_a_graph(any_device):
    """Warps chained as in a fixed-point iteration (u is the image of every step and, through
    the previous step, in its positions): a create_graph backward gives each input's partial
    derivative, so the chain's gradient and Hessian-vector product equal plain autograd
    through the reference (a total derivative per input counted the paths twice, in time
    exponential in the chain length)."""

    def chain(u):
        w = -u
        for _ in range(5):
            w = -fastreg.warp(u, w)
        return w

    u = _rand(1, 2, 4, 5, device=any_device, low=-0.2, high=0.2)
    weights, direction = torch.rand_like(u), torch.rand_like(u)
    results = []
    for backend in (fastreg.get_backend(), "reference"):
        with fastreg.use_backend(backend):
            leaf = u.detach().requires_grad_()
            (first,) = torch.autograd.grad((chain(leaf) * weights).sum(), leaf, create_graph=True)
            (second,) = torch.autograd.grad((first * direction).sum(), leaf)
            results.append((first.detach(), second))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-9)


def test_gradgradcheck_warp(any_device):
    image = _rand(1, 1, 3, 4, device=any_device).requires_grad_()
    disp = _rand(1, 2, 3, 4, device=any_device, low=-0.8, high=0.8).requires_grad_()
    assert torch.autograd.gradgradcheck(fastreg.warp, (image, disp))


def _compile_check(name, device):
    op = OPS[name]
    args = _with_grad(op.samples(device, torch.float32)[0], op.differentiable)
    compiled = torch.compile(op.call, fullgraph=True, backend="aot_eager")
    out = compiled(*args)
    torch.testing.assert_close(out, op.call(*args), rtol=1e-6, atol=1e-6)
    out.sum().backward()


@pytest.mark.slow
@pytest.mark.parametrize("name", OPS)
def test_torch_compile_fullgraph(any_device, name):
    _compile_check(name, any_device)


def test_torch_compile_jacobian_det_and_stats(any_device):
    """jacobian_det compiles on every backend (the Triton ops have fakes under the
    interpreter) and jacobian_stats traces with fullgraph=True."""
    torch._dynamo.reset()
    _compile_check("jacobian_det", any_device)
    disp = _rand(2, 2, 8, 9, device=any_device, dtype=torch.float32)
    stats = torch.compile(fastreg.metrics.jacobian_stats, fullgraph=True, backend="aot_eager")(disp)
    for key, value in fastreg.metrics.jacobian_stats(disp).items():
        torch.testing.assert_close(stats[key], value)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_lncc_matches_reference(any_device, dtype):
    a = _rand(2, 1, 6, 7, device=any_device, dtype=dtype)
    b = (a.double() + 0.3 * _rand(2, 1, 6, 7, device=any_device)).to(dtype)
    a.requires_grad_()
    out = fastreg.lncc(a, b, 3)
    (grad,) = torch.autograd.grad(out, a)
    wide = a.detach().double().requires_grad_()
    expected = fastreg.lncc(wide, b.double(), 3)
    (expected_grad,) = torch.autograd.grad(expected, wide)
    assert out.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(out.double(), expected.detach(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=5e-2, atol=5e-3)
