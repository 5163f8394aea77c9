"""nn.Modules over the ops: transformers, integrators, losses."""
from fastreg.nn.jacobian import JacobianLoss
from fastreg.nn.warp import SpatialTransformer

__all__ = ["SpatialTransformer", "JacobianLoss"]
