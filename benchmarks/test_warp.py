"""pytest-benchmark suite of the warp cases (fastreg.bench.cases.warp, "quick" sizes):
fastreg and every installed peer, forward and forward+backward, on the GPU when there is
one. Benchmarks of one case and phase share a group, so pytest-benchmark's table ranks
fastreg against its peers; extra_info holds the byte floor of the call."""
import pytest
import torch

from fastreg.bench import timing
from fastreg.bench.cases import warp

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = warp.cases("quick", quick=True)
IMPLS = [pytest.param(case, impl, id=f"{case.name}-{impl}") for case in CASES for impl in ("fastreg", *case.peers)]


@pytest.mark.parametrize("phase", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("case, impl", IMPLS)
def test_warp(benchmark, case, impl, phase):
    fn = case.ours if impl == "fastreg" else case.peers[impl]
    inputs = case.make_inputs(DEVICE, torch.float32)
    if phase == "fwd":
        call, reset = timing.forward_call(fn, inputs)
    else:
        call, reset = timing.backward_call(fn, inputs, case.grad_inputs)
    benchmark.group = f"warp {case.name} {phase}"
    benchmark.extra_info["bytes"] = case.bytes_moved(inputs)[phase == "fwd_bwd"]
    benchmark.extra_info["device"] = str(DEVICE)

    def synchronized():
        call()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)

    benchmark.pedantic(synchronized, setup=reset, rounds=5, warmup_rounds=1)
