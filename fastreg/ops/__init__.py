"""The public functional ops: validation, backend dispatch, autograd and fake kernels.
One module per op family; the same family name is used in fastreg/reference,
fastreg/triton and csrc/. (``from fastreg.ops import warp`` gives the function; import
the module as ``from fastreg.ops.warp import ...``.)"""
from fastreg.ops.correlation import local_correlation, vfa_attention
from fastreg.ops.integrate import integrate_svf, resize_field
from fastreg.ops.invert import invert_field
from fastreg.ops.jacobian import jacobian_det
from fastreg.ops.lncc import lncc
from fastreg.ops.warp import compose, sample, warp

__all__ = [
    "warp",
    "sample",
    "compose",
    "integrate_svf",
    "resize_field",
    "lncc",
    "jacobian_det",
    "local_correlation",
    "vfa_attention",
    "invert_field",
]
