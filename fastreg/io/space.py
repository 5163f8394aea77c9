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
from fastreg.ops import sample


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
    ``A_image^-1 A_like x`` (linear interpolation, or ``mode="nearest"`` for label maps;
    ``padding_mode`` as in `fastreg.sample`). Returns an Image with ``like``'s affine and
    spatial shape and ``image``'s channels, header and on-disk dtype. The only full-size
    temporary is the (ndim, *S_like) coordinate tensor `fastreg.sample` reads.
    """
    image, like = as_image(image, "image"), as_image(like, "like")
    if like.ndim != image.ndim:
        raise ValueError(f"like: expected a {image.ndim}-D image like image, got a {like.ndim}-D one")
    check.choice(mode, "mode", ("bilinear", "nearest"))
    source = np.linalg.inv(grid_map(image, "image.affine")) @ grid_map(like, "like.affine")
    coords = voxel_coords(source, like.shape, image.data.dtype, image.data.device)
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
            f"axcodes: expected one of L/R, P/A, I/S per axis, each world axis of the image once, got {axcodes!r} ({err})"
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
