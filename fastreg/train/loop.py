"""``fit``: the one training loop of fastreg (any model, any stream of pair batches, any loss).

One step = ``grad_accum`` micro-batches (forward under autocast, backward of loss /
grad_accum), gradient clipping, one optimizer step, one schedule step, one EMA update. Data
protocol and multi-process sharding: fastreg.train.stream; checkpoint contents and layout:
fastreg.train.checkpoint; logs: fastreg.train.log; validation metrics: fastreg.train.validate.

Exact resume: a run stopped after step k (Ctrl-C, a crash after a checkpoint, or ``steps`` = k)
and resumed with ``resume=True`` ends with the same weights, bit for bit on the CPU, as one
run straight through: the checkpoint restores model, optimizer, schedule, GradScaler, EMA and
every rank's RNG states, and indexed and drawn streams restart at micro-batch k * grad_accum.
"""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fastreg import _validate as check
from fastreg.train import checkpoint, distributed
from fastreg.train.log import MetricsLog
from fastreg.train.stream import check_batch, first_batches, micro_batches, to_device
from fastreg.train.validate import HIGHER_IS_BETTER, evaluate, loss_value, metric_names

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine_warm_restarts")
AMP = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
MAX_NONFINITE = 10  # skipped steps in a row before fit gives up (fit's docstring)


@dataclass
class FitResult:
    """What ``fit`` did: the last step reached, whether a signal stopped it, the last
    checkpoint written (None without ``out``), the best validation record, the last
    training and validation metrics, and this call's training steps: their seconds (without
    validation and checkpoints), the seconds of those spent waiting for batches, and the pairs
    trained on (all ranks), and the steps skipped for a non-finite loss or gradient."""

    step: int
    interrupted: bool
    checkpoint: Path | None
    best: dict | None
    train: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    seconds: float = 0.0
    data_seconds: float = 0.0
    pairs: int = 0
    skipped: int = 0


def fit(
    model: torch.nn.Module,
    data,
    loss,
    *,
    steps: int,
    out: str | Path | None = None,
    optimizer: str = "adam",
    lr: float = 1e-4,
    amsgrad: bool = False,
    weight_decay: float = 0.0,
    schedule: str = "constant",
    T_0: int = 1000,
    T_mult: int = 2,
    eta_min: float = 1e-5,
    grad_accum: int = 1,
    clip_grad: float | None = None,
    amp: str | None = None,
    compile: bool = False,
    ema: float | None = None,
    validation=None,
    validation_batches: int = 4,
    validate_every: int = 0,
    best: str = "loss",
    checkpoint_every: int = 0,
    keep_last: int = 2,
    resume: bool = False,
    workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    tensorboard: bool = True,
    log_every: int = 1,
    files: dict[str, str] | None = None,
) -> FitResult:
    """Train ``model`` for ``steps`` optimizer steps (in total, counting resumed ones).

    Args:
        model: ``model(fixed, moving) -> disp`` (B, ndim, *S) in voxels (fastreg.models).
        data: batches of pairs (fastreg.train.stream: an indexed or drawn stream resumes
            exactly without replay; wrap a map-style dataset of single pairs in Shuffled).
        loss: ``loss(batch, disp)`` -> a scalar tensor, or a dict with the scalar ``loss`` and
            other terms to log (scalars).
        steps: the step to train up to.
        out: the run's folder (checkpoints, CSV, TensorBoard, ``files``); None writes nothing.
        optimizer, lr, amsgrad, weight_decay: torch.optim.Adam or AdamW.
        schedule: "constant", or "cosine_warm_restarts" (torch's CosineAnnealingWarmRestarts
            with T_0 and T_mult in optimizer steps, down to eta_min), stepped every step.
        grad_accum: micro-batches per step. clip_grad: max global gradient norm (None: off).
        amp: None, "bf16" or "fp16" autocast (fp16 with a GradScaler). compile: torch.compile
            the model for the training forward.
        ema: decay of an exponential moving average of the weights (None: off); validation
            and best.pt use the average.
        validation: a stream like ``data`` (another seed); its first ``validation_batches``
            batches are drawn once (by every rank, so all fail alike on a bad stream) and scored
            every ``validate_every`` steps (0: never) by rank 0; ``best`` names the metric (fastreg.train.validate) that picks best.pt.
        checkpoint_every: steps between checkpoints (0: only at the end and on a signal);
            keep_last of them are kept.
        resume: continue from the newest checkpoint in ``out`` (a fresh start when there is
            none). Without it a folder that already holds checkpoints is an error.
        workers: DataLoader worker processes drawing an indexed stream (0: in this process).
        device: where to train (default: the model's device).
        progress: a tqdm bar on rank 0. tensorboard: also log to TensorBoard when installed.
        log_every: steps between rows of train.csv. files: {name: text} written into ``out``
            (atomically, rank 0) once every check has passed, e.g. the resolved recipe.

    Everything is checked (arguments, the checkpoint to resume, the first batch, the
    validation batches) before the first step or any write. SIGINT/SIGTERM (Ctrl-C) finish the
    current step, write a checkpoint and return with ``interrupted=True``; a second Ctrl-C
    stops at once.

    A step whose loss or gradient is not finite (NaN or inf; a bf16 or float32 overflow) is
    skipped: the weights and the optimizer's state stay as they were, the schedule advances,
    stderr gets a line and ``FitResult.skipped`` counts it (with fp16 the GradScaler does the
    same by itself). MAX_NONFINITE skipped steps in a row raise FloatingPointError: the run
    diverges whatever the batch, and the last checkpoint holds finite weights.
    """
    _check_args(steps, optimizer, schedule, amp, grad_accum, clip_grad, ema, best, keep_last, T_0, T_mult)
    for name, value in (("validate_every", validate_every), ("checkpoint_every", checkpoint_every),
                        ("workers", workers), ("validation_batches", validation_batches)):
        check.non_negative_int(value, name)
    check.non_negative_int(log_every, "log_every")
    if validate_every and validation is None:
        raise ValueError("validation: validate_every > 0 needs a validation stream")
    rank, world = distributed.rank_and_size()
    main = rank == 0
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    out = Path(out) if out is not None else None

    opt = _optimizer(model, optimizer, lr, amsgrad, weight_decay)
    if schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=T_0, T_mult=T_mult, eta_min=eta_min)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=True) if ema else None

    start, best_record, rng = 0, None, None
    existing = checkpoint.step_files(out) if out is not None else []
    if existing and not resume:
        raise ValueError(f"out: {out} already holds checkpoints (newest {existing[-1].name}); resume them or choose another folder")
    if existing:
        state = checkpoint.load(existing[-1], model, world)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        if averaged is not None and state["ema"] is not None:
            averaged.load_state_dict(state["ema"])
        start, best_record, rng = state["step"], state["best"], state["rng"][rank]

    batches = micro_batches(data, first=start * grad_accum, rank=rank, world_size=world, workers=workers)
    drawn = time.perf_counter()
    try:
        pending = next(batches)  # counted in the first step's time and data wait
    except StopIteration:
        raise ValueError("data: the stream yielded no batches (no readable pairs?)") from None
    pending_wait = time.perf_counter() - drawn
    check_batch(pending)
    val_batches = first_batches(validation, validation_batches) if validate_every else []
    if val_batches and best not in metric_names(val_batches):
        raise ValueError(f"best: the validation gives no {best!r} (it gives {', '.join(metric_names(val_batches))})")

    if out is not None and main:
        checkpoint.folder(out).mkdir(parents=True, exist_ok=True)
        for name, text in (files or {}).items():
            checkpoint.write_text_atomic(out / name, text)
    log = MetricsLog(out, start, tensorboard) if out is not None and main else None
    train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    if compile:
        train_model = torch.compile(train_model)
    autocast = (lambda: torch.autocast(device.type, dtype=AMP[amp])) if amp else contextlib.nullcontext
    if rng is not None:
        checkpoint.set_rng_state(rng)  # last: nothing above may draw from the restored generators

    stop = _SignalFlag()
    bar = _progress(progress and main, steps, start)
    result = FitResult(step=start, interrupted=False, checkpoint=existing[-1] if existing else None, best=best_record)
    last_saved = start
    tick, window_items, window_wait = time.perf_counter(), 0, 0.0

    def save(step: int) -> None:
        nonlocal last_saved
        rngs = distributed.gather(checkpoint.rng_state())
        last_saved = step
        if out is None or not main:
            return
        path = checkpoint.step_path(out, step)
        checkpoint.save(path, {
            "step": step, "model_signature": checkpoint.model_signature(model), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "ema": averaged.state_dict() if averaged is not None else None,
            "rng": rngs, "world_size": world, "best": result.best,
        })
        checkpoint.prune(out, keep_last)
        result.checkpoint = path

    with stop, contextlib.ExitStack() as closing:
        if bar is not None:
            closing.callback(bar.close)
        if log is not None:
            closing.callback(log.close)
        try:
            in_a_row = 0
            for step in range(start, steps):
                began = time.perf_counter()
                model.train()
                opt.zero_grad(set_to_none=True)
                terms: dict[str, float] = {}
                for a in range(grad_accum):
                    waited = time.perf_counter()
                    if pending is not None:
                        batch, pending, began = pending, None, began - pending_wait
                        waited -= pending_wait
                    else:
                        batch = next(batches, None)
                    if batch is None:
                        print(f"fastreg.train: the data ran out at step {step}", file=sys.stderr)
                        raise _DataExhausted
                    waited = time.perf_counter() - waited
                    window_wait += waited
                    result.data_seconds += waited
                    batch = to_device(check_batch(batch), device)
                    window_items += batch["fixed"].shape[0] * world
                    result.pairs += batch["fixed"].shape[0] * world
                    sync = train_model.no_sync() if world > 1 and a < grad_accum - 1 else contextlib.nullcontext()
                    with sync:
                        with autocast():
                            disp = train_model(batch["fixed"], batch["moving"])
                            out_loss = loss(batch, disp)
                        value = loss_value(out_loss)
                        (scaler.scale(value / grad_accum) if scaler is not None else value / grad_accum).backward()
                    for k, v in _terms(out_loss, value).items():
                        terms[k] = terms.get(k, 0.0) + v / grad_accum
                lr_now = opt.param_groups[0]["lr"]
                if scaler is None and not _finite_step(terms["loss"], model):
                    opt.zero_grad(set_to_none=True)
                    result.skipped += 1
                    in_a_row += 1
                    print(f"fastreg.train: step {step + 1}: non-finite loss or gradient, step skipped "
                          f"({in_a_row} in a row)", file=sys.stderr)
                    if in_a_row >= MAX_NONFINITE:
                        raise FloatingPointError(
                            f"fastreg.train: {in_a_row} steps in a row (the last: {step + 1}) gave a non-finite loss "
                            "or gradient; the weights are still those before them. Lower train.lr, set "
                            "train.clip_grad, or train without amp")
                else:
                    in_a_row = 0
                    if clip_grad is not None:
                        if scaler is not None:
                            scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                    if scaler is not None:
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                    if averaged is not None:
                        averaged.update_parameters(model)
                sched.step()
                done = step + 1
                result.step, result.train = done, terms
                result.seconds += time.perf_counter() - began
                if log is not None and log_every and (done % log_every == 0 or done == steps):
                    elapsed = time.perf_counter() - tick
                    log.write("train", done, {**terms, "lr": lr_now, "pairs_per_s": window_items / elapsed,
                                              "data_wait": window_wait / elapsed})
                    tick, window_items, window_wait = time.perf_counter(), 0, 0.0
                if main and val_batches and done % validate_every == 0:
                    scores = evaluate(averaged.module if averaged is not None else model, val_batches, loss, device, autocast())
                    result.validation = scores
                    if log is not None:
                        log.write("validation", done, scores)
                    if _improves(scores[best], result.best, best):
                        result.best = {"metric": best, "value": scores[best], "step": done}
                        if out is not None:
                            checkpoint.save(checkpoint.best_path(out), {
                                "step": done, "model_signature": checkpoint.model_signature(model),
                                "model": model.state_dict(),
                                "ema": averaged.state_dict() if averaged is not None else None,
                                "best": result.best, "validation": scores,
                            })
                if bar is not None:
                    bar.set_postfix(_postfix(terms, result), refresh=False)
                    bar.update(1)
                interrupted = distributed.any_rank(stop.raised, device)
                if interrupted or (checkpoint_every and done % checkpoint_every == 0):
                    save(done)
                if interrupted:
                    result.interrupted = True
                    break
        except _DataExhausted:
            pass
        if result.step != last_saved and not result.interrupted:
            save(result.step)
    return result


class _DataExhausted(Exception):
    pass


class _SignalFlag:
    """While active, the first SIGINT/SIGTERM sets ``raised`` (the loop stops after its step)
    and puts the previous handlers back, so a second Ctrl-C interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.raised = False
        self.previous = {}

    def _handle(self, signum, frame):
        self.raised = True
        self._restore()

    def _restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        self._restore()
        return False


def _check_args(steps, optimizer, schedule, amp, grad_accum, clip_grad, ema, best, keep_last, T_0, T_mult) -> None:
    if check.non_negative_int(steps, "steps") == 0:
        raise ValueError("steps: expected a positive int, got 0")
    check.choice(optimizer, "optimizer", OPTIMIZERS)
    check.choice(schedule, "schedule", SCHEDULES)
    if amp not in AMP:
        raise ValueError(f"amp: expected None, 'bf16' or 'fp16', got {amp!r}")
    for name, value in (("grad_accum", grad_accum), ("keep_last", keep_last), ("T_0", T_0), ("T_mult", T_mult)):
        if check.non_negative_int(value, name) == 0:
            raise ValueError(f"{name}: expected a positive int, got 0")
    if clip_grad is not None and not (isinstance(clip_grad, (int, float)) and clip_grad > 0):
        raise ValueError(f"clip_grad: expected None or a positive number, got {clip_grad!r}")
    if ema is not None and not (isinstance(ema, float) and 0.0 < ema < 1.0):
        raise ValueError(f"ema: expected None or a decay in (0, 1), got {ema!r}")
    check.choice(best, "best", tuple(HIGHER_IS_BETTER))


def _optimizer(model, name: str, lr: float, amsgrad: bool, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: it has no trainable parameters")
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, amsgrad=amsgrad, weight_decay=weight_decay)


def _finite_step(loss: float, model: torch.nn.Module) -> bool:
    """The step's loss and every gradient are finite (one reduction, one host sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return math.isfinite(loss) and (not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))))


def _terms(out, value: torch.Tensor) -> dict[str, float]:
    terms = {"loss": float(value.detach())}
    if isinstance(out, dict):
        terms.update({k: float(v.detach()) for k, v in out.items() if k != "loss" and isinstance(v, torch.Tensor) and v.numel() == 1})
    return terms


def _improves(value: float, record: dict | None, metric: str) -> bool:
    if math.isnan(value):
        return False
    if record is None:
        return True
    return value > record["value"] if HIGHER_IS_BETTER[metric] else value < record["value"]


def _progress(enabled: bool, steps: int, start: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True)


def _postfix(terms: dict, result: FitResult) -> dict:
    """The bar's fields: the step's loss and the last validation of the best-by metric (before
    this call's first validation, e.g. just after a resume, the best recorded value)."""
    shown = {"loss": f"{terms['loss']:.4g}"}
    if result.best is not None:
        metric = result.best["metric"]
        if metric in result.validation:
            shown[f"val {metric}"] = f"{result.validation[metric]:.4g}"
        else:
            shown[f"best {metric}"] = f"{result.best['value']:.4g}"
    return shown
