"""Images in physical space: the voxel maps between grids, resampling, reorientation.

A 2-D image lives in the plane of the first two world axes: its voxel -> world map is the
(3, 3) homogeneous block of rows and columns (0, 1, translation) of the 4x4 affine (the
convention ITK follows for 2-D NIfTI files). `grid_map` returns that block, (ndim + 1) square.
"""
from __future__ import annotations

import numpy as np
import torch

from fastreg import _validate as check
from fastreg.io.image import Image, as_image, spatial_affine
from fastreg.ops.warp import sample


def grid_map(image: Image, name: str) -> np.ndarray:
    """(ndim + 1, ndim + 1) voxel -> world (RAS mm) map of ``image``'s spatial axes, checked
    invertible (ValueError naming ``name`` and its file otherwise)."""
    ndim = image.ndim
    rows = list(range(ndim)) + [3]
    block = image.affine[np.ix_(rows, rows)]
    linear = block[:ndim, :ndim]
    singular = np.linalg.svd(linear, compute_uv=False)
    if not singular[-1] > 1e-8 * max(singular[0], 1e-300):
        source = f" ({image.path})" if image.path else ""
        raise ValueError(
            f"{name}{source}: expected an invertible voxel -> world affine, got the {ndim}-D block"
            f" {linear.tolist()} of {image.affine.tolist()}"
        )
    return block


def resample(image, like, mode: str = "bilinear", padding_mode: str = "zeros") -> Image:
    """``image`` (an Image or path) put on the grid of ``like`` (an Image or path) through the affines.

    Voxel ``x`` of ``like`` takes the value of ``image`` at the voxel position
    ``A_image^-1 A_like x`` (linear interpolation; ``mode="nearest"`` for label maps,
    ``"bicubic"`` for cubic convolution; ``padding_mode`` as in `fastreg.sample`). Returns an Image with ``like``'s affine and
    spatial shape and ``image``'s channels, header and on-disk dtype. The only full-size
    temporary is the (ndim, *S_like) coordinate tensor `fastreg.sample` reads.
    """
    return _onto(image, "image", like, None, mode, padding_mode)


def apply_field(moving, disp: torch.Tensor, like, mode: str = "bilinear", padding_mode: str = "zeros") -> Image:
    """``moving`` (an Image or path, on any grid) warped onto ``like``'s grid by ``disp``, in one
    interpolation.

    ``disp``: (ndim, *S) or (1, ndim, *S) in voxels of ``like``'s grid (`fastreg.io.fields`);
    voxel x of ``like`` takes the value of ``moving`` at the world point A_like (x + disp(x)),
    i.e. at the voxel position ``A_moving^-1 A_like (x + disp(x))``. On a shared grid this is
    `fastreg.warp(moving, disp)`; it is what ANTs and SimpleITK compute with the "itk" file.
    ``mode``: "bilinear", "nearest" (label maps) or "bicubic", as in `fastreg.sample`.
    Returns an Image with ``like``'s affine and ``moving``'s channels, header and dtype.
    """
    check.tensor(disp, "disp")
    return _onto(moving, "moving", like, disp, mode, padding_mode)


def _onto(image, name: str, like, disp, mode: str, padding_mode: str) -> Image:
    """``image`` sampled at ``A_image^-1 A_like (x + disp(x))`` for every voxel x of ``like``."""
    image, like = as_image(image, name), as_image(like, "like")
    ndim = like.ndim
    if ndim != image.ndim:
        raise ValueError(f"like: expected a {image.ndim}-D image like {name}, got a {ndim}-D one")
    check.choice(mode, "mode", ("bilinear", "nearest", "bicubic"))
    source = np.linalg.inv(grid_map(image, f"{name}.affine")) @ grid_map(like, "like.affine")
    coords = voxel_coords(source, like.shape, image.data.dtype, image.data.device)
    if disp is not None:
        field = disp[0] if disp.dim() == ndim + 2 and disp.shape[0] == 1 else disp
        if tuple(field.shape) != (ndim, *like.shape):
            raise ValueError(
                f"disp: expected a field {(ndim, *like.shape)} on like's grid (or with a batch of 1),"
                f" got {tuple(disp.shape)}"
            )
        linear = torch.as_tensor(source[:ndim, :ndim], dtype=coords.dtype, device=coords.device)
        coords[0] += torch.tensordot(linear, field.to(coords), dims=1)
    out = sample(image.data[None], coords, mode=mode, padding_mode=padding_mode)[0]
    return Image(out, like.affine.copy(), image.header, image.dtype)


def voxel_coords(matrix: np.ndarray, shape, dtype, device) -> torch.Tensor:
    """(1, ndim, *shape) positions ``matrix @ (x, 1)`` of every voxel x of ``shape``, for a
    homogeneous (ndim + 1)-square ``matrix``; each channel is written once, as the sum of a
    broadcast partial sum over the first axes and a line along the last axis."""
    ndim = len(shape)
    out = torch.empty((1, ndim, *shape), dtype=dtype, device=device)
    axes = [torch.arange(n, dtype=torch.float64, device=device) for n in shape]
    for k in range(ndim):
        partial = torch.zeros((1,) * ndim, dtype=torch.float64, device=device)
        for a in range(ndim - 1):
            partial = partial + (matrix[k, a] * axes[a]).view([-1 if b == a else 1 for b in range(ndim)])
        last = (matrix[k, ndim - 1] * axes[-1] + matrix[k, ndim]).view([1] * (ndim - 1) + [-1])
        torch.add(partial.to(dtype), last.to(dtype), out=out[0, k])
    return out


def reorient(image, axcodes: str = "RAS") -> Image:
    """``image`` with its voxel axes flipped and permuted so they point along ``axcodes``.

    ``axcodes``: one letter per spatial axis from L/R, P/A, I/S (2-D: two letters, e.g. "RA"),
    the direction each voxel axis increases towards (nibabel.orientations). The world
    position of every voxel is unchanged: ``reorient(reorient(img, "RAS"), img.axcodes)``
    gives back ``img``'s data and affine. Oblique affines go to the closest axes.
    """
    import nibabel.orientations as orientations

    image = as_image(image, "image")
    ndim = image.ndim
    if not isinstance(axcodes, str) or len(axcodes) != ndim:
        raise ValueError(f"axcodes: expected {ndim} letters (one per spatial axis, e.g. 'RAS'), got {axcodes!r}")
    grid_map(image, "image.affine")
    try:
        target = orientations.axcodes2ornt(tuple(axcodes.upper()))
        current = orientations.io_orientation(spatial_affine(image.affine, ndim))
        if np.isnan(target).any() or sorted(target[:, 0]) != sorted(current[:, 0]):
            raise ValueError(f"the image's axes point along {image.axcodes!r}")
        transform = orientations.ornt_transform(current, target)
    except ValueError as err:
        raise ValueError(
            f"axcodes: expected one of L/R, P/A, I/S per axis, each world axis of the image once,"
            f" got {axcodes!r} ({err})"
        ) from None
    data = image.data
    flips = [1 + a for a in range(ndim) if transform[a, 1] == -1]
    if flips:
        data = data.flip(flips)
    data = data.permute(0, *(1 + int(a) for a in np.argsort(transform[:, 0]))).contiguous()
    change = orientations.inv_ornt_aff(transform, image.shape)  # new voxel -> old voxel
    full = np.eye(4)
    axes = list(range(ndim)) + [3]
    full[np.ix_(axes, axes)] = change
    return Image(data, image.affine @ full, image.header, image.dtype, image.path)
