"""nn.Modules over the ops: transformers, integrators, losses."""
from fastreg.nn.warp import SpatialTransformer
from fastreg.nn.integrate import ResizeField, VecInt

__all__ = ["SpatialTransformer"]
__all__ += ["VecInt", "ResizeField"]
