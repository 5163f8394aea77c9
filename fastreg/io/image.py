"""Image (a tensor with its place in physical space), load and save.

Formats (chosen by the file's extension):
  NIfTI  .nii .nii.gz   nibabel; a 4-D file (X, Y, Z, T) gives T channels, a 5-D vector file
                        (X, Y, Z, 1, C) gives C channels (2-D when Z = 1, as ITK reads it)
  MGH    .mgz .mgh      nibabel (FreeSurfer); on-disk dtypes uint8, int16, int32, float32
  2-D    .png .jpg .jpeg .tif .tiff   pillow; tensor axes (H, W) = (row, column), channels
                        = the pixel's bands (L: 1, RGB: 3, RGBA: 4); no geometry is stored in
                        these files: the affine is the identity (voxel (row, col) sits at
                        (x, y) = (row, col) mm, unit spacing) and is not written back
Tensor axes follow the file's voxel axes: spatial axis k of the tensor is voxel index k of
the file, and the affine maps voxel indices (i, j, k, 1) to RAS millimetres.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from fastreg import _validate as check

NIFTI = (".nii.gz", ".nii")
MGH = (".mgz", ".mgh")
PICTURE = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
EXTENSIONS = NIFTI + MGH + PICTURE
MGH_DTYPES = (np.uint8, np.int16, np.int32, np.float32)


@dataclass
class Image:
    """An image and its voxel-to-world geometry.

    Attributes:
        data: (C, *S) floating-point tensor, S = (H, W) or (D, H, W) in the file's voxel axes.
        affine: (4, 4) float64 array, voxel (i, j, k, 1) -> RAS mm (2-D: (i, j, 0, 1)).
        header: the file's header (nibabel header, or a dict of pillow's format, mode and
            info for pictures); None for an image made in memory.
        dtype: the on-disk numpy dtype, used again by `save`.
        path: the file it was read from, for error messages (None if made in memory).
    """

    data: torch.Tensor
    affine: Any = field(default_factory=lambda: np.eye(4))
    header: Any = None
    dtype: Any = np.float32
    path: str | None = None

    def __post_init__(self):
        name = self.path or "image"
        check.tensor(self.data, f"{name}: data")
        if self.data.dim() not in (3, 4):
            raise ValueError(f"{name}: expected data (C, H, W) or (C, D, H, W), got shape {tuple(self.data.shape)}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.isfinite(affine).all():
            raise ValueError(f"{name}: expected a finite (4, 4) affine, got {affine.shape} {affine.tolist()}")
        self.affine = affine
        self.dtype = np.dtype(self.dtype)

    def __repr__(self) -> str:
        spacing = ", ".join(f"{s:.4g}" for s in self.spacing)
        return (
            f"Image(channels={self.data.shape[0]}, shape={self.shape}, spacing=({spacing}) mm,"
            f" axcodes={self.axcodes!r}, dtype={self.dtype.name}, path={self.path!r})"
        )

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.data.dim() - 1

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial size S."""
        return tuple(self.data.shape[1:])

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each spatial axis (norms of the affine's columns)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, : self.ndim], axis=0))

    @property
    def axcodes(self) -> str:
        """Orientation code, one letter per spatial axis (e.g. "RAS", "LPS"; 2-D: "RA")."""
        import nibabel.orientations as orientations

        codes = orientations.aff2axcodes(spatial_affine(self.affine, self.ndim))
        return "".join(code or "?" for code in codes)  # "?": an axis the affine collapses


def spatial_affine(affine: np.ndarray, ndim: int) -> np.ndarray:
    """The (4, ndim + 1) voxel -> RAS map of the spatial axes (columns of the axes, translation)."""
    return affine[:, list(range(ndim)) + [3]]


def as_image(value, name: str) -> Image:
    """An Image, or the image loaded from a path."""
    if isinstance(value, Image):
        return value
    if isinstance(value, (str, os.PathLike)):
        return load(value)
    raise TypeError(f"{name}: expected a fastreg.io.Image or a path, got {type(value).__name__}")


def extension(path, name: str = "path") -> str:
    """The supported extension `path` ends with (case-insensitive), else ValueError."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a path (str or os.PathLike), got {type(path).__name__}")
    lower = os.fspath(path).lower()
    for ext in EXTENSIONS:
        if lower.endswith(ext):
            return ext
    raise ValueError(f"{name}: unknown extension of {os.fspath(path)!r}; expected one of {EXTENSIONS}")


def read_nibabel(path: str):
    """(nibabel image, its data as an array): read in full, so a truncated file fails here."""
    import nibabel as nib

    try:
        img = nib.load(path)
        return img, np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel, gzip, numpy and OS errors: one message naming the file
        raise ValueError(f"{path}: cannot read the image ({type(err).__name__}: {err})") from None


def load(path, *, ndim: int | None = None, channels: int | None = None) -> Image:
    """Read an image file into an `Image` (formats: module docstring).

    The tensor is float32 (float64 for float64 files; integers beyond 2^24 in int32/uint32
    files lose precision), contiguous, (C, *S). ``ndim`` (2 or 3) and ``channels`` state what
    the caller expects; a file of another kind raises a ValueError naming the file (e.g. a
    4-D series where one 3-D volume is expected).
    """
    if ndim not in (None, 2, 3):
        raise ValueError(f"ndim: expected None, 2 or 3, got {ndim!r}")
    ext = extension(path)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file not found")
    if ext in PICTURE:
        array, affine, header, dtype = _read_picture(path)
    else:
        img, raw = read_nibabel(path)
        array = _channels_first(raw, path)
        affine, header, dtype = img.affine, img.header, img.get_data_dtype()
    float_dtype = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    data = torch.from_numpy(c_order(array, float_dtype))
    image = Image(data, affine, header, np.dtype(dtype).newbyteorder("="), path)
    _expect(image, ndim, channels)
    return image


def c_order(array: np.ndarray, dtype) -> np.ndarray:
    """A C-ordered copy of ``array`` (C, *S) in ``dtype``. nibabel's arrays are Fortran-ordered:
    one whole-volume transposing copy thrashes the cache (3x slower at 256^3), so 3-D volumes
    are copied one plane of the second spatial axis at a time."""
    if array.ndim < 4 or array.flags.c_contiguous:
        return np.array(array, dtype=dtype, order="C")
    out = np.empty(array.shape, dtype=dtype)
    for c in range(array.shape[0]):
        for j in range(array.shape[2]):
            out[c, :, j] = array[c, :, j]
    return out


def _expect(image: Image, ndim, channels) -> None:
    if ndim is not None and image.ndim != ndim:
        raise ValueError(
            f"{image.path}: expected a {ndim}-D image, got a {image.ndim}-D image of shape {image.shape}"
            f" with {image.data.shape[0]} channel(s)"
        )
    if channels is not None and image.data.shape[0] != channels:
        raise ValueError(
            f"{image.path}: expected {channels} channel(s) (a single {image.ndim}-D volume), got"
            f" {image.data.shape[0]} (file of shape {image.shape} x {image.data.shape[0]})"
        )


def _channels_first(raw: np.ndarray, path: str) -> np.ndarray:
    """NIfTI/MGH array -> (C, *S) view (layout: module docstring)."""
    if raw.ndim in (2, 3):
        return raw[None]
    if raw.ndim == 4:
        return np.moveaxis(raw, 3, 0)
    if raw.ndim == 5 and raw.shape[3] == 1:
        spatial = raw.shape[:2] if raw.shape[2] == 1 else raw.shape[:3]
        return np.moveaxis(raw.reshape(*spatial, raw.shape[4]), -1, 0)
    raise ValueError(
        f"{path}: expected a 2-D or 3-D image, a 4-D series (X, Y, Z, T) or a 5-D vector image"
        f" (X, Y, Z, 1, C), got shape {raw.shape}"
    )


def _read_picture(path: str):
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as pic:
            if getattr(pic, "n_frames", 1) != 1:
                raise ValueError(f"expected one 2-D picture, got {pic.n_frames} frames")
            pic.load()
            array = np.asarray(pic)
            header = {"format": pic.format, "mode": pic.mode, "info": dict(pic.info)}
    except Exception as err:  # pillow raises many kinds (UnidentifiedImageError, OSError, SyntaxError)
        raise ValueError(f"{path}: cannot read the picture ({type(err).__name__}: {err})") from None
    dtype = array.dtype
    array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    return array, np.eye(4), header, dtype


# --- save ------------------------------------------------------------------------------


def save(path, image, like=None, dtype=None) -> None:
    """Write ``image`` to ``path`` (format from the extension) without ever leaving a partial file.

    Args:
        path: destination (.nii, .nii.gz, .mgz, .mgh, .png, .jpg, .jpeg, .tif, .tiff).
        image: an `Image`, or a (C, *S) tensor (then ``like`` gives the geometry).
        like: an `Image` (or path) whose affine and header are written instead of the
            image's own; its spatial shape must match.
        dtype: on-disk dtype; default the Image's own (a tensor: float32, float64 kept).
    Integer dtypes get exact integers: NIfTI stores non-integral values through its scale
    slope and intercept, MGH and pictures reject them (ValueError) rather than round.
    The data are written to a temporary file in the same folder, then renamed over ``path``.
    """
    ext = extension(path)
    path = os.fspath(path)
    image = _to_save(image, like)
    dtype = np.dtype(dtype) if dtype is not None else image.dtype
    array = image.data.detach().cpu().numpy()
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"path: the folder {folder} of {path!r} does not exist")
    if ext in PICTURE:
        write = _picture_writer(array, dtype, ext, path)
    else:
        write = _nibabel_writer(array, image, dtype, ext, path)
    atomic_write(path, ext, write)


def _to_save(image, like) -> Image:
    if isinstance(image, torch.Tensor):
        if like is None:
            raise ValueError("like: expected an Image giving the geometry when image is a tensor")
        numpy_dtype = np.float64 if image.dtype == torch.float64 else np.float32
        image = Image(image.detach(), dtype=numpy_dtype)
    elif not isinstance(image, Image):
        raise TypeError(f"image: expected a fastreg.io.Image or a (C, *S) tensor, got {type(image).__name__}")
    if like is None:
        return image
    like = as_image(like, "like")
    if like.shape != image.shape:
        raise ValueError(f"like: expected the spatial shape {image.shape} of image, got {like.shape}")
    return Image(image.data, like.affine, like.header, image.dtype, image.path)


def _integers(array: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
    """``array`` cast exactly to the integer ``dtype``, or None if it holds other values."""
    info = np.iinfo(dtype)
    if np.all(np.isfinite(array)) and np.array_equal(array, np.round(array)):
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            return array.astype(dtype)
    return None


def _on_disk(array: np.ndarray, dtype: np.dtype, path: str, scalable: bool) -> np.ndarray:
    if dtype.kind not in "iub":
        return array.astype(dtype)
    integer = np.dtype(np.uint8) if dtype.kind == "b" else dtype
    exact = _integers(array, integer)
    if exact is not None and (dtype.kind != "b" or exact.max(initial=0) <= 1):
        return exact.astype(dtype)
    if scalable:
        return array  # nibabel picks scl_slope/scl_inter for the integer type
    low, high = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    raise ValueError(
        f"{path}: the on-disk dtype {dtype} holds integers in [{low}, {high}], the image has other"
        " values; scale the data or pass dtype=np.float32"
    )


def _nibabel_writer(array, image: Image, dtype, ext, path) -> Callable[[str], None]:
    import nibabel as nib

    ndim, channels = image.ndim, array.shape[0]
    header = image.header
    if ext in MGH:
        if dtype not in [np.dtype(d) for d in MGH_DTYPES]:
            raise ValueError(f"dtype: MGH stores {[np.dtype(d).name for d in MGH_DTYPES]}, got {dtype}")
        data = np.moveaxis(array, 0, -1) if channels > 1 else array[0]
        data = _on_disk(data, dtype, path, scalable=False)
        own = isinstance(header, nib.freesurfer.mghformat.MGHHeader)
        img = nib.MGHImage(data, image.affine, header.copy() if own else None)
        return img.to_filename
    if channels == 1:
        data = array[0]
    elif ndim == 3 and not (isinstance(header, nib.Nifti1Header) and header["dim"][0] == 5):
        data = np.moveaxis(array, 0, -1)  # (X, Y, Z, T)
    else:  # vector image (X, Y, Z, 1, C); 2-D as (X, Y, 1, 1, C)
        spatial = array.shape[1:] + (1,) * (3 - ndim)
        data = np.moveaxis(array, 0, -1).reshape(*spatial, 1, channels)
    data = _on_disk(data, dtype, path, scalable=True)
    kind = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    old = header.copy() if isinstance(header, nib.Nifti1Header) else None
    img = kind(data, image.affine, old)
    img.set_data_dtype(dtype)
    sform_code = int(old["sform_code"]) if old is not None else 0
    qform_code = int(old["qform_code"]) if old is not None else 0
    img.set_sform(image.affine, code=sform_code or 2)
    img.set_qform(image.affine, code=qform_code or sform_code or 2)
    return img.to_filename


def _picture_writer(array, dtype, ext, path) -> Callable[[str], None]:
    from PIL import Image as PILImage

    if array.ndim != 3 or array.shape[0] not in (1, 3, 4):
        raise ValueError(
            f"image: {ext} stores 2-D pictures with 1, 3 or 4 channels (C, H, W), got shape {array.shape}"
        )
    data = _on_disk(array, dtype, path, scalable=False)
    data = data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
    try:
        pic = PILImage.fromarray(np.ascontiguousarray(data))
    except Exception as err:
        raise ValueError(f"{path}: pillow cannot store {data.dtype} data of shape {data.shape} ({err})") from None
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}[ext]

    def write(target: str) -> None:
        try:
            pic.save(target, format=fmt)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{path}: {fmt} cannot store a {pic.mode} picture of {data.dtype} ({err})") from None

    return write


def atomic_write(path: str, ext: str, write: Callable[[str], None]) -> None:
    """Run ``write(temporary)`` on a hidden file of the same folder and extension, then rename it
    to ``path`` (os.replace is atomic on one file system); on any failure remove the temporary."""
    folder, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=ext)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
