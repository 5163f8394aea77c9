"""nn.Modules over the ops: transformers, integrators, losses."""
from fastreg.nn.jacobian import JacobianLoss
from fastreg.nn.lncc import LNCCLoss
from fastreg.nn.warp import SpatialTransformer
from fastreg.nn.integrate import ResizeField, VecInt

__all__ = ["SpatialTransformer", "LNCCLoss", "JacobianLoss"]
__all__ += ["VecInt", "ResizeField"]
