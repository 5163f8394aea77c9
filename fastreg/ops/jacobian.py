"""jacobian_det and jacobian_stats: the Jacobian determinant of x -> x + disp(x) and the
numbers registration papers report about it.

Contract (every backend; per-element math in csrc/jacobian/jacobian.h):
  disp  (B, ndim, *S)   2-D (H, W) or 3-D (D, H, W); channel a moves along spatial axis a
                        (ij order), in voxels. With ``spacing`` (ndim voxel sizes, e.g. mm)
                        disp is in the same physical units and derivatives are physical;
                        the determinant equals that of disp / spacing in voxels.
  det   (B, *S)         det(I + d disp / dx), same dtype as disp.
Modes (derivative of u along an axis of size n at index i):
  "central"  Learn2Reg's evaluation: (u[i+1] - u[i-1]) / 2 with zero padding, exactly
             scipy.ndimage.correlate(u, [-0.5, 0, 0.5], mode='constant'), identity added.
  "forward"  u[i+1] - u[i]; 0 at the last index (the field is extended by replication, as
             the D+ differences of Liu et al. 2024).
  "gradient" VoxelMorph's jacobian_determinant: np.gradient of (disp + grid), central inside,
             one-sided at both ends; every spatial size must be >= 2.
A NaN gives NaN at exactly the voxels whose stencil reads it. Gradients flow to disp (first
order), so the determinant serves as a folding penalty (fastreg.nn.JacobianLoss).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from fastreg import _backend, _library
from fastreg import _validate as check
from fastreg.reference import jacobian as reference

MODES = ("central", "forward", "gradient")

# Order of the float64 sums returned by the jacobian_stats kernels (enum Stats in jacobian.h).
(NAN, FOLDS, LOG3_SUM, LOG3_SQ, POSITIVE, LOG_SUM, LOG_SQ, DET_SUM, DET_SQ, NDV) = range(10)
N_STATS = 10


def jacobian_det(disp: torch.Tensor, mode: str = "central", spacing: float | Sequence[float] | None = None) -> torch.Tensor:
    """Jacobian determinant (B, *S) of x -> x + disp(x), disp (B, ndim, *S).

    Example::

        det = fastreg.jacobian_det(flow)                    # Learn2Reg (central, zero padding)
        det = fastreg.jacobian_det(flow, mode="gradient")   # VoxelMorph (np.gradient)
        folds = (det <= 0).float().mean()
    """
    _, mode_index, sp = check.jacobian(disp, mode, spacing, MODES)
    shape = (disp.shape[0], *disp.shape[2:])
    if math.prod(shape) == 0:
        return _backend.empty_result(shape, disp)
    backend = _backend.select("jacobian_det", disp.device)
    if backend == "reference":
        return _backend.run_reference(reference.jacobian_det, disp, mode, sp)
    return _library.kernel("jacobian_det_forward", backend)(disp, mode_index, list(sp))


def jacobian_stats(
    disp: torch.Tensor,
    mode: str = "central",
    spacing: float | Sequence[float] | None = None,
    crop: int = 2,
) -> dict[str, torch.Tensor]:
    """Folding and smoothness statistics of disp (B, ndim, *S): a dict of (B,) float64 tensors.

    Over the voxels at least ``crop`` voxels from every border (default 2, Learn2Reg's crop;
    0 = the whole field), with the determinant of ``mode``:
      folding_percent  100 * share of det <= 0 (%|J| of the papers).
      sdlogj           Learn2Reg's SDlogJ: std of log(clip(det + 3, 1e-9, 1e9)).
      sdlogj_plain     std of log(det) over the voxels with det > 0.
      ndv_percent      non-diffeomorphic volume of Liu et al. (IJCV 2024, "On finite difference
                       Jacobian computation in deformable image registration") in % of the
                       region: per voxel the 10 tetrahedra (3-D; 4 triangles in 2-D) of their
                       digital-diffeomorphism criterion, field replicated across the border,
                       sum of max(-det_t, 0) / 12 (2-D: / 4). Independent of ``mode``.
      jdet_std         std of det.
    Standard deviations are population ones (numpy's default). A batch item whose region
    stencils read a NaN gets NaN everywhere. The kernels make one fused pass (no determinant
    map) accumulating float64 sums; no gradient.
    """
    _, mode_index, sp = check.jacobian(disp, mode, spacing, MODES)
    check.crop(crop, disp.shape[2:])
    disp = disp.detach()
    if disp.shape[0] == 0:
        return finalize_stats(disp.new_zeros((0, N_STATS), dtype=torch.float64), 1)
    backend = _backend.select("jacobian_stats", disp.device)
    if backend == "reference":
        return _backend.run_reference(reference.jacobian_stats, disp, mode, sp, crop)
    sums = _library.kernel("jacobian_stats", backend)(disp, mode_index, list(sp), crop)
    region = 1
    for size in disp.shape[2:]:  # a loop, not a generator: torch.compile(fullgraph=True) traces it
        region *= size - 2 * crop
    return finalize_stats(sums, region)


def finalize_stats(sums: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """The statistics from the kernels' float64 sums (B, N_STATS) over n region voxels."""

    def std(total, squares, count):
        mean = total / count
        return torch.sqrt(torch.clamp(squares / count - mean * mean, min=0.0))

    positive = sums[:, POSITIVE]
    out = {
        "folding_percent": 100.0 * sums[:, FOLDS] / n,
        "sdlogj": std(sums[:, LOG3_SUM], sums[:, LOG3_SQ], n),
        "sdlogj_plain": std(sums[:, LOG_SUM], sums[:, LOG_SQ], positive),
        "ndv_percent": 100.0 * sums[:, NDV] / n,
        "jdet_std": std(sums[:, DET_SUM], sums[:, DET_SQ], n),
    }
    bad = sums[:, NAN] > 0
    return {k: torch.where(bad, torch.full_like(v, math.nan), v) for k, v in out.items()}


# --- the op family's declaration (fastreg/_library.py) ------------------------------------


def _fake_forward(disp, mode, spacing):
    return disp.new_empty((disp.shape[0], *disp.shape[2:]))


def _fake_stats(disp, mode, spacing, crop):
    return disp.new_empty((disp.shape[0], N_STATS), dtype=torch.float64)


def _reference(disp, mode, spacing):
    return reference.jacobian_det(disp, MODES[mode], spacing)


FAMILY = _library.Family(
    name="jacobian",
    fakes={"jacobian_det_forward": _fake_forward, "jacobian_stats": _fake_stats},
    autograd=(_library.Autograd("jacobian_det_forward", "jacobian_det_backward", _reference, output_mask=False),),
)
if _library.triton_runnable():
    from fastreg.triton import jacobian as _triton  # noqa: F401  (defines fastreg::jacobian_*_triton)
_library.register(FAMILY)
