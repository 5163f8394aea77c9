"""Timing and peak memory of one call, forward and forward+backward.

Time: the median over ``repeat`` timed calls after ``warmup`` untimed ones (at least one:
it fills caches a module keeps, such as VoxelMorph's grid buffer, and gives the output
shape for the fixed gradient). On CUDA each call is bracketed by CUDA events and the
device is synchronized before the times are read; on CPU ``time.perf_counter``.

Forward+backward: the inputs named in ``grad_inputs`` are detached copies that require
grad; the output is back-propagated against a fixed random gradient made once; the
inputs' ``.grad`` are reset to None (untimed) before every call.

Peak memory, in bytes above what was allocated when the call started:
  * CUDA: ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before the
    call, after ``reset_peak_memory_stats()``.
  * CPU: one call under ``torch.profiler.profile(profile_memory=True)``; the profiler's
    memory events (every allocation by torch's CPU allocator +n bytes, every free -n
    bytes) are summed in time order and the maximum of the running sum is the peak. The
    CPU allocator has no cache, so this counts exactly the bytes of the tensors
    allocated during the call and alive at once (checked against known allocation
    sequences in tests/cli/test_bench.py, and by hand for warp and the VoxelMorph peer).
    Not seen: memory that does not come from torch's allocator (e.g. std::vector scratch
    inside a C++ kernel), allocations made on other threads (the profiler's state is
    thread-local; autograd runs CPU backward on the calling thread, so backward is
    seen), and frees of blocks allocated before the call. Resident-set growth
    (/proc VmHWM) was tried and rejected: glibc keeps freed memory resident and the
    counts drifted by several MiB. ``None`` ("n/a") if the profiler does not expose
    its events.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

Call = Callable[[], object]


def forward_call(fn: Callable[..., object], inputs: dict) -> tuple[Call, Call]:
    """(call, reset) running ``fn(**inputs)`` without building a graph."""

    def call():
        return fn(**inputs)

    return call, _nothing


def backward_call(fn: Callable[..., object], inputs: dict, grad_inputs: tuple[str, ...]) -> tuple[Call, Call]:
    """(call, reset) running ``fn(**inputs)`` and its backward against a fixed gradient.

    The inputs in ``grad_inputs`` are replaced by detached copies that require grad; the
    gradient of the output is drawn once (standard normal) from one untimed call.
    """
    if not grad_inputs:
        raise ValueError("grad_inputs: expected at least one input to differentiate, got none")
    leaves = {name: inputs[name].detach().clone().requires_grad_(True) for name in grad_inputs}
    args = {**inputs, **leaves}
    grads = [torch.randn_like(out) for out in _differentiable(fn(**args))]

    def call():
        outs = _differentiable(fn(**args))
        torch.autograd.backward(outs, grads)

    def reset():
        for leaf in leaves.values():
            leaf.grad = None

    return call, reset


def median_time(call: Call, reset: Call, device: torch.device, repeat: int, warmup: int) -> float:
    """Median seconds of ``call()`` over ``repeat`` runs after ``max(warmup, 1)`` untimed runs."""
    if repeat < 1:
        raise ValueError(f"repeat: expected a positive integer, got {repeat}")
    for _ in range(max(warmup, 1)):
        reset()
        call()
    if device.type == "cuda":
        return _median_time_cuda(call, reset, device, repeat)
    times = []
    for _ in range(repeat):
        reset()
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _median_time_cuda(call: Call, reset: Call, device: torch.device, repeat: int) -> float:
    events = []
    torch.cuda.synchronize(device)
    for _ in range(repeat):
        reset()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize(device)
    return statistics.median(s.elapsed_time(e) for s, e in events) / 1e3


def peak_memory(call: Call, reset: Call, device: torch.device) -> int | None:
    """Peak bytes allocated during one ``call()`` above the bytes allocated before it."""
    reset()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if device.type == "cpu":
        return _peak_memory_cpu(call)
    return None


def _peak_memory_cpu(call: Call) -> int | None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    try:
        events = prof.profiler.kineto_results.events()
        changes = sorted(
            (e.start_ns(), e.nbytes())
            for e in events
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
        )
    except AttributeError:
        return None
    running = peak = 0
    for _, nbytes in changes:
        running += nbytes
        peak = max(peak, running)
    return peak


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 28, repeat: int = 10) -> float:
    """Measured device copy bandwidth in bytes/s: (read + write) of a ``nbytes`` copy."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), _nothing, device, repeat, warmup=2)
    return 2 * nbytes / seconds


def _differentiable(out) -> list[torch.Tensor]:
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]


def _nothing() -> None:
    return None
