"""The public functional ops: validation, backend dispatch and each family's declaration
(fastreg/_library.py). One module per op family, named as in fastreg/reference,
fastreg/triton and csrc/; the functions are in their modules (``fastreg.ops.warp.warp``) and
at the top level (``fastreg.warp``). Importing this package registers every family's ops."""
from fastreg.ops import correlation, integrate, invert, jacobian, lncc, resize, warp

__all__ = ["correlation", "integrate", "invert", "jacobian", "lncc", "resize", "warp"]
