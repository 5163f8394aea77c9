"""The contract every public op keeps on every backend that runs here (reference, cpu, triton
under the interpreter; cuda where there is a GPU), driven by one table, ``OPS``: per public op
its call, samples (2-D and 3-D, broadcast batches, size-1 axes), option sets and invalid inputs.
One generic test per property: parity with the reference in float64 and float32 (values and
gradients), gradcheck, opcheck of every kernel the op runs, torch.compile(fullgraph=True), double
backward, autocast, zero-size batches and axes, strided / expanded / channels-last inputs and
output gradients, NaN in -> NaN out as the reference, and bad input raising the same error on
every backend, naming the argument. Shapes are tiny: the Triton interpreter runs all of it. The
families' own mathematics is in tests/ops/; the peers' formulas in fastreg/bench/peer_kernels.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastreg
from fastreg import _library
from grad_checks import assert_grad_close_but_kinks


def _rand(*shape, device="cpu", dtype=torch.float64, low=-1.0, high=1.0):
    return (low + (high - low) * torch.rand(*shape, dtype=torch.float64)).to(device=device, dtype=dtype)


def _draw(spec, device, dtype):
    """A tensor of a sample spec: its shape, then optionally its values' range, a float s for
    [-s, s] or a pair (low, high); [-1, 1] if none."""
    shape, span = (spec[:-1], spec[-1]) if isinstance(spec[-1], (float, tuple)) else (spec, 1.0)
    low, high = span if isinstance(span, tuple) else (-span, span)
    return _rand(*shape, device=device, dtype=dtype, low=low, high=high)


@dataclass(frozen=True)
class Op:
    """One public op: ``call(*tensors, **options)`` (fixed options where none are given);
    ``specs``, per sample a tuple of tensor specs (``_draw``), the first a 2-D and the second a
    3-D one (float64 parity runs them all, the other tests these two or the first); ``options``,
    the option sets (a list, or a function of a sample's tensors; a tensor option takes a
    gradient too); ``names``, the tensors' argument names; invalid calls besides the generic
    ones (``_bad_calls``): ``bad_options`` (the error names the first key) and
    ``bad(*first_sample)``, ``(label, tensors[, options])`` whose label starts with the argument
    the error names; ``out_axis``, the output axis of the inputs' first spatial axis."""

    call: Callable
    specs: Sequence[tuple]
    names: tuple[str, ...]
    options: Sequence[dict] | Callable = ({},)
    bad_options: Sequence[dict] = ()
    bad: Callable = lambda *args: []  # noqa: E731
    differentiable: int = 2  # how many leading arguments take a gradient
    linear: bool = False  # linear in its inputs: the second derivatives vanish
    opcheck: bool = True  # runs fastreg kernels of its own (not covered by another row)
    out_axis: int = 2

    def samples(self, device, dtype):
        return [tuple(_draw(spec, device, dtype) for spec in sample) for sample in self.specs]

    def option_sets(self, args):
        return self.options(args) if callable(self.options) else self.options

    def differentiable_for(self, options: dict) -> int:
        """Arguments with a gradient: nearest interpolation's positions have none (0 almost
        everywhere, a jump between voxels)."""
        return 1 if options.get("mode") == "nearest" else self.differentiable


MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")
WARP_OPTIONS = [dict(mode=m, padding_mode=p) for m in MODES for p in PADDINGS]
PADDING_OPTIONS = [dict(padding_mode=p) for p in PADDINGS]
WARP_BAD_OPTIONS = [dict(mode="bicubicc"), dict(mode="cubic"), dict(padding_mode="wrap")]
# every padding with one step, a kept field and none; every field kept; a plan that pushes
# fields (steps 9, 3 checkpoints: fastreg._checkpoint)
INTEGRATE_OPTIONS = [dict(steps=s, padding_mode=p, checkpoints=c) for p in PADDINGS for s, c in ((1, 1), (4, 1), (4, 0))] + [
    dict(steps=5, checkpoints=None), dict(steps=9, checkpoints=3)]


def _fields(scale=1.5, size_one=False):
    return [((2, 2, 5, 6, scale),), ((1, 3, 3, 4, 5, scale),)] + [((2, 3, 1, 4, 5, scale),)] * size_one


def _pairs(channels=3, broadcast=False, span=1.0):  # broadcast: one of the two for the whole batch
    return [((2, channels, 5, 6, span),) * 2, ((1, channels, 3, 4, 5, span),) * 2] + [
        ((3, 2, 4, 5), (1, 2, 4, 5)), ((1, 2, 3, 4, 3), (3, 2, 3, 4, 3))] * broadcast


def _lncc_options(args):
    per_axis = (5, 3) if args[0].dim() == 4 else (3, 1, 5)
    whole = tuple(n - 1 + n % 2 for n in args[0].shape[2:])  # windows up to the image's size
    return [dict(window=3), dict(window=per_axis), dict(window=3, kernel="gaussian"),
            dict(window=per_axis, kernel="gaussian", sigma=0.8), dict(window=whole),
            dict(window=whole, kernel="gaussian")]


def _jacobian_options(args):
    modes = ("central", "forward", "gradient")[: 3 if min(args[0].shape[2:]) > 1 else 2]  # np.gradient needs 2 voxels
    return [dict(mode=m, spacing=s) for m in modes for s in (None, (0.8, 1.25, 1.5)[: args[0].shape[1]])]


def _warp_bad(image, disp):
    volume, field = _rand(2, 1, 6, 7, 8), _rand(2, 3, 6, 7, 8)
    return [("disp size", (image, disp[..., :4])), ("disp batch", (image, torch.cat([disp, disp]))),
            ("disp batch 3 of 2", (volume, torch.cat([field, field[:1]]))), ("disp channels", (volume, field[:, :2])),
            ("disp rank", (volume, field[..., 0])), ("disp int dtype", (volume, field.int())),
            ("disp on meta", (volume, field.to("meta")))]


WARP_SPECS = [
    ((2, 2, 5, 6), (2, 2, 5, 6, 2.0)), ((2, 1, 3, 4, 5), (1, 3, 3, 4, 5, 2.0)),  # one field for the batch
    ((2, 3, 4, 5), (1, 2, 4, 5, 3.0)), ((2, 2, 3, 4, 3), (2, 3, 3, 4, 3, 3.0)),
    ((2, 2, 1, 6, 5), (2, 3, 1, 6, 5, 2.0)), ((1, 2, 3, 1, 1), (1, 3, 3, 1, 1, 2.0)),  # size-1 axes
    ((1, 2, 5, 1), (1, 2, 5, 1, 2.0)), ((1, 1, 1, 6), (1, 2, 1, 6, 2.0))]
TEMPERATURES = (torch.tensor(-1.0, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), torch.tensor(float("nan")),
                torch.ones(2))
OPS = {
    "warp": Op(fastreg.warp, WARP_SPECS, ("image", "disp"), WARP_OPTIONS, bad_options=WARP_BAD_OPTIONS, bad=_warp_bad),
    # warp's options run warp_bicubic's kernels: no opcheck of its own
    "warp_bicubic": Op(lambda i, d, **kw: fastreg.warp(i, d, **{"mode": "bicubic", "padding_mode": "reflection", **kw}),
                       WARP_SPECS, ("image", "disp"), bad_options=WARP_BAD_OPTIONS, bad=_warp_bad, opcheck=False),
    "sample": Op(fastreg.sample, [((2, 2, 5, 6), (2, 2, 3, 4, (-1.0, 6.0))), ((1, 1, 3, 4, 5), (1, 3, 2, 3, 2, (-1.0, 5.0))),
                                  ((2, 2, 4, 5), (1, 2, 11, 3, (-2.0, 6.0)))], ("image", "coords"), WARP_OPTIONS,
                 bad_options=WARP_BAD_OPTIONS, bad=lambda image, coords: [
                     ("image empty", (image[:, :, :0], coords)), ("coords channels", (image, coords[:, :1])),
                     ("coords rank", (image, _rand(2, 2, 3, 3, 3)))]),
    "compose": Op(fastreg.compose, [((2, 2, 5, 6),) * 2, ((1, 3, 3, 4, 5),) * 2, ((1, 3, 3, 4, 5), (2, 3, 3, 4, 5))],
                  ("u", "v"), PADDING_OPTIONS, bad_options=[dict(padding_mode="wrap")],
                  bad=lambda u, v: [("v size", (u, v[..., :3]))]),
    # one tensor as image and positions (a step of a fixed-point iteration): a create_graph
    # backward gives each input's partial derivative, not twice the total one
    "compose_shared": Op(lambda u, **kw: fastreg.compose(u, u, **kw), _fields(0.5), ("u",), PADDING_OPTIONS,
                         differentiable=1, opcheck=False),
    # the first two: intensities in [3800, 4095], whose local variance is 5e-4 of their square: float32 sums
    # cancel (a float32 reference misses by 2e-3), float64 finite differences (gradcheck) still hold
    "lncc": Op(lambda a, b, **kw: fastreg.lncc(a, b, **{"window": 3, "reduction": "none", **kw}),
               _pairs(1, span=(3800.0, 4095.0)) + _pairs(2),
               ("a", "b"), _lncc_options, bad_options=[
                   *(dict(window=w) for w in (4, 7, 2.5, 0, -3, 11, (3, 3, 3), 3.0, (3, 2.5))), dict(kernel="triangle"),
                   dict(reduction="max"), dict(sigma=1.0), dict(sigma=-1.0, kernel="gaussian"),
                   dict(sigma=(1.0, 2.0, 3.0), kernel="gaussian"), dict(eps=-1.0)],
               bad=lambda a, b: [("b shape", (a, b[..., :5]))]),
    "integrate_svf": Op(lambda v, **kw: fastreg.integrate_svf(v, **{"steps": 4, "checkpoints": 2, **kw}),
                        _fields(size_one=True), ("v",), INTEGRATE_OPTIONS, differentiable=1, bad_options=[
                            *(dict(steps=s) for s in (64, -1, 7.0, True, "7")), dict(padding_mode="wrap"),
                            *(dict(checkpoints=c) for c in (-1, True, 1.0))],
                        bad=lambda v: [("v channels", (v[:, :1],)), ("v 3 channels in 2-D", (_rand(1, 3, 4, 5),))]),
    "jacobian_det": Op(fastreg.jacobian_det, _fields(size_one=True), ("disp",), _jacobian_options, differentiable=1,
                       out_axis=1,
                       bad_options=[dict(mode="backward"), dict(spacing=(1.0, -2.0)), dict(spacing=(1.0, 1.0, 1.0))],
                       bad=lambda disp: [("disp channels", (_rand(2, 2, 5, 6, 7),)),
                                         ("disp gradient on size 1", (disp[..., :1],), dict(mode="gradient"))]),
    "local_correlation": Op(fastreg.local_correlation, _pairs(broadcast=True), ("f", "m"), [
        dict(radius=r, scale=s, padding_mode=p) for r, s in ((1, "rsqrt_channels"), (2, None), (3, 0.37), (2, 1.3))
        for p in ("zeros", "border")],
        bad_options=[*(dict(radius=r) for r in (800, 0, 1.5)), dict(padding_mode="reflection"),
                     *(dict(scale=s) for s in (float("inf"), "sqrt", [1.0]))],
        bad=lambda f, m: [("f zero channels", (f[:, :0], m[:, :0])), ("m channels differ", (f, m[:, :2])),
                          ("m spatial size", (f, m[:, :, :1])), ("m rank", (f, m[0])),
                          ("m batch", (f, torch.cat([m, m, m])))]),
    "vfa_attention": Op(lambda q, k, **kw: fastreg.vfa_attention(2 * q, k, **kw), _pairs(broadcast=True), ("q", "k"),
                        [dict(radius=2, temperature=torch.tensor(0.8, dtype=torch.float64)), dict(radius=1),
                         dict(radius=2, temperature=0.7), dict(radius=3)],
                        bad_options=[*(dict(radius=r) for r in (800, -1, True)),
                                     *(dict(temperature=t) for t in (0.0, "1", *TEMPERATURES))],
                        bad=lambda q, k: [("q zero channels", (q[:, :0], k[:, :0])), ("k channels", (q, k[:, :1])),
                                          ("k spatial size", (q, k[..., :1]))]),
    # F.interpolate: no fastreg kernel
    "resize_field": Op(lambda u, **kw: fastreg.resize_field(u, **(kw or {"scale_factor": 2.0})), _fields(), ("u",),
                       lambda args: [dict(scale_factor=2.0), dict(scale_factor=0.5),
                                     dict(scale_factor=(2.0, 0.5, 1.5)[: args[0].dim() - 2]),
                                     dict(size=(7, 4) if args[0].dim() == 4 else (5, 3, 6))],
                       differentiable=1, linear=True, opcheck=False,
                       bad_options=[*(dict(size=s) for s in ((4, 4, 4), (8, 8.5), (8, 0))),
                                    *(dict(scale_factor=s) for s in (0.0, -2.0, (2.0, 2.0, 2.0)))],
                       bad=lambda u: [("size, scale_factor both", (u,), dict(size=(4, 4), scale_factor=2.0)),
                                      ("size, scale_factor neither", (u,), dict(size=None, scale_factor=None)),
                                      ("u channels", (u[:, :1],))]),
    # fields of |grad u| < 0.5: the fixed point contracts, 25 iterations reach float64 rounding
    "invert_field": Op(lambda u, **kw: fastreg.invert_field(u, **{"iterations": 25, "tol": 0.0, **kw}), _fields(0.12),
                       ("disp",), PADDING_OPTIONS, differentiable=1, bad_options=[
                           *(dict(iterations=i) for i in (0, 2.5)), *(dict(tol=t) for t in (-1.0, float("nan"), "small")),
                           dict(padding_mode="wrap")],
                       bad=lambda u: [("disp numpy", (u.numpy(),)), ("disp channels", (u[:, :1],))]),
}


F64 = dict(rtol=1e-9, atol=1e-10)  # float64 values; gradients: rtol 1e-8, atol 1e-9


def _with_grad(args, n):
    return tuple(a.detach().requires_grad_(i < n) for i, a in enumerate(args))


def _cases(op: Op, device, dtype, count=None):
    """(tensors, options) of the first ``count`` samples (all if None), each with every option set;
    the first case is the 2-D sample's first option set."""
    return [(args, options) for args in op.samples(device, dtype)[:count] for options in op.option_sets(args)]


def _reference(op: Op, args, options=None):
    """The op on the reference backend, of CPU copies of ``args``."""
    with fastreg.use_backend("reference"):
        return op.call(*(a.cpu() for a in args), **(options or {}))


@pytest.fixture(params=OPS)
def op(request) -> Op:
    """Each row of ``OPS`` (the test ID names it)."""
    return OPS[request.param]


@pytest.fixture
def kernel_device(any_device):
    """``any_device`` of every backend but the reference, the oracle."""
    if fastreg.get_backend() == "reference":
        pytest.skip("the reference is the oracle")
    return any_device


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_matches_reference(kernel_device, op, dtype):
    """Values and gradients equal the reference's: in float64 for every sample and option set;
    in float32, for the 2-D and 3-D samples and every option set, the float64 reference's of the
    same values to float32 rounding (relative to the largest output), the gradients but for the
    few entries where a position crosses a voxel boundary (grad_checks)."""
    wide = dtype == torch.float64
    for args, options in _cases(op, kernel_device, dtype, None if wide else 2):
        n = op.differentiable
        args, ref_args = _with_grad(args, n), _with_grad([a.cpu().double() for a in args], n)
        out, expected = op.call(*args, **options), _reference(op, ref_args, options)
        assert out.dtype == dtype
        weights = torch.rand_like(expected)
        grads = torch.autograd.grad(out, args[:n], weights.to(out))
        expected_grads = torch.autograd.grad(expected, ref_args[:n], weights)
        scale = expected.abs().max().clamp_min(1.0).item()
        tol = F64 if wide else dict(rtol=1e-5, atol=2e-5 * scale)
        torch.testing.assert_close(out.cpu().double(), expected, **tol, msg=lambda m: f"{options}: {m}")
        for got, want in zip(grads, expected_grads):
            if wide:
                torch.testing.assert_close(got.cpu(), want, rtol=1e-8, atol=1e-9, msg=lambda m: f"{options}: {m}")
            else:
                assert_grad_close_but_kinks(got.cpu().double(), want, rtol=1e-4)


def test_gradcheck(kernel_device, op):
    """torch.autograd.gradcheck (finite differences, float64) to every differentiable input and
    tensor option: the full Jacobian of the first case (not under the Triton interpreter: too
    slow), random projections (fast mode) of the others and of the 2-D and 3-D samples."""
    interpreted = kernel_device.type == "cpu" and fastreg.get_backend() == "triton"
    for k, (args, options) in enumerate(_cases(op, kernel_device, torch.float64, 2)):
        n = op.differentiable_for(options)
        keys = [key for key, value in options.items() if isinstance(value, torch.Tensor)]
        inputs = (*args[:n], *(options[key].to(kernel_device) for key in keys))

        def call(*x, rest=[a.detach() for a in args[n:]]):
            return op.call(*x[:n], *rest, **{**options, **dict(zip(keys, x[n:]))})

        assert torch.autograd.gradcheck(call, _with_grad(inputs, len(inputs)), fast_mode=k > 0 or interpreted), options


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
        args = _with_grad(args, op.differentiable_for(options))
        with recorder:
            op.call(*args, **options).sum().backward()
    return recorder.calls


def test_opcheck(any_device, op):
    """torch.library.opcheck of every kernel the op runs forward and backward (recorded below
    autograd): all of it (schema, fake kernel, autograd registration, AOT dispatch) for the
    first case; schema and fake kernel (whose shapes follow the options) for the kernels only
    the other cases of the 2-D and 3-D samples run."""
    if fastreg.get_backend() == "reference" or not op.opcheck:
        pytest.skip("the reference runs no fastreg kernel, nor does this op beyond another row's")
    cases = _cases(op, any_device, torch.float64, 2)
    first, others = _record_kernels(op, cases[:1]), _record_kernels(op, cases[1:])
    assert first
    for calls, utils in ((first, None), ({k: v for k, v in others.items() if k not in first}, ("test_schema", "test_faketensor"))):
        for func, args, kwargs in calls.values():
            forward = "_backward" not in func.name()
            args = [a.detach().requires_grad_(forward and a.is_floating_point()) if isinstance(a, torch.Tensor) else a
                    for a in args]
            torch.library.opcheck(func, tuple(args), kwargs, **({} if utils is None else {"test_utils": utils}))


@pytest.mark.parametrize("axis", ["batch", "spatial"])
def test_zero_size_gives_an_empty_result(any_device, op, axis):
    """The first sample cut to an empty batch, or an empty first spatial axis in every tensor."""
    args = op.samples(any_device, torch.float32)[0]
    cut = _with_grad(tuple(a[:0] if axis == "batch" else a[:, :, :0] for a in args), op.differentiable)
    out = op.call(*cut)
    assert out.numel() == 0 and out.dtype == torch.float32 and out.device.type == any_device.type
    expected_shape = list(op.call(*args).shape)
    expected_shape[0 if axis == "batch" else op.out_axis] = 0
    assert list(out.shape) == expected_shape
    grads = torch.autograd.grad(out.sum(), cut[: op.differentiable])
    assert [g.shape for g in grads] == [a.shape for a in cut[: op.differentiable]]


def _strided(a):
    return a.transpose(-1, -2).contiguous().transpose(-1, -2)


def test_strided_inputs_match_contiguous(any_device, op):
    """Expanded (stride-0 batch and channels), transposed-strided and channels-last inputs
    give exactly the contiguous result, and with a transposed-strided output gradient the
    same gradients, for the 2-D and 3-D samples."""
    for args in op.samples(any_device, torch.float64)[:2]:
        leaves = _with_grad(args, op.differentiable)
        for variant in (
            tuple(a[:1].expand(a.shape) for a in leaves),
            tuple(_strided(a) for a in leaves),
            tuple(a.contiguous(memory_format=torch.channels_last if a.dim() == 4 else torch.channels_last_3d) for a in leaves),
            tuple(a[:, :1].expand(a.shape) if a.shape[1] > 1 and i > 0 else a for i, a in enumerate(leaves)),
        ):
            out, expected = op.call(*variant), op.call(*(v.contiguous() for v in variant))
            torch.testing.assert_close(out, expected, rtol=0, atol=0)
            weights = _strided(torch.rand_like(out))
            for got, want in zip(torch.autograd.grad(out, leaves[: op.differentiable], weights),
                                 torch.autograd.grad(expected, leaves[: op.differentiable], weights.contiguous())):
                torch.testing.assert_close(got, want)


def test_nan_in_gives_nan_out_as_the_reference(any_device, op):
    """A NaN in the first input, then in the last, of the 2-D and 3-D samples with every option
    set: NaN exactly where the reference has it, the reference's values elsewhere."""
    for args, options in _cases(op, any_device, torch.float64, 2):
        found = False
        for which in {0, len(args) - 1}:  # the image (or first input), then the positions
            poisoned = [a.clone() for a in args]
            poisoned[which].view(-1)[poisoned[which].numel() // 2] = float("nan")
            out = op.call(*poisoned, **options)
            torch.testing.assert_close(out.cpu(), _reference(op, poisoned, options), **F64, equal_nan=True,
                                       msg=lambda m: f"{which}, {options}: {m}")
            found |= bool(out.isnan().any())
        assert found or args[0].dim() > 4, options  # a 3-D sample's NaN may fall between the samples of a resize


def _bad_calls(op: Op):
    """(label, thunk) of every invalid call of ``op``, built on its first sample."""
    args = op.samples(torch.device("cpu"), torch.float64)[0]
    name, first, rest = op.names[0], args[0], args[1:]
    calls = [(f"{name} list", ([[1.0]], *rest)), (f"{name} int dtype", (first.long(), *rest)),
             (f"{name} rank 3", (first[0], *rest))]
    calls += [(f"{op.names[1]} mixed dtype", (first, rest[0].float()))] if rest else []
    calls += [(", ".join(f"{k} {v!r}" for k, v in options.items()), args, options) for options in op.bad_options]
    return [(label, lambda xs=xs, kw=(kw or [{}])[0]: op.call(*xs, **kw)) for label, xs, *kw in calls + op.bad(*args)]


def test_bad_input_same_error_on_every_backend(op):
    """Each invalid call raises a ValueError or TypeError naming the argument its label starts
    with ("<argument>: expected ..."), with the same type and wording on every backend that
    runs here."""
    for label, thunk in _bad_calls(op):
        seen = {}
        for backend in set(fastreg.available_backends()) - {"cuda"}:
            with fastreg.use_backend(backend):
                with pytest.raises((ValueError, TypeError)) as info:
                    thunk()
            seen[backend] = (type(info.value), str(info.value))
        assert len(set(seen.values())) == 1, (label, seen)
        message = next(iter(seen.values()))[1]
        argument = message.split(":")[0]
        assert label == argument or label.startswith(argument + " "), (label, message)


@pytest.mark.parametrize("make, options", [
    (fastreg.nn.VecInt, dict(steps=64)), *((fastreg.nn.LNCCLoss, dict(window=w)) for w in (4, [3, 2.0], 3.0)),
    (fastreg.nn.LNCCLoss, dict(sigma=1.0)), (fastreg.nn.LNCCLoss, dict(sigma=-1.0, kernel="gaussian")),
    (fastreg.nn.LNCCLoss, dict(eps=-1e-5)), (fastreg.nn.LNCCLoss, dict(form="pos")),
    (fastreg.nn.JacobianLoss, dict(spacing=(1.0, 0.0))), (fastreg.nn.SpatialTransformer, dict(mode="cubic")),
    (fastreg.nn.ResizeField, dict(size=(4, 0))), (fastreg.nn.ResizeField, dict(scale_factor=-2.0))])
def test_nn_modules_validate_at_construction(make, options):
    """An invalid option raises when the module is built, naming the option (the first key)."""
    with pytest.raises((ValueError, TypeError), match=next(iter(options))):
        make(**options)


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


def test_autocast_promotes_mixed_inputs(any_device, op):
    """Under torch.autocast (CPU bfloat16 here; CUDA float16/bfloat16 alike) the inputs
    promote to the widest dtype (grid_sample's policy): a float32 image with a bfloat16 field
    gives the float32 result of the bfloat16-rounded field, gradients in each input's dtype;
    a bfloat16 input alone runs in bfloat16 as outside autocast."""
    args = op.samples(any_device, torch.float32)[0]
    mixed = _with_grad((args[0], *(a.bfloat16() for a in args[1:])), op.differentiable)
    with torch.autocast(any_device.type, dtype=torch.bfloat16):
        out = op.call(*mixed)
    expected = op.call(*(a.detach().float() for a in mixed))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grads = torch.autograd.grad(out.sum(), mixed[: op.differentiable])
    assert [g.dtype for g in grads] == [a.dtype for a in mixed[: op.differentiable]]
    low = tuple(a.detach().bfloat16() for a in args)
    with torch.autocast(any_device.type, dtype=torch.bfloat16):
        out_low = op.call(*low)
    assert out_low.dtype == torch.bfloat16
    torch.testing.assert_close(out_low, op.call(*low), rtol=0, atol=0)


def _second_order(op: Op, args, weights, directions):
    """The gradient of <out, weights> and d/d inputs of <that gradient, directions>: a
    Hessian-vector product (None for a linear op, whose gradient does not depend on the inputs)."""
    args = _with_grad(args, op.differentiable)
    firsts = torch.autograd.grad((op.call(*args) * weights).sum(), args[: op.differentiable], create_graph=True)
    product = sum((g * d).sum() for g, d in zip(firsts, directions))
    seconds = product.requires_grad and torch.autograd.grad(product, args[: op.differentiable], allow_unused=True)
    return [g.detach() for g in firsts], seconds or [None] * op.differentiable


def test_double_backward_matches_the_reference(any_device, op):
    """create_graph=True gives differentiable gradients on every backend (a gradient penalty
    or a Hessian-vector product), never silent zeros."""
    args = op.samples(any_device, torch.float64)[0]
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


def test_gradgradcheck_warp(any_device):
    image = _rand(1, 1, 3, 4, device=any_device).requires_grad_()
    disp = _rand(1, 2, 3, 4, device=any_device, low=-0.8, high=0.8).requires_grad_()
    assert torch.autograd.gradgradcheck(fastreg.warp, (image, disp))


def _compile_check(op: Op, device):
    """torch.compile(fullgraph=True) gives the eager values and gradients of the 2-D and 3-D
    samples: Inductor around the C++ kernels of the cpu backend, aot_eager elsewhere."""
    backend = "inductor" if fastreg.get_backend() == "cpu" else "aot_eager"
    compiled = torch.compile(op.call, fullgraph=True, backend=backend)
    for args in op.samples(device, torch.float32)[:2]:
        args = _with_grad(args, op.differentiable)
        outs = compiled(*args), op.call(*args)
        grads = [torch.autograd.grad(out.sum(), args[: op.differentiable]) for out in outs]
        for got, want in zip((outs[0], *grads[0]), (outs[1], *grads[1])):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_torch_compile_fullgraph(any_device, op):
    _compile_check(op, any_device)


def test_jacobian_stats_and_a_compile_outside_slow(any_device):
    """jacobian_stats, which has no row (no gradient, a dict of per-item float64 statistics):
    opcheck of its kernel, torch.compile(fullgraph=True), an empty batch, and a crop that leaves
    no voxel refused naming it; and jacobian_det compiles (the compile check of a run without
    ``slow``; the Triton ops have fakes under the interpreter)."""
    torch._dynamo.reset()
    _compile_check(OPS["jacobian_det"], any_device)
    disp = _rand(2, 3, 5, 6, 7, device=any_device, dtype=torch.float32)
    stats = torch.compile(fastreg.metrics.jacobian_stats, fullgraph=True, backend="aot_eager")(disp)
    for key, value in fastreg.metrics.jacobian_stats(disp).items():
        torch.testing.assert_close(stats[key], value)
    if fastreg.get_backend() != "reference":
        torch.library.opcheck(_library.kernel("jacobian_stats", fastreg.get_backend()), (disp, 1, [1.0, 0.5, 2.0], 1))
    empty = fastreg.metrics.jacobian_stats(disp[:0])
    assert all(v.shape == (0,) and v.dtype == torch.float64 for v in empty.values())
    for crop in (3, -1):
        with pytest.raises(ValueError, match="crop"):
            fastreg.metrics.jacobian_stats(disp, crop=crop)


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
