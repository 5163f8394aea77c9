"""The public functional ops: validation, backend dispatch, autograd and fake kernels.
One module per op family; the same family name is used in fastreg/reference,
fastreg/triton and csrc/."""
from fastreg.ops.lncc import lncc
from fastreg.ops.warp import compose, sample, warp

__all__ = ["warp", "sample", "compose", "lncc"]
