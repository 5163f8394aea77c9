"""Registration models of the seed papers on fastreg's fused ops, and their registry.

Every model follows the interface of ``fastreg.models.base.RegistrationModel``:
``model(fixed, moving)`` with (B, 1, *S) images in [0, 1] returns the displacement
(B, ndim, *S) in voxels on the fixed grid. The registry below is the only way the training
loop, NIO and the register command pick a model by name.
"""
from fastreg.models.base import RegistrationModel
from fastreg.models.registry import available, create
from fastreg.models.cascade import CascadeUNet
from fastreg.models.dpvfa import DPVFA, DPConvC

__all__ = ["RegistrationModel", "available", "create", "DPVFA", "DPConvC", "CascadeUNet"]
