"""local_correlation and vfa_attention: what the op contract (tests/test_op_contract.py: parity
with the reference for every radius, scale, temperature (a number or a tensor, gradients to
it) and padding, broadcast batches, gradients, opcheck, compile, NaN (on a zero-padded border
too), strides, bad input) does not hold: half precision, the reference's two forms (shifted
products, unfold + matmul), the offsets' order, what is stored for backward, both paths of the
CPU kernels (padded tiles for short rows, row kernels for long ones), and the kernels compiled
for a GPU. Shapes are small (the Triton interpreter runs them)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastreg
from fastreg.reference import correlation as reference

SHAPES = {2: (2, 3, 5, 6), 3: (2, 3, 3, 4, 5)}
PADDINGS = ("zeros", "border")


def _pair(shape, device, dtype=torch.float64, grad=False):
    return [torch.randn(shape, device=device, dtype=dtype, requires_grad=grad) for _ in range(2)]


@pytest.mark.parametrize("dims", [SHAPES[3], (1, 3, 2, 3, 33)], ids=["short-rows", "long-rows"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_accumulate_in_float32(backend, device, dtype, dims):
    # Both CPU paths (padded tiles up to 32 voxels per row, row kernels above).
    if backend == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16")
    f, m = _pair(dims, device, dtype)
    tol = dict(rtol=2e-2, atol=2e-2)
    out = fastreg.local_correlation(f, m, 1, None, "border")
    torch.testing.assert_close(out.double(), reference.local_correlation(f.double(), m.double(), 1, 1.0, "border"), **tol)
    out = fastreg.vfa_attention(f, m)
    torch.testing.assert_close(out.double(), reference.vfa_attention(f.double(), m.double()), **tol)


def test_unfold_forms_match_shifted_products():
    for ndim in (2, 3):
        f, m = _pair(SHAPES[ndim], "cpu")
        for radius in (1, 2):
            for padding in PADDINGS:
                torch.testing.assert_close(
                    reference.local_correlation_unfold(f, m, radius, 0.5, padding),
                    reference.local_correlation(f, m, radius, 0.5, padding),
                )
            torch.testing.assert_close(
                reference.vfa_attention_unfold(f, m, radius), reference.vfa_attention(f, m, radius)
            )


def test_offsets_are_ij_ordered_first_axis_outermost(backend, device):
    # A moving map that is the fixed map shifted by +1 along H: channel (o_D, o_H, o_W) = (0, 1, 0),
    # k = 9 * 1 + 3 * 2 + 1, equals sum_c f^2 wherever p + o is inside.
    f = torch.randn(1, 4, 4, 6, 5, device=device, dtype=torch.float64)
    m = torch.roll(f, shifts=1, dims=3)
    corr = fastreg.local_correlation(f, m, 1, None)
    torch.testing.assert_close(corr[:, 9 + 6 + 1, :, :-1], (f * f).sum(1)[:, :, :-1])
    # vfa_attention: displacement channel a is the softmax-weighted offset along spatial axis a.
    logits = fastreg.local_correlation(f, m, 1, 0.5, "border")
    table = torch.tensor([(d, h, w) for d in (-1, 0, 1) for h in (-1, 0, 1) for w in (-1, 0, 1)], dtype=f.dtype, device=device)
    expected = torch.einsum("bk...,ka->ba...", torch.softmax(logits, 1), table)
    torch.testing.assert_close(fastreg.vfa_attention(f, m), expected)


def test_vfa_attention_stores_no_logits(backend, device):
    # Everything autograd keeps for backward is at most the size of one feature map:
    # nothing with K = 27 channels (logits, weights) and no neighbourhood copy.
    q, k = _pair((1, 4, 3, 4, 5), device, grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        out = fastreg.vfa_attention(q, k)
    assert saved, "the op saved nothing for backward"
    assert all(torch.Size(s).numel() <= q.numel() for s in saved), saved
    assert all(len(s) < 2 or s[1] != 27 for s in saved), saved
    out.sum().backward()
    assert q.grad is not None and k.grad is not None


@pytest.mark.parametrize("dims", [(2, 11, 5, 32), (2, 11, 5, 33), (1, 16, 3, 4, 31), (1, 16, 3, 4, 33)],
                         ids=["2d-tiled", "2d-rows", "3d-tiled", "3d-rows"])
def test_cpu_short_row_tiles_and_long_rows_match_the_reference(dims):
    # The CPU kernels take padded tiles of whole rows up to 32 voxels per row and the row
    # kernels above that: both paths, channel counts off and on the 8-channel blocks, the
    # vector remainders, radius 1 (9-offset blocks) and 2, both paddings.
    f, m = _pair(dims, "cpu", grad=True)
    with fastreg.use_backend("cpu"):
        for radius in (1, 2):
            for padding in PADDINGS:
                out = fastreg.local_correlation(f, m, radius, 0.5, padding)
                expected = reference.local_correlation(f, m, radius, 0.5, padding)
                grad = torch.randn_like(out)
                torch.testing.assert_close(out, expected)
                for got, want in zip(torch.autograd.grad(out, (f, m), grad), torch.autograd.grad(expected, (f, m), grad)):
                    torch.testing.assert_close(got, want)
            out = fastreg.vfa_attention(f, m, radius)
            expected = reference.vfa_attention(f, m, radius)
            grad = torch.randn_like(out)
            torch.testing.assert_close(out, expected)
            for got, want in zip(torch.autograd.grad(out, (f, m), grad), torch.autograd.grad(expected, (f, m), grad)):
                torch.testing.assert_close(got, want)


# Compiles the Triton kernels for an H100 (sm_90) down to cubin: code the interpreter accepts
# but the compiler rejects fails here. Every kernel once (fp32, 3-D, border: the widest
# source loops), the forward and source gather again in fp16 2-D with zero padding.
_COMPILE_FOR_GPU = textwrap.dedent(
    """
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from fastreg.triton import correlation as tc

    def build(kernel, pointers, constants):
        names = kernel.arg_names
        signature = {n: pointers.get(n, "i32" if n in ("C", "N", "S0", "S1", "S2") else "constexpr") for n in names}
        constexprs = {(names.index(k),): v for k, v in constants.items()}
        src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        assert "cubin" in triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm

    for dt, ndim, padding, kernels in [("fp32", 3, 1, "fgsvd"), ("fp16", 2, 0, "fs")]:
        p, acc = "*" + dt, "*fp32"
        kp = triton.next_power_of_2(3 ** ndim)
        meta = dict(R=1, NDIM=ndim, ACC=tl.float32, KP=kp, BV=max(16, min(128, 4096 // kp)))
        ext = 2 if padding == 1 else 1
        todo = {
            "f": (tc._correlation_forward_kernel, dict(f_ptr=p, m_ptr=p, out_ptr=p), dict(PADDING=padding)),
            "g": (tc._neighbour_gather_kernel, dict(g_ptr=acc, b_ptr=p, out_ptr=p), dict(PADDING=padding)),
            "s": (tc._source_gather_kernel, dict(g_ptr=p, a_ptr=p, out_ptr=p),
                  dict(PADDING=padding, EXT0=ext if ndim == 3 else 1, EXT=ext)),
            "v": (tc._vfa_forward_kernel, dict(q_ptr=p, k_ptr=p, out_ptr=p, lse_ptr=acc), {}),
            "d": (tc._vfa_dlogit_kernel, dict(g_ptr=p, q_ptr=p, k_ptr=p, out_ptr=p, lse_ptr=acc, dl_ptr=acc), {}),
        }
        for key in kernels:
            kernel, pointers, extra = todo[key]
            build(kernel, dict(pointers, scale_ptr=acc), dict(meta, **extra))
    print("compiled")
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU runs the compiled kernels in the tests above")
def test_triton_kernels_compile_for_gpu():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    result = subprocess.run([sys.executable, "-c", _COMPILE_FOR_GPU], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
