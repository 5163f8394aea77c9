"""Registration models of the seed papers on fastreg's fused ops, and their registry.

Every model follows the interface of ``fastreg.models.base.RegistrationModel``:
``model(fixed, moving)`` with (B, 1, *S) images in [0, 1] returns the displacement
(B, ndim, *S) in voxels on the fixed grid. The registry below is the only way the training
loop, NIO and the register command pick a model by name.
"""
from fastreg.models.base import RegistrationModel
from fastreg.models.registry import ARCHITECTURES, available, create, model_class
from fastreg.models.weights import load, load_checkpoint, pretrained

__all__ = ["RegistrationModel", "available", "create", "load", "load_checkpoint", "pretrained"]


def __getattr__(name: str):
    """The model classes by their class name (``fastreg.models.UniReg``), imported on first use."""
    for key, target in ARCHITECTURES.items():
        if target.rsplit(":", 1)[1] == name:
            return model_class(key)
    raise AttributeError(f"module 'fastreg.models' has no attribute {name!r}")
