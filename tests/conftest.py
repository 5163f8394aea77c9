"""Shared test fixtures: backends to run, devices, and a fresh random seed per run.

Every run draws a new seed (printed in the header and, for -q runs such as CI's, in the
final summary; set FASTREG_TEST_SEED to replay it),
so inputs are fresh random draws, never zeros or ones. Without a GPU, Triton kernels run
on CPU tensors through the interpreter (TRITON_INTERPRET=1, set before Triton loads).
"""
import os
import random
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastreg  # noqa: E402

KERNEL_BACKENDS = ("cpu", "cuda", "triton")
SEED = int(os.environ.get("FASTREG_TEST_SEED", random.SystemRandom().randrange(2**31)))


def _seed_line() -> str:
    return f"fastreg: backends {fastreg.available_backends()}, seed {SEED} (FASTREG_TEST_SEED to replay)"


def pytest_report_header(config):
    return [_seed_line()]


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(_seed_line())  # -q hides the header


def backend_device(name: str) -> torch.device:
    """The device whose tensors backend `name` runs in the tests."""
    if name == "cuda" or (name == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(SEED + zlib.crc32(request.node.nodeid.encode()))
    yield


@pytest.fixture(params=KERNEL_BACKENDS)
def backend(request):
    """Each kernel backend that can run here, forced for the duration of the test."""
    name = request.param
    if name not in fastreg.available_backends():
        pytest.skip(f"backend {name!r} is not available here")
    with fastreg.use_backend(name):
        yield name


@pytest.fixture
def device(backend) -> torch.device:
    return backend_device(backend)
