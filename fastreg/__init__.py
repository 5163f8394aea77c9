"""fastreg: fast, exact kernels and models for deep deformable image registration.

Ops (2-D and 3-D, batched, autograd to every differentiable input):
  warp, sample, compose, lncc, jacobian_det, local_correlation, vfa_attention, integrate_svf,
  resize_field, invert_field
Affine pre-alignment: affine_register, affine_coords, affine_field, affine_error (fastreg.affine)
Metrics: fastreg.metrics (jacobian_stats, cc, mutual_information, dice, hd95, tre, ssim)
Registration of two images (any grid, affine + model [+ NIO]): register -> Registration
Files: fastreg.io (images and fields in physical space: load, save, resample, save_field, ...)

Backends: reference (torch), cpu (C++/OpenMP), cuda, triton; see set_backend/use_backend.
Conventions: fields are (B, ndim, *S) in voxels, ij channel order, align_corners=True.
"""
from fastreg._backend import available_backends, get_backend, set_backend, use_backend
from fastreg import data, io, metrics, nn
from fastreg.ops.correlation import local_correlation, vfa_attention
from fastreg.ops.jacobian import jacobian_det
from fastreg.ops.lncc import lncc
from fastreg.ops.warp import compose, sample, warp
from fastreg.ops.integrate import integrate_svf
from fastreg.ops.resize import resize_field
from fastreg.ops.invert import invert_field
from fastreg.affine import affine_coords, affine_error, affine_field, affine_register
from fastreg.register import Registration, register

__version__ = "0.1.0"

__all__ = [
    "warp",
    "sample",
    "compose",
    "lncc",
    "jacobian_det",
    "local_correlation",
    "vfa_attention",
    "integrate_svf",
    "resize_field",
    "invert_field",
    "affine_register",
    "affine_coords",
    "affine_field",
    "affine_error",
    "register",
    "Registration",
    "available_backends",
    "get_backend",
    "set_backend",
    "use_backend",
]
