"""fastreg.register: two images in, a displacement field on the fixed image's grid out.

    reg = fastreg.register("fixed.nii.gz", "moving.nii.gz", model="unireg-2d")
    reg.disp              # (ndim, *S_fixed) voxels of the fixed grid
    reg.warped            # Image: the moving image on the fixed grid
    reg.warp_labels("moving_labels.nii.gz")
    reg.save("out/", format="itk")

Inputs (fixed, moving, labels) are paths, `fastreg.io.Image`s, or tensors / numpy arrays of
spatial shape (H, W) or (D, H, W) (identity affine: unit spacing, voxel = mm); images of
several channels (RGB pictures) are registered on their channel mean.

Field convention (`fastreg.io.fields`): fixed voxel x corresponds to the world point
A_f (x + disp(x)) of the moving image, A_f the fixed voxel -> RAS map, so the moving image on
any grid is warped by ``fastreg.io.apply_field(moving, disp, fixed)`` (``fastreg.warp`` when
both share a grid). The affine pre-alignment is part of ``disp``.

Pipeline (the keys of ``timings``, seconds):
  load     the inputs read; an image with a NaN is refused (ValueError).
  affine   the moving image put on the fixed grid through both affines (world alignment);
           then, when ``affine`` says so, `fastreg.affine_register` (12 dof, Mattes MI) on it:
           a homogeneous matrix M in fixed voxels (x -> M x is where the content of fixed
           voxel x lies, before the deformable part).
  model    both images resampled onto the model's canonical grid: the fixed image's axes
           reoriented to RAS (2-D: RA) and made isotropic at ``spacing`` (default: the
           model's own, ``model.spacing``, e.g. 2 mm for dpvfa-3d; a model without one runs
           at the fixed image's smallest spacing); the moving
           image through M; intensities normalised (``intensity``: "mr" robust min-max
           between the 0.5 and 99.5 percentiles, "ct" the window [-1000, 1000] HU, "none"
           already in [0, 1]), clipped to [0, 1]; the network pads to its own multiple.
  nio      (``nio=True``) `fastreg.nio.optimize` refines the prediction on the pair.
  field    the canonical field u mapped back to the fixed grid and composed with M:
           disp(x) = M (x + B u(y(x))) - x, y(x) the canonical voxel of fixed voxel x, B the
           linear part of the canonical -> fixed voxel map.
  inverse  the model's own inverse for a velocity model (``model.svf``, no NIO: exp(-v),
           fastreg.models.base), else `fastreg.invert_field` of u, composed with M^-1 the
           same way; where u folds it has no inverse (``stats["inverse_converged"]`` False,
           no warning printed).
  stats    CC and MI (normalised intensities, before = world-aligned only, after = warped),
           Dice per label when both label maps are given, `fastreg.metrics.jacobian_stats`.
"""
from __future__ import annotations

import contextlib

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastreg import _validate as check
from fastreg import metrics, nio as nio_module
from fastreg.affine import affine_coords, affine_field, affine_register
from fastreg.io import Image, apply_field, load, reorient, resample, save, save_field
from fastreg.io.image import PICTURE, extension
from fastreg.io.space import grid_map, voxel_coords
from fastreg.models import RegistrationModel
from fastreg.models import weights as shipped
from fastreg.ops.invert import InversionWarning, invert_field
from fastreg.ops.warp import sample

AFFINE_MODES = ("auto", "on", "off")
INTENSITIES = ("mr", "ct", "none")
CT_WINDOW = (-1000.0, 1000.0)  # HU mapped to [0, 1] by the "ct" preset
PERCENTILES = (0.005, 0.995)  # robust min-max of the "mr" preset
CENTRE_TOLERANCE = 3.0  # voxels: affine="auto" aligns when the centres of mass differ more
QUANTILE_SAMPLES = 1 << 20  # voxels the percentiles are estimated on (a regular subsample)
FIELD_FORMATS = ("voxel", "world", "itk")
NUMPY_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float32, torch.float64)


@dataclass
class Registration:
    """What `register` returns.

    fixed, moving  the input Images (their own grids and intensities)
    disp           (ndim, *S_fixed) float32 displacement in voxels of the fixed grid
    inverse        (ndim, *S_fixed) the inverse map on the same grid: z + inverse(z) is the
                   fixed voxel whose content the moving image (on the fixed grid) holds at z
    matrix         (ndim + 1, ndim + 1) float64 affine M in fixed voxels (identity when off)
    affine_used    whether the affine pre-alignment ran
    warped         Image: the moving image warped onto the fixed grid (linear)
    stats          dict of floats (module docstring); "dice" a {label: value} dict
    timings        dict of seconds per stage
    model_name     what was registered with (a name, checkpoint path or class name)
    warped_labels  Image: ``moving_labels`` warped (nearest, dtype kept), or None
    """

    fixed: Image
    moving: Image
    disp: torch.Tensor
    inverse: torch.Tensor
    matrix: np.ndarray
    affine_used: bool
    warped: Image
    stats: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    model_name: str = ""
    warped_labels: Image | None = None

    def warp(self, image, mode: str = "bilinear"):
        """``image`` (a path, Image, or a tensor / array of the moving image's spatial shape or
        (C, *S), on the moving grid) warped onto the fixed grid: an Image for a path or Image,
        a float tensor of the input's layout ((C, *S_fixed) or S_fixed) otherwise. ``mode``: "bilinear" or "nearest"."""
        source, raw = _on_moving_grid(image, "image", self.moving)
        out = apply_field(source, self.disp, self.fixed, mode=mode)
        return out if raw is None else _like_raw(out.data, raw, self.moving.ndim)

    def warp_labels(self, labels):
        """An integer label map on the moving grid warped by nearest neighbour: an Image with
        the file's dtype for a path or Image, a tensor of the input's dtype and layout otherwise."""
        source, raw = _on_moving_grid(labels, "labels", self.moving)
        _integer_labels(source, "labels")
        out = apply_field(source, self.disp, self.fixed, mode="nearest")
        if raw is None:
            return out
        return _like_raw(out.data, raw, self.moving.ndim).to(raw.dtype)

    def save(self, folder, format: str = "voxel", preview: bool = True) -> list[Path]:
        """Write the results into the existing folder ``folder``: warped.nii.gz (warped.png when
        the moving image is a picture), field.nii.gz and inverse.nii.gz (``format``: "voxel",
        "world" or "itk", `fastreg.io.fields`), warped_labels.nii.gz (when labels were given),
        affine.txt (when the pre-alignment ran: the (ndim + 1)-square RAS-mm map of fixed world
        points to moving world points), stats.json, preview.png. Returns the paths written."""
        check.choice(format, "format", FIELD_FORMATS)
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"folder: {folder} is not an existing folder")
        written = []
        picture = self.moving.path is not None and extension(self.moving.path) in PICTURE
        warped = folder / ("warped.png" if picture else "warped.nii.gz")
        image = self.warped
        if picture:
            info = np.iinfo(image.dtype) if image.dtype.kind in "iu" else np.iinfo(np.uint8)
            image = Image(image.data.round().clamp(info.min, info.max), image.affine, None, info.dtype)
        save(warped, image)
        written.append(warped)
        for name, disp in (("field.nii.gz", self.disp), ("inverse.nii.gz", self.inverse)):
            save_field(folder / name, disp, self.fixed, format=format)
            written.append(folder / name)
        if self.warped_labels is not None:
            save(folder / "warped_labels.nii.gz", self.warped_labels)
            written.append(folder / "warped_labels.nii.gz")
        if self.affine_used:
            np.savetxt(folder / "affine.txt", self.world_matrix(),
                       header="fixed RAS mm -> moving RAS mm (homogeneous)")
            written.append(folder / "affine.txt")
        summary = {"model": self.model_name, "affine": self.affine_used, "stats": self.stats,
                   "timings": self.timings, "field_format": format}
        (folder / "stats.json").write_text(json.dumps(summary, indent=2))
        written.append(folder / "stats.json")
        if preview:
            written.append(self.preview(folder / "preview.png"))
        return written

    def world_matrix(self) -> np.ndarray:
        """The pre-alignment as a world map: A_f M A_f^-1 ((ndim + 1) square, RAS mm)."""
        a = grid_map(self.fixed, "fixed.affine")
        return a @ self.matrix @ np.linalg.inv(a)

    def preview(self, path) -> Path:
        """A PNG of checkerboard, overlay, deformation grid and det J map (3-D: middle slice of axis 0)."""
        import matplotlib.pyplot as plt

        from fastreg import viz

        fixed = normalize(_grey(self.fixed).data, "mr")[None]
        warped = normalize(_grey(self.warped).data, "mr")[None]
        fig, axes = plt.subplots(1, 4, figsize=(16, 4))
        viz.checkerboard(fixed, warped, axes[0])
        viz.overlay(fixed, warped, axes[1])
        viz.deformation_grid(self.disp[None], axes[2], background=fixed)
        viz.jacobian_map(self.disp[None], axes[3])
        return viz.save_figure(fig, path)


def register(
    fixed,
    moving,
    *,
    model="auto",
    nio: bool = False,
    affine: str = "auto",
    fixed_labels=None,
    moving_labels=None,
    device=None,
    half: bool = False,
    intensity: str = "mr",
    iterations=None,
    max_seconds: float | None = None,
    nio_similarity: str = "lncc",
    passes: int | None = None,
    spacing="model",
) -> Registration:
    """Register ``moving`` to ``fixed`` (module docstring: inputs, conventions, stages).

    ``model``: "auto" (the shipped pretrained model of the images' dimensionality), a shipped
    name (`fastreg.models.weights.names()`), a `fastreg train` checkpoint file or run folder,
    or a `RegistrationModel` instance (moved to ``device``). ``nio``: refine by neural
    instance optimisation (``iterations`` per stage, ``max_seconds`` budget, ``nio_similarity``
    "lncc" (the paper) or "mi" for images of different contrasts: see `fastreg.nio.optimize`).
    ``affine``: "auto" (pre-align when the grids differ or the centres of mass are more than
    3 voxels apart), "on" or "off". ``fixed_labels`` /
    ``moving_labels``: integer maps on the fixed / moving grid (warped; Dice when both).
    ``device``: where the network runs (default: CUDA when available). ``half``: the network
    under autocast (float16 on CUDA, bfloat16 on CPU; NIO's steps in bfloat16 on both, see
    `fastreg.nio.optimize`); fields stay float32. ``passes``: apply
    the network this many times for this call (fastreg.models.base, Recursion; default the
    model's own: 2 for the shipped unireg-2d, 1 the fastest); the model is left as it was.
    ``spacing``: the isotropic voxel size (mm) the network runs at: "model" (``model.spacing``,
    the size its weights were trained for, or the fixed image's smallest spacing when the
    model has none), None (the fixed image's smallest spacing) or a positive number.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    check.choice(affine, "affine", AFFINE_MODES)
    check.choice(intensity, "intensity", INTENSITIES)
    check.choice(nio_similarity, "nio_similarity", nio_module.SIMILARITIES)
    if not isinstance(nio, bool) or not isinstance(half, bool):
        raise TypeError(f"nio, half: expected bools, got {type(nio).__name__}, {type(half).__name__}")
    fixed, moving = as_input(fixed, "fixed"), as_input(moving, "moving")
    if fixed.ndim != moving.ndim:
        raise ValueError(f"moving: expected a {fixed.ndim}-D image like fixed, got a {moving.ndim}-D one")
    ndim = fixed.ndim
    labels_f = _labels(fixed_labels, "fixed_labels", fixed)
    labels_m = _labels(moving_labels, "moving_labels", moving)
    device = device_for(device)
    net, model_name = resolve_model(model, ndim, device)
    if spacing == "model":
        spacing = net.spacing
    elif spacing is not None:
        spacing = check.positive_number(spacing, "spacing")
    timings["load"] = _lap(clock)

    clock = time.perf_counter()
    fixed_g, moving_g = _grey(fixed), _grey(moving)
    fixed_n = Image(normalize(fixed_g.data, intensity), fixed.affine)
    moving_n = Image(normalize(moving_g.data, intensity), moving.affine)
    moving_on_fixed = resample(moving_n, fixed_n)
    matrix = np.eye(ndim + 1)
    used = affine == "on" or (affine == "auto" and _needs_affine(fixed_n, moving_n, moving_on_fixed))
    if used:
        matrix = affine_register(fixed_n.data[None], moving_on_fixed.data[None], spacing=fixed.spacing,
                                 moving_spacing=fixed.spacing)[0].numpy()
    timings["affine"] = _lap(clock)

    clock = time.perf_counter()
    canonical = canonical_grid(fixed_n, spacing)
    to_canonical = np.linalg.inv(grid_map(canonical, "canonical")) @ grid_map(fixed_n, "fixed.affine")
    through_m = np.linalg.inv(to_canonical) @ matrix @ to_canonical  # M in canonical voxels (homogeneous)
    fixed_c = resample(fixed_n, canonical).data[None].to(device)
    moving_c = apply_field(moving_n, affine_field(torch.from_numpy(through_m), canonical.shape)[0], canonical)
    moving_c = moving_c.data[None].clamp(0, 1).to(device)
    fixed_c = fixed_c.clamp(0, 1)
    with _passes(net, passes):
        with torch.no_grad(), _autocast(half, device):
            u = net(fixed_c, moving_c).float()
        timings["model"] = _lap(clock)
        if nio:
            clock = time.perf_counter()
            u = nio_module.optimize(net, fixed_c, moving_c, iterations=iterations, max_seconds=max_seconds,
                                    similarity=nio_similarity, half=half).disp.float()
            timings["nio"] = _lap(clock)

    clock = time.perf_counter()
    disp = _compose(matrix, _to_fixed(u, canonical, to_canonical, fixed.shape))
    timings["field"] = _lap(clock)

    clock = time.perf_counter()
    inverse_converged = True
    if net.svf and not nio:
        with torch.no_grad(), _autocast(half, device):
            u_inv = net.inverse(fixed_c, moving_c).float()
    else:
        u_inv, inverse_converged = _invert(u)
    d_inv = _to_fixed(u_inv, canonical, to_canonical, fixed.shape)
    back = np.linalg.inv(matrix)
    inverse = sample(d_inv[None], affine_coords(torch.from_numpy(back), fixed.shape), padding_mode="border")[0]
    inverse = inverse + affine_field(torch.from_numpy(back), fixed.shape)[0]
    timings["inverse"] = _lap(clock)

    clock = time.perf_counter()
    warped = apply_field(moving, disp, fixed)
    warped_n = apply_field(moving_n, disp, fixed_n).data[None]
    stats = {
        "cc_before": float(metrics.cc(fixed_n.data[None], moving_on_fixed.data[None])[0]),
        "cc_after": float(metrics.cc(fixed_n.data[None], warped_n)[0]),
        "mi_before": float(metrics.mutual_information(fixed_n.data[None], moving_on_fixed.data[None])[0]),
        "mi_after": float(metrics.mutual_information(fixed_n.data[None], warped_n)[0]),
    }
    stats.update({k: float(v[0]) for k, v in metrics.jacobian_stats(disp[None]).items()})
    stats["inverse_converged"] = inverse_converged
    result = Registration(fixed, moving, disp, inverse, matrix, used, warped, stats, timings, model_name)
    if labels_m is not None:
        result.warped_labels = result.warp_labels(labels_m)
        if labels_f is not None:
            found = torch.unique(torch.cat([labels_f.data.flatten(), result.warped_labels.data.flatten()]))
            found = [int(v) for v in found if v != 0]
            scores = metrics.dice(labels_f.data.long(), result.warped_labels.data.long(), found)[0]
            stats["dice"] = {str(k): float(s) for k, s in zip(found, scores)}
            stats["dice_mean"] = float(scores.mean()) if found else float("nan")
    timings["stats"] = _lap(clock)
    return result


# -- inputs ---------------------------------------------------------------------------------
def as_input(value, name: str) -> Image:
    """An Image from a path, Image, or (H, W) / (D, H, W) tensor or array (identity affine);
    ValueError for a missing or unreadable file or an image holding NaN."""
    if isinstance(value, Image):
        image = value
    elif isinstance(value, (str, os.PathLike)):
        image = load(value)
    elif isinstance(value, (torch.Tensor, np.ndarray)):
        data = torch.as_tensor(value)
        if data.dim() not in (2, 3):
            raise ValueError(f"{name}: expected a (H, W) or (D, H, W) image, got shape {tuple(data.shape)}")
        data = data.detach().cpu()
        float64 = data.dtype == torch.float64
        stored = data.dtype if data.dtype in NUMPY_DTYPES else torch.float32
        image = Image(data[None].to(torch.float64 if float64 else torch.float32),
                      dtype=np.dtype(str(stored).replace("torch.", "")))
    else:
        raise TypeError(f"{name}: expected a path, fastreg.io.Image, tensor or array, got {type(value).__name__}")
    if torch.isnan(image.data).any():
        source = f" ({image.path})" if image.path else ""
        raise ValueError(f"{name}{source}: the image holds NaN voxels; fill or mask them before registering")
    return image


def _labels(value, name: str, like: Image) -> Image | None:
    if value is None:
        return None
    labels = as_input(value, name)
    if labels.data.shape[0] != 1:
        raise ValueError(f"{name}: expected a single-channel label map, got {labels.data.shape[0]} channels")
    if labels.shape != like.shape or not np.allclose(labels.affine, like.affine, atol=1e-3):
        image = "fixed" if name.startswith("fixed") else "moving"
        raise ValueError(f"{name}: expected a label map on the {image} image's grid {like.shape}, got {labels.shape}"
                         f" with affine {labels.affine.tolist()}")
    _integer_labels(labels, name)
    return labels


def _integer_labels(labels: Image, name: str) -> None:
    data = labels.data
    if not torch.equal(data, data.round()) or labels.dtype.kind == "f" and data.abs().max() > 2**24:
        source = f" ({labels.path})" if labels.path else ""
        raise ValueError(f"{name}{source}: expected an integer label map, got non-integer values")


def _on_moving_grid(value, name: str, moving: Image):
    """(Image on the moving grid, the raw tensor when the input was a tensor or array)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        raw = torch.as_tensor(value)
        data = raw[None] if raw.dim() == moving.ndim else raw
        if tuple(data.shape[1:]) != moving.shape or data.dim() != moving.ndim + 1:
            raise ValueError(
                f"{name}: expected the moving image's shape {moving.shape} (or (C, *S)), got {tuple(raw.shape)}"
            )
        source = Image(data.float(), moving.affine)
        return source, raw
    source = as_input(value, name)
    if source.ndim != moving.ndim:
        raise ValueError(f"{name}: expected a {moving.ndim}-D image like moving, got a {source.ndim}-D one")
    return source, None


def _like_raw(data: torch.Tensor, raw: torch.Tensor, ndim: int) -> torch.Tensor:
    """(C, *S) ``data`` without its channel axis when ``raw`` was a spatial-only image."""
    return data[0] if raw.dim() == ndim else data


def _grey(image: Image) -> Image:
    if image.data.shape[0] == 1:
        return image
    return Image(image.data.mean(0, keepdim=True), image.affine, image.header, np.float32, image.path)


def device_for(device) -> torch.device:
    """``device`` as a torch.device (None: CUDA when available, else CPU); ValueError when
    CUDA is asked for and absent."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device} was asked for, but CUDA is not available here (use cpu)")
    return device


def resolve_model(model, ndim: int, device) -> tuple[RegistrationModel, str]:
    """(the model on ``device`` in eval mode, a name for reports) from ``register``'s ``model``."""
    if isinstance(model, RegistrationModel):
        net, label = model, type(model).__name__
    elif model == "auto":
        candidates = [n for n in shipped.pretrained() if shipped.WEIGHTS[n].ndim == ndim]
        if not candidates:
            known = [n for n in shipped.names() if shipped.WEIGHTS[n].ndim == ndim]
            raise ValueError(
                f"model: no pretrained {ndim}-D model is shipped yet (known names: {known}, none with weights);"
                " train one with `fastreg train RECIPE` and pass its checkpoint (model=PATH, --model PATH)"
            )
        net, label = shipped.load(candidates[0], device), candidates[0]
    elif isinstance(model, str) and model in shipped.WEIGHTS:
        net, label = shipped.load(model, device), model
    elif isinstance(model, (str, os.PathLike)) and os.path.exists(model):
        net, label = shipped.load_checkpoint(model, device), os.fspath(model)
    else:
        raise ValueError(
            f"model: expected 'auto', a pretrained name ({', '.join(shipped.names())}), a checkpoint path or a"
            f" RegistrationModel, got {model!r}"
        )
    if net.ndim != ndim:
        raise ValueError(f"model: {label} registers {net.ndim}-D images, the inputs are {ndim}-D")
    return net.to(device).eval(), label


# -- geometry and intensities ------------------------------------------------------------------
def normalize(data: torch.Tensor, intensity: str = "mr") -> torch.Tensor:
    """(C, *S) intensities mapped to [0, 1]: "mr" robust min-max (0.5 and 99.5 percentiles,
    clipped), "ct" the HU window CT_WINDOW, "none" only clipped. A constant image gives 0."""
    data = data.float()
    if intensity == "none":
        return data.clamp(0, 1)
    if intensity == "ct":
        low, high = CT_WINDOW
    else:
        flat = data.flatten()
        flat = flat[:: max(1, flat.numel() // QUANTILE_SAMPLES)]
        low, high = (float(q) for q in torch.quantile(flat, torch.tensor(PERCENTILES)))
    if high <= low:
        return torch.zeros_like(data)
    return ((data - low) / (high - low)).clamp(0, 1)


def canonical_grid(fixed: Image, spacing: float | None = None) -> Image:
    """An empty Image whose grid covers ``fixed``'s: axes reoriented to RAS (2-D: RA),
    isotropic at ``spacing`` mm (None: ``fixed``'s smallest spacing), voxel 0 at the
    reoriented voxel 0."""
    ndim = fixed.ndim
    oriented = reorient(Image(fixed.data[:1], fixed.affine), "RAS"[:ndim])
    sizes = np.array(oriented.spacing)
    step = sizes.min() if spacing is None else spacing
    shape = tuple(int(np.floor((n - 1) * s / step + 1e-6)) + 1 for n, s in zip(oriented.shape, sizes))
    affine = oriented.affine.copy()
    affine[:3, :ndim] *= step / sizes
    return Image(torch.empty((1, *shape)), affine)


def _needs_affine(fixed: Image, moving: Image, moving_on_fixed: Image) -> bool:
    if fixed.shape != moving.shape or not np.allclose(fixed.affine, moving.affine, atol=1e-3):
        return True
    return bool(np.linalg.norm(_centre(fixed.data) - _centre(moving_on_fixed.data)) > CENTRE_TOLERANCE)


def _centre(data: torch.Tensor) -> np.ndarray:
    """Intensity centre of mass (voxels) of a (1, *S) image."""
    weights = data[0].double()
    total = weights.sum().clamp_min(1e-12)
    ndim = weights.dim()
    profiles = [weights.sum(dim=[b for b in range(ndim) if b != a]) for a in range(ndim)]  # one per axis
    return np.array([float((p * torch.arange(p.numel(), dtype=torch.float64)).sum() / total) for p in profiles])


def _to_fixed(u: torch.Tensor, canonical: Image, to_canonical: np.ndarray, shape) -> torch.Tensor:
    """The canonical-grid field u (1, ndim, *S_c) as a displacement (ndim, *S) of fixed voxels."""
    ndim = len(shape)
    coords = voxel_coords(to_canonical, shape, torch.float32, u.device)
    at = sample(u.float(), coords, padding_mode="border")[0]
    linear = torch.as_tensor(np.linalg.inv(to_canonical)[:ndim, :ndim], dtype=torch.float32, device=u.device)
    return torch.tensordot(linear, at, dims=1).cpu()


def _invert(u: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(invert_field(u), whether every voxel converged): a field that folds has no inverse
    there, which ``stats["inverse_converged"]`` reports instead of an InversionWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        u_inv = invert_field(u)
    folds = False
    for w in caught:
        if issubclass(w.category, InversionWarning):
            folds = True
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return u_inv, not folds


def _compose(matrix: np.ndarray, d: torch.Tensor) -> torch.Tensor:
    """disp(x) = M (x + d(x)) - x on the fixed grid."""
    ndim = d.shape[0]
    linear = torch.as_tensor(matrix[:ndim, :ndim], dtype=torch.float32)
    return affine_field(torch.from_numpy(matrix), d.shape[1:])[0] + torch.tensordot(linear, d, dims=1)


@contextlib.contextmanager
def _passes(net: RegistrationModel, passes: int | None):
    """``net`` applied ``passes`` times inside the block (None: unchanged), restored after."""
    previous = net.passes
    if passes is not None:
        net.set_passes(passes)
    try:
        yield
    finally:
        net.passes = previous


def _autocast(half: bool, device: torch.device):
    if not half:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def _lap(start: float) -> float:
    return time.perf_counter() - start
