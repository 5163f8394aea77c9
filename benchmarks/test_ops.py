"""pytest-benchmark suite of every registered op family (fastreg.bench.cases.REGISTRY,
"quick" sizes): fastreg and every installed peer, forward and forward+backward (where the
case has inputs to differentiate), on the GPU when there is one. Benchmarks of one case
and phase share a group, so pytest-benchmark's table ranks fastreg against its peers;
extra_info holds the byte floor of the call."""
import pytest
import torch

from fastreg.bench import timing
from fastreg.bench.cases import REGISTRY

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IMPLS = [
    pytest.param(op, case, impl, phase, id=f"{op}-{case.name}-{impl}-{phase}")
    for op, module in REGISTRY.items()
    for case in module.cases("quick", quick=True)
    for impl in ("fastreg", *case.peers)
    for phase in (("fwd", "fwd_bwd") if case.grad_inputs else ("fwd",))
]


@pytest.mark.parametrize("op, case, impl, phase", IMPLS)
def test_op(benchmark, op, case, impl, phase):
    fn = case.ours if impl == "fastreg" else case.peers[impl]
    inputs = case.make_inputs(DEVICE, torch.float32)
    if phase == "fwd":
        call, reset = timing.forward_call(fn, inputs)
    else:
        call, reset = timing.backward_call(fn, inputs, case.grad_inputs)
    benchmark.group = f"{op} {case.name} {phase}"
    benchmark.extra_info["bytes"] = case.bytes_moved(inputs)[phase == "fwd_bwd"]
    benchmark.extra_info["device"] = str(DEVICE)

    def synchronized():
        call()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)

    benchmark.pedantic(synchronized, setup=reset, rounds=5, warmup_rounds=1)
