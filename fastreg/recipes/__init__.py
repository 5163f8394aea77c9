"""Training recipes: TOML files naming a model, a data stream, a loss and the loop's settings.

A recipe is a shipped name (``available()``: the *.toml files next to this module) or a path
to a TOML file. Every key and its default is in DEFAULTS below; a recipe sets some of them,
unknown keys are errors. Two tables are open: ``model.args`` (keyword arguments of the model's
constructor) and ``data.args`` (of the data class), checked against those constructors'
signatures when the recipe is resolved. Names resolve lazily, so a recipe can name a model or
data class that lands later:
  model.name   a name of fastreg.models' registry (``fastreg.models.create``) or "module:Class"
  data.kind    a class of fastreg.data (LabelMPairs, SynthMorphPairs, ImagePairs) or "module:Class";
               built as ``Class([data.path,] **data.args, seed=..., batch_size=...)`` (``path``
               first when set; seed/batch_size/device passed when the constructor takes them);
               a map-style dataset of single pairs (ImagePairs) is read through
               fastreg.train.stream.Shuffled with data.batch_size and the seed
  validation   a stream like data.kind's from ``validation.path`` (default data.path) and
               ``validation.seed``; for a dataset of real pairs read from data.path itself
               (no validation.path) a share ``validation.holdout`` of the pairs (at least
               one, chosen by validation.seed) is held out of training and validated on,
               so no validation pair is ever a training pair
  loss.name    a preset of ``fastreg.nn.loss_for`` (adapted by fastreg.train.objective.pair_loss,
               with one-hot warped labels when ``loss.labels``) or "module:function" taking
               (batch, disp) as fastreg.train.fit does
TOML has no null: 0 / "" / "none" mean off (clip_grad, ema, amp, pretrained, path).
``model.pretrained``: "" (random init), a name for ``fastreg.models.load`` (fine-tuning), or a
.pt file (a fastreg checkpoint or a state_dict). ``model.spacing``: the voxel size in mm the
trained model expects (``model.spacing``, fastreg.models.base; 0: the image's own), read back
by ``fastreg.models.load_checkpoint`` for `fastreg.register`.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import json
import math
import random
import re
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, Subset

from fastreg import train
from fastreg.train import distributed
from fastreg.train.objective import pair_loss
from fastreg.train.stream import Shuffled, batch_seed, is_drawn, is_indexed
from fastreg.train.validate import HIGHER_IS_BETTER

DEFAULTS: dict = {
    "description": "",
    "model": {"name": "", "pretrained": "", "spacing": 0.0, "args": {}},
    "data": {"kind": "", "path": "", "batch_size": 1, "seed": 0, "workers": 0, "args": {}},
    "validation": {"every": 0, "batches": 4, "seed": 1, "path": "", "best": "loss", "holdout": 0.1},
    "loss": {"name": "", "labels": False},
    "train": {
        "steps": 1000, "seed": 0, "device": "auto", "optimizer": "adam", "lr": 1e-4, "amsgrad": False,
        "weight_decay": 0.0, "schedule": "constant", "T_0": 1000, "T_mult": 2, "eta_min": 1e-5,
        "grad_accum": 1, "clip_grad": 0.0, "amp": "none", "compile": False, "ema": 0.0,
    },
    "checkpoint": {"every": 500, "keep_last": 2},
    "log": {"every": 10, "tensorboard": True, "progress": True},
}
OPEN_TABLES = ("model.args", "data.args")
CHOICES = {
    "train.optimizer": train.loop.OPTIMIZERS,
    "train.schedule": train.loop.SCHEDULES,
    "train.amp": ("none", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "validation.best": tuple(HIGHER_IS_BETTER),
}


def available() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def load(recipe: str | Path) -> dict:
    """The recipe ``recipe`` (a shipped name or a TOML file), completed with DEFAULTS and checked."""
    text_path = Path(recipe)
    if str(recipe) in available():
        text, source = resources.files(__name__).joinpath(f"{recipe}.toml").read_text(), f"recipe {recipe!r}"
    elif text_path.suffix == ".toml" and text_path.is_file():
        text, source = text_path.read_text(), str(text_path)
    else:
        raise ValueError(f"recipe: {str(recipe)!r} is neither a shipped recipe ({', '.join(available())}) nor a .toml file")
    try:
        given = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML ({exc})") from None
    out = copy.deepcopy(DEFAULTS)
    for key, value in _flatten(given).items():
        _assign(out, key, value, source)
    return out


def override(recipe: dict, assignments: list[str]) -> dict:
    """A copy of ``recipe`` with ``key=value`` assignments (dotted keys, TOML values; a bare word
    is a string), each checked like a key of a recipe file."""
    out = copy.deepcopy(recipe)
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        _assign(out, key, value, "--set")
    return out


def dumps(recipe: dict) -> str:
    """The recipe as TOML text (``load`` reads it back to the same dict)."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in recipe.items() if not isinstance(v, dict)]
    for name, table in recipe.items():
        if isinstance(table, dict):
            _dump_table(lines, name, table)
    return "\n".join(lines) + "\n"


def resolve(recipe: dict, device: torch.device):
    """(model, data, validation, loss, fit keyword arguments) of a recipe."""
    model = _model(recipe["model"])
    data_cfg, val_cfg = recipe["data"], recipe["validation"]
    data_device = device if data_cfg["workers"] == 0 else torch.device("cpu")
    data = _dataset(data_cfg, data_cfg["seed"], data_cfg["path"], data_device, "data")
    validation = None
    if val_cfg["every"]:
        same_data = (val_cfg["path"] or data_cfg["path"]) == data_cfg["path"]
        if same_data and _pairs(data):
            data, held = _hold_out(data, val_cfg["holdout"], val_cfg["seed"])
            validation = _stream(held, data_cfg["batch_size"], val_cfg["seed"])
        else:
            if same_data and val_cfg["seed"] == data_cfg["seed"]:
                raise ValueError(f"validation.seed: equal to data.seed ({data_cfg['seed']}) on the same data: the"
                                 " validation batches would be training batches; give them different seeds")
            held = _dataset(data_cfg, val_cfg["seed"], val_cfg["path"] or data_cfg["path"], data_device, "validation")
            validation = _stream(held, data_cfg["batch_size"], val_cfg["seed"])
    data = _stream(data, data_cfg["batch_size"], data_cfg["seed"])
    loss = _loss(recipe["loss"], data)
    t = recipe["train"]
    kwargs = dict(
        steps=t["steps"], optimizer=t["optimizer"], lr=t["lr"], amsgrad=t["amsgrad"], weight_decay=t["weight_decay"],
        schedule=t["schedule"], T_0=t["T_0"], T_mult=t["T_mult"], eta_min=t["eta_min"], grad_accum=t["grad_accum"],
        clip_grad=t["clip_grad"] or None, amp=None if t["amp"] == "none" else t["amp"], compile=t["compile"],
        ema=t["ema"] or None, validation=validation, validation_batches=val_cfg["batches"],
        validate_every=val_cfg["every"], best=val_cfg["best"], checkpoint_every=recipe["checkpoint"]["every"],
        keep_last=recipe["checkpoint"]["keep_last"], workers=data_cfg["workers"], device=device,
        progress=recipe["log"]["progress"], tensorboard=recipe["log"]["tensorboard"], log_every=recipe["log"]["every"],
    )
    return model, data, validation, loss, kwargs


def run(recipe: dict, out: str | Path, resume: bool = False) -> train.FitResult:
    """Train by ``recipe`` into ``out`` (seeded by train.seed; under torchrun one process of a
    DistributedDataParallel run). The resolved recipe is written to ``out/recipe.toml``."""
    requested = recipe["train"]["device"]
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: cuda requested but no CUDA device is available")
    wanted = None if requested == "auto" else requested
    if distributed.launched():
        device = distributed.setup(wanted)
    else:
        device = torch.device(wanted or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed = recipe["train"]["seed"]
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    model, data, _, loss, kwargs = resolve(recipe, device)
    return train.fit(model, data, loss, out=out, resume=resume, files={"recipe.toml": dumps(recipe)}, **kwargs)


# -- schema ------------------------------------------------------------------------------

def _flatten(table: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in OPEN_TABLES:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _valid_keys() -> list[str]:
    return sorted(k for k in _flatten(DEFAULTS) if k not in OPEN_TABLES) + [f"{t}.NAME" for t in OPEN_TABLES]


def _assign(recipe: dict, key: str, value, source: str) -> None:
    table_name = next((t for t in OPEN_TABLES if key == t or key.startswith(t + ".")), None)
    if table_name is not None:
        section, sub = table_name.split(".")
        if key == table_name:
            if not isinstance(value, dict):
                raise TypeError(f"{source}: {key} expected a table, got {type(value).__name__}")
            recipe[section][sub].update(value)
        else:
            recipe[section][sub][key[len(table_name) + 1:]] = value
        return
    defaults = _flatten(DEFAULTS)
    if key not in defaults:
        raise ValueError(f"{source}: unknown recipe key {key!r}; valid keys: {', '.join(_valid_keys())}")
    default = defaults[key]
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(default):
        raise TypeError(f"{source}: {key} expected {type(default).__name__}, got {type(value).__name__} {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ValueError(f"{source}: {key} expected one of {CHOICES[key]}, got {value!r}")
    if key == "model.spacing" and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{source}: {key} expected a voxel size in mm >= 0 (0: the image's own), got {value!r}")
    section, _, name = key.rpartition(".")
    (recipe[section] if section else recipe)[name] = value


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _dump_table(lines: list, name: str, table: dict) -> None:
    lines += ["", f"[{name}]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for key, sub in table.items():
        if isinstance(sub, dict):
            _dump_table(lines, f"{name}.{key}", sub)


# -- resolution --------------------------------------------------------------------------

def _import(spec: str, key: str):
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{key}: cannot import {spec!r} ({type(exc).__name__}: {exc})") from None


def _check_kwargs(cls, kwargs: dict, key: str) -> None:
    """Keys of ``kwargs`` are parameters of ``cls``; values match the type of their defaults."""
    params = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for name, value in kwargs.items():
        if name not in params:
            valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            raise ValueError(f"{key}.{name}: not an argument of {cls.__name__} (valid: {', '.join(valid)})")
        default = params[name].default
        if default is inspect.Parameter.empty or default is None:
            continue
        numeric = isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
        sequence = isinstance(default, (list, tuple)) and isinstance(value, (list, tuple))
        if not (numeric or sequence or type(value) is type(default)):
            raise TypeError(f"{key}.{name}: expected {type(default).__name__} like the default {default!r}, got {value!r}")


def _model(cfg: dict) -> torch.nn.Module:
    name, args = cfg["name"], dict(cfg["args"])
    if not name:
        raise ValueError("model.name: the recipe names no model")
    if ":" in name:
        cls = _import(name, "model.name")
    else:
        from fastreg.models import registry

        try:
            cls = registry.model_class(name)
        except ImportError as exc:
            raise ValueError(f"model.name: {name!r} is registered but not in this installation ({exc})") from None
    _check_kwargs(cls, args, "model.args")
    pretrained = cfg["pretrained"]
    if not pretrained:
        return cls(**args)
    path = Path(pretrained)
    if path.suffix == ".pt":
        if not path.is_file():
            raise ValueError(f"model.pretrained: no such file {pretrained!r}")
        model = cls(**args)
        state = torch.load(path, map_location="cpu", weights_only=False)
        weights = state.get("model", state) if isinstance(state, dict) else state
        try:
            model.load_state_dict(weights)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ValueError(f"model.pretrained: {pretrained} does not fit {cls.__name__}({args}): {exc}") from None
        return model
    import fastreg.models as models

    if not hasattr(models, "load"):
        raise ValueError(f"model.pretrained: {pretrained!r} needs fastreg.models.load (pretrained weights), not in this installation")
    return models.load(pretrained)


def _dataset(cfg: dict, seed: int, path: str, device: torch.device, key: str):
    """The data class of ``cfg`` built on ``path`` with ``seed`` (not yet a stream)."""
    kind = cfg["kind"]
    if not kind:
        raise ValueError("data.kind: the recipe names no data")
    if ":" in kind:
        cls = _import(kind, "data.kind")
    else:
        import fastreg.data as data

        if not hasattr(data, kind):
            raise ValueError(f"data.kind: fastreg.data has no {kind!r} in this installation")
        cls = getattr(data, kind)
    args = dict(cfg["args"])
    _check_kwargs(cls, args, "data.args")
    params = inspect.signature(cls).parameters
    for name, value in (("seed", seed), ("batch_size", cfg["batch_size"]), ("device", device)):
        if name in params and name not in args:
            args[name] = value
    if path and not Path(path).exists():
        raise ValueError(f"{key}.path: no such file or folder {path!r}")
    return cls(path, **args) if path else cls(**args)


def _pairs(data) -> bool:
    """Whether ``data`` is a map-style dataset of single pairs (a finite set, not a stream)."""
    streams = is_indexed(data) or is_drawn(data) or isinstance(data, IterableDataset)
    return not streams and hasattr(data, "__getitem__") and hasattr(data, "__len__")


def _stream(data, batch_size: int, seed: int):
    return Shuffled(data, batch_size, seed) if _pairs(data) else data


def _hold_out(data, share: float, seed: int) -> tuple[Subset, Subset]:
    """(training pairs, validation pairs) of a map-style dataset: ``max(1, round(share * n))``
    pairs drawn by ``seed`` are held out (the same ones on every run and resume)."""
    if not 0 < share < 1:
        raise ValueError(f"validation.holdout: expected a share in (0, 1), got {share!r}")
    n = len(data)
    if n < 2:
        raise ValueError(f"validation: the data holds {n} pair(s), too few to hold any out for validation; "
                         "give validation.path (other pairs) or set validation.every = 0")
    count = min(n - 1, max(1, round(share * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(batch_seed(seed, 0))).tolist()
    held = sorted(order[:count])
    kept = sorted(order[count:])
    return Subset(data, kept), Subset(data, held)


def _loss(cfg: dict, data):
    name = cfg["name"]
    if not name:
        raise ValueError("loss.name: the recipe names no loss")
    if ":" in name:
        return _import(name, "loss.name")
    import fastreg.nn as nn

    if not hasattr(nn, "loss_for"):
        raise ValueError(f"loss.name: {name!r} needs fastreg.nn.loss_for, not in this installation")
    return pair_loss(nn.loss_for(name), labels=cfg["labels"], num_labels=getattr(data, "num_labels", None))
