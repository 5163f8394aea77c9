"""fastreg.train.fit on a tiny model and pair stream: learning, exact resume, checkpoints,
validation, logs, precision options and bad input (everything before any step or write)."""
import csv
import importlib.util
import math

import pytest
import torch

from fastreg.train import checkpoint, fit
from fastreg.train.validate import evaluate
from fastreg.train.stream import micro_batch
from tiny import TinyDrawn, TinyNet, TinyPairs, tiny_loss

QUIET = dict(progress=False, tensorboard=False)


def run(out, steps, *, seed, resume=False, **kw):
    """A TinyNet initialised from ``seed`` trained by fit (a fresh model object per call, as a
    new process would make) on ``data`` (default TinyPairs(seed))."""
    torch.manual_seed(seed)
    model = TinyNet(dropout=kw.pop("dropout", 0.0))
    data = kw.pop("data", None)
    result = fit(model, TinyPairs(seed=seed) if data is None else data, tiny_loss, steps=steps, out=out, resume=resume, **QUIET, **kw)
    return model, result


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_training_lowers_the_validation_loss():
    torch.manual_seed(0)
    model = TinyNet()
    val = TinyPairs(seed=99).take(0, 8)
    before = evaluate(model, [val], tiny_loss, torch.device("cpu"), torch.no_grad())["loss"]
    result = fit(model, TinyPairs(seed=1, batch_size=4), tiny_loss, steps=15, lr=1e-2, **QUIET)
    after = evaluate(model, [val], tiny_loss, torch.device("cpu"), torch.no_grad())["loss"]
    assert result.step == 15 and not result.interrupted
    assert after < 0.9 * before


def test_resumed_run_is_bit_identical_to_one_run(tmp_path):
    """Dropout (torch's generator), gradient accumulation, clipping, a restarting cosine
    schedule, EMA and validation: stopped at step 3 and resumed, the weights, the EMA and the
    logged losses equal those of a run straight to step 6."""
    seed = torch.randint(0, 2**30, ()).item()
    opts = dict(grad_accum=2, clip_grad=0.5, schedule="cosine_warm_restarts", T_0=2, lr=1e-2, ema=0.8,
                validation=TinyPairs(seed=seed + 1, labels=True), validate_every=2, best="dice",
                checkpoint_every=2, dropout=0.3, data=TinyPairs(seed=seed))
    straight, r1 = run(tmp_path / "a", 6, seed=seed, **opts)
    run(tmp_path / "b", 3, seed=seed, **opts)
    resumed, r2 = run(tmp_path / "b", 6, seed=seed + 7, resume=True, **opts)  # init and RNG from the checkpoint
    assert r1.step == r2.step == 6
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    ema_a = torch.load(tmp_path / "a/checkpoints/step-00000006.pt", weights_only=False)["ema"]
    ema_b = torch.load(tmp_path / "b/checkpoints/step-00000006.pt", weights_only=False)["ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert [r["loss"] for r in rows(tmp_path / "a/train.csv")] == [r["loss"] for r in rows(tmp_path / "b/train.csv")]
    assert rows(tmp_path / "a/validation.csv") == rows(tmp_path / "b/validation.csv")
    assert r1.best == r2.best and r1.best["metric"] == "dice"
    assert [p.name for p in checkpoint.step_files(tmp_path / "b")] == ["step-00000004.pt", "step-00000006.pt"]
    assert torch.load(checkpoint.best_path(tmp_path / "b"), weights_only=False)["step"] == r2.best["step"]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # skipped first steps
def test_non_finite_steps_are_skipped_and_too_many_stop_the_run(capsys):
    """A NaN loss at the 3rd and 4th calls (an overflow, say): those steps leave the weights
    and Adam's state alone and are counted; the run goes on. A loss that stays NaN raises
    after MAX_NONFINITE steps with the weights of before them."""
    from fastreg.train import loop

    calls = []

    def flaky(batch, disp):
        out = tiny_loss(batch, disp)
        calls.append(len(calls))
        if len(calls) in (3, 4):
            out["loss"] = out["loss"] * float("nan")
        return out

    torch.manual_seed(0)
    model = TinyNet()
    seen = []
    original = torch.optim.Adam.step

    def step(self, *args, **kw):
        seen.append(len(calls))
        return original(self, *args, **kw)

    torch.optim.Adam.step = step
    try:
        result = fit(model, TinyPairs(seed=1), flaky, steps=6, lr=1e-2, **QUIET)
    finally:
        torch.optim.Adam.step = original
    assert result.step == 6 and result.skipped == 2 and seen == [1, 2, 5, 6]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert capsys.readouterr().err.count("non-finite loss or gradient, step skipped") == 2

    torch.manual_seed(0)
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def broken(batch, disp):
        out = tiny_loss(batch, disp)
        out["loss"] = out["loss"] * float("inf") * 0.0
        return out

    with pytest.raises(FloatingPointError, match=f"{loop.MAX_NONFINITE} steps in a row"):
        fit(model, TinyPairs(seed=1), broken, steps=50, **QUIET)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_workers_draw_the_same_stream(tmp_path):
    seed = torch.randint(0, 2**30, ()).item()
    a, _ = run(None, 3, seed=seed)
    b, _ = run(None, 3, seed=seed, workers=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_accumulation_equals_the_larger_batch():
    """Two micro-batches of 2 per step = one batch of 4: the same items (the indexed stream) and
    the loss divided by the number of micro-batches."""
    seed = torch.randint(0, 2**30, ()).item()
    a, _ = run(None, 3, seed=seed, data=TinyPairs(seed=seed, batch_size=2), grad_accum=2)
    b, _ = run(None, 3, seed=seed, data=TinyPairs(seed=seed, batch_size=4))
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_cosine_warm_restarts_step_once_per_step(tmp_path):
    lr, eta_min, t0 = 1e-2, 1e-4, 2
    run(tmp_path, 7, seed=0, schedule="cosine_warm_restarts", lr=lr, eta_min=eta_min, T_0=t0, T_mult=2, grad_accum=2)
    expected, t_cur, t_i = [], 0, t0
    for _ in range(7):  # the lr each step used: restarts after 2, then 4 steps
        expected.append(eta_min + (lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2)
        t_cur += 1
        if t_cur == t_i:
            t_cur, t_i = 0, t_i * 2
    logged = [float(r["lr"]) for r in rows(tmp_path / "train.csv")]
    assert logged == pytest.approx(expected, rel=1e-9)


def test_drawn_stream_resumes_exactly_whatever_the_workers(tmp_path):
    seed = torch.randint(0, 2**30, ()).item()
    a, _ = run(tmp_path / "a", 4, seed=seed, data=TinyDrawn(seed=seed))
    run(tmp_path / "b", 2, seed=seed, data=TinyDrawn(seed=seed))
    b, _ = run(tmp_path / "b", 4, seed=seed, data=TinyDrawn(seed=seed), resume=True, workers=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    data = TinyDrawn(seed=seed)
    rank0, rank1 = micro_batch(data, 3, 0, 2), micro_batch(data, 3, 1, 2)
    assert not torch.equal(rank0["fixed"], rank1["fixed"])  # ranks draw distinct batches
    assert torch.equal(micro_batch(data, 7, 0, 1)["fixed"], rank1["fixed"])  # batch 3 * 2 + 1 of the stream


def test_plain_iterable_data_resumes_by_skipping(tmp_path):
    seed = torch.randint(0, 2**30, ()).item()
    batches = [TinyPairs(seed=seed).take(2 * i, 2) for i in range(4)]
    a, _ = run(tmp_path / "a", 4, seed=seed, data=batches)
    run(tmp_path / "b", 2, seed=seed, data=batches)
    b, _ = run(tmp_path / "b", 4, seed=seed, data=batches, resume=True)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_trains_and_checkpoints_its_scaler(tmp_path, amp):
    _, result = run(tmp_path, 2, seed=0, amp=amp, clip_grad=1.0)
    state = torch.load(result.checkpoint, weights_only=False)
    assert torch.isfinite(torch.tensor(result.train["loss"]))
    assert (state["scaler"] is not None) == (amp == "fp16")


def test_atomic_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "x.pt"
    checkpoint.write_text_atomic(path, "good")

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        checkpoint.write_atomic(path, fail)
    assert path.read_text() == "good" and [p.name for p in tmp_path.iterdir()] == ["x.pt"]


# -- bad input: a clear error before any step, nothing overwritten --------------------------

def test_existing_checkpoints_need_resume(tmp_path):
    _, result = run(tmp_path, 1, seed=0)
    before = result.checkpoint.read_bytes()
    with pytest.raises(ValueError, match="already holds checkpoints"):
        run(tmp_path, 2, seed=0)
    assert result.checkpoint.read_bytes() == before


def test_checkpoint_of_another_model_or_version(tmp_path):
    _, result = run(tmp_path, 1, seed=0)
    before = result.checkpoint.read_bytes()
    with pytest.raises(ValueError, match="step-00000001.pt: the model's parameters differ"):
        fit(TinyNet(width=4), TinyPairs(), tiny_loss, steps=2, out=tmp_path, resume=True, **QUIET)
    assert result.checkpoint.read_bytes() == before
    state = torch.load(result.checkpoint, weights_only=False)
    state["fastreg"] = "0.0.1"
    torch.save(state, result.checkpoint)
    with pytest.raises(ValueError, match="written by fastreg 0.0.1"):
        run(tmp_path, 2, seed=0, resume=True)
    result.checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable fastreg checkpoint"):
        run(tmp_path, 2, seed=0, resume=True)


class Shapes(TinyPairs):
    def take(self, start, count):
        batch = super().take(start, count)
        return {**batch, "moving": batch["moving"][..., :-1]}


@pytest.mark.parametrize(
    "data, error, match",
    [
        ([], ValueError, "no batches"),
        (Shapes(), ValueError, "'moving' has shape .* pairs must match"),
        ([{"fixed": torch.rand(1, 1, 8, 8)}], ValueError, "missing \\['moving'\\]"),
        ([{"fixed": torch.rand(1, 1, 8, 8), "moving": torch.randint(0, 5, (1, 1, 8, 8))}], TypeError, "'moving' expected a floating"),
        (42, TypeError, "data: expected an iterable"),
    ],
)
def test_bad_data_fails_before_writing(tmp_path, data, error, match):
    with pytest.raises(error, match=match):
        fit(TinyNet(), data, tiny_loss, steps=2, out=tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(optimizer="sgd"), "optimizer: expected one of"),
        (dict(amp="fp8"), "amp: expected"),
        (dict(ema=1.5), "ema: expected"),
        (dict(steps=0), "steps: expected a positive int"),
        (dict(best="accuracy"), "best: expected one of"),
        (dict(validate_every=2), "validation: validate_every > 0 needs"),
        (dict(validation=TinyPairs(), validate_every=1, best="dice"), "best: the validation gives no 'dice'"),
        (dict(grad_accum=0), "grad_accum: expected a positive int"),
        (dict(clip_grad=-1.0), "clip_grad: expected"),
    ],
)
def test_bad_arguments(tmp_path, kw, match):
    kw = {"steps": 2, **kw}
    with pytest.raises(ValueError, match=match):
        fit(TinyNet(), TinyPairs(), tiny_loss, out=tmp_path / "run", **QUIET, **kw)
    assert not (tmp_path / "run").exists()


def test_progress_bar_and_tensorboard(tmp_path, capsys):
    torch.manual_seed(0)
    fit(TinyNet(), TinyPairs(), tiny_loss, steps=2, out=tmp_path, validation=TinyPairs(seed=3), validate_every=1,
        best="cc", progress=True, tensorboard=True)
    err = capsys.readouterr().err
    assert "2/2" in err and "val cc=" in err and "step/s" in err
    if importlib.util.find_spec("tensorboard") is not None:  # optional: logged to when installed
        assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir())
    else:
        assert not (tmp_path / "tensorboard").exists()
    assert list(rows(tmp_path / "validation.csv")[0]) == ["step", "loss", "cc", "mi", "folding_percent", "sdlogj"]
    # resumed, before its first validation the bar shows the best recorded value, not nan
    fit(TinyNet(), TinyPairs(), tiny_loss, steps=3, out=tmp_path, validation=TinyPairs(seed=3), validate_every=2,
        best="cc", progress=True, tensorboard=False, resume=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "best cc=" in err and "nan" not in err


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one():
    seed = torch.randint(0, 2**30, ()).item()
    eager, _ = run(None, 2, seed=seed)
    compiled, _ = run(None, 2, seed=seed, compile=True)
    for a, b in zip(eager.state_dict().values(), compiled.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
