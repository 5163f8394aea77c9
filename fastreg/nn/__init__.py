"""nn.Modules over the ops: transformers, integrators, losses."""
from fastreg.nn.warp import SpatialTransformer

__all__ = ["SpatialTransformer"]
