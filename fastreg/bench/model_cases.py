"""Model benchmarks: a training step and inference of each registration model, on
fastreg's ops against the same network with the same weights on the peers' ops
(fastreg.bench.peer_kernels: grid_sample warps, the VecInt loop, unfold + matmul
attention, convolution NCC in the loss).

Training step (the ``fwd_bwd`` phase of the rows): zero the gradients, predict the field,
warp the moving image, loss = 1 - LNCC(fixed, moved; 9^ndim box, squared cc) +
lambda * Grad-L2(field) (mean squared forward differences, averaged over axes), backward,
Adam step. Inference (the ``fwd`` phase): ``model(fixed, moving)`` without a graph.
The images are a smooth random image and the same image warped by a smooth random field
(2 voxels), both in [0, 1]. Both implementations start from the same weights, each with
its own Adam; they run in rounds (fastreg.bench.timing.round_times), so ``ratio`` is the
peer's time over fastreg's in the same round. Peak memory: fastreg.bench.timing.peak_memory
of one step after warm-up (Adam's state already allocated).

The losses are written here, not taken from fastreg.nn, so the benchmark does not depend on
which loss presets exist: DP-VFA's paper loss is this one with lambda = 1; the cascaded
U-Net's paper loss is soft Dice on labels + 0.75 Grad-L2, timed here with LNCC + 0.75 Grad-L2
(no labels in a synthetic pair).

Adding a model = one entry in MODELS: its registry name (fastreg.models.create), the
constructor arguments per size, the regulariser weight.
"""
from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

import fastreg
from fastreg import models
from fastreg.bench import timing
from fastreg.bench.case import shape_name
from fastreg.bench.cases import check_sizes
from fastreg.bench.peer_kernels import PEER_KERNELS, peer_lncc
from fastreg.bench.runner import describe_device
from fastreg.data import random_smooth_field
from fastreg.models.kernels import FASTREG

WINDOW = 9


@dataclass(frozen=True)
class ModelEntry:
    """How to benchmark one registered model.

    Attributes:
        kwargs: constructor arguments per size (a key of fastreg.bench.cases.SIZES); the
            ``ndim`` comes from the shape.
        regularization: weight lambda of Grad-L2 in the training loss.
        peer_kwargs: constructor arguments of the peer version on top of ``kwargs``: it
            turns off what fastreg's model does that the authors' code does not (the
            cascade's recomputed first level), so the peer is the authors' network.
        solo: per size, constructor arguments of a fastreg-only training row and of the
            inference rows, where the peer version does not fit (DP-VFA at 96x112x96: its
            peer was OOM-killed at 23.7 GB with the paper widths and at 18.9 GB with half
            the filters on the 24 GiB machine). A size missing from ``kwargs`` has no
            paired row.
    """

    kwargs: dict[str, dict]
    regularization: float
    peer_kwargs: dict = field(default_factory=dict)
    solo: dict[str, dict] = field(default_factory=dict)


# Sizes: "tiny" 2-D 32^2 with reduced widths (smoke tests), "quick" 3-D 32^3, "default"
# 3-D 48x56x48, "large" the CPU rows: 96x112x96 training steps (DP-VFA at the paper
# widths for fastreg alone: its unfold peer does not fit in 24 GiB even with half the
# filters; DP-Conv-C at the paper widths; the cascade with a quarter of its filters) and
# inference at 160x192x224, timed for fastreg alone.
SHAPES = {
    "tiny": [(1, 1, 32, 32)],
    "quick": [(1, 1, 32, 32, 32)],
    "default": [(1, 1, 48, 56, 48)],
    "large": [(1, 1, 96, 112, 96)],
}
INFERENCE_ONLY = {"large": [(1, 1, 160, 192, 224)]}
_NARROW = dict(channels=(8, 16, 16, 32, 32))
MODELS = {
    "dpvfa": ModelEntry(
        {"tiny": dict(_NARROW, attention=(8, 16, 16, 32, 32)), "quick": {}, "default": {}}, 1.0,
        solo={"large": {}}),
    "dpconvc": ModelEntry(
        {"tiny": dict(_NARROW, widths=(8, 16, 16, 32, 32)), "quick": {}, "default": {}, "large": {}}, 1.0),
    "cascade": ModelEntry(
        {"tiny": dict(widths=(4, 8)), "quick": dict(widths=(16, 32)), "default": dict(widths=(16, 32)),
         "large": dict(widths=(16, 32))}, 0.75, dict(recompute=False)),
}


@dataclass
class ModelCase:
    """One model at one input size: ``build()`` a fresh model, ``dims`` (B, 1, *S)."""

    model: str
    kwargs: dict
    dims: tuple[int, ...]
    regularization: float
    train: bool = True
    peer_kwargs: dict = field(default_factory=dict)
    peers: bool = True
    name: str = field(init=False)

    def __post_init__(self):
        ndim = len(self.dims) - 2
        extra = "".join(f" {k}={v}" for k, v in self.kwargs.items())
        self.name = f"{self.model} {ndim}d {shape_name(self.dims)}{extra}" + ("" if self.train else " (inference)")

    def build(self, peer: bool = False) -> models.RegistrationModel:
        """A fresh model; ``peer``: with ``peer_kwargs`` on top (the peer version's network)."""
        kwargs = {**self.kwargs, **self.peer_kwargs} if peer else self.kwargs
        return models.create(self.model, ndim=len(self.dims) - 2, **kwargs)


def model_cases(names: Sequence[str] | None = None, sizes: str = "default") -> list[ModelCase]:
    """The cases of the models ``names`` (every entry of MODELS when None) at ``sizes``."""
    check_sizes(sizes)
    names = list(MODELS) if names is None else list(names)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"models: unknown model {unknown}; benchmarked: {sorted(MODELS)}")
    out = []
    for name in names:
        entry = MODELS[name]
        kwargs = entry.kwargs.get(sizes)
        if kwargs is not None:
            out += [ModelCase(name, kwargs, dims, entry.regularization, True, entry.peer_kwargs)
                    for dims in SHAPES[sizes]]
        solo = entry.solo.get(sizes)
        if solo is not None:
            out += [ModelCase(name, solo, dims, entry.regularization, peers=False) for dims in SHAPES[sizes]]
        out += [ModelCase(name, kwargs if solo is None else solo, dims, entry.regularization, False)
                for dims in INFERENCE_ONLY.get(sizes, [])]
    return out


def grad_l2(disp: torch.Tensor) -> torch.Tensor:
    """Mean squared forward differences of ``disp`` (B, ndim, *S), averaged over the axes."""
    ndim = disp.dim() - 2
    total = 0.0
    for a in range(ndim):
        n = disp.shape[2 + a]
        total = total + (disp.narrow(2 + a, 1, n - 1) - disp.narrow(2 + a, 0, n - 1)).square().mean()
    return total / ndim


def make_pair(dims, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(fixed, moving) (B, 1, *S) in [0, 1]: a smooth random image and the same image warped
    by a smooth random field of 2 voxels."""
    spatial = dims[2:]
    img = random_smooth_field(spatial, batch=dims[0], magnitude=1.0, spacing=8, dtype=torch.float64)[:, :1]
    low, high = img.amin(), img.amax()
    fixed = ((img - low) / (high - low)).to(device=device, dtype=dtype)
    disp = random_smooth_field(spatial, batch=dims[0], dtype=dtype, device=device)
    return fixed, fastreg.warp(fixed, disp, padding_mode="border")


IMPLEMENTATIONS = {"fastreg": (FASTREG, lambda f, m: fastreg.lncc(f, m, WINDOW)), "peer-ops": (PEER_KERNELS, peer_lncc)}


def training_step(model, kernels, similarity, fixed, moving, regularization: float) -> Callable[[], None]:
    """A call running one training step of ``model`` (Adam, lr 1e-4) on the pair."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        disp = model(fixed, moving)
        with torch.profiler.record_function("loss"):  # labels the loss's ops for profiles
            loss = 1 - similarity(fixed, kernels.warp(moving, disp)) + regularization * grad_l2(disp)
        loss.backward()
        opt.step()

    return step


def run_models(
    cases: Sequence[ModelCase],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    repeat: int = 3,
    warmup: int = 1,
    peers: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Measure ``cases``: one row per (case, implementation) in the format of
    fastreg.bench.runner.run (``fwd``: inference, ``fwd_bwd``: a training step; no GB/s),
    printable with fastreg.bench.format_table."""
    device = torch.device(device)
    context = {"device": describe_device(device), "copy_gbps": None, "op": "model", "dtype": str(dtype)[6:]}
    rows = []
    for case in cases:
        fixed, moving = make_pair(case.dims, device, dtype)
        base = case.build().to(device=device, dtype=dtype)
        impls = {}
        for name, (kernels, similarity) in IMPLEMENTATIONS.items():
            if name != "fastreg" and not (peers and case.train and case.peers):
                continue
            if name == "fastreg":
                model = copy.deepcopy(base)
            else:  # the peer's network (peer_kwargs) with the same weights
                model = case.build(peer=True).to(device=device, dtype=dtype)
                model.load_state_dict(base.state_dict())
            model.kernels = kernels
            impls[name] = (model, kernels, similarity)
        group = {name: {"impl": name, "backend": None, "error": None} for name in impls}
        for phase in ("fwd", "fwd_bwd"):
            calls = {}
            for name, (model, kernels, similarity) in impls.items():
                if phase == "fwd_bwd" and not case.train:
                    continue
                if log:
                    log(f"{case.name} {name} {'train step' if phase == 'fwd_bwd' else 'inference'}")
                calls[name] = _inference(model, fixed, moving) if phase == "fwd" else training_step(
                    model, kernels, similarity, fixed, moving, case.regularization)
                for _ in range(max(warmup, 1)):
                    calls[name]()
            times = timing.round_times([(c, _nothing) for c in calls.values()], device, repeat) if calls else []
            for (name, call), t in zip(calls.items(), times):
                row = group[name]
                row[f"{phase}_rounds_ms"] = [s * 1e3 for s in t]
                row[f"{phase}_ms"] = statistics.median(t) * 1e3
                row[f"{phase}_peak_bytes"] = timing.peak_memory(call, _nothing, device)
                ours = times[0]
                row[f"ratio_{phase}"] = statistics.median(a / b for a, b in zip(t, ours))
        for row in group.values():
            rows.append({**context, "case": case.name, "dims": list(case.dims), "baseline": "fastreg", **row})
    return rows


def _inference(model, fixed, moving) -> Callable[[], None]:
    def call():
        with torch.no_grad():
            model(fixed, moving)

    return call


def _nothing() -> None:
    return None
