"""The peers' formulas, once, for the benchmarks (fastreg.bench.cases, model_cases) and the
tests: each written from the peer's published code or paper (peers.md), in plain torch,
numpy or scipy, or a thin wrapper building the installed peer's module at its first call.

Registration ops the way the models' authors' public code computes them, as one
``fastreg.models.kernels.Kernels`` table (PEER_KERNELS): a model with
``model.kernels = PEER_KERNELS`` is the same architecture with the same weights on the
peers' ops, the baseline of the model benchmarks (fastreg.bench.model_cases).

  warp           VoxelMorph's legacy SpatialTransformer (VxmLegacyTransformer: an ij grid
                 per size and padding, normalised, F.grid_sample)
  compose        v + warp(u, v) with that transformer (border padding, as fastreg.compose)
  resize_field   VoxelMorph's ResizeTransform (vxm_legacy_resize); ``size`` as fastreg's
  integrate_svf  VoxelMorph's legacy VecInt loop (VxmLegacyVecInt), one per size
  vfa_attention, local_correlation
                 unfold + matmul, the VFA papers' form (fastreg.reference.correlation)
The loss's similarity of the peers is VoxelMorph's convolution NCC
(fastreg.reference.lncc.voxelmorph_ncc): ``peer_lncc``.

Other peers: ``grid_sample_at`` (torch's grid_sample at voxel coordinates), Learn2Reg's
Jacobian evaluation (``learn2reg_jacdet``, ``learn2reg_stats``, ``learn2reg_sdlogj``),
VoxelMorph's ``jacobian_determinant`` (``vxm_jacdet``), Liu et al.'s non-diffeomorphic
volume (``liu_ndv_percent``), and ``LazyModule`` / ``MonaiLoss`` (installed VoxelMorph and
MONAI modules built at their first call, as a user holds them).
"""
from __future__ import annotations

import importlib
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from fastreg.models.kernels import Kernels
from fastreg.reference import correlation
from fastreg.reference.lncc import voxelmorph_ncc
from fastreg.reference.warp import identity_grid


class VxmLegacyTransformer(torch.nn.Module):
    """VoxelMorph's legacy ``SpatialTransformer`` (voxelmorph/torch/layers.py) from its
    published formula: an ij meshgrid buffer made once per size (the module holds it),
    ``new_locs = grid + flow``, each axis normalised as ``2 * (loc / (size - 1) - 0.5)``,
    channels moved last and reversed to (x, y[, z]), then
    ``F.grid_sample(image, new_locs, align_corners=True, mode=mode)`` (zero padding;
    ``padding_mode`` "border" is the feature warp of the VFA/DP-VFA code). With ``size`` the
    grid is the float32 buffer "grid" (1, ndim, *size) of the original's state_dict; without,
    it is made at the first call, in the field's dtype.

    Called as ``transformer(image=(B, C, *S), disp=(B|1, ndim, *S))``.
    """

    def __init__(self, mode: str = "bilinear", padding_mode: str = "zeros", size=None):
        super().__init__()
        self.mode, self.padding_mode = mode, padding_mode
        self.register_buffer("grid", None if size is None else identity_grid(tuple(size), "cpu", torch.float32))

    def forward(self, image: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        shape = disp.shape[2:]
        grid = self.grid
        if grid is None or grid.shape[2:] != shape or grid.device != disp.device or grid.dtype != disp.dtype:
            grid = self.grid = identity_grid(shape, disp.device, disp.dtype)
        new_locs = grid + disp
        for i, size in enumerate(shape):
            new_locs[:, i, ...] = 2 * (new_locs[:, i, ...] / (size - 1) - 0.5)
        ndim = len(shape)
        new_locs = new_locs.permute(0, *range(2, ndim + 2), 1)[..., list(range(ndim - 1, -1, -1))]
        return F.grid_sample(image, new_locs, align_corners=True, mode=self.mode, padding_mode=self.padding_mode)


class VxmLegacyVecInt:
    """VoxelMorph's legacy ``VecInt(inshape, nsteps)`` (voxelmorph/torch/layers.py) from its
    published formula: ``vec = vec * 2**-nsteps``, then ``nsteps`` times
    ``vec = vec + transformer(vec, vec)`` with the legacy SpatialTransformer (zero padding).

    Called as ``integrate(v=(B, ndim, *S))``.
    """

    def __init__(self, steps: int):
        self.steps = steps
        self.transformer = VxmLegacyTransformer("bilinear")

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        vec = v * (1.0 / 2**self.steps)
        for _ in range(self.steps):
            vec = vec + self.transformer(vec, vec)
        return vec


def vxm_legacy_resize(u: torch.Tensor, factor) -> torch.Tensor:
    """VoxelMorph's legacy ``ResizeTransform`` (its ``vel_resize`` is 1 / factor): below 1
    interpolate then scale the vectors, above 1 scale then interpolate
    (F.interpolate, (bi|tri)linear, align_corners=True); ``u`` itself at 1."""
    mode = ("bilinear", "trilinear")[u.dim() - 4]
    if factor < 1:
        return factor * F.interpolate(u, align_corners=True, scale_factor=factor, mode=mode)
    if factor > 1:
        return F.interpolate(factor * u, align_corners=True, scale_factor=factor, mode=mode)
    return u


def grid_sample_at(image: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """``F.grid_sample(align_corners=True)`` of ``image`` (B, C, *S) at voxel coordinates
    ``coords`` (B, ndim, *S_out), ij order (a size-1 axis maps every position to its voxel)."""
    sizes = image.shape[2:]
    grid = torch.stack([coords[:, a] * (2.0 / (n - 1)) - 1 if n > 1 else coords[:, a] * 0
                        for a, n in enumerate(sizes)][::-1], dim=-1)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


# --- Jacobian evaluations (numpy / scipy) -----------------------------------------------


def learn2reg_jacdet(disp: np.ndarray) -> np.ndarray:
    """Learn2Reg's evaluation determinant (B, *S) of ``disp`` (B, ndim, *S) in voxels:
    scipy.ndimage.correlate with [-0.5, 0, 0.5] (mode='constant'), identity added, the
    cofactor expansion."""
    from scipy.ndimage import correlate

    ndim = disp.shape[1]
    grads = []
    for b in range(ndim):
        shape = [1] * (ndim + 1)
        shape[1 + b] = 3
        kernel = np.array([-0.5, 0, 0.5]).reshape(shape)
        grads.append(np.stack([correlate(disp[:, a], kernel, mode="constant", cval=0.0) for a in range(ndim)], 1))
    J = np.stack(grads, 2) + np.eye(ndim).reshape(1, ndim, ndim, *([1] * ndim))  # (B, a, b, *S)
    if ndim == 2:
        return J[:, 0, 0] * J[:, 1, 1] - J[:, 0, 1] * J[:, 1, 0]
    return (J[:, 0, 0] * (J[:, 1, 1] * J[:, 2, 2] - J[:, 1, 2] * J[:, 2, 1])
            - J[:, 1, 0] * (J[:, 0, 1] * J[:, 2, 2] - J[:, 0, 2] * J[:, 2, 1])
            + J[:, 2, 0] * (J[:, 0, 1] * J[:, 1, 2] - J[:, 0, 2] * J[:, 1, 1]))


def learn2reg_stats(disp: np.ndarray, crop: int = 2):
    """Learn2Reg's SDlogJ ``std(log(clip(det + 3, 1e-9, 1e9)))`` and folding percentage
    (det <= 0) per batch item, on the determinant cropped by ``crop`` voxels; returns
    (sdlogj (B,), folding percent (B,), cropped det (B, N))."""
    det = learn2reg_jacdet(disp)
    region = (slice(None),) + tuple(slice(crop, s - crop) for s in det.shape[1:])
    det = det[region].reshape(det.shape[0], -1)
    return np.log((det + 3).clip(1e-9, 1e9)).std(1), 100 * (det <= 0).mean(1), det


def learn2reg_sdlogj(disp: torch.Tensor) -> torch.Tensor:
    """Learn2Reg's SDlogJ and fold count per batch item (2, B), 2 voxels cropped, in numpy
    on the CPU (the benchmark peer of fastreg.metrics.jacobian_stats)."""
    sdlogj, _, det = learn2reg_stats(disp.detach().cpu().numpy())
    return torch.from_numpy(np.stack([sdlogj, (det <= 0).sum(1)]))


def vxm_jacdet(disp: np.ndarray) -> np.ndarray:
    """VoxelMorph's ``jacobian_determinant`` (B, *S): np.gradient of disp + grid."""
    ndim = disp.shape[1]
    out = []
    for item in disp:
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in item.shape[1:]], indexing="ij"))
        J = np.stack([np.stack(np.gradient(item[a] + grid[a]), 0) for a in range(ndim)], 0)  # (a, b, *S)
        out.append(np.linalg.det(np.moveaxis(J, (0, 1), (-2, -1))))
    return np.stack(out)


def liu_ndv_percent(disp: np.ndarray, crop: int = 0) -> np.ndarray:
    """Liu et al.'s non-diffeomorphic volume in percent per batch item (digital_diffeomorphism):
    displacement edge-padded, finite differences of the deformation (D0, D+, D- and, in 3-D,
    the two central tetrahedra), sum of -0.5 min(det, 0) / 6 (/ 2 in 2-D)."""
    ndim = disp.shape[1]
    out = []
    for item in disp:
        pad = np.pad(item, [(0, 0)] + [(1, 1)] * ndim, mode="edge")
        grid = np.stack(np.meshgrid(*[np.arange(-1, s + 1) for s in item.shape[1:]], indexing="ij"))
        phi = pad + grid

        def at(offset):
            return phi[(slice(None),) + tuple(slice(1 + o, phi.shape[1 + k] - 1 + o) for k, o in enumerate(offset))]

        def unit(k, s):
            return [s if j == k else 0 for j in range(ndim)]

        c = at([0] * ndim)
        dplus = [at(unit(k, 1)) - c for k in range(ndim)]
        dminus = [c - at(unit(k, -1)) for k in range(ndim)]
        dets = []
        for signs in np.ndindex(*([2] * ndim)):
            cols = [dplus[k] if s == 0 else dminus[k] for k, s in enumerate(signs)]
            dets.append(np.linalg.det(np.moveaxis(np.stack(cols, 1), (0, 1), (-2, -1))))
        if ndim == 3:
            j1 = [at([-1, -1, 0]) - c, at([-1, 0, -1]) - c, at([0, -1, -1]) - c]
            j2 = [at([1, 1, 0]) - c, at([0, 1, 1]) - c, at([1, 0, 1]) - c]
            for cols in (j1, j2):
                dets.append(np.linalg.det(np.moveaxis(np.stack(cols, 1), (0, 1), (-2, -1))))
        weight = 0.5 / (6 if ndim == 3 else 2)
        ndv = sum(-weight * np.minimum(d, 0) for d in dets)
        region = tuple(slice(crop, s - crop) for s in ndv.shape)
        out.append(100 * ndv[region].sum() / ndv[region].size)
    return np.array(out)


# --- installed peers -------------------------------------------------------------------


class LazyModule:
    """A peer nn.Module built at its first call on a device and dtype (importing its
    package then) and held after, one instance per (device, dtype) as a user would."""

    def __init__(self, module: str, cls: str, **kwargs):
        self.module, self.cls, self.kwargs = module, cls, kwargs
        self.instances: dict = {}

    def __call__(self, *args: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        tensors = (*args, *inputs.values())  # the case's inputs, in order, passed positionally
        key = (tensors[0].device, tensors[0].dtype)
        if key not in self.instances:
            with warnings.catch_warnings():  # MONAI announces its native grid_sample path
                warnings.simplefilter("ignore", UserWarning)
                self.instances[key] = getattr(importlib.import_module(self.module), self.cls)(**self.kwargs)
        return self.instances[key](*tensors)


class MonaiLoss:
    """MONAI's LocalNormalizedCrossCorrelationLoss(ndim, kernel_size=window), built at the
    first call (importing MONAI) and held after, as a user would; called as
    ``loss(fixed, moving)``, it computes MONAI's ``loss(moving, fixed)``."""

    def __init__(self, ndim: int, window: int):
        self.ndim, self.window, self.loss = ndim, window, None

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        if self.loss is None:
            losses = importlib.import_module("monai.losses")
            self.loss = losses.LocalNormalizedCrossCorrelationLoss(self.ndim, kernel_size=self.window)
        return self.loss.to(moving.device)(moving, fixed)


# --- the models' ops on the peers' formulas ---------------------------------------------

_TRANSFORMERS: dict = {}  # (padding_mode, spatial shape) -> the module a model would hold
_INTEGRATORS: dict = {}  # (steps, spatial shape) -> VecInt


def _transformer(padding_mode: str, shape) -> VxmLegacyTransformer:
    key = (padding_mode, tuple(shape))
    if key not in _TRANSFORMERS:
        _TRANSFORMERS[key] = VxmLegacyTransformer("bilinear", padding_mode)
    return _TRANSFORMERS[key]


def warp(image: torch.Tensor, disp: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    return _transformer(padding_mode, disp.shape[2:])(image, disp)


def compose(u: torch.Tensor, v: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    return v + warp(u, v, padding_mode)


def resize_field(u: torch.Tensor, size=None, scale_factor=None) -> torch.Tensor:
    ndim = u.dim() - 2
    if scale_factor is not None:
        return vxm_legacy_resize(u, scale_factor)
    factors = [(n - 1) / (o - 1) if o > 1 else 1.0 for n, o in zip(size, u.shape[2:])]
    scale = torch.tensor(factors, dtype=u.dtype, device=u.device).view(1, ndim, *[1] * ndim)
    return F.interpolate(u, size=tuple(size), mode=("bilinear", "trilinear")[ndim - 2], align_corners=True) * scale


def integrate_svf(v: torch.Tensor, steps: int = 7) -> torch.Tensor:
    key = (steps, tuple(v.shape[2:]))
    if key not in _INTEGRATORS:
        _INTEGRATORS[key] = VxmLegacyVecInt(steps)
    return _INTEGRATORS[key](v)


def vfa_attention(q: torch.Tensor, k: torch.Tensor, radius: int = 1) -> torch.Tensor:
    return correlation.vfa_attention_unfold(q, k, radius)


def local_correlation(f, m, radius: int = 1, scale="rsqrt_channels", padding_mode: str = "zeros") -> torch.Tensor:
    value = f.shape[1] ** -0.5 if scale == "rsqrt_channels" else (1.0 if scale is None else scale)
    return correlation.local_correlation_unfold(f, m, radius, value, padding_mode)


def peer_lncc(fixed: torch.Tensor, moved: torch.Tensor, window: int = 9) -> torch.Tensor:
    """Mean squared local cc (window^ndim box) by VoxelMorph's five convolutions."""
    return -voxelmorph_ncc(fixed, moved, window)


PEER_KERNELS = Kernels(
    warp=warp,
    compose=compose,
    resize_field=resize_field,
    integrate_svf=integrate_svf,
    vfa_attention=vfa_attention,
    local_correlation=local_correlation,
)
