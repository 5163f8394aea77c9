"""Pretrained weights shipped in fastreg/weights/, and models from `fastreg train` checkpoints.

    model = fastreg.models.load("unireg-2d")                 # offline, checksum verified
    model = fastreg.models.load_checkpoint("runs/x/checkpoints/best.pt")
    fastreg.models.pretrained()                              # the shipped names whose file exists

A shipped name maps to (architecture in the registry, constructor keyword arguments, file in
fastreg/weights/, sha256 of that file, the recipe that trains it, the voxel size in mm the
weights expect: ``model.spacing``, and the number of passes it is applied with, both
fastreg.models.base; each chosen on the synthetic validation stream, MODEL_CARD.md). A weights file is one
``torch.save``-d state dict (half precision allowed: it is cast to the model's dtype). Nothing
is ever downloaded: a missing file or a checksum mismatch raises a ValueError naming the file.
A training checkpoint (fastreg.train.checkpoint's format: a dict with "model" and
"model_signature") is rebuilt from the run's ``recipe.toml`` (the folder above
``checkpoints/``), which names the architecture and its arguments.
"""
from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastreg import _validate as check
from fastreg.models.base import RegistrationModel
from fastreg.models.registry import create

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class Weights:
    """One shipped model: ``create(architecture, **kwargs)`` loaded from ``WEIGHTS_DIR / file``."""

    architecture: str
    kwargs: dict = field(default_factory=dict)
    file: str = ""
    sha256: str = ""  # hex digest of the file; "" until the file is shipped
    recipe: str = ""  # the shipped recipe that trains it (fastreg train RECIPE)
    spacing: float | None = None  # mm per voxel of the network's input (None: the image's own)
    passes: int = 1  # network passes at inference (fastreg.models.base: Recursion)

    @property
    def ndim(self) -> int:
        return int(self.kwargs.get("ndim", 3))


WEIGHTS: dict[str, Weights] = {
    "unireg-2d": Weights("unireg", {"ndim": 2}, "unireg-2d.pt",
                         "9fd05af8614a495dc6dc4e0307c966944e1b47217e97ac7c4527d87770c4b705", "unireg-2d-labelm",
                         passes=2),
    "dpvfa-3d": Weights("dpvfa", {"ndim": 3}, "dpvfa-3d.pt",
                        "1b7c7aaf79e65a1841e197fd845cf7ba4a3d37e8656e051b3655b0d5e26d3dd2", "dpvfa-3d-synth",
                        spacing=2.0, passes=2),
    "cascade-3d": Weights("cascade", {"ndim": 3}, "cascade-3d.pt",
                          "18568131f479c25c730e2a1855f9f45bff92d19021a9558f78808df4ae0b93b4", "cascade-3d-synth",
                          spacing=2.0),
}


def names() -> list[str]:
    """Every name ``load`` knows (shipped or not yet)."""
    return sorted(WEIGHTS)


def pretrained() -> list[str]:
    """The names whose weights file is shipped (present in fastreg/weights/ with a checksum)."""
    return [n for n in names() if WEIGHTS[n].sha256 and (WEIGHTS_DIR / WEIGHTS[n].file).is_file()]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load(name: str, device=None) -> RegistrationModel:
    """The shipped model ``name`` (see ``names()``) in eval mode on ``device`` (default CPU).

    ValueError: an unknown name (listing the known ones), weights not shipped yet (naming the
    recipe that trains them), or a file whose sha256 differs from the registry's (both digests).
    """
    if not isinstance(name, str) or name not in WEIGHTS:
        raise ValueError(f"name: expected one of {names()}, got {name!r}")
    entry = WEIGHTS[name]
    path = WEIGHTS_DIR / entry.file
    if not entry.sha256 or not path.is_file():
        raise ValueError(
            f"{name}: weights not shipped yet ({path} is missing): train it with `fastreg train {entry.recipe}`"
            " and pass the checkpoint instead (model=PATH, --model PATH)"
        )
    actual = sha256(path)
    if actual != entry.sha256:
        raise ValueError(f"{path}: sha256 mismatch: expected {entry.sha256}, got {actual}; the file is damaged")
    state = _read(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    model = _build(entry.architecture, entry.kwargs, state, path, device)
    model.spacing = entry.spacing
    model.set_passes(entry.passes)
    return model


def load_checkpoint(path, device=None) -> RegistrationModel:
    """The model of a `fastreg train` checkpoint file (``step-*.pt`` or ``best.pt``) or run
    folder (its ``checkpoints/best.pt``, else the latest step), in eval mode on ``device``.
    The architecture and its arguments come from the run's ``recipe.toml``."""
    path = Path(path)
    if path.is_dir():
        folder = path / "checkpoints"
        steps = sorted(folder.glob("step-*.pt")) if folder.is_dir() else []
        best = folder / "best.pt"
        if not best.is_file() and not steps:
            raise ValueError(f"{path}: expected a checkpoint file or a training run folder with checkpoints/*.pt")
        path = best if best.is_file() else steps[-1]
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint file not found")
    recipe_path = path.parent.parent / "recipe.toml"
    if not recipe_path.is_file():
        raise ValueError(f"{path}: expected the run's recipe.toml at {recipe_path} (it names the architecture)")
    try:
        recipe = tomllib.loads(recipe_path.read_text())
        architecture, kwargs = recipe["model"]["name"], dict(recipe["model"].get("args", {}))
        spacing = recipe["model"].get("spacing") or None  # 0: none
    except (tomllib.TOMLDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(f"{recipe_path}: expected a recipe with [model] name and args ({err})") from None
    if spacing is not None:
        spacing = check.positive_number(spacing, f"{recipe_path}: [model] spacing (mm)")
    state = _read(path)
    if not isinstance(state, dict) or "model" not in state or "model_signature" not in state:
        raise ValueError(f"{path}: not a fastreg training checkpoint (no model state)")
    model = _build(architecture, kwargs, state["model"], path, device)
    cls = type(model)
    if state["model_signature"].get("class") != f"{cls.__module__}.{cls.__qualname__}":
        raise ValueError(f"{path}: a checkpoint of {state['model_signature'].get('class')}, not of {cls.__qualname__}")
    model.spacing = spacing
    return model


def _read(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise ValueError(f"{path}: not a readable weights file ({type(err).__name__}: {err})") from None


def _build(architecture: str, kwargs: dict, state: dict, path: Path, device) -> RegistrationModel:
    model = create(architecture, **kwargs)
    reference = model.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference and v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit {architecture}({kwargs}): {err}") from None
    return model.to(device if device is not None else "cpu").eval()
