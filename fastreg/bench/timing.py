"""Timing and peak memory of one call, forward and forward+backward.

Time: ``repeat`` timed calls after ``warmup`` untimed ones (at least one: it fills caches a
module keeps, such as VoxelMorph's grid buffer, and gives the output shape for the fixed
gradient). Implementations compared with each other run in rounds (round_times): each
round calls every one of them once, so their times are paired under the same machine
conditions. On CUDA each call is bracketed by CUDA events and the device is synchronized
before the times are read; on CPU ``time.perf_counter``.

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
    its events. The profiler's C++ side logs every start and stop to file descriptor 2;
    those lines are dropped (anything else written there meanwhile is passed on).
"""
from __future__ import annotations

import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Callable, Sequence

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
    return statistics.median(round_times([(call, reset)], device, repeat)[0])


class CallFailed(Exception):
    """Raised by round_times when calls[index] raised ``error``."""

    def __init__(self, index: int, error: Exception):
        super().__init__(f"call {index} failed: {error}")
        self.index, self.error = index, error


def round_times(calls: Sequence[tuple[Call, Call]], device: torch.device, repeat: int) -> list[list[float]]:
    """Seconds of every call in each of ``repeat`` rounds: times[i][r] is ``calls[i]`` in round r.

    A round runs each call once, in order (``reset()`` untimed before each): the calls of one
    round see the same machine (clock, the load of other tenants), so the ratio of two calls'
    times within a round is steadier than the ratio of medians taken one after the other.
    Warm the calls up first. Raises CallFailed naming the call that raised.
    """
    times = [[] for _ in calls]
    events = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    for _ in range(repeat):
        for i, (call, reset) in enumerate(calls):
            try:
                reset()
                if device.type == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    call()
                    end.record()
                    events.append((i, start, end))
                else:
                    start = time.perf_counter()
                    call()
                    times[i].append(time.perf_counter() - start)
            except Exception as exc:
                raise CallFailed(i, exc) from exc
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for i, start, end in events:
            times[i].append(start.elapsed_time(end) / 1e3)
    return times


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

    with _profiler_log_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
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


# Lines the profiler's C++ side writes to file descriptor 2: kineto's log of every start and
# stop, and the CPU allocator's warning (once per process) that a block allocated before the
# profiler started will be freed unseen, which is what measuring the call's own peak means.
_PROFILER_LOG = re.compile(
    rb"^(USDT:.*ActivityProfiler"
    rb"|\[W[^\]]* CPUAllocator\.cpp:\d+\] Memory block of unknown size was allocated before the profiling started)"
)


@contextlib.contextmanager
def _profiler_log_silenced():
    """Capture file descriptor 2 (what C++ writes, which Python's sys.stderr cannot
    redirect) while the profiler starts and stops; give back every captured line that is
    not the profiler's own start/stop log, so a real error message is never lost."""
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (embedded interpreters): nothing to silence
        yield
        return
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True) if not _PROFILER_LOG.match(line)]
            if kept:
                os.write(2, b"".join(kept))


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
