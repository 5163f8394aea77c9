"""The public functional ops: validation, backend dispatch, autograd and fake kernels.
One module per op family; the same family name is used in fastreg/reference,
fastreg/triton and csrc/."""
from fastreg.ops.warp import compose, sample, warp
from fastreg.ops.integrate import integrate_svf, resize_field

__all__ = ["warp", "sample", "compose"]
__all__ += ["integrate_svf", "resize_field"]
