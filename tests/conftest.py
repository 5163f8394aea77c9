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


def pytest_collection_modifyitems(items):
    """Mark `gpu` every test that touches the CUDA or Triton backends (scripts/gpu_check.sh
    runs only these on a GPU machine): the `backend`/`device` fixtures' cuda and triton
    cases, tests marked `cuda`, and tests in files or with names about Triton or CUDA."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        touches = params.get("backend") in ("cuda", "triton") or item.get_closest_marker("cuda") is not None
        words = item.nodeid.lower()
        if touches or "triton" in words or "cuda" in words:
            item.add_marker(pytest.mark.gpu)


def backend_device(name: str) -> torch.device:
    """The device whose tensors backend `name` runs in the tests."""
    if name == "cuda" or (name == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(SEED + zlib.crc32(request.node.nodeid.encode()))
    yield


def _forced(name: str):
    if name not in fastreg.available_backends():
        pytest.skip(f"backend {name!r} is not available here")
    with fastreg.use_backend(name):
        yield name


@pytest.fixture(params=KERNEL_BACKENDS)
def backend(request):
    """Each kernel backend that can run here, forced for the duration of the test."""
    yield from _forced(request.param)


@pytest.fixture
def device(backend) -> torch.device:
    return backend_device(backend)


@pytest.fixture(params=("reference", *KERNEL_BACKENDS))
def any_backend(request):
    """Every backend that can run here, the reference included, forced during the test."""
    yield from _forced(request.param)


@pytest.fixture
def any_device(any_backend) -> torch.device:
    return backend_device(any_backend)


# Displacement patterns along the last axis that steer the CPU's SIMD blocks through each way
# of reading (and, backward, scattering) the cell rows. 8-voxel AVX2 blocks: offsets in one
# run (one window), two runs whose windows overlap or lie in other rows (two windows), and no
# runs (one load per lane). 16-voxel AVX-512 blocks (2-D): cells over several rows of the
# first axis, lanes sharing cells, and blocks whose cells span too many rows or columns for
# their windows (they fall back to the 8-voxel path). Fractions stay 0.2 or more from a voxel
# boundary, so float32 and float64 positions share their cells (no gradient kinks between
# them).
BLOCK_PATTERNS = (
    "one run", "drop mid-block", "rise mid-block", "other row mid-block", "alternating",
    "rows across the block", "too many rows", "shared cells", "too many columns",
)


def _block_pattern(pattern: str, x: torch.Tensor, ndim: int) -> torch.Tensor:
    """(ndim, W) displacement of a row with last-axis index x, for BLOCK_PATTERNS."""
    lane = x % 8
    base = torch.tensor([0.3, -0.7, 1.4][:ndim], dtype=torch.float64).view(ndim, 1).repeat(1, x.numel())
    if pattern == "drop mid-block":  # lanes 5..7 one voxel back: their window overlaps the first
        base[-1] -= (lane >= 5).double()
    elif pattern == "rise mid-block":
        base[-1] += (lane >= 3).double()
    elif pattern == "other row mid-block":  # lanes 3..7 in the next row of the first axis
        base[0] += (lane >= 3).double()
    elif pattern == "alternating":
        base[-1] -= (lane % 2).double()
    elif pattern == "rows across the block":  # up to 5 rows of the first axis per 16 voxels
        base[0] += (0.3 * (x % 16)).floor().double()
    elif pattern == "too many rows":  # 11 rows per 16 voxels
        base[0] += (0.7 * (x % 16)).floor().double()
    elif pattern == "shared cells":  # pairs of lanes in one cell
        base[-1] -= (x % 16 // 2).double()
    elif pattern == "too many columns":  # 46 columns per 16 voxels
        base[-1] += 2 * (x % 16).double()
    return base


@pytest.fixture
def block_field():
    """block_field(pattern, shape, batch, dtype, device): a displacement (batch, ndim, *shape)
    in voxels following BLOCK_PATTERNS along the last axis, with noise of 0.05 voxel."""

    def make(pattern, shape, batch=2, dtype=torch.float32, device="cpu"):
        ndim = len(shape)
        x = torch.arange(shape[-1])
        row = _block_pattern(pattern, x, ndim).view(1, ndim, *[1] * (ndim - 1), shape[-1])
        field = row.expand(batch, ndim, *shape) + 0.05 * (2 * torch.rand(batch, ndim, *shape, dtype=torch.float64) - 1)
        return field.to(dtype=dtype, device=device)

    return make
