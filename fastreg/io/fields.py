"""Displacement fields on disk: Learn2Reg voxel, RAS-mm world and ITK/ANTs files.

Inside fastreg a field ``disp`` is (ndim, *S) (or (1, ndim, *S)) in voxels of the fixed
image's grid, ij order (channel k moves along tensor axis k): `fastreg.warp(moving, disp)`
samples the moving image (on the fixed grid) at voxel x + disp(x). With the fixed image's
voxel -> world map x -> L x + t (`space.grid_map`: L is the ndim x ndim block), the point
p = L x + t is sent to p + L disp(x). The files, all NIfTI on the fixed grid (its affine):

  format   array on disk        vector                          header
  "voxel"  (*S, ndim)           disp(x) in voxels (Learn2Reg    no intent
                                disp_*.nii.gz: fixed grid, x + disp is the moving voxel)
  "world"  (*S, ndim)           L disp(x): RAS mm               intent NIFTI_INTENT_DISPVECT
  "itk"    (X, Y, Z|1, 1, ndim) F L disp(x): LPS mm, F flips    intent NIFTI_INTENT_VECTOR
                                the first two (R->L, A->P)

"itk" is the displacement field ANTs (antsApplyTransforms, ants.apply_transforms) and
SimpleITK (DisplacementFieldTransform) read: for a point p of the fixed (output) space, in
LPS mm, T(p) = p + d(p) is where the moving image is sampled: the same map as fastreg.warp
(`fastreg.io.apply_field` when the moving image has its own grid). 2-D fields hold the two
in-plane world components (R, A; L, P for ITK), as ITK reads 2-D NIfTI files. `load_field`
tells the three apart by the header (format= overrides).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from fastreg import _validate as check
from fastreg.io.image import Image, as_image, atomic_write, extension, read_nibabel
from fastreg.io.space import grid_map

FORMATS = ("voxel", "world", "itk")
INTENT = {"world": 1006, "itk": 1007}  # NIFTI_INTENT_DISPVECT, NIFTI_INTENT_VECTOR
LPS = (-1.0, -1.0, 1.0)


def save_field(path, disp: torch.Tensor, like, format: str = "voxel") -> None:
    """Write the displacement ``disp`` ((ndim, *S) or (1, ndim, *S), voxels of ``like``'s grid)
    as a NIfTI field of ``format`` (module docstring) with ``like``'s affine (``like``: the
    fixed Image or its path). Atomic: a temporary file in the same folder, then a rename."""
    import nibabel as nib

    ext = extension(path)
    if ext not in (".nii", ".nii.gz"):
        raise ValueError(f"path: fields are written as NIfTI (.nii or .nii.gz), got {os.fspath(path)!r}")
    check.choice(format, "format", FORMATS)
    like = as_image(like, "like")
    disp = _field_tensor(disp, like)
    vectors = disp.detach().cpu().to(torch.float64).numpy()
    if format != "voxel":
        vectors = _linear(grid_map(like, "like.affine")[:-1, :-1], vectors)
    if format == "itk":
        vectors = vectors * np.array(LPS[: like.ndim]).reshape(-1, *[1] * like.ndim)
    data = np.moveaxis(vectors, 0, -1).astype(np.float32)
    if format == "itk":
        data = data.reshape(*like.shape, *[1] * (3 - like.ndim), 1, like.ndim)
    img = nib.Nifti1Image(data, like.affine)
    img.set_sform(like.affine, code=1)
    img.set_qform(like.affine, code=1)
    if format in INTENT:
        img.header.set_intent(INTENT[format])
    atomic_write(os.fspath(path), ext, img.to_filename)


def load_field(path, like, format: str | None = None) -> torch.Tensor:
    """Read a field written by `save_field`, Learn2Reg or ANTs/ITK back into voxels of ``like``'s
    grid: (ndim, *S) float32 (float64 for float64 files).

    ``format``: None (detect: vector intent -> "itk", displacement-vector intent -> "world",
    else "voxel") or one of "voxel", "world", "itk". The file's spatial shape must be
    ``like``'s; world and ITK files must also share its affine (the vectors are converted
    with it). Integer files are not fields (ValueError).
    """
    path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
    if extension(path) not in (".nii", ".nii.gz"):
        raise ValueError(f"path: fields are read from NIfTI (.nii or .nii.gz), got {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file not found")
    like = as_image(like, "like")
    img, raw = read_nibabel(path)
    if format is None:
        format = _detect(img)
    check.choice(format, "format", FORMATS)
    if img.get_data_dtype().kind not in "f" or raw.dtype.kind not in "f":
        raise ValueError(f"{path}: expected a floating-point displacement field, got {img.get_data_dtype()} data")
    ndim, shape = like.ndim, like.shape
    if raw.shape[:ndim] != shape or raw.shape[-1] != ndim or raw.size != np.prod(shape) * ndim:
        raise ValueError(
            f"{path}: expected a field of shape {(*shape, ndim)} (like's grid, one vector per voxel),"
            f" got {raw.shape}"
        )
    vectors = np.moveaxis(raw.reshape(*shape, ndim).astype(np.float64), -1, 0)
    if format != "voxel":
        if not np.allclose(img.affine, like.affine, atol=1e-3):
            raise ValueError(
                f"{path}: expected the affine of like {like.affine.tolist()} (a {format} field is converted"
                f" with it), got {img.affine.tolist()}"
            )
        if format == "itk":
            vectors = vectors * np.array(LPS[:ndim]).reshape(-1, *[1] * ndim)
        vectors = _linear(np.linalg.inv(grid_map(like, "like.affine")[:-1, :-1]), vectors)
    dtype = torch.float64 if raw.dtype == np.float64 else torch.float32
    return torch.from_numpy(np.ascontiguousarray(vectors)).to(dtype)


def _detect(img) -> str:
    code = int(img.header["intent_code"])
    return {INTENT["itk"]: "itk", INTENT["world"]: "world"}.get(code, "voxel")


def _field_tensor(disp, like: Image) -> torch.Tensor:
    check.tensor(disp, "disp")
    ndim = like.ndim
    if disp.dim() == ndim + 2 and disp.shape[0] == 1:
        disp = disp[0]
    if disp.dim() != ndim + 1 or disp.shape[0] != ndim:
        raise ValueError(
            f"disp: expected a field ({ndim}, *S) or (1, {ndim}, *S) for the {ndim}-D grid of like,"
            f" got {tuple(disp.shape)}"
        )
    if tuple(disp.shape[1:]) != like.shape:
        raise ValueError(f"disp: expected the spatial shape {like.shape} of like, got {tuple(disp.shape[1:])}")
    return disp


def _linear(matrix: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``matrix`` (n, n) applied to every vector of ``vectors`` (n, *S)."""
    return np.tensordot(matrix, vectors, axes=1)
