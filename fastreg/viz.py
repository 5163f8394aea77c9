"""Pictures of registration inputs and results (matplotlib, Agg; never a window).

Inputs are torch tensors or numpy arrays: images (B, C, *S), (C, H, W), (D, H, W) or
(H, W), fields
(B, ndim, *S) or (ndim, *S) in voxels (ij channel order, fastreg's convention), 2-D (H, W)
or 3-D (D, H, W). The first batch item is drawn; an image with 3 channels is drawn in colour,
otherwise its first channel in gray. A 3-D volume is cut at ``index`` (default the middle)
along ``axis`` (0 = D, 1 = H, 2 = W); the in-plane field components are drawn and the plane's
row index points down, as in ``imshow``.

  image            one image (or a slice of a volume)             -> Axes
  pair             images side by side (fixed, moving[, warped])  -> Figure
  checkerboard     alternating tiles of two images                -> Axes
  overlay          fixed in magenta, warped in green (gray where they agree) -> Axes
  deformation_grid grid lines moved by x -> x + disp(x)           -> Axes
  jacobian_map     det(I + grad disp), folds (det <= 0) marked in black -> Axes
  slices           the three middle slices of a volume            -> Figure
Every function takes ``save=path`` to write a PNG of its figure (written to a temporary
name, then renamed: never a half-written file) and the Axes-drawing ones take ``ax=`` to
draw into an existing figure.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot: pictures are files, never windows

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fastreg.ops.jacobian import jacobian_det  # noqa: E402

__all__ = ["image", "pair", "checkerboard", "overlay", "deformation_grid", "jacobian_map", "slices", "save_figure"]

PANEL_INCHES = 3.0


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save: expected a .png path, got {str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"save: the folder of {str(path)!r} does not exist")
    handle, temporary = tempfile.mkstemp(suffix=".png", prefix=f".{path.stem}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            fig.savefig(file, format="png", dpi=fig.dpi, bbox_inches="tight")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _array(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    elif isinstance(x, np.ndarray):
        x = x.astype(np.float32)
    else:
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    return x


def _plane_of(x: np.ndarray, ndim: int, axis: int, index: int | None, name: str) -> np.ndarray:
    """(C, *S) -> (C, H', W') in-plane slice of a 3-D volume (or the 2-D image itself)."""
    if ndim == 2:
        return x
    if axis not in (0, 1, 2):
        raise ValueError(f"axis: expected 0, 1 or 2 for a 3-D volume, got {axis!r}")
    size = x.shape[1 + axis]
    index = size // 2 if index is None else index
    if not 0 <= index < size:
        raise ValueError(f"index: expected a slice in [0, {size}) along axis {axis} of {name}, got {index}")
    return np.take(x, index, axis=1 + axis)


def _image_plane(x, name: str, axis: int = 0, index: int | None = None) -> np.ndarray:
    """A 2-D gray (H, W) or colour (H, W, 3) plane of an image: 4-D and 5-D arrays are
    (B, C, *S) (the first item is drawn), 3-D ones (C, H, W) when the first axis is 1 or 3
    long, else a (D, H, W) volume; 2-D ones (H, W)."""
    x = _array(x, name)
    if x.ndim == 2 or (x.ndim == 3 and x.shape[0] not in (1, 3)):
        x = x[None]
    elif x.ndim in (4, 5):
        x = x[0]
    elif x.ndim != 3:
        raise ValueError(f"{name}: expected an image (B, C, *S), (C, H, W), (D, H, W) or (H, W), got shape {x.shape}")
    plane = _plane_of(x, x.ndim - 1, axis, index, name)
    if plane.shape[0] == 3:
        return np.clip(np.moveaxis(plane, 0, -1), 0, 1)
    return plane[0]


def _field_plane(disp, axis: int = 0, index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The field's in-plane components (row, column displacement), each (H', W')."""
    d = _array(disp, "disp")
    if d.ndim in (4, 5) and d.shape[1] == d.ndim - 2:
        d = d[0]
    ndim = d.ndim - 1
    if ndim not in (2, 3) or d.shape[0] != ndim:
        raise ValueError(f"disp: expected a field (B, ndim, *S) or (ndim, *S) with ndim 2 or 3, got shape {d.shape}")
    plane = _plane_of(d, ndim, axis, index, "disp")
    if ndim == 3:
        plane = plane[[a for a in range(3) if a != axis]]
    return plane[0], plane[1]


def _axes(ax: Axes | None) -> Axes:
    if ax is None:
        fig = Figure(figsize=(PANEL_INCHES, PANEL_INCHES))
        ax = fig.add_subplot()
    if not isinstance(ax, Axes):
        raise TypeError(f"ax: expected a matplotlib Axes or None, got {type(ax).__name__}")
    return ax


def _finish(ax: Axes, title: str | None, save) -> Axes:
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if save is not None:
        save_figure(ax.figure, save)
    return ax


def image(x, ax: Axes | None = None, *, axis: int = 0, index: int | None = None, title: str | None = None,
          cmap: str = "gray", save=None) -> Axes:
    """Draw one image (gray in [min, max], or colour in [0, 1]); returns the Axes."""
    ax = _axes(ax)
    plane = _image_plane(x, "x", axis, index)
    ax.imshow(plane, cmap=None if plane.ndim == 3 else cmap, interpolation="nearest")
    return _finish(ax, title, save)


def pair(fixed, moving, warped=None, *, axis: int = 0, index: int | None = None, titles=None, save=None) -> Figure:
    """Fixed, moving (and warped) side by side in one row; returns the Figure."""
    images = [fixed, moving] + ([] if warped is None else [warped])
    titles = titles or ["fixed", "moving", "warped"][:len(images)]
    fig = Figure(figsize=(PANEL_INCHES * len(images), PANEL_INCHES))
    for k, (x, title) in enumerate(zip(images, titles)):
        image(x, fig.add_subplot(1, len(images), k + 1), axis=axis, index=index, title=title)
    if save is not None:
        save_figure(fig, save)
    return fig


def _same_planes(a, b, names: tuple[str, str], axis: int, index) -> tuple[np.ndarray, np.ndarray]:
    pa, pb = _image_plane(a, names[0], axis, index), _image_plane(b, names[1], axis, index)
    if pa.shape[:2] != pb.shape[:2]:
        raise ValueError(f"{names[1]}: expected the size of {names[0]} {pa.shape[:2]}, got {pb.shape[:2]}")
    return pa, pb


def checkerboard(fixed, warped, ax: Axes | None = None, *, tiles: int = 8, axis: int = 0, index: int | None = None,
                 title: str | None = "checkerboard", save=None) -> Axes:
    """Alternating ``tiles`` x ``tiles`` squares of fixed and warped (both scaled to [0, 1])."""
    if isinstance(tiles, bool) or not isinstance(tiles, int) or tiles < 1:
        raise ValueError(f"tiles: expected a positive int, got {tiles!r}")
    a, b = (_unit(p) for p in _same_planes(fixed, warped, ("fixed", "warped"), axis, index))
    rows = (np.arange(a.shape[0]) * tiles // a.shape[0])[:, None]
    cols = (np.arange(a.shape[1]) * tiles // a.shape[1])[None, :]
    mask = (rows + cols) % 2 == 0
    if a.ndim == 3:
        mask = mask[..., None]
    ax = _axes(ax)
    ax.imshow(np.where(mask, a, b), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    return _finish(ax, title, save)


def overlay(fixed, warped, ax: Axes | None = None, *, axis: int = 0, index: int | None = None,
            title: str | None = "overlay", save=None) -> Axes:
    """Fixed in magenta and warped in green (each scaled to [0, 1]): gray where they agree."""
    a, b = _same_planes(fixed, warped, ("fixed", "warped"), axis, index)
    a, b = (_unit(p.mean(-1) if p.ndim == 3 else p) for p in (a, b))
    ax = _axes(ax)
    ax.imshow(np.stack([a, b, a], axis=-1), interpolation="nearest")
    return _finish(ax, title, save)


def _unit(x: np.ndarray) -> np.ndarray:
    low, high = float(np.nanmin(x)), float(np.nanmax(x))
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


def deformation_grid(disp, ax: Axes | None = None, *, spacing: int = 8, background=None, axis: int = 0,
                     index: int | None = None, title: str | None = "deformation", save=None) -> Axes:
    """Lines of a regular grid (every ``spacing`` voxels) moved by x -> x + disp(x), drawn
    over ``background`` (an image, optional). The lines follow the points a warp by ``disp``
    samples: where ``fastreg.warp(moving, disp)`` reads the moving image."""
    if isinstance(spacing, bool) or not isinstance(spacing, int) or spacing < 1:
        raise ValueError(f"spacing: expected a positive int, got {spacing!r}")
    du, dv = _field_plane(disp, axis, index)
    ax = _axes(ax)
    if background is not None:
        plane = _image_plane(background, "background", axis, index)
        if plane.shape[:2] != du.shape:
            raise ValueError(f"background: expected the field's size {du.shape}, got {plane.shape[:2]}")
        ax.imshow(plane, cmap="gray", interpolation="nearest")
    rows, cols = np.meshgrid(np.arange(du.shape[0]), np.arange(du.shape[1]), indexing="ij")
    y, x = rows + du, cols + dv
    for r in range(0, du.shape[0], spacing):
        ax.plot(x[r], y[r], color="tab:orange", linewidth=0.7)
    for c in range(0, du.shape[1], spacing):
        ax.plot(x[:, c], y[:, c], color="tab:orange", linewidth=0.7)
    ax.set_xlim(-0.5, du.shape[1] - 0.5)
    ax.set_ylim(du.shape[0] - 0.5, -0.5)
    ax.set_aspect("equal")
    return _finish(ax, title, save)


def jacobian_map(disp, ax: Axes | None = None, *, axis: int = 0, index: int | None = None,
                 title: str | None = None, save=None) -> Axes:
    """det(I + grad disp) (VoxelMorph's np.gradient mode, over the whole volume), in a
    blue (< 1, shrinking) to red (> 1, growing) map centred at 1, with folds (det <= 0) in
    solid black. The title gives the share of folding voxels of the whole field."""
    d = disp if isinstance(disp, torch.Tensor) else torch.from_numpy(_array(disp, "disp"))
    if d.dim() in (3, 4) and d.shape[0] == d.dim() - 1:
        d = d.unsqueeze(0)
    if not d.is_floating_point():
        raise TypeError(f"disp: expected a floating-point field, got {d.dtype}")
    det = jacobian_det(d[:1].detach().to("cpu", torch.float64), mode="gradient")
    folds = float((det <= 0).double().mean()) * 100
    plane = _plane_of(det.numpy(), det.dim() - 1, axis, index, "disp")[0]
    ax = _axes(ax)
    ax.imshow(plane, cmap="RdBu_r", vmin=0, vmax=2, interpolation="nearest")
    folded = np.ma.masked_where(plane > 0, np.ones_like(plane))
    ax.imshow(folded, cmap=matplotlib.colors.ListedColormap(["black"]), vmin=0, vmax=1, interpolation="nearest")
    return _finish(ax, title if title is not None else f"det J (folds {folds:.2f} %)", save)


def slices(volume, *, index: tuple[int, int, int] | None = None, titles=("axis 0", "axis 1", "axis 2"),
           save=None) -> Figure:
    """The three orthogonal slices of a 3-D volume (middle ones by default); returns the Figure."""
    fig = Figure(figsize=(PANEL_INCHES * 3, PANEL_INCHES))
    for axis in range(3):
        at = None if index is None else index[axis]
        image(volume, fig.add_subplot(1, 3, axis + 1), axis=axis, index=at, title=titles[axis])
    if save is not None:
        save_figure(fig, save)
    return fig
