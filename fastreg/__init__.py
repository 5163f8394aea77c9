"""fastreg: fast, exact kernels and models for deep deformable image registration.

Ops (2-D and 3-D, batched, autograd to every differentiable input):
  warp, sample, compose, integrate_svf, resize_field

Backends: reference (torch), cpu (C++/OpenMP), cuda, triton; see set_backend/use_backend.
Conventions: fields are (B, ndim, *S) in voxels, ij channel order, align_corners=True.
"""
from fastreg._backend import available_backends, get_backend, set_backend, use_backend
from fastreg import data, nn
from fastreg.ops import compose, sample, warp
from fastreg.ops import integrate_svf, resize_field

__version__ = "0.1.0"

__all__ = [
    "warp",
    "sample",
    "compose",
    "integrate_svf",
    "resize_field",
    "available_backends",
    "get_backend",
    "set_backend",
    "use_backend",
]
