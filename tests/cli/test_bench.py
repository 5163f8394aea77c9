"""Smoke tests of fastreg.bench (timing, runner, warp cases) and the fastreg-bench CLI,
on tiny sizes: the JSON parses and holds positive times and consistent ratios, the
table prints, bad arguments name the option, peers compute what fastreg computes."""
import contextlib
import io
import json
import os
import statistics
import sys

import pytest
import torch

import fastreg
from fastreg.bench import Case, format_table, io_bytes, load_cases, run, shape_name, timing
from fastreg.bench.cases import REGISTRY
from fastreg.bench.cases import warp as warp_cases
from fastreg.cli.bench import main

TINY = ["--ops", "warp", "--sizes", "tiny", "--device", "cpu", "--repeat", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def json_rows():
    """One CLI run with every installed peer, forward and backward, as parsed JSON."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*TINY, "--json"])
    return code, json.loads(out.getvalue())


def test_json_has_times_ratios_and_bytes(json_rows):
    code, rows = json_rows
    assert code == 0
    assert {r["case"] for r in rows} == {c.name for c in warp_cases.cases("tiny", quick=True)}
    assert {r["impl"] for r in rows} >= {"fastreg", "vxm-grid_sample"}
    for r in rows:
        assert r["error"] is None, r
        assert r["op"] == "warp" and r["dtype"] == "float32" and r["device"].startswith("cpu")
        for phase in ("fwd", "fwd_bwd"):
            assert r[f"{phase}_ms"] > 0 and r[f"ratio_{phase}"] > 0
            assert r[f"{phase}_gbps"] == pytest.approx(r[f"{phase}_bytes"] / r[f"{phase}_ms"] / 1e6)
            assert isinstance(r[f"{phase}_peak_bytes"], int)
    for case in {r["case"] for r in rows}:
        group = [r for r in rows if r["case"] == case]
        ours = next(r for r in group if r["impl"] == "fastreg")
        assert ours["backend"] == "cpu" and ours["ratio_fwd"] == 1.0 and ours["ratio_fwd_bwd"] == 1.0
        for peer in group:
            assert peer["baseline"] == "fastreg[cpu]"
            for phase in ("fwd", "fwd_bwd"):  # the median of the per-round ratios
                rounds, base = peer[f"{phase}_rounds_ms"], ours[f"{phase}_rounds_ms"]
                assert len(rounds) == len(base) == 2
                assert peer[f"{phase}_ms"] == pytest.approx(statistics.median(rounds))
                assert peer[f"ratio_{phase}"] == pytest.approx(statistics.median(r / b for r, b in zip(rounds, base)))


def test_json_bytes_and_memory_of_warp(json_rows):
    _, rows = json_rows
    for r in rows:
        b, c, *spatial = r["dims"]
        image = b * c * torch.Size(spatial).numel() * 4
        disp = len(spatial) * torch.Size(spatial).numel() * 4
        assert r["fwd_bytes"] == 2 * image + disp  # image and disp read, output written
        assert r["fwd_bwd_bytes"] == r["fwd_bytes"] + 2 * image + disp  # grad in, two grads out
        assert r["fwd_peak_bytes"] >= image  # at least the output is allocated


def test_table_prints(capsys):
    assert main([*TINY, "--no-peers", "--no-backward"]) == 0
    out = capsys.readouterr().out
    header, titles, rule, *lines = out.strip().splitlines()
    assert "ratio = time / time of fastreg[cpu]" in header
    assert titles.split()[:4] == ["op", "case", "dtype", "impl"] and "ratio f+b" in titles
    assert set(rule) == {"-", " "}
    assert len(lines) == 2 and all(line.startswith("warp") and "fastreg[cpu]" in line for line in lines)


def test_output_is_the_table_alone(capfd):
    """Not a terminal: no progress lines, and nothing from the memory profiler's C++ log
    (it writes to file descriptor 2, so capfd sees what a user's terminal would)."""
    assert main(TINY) == 0
    out, err = capfd.readouterr()
    assert err == ""
    assert out.splitlines()[0].startswith("device cpu")


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_only_on_a_terminal_and_not_quiet(quiet, capfd, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main([*TINY, "--no-peers", "--no-backward", *(["--quiet"] if quiet else [])]) == 0
    err_lines = capfd.readouterr().err.splitlines()
    if quiet:
        assert err_lines == []
    else:
        assert len(err_lines) == 2 and all(line.startswith("... warp") for line in err_lines)


def test_profiler_silencing_passes_other_messages_on(capfd):
    with timing._profiler_log_silenced():
        os.write(2, b"USDT:2026-01-01 1:1 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(
            2,
            b"[W1202 06:33:56.625437242 CPUAllocator.cpp:245] Memory block of unknown size was allocated before "
            b"the profiling started, profiler results will not include the deallocation event\n",
        )
        os.write(2, b"a real error\n")
    assert capfd.readouterr().err == "a real error\n"


def test_plot_draws_the_ratios(tmp_path, capsys):
    path = tmp_path / "ratios.png"
    assert main([*TINY, "--quiet", "--plot", str(path)]) == 0
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["ratios.png"]  # no temporary file left


def test_plot_without_ratios_is_refused(tmp_path, capsys):
    assert main([*TINY, "--no-peers", "--quiet", "--plot", str(tmp_path / "r.png")]) == 2
    assert "--plot" in capsys.readouterr().err and not (tmp_path / "r.png").exists()


def test_dtype_and_backend_lists(capsys):
    lists = ["--dtype", "float64,float32", "--backends", "auto,reference"]
    assert main([*TINY, "--no-peers", "--no-backward", "--json", *lists]) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = [("float64", "cpu"), ("float64", "reference"), ("float32", "cpu"), ("float32", "reference")]
    assert [(r["dtype"], r["backend"]) for r in rows] == expected * 2
    assert all(r["fwd_ms"] > 0 and r["baseline"] == "fastreg[cpu]" for r in rows)


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--ops", "nope"], "--ops"),
        (["--ops", ""], "--ops"),
        (["--dtype", "int8"], "--dtype"),
        (["--sizes", "huge"], "--sizes"),
        (["--backends", "fast"], "--backends"),
        (["--repeat", "0"], "--repeat"),
        (["--warmup", "x"], "--warmup"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_arguments_name_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert option in capsys.readouterr().err


def test_backend_that_cannot_run_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--device", "cpu", "--backends", "cuda"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--backends" in err and "'cuda'" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the refusal without a GPU")
def test_cuda_device_without_gpu_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--device", "cuda"])
    assert "--device" in capsys.readouterr().err


def test_runner_backends_and_no_backward():
    cases = load_cases(["warp"], "tiny", quick=True)
    rows = run(cases, backends=["cpu", "reference"], peers=False, backward=False, repeat=1, warmup=0)
    assert [r["backend"] for r in rows] == ["cpu", "reference"] * len(cases)
    for cpu, ref in zip(rows[::2], rows[1::2]):
        assert ref["baseline"] == "fastreg[cpu]"
        assert ref["ratio_fwd"] == pytest.approx(ref["fwd_ms"] / cpu["fwd_ms"])
        assert ref["fwd_bwd_ms"] is None and ref["ratio_fwd_bwd"] is None and ref["fwd_bwd_peak_bytes"] is None
    assert "-" in format_table(rows).splitlines()[-1].split()


def test_runner_rejects_bad_values():
    with pytest.raises(ValueError, match="ops"):
        load_cases(["nope"])
    with pytest.raises(ValueError, match="sizes"):
        load_cases(["warp"], "huge")
    cases = load_cases(["warp"], "tiny", quick=True)
    with pytest.raises(ValueError, match="'cuda'"):
        run(cases, backends=["cuda"])
    with pytest.raises(ValueError, match="repeat"):
        run(cases, repeat=0)


def test_failing_peer_is_reported_not_fatal():
    def broken(x):
        raise RuntimeError("peer exploded")

    case = Case(
        op="warp",
        name="synthetic",
        make_inputs=lambda device, dtype: {"x": torch.randn(50, device=device, dtype=dtype)},
        ours=lambda x: x.exp(),
        peers={"broken": broken},
        grad_inputs=("x",),
        bytes_moved=lambda inputs: io_bytes(inputs, inputs["x"].nbytes, ("x",)),
    )
    ours, peer = run([case], repeat=1, warmup=0)
    assert ours["error"] is None and ours["fwd_ms"] > 0 and ours["fwd_bytes"] == 400
    assert peer["error"] == "RuntimeError: peer exploded" and peer["fwd_ms"] is None and peer["ratio_fwd"] is None
    assert "error: warp synthetic float32 broken: RuntimeError: peer exploded" in format_table([ours, peer])


# Ops whose peers compute exactly what fastreg computes. The lncc peers include MONAI's
# variant of the loss (clamped variances, its own smoothing terms) and the Learn2Reg peer
# of jacobian_stats computes two of its five numbers: same work, not the same values.
SAME_VALUE_OPS = ("warp", "integrate", "correlation")


def _tiny_cases():
    return [case for op in SAME_VALUE_OPS for case in REGISTRY[op].cases("tiny", quick=False)]


@pytest.mark.parametrize("case", _tiny_cases(), ids=lambda c: f"{c.op} {c.name}")
def test_peers_compute_what_fastreg_computes(case):
    """A ratio is fair only if every peer does the same work: outputs and grads agree (float64)."""
    inputs = case.make_inputs(torch.device("cpu"), torch.float64)
    results = {}
    for name, fn in {"fastreg": case.ours, **case.peers}.items():
        leaves = {k: v.clone().requires_grad_(k in case.grad_inputs) for k, v in inputs.items()}
        out = fn(**leaves)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        grads = ()
        if case.grad_inputs:
            weights = [torch.ones_like(o) * 0.5 for o in outs]
            grads = torch.autograd.grad(outs, [leaves[k] for k in case.grad_inputs], weights)
        results[name] = (*outs, *grads)
    ours = results.pop("fastreg")
    assert results, f"{case.op}: every case has at least one peer"
    for name, theirs in results.items():
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


def test_peak_memory_cpu_counts_live_bytes():
    def allocate():
        a = torch.empty(8_000_000, dtype=torch.uint8)
        b = torch.empty(2_000_000, dtype=torch.uint8)
        del a
        c = torch.empty(4_000_000, dtype=torch.uint8)
        return b, c

    assert timing.peak_memory(allocate, lambda: None, torch.device("cpu")) == 10_000_000
    x = torch.randn(1_000_000)
    assert timing.peak_memory(lambda: x.mul_(2), lambda: None, torch.device("cpu")) < 64  # the wrapped scalar at most


def test_backward_call_resets_grads_and_keeps_the_gradient_fixed():
    seen = []

    def fn(x):
        seen.append(x)
        return x * x

    x = torch.randn(7, dtype=torch.float64)
    call, reset = timing.backward_call(fn, {"x": x}, ("x",))
    call()
    leaf = seen[-1]
    first = leaf.grad.clone()
    assert leaf is not x and leaf.requires_grad and not x.requires_grad
    reset()
    assert leaf.grad is None
    call()
    torch.testing.assert_close(leaf.grad, first)  # same fixed gradient, not accumulated
    assert timing.median_time(call, reset, torch.device("cpu"), repeat=3, warmup=0) > 0


def test_round_times_interleave_the_calls_and_name_the_one_that_fails():
    order = []
    calls = [(lambda: order.append("a"), lambda: order.append("reset a")),
             (lambda: order.append("b"), lambda: order.append("reset b"))]
    times = timing.round_times(calls, torch.device("cpu"), repeat=3)
    assert order == ["reset a", "a", "reset b", "b"] * 3
    assert [len(t) for t in times] == [3, 3] and all(t > 0 for ts in times for t in ts)

    count = [0]

    def fails_third_time():
        count[0] += 1
        if count[0] == 3:
            raise RuntimeError("boom")

    with pytest.raises(timing.CallFailed) as failed:
        timing.round_times([calls[0], (fails_third_time, lambda: None)], torch.device("cpu"), repeat=5)
    assert failed.value.index == 1 and str(failed.value.error) == "boom"


def test_peer_failing_after_warmup_is_reported_and_the_others_are_timed():
    calls = [0]

    def flaky(x):
        calls[0] += 1
        if calls[0] == 3:  # after the warm-up call: inside the timed rounds
            raise RuntimeError("peer gave up")
        return x.exp()

    case = Case(op="warp", name="synthetic",
                make_inputs=lambda device, dtype: {"x": torch.randn(50, device=device, dtype=dtype)},
                ours=lambda x: x.exp(), peers={"flaky": flaky, "steady": lambda x: x.exp()},
                grad_inputs=("x",), bytes_moved=None)
    ours, peer, steady = run([case], repeat=4, warmup=1, backward=False)
    assert peer["error"] == "RuntimeError: peer gave up" and peer["fwd_ms"] is None and peer["ratio_fwd"] is None
    assert ours["error"] is None and len(ours["fwd_rounds_ms"]) == 4
    assert steady["error"] is None and steady["ratio_fwd"] > 0 and len(steady["fwd_rounds_ms"]) == 4


def test_shape_name():
    assert shape_name((1, 1, 96, 96, 96)) == "1x1x96^3"
    assert shape_name((1, 1, 160, 192, 224)) == "1x1x160x192x224"
    assert shape_name((1, 3, 1024, 1024)) == "1x3x1024^2"


def test_warp_cases_time_the_public_op_on_the_listed_shapes():
    assert all(c.ours.func is fastreg.warp and c.op == "warp" for c in warp_cases.cases("tiny", quick=False))
    assert [c.dims for c in warp_cases.cases("large", quick=False)] == [
        (1, 1, 96, 96, 96), (1, 3, 1024, 1024), (8, 1, 224, 224), (1, 1, 160, 192, 224)
    ]
    assert [c.name for c in warp_cases.cases("default", quick=False)] == [
        "3d 1x1x96^3 trilinear", "2d 1x3x1024^2 bilinear", "2d 8x1x224^2 bilinear"
    ]


def test_peers_hold_one_module_per_dtype():
    """A peer module keeps buffers of the dtype it first saw: switching dtypes in one
    run must not turn into a peer error (VoxelMorph 0.3.4 caches its meshgrid)."""
    rows = run(load_cases(["warp"], "tiny", quick=True), dtypes=[torch.float16, torch.bfloat16, torch.float64],
               backward=False, repeat=1, warmup=0)
    assert len(rows) == 3 * 2 * (1 + len(warp_cases.cases("tiny", quick=True)[0].peers))
    assert [r["error"] for r in rows] == [None] * len(rows)
