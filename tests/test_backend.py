"""Backend selection: per thread / context scopes, the process default, FASTREG_BACKEND."""
import os
import subprocess
import sys
import threading

import pytest
import torch

import fastreg
from fastreg import _backend


def test_blocks_left_out_of_order_restore_the_default():
    a, b = fastreg.use_backend("reference"), fastreg.use_backend("cpu")
    a.__enter__()
    b.__enter__()
    assert fastreg.get_backend() == "cpu"
    a.__exit__(None, None, None)
    assert fastreg.get_backend() == "cpu"
    b.__exit__(None, None, None)
    assert fastreg.get_backend() is None


def test_nested_blocks_and_process_default():
    fastreg.set_backend("reference")
    try:
        with fastreg.use_backend("cpu"):
            with fastreg.use_backend(None):
                assert fastreg.get_backend() is None
            assert fastreg.get_backend() == "cpu"
        assert fastreg.get_backend() == "reference"
    finally:
        fastreg.set_backend(None)
    assert fastreg.get_backend() is None


def test_overlapping_blocks_in_two_threads_do_not_leak():
    """Thread A enters, B enters, A checks and leaves while B is inside, B checks and leaves;
    each sees only its own backend, and the process ends on the default."""
    names = {"A": "reference", "B": "cpu" if "cpu" in fastreg.available_backends() else None}
    steps = [threading.Event() for _ in range(4)]
    seen: dict[str, list] = {"A": [], "B": []}
    image = torch.rand(1, 2, 5, 6, dtype=torch.float64)
    disp = 2 * torch.rand(1, 2, 5, 6, dtype=torch.float64) - 1

    def run(who, enter_after, leave_after, done_enter, done_leave):
        if enter_after is not None:
            steps[enter_after].wait(10)
        with fastreg.use_backend(names[who]):
            done_enter.set()
            steps[leave_after].wait(10)
            seen[who] += [fastreg.get_backend(), _backend.select("warp", image.device), fastreg.warp(image, disp)]
        seen[who].append(fastreg.get_backend())
        done_leave.set()

    ta = threading.Thread(target=run, args=("A", None, 1, steps[0], steps[2]))
    tb = threading.Thread(target=run, args=("B", 0, 2, steps[1], steps[3]))
    ta.start()
    tb.start()
    ta.join(20)
    tb.join(20)
    assert seen["A"][:2] == ["reference", "reference"] and seen["A"][3] is None
    assert seen["B"][0] == names["B"] and seen["B"][1] == _backend.select("warp", image.device) and seen["B"][3] is None
    torch.testing.assert_close(seen["A"][2], seen["B"][2], rtol=1e-12, atol=1e-12)
    assert fastreg.get_backend() is None


def test_new_threads_use_the_process_default():
    fastreg.set_backend("reference")
    try:
        with fastreg.use_backend("cpu" if "cpu" in fastreg.available_backends() else None):
            got = []
            t = threading.Thread(target=lambda: got.append(fastreg.get_backend()))
            t.start()
            t.join(10)
        assert got == ["reference"]
    finally:
        fastreg.set_backend(None)


def test_compiled_op_follows_the_block():
    image = torch.rand(1, 1, 6, 7)
    disp = 3 * torch.rand(1, 2, 6, 7) - 1.5
    compiled = torch.compile(fastreg.warp, fullgraph=True, backend="eager")
    with fastreg.use_backend("reference"):
        torch.testing.assert_close(compiled(image, disp), fastreg.warp(image, disp))
    with fastreg.use_backend(None):
        torch.testing.assert_close(compiled(image, disp), fastreg.warp(image, disp))


def test_names_are_case_insensitive_and_checked():
    with fastreg.use_backend("REFERENCE"):
        assert fastreg.get_backend() == "reference"
    with fastreg.use_backend("Auto"):
        assert fastreg.get_backend() is None
    with pytest.raises(ValueError, match="backend"):
        fastreg.use_backend("opencl")
    with pytest.raises(ValueError, match="backend"):
        fastreg.set_backend(3)


@pytest.mark.parametrize("value, expected, warns", [("CPU", "cpu", False), ("Reference", "reference", False),
                                                     ("auto", "None", False), ("bogus", "None", True)])
def test_environment_variable(value, expected, warns):
    code = "import fastreg; print(fastreg.get_backend())"
    env = dict(os.environ, FASTREG_BACKEND=value)
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
    assert ("FASTREG_BACKEND" in out.stderr) == warns
