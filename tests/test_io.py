"""fastreg.io: image and field files in physical space, against nibabel, scipy, ANTsPy and SimpleITK.

Real data come from installed packages (nibabel's test images, scikit-image's camera and
astronaut); geometry and fields are drawn fresh from the run's seed (tests/conftest.py).
"""
import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.testing import data_path
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

import fastreg
import fastreg.io as fio
from fastreg.data import random_smooth_field

ANATOMICAL = os.path.join(data_path, "anatomical.nii")  # (33, 41, 25) int16, SPM header
SERIES = os.path.join(data_path, "example4d.nii.gz")  # (128, 96, 24, 2) int16
MGZ = os.path.join(data_path, "test.mgz")  # (3, 4, 5, 2) float32


def oblique_affine(ndim: int) -> np.ndarray:
    """A random rotation (all three axes in 3-D, in-plane in 2-D), anisotropic spacing, offset."""
    affine = np.eye(4)
    if ndim == 3:
        rotation = Rotation.from_euler("xyz", (torch.rand(3) * 50 - 25).tolist(), degrees=True).as_matrix()
    else:
        angle = float(torch.rand(()) * 1.2 - 0.6)
        rotation = np.eye(3)
        rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    spacing = (0.6 + 1.6 * torch.rand(3)).tolist()
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = (torch.rand(3) * 40 - 20).tolist()
    return affine


def real_image(ndim: int) -> torch.Tensor:
    """(1, *S) float32 in [0, 1]: nibabel's anatomical volume, or a random crop of the camera."""
    if ndim == 3:
        data = fio.load(ANATOMICAL).data
        return data / data.max()
    import skimage.data

    top, left = torch.randint(0, 200, (2,)).tolist()
    return torch.from_numpy(skimage.data.camera()[top : top + 160 : 4, left : left + 176 : 4] / 255.0).float()[None]


def oblique_image(ndim: int) -> fio.Image:
    return fio.Image(real_image(ndim), oblique_affine(ndim))


# --- images: round trips -------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nifti_round_trip_keeps_data_affine_header_dtype(tmp_path, ext):
    src = fio.load(ANATOMICAL)
    assert src.shape == (33, 41, 25) and src.data.shape[0] == 1 and src.dtype == np.int16
    raw = np.asanyarray(nib.load(ANATOMICAL).dataobj)
    assert torch.equal(src.data[0], torch.from_numpy(raw.astype(np.float32)))
    fio.save(tmp_path / f"a{ext}", src)
    back = fio.load(tmp_path / f"a{ext}")
    assert torch.equal(back.data, src.data) and back.dtype == np.int16
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-6)
    for key in ("descrip", "qform_code", "sform_code", "xyzt_units", "dim"):
        assert np.array_equal(back.header[key], src.header[key]), key
    assert back.spacing == pytest.approx((2.0, 2.0, 2.0)) and src.axcodes == "LAS"


def test_nifti2_round_trip_stays_nifti2(tmp_path):
    src = fio.load(os.path.join(data_path, "example_nifti2.nii.gz"))
    assert isinstance(src.header, nib.Nifti2Header) and src.data.shape == (2, 32, 20, 12)
    fio.save(tmp_path / "n2.nii.gz", src)
    assert isinstance(nib.load(tmp_path / "n2.nii.gz"), nib.Nifti2Image)
    back = fio.load(tmp_path / "n2.nii.gz")
    assert torch.equal(back.data, src.data) and back.dtype == src.dtype
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-6)
    assert repr(back).startswith("Image(channels=2, shape=(32, 20, 12), spacing=(")


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nifti_random_float_round_trip(tmp_path, ndim, dtype):
    shape = (7, 9, 5)[:ndim]
    data = torch.randn(1, *shape, dtype=torch.float64 if dtype == np.float64 else torch.float32)
    image = fio.Image(data, oblique_affine(ndim), dtype=dtype)
    fio.save(tmp_path / "r.nii.gz", image)
    back = fio.load(tmp_path / "r.nii.gz", ndim=ndim, channels=1)
    assert back.data.dtype == data.dtype and torch.equal(back.data, data) and back.dtype == dtype
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-5)
    assert back.spacing == pytest.approx(image.spacing, abs=1e-5)


def test_nifti_series_channels_round_trip(tmp_path):
    series = fio.load(SERIES)
    assert series.data.shape == (2, 128, 96, 24)
    fio.save(tmp_path / "s.nii", series)
    back = fio.load(tmp_path / "s.nii")
    assert torch.equal(back.data, series.data) and back.dtype == series.dtype
    assert tuple(nib.load(tmp_path / "s.nii").shape) == (128, 96, 24, 2)


def test_integer_dtype_with_non_integral_values_scales_in_nifti(tmp_path):
    data = torch.rand(1, 6, 5, 4) * 50
    fio.save(tmp_path / "q.nii", fio.Image(data, dtype=np.int16))
    back = fio.load(tmp_path / "q.nii")
    assert back.dtype == np.int16
    torch.testing.assert_close(back.data, data, atol=50 / 30000, rtol=0)  # scl_slope quantization


@pytest.mark.parametrize("ext", [".mgz", ".mgh"])
def test_mgh_round_trip(tmp_path, ext):
    src = fio.load(MGZ)
    assert src.data.shape == (2, 3, 4, 5) and src.dtype == np.float32
    fio.save(tmp_path / f"m{ext}", src)
    back = fio.load(tmp_path / f"m{ext}")
    assert torch.equal(back.data, src.data) and back.dtype == np.float32
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-5)
    anatomical = fio.load(ANATOMICAL)
    fio.save(tmp_path / f"a{ext}", anatomical)
    again = fio.load(tmp_path / f"a{ext}")
    assert torch.equal(again.data, anatomical.data) and again.dtype == np.int16
    np.testing.assert_allclose(again.affine, anatomical.affine, atol=1e-4)
    fio.save(tmp_path / "from_mgh.nii.gz", again)  # an MGH header is not a NIfTI one: a fresh header
    crossed = fio.load(tmp_path / "from_mgh.nii.gz")
    assert torch.equal(crossed.data, anatomical.data) and crossed.dtype == np.int16
    np.testing.assert_allclose(crossed.affine, anatomical.affine, atol=1e-4)


@pytest.mark.parametrize(
    "ext,channels,dtype", [(".png", 1, np.uint8), (".png", 3, np.uint8), (".png", 4, np.uint8),
                           (".png", 1, np.uint16), (".tif", 1, np.float32), (".tiff", 3, np.uint8)]
)
def test_picture_round_trip(tmp_path, ext, channels, dtype):
    import skimage.data

    top, left = torch.randint(0, 400, (2,)).tolist()
    if channels == 1 and dtype == np.uint8:
        data = torch.from_numpy(skimage.data.camera()[top : top + 37, left : left + 53].astype(np.float32))[None]
    elif dtype == np.uint8:
        rgb = skimage.data.astronaut()[top : top + 37, left : left + 53].astype(np.float32)
        data = torch.from_numpy(np.moveaxis(rgb, -1, 0).copy())
        if channels == 4:
            data = torch.cat([data, torch.randint(0, 256, (1, 37, 53)).float()])
    elif dtype == np.uint16:
        data = torch.randint(0, 65536, (1, 37, 53)).float()
    else:
        data = torch.randn(1, 37, 53)
    fio.save(tmp_path / f"p{ext}", fio.Image(data, dtype=dtype))
    back = fio.load(tmp_path / f"p{ext}")
    assert back.data.shape == (channels, 37, 53) and back.ndim == 2 and back.dtype == dtype
    assert torch.equal(back.data, data)
    assert np.array_equal(back.affine, np.eye(4)) and back.spacing == (1.0, 1.0) and back.axcodes == "RA"


def test_jpeg_round_trip_is_close_and_rows_are_the_first_axis(tmp_path):
    import skimage.data
    from PIL import Image as PILImage

    camera = skimage.data.camera()[:64, :96]
    PILImage.fromarray(camera).save(tmp_path / "c.png")
    image = fio.load(tmp_path / "c.png")
    assert image.shape == (64, 96) and torch.equal(image.data[0], torch.from_numpy(camera).float())
    fio.save(tmp_path / "c.jpg", image)
    back = fio.load(tmp_path / "c.jpg")
    assert back.dtype == np.uint8 and (back.data - image.data).abs().mean() < 4


def test_save_with_like_takes_affine_and_header(tmp_path):
    like = fio.load(ANATOMICAL)
    result = torch.rand(1, *like.shape)
    fio.save(tmp_path / "w.nii.gz", result, like=like)
    back = fio.load(tmp_path / "w.nii.gz")
    assert torch.equal(back.data, result) and back.dtype == np.float32
    np.testing.assert_allclose(back.affine, like.affine)
    assert back.header["descrip"] == like.header["descrip"]
    with pytest.raises(ValueError, match="like: expected the spatial shape"):
        fio.save(tmp_path / "x.nii.gz", torch.rand(1, 4, 5, 6), like=like)
    with pytest.raises(ValueError, match="like: expected an Image"):
        fio.save(tmp_path / "x.nii.gz", torch.rand(1, 4, 5, 6))


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "keep.jpg"
    target.write_bytes(b"old contents")
    rgba = fio.Image(torch.randint(0, 256, (4, 9, 11)).float(), dtype=np.uint8)
    with pytest.raises(ValueError, match="JPEG cannot store"):
        fio.save(target, rgba)  # pillow fails inside the write: RGBA has no JPEG form
    assert target.read_bytes() == b"old contents" and os.listdir(tmp_path) == ["keep.jpg"]
    with pytest.raises(ValueError, match="holds integers"):
        fio.save(tmp_path / "f.png", fio.Image(torch.rand(1, 5, 5), dtype=np.uint8))
    assert os.listdir(tmp_path) == ["keep.jpg"]


# --- orientation and resampling --------------------------------------------------------------


@pytest.mark.parametrize("codes", ["RAS", "LPS", "ASR", "PIL", "SLA"])
def test_reorient_there_and_back_keeps_world_positions(codes):
    image = oblique_image(3)
    image.data = image.data + torch.rand_like(image.data)
    turned = fio.reorient(image, codes)
    assert turned.axcodes == codes and sorted(turned.shape) == sorted(image.shape)
    index = [int(torch.randint(0, n, ())) for n in turned.shape]
    world = turned.affine @ np.array(index + [1.0])
    old = np.linalg.solve(image.affine, world)[:3]
    np.testing.assert_allclose(old, np.round(old), atol=1e-9)
    assert turned.data[(0, *index)] == image.data[(0, *np.round(old).astype(int))]
    back = fio.reorient(turned, image.axcodes)
    assert torch.equal(back.data, image.data)
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-12)


def test_reorient_2d():
    image = oblique_image(2)
    turned = fio.reorient(image, "PL")
    assert turned.axcodes == "PL" and turned.shape == image.shape[::-1]
    back = fio.reorient(turned, image.axcodes)
    assert torch.equal(back.data, image.data) and np.allclose(back.affine, image.affine)


def _reference_resample(image: fio.Image, like: fio.Image, order: int) -> tuple[np.ndarray, np.ndarray]:
    """scipy.ndimage.map_coordinates at A_image^-1 A_like x, and the mask of positions inside."""
    ndim = image.ndim
    rows = list(range(ndim)) + [3]
    block = lambda a: a[np.ix_(rows, rows)]  # noqa: E731
    matrix = np.linalg.inv(block(image.affine)) @ block(like.affine)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in like.shape], indexing="ij")).reshape(ndim, -1)
    pos = matrix[:ndim, :ndim] @ grid + matrix[:ndim, ndim:]
    values = map_coordinates(image.data[0].double().numpy(), pos, order=order, mode="constant")
    inside = np.all((pos >= 0) & (pos <= np.array(image.shape)[:, None] - 1), axis=0)
    if order == 0:  # float32 and float64 positions may round apart next to a half voxel
        inside &= np.all(np.abs(pos - np.floor(pos) - 0.5) > 1e-3, axis=0)
    return values.reshape(like.shape), inside.reshape(like.shape)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_resample_matches_map_coordinates(ndim, mode):
    image = oblique_image(ndim)
    if mode == "nearest":
        image.data = torch.randint(0, 9, image.data.shape).float()
    shape = tuple(int(n) for n in torch.randint(12, 30, (ndim,)))
    like = fio.Image(torch.zeros(1, *shape), oblique_affine(ndim))
    centre = lambda img: np.array(img.shape + (0,) * (3 - ndim)) / 2  # noqa: E731
    like.affine[:3, 3] = image.affine[:3, :3] @ centre(image) + image.affine[:3, 3] - like.affine[:3, :3] @ centre(like)
    out = fio.resample(image, like, mode=mode)
    assert out.shape == shape and np.array_equal(out.affine, like.affine) and out.dtype == image.dtype
    expected, inside = _reference_resample(image, like, order=1 if mode == "bilinear" else 0)
    assert inside.sum() > 100  # enough voxels inside the image to compare (random sizes: 16 % seen)
    got = out.data[0].double().numpy()
    np.testing.assert_allclose(got[inside], expected[inside], atol=1e-5)
    double = fio.resample(fio.Image(image.data.double(), image.affine), like, mode=mode).data[0].numpy()
    np.testing.assert_allclose(double[inside], expected[inside], atol=1e-10)


# --- fields ------------------------------------------------------------------------------


def field_case(ndim: int):
    fixed = oblique_image(ndim)
    disp = random_smooth_field(fixed.shape, magnitude=1.5, spacing=8, generator=torch.Generator().manual_seed(
        int(torch.randint(0, 2**31, ())))).squeeze(0)
    return fixed, disp


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("fmt", ["voxel", "world", "itk"])
def test_field_round_trip(tmp_path, ndim, fmt):
    fixed, disp = field_case(ndim)
    fio.save_field(tmp_path / "d.nii.gz", disp[None], fixed, format=fmt)
    back = fio.load_field(tmp_path / "d.nii.gz", fixed)  # the format is detected
    assert back.shape == disp.shape and back.dtype == torch.float32
    torch.testing.assert_close(back, disp, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(fio.load_field(tmp_path / "d.nii.gz", fixed, format=fmt), back)


@pytest.mark.parametrize("ndim", [2, 3])
def test_voxel_field_is_learn2reg_layout(tmp_path, ndim):
    """Learn2Reg's evaluation reads disp (*S, ndim) and samples the moving image at
    identity + disp with scipy's map_coordinates: the same as fastreg.warp."""
    fixed, disp = field_case(ndim)
    moving = fixed.data + 0.1 * torch.rand_like(fixed.data)
    fio.save_field(tmp_path / "disp.nii.gz", disp, fixed)
    raw = nib.load(tmp_path / "disp.nii.gz").get_fdata()
    assert raw.shape == (*fixed.shape, ndim)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.shape], indexing="ij"))
    pos = grid + np.moveaxis(raw, -1, 0)
    theirs = map_coordinates(moving[0].double().numpy(), pos, order=1, mode="constant")
    ours = fastreg.warp(moving[None], disp[None])[0, 0].double().numpy()
    inside = np.all((pos >= 0) & (pos <= np.array(fixed.shape).reshape(-1, *[1] * ndim) - 1), axis=0)
    np.testing.assert_allclose(ours[inside], theirs[inside], atol=1e-5, rtol=1e-5)


def test_world_field_holds_ras_millimetres(tmp_path):
    fixed, disp = field_case(3)
    fio.save_field(tmp_path / "w.nii", disp, fixed, format="world")
    raw = nib.load(tmp_path / "w.nii").get_fdata()
    index = [int(torch.randint(0, n, ())) for n in fixed.shape]
    start = fixed.affine @ np.array(index + [1.0])
    end = fixed.affine @ np.array((np.array(index) + disp[(slice(None), *index)].double().numpy()).tolist() + [1.0])
    np.testing.assert_allclose(raw[tuple(index)], (end - start)[:3], atol=1e-4)


def _inside(fixed: fio.Image, moving: fio.Image, disp: torch.Tensor, margin: float = 0.01) -> np.ndarray:
    """Voxels of the fixed grid whose sample position A_moving^-1 A_fixed (x + disp(x)) lies inside
    the moving image (ITK's rules at the border differ from zero padding)."""
    ndim = fixed.ndim
    rows = list(range(ndim)) + [3]
    matrix = np.linalg.inv(moving.affine[np.ix_(rows, rows)]) @ fixed.affine[np.ix_(rows, rows)]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.shape], indexing="ij")).reshape(ndim, -1)
    pos = matrix[:ndim, :ndim] @ (grid + disp.double().numpy().reshape(ndim, -1)) + matrix[:ndim, ndim:]
    inside = np.all((pos >= margin) & (pos <= np.array(moving.shape)[:, None] - 1 - margin), axis=0)
    return inside.reshape(fixed.shape)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("grid", ["shared", "other"])
def test_itk_field_applied_by_antspy_and_simpleitk_equals_fastreg(tmp_path, ndim, grid):
    """ANTs and SimpleITK apply the saved "itk" field to the moving image as fastreg.warp does
    (moving on the fixed grid) or fastreg.io.apply_field (moving on its own oblique grid)."""
    import ants
    import SimpleITK as sitk

    fixed, disp = field_case(ndim)
    affine = fixed.affine if grid == "shared" else oblique_affine(ndim)
    if grid == "other":  # voxel sizes within 25 % of the fixed ones, centred on the fixed grid
        scale = np.array(fixed.spacing) * (0.8 + 0.4 * torch.rand(ndim).numpy())
        affine[:3, :ndim] *= scale / np.linalg.norm(affine[:3, :ndim], axis=0)
        centre = lambda img, a: a[:3, :3] @ (np.array(img.shape + (0,) * (3 - ndim)) / 2) + a[:3, 3]  # noqa: E731
        affine[:3, 3] += centre(fixed, fixed.affine) - centre(fixed, affine)
    moving = fio.Image(fixed.data.flip(1) * 0.5 + torch.rand_like(fixed.data) * 0.2, affine)
    fio.save(tmp_path / "fixed.nii.gz", fixed)
    fio.save(tmp_path / "moving.nii.gz", moving)
    fio.save_field(tmp_path / "warp.nii.gz", disp, fixed, format="itk")
    assert nib.load(tmp_path / "warp.nii.gz").header.get_intent()[0] == "vector"
    ours = fio.apply_field(moving, disp, fixed).data[0].double().numpy()
    if grid == "shared":
        np.testing.assert_array_equal(ours, fastreg.warp(moving.data[None], disp[None])[0, 0].double().numpy())
    inside = _inside(fixed, moving, disp)
    assert inside.mean() > 0.3

    warped = ants.apply_transforms(
        fixed=ants.image_read(str(tmp_path / "fixed.nii.gz")),
        moving=ants.image_read(str(tmp_path / "moving.nii.gz")),
        transformlist=[str(tmp_path / "warp.nii.gz")],
        interpolator="linear",
    ).numpy()
    np.testing.assert_allclose(warped[inside], ours[inside], atol=2e-5)

    field = sitk.ReadImage(str(tmp_path / "warp.nii.gz"), sitk.sitkVectorFloat64)
    reference = sitk.ReadImage(str(tmp_path / "fixed.nii.gz"), sitk.sitkFloat64)
    moved = sitk.Resample(
        sitk.ReadImage(str(tmp_path / "moving.nii.gz"), sitk.sitkFloat64),
        reference, sitk.DisplacementFieldTransform(field), sitk.sitkLinear, 0.0,
    )
    moved = np.transpose(sitk.GetArrayFromImage(moved))  # SimpleITK arrays are (z, y, x)
    np.testing.assert_allclose(moved[inside], ours[inside], atol=2e-5)


def test_itk_field_written_by_simpleitk_loads_into_voxels(tmp_path):
    """A field made by SimpleITK (LPS vectors, its own NIfTI writer) reads back as fastreg voxels."""
    import SimpleITK as sitk

    fixed, disp = field_case(3)
    fio.save(tmp_path / "fixed.nii.gz", fixed)
    reference = sitk.ReadImage(str(tmp_path / "fixed.nii.gz"), sitk.sitkFloat64)
    direction = np.array(reference.GetDirection()).reshape(3, 3) * np.array(reference.GetSpacing())
    lps = np.tensordot(direction, disp.double().numpy(), axes=1)  # voxel steps -> LPS mm, ITK's own geometry
    field = sitk.GetImageFromArray(np.transpose(lps, (3, 2, 1, 0)).copy(), isVector=True)
    field.CopyInformation(reference)
    sitk.WriteImage(field, str(tmp_path / "sitk.nii.gz"))
    back = fio.load_field(tmp_path / "sitk.nii.gz", fixed)
    assert back.dtype == torch.float64  # SimpleITK wrote float64 vectors
    torch.testing.assert_close(back.float(), disp, atol=1e-4, rtol=1e-4)


# --- bad input -----------------------------------------------------------------------------


def test_missing_unknown_unreadable_truncated_files(tmp_path):
    with pytest.raises(ValueError, match="nope.nii.gz: file not found"):
        fio.load(tmp_path / "nope.nii.gz")
    (tmp_path / "scan.xyz").write_bytes(b"123")
    with pytest.raises(ValueError, match=r"path: unknown extension .*scan.xyz"):
        fio.load(tmp_path / "scan.xyz")
    with pytest.raises(ValueError, match="path: unknown extension"):
        fio.save(tmp_path / "out.hdf5", fio.load(ANATOMICAL))
    with pytest.raises(TypeError, match="path: expected a path"):
        fio.load(42)
    (tmp_path / "junk.nii").write_bytes(os.urandom(500))
    with pytest.raises(ValueError, match="junk.nii: cannot read the image"):
        fio.load(tmp_path / "junk.nii")
    (tmp_path / "junk.png").write_bytes(os.urandom(300))
    with pytest.raises(ValueError, match="junk.png: cannot read the picture"):
        fio.load(tmp_path / "junk.png")
    whole = gzip.compress(open(ANATOMICAL, "rb").read())
    (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="cut.nii.gz: cannot read the image"):
        fio.load(tmp_path / "cut.nii.gz")
    (tmp_path / "cut.nii").write_bytes(open(ANATOMICAL, "rb").read()[:20000])
    with pytest.raises(ValueError, match="cut.nii: cannot read the image"):
        fio.load(tmp_path / "cut.nii")
    with pytest.raises(ValueError, match="the folder .* does not exist"):
        fio.save(tmp_path / "no" / "dir.nii", fio.load(ANATOMICAL))


def test_series_where_one_volume_is_expected():
    with pytest.raises(ValueError, match=r"example4d.nii.gz: expected 1 channel\(s\)"):
        fio.load(SERIES, channels=1)
    with pytest.raises(ValueError, match="anatomical.nii: expected a 2-D image, got a 3-D image"):
        fio.load(ANATOMICAL, ndim=2)


def test_bad_fields(tmp_path):
    fixed, disp = field_case(3)
    with pytest.raises(ValueError, match="disp: expected the spatial shape"):
        fio.save_field(tmp_path / "d.nii.gz", disp[:, 1:], fixed)
    with pytest.raises(ValueError, match=r"disp: expected a field \(3, \*S\)"):
        fio.save_field(tmp_path / "d.nii.gz", disp[:2], fixed)
    with pytest.raises(TypeError, match="disp: expected a floating-point tensor"):
        fio.save_field(tmp_path / "d.nii.gz", disp.round().int(), fixed)
    with pytest.raises(ValueError, match=r"disp: expected a field \(3, 33, 41, 25\) on like's grid"):
        fio.apply_field(fixed, disp[:, :, 1:], fixed)
    with pytest.raises(ValueError, match="mode: expected one of"):
        fio.apply_field(fixed, disp, fixed, mode="cubic")
    with pytest.raises(ValueError, match="format: expected one of"):
        fio.save_field(tmp_path / "d.nii.gz", disp, fixed, format="mm")
    with pytest.raises(ValueError, match="fields are written as NIfTI"):
        fio.save_field(tmp_path / "d.mgz", disp, fixed)
    fio.save_field(tmp_path / "d.nii.gz", disp, fixed, format="world")
    other = fio.Image(fixed.data[:, :-2], fixed.affine)
    with pytest.raises(ValueError, match=r"d.nii.gz: expected a field of shape \(31, 41, 25, 3\)"):
        fio.load_field(tmp_path / "d.nii.gz", other)
    moved = fio.Image(fixed.data, fixed.affine + np.diag([0, 0, 0.3, 0]))
    with pytest.raises(ValueError, match="d.nii.gz: expected the affine of like"):
        fio.load_field(tmp_path / "d.nii.gz", moved)
    fio.save(tmp_path / "labels.nii.gz", fio.Image(torch.randint(0, 5, (3, *fixed.shape)).float(), dtype=np.int16))
    with pytest.raises(ValueError, match="labels.nii.gz: expected a floating-point displacement field, got int16"):
        fio.load_field(tmp_path / "labels.nii.gz", fixed)


def test_non_invertible_affines(tmp_path):
    fixed, disp = field_case(3)
    flat = fio.Image(fixed.data, np.diag([1.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="like.affine: expected an invertible"):
        fio.resample(fixed, flat)
    with pytest.raises(ValueError, match="image.affine: expected an invertible"):
        fio.resample(flat, fixed)
    with pytest.raises(ValueError, match="like.affine: expected an invertible"):
        fio.save_field(tmp_path / "d.nii.gz", disp, flat, format="itk")
    with pytest.raises(ValueError, match="image.affine: expected an invertible"):
        fio.reorient(flat, "RAS")
    with pytest.raises(ValueError, match="axcodes: expected"):
        fio.reorient(fixed, "RRS")
    with pytest.raises(ValueError, match="expected a finite"):
        fio.Image(fixed.data, np.full((4, 4), np.nan))
