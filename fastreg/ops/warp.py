"""warp, sample, compose: sample an image at displaced or absolute voxel positions.

Contract (every backend; per-element math in csrc/warp/warp.h):
  image  (B, C, *S)             2-D (H, W) or 3-D (D, H, W) spatial, any channel count
  disp   (B|1, ndim, *S)        displacement in voxels; channel a moves along spatial axis a
                                (ij order: (D, H, W) in 3-D), a batch-1 field broadcasts
  coords (B|1, ndim, *S_out)    absolute voxel coordinates for `sample`, any output size
  out    (B, C, *S | *S_out)    image interpolated at x + disp(x) (or at coords)
Voxel centres sit at integer indices (align_corners=True), exactly VoxelMorph's
SpatialTransformer and MONAI's Warp. No grid tensor is built. mode: "bilinear" (linear in
every axis; "trilinear" in 3-D), "nearest" (round half to even) or "bicubic" (below);
padding_mode: "zeros", "border" or "reflection" with torch.grid_sample's semantics and
gradients. A size-1 axis always samples index 0; a NaN position gives NaN (grid_sample gives
0), a NaN gradient to itself (0 in nearest mode) and none to the image; a ±inf position lies
outside at infinite distance: 0 with "zeros" and "reflection" padding (reflection has no
finite image of inf; grid_sample gives NaN with "zeros" and an arbitrary in-image voxel with
"reflection"), the nearest edge voxel with "border" (as grid_sample). Gradients flow to
the image and to the positions (zero in nearest mode). At exactly zero displacement (a
position on a voxel centre) the bilinear gradient to the position is one-sided: the kernels
take the cell above the position consistently, where grid_sample picks a side per voxel by
rounding.
"bicubic": separable cubic convolution (Keys, A = -0.75, grid_sample's and upsample's
coefficient) over the 4^ndim taps floor(p) - 1 .. floor(p) + 2 per axis, weights of the
fraction t = p - floor(p) per axis multiplied. In 2-D exactly torch.grid_sample(mode="bicubic",
align_corners=True); in 3-D the same kernel along the third axis (tricubic; grid_sample has
none). As in grid_sample, the position is not padded; each tap index is: "zeros" reads 0
outside [0, size - 1], "border" clamps the index, "reflection" mirrors it about the border
voxel centres. So the result is C1 in the position (no kink on voxel centres, a smooth
gradient), not bounded by the image's range (overshoot near edges), and outside the image
with "border" it tends to the edge voxel (position gradient 0 once every tap is clamped).
NaN and ±inf positions as above.
An image expanded along its batch or channel axis (stride 0) is read in place, never copied:
one item or channel is sampled (positions of every batch item folded into one call) and the
result broadcast; other strided layouts are made contiguous by the kernels.
"""
from __future__ import annotations

import math

import torch

from fastreg import _backend, _library
from fastreg import _validate as check
from fastreg.reference import warp as reference

MODES = ("bilinear", "nearest", "bicubic")  # the index is the kernels' mode argument
PADDINGS = ("zeros", "border", "reflection")


def warp(image: torch.Tensor, disp: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Warp ``image`` (B, C, *S) by the displacement ``disp`` (B|1, ndim, *S) in voxels.

    ``out[b, c, x] = image[b, c](x + disp[b, :, x])``. Example::

        moved = fastreg.warp(moving, flow)                    # VoxelMorph SpatialTransformer
        moved = fastreg.warp(moving, ddf, padding_mode="border")  # MONAI Warp
    """
    image, disp = _backend.autocast_promote(image, disp)
    check.sampling(image, disp, "disp", mode, padding_mode, MODES, PADDINGS, same_size=True)
    return _dispatch(image, disp, mode, padding_mode, True)


def sample(image: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``image`` (B, C, *S) at absolute voxel coordinates ``coords`` (B|1, ndim, *S_out).

    The output (B, C, *S_out) may differ in size from the image (resampling, landmarks).
    """
    image, coords = _backend.autocast_promote(image, coords)
    check.sampling(image, coords, "coords", mode, padding_mode, MODES, PADDINGS)
    return _dispatch(image, coords, mode, padding_mode, False)


def compose(u: torch.Tensor, v: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Displacement of the composition u∘v (v applied first): ``v + warp(u, v)``.

    u, v: (B|1, ndim, *S) in voxels. Gradients flow to both fields.
    """
    u, v = _backend.autocast_promote(u, v)
    check.field_pair(u, v, "u", "v")
    check.choice(padding_mode, "padding_mode", PADDINGS)
    if u.shape[0] < v.shape[0]:
        u = u.expand(v.shape[0], *u.shape[1:])
    return v + _dispatch(u, v, "bilinear", padding_mode, True)


def _dispatch(image, loc, mode: str, padding_mode: str, displacement: bool) -> torch.Tensor:
    shape = (image.shape[0], image.shape[1], *loc.shape[2:])
    if math.prod(shape) == 0:
        return _backend.empty_result(shape, image, loc)
    check.sampled_image(image, "image")
    if image.shape[1] > 1 and image.stride(1) == 0:  # channels broadcast: sample one, never copy
        return _dispatch(image[:, :1], loc, mode, padding_mode, displacement).expand(shape).contiguous()
    if image.shape[0] > 1 and image.stride(0) == 0:  # batch broadcast
        if loc.shape[0] == 1:
            return _dispatch(image[:1], loc, mode, padding_mode, displacement).expand(shape).contiguous()
        if loc.dtype in (torch.float32, torch.float64):
            return _folded(image[:1], loc, mode, padding_mode, displacement)
    backend = _backend.select("warp", image.device)
    if backend == "reference":
        if displacement:
            return _backend.run_reference(reference.warp, image, loc, mode, padding_mode)
        return _backend.run_reference(reference.sample, image, loc, mode, padding_mode)
    m, p = MODES.index(mode), PADDINGS.index(padding_mode)
    return _library.kernel("warp_forward", backend)(image, loc, m, p, displacement)


def _folded(image, loc, mode: str, padding_mode: str, displacement: bool) -> torch.Tensor:
    """One image item (1, C, *S) read at the positions of every batch item of loc (B, ndim,
    *S_out): the batch folded into the first output axis, so the image is never copied B
    times (positions are formed in loc's dtype, as the kernels form them)."""
    batch, ndim, out = loc.shape[0], loc.shape[1], tuple(loc.shape[2:])
    coords = loc + reference.identity_grid(out, loc.device, loc.dtype) if displacement else loc
    coords = coords.transpose(0, 1).reshape(1, ndim, batch * out[0], *out[1:])
    values = _dispatch(image, coords, mode, padding_mode, False)
    return values.reshape(image.shape[1], batch, *out).transpose(0, 1).contiguous()


# --- the op family's declaration (fastreg/_library.py) ------------------------------------


def _fake_forward(image, loc, mode, padding, displacement):
    return image.new_empty((image.shape[0], image.shape[1], *loc.shape[2:]))


def _reference(image, loc, mode, padding, displacement):
    return (reference.warp if displacement else reference.sample)(image, loc, MODES[mode], PADDINGS[padding])


FAMILY = _library.Family(
    name="warp",
    fakes={"warp_forward": _fake_forward},
    autograd=(_library.Autograd("warp_forward", "warp_backward", _reference, inputs=2),),
)
if _library.triton_runnable():
    from fastreg.triton import warp as _triton  # noqa: F401  (defines fastreg::warp_*_triton)
_library.register(FAMILY)
