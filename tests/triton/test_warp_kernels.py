"""The Triton warp ops (fastreg/triton/warp.py) against the plain-torch reference.

The op contract (tests/test_op_contract.py) runs the public functions on every backend, the
Triton interpreter included: parity with the reference in float64 and float32 for every mode,
padding and sample (size-1 axes, broadcast positions, absolute coordinates with another output
size), gradients, gradcheck of every mode and padding (random projections under the
interpreter), opcheck, torch.compile, strided inputs and output gradients, NaN; tests/ops/test_warp.py
the gradients at NaN positions on every kernel backend. This file checks what is specific to
fastreg::warp_forward_triton / warp_backward_triton: half precision, far positions, the
int64-offset path, the output mask, a full-Jacobian gradcheck, the deterministic fixed-point
image gradient (bit-identical whatever the order of the contributions), launchers refusing bad
arguments and the kernels compiled for a GPU. Without a GPU the kernels run under TRITON_INTERPRET=1
(set by tests/conftest.py), so shapes stay small, and a separate process compiles them for
sm_90 to catch code that the interpreter accepts but the compiler rejects.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastreg
from fastreg.reference import warp as reference

if "triton" not in fastreg.available_backends():
    pytest.skip("the triton backend cannot run here", allow_module_level=True)

from fastreg.triton import warp as tw  # noqa: E402

warp_forward, warp_backward = torch.ops.fastreg.warp_forward_triton, torch.ops.fastreg.warp_backward_triton

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")
SHAPES = {2: (5, 6), 3: (4, 5, 6)}
OUT_SHAPES = {2: (3, 7), 3: (3, 2, 5)}  # absolute coordinates: another output size
# (atol, rtol) of each dtype against a float64 reference of the same (rounded) inputs
TOL = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (2e-5, 1e-5),
    torch.float16: (4e-2, 1e-2),
    torch.bfloat16: (3e-1, 3e-2),
}


@pytest.fixture
def deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def make_inputs(ndim, displacement=True, batch=2, channels=3, loc_batch=1, dtype=torch.float64, shape=None):
    """Random image (B, C, *S) and positions (Bl, ndim, *S_out) reaching outside the image."""
    shape = shape or SHAPES[ndim]
    image = torch.randn(batch, channels, *shape, dtype=dtype, device=DEVICE)
    if displacement:
        loc = 3.0 * torch.randn(loc_batch, ndim, *shape, dtype=torch.float64, device=DEVICE)
    else:
        out_shape = OUT_SHAPES[ndim]
        size = torch.tensor(shape, dtype=torch.float64, device=DEVICE).view(1, ndim, *[1] * ndim)
        loc = torch.rand(loc_batch, ndim, *out_shape, dtype=torch.float64, device=DEVICE) * (size + 6) - 3
    return image, loc.to(dtype)


def reference_grads(image, loc, grad_out, mode, padding, displacement):
    """Output and gradients of the reference, in float64 on the given (possibly rounded) inputs."""
    image = image.detach().double().requires_grad_()
    loc = loc.detach().double().requires_grad_()
    fn = reference.warp if displacement else reference.sample
    out = fn(image, loc, mode, padding)
    grad_image, grad_loc = torch.autograd.grad(out, (image, loc), grad_out.double())
    return out.detach(), grad_image, grad_loc


def triton_grads(image, loc, grad_out, mode, padding, displacement, mask=(True, True)):
    m, p = MODES.index(mode), PADDINGS.index(padding)
    out = warp_forward(image, loc, m, p, displacement)
    grad_image, grad_loc = warp_backward(grad_out, image, loc, m, p, displacement, list(mask))
    return out, grad_image, grad_loc


def assert_matches_reference(image, loc, mode, padding, displacement):
    atol, rtol = TOL[image.dtype]
    # A coordinate of magnitude M carries M * eps of rounding into the interpolation weights
    # (the reflection fold and floor subtract it away): allow that much per weighted value.
    far = 8 * loc.abs().max().item() * torch.finfo(loc.dtype).eps * image.abs().max().item()
    atol = max(atol, far)
    out_shape = (image.shape[0], image.shape[1], *loc.shape[2:])
    grad_out = torch.randn(out_shape, dtype=image.dtype, device=DEVICE)
    out, grad_image, grad_loc = triton_grads(image, loc, grad_out, mode, padding, displacement)
    ref_out, ref_image, ref_loc = reference_grads(image, loc, grad_out, mode, padding, displacement)
    assert out.dtype == grad_image.dtype == grad_loc.dtype == image.dtype
    torch.testing.assert_close(out.double(), ref_out, atol=atol, rtol=rtol)
    # Each image-gradient element sums a few contributions: scale the tolerance by their size.
    torch.testing.assert_close(grad_image.double(), ref_image, atol=4 * atol, rtol=rtol)
    # Position gradients are sums over channels (and broadcast batch) of image differences.
    scale = image.shape[1] * (image.shape[0] if loc.shape[0] == 1 else 1)
    torch.testing.assert_close(grad_loc.double(), ref_loc, atol=4 * scale * atol, rtol=rtol)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("ndim", (2, 3))
def test_half_precision_accumulates_in_float32(dtype, ndim):
    image, loc = make_inputs(ndim, dtype=dtype, loc_batch=2)
    assert_matches_reference(image, loc, "bilinear", "border", True)


@pytest.mark.parametrize("padding", PADDINGS)
def test_far_out_of_bounds(padding):
    image, loc = make_inputs(3, displacement=False)
    loc = loc * 1e3  # up to thousands of voxels away: many reflections, every clamp
    assert_matches_reference(image, loc, "bilinear", padding, False)


@pytest.mark.parametrize("deterministic_mode", (False, True))
def test_int64_offsets(monkeypatch, deterministic_mode):
    """The int64 offset path (taken from 2**31 elements) gives the same results."""
    image, loc = make_inputs(3, displacement=False, loc_batch=2)
    grad_out = torch.randn(2, 3, *OUT_SHAPES[3], dtype=image.dtype, device=DEVICE)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic_mode)
    try:
        expected = triton_grads(image, loc, grad_out, "bilinear", "reflection", False)
        monkeypatch.setattr(tw, "_INT64_NUMEL", 0)
        got = triton_grads(image, loc, grad_out, "bilinear", "reflection", False)
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(got, expected):  # float atomics may add in another order on a GPU
        torch.testing.assert_close(a, b, atol=1e-13, rtol=1e-12)


def test_output_mask():
    image, loc = make_inputs(2)
    grad_out = torch.randn_like(image)
    _, grad_image, grad_loc = triton_grads(image, loc, grad_out, "bilinear", "zeros", True, (True, False))
    assert grad_image.shape == image.shape and grad_loc.shape == (0,)
    _, grad_image2, grad_loc2 = triton_grads(image, loc, grad_out, "bilinear", "zeros", True, (False, True))
    assert grad_image2.shape == (0,) and grad_loc2.shape == loc.shape
    _, grad_image3, grad_loc3 = triton_grads(image, loc, grad_out, "nearest", "zeros", True, (True, True))
    assert torch.count_nonzero(grad_image3) > 0 and torch.count_nonzero(grad_loc3) == 0


def test_gradcheck_full_jacobian():
    """Full-Jacobian gradcheck on a tiny broadcast case (every entry of both Jacobians)."""
    image, loc = make_inputs(2, shape=(2, 3), batch=2, channels=1)
    image.requires_grad_()
    loc.requires_grad_()
    assert torch.autograd.gradcheck(lambda i, d: warp_forward(i, d, 0, 2, True), (image, loc))


@pytest.mark.parametrize("ndim", (2, 3))
def test_deterministic_image_grad_is_order_independent(ndim, deterministic):
    """Fixed-point accumulation: permuting the output voxels (so the atomic adds arrive in
    another order) leaves the image gradient bit-identical; two runs are bit-identical."""
    shape = (3, 4) if ndim == 2 else (2, 3, 4)
    n = 300  # many contributions per image voxel
    image = torch.randn(2, 2, *shape, dtype=torch.float32, device=DEVICE)
    size = torch.tensor(shape, dtype=torch.float32, device=DEVICE).view(1, ndim, 1)
    flat = torch.rand(1, ndim, n, dtype=torch.float32, device=DEVICE) * (size + 1) - 0.5
    grad_flat = torch.randn(2, 2, n, dtype=torch.float32, device=DEVICE)
    lead = (1,) * (ndim - 1)
    perm = torch.randperm(n, device=DEVICE)

    def grads(idx):
        loc = flat[..., idx].reshape(1, ndim, *lead, n)
        grad_out = grad_flat[..., idx].reshape(2, 2, *lead, n)
        return warp_backward(grad_out, image, loc, 0, 1, False, [True, True])

    first, second, shuffled = grads(torch.arange(n, device=DEVICE)), grads(torch.arange(n, device=DEVICE)), grads(perm)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(first[0], shuffled[0])
    torch.testing.assert_close(shuffled[1], first[1][..., perm], atol=0, rtol=0)
    # Precision: each contribution is rounded to 2**-(62 - L - e) (module docstring).
    loc = flat.reshape(1, ndim, *lead, n)
    grad_out = grad_flat.reshape(2, 2, *lead, n)
    _, ref_image, _ = reference_grads(image, loc, grad_out, "bilinear", "border", False)
    torch.testing.assert_close(first[0].double(), ref_image, atol=1e-5, rtol=1e-5)


def test_deterministic_float64_precision(deterministic):
    image, loc = make_inputs(3, displacement=False, loc_batch=2)
    grad_out = torch.randn(2, 3, *OUT_SHAPES[3], dtype=image.dtype, device=DEVICE)
    _, grad_image, _ = triton_grads(image, loc, grad_out, "bilinear", "reflection", False)
    _, ref_image, _ = reference_grads(image, loc, grad_out, "bilinear", "reflection", False)
    n_out = grad_out[0, 0].numel()
    _, e = torch.frexp(grad_out.abs().max())
    unit = 2.0 ** (e.item() + n_out.bit_length() - 62)  # of the fixed point; at most n_out sums
    # float64-grade: the fixed-point bound plus the reference's own rounding (~1e-15)
    torch.testing.assert_close(grad_image, ref_image, atol=n_out * unit + 1e-14, rtol=1e-10)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy
def test_deterministic_non_finite_grad_out(deterministic):
    """NaN / +inf / -inf contributions combine as IEEE addition would (same as the atomics)."""
    image, loc = make_inputs(2, displacement=False, batch=1, channels=2)
    grad_out = torch.randn(1, 2, *OUT_SHAPES[2], dtype=image.dtype, device=DEVICE)
    grad_out[0, 0, 0, :3] = torch.tensor([float("inf"), float("-inf"), float("nan")])
    grad_out[0, 1, 1, 1] = float("inf")
    _, fixed, _ = triton_grads(image, loc, grad_out, "bilinear", "border", False)
    torch.use_deterministic_algorithms(False)
    _, atomic, _ = triton_grads(image, loc, grad_out, "bilinear", "border", False)
    assert not torch.isfinite(fixed).all()
    torch.testing.assert_close(fixed, atomic, atol=1e-12, rtol=1e-10, equal_nan=True)


def test_direct_calls_with_bad_arguments_are_refused():
    """The public ops validate (ValueError naming the argument, tests/ops/test_warp.py); the
    Triton op itself asserts its layout, so a direct call never launches a kernel on bad input."""
    image, loc = make_inputs(2)
    for bad in ((image, loc, 3, 0, True), (image, loc, 0, 3, True), (image, loc[:, :1], 0, 0, True),
                (image, loc[..., :3], 0, 0, True)):
        with pytest.raises(AssertionError):
            warp_forward(*bad)
    with pytest.raises(AssertionError):
        warp_backward(image[:, :1], image, loc, 0, 0, True, [True, True])


# Compiles kernel variants covering every constexpr branch for an H100 (sm_90), down to cubin.
_COMPILE_FOR_GPU = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from fastreg.triton import warp as tw

    SIZES = ("B", "C", "n_in", "n_out", "sz0", "sz1", "sz2", "o1", "o2")

    def build(kernel, pointers, constants):
        names = kernel.arg_names
        signature = {n: pointers.get(n, "i32" if n in SIZES else "constexpr") for n in names}
        constexprs = {(names.index(k),): v for k, v in constants.items()}
        src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        assert "cubin" in triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm

    for dt, ndim, mode, padding, disp, int64, fixed in [
        ("fp32", 3, 0, 2, True, False, False),
        ("fp16", 2, 1, 1, True, True, True),
        ("fp64", 3, 0, 0, False, True, True),
        ("bf16", 3, 0, 2, False, False, False),
        ("fp32", 3, 2, 2, True, False, False),
        ("fp64", 2, 2, 0, False, True, True),
    ]:
        p = "*" + dt
        common = dict(NDIM=ndim, MODE=mode, PADDING=padding, DISPLACEMENT=disp, BROADCAST=disp,
                      ACC64=dt == "fp64", INT64=int64, BLOCK=tw._block(ndim, mode))
        build(tw._forward_kernel, dict(image=p, loc=p, out=p), common)
        grad_image = "*i64" if fixed else ("*fp64" if dt == "fp64" else "*fp32")
        build(tw._backward_kernel,
              dict(grad_out=p, image=p, loc=p, grad_image=grad_image, flags="*i32", scale_ptr="*fp64", grad_loc=p),
              dict(common, NEED_IMAGE=True, NEED_LOC=mode != 1, FIXED=fixed))
    print("compiled")
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the other tests run the compiled kernels on the GPU")
def test_kernels_compile_for_gpu():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    result = subprocess.run([sys.executable, "-c", _COMPILE_FOR_GPU], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
