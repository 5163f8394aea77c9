"""The contract every public op keeps on every backend that runs here (reference, cpu,
triton under the interpreter; cuda where there is a GPU), driven by one ``Op`` per public op:
its ``samples(device, dtype)`` (2-D and 3-D, broadcast batches, size-1 axes) and option sets
(modes, paddings, windows, radii, steps, checkpoints). Parity with the reference in float64
(values and gradients) and float32, gradcheck, opcheck of every kernel the op runs (recorded
below autograd), torch.compile(fullgraph=True), double backward, autocast, zero-size batches
and axes (an empty result, gradients included), stride-0 / expanded / non-contiguous /
channels-last inputs (the same result as contiguous ones), NaN in -> NaN out at the same
voxels as the reference, and bad input raising the same error type and wording on every
backend, naming the argument. Shapes are tiny: the Triton interpreter runs all of it.
Per-family files (tests/ops/) keep the mathematics of each family; the peers' formulas are in
fastreg/bench/peer_kernels.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastreg


def _rand(*shape, device="cpu", dtype=torch.float64, low=-1.0, high=1.0):
    return (low + (high - low) * torch.rand(*shape, dtype=torch.float64)).to(device=device, dtype=dtype)


def _single(args):
    return ({},)


@dataclass(frozen=True)
class Op:
    """One public op: ``call(*tensors, **options)`` runs it (fixed options where none are
    given); ``samples(device, dtype)`` gives argument tuples, the first a generic 2-D and the
    second a generic 3-D one (the parity, float32, gradcheck and opcheck tests run them all:
    broadcast batches, size-1 axes); ``options(args)`` the option sets (modes, paddings,
    windows...) those tests and the NaN test run on a sample; ``bad(device)`` gives
    (label, thunk) pairs of invalid calls, each label starting with the argument its error
    names."""

    call: Callable
    samples: Callable
    bad: Callable
    differentiable: int  # how many leading arguments take a gradient
    linear: bool = False  # linear in its inputs: the second derivatives vanish
    options: Callable = _single


def _differentiable(op: Op, options: dict) -> int:
    """Arguments with a gradient: nearest interpolation's positions have none (0 almost
    everywhere, a jump between voxels)."""
    return 1 if options.get("mode") == "nearest" else op.differentiable


MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")


def _warp_samples(device, dtype):
    r = lambda *s, low=-1.0, high=1.0: _rand(*s, device=device, dtype=dtype, low=low, high=high)  # noqa: E731
    return [
        (r(2, 2, 5, 6), r(2, 2, 5, 6, low=-2, high=2)),
        (r(2, 1, 3, 4, 5), r(1, 3, 3, 4, 5, low=-2, high=2)),  # one field for the batch
        (r(2, 3, 4, 5), r(1, 2, 4, 5, low=-3, high=3)),
        (r(2, 2, 3, 4, 3), r(2, 3, 3, 4, 3, low=-3, high=3)),
        # size-1 axes
        (r(2, 2, 1, 6, 5), r(2, 3, 1, 6, 5, low=-2, high=2)),
        (r(1, 2, 3, 1, 1), r(1, 3, 3, 1, 1, low=-2, high=2)),
        (r(1, 2, 5, 1), r(1, 2, 5, 1, low=-2, high=2)),
        (r(1, 1, 1, 6), r(1, 2, 1, 6, low=-2, high=2)),
    ]


def _sample_samples(device, dtype):
    return [
        (_rand(2, 2, 5, 6, device=device, dtype=dtype), _rand(2, 2, 3, 4, device=device, dtype=dtype, low=-1, high=6)),
        (_rand(1, 1, 3, 4, 5, device=device, dtype=dtype), _rand(1, 3, 2, 3, 2, device=device, dtype=dtype, low=-1, high=5)),
        (_rand(2, 2, 4, 5, device=device, dtype=dtype), _rand(1, 2, 11, 3, device=device, dtype=dtype, low=-2, high=6)),
    ]


def _warp_options(args):
    return [dict(mode=m, padding_mode=p) for m in MODES for p in PADDINGS]


def _field_samples(device, dtype, scale=1.5, size_one=False):
    out = [
        (_rand(2, 2, 5, 6, device=device, dtype=dtype, low=-scale, high=scale),),
        (_rand(1, 3, 3, 4, 5, device=device, dtype=dtype, low=-scale, high=scale),),
    ]
    if size_one:
        out.append((_rand(2, 3, 1, 4, 5, device=device, dtype=dtype, low=-scale, high=scale),))
    return out


def _compose_samples(device, dtype):
    fields = lambda *s: _rand(*s, device=device, dtype=dtype)  # noqa: E731
    return [(fields(2, 2, 5, 6), fields(2, 2, 5, 6)), (fields(1, 3, 3, 4, 5), fields(1, 3, 3, 4, 5)),
            (fields(1, 3, 3, 4, 5), fields(2, 3, 3, 4, 5))]


def _pair_samples(device, dtype, channels=3, broadcast=False):
    out = [
        (_rand(2, channels, 5, 6, device=device, dtype=dtype), _rand(2, channels, 5, 6, device=device, dtype=dtype)),
        (_rand(1, channels, 3, 4, 5, device=device, dtype=dtype), _rand(1, channels, 3, 4, 5, device=device, dtype=dtype)),
    ]
    if broadcast:  # one of the two for the whole batch
        out += [(_rand(3, 2, 4, 5, device=device, dtype=dtype), _rand(1, 2, 4, 5, device=device, dtype=dtype)),
                (_rand(1, 2, 3, 4, 3, device=device, dtype=dtype), _rand(3, 2, 3, 4, 3, device=device, dtype=dtype))]
    return out


def _lncc_options(args):
    per_axis = (5, 3) if args[0].dim() == 4 else (3, 1, 5)
    return [dict(window=3), dict(window=per_axis), dict(window=3, kernel="gaussian"),
            dict(window=per_axis, kernel="gaussian", sigma=0.8)]


def _integrate_options(args):
    """Every padding with one step, a kept field and none; every field kept; a plan that
    pushes fields (steps 9, 3 checkpoints: fastreg._checkpoint)."""
    return [dict(steps=s, padding_mode=p, checkpoints=c) for p in PADDINGS for s, c in ((1, 1), (4, 1), (4, 0))] + [
        dict(steps=5, checkpoints=None), dict(steps=9, checkpoints=3)]


def _jacobian_options(args):
    ndim = args[0].shape[1]
    modes = MODES_JACOBIAN if min(args[0].shape[2:]) > 1 else MODES_JACOBIAN[:2]  # np.gradient needs 2 voxels
    return [dict(mode=m, spacing=s) for m in modes for s in (None, (0.8, 1.25, 1.5)[:ndim])]


MODES_JACOBIAN = ("central", "forward", "gradient")


def _correlation_options(args):
    return [dict(radius=r, scale=s, padding_mode=p) for r, s in ((1, "rsqrt_channels"), (2, None), (3, 0.37), (2, 1.3))
            for p in ("zeros", "border")]


def _vfa_options(args):
    return [dict(radius=1), dict(radius=2, temperature=0.7), dict(radius=3)]


def _resize_options(args):
    size = (7, 4) if args[0].dim() == 4 else (5, 3, 6)
    return [dict(scale_factor=2.0), dict(scale_factor=0.5), dict(size=size)]


def _padding_options(args):
    return [dict(padding_mode=p) for p in PADDINGS]


def _common_bad(fn, first, second=None, names=("image", "disp")):
    """Wrong type, integer dtype, wrong rank, mixed dtypes: for an op of one or two tensors
    named ``names``."""
    args = lambda *xs: (lambda: fn(*xs))  # noqa: E731
    rest = [] if second is None else [second]
    low_rank = first[0] if first.dim() == 4 else first[0, 0]
    out = [
        (f"{names[0]} list", args([[1.0]], *rest)),
        (f"{names[0]} int dtype", args(first.long(), *rest)),
        (f"{names[0]} rank 3", args(low_rank, *rest)),
    ]
    if second is not None:
        out.append((f"{names[1]} mixed dtype", args(first, second.float())))
    return out


def _warp_bad(device):
    image, disp = _rand(2, 2, 5, 6, device=device), _rand(2, 2, 5, 6, device=device)
    volume, field = _rand(2, 1, 6, 7, 8, device=device), _rand(2, 3, 6, 7, 8, device=device)
    return _common_bad(fastreg.warp, image, disp) + [
        ("disp size", lambda: fastreg.warp(image, disp[..., :4])),
        ("disp batch", lambda: fastreg.warp(image, torch.cat([disp, disp]))),
        ("disp batch 3 of 2", lambda: fastreg.warp(volume, torch.cat([field, field[:1]]))),
        ("disp channels", lambda: fastreg.warp(volume, field[:, :2])),
        ("disp rank", lambda: fastreg.warp(volume, field[..., 0])),
        ("disp int dtype", lambda: fastreg.warp(volume, field.int())),
        ("disp on meta", lambda: fastreg.warp(volume, field.to("meta"))),
        ("mode", lambda: fastreg.warp(image, disp, mode="bicubicc")),
        ("mode cubic", lambda: fastreg.warp(image, disp, mode="cubic")),
        ("padding_mode", lambda: fastreg.warp(image, disp, padding_mode="wrap")),
    ]


def _sample_bad(device):
    image, coords = _rand(2, 2, 5, 6, device=device), _rand(2, 2, 3, 3, device=device)
    return _common_bad(fastreg.sample, image, coords, ("image", "coords")) + [
        ("image empty", lambda: fastreg.sample(image[:, :, :0], coords)),
        ("coords channels", lambda: fastreg.sample(image, coords[:, :1])),
        ("coords rank", lambda: fastreg.sample(image, _rand(2, 2, 3, 3, 3, device=device))),
    ]


def _compose_bad(device):
    u = _rand(2, 2, 5, 6, device=device)
    return _common_bad(fastreg.compose, u, u, ("u", "v")) + [("v size", lambda: fastreg.compose(u, u[..., :3]))]


def _lncc_bad(device):
    a, b = _rand(2, 1, 5, 6, device=device), _rand(2, 1, 5, 6, device=device)
    big = _rand(1, 1, 10, 10, device=device)
    lncc = lambda **kw: (lambda: fastreg.lncc(big, big, **kw))  # noqa: E731
    return _common_bad(lambda x, y: fastreg.lncc(x, y, 3), a, b, ("a", "b")) + [
        ("window even", lambda: fastreg.lncc(a, b, 4)),
        ("window > image", lambda: fastreg.lncc(a, b, 7)),
        ("window float", lambda: fastreg.lncc(a, b, 2.5)),
        ("window 0", lncc(window=0)),
        ("window -3", lncc(window=-3)),
        ("window 11", lncc(window=11)),
        ("window 3 axes", lncc(window=(3, 3, 3))),
        ("window 3.0", lncc(window=3.0)),
        ("window (3, 2.5)", lncc(window=(3, 2.5))),
        ("kernel", lncc(kernel="triangle")),
        ("reduction", lncc(reduction="max")),
        ("sigma with box", lambda: fastreg.lncc(a, b, 3, sigma=1.0)),
        ("sigma negative", lncc(kernel="gaussian", sigma=-1.0)),
        ("sigma 3 axes", lncc(kernel="gaussian", sigma=(1.0, 2.0, 3.0))),
        ("eps negative", lambda: fastreg.lncc(a, b, 3, eps=-1.0)),
        ("b shape", lambda: fastreg.lncc(a, b[..., :5], 3)),
    ]


def _integrate_bad(device):
    v = _rand(2, 2, 5, 6, device=device)
    return _common_bad(fastreg.integrate_svf, v, names=("v",)) + [
        ("steps 64", lambda: fastreg.integrate_svf(v, steps=64)),
        ("steps -1", lambda: fastreg.integrate_svf(v, steps=-1)),
        ("steps float", lambda: fastreg.integrate_svf(v, steps=7.0)),
        ("steps bool", lambda: fastreg.integrate_svf(v, steps=True)),
        ("steps str", lambda: fastreg.integrate_svf(v, steps="7")),
        ("v channels", lambda: fastreg.integrate_svf(v[:, :1])),
        ("v 3 channels in 2-D", lambda: fastreg.integrate_svf(_rand(1, 3, 4, 5, device=device))),
        ("padding_mode", lambda: fastreg.integrate_svf(v, 3, "wrap")),
        ("checkpoints -1", lambda: fastreg.integrate_svf(v, 3, checkpoints=-1)),
        ("checkpoints bool", lambda: fastreg.integrate_svf(v, 3, checkpoints=True)),
        ("checkpoints float", lambda: fastreg.integrate_svf(v, 3, checkpoints=1.0)),
    ]


def _jacobian_bad(device):
    disp = _rand(2, 2, 5, 6, device=device)
    return _common_bad(fastreg.jacobian_det, disp, names=("disp",)) + [
        ("disp channels", lambda: fastreg.jacobian_det(_rand(2, 2, 5, 6, 7, device=device))),
        ("mode", lambda: fastreg.jacobian_det(disp, mode="backward")),
        ("spacing", lambda: fastreg.jacobian_det(disp, spacing=(1.0, -2.0))),
        ("spacing 3 axes", lambda: fastreg.jacobian_det(disp, spacing=(1.0, 1.0, 1.0))),
        ("disp gradient on size 1", lambda: fastreg.jacobian_det(disp[..., :1], mode="gradient")),
    ]


def _correlation_bad(device):
    f, m = _rand(2, 3, 2, 3, device=device), _rand(2, 3, 2, 3, device=device)
    return _common_bad(fastreg.local_correlation, f, m, ("f", "m")) + [
        ("radius > image", lambda: fastreg.local_correlation(f, m, radius=800)),
        ("radius 0", lambda: fastreg.local_correlation(f, m, radius=0)),
        ("radius float", lambda: fastreg.local_correlation(f, m, radius=1.5)),
        ("f zero channels", lambda: fastreg.local_correlation(f[:, :0], m[:, :0])),
        ("m channels differ", lambda: fastreg.local_correlation(f, m[:, :2])),
        ("m spatial size", lambda: fastreg.local_correlation(f, m[:, :, :1])),
        ("m rank", lambda: fastreg.local_correlation(f, m[0])),
        ("m batch", lambda: fastreg.local_correlation(f, torch.cat([m, m, m]))),
        ("padding_mode", lambda: fastreg.local_correlation(f, m, padding_mode="reflection")),
        ("scale", lambda: fastreg.local_correlation(f, m, scale=float("inf"))),
        ("scale str", lambda: fastreg.local_correlation(f, m, scale="sqrt")),
        ("scale list", lambda: fastreg.local_correlation(f, m, scale=[1.0])),
    ]


def _vfa_bad(device):
    q, k = _rand(2, 3, 2, 2, 2, device=device), _rand(2, 3, 2, 2, 2, device=device)
    return _common_bad(fastreg.vfa_attention, q, k, ("q", "k")) + [
        ("radius 800", lambda: fastreg.vfa_attention(q, k, radius=800)),
        ("radius -1", lambda: fastreg.vfa_attention(q, k, radius=-1)),
        ("radius bool", lambda: fastreg.vfa_attention(q, k, radius=True)),
        ("q zero channels", lambda: fastreg.vfa_attention(q[:, :0], k[:, :0])),
        ("k channels", lambda: fastreg.vfa_attention(q, k[:, :1])),
        ("k spatial size", lambda: fastreg.vfa_attention(q, k[..., :1])),
        ("temperature 0", lambda: fastreg.vfa_attention(q, k, temperature=0.0)),
        ("temperature str", lambda: fastreg.vfa_attention(q, k, temperature="1")),
        ("temperature tensor -1", lambda: fastreg.vfa_attention(q, k, temperature=torch.tensor(-1.0, dtype=q.dtype))),
        ("temperature tensor 0", lambda: fastreg.vfa_attention(q, k, temperature=torch.zeros(1, dtype=q.dtype))),
        ("temperature tensor nan", lambda: fastreg.vfa_attention(q, k, temperature=torch.tensor(float("nan")))),
        ("temperature shape", lambda: fastreg.vfa_attention(q, k, temperature=torch.ones(2))),
    ]


def _resize_bad(device):
    u = _rand(2, 2, 5, 6, device=device)
    v = _rand(1, 3, 4, 5, 6, device=device)
    return _common_bad(lambda x: fastreg.resize_field(x, scale_factor=2.0), u, names=("u",)) + [
        ("size, scale_factor both", lambda: fastreg.resize_field(u, size=(4, 4), scale_factor=2.0)),
        ("size, scale_factor neither", lambda: fastreg.resize_field(u)),
        ("size rank", lambda: fastreg.resize_field(u, size=(4, 4, 4))),
        ("size float", lambda: fastreg.resize_field(v, size=(8, 8, 8.5))),
        ("size 0", lambda: fastreg.resize_field(v, size=(8, 0, 8))),
        ("scale_factor 0", lambda: fastreg.resize_field(u, scale_factor=0.0)),
        ("scale_factor negative", lambda: fastreg.resize_field(v, scale_factor=-2.0)),
        ("scale_factor 2 axes", lambda: fastreg.resize_field(v, scale_factor=(2.0, 2.0))),
        ("u channels", lambda: fastreg.resize_field(u[:, :1], scale_factor=2.0)),
    ]


def _invert_bad(device):
    u = _rand(2, 2, 5, 6, device=device, low=-0.1, high=0.1)
    return _common_bad(fastreg.invert_field, u, names=("disp",)) + [
        ("disp numpy", lambda: fastreg.invert_field(u.numpy())),
        ("iterations 0", lambda: fastreg.invert_field(u, iterations=0)),
        ("iterations float", lambda: fastreg.invert_field(u, iterations=2.5)),
        ("tol negative", lambda: fastreg.invert_field(u, tol=-1.0)),
        ("tol nan", lambda: fastreg.invert_field(u, tol=float("nan"))),
        ("tol str", lambda: fastreg.invert_field(u, tol="small")),
        ("padding_mode", lambda: fastreg.invert_field(u, padding_mode="wrap")),
        ("disp channels", lambda: fastreg.invert_field(u[:, :1])),
    ]


OPS = {
    "warp": Op(fastreg.warp, _warp_samples, _warp_bad, 2, options=_warp_options),
    "warp_bicubic": Op(lambda i, d, **kw: fastreg.warp(i, d, "bicubic", "reflection"), _warp_samples, _warp_bad, 2),
    "sample": Op(fastreg.sample, _sample_samples, _sample_bad, 2, options=_warp_options),
    "compose": Op(fastreg.compose, _compose_samples, _compose_bad, 2, options=_padding_options),
    "lncc": Op(lambda a, b, **kw: fastreg.lncc(a, b, **{"window": 3, **kw}, reduction="none"),
               lambda d, t: _pair_samples(d, t, 1) + _pair_samples(d, t, 2), _lncc_bad, 2, options=_lncc_options),
    "integrate_svf": Op(lambda v, **kw: fastreg.integrate_svf(v, **{"steps": 3, **kw}),
                        lambda d, t: _field_samples(d, t, size_one=True), _integrate_bad, 1, options=_integrate_options),
    "jacobian_det": Op(fastreg.jacobian_det, lambda d, t: _field_samples(d, t, size_one=True), _jacobian_bad, 1,
                       options=_jacobian_options),
    "local_correlation": Op(fastreg.local_correlation, lambda d, t: _pair_samples(d, t, broadcast=True),
                            _correlation_bad, 2, options=_correlation_options),
    "vfa_attention": Op(lambda q, k, **kw: fastreg.vfa_attention(2 * q, k, **kw), lambda d, t: _pair_samples(d, t, broadcast=True),
                        _vfa_bad, 2, options=_vfa_options),
    "resize_field": Op(lambda u, **kw: fastreg.resize_field(u, **(kw or {"scale_factor": 2.0})), _field_samples, _resize_bad, 1,
                       linear=True, options=_resize_options),
    # fields of |grad u| < 0.5: the fixed point contracts, 25 iterations reach float64 rounding
    "invert_field": Op(lambda u, **kw: fastreg.invert_field(u, iterations=25, tol=0.0, **kw),
                       lambda d, t: _field_samples(d, t, 0.12), _invert_bad, 1, options=_padding_options),
}


def _grads(op: Op, args, out):
    leaves = [a for a in args[: op.differentiable]]
    weights = torch.rand_like(out)
    return torch.autograd.grad((out * weights).sum(), leaves, allow_unused=True), weights


def _with_grad(args, n):
    return tuple(a.detach().requires_grad_(i < n) for i, a in enumerate(args))


def _kernel_backend_only(device):
    if device.type == "cpu" and fastreg.get_backend() == "reference":
        pytest.skip("the reference is the oracle")


def _interpreted(device) -> bool:
    return device.type == "cpu" and fastreg.get_backend() == "triton"


@pytest.mark.parametrize("name", OPS)
def test_matches_reference_float64(any_device, name):
    """Values and gradients of every sample and option set equal the reference's (under the
    Triton interpreter: of the 2-D and 3-D samples)."""
    op, device = OPS[name], any_device
    _kernel_backend_only(device)
    samples = op.samples(device, torch.float64)
    for args in samples[:2] if _interpreted(device) else samples:
        for options in op.options(args):
            args = _with_grad(args, op.differentiable)
            out = op.call(*args, **options)
            grads, weights = _grads(op, args, out)
            ref_args = _with_grad([a.detach().cpu() for a in args], op.differentiable)
            with fastreg.use_backend("reference"):
                expected = op.call(*ref_args, **options)
            expected_grads = torch.autograd.grad((expected * weights.cpu()).sum(), ref_args[: op.differentiable])
            torch.testing.assert_close(out.cpu(), expected, rtol=1e-9, atol=1e-10, msg=lambda m: f"{options}: {m}")
            for g, e in zip(grads, expected_grads):
                torch.testing.assert_close(g.cpu(), e, rtol=1e-8, atol=1e-9, msg=lambda m: f"{options}: {m}")


@pytest.mark.parametrize("name", OPS)
def test_matches_reference_float32(any_device, name):
    """float32 inputs give the float64 reference's result of the same values to float32
    rounding (relative to the largest output), for the 2-D and 3-D samples and every option set."""
    op, device = OPS[name], any_device
    _kernel_backend_only(device)
    for args in op.samples(device, torch.float32)[:2]:
        for options in op.options(args):
            out = op.call(*args, **options)
            with fastreg.use_backend("reference"):
                expected = op.call(*(a.cpu().double() for a in args), **options)
            assert out.dtype == torch.float32
            scale = expected.abs().max().clamp_min(1.0).item()
            torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-5, atol=2e-5 * scale,
                                       msg=lambda m: f"{options}: {m}")


@pytest.mark.parametrize("name", OPS)
def test_gradcheck(any_device, name):
    """torch.autograd.gradcheck (finite differences, float64): the full Jacobians of the 2-D
    sample with the first option set, random projections (fast mode) of the 3-D sample with
    it and of the 2-D sample with every other option set; under the Triton interpreter the
    2-D sample with the first option set, in fast mode. (The float64 parity compares every
    sample's and option set's gradients with the reference's.)"""
    op, device = OPS[name], any_device
    _kernel_backend_only(device)
    two, three = op.samples(device, torch.float64)[:2]
    interpreted = _interpreted(device)
    runs = [(two, op.options(two)[0], interpreted)]
    if not interpreted:
        runs += [(three, op.options(three)[0], True), *((two, option, True) for option in op.options(two)[1:])]
    for args, option, fast in runs:
        n = _differentiable(op, option)
        rest = [a.detach() for a in args[n:]]
        call = lambda *x: op.call(*x, *rest, **option)  # noqa: E731
        assert torch.autograd.gradcheck(call, _with_grad(args[:n], n), fast_mode=fast), option


class _KernelCalls(TorchDispatchMode):
    """Records the first call of every distinct fastreg kernel (op, non-tensor arguments,
    tensor ranks) below autograd."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastreg":
            key = (func.name(), *(a.dim() if isinstance(a, torch.Tensor) else repr(a) for a in args))
            self.calls.setdefault(key, (func, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


def _record_kernels(op: Op, runs) -> dict:
    recorder = _KernelCalls()
    for args, options in runs:
        args = _with_grad(args, _differentiable(op, options))
        with recorder:
            op.call(*args, **options).sum().backward()
    return recorder.calls


@pytest.mark.parametrize("name", OPS)
def test_opcheck(any_device, name):
    """torch.library.opcheck of every kernel the op runs forward and backward (recorded below
    autograd): all of it (schema, fake kernel, autograd registration, AOT dispatch) for the
    2-D sample with the first option set; schema and fake kernel (whose shapes follow the
    options) for the 3-D sample with it and the 2-D sample with every other option set."""
    op, device = OPS[name], any_device
    if fastreg.get_backend() == "reference" or name in ("resize_field", "warp_bicubic"):
        pytest.skip("the reference and resize_field (F.interpolate) run no fastreg kernel; warp's options run warp_bicubic's")
    two, three = op.samples(device, torch.float64)[:2]
    first = _record_kernels(op, [(two, op.options(two)[0])])
    others = _record_kernels(op, [(three, op.options(three)[0]), *((two, option) for option in op.options(two)[1:])])
    assert first
    for calls, utils in ((first, None), ({k: v for k, v in others.items() if k not in first}, ("test_schema", "test_faketensor"))):
        for func, args, kwargs in calls.values():
            forward = "_backward" not in func.name()
            args = [a.detach().requires_grad_(forward and a.is_floating_point()) if isinstance(a, torch.Tensor) else a
                    for a in args]
            torch.library.opcheck(func, tuple(args), kwargs, **({} if utils is None else {"test_utils": utils}))


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
    give exactly the contiguous result, for the 2-D and 3-D samples."""
    op, device = OPS[name], any_device
    for args in op.samples(device, torch.float64)[:2]:
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
    for options in op.options(args):
        found = False
        for which in {0, len(args) - 1}:  # the image (or first input), then the positions
            poisoned = [a.clone() for a in args]
            poisoned[which].view(-1)[poisoned[which].numel() // 2] = float("nan")
            out = op.call(*poisoned, **options)
            with fastreg.use_backend("reference"):
                expected = op.call(*(p.cpu() for p in poisoned), **options)
            assert torch.equal(out.isnan().cpu(), expected.isnan()), (which, options)
            found |= bool(out.isnan().any())
        assert found, options


@pytest.mark.parametrize("name", OPS)
def test_bad_input_same_error_on_every_backend(name):
    """Each invalid call raises a ValueError or TypeError naming the argument its label starts
    with ("<argument>: expected ..."), with the same type and wording on every backend that
    runs here."""
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
        argument = message.split(":")[0]
        assert label == argument or label.startswith(argument + " "), (label, message)


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
