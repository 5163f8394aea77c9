"""The one registration mechanism (fastreg/_library.py): every family's ops exist after
``import fastreg`` on every backend that can run here, named one way, and backend selection
is keyed by the same op names in fastreg/ops and fastreg-bench."""
import importlib
import subprocess
import sys

import pytest
import torch

import fastreg
from fastreg import _backend, _library
from fastreg.bench.cases import REGISTRY

FAMILIES = [importlib.import_module(f"fastreg.ops.{name}").FAMILY
            for name in ("warp", "integrate", "lncc", "correlation", "jacobian")]
KERNEL_BACKENDS = [b for b in ("cpu", "triton") if b in fastreg.available_backends()]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_kernel_is_an_op_on_every_backend(family):
    assert family.fakes and family.kernels, family.name
    for backend in KERNEL_BACKENDS:
        for kernel in family.kernels:
            name = _library.op_name(kernel, backend)
            assert name == (f"fastreg::{kernel}_triton" if backend == "triton" else f"fastreg::{kernel}")
            assert _library.kernel(kernel, backend) is getattr(torch.ops.fastreg, name.split("::")[1])
    for spec in family.autograd:
        assert spec.forward in family.fakes and spec.backward in family.kernels and spec.backward not in family.fakes


def test_triton_ops_need_no_import_of_the_triton_package():
    """In a fresh process with the interpreter, the Triton ops exist right after import fastreg."""
    if not _backend.triton_available():
        pytest.skip("triton is not installed")
    names = [f"{kernel}_triton" for family in FAMILIES for kernel in family.kernels]
    code = ("import sys, torch, fastreg; "
            "print(sum(hasattr(torch.ops.fastreg, n) for n in sys.argv[1:]), 'triton' in sys.modules)")
    env = {"TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == [str(len(names)), "True"]
    env["TRITON_INTERPRET"] = "0"  # no GPU, no interpreter: Triton is not even imported
    done = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == (["0", "False"] if not torch.cuda.is_available() else [str(len(names)), "True"])


def test_selection_is_keyed_by_op_name_everywhere():
    ops = {op for family in FAMILIES for op in family.ops}
    assert set(_backend.GPU_DEFAULT) == ops
    assert all(_backend.GPU_DEFAULT[op] == family.gpu_default for family in FAMILIES for op in family.ops)
    for module in REGISTRY.values():
        for case in module.cases("tiny", True):
            assert (case.op_name or case.op) in ops, case.name


def test_import_works_without_triton():
    """With Triton missing (even under TRITON_INTERPRET=1) fastreg imports, registers its C++
    ops and runs; the triton backend is not offered."""
    code = r"""
import sys
sys.modules["triton"] = None  # import triton raises ImportError, find_spec("triton") is None
import torch, fastreg
assert "triton" not in fastreg.available_backends() and sys.modules["triton"] is None
x = torch.randn(1, 1, 4, 5, requires_grad=True)
fastreg.warp(x, torch.randn(1, 2, 4, 5)).sum().backward()
assert x.grad is not None
print("ok")
"""
    env = {"TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
