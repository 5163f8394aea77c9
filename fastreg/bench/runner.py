"""Run benchmark cases and report them: one row per (case, dtype, implementation).

For each case and dtype the runner draws one set of inputs and measures, on the same
inputs and in the same process, ``ours`` under each requested backend and every peer:
median forward time, median forward+backward time, peak memory of each
(fastreg.bench.timing). The timed calls run in rounds, each round calling every
implementation once (timing.round_times), so that a slow spell of the machine hits all of
them alike. From the case's ``bytes_moved`` it derives the achieved GB/s (the byte floor
divided by the median time) and, on GPU, the fraction of the measured copy bandwidth of
the device. ``ratio`` is the median over rounds of the row's time divided by the time of
the baseline, ``ours`` under the first backend, in the same round: for a peer, peer time /
ours time, so a ratio above 1 means fastreg is faster. A failing implementation gives a
row with ``error`` set instead of stopping the run.
"""
from __future__ import annotations

import math
import statistics
from typing import Callable, Sequence

import torch

from fastreg import _backend
from fastreg.bench import timing
from fastreg.bench.case import Case
from fastreg.bench.cases import REGISTRY, check_sizes

PHASES = ("fwd", "fwd_bwd")


def load_cases(ops: Sequence[str] | None = None, sizes: str = "default", quick: bool = False) -> list[Case]:
    """The registered cases of ``ops`` (all registered op families when None)."""
    check_sizes(sizes)
    ops = list(REGISTRY) if ops is None else list(ops)
    unknown = [op for op in ops if op not in REGISTRY]
    if unknown:
        raise ValueError(f"ops: unknown op family {unknown}; registered: {sorted(REGISTRY)}")
    return [case for op in ops for case in REGISTRY[op].cases(sizes, quick)]


def check_backends(backends: Sequence[str | None], device: torch.device) -> None:
    """Raise ValueError naming the backend if one cannot run tensors on ``device``."""
    for name in backends:
        with _backend.use_backend(name):
            _backend.select("", device)


def run(
    cases: Sequence[Case],
    *,
    device: torch.device | str = "cpu",
    dtypes: Sequence[torch.dtype] = (torch.float32,),
    backends: Sequence[str | None] = (None,),
    repeat: int = 5,
    warmup: int = 1,
    peers: bool = True,
    backward: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Measure ``cases``; returns one dict per (case, dtype, implementation).

    backends: fastreg backends to run ``ours`` under (None: the one the input device
    picks). Keys of each row: op, case, dims, device, dtype, impl, backend, baseline,
    fwd_ms, fwd_bwd_ms, fwd_gbps, fwd_bwd_gbps, fwd_copy_frac, fwd_bwd_copy_frac,
    fwd_peak_bytes, fwd_bwd_peak_bytes, fwd_bytes, fwd_bwd_bytes, ratio_fwd,
    ratio_fwd_bwd, fwd_rounds_ms, fwd_bwd_rounds_ms (the time of each round), copy_gbps,
    error (None when the implementation ran). A value that was not measured (no backward,
    no byte count, CPU copy fraction) is None.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but torch.cuda.is_available() is False")
    if not backends:
        raise ValueError("backends: expected at least one backend (None for the device default)")
    check_backends(backends, device)
    if repeat < 1:
        raise ValueError(f"repeat: expected a positive integer, got {repeat}")
    if warmup < 0:
        raise ValueError(f"warmup: expected a non-negative integer, got {warmup}")
    copy = timing.copy_bandwidth(device) if device.type == "cuda" else None
    context = {"device": describe_device(device), "copy_gbps": None if copy is None else copy / 1e9}
    measure = _Measure(device, repeat, warmup, backward)

    rows = []
    for case in cases:
        for dtype in dtypes:
            inputs = case.make_inputs(device, dtype)
            nbytes = case.bytes_moved(inputs) if case.bytes_moved is not None else (None, None)
            base = {**context, "op": case.op, "case": case.name, "dims": list(case.dims), "dtype": _dtype_name(dtype)}
            impls = []  # (row, backend to run under, fn)
            for name in backends:
                with _backend.use_backend(name):
                    resolved = _backend.select(case.op_name or case.op, device)
                impls.append(({"impl": "fastreg", "backend": resolved}, name, case.ours))
            for peer, fn in (case.peers.items() if peers else ()):
                impls.append(({"impl": peer, "backend": None}, None, fn))
            group = measure(case, impls, inputs, lambda row: _log(log, f"{case.op} {case.name} {base['dtype']} "
                                                                       f"{impl_label(row)}"))
            reference = {phase: group[0][f"{phase}_times"] for phase in PHASES}
            for row in group:
                row["baseline"] = f"fastreg[{group[0]['backend']}]"
                for phase, floor in zip(PHASES, nbytes):
                    times, base_times = row.pop(f"{phase}_times"), reference[phase]
                    seconds = None if times is None else statistics.median(times)
                    row[f"{phase}_rounds_ms"] = None if times is None else [t * 1e3 for t in times]
                    row[f"{phase}_ms"] = None if seconds is None else seconds * 1e3
                    row[f"{phase}_bytes"] = floor
                    gbps = None if (seconds is None or floor is None) else floor / seconds / 1e9
                    row[f"{phase}_gbps"] = gbps
                    row[f"{phase}_copy_frac"] = None if (gbps is None or copy is None) else gbps * 1e9 / copy
                    ok = times is not None and base_times is not None and all(base_times)
                    row[f"ratio_{phase}"] = statistics.median(t / b for t, b in zip(times, base_times)) if ok else None
                rows.append({**base, **row})
    return rows


class _Measure:
    """Times (paired in rounds) and peak memory of the implementations of one case."""

    def __init__(self, device: torch.device, repeat: int, warmup: int, backward: bool):
        self.device, self.repeat, self.warmup, self.backward = device, repeat, warmup, backward

    def __call__(self, case: Case, impls: Sequence[tuple[dict, str | None, Callable]], inputs: dict,
                 log: Callable[[dict], None]) -> list[dict]:
        """One row per implementation: ``impls`` holds (row, backend, fn); each row gains
        ``{phase}_times`` (seconds per round, None if not measured), ``{phase}_peak_bytes``
        and ``error``."""
        rows = []
        for row, _, _ in impls:
            log(row)
            rows.append({**row, "error": None, **{f"{p}_{k}": None for p in PHASES for k in ("times", "peak_bytes")}})
        phases = ["fwd"] + (["fwd_bwd"] if self.backward and case.grad_inputs else [])
        for phase in phases:
            live = {}  # row index -> (call, reset) under the implementation's backend
            for i, (_, backend, fn) in enumerate(impls):
                if rows[i]["error"] is None:
                    try:
                        with _backend.use_backend(backend):
                            calls = self._calls(phase, fn, inputs, case)
                        live[i] = self._warm(_on_backend(backend, calls))
                    except Exception as exc:  # a failing implementation is reported, not fatal
                        self._fail(rows[i], exc)
            while live:
                try:
                    times = timing.round_times(list(live.values()), self.device, self.repeat)
                    break
                except timing.CallFailed as failed:
                    index = list(live)[failed.index]
                    self._fail(rows[index], failed.error)
                    del live[index]
            for j, (i, (call, reset)) in enumerate(live.items()):
                rows[i][f"{phase}_times"] = times[j]
                rows[i][f"{phase}_peak_bytes"] = timing.peak_memory(call, reset, self.device)
        return rows

    def _calls(self, phase: str, fn: Callable, inputs: dict, case: Case) -> tuple[timing.Call, timing.Call]:
        if phase == "fwd":
            return timing.forward_call(fn, inputs)
        return timing.backward_call(fn, inputs, case.grad_inputs)

    def _warm(self, calls: tuple[timing.Call, timing.Call]) -> tuple[timing.Call, timing.Call]:
        call, reset = calls
        for _ in range(max(self.warmup, 1)):
            reset()
            call()
        return calls

    @staticmethod
    def _fail(row: dict, exc: Exception) -> None:
        row["error"] = f"{type(exc).__name__}: {exc}"
        row.update({f"{p}_times": None for p in PHASES})


def _on_backend(backend: str | None, calls: tuple[timing.Call, timing.Call]) -> tuple[timing.Call, timing.Call]:
    """(call, reset) with ``call`` running under fastreg backend ``backend`` (None: the default)."""
    call, reset = calls

    def on_backend():
        with _backend.use_backend(backend):
            return call()

    return on_backend, reset


def impl_label(row: dict) -> str:
    return f"fastreg[{row['backend']}]" if row["impl"] == "fastreg" else row["impl"]


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} threads)"


def format_table(rows: Sequence[dict]) -> str:
    """Aligned text table of ``rows`` with a header line naming the device and baseline."""
    if not rows:
        return "no cases to run"
    gpu = any(r.get("copy_gbps") for r in rows)
    columns = [
        ("op", lambda r: r["op"]),
        ("case", lambda r: r["case"]),
        ("dtype", lambda r: r["dtype"]),
        ("impl", lambda r: r["impl"] + (f"[{r['backend']}]" if r["backend"] else "")),
    ]
    for phase, title in (("fwd", "fwd"), ("fwd_bwd", "fwd+bwd")):
        columns += [
            (f"{title} ms", _num(f"{phase}_ms", "{:.3f}")),
            ("GB/s", _num(f"{phase}_gbps", "{:.3g}")),
        ]
        if gpu:
            columns.append(("%copy", _num(f"{phase}_copy_frac", "{:.0%}")))
        columns.append(("peak MiB", _num(f"{phase}_peak_bytes", "{:.1f}", 1 / 2**20, measured=f"{phase}_ms")))
    columns += [("ratio fwd", _num("ratio_fwd", "{:.2f}")), ("ratio f+b", _num("ratio_fwd_bwd", "{:.2f}"))]

    cells = [[title for title, _ in columns]] + [[get(r) for _, get in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in rows:
        if r["error"]:
            lines.append(f"error: {r['op']} {r['case']} {r['dtype']} {r['impl']}: {r['error']}")
    first = rows[0]
    head = f"device {first['device']}, torch {torch.__version__}"
    if first.get("copy_gbps"):
        head += f", copy bandwidth {first['copy_gbps']:.0f} GB/s"
    head += f"; ratio = time / time of {first['baseline']} in the same run (> 1: fastreg is faster)"
    return "\n".join([head, *lines])


def _num(key: str, fmt: str, scale: float = 1.0, measured: str | None = None) -> Callable[[dict], str]:
    """Formatter of row[key]: "-" when not measured, "n/a" when ``measured`` ran but
    ``key`` could not be measured (peak memory without profiler events)."""

    def get(row: dict) -> str:
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a" if measured is not None and row.get(measured) is not None else "-"
        return fmt.format(value * scale)

    return get


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _log(log, message: str) -> None:
    if log is not None:
        log(message)
