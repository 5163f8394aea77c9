"""Model names -> constructors. Entries are "module:Class" strings imported on first use, so
``import fastreg`` stays light and a model file is only loaded when it is asked for."""
from __future__ import annotations

import importlib

from fastreg.models.base import RegistrationModel

ARCHITECTURES = {
    "unireg": "fastreg.models.unireg:UniReg",
    "dpvfa": "fastreg.models.dpvfa:DPVFA",
    "dpconvc": "fastreg.models.dpvfa:DPConvC",
    "cascade": "fastreg.models.cascade:CascadeUNet",
}


def available() -> list[str]:
    """Names ``create`` accepts."""
    return sorted(ARCHITECTURES)


def model_class(name: str) -> type[RegistrationModel]:
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ValueError(f"name: expected one of {available()}, got {name!r}")
    module, cls = ARCHITECTURES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create(name: str, **kwargs) -> RegistrationModel:
    """A freshly initialised model: ``create("dpvfa", ndim=2)``. Keyword arguments go to the
    model's constructor."""
    return model_class(name)(**kwargs)
