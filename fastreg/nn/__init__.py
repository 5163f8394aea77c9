"""nn.Modules over the ops: transformers, integrators, losses."""
from fastreg.nn.integrate import ResizeField, VecInt
from fastreg.nn.jacobian import JacobianLoss
from fastreg.nn.lncc import LNCCLoss
from fastreg.nn.warp import SpatialTransformer

__all__ = ["SpatialTransformer", "VecInt", "ResizeField", "LNCCLoss", "JacobianLoss"]
