"""jacobian_det and jacobian_stats in plain differentiable torch: the oracle of every test
and the fallback backend. Computes the determinant map (and, for the statistics, the maps of
the Liu et al. tetrahedra) explicitly.

Contract (shared by every backend, see csrc/jacobian/jacobian.h):
  disp (B, ndim, *S) displacement, channel a along spatial axis a (ij order); in voxels, or
  in physical units when ``spacing`` (ndim voxel sizes) is given: the determinant is then
  that of disp / spacing in voxels (the same as with physical derivatives).
  det (B, *S) = det(I + du/dx); derivatives per mode:
    "central"  (u[i+1] - u[i-1]) / 2, zero padding (Learn2Reg: scipy.ndimage.correlate with
               [-0.5, 0, 0.5], mode='constant');
    "forward"  u[i+1] - u[i], 0 at the last index (replicated border);
    "gradient" np.gradient (central inside, one-sided at both ends; sizes >= 2).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

STAT_KEYS = ("folding_percent", "sdlogj", "sdlogj_plain", "ndv_percent", "jdet_std")


def _voxel_units(disp: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    scale = torch.tensor([1.0 / s for s in spacing], dtype=disp.dtype, device=disp.device)
    return disp * scale.view(1, -1, *([1] * (disp.dim() - 2)))


def _derivative(u: torch.Tensor, dim: int, mode: str) -> torch.Tensor:
    n = u.shape[dim]
    if mode == "gradient":
        return torch.gradient(u, dim=dim, edge_order=1)[0]
    pad = [0, 0] * (u.dim() - dim - 1)
    if mode == "central":
        padded = F.pad(u, pad + [1, 1])
        return 0.5 * padded.narrow(dim, 2, n) - 0.5 * padded.narrow(dim, 0, n)
    diff = u.narrow(dim, 1, n - 1) - u.narrow(dim, 0, n - 1)
    return F.pad(diff, pad + [0, 1])


def _det(J) -> torch.Tensor:
    """Determinant of a nested list J[a][b] of tensors (2x2 or 3x3)."""
    if len(J) == 2:
        return J[0][0] * J[1][1] - J[0][1] * J[1][0]
    return (
        J[0][0] * (J[1][1] * J[2][2] - J[1][2] * J[2][1])
        - J[0][1] * (J[1][0] * J[2][2] - J[1][2] * J[2][0])
        + J[0][2] * (J[1][0] * J[2][1] - J[1][1] * J[2][0])
    )


def jacobian_det(disp: torch.Tensor, mode: str = "central", spacing: Sequence[float] | None = None) -> torch.Tensor:
    """det(I + du/dx) (B, *S) of disp (B, ndim, *S)."""
    ndim = disp.shape[1]
    u = _voxel_units(disp, spacing or (1.0,) * ndim)
    grads = [_derivative(u, 2 + b, mode) for b in range(ndim)]  # grads[b][:, a] = d u_a / d x_b
    J = [[grads[b][:, a] + (1.0 if a == b else 0.0) for b in range(ndim)] for a in range(ndim)]
    return _det(J)


def tetrahedra_dets(disp: torch.Tensor, spacing: Sequence[float] | None = None) -> list[torch.Tensor]:
    """Determinants (B, *S) of Liu et al.'s simplices at every voxel, u replicated across the
    border: 2-D the 4 triangles (++, +-, -+, --), 3-D the 8 corner and 2 central tetrahedra."""
    ndim = disp.shape[1]
    u = _voxel_units(disp, spacing or (1.0,) * ndim)
    pad = F.pad(u, [1, 1] * ndim, mode="replicate")
    sizes = u.shape[2:]

    def shifted(offset):  # u(p + offset), replicated
        out = pad
        for b, o in enumerate(offset):
            out = out.narrow(2 + b, 1 + o, sizes[b])
        return out

    def unit(b, s):
        return [s if k == b else 0 for k in range(ndim)]

    fwd = [shifted(unit(b, 1)) - u for b in range(ndim)]
    bwd = [u - shifted(unit(b, -1)) for b in range(ndim)]
    dets = []
    for combo in range(1 << ndim):
        cols = [bwd[b] if (combo >> b) & 1 else fwd[b] for b in range(ndim)]
        dets.append(_det([[cols[b][:, a] + (1.0 if a == b else 0.0) for b in range(ndim)] for a in range(ndim)]))
    if ndim == 3:
        pairs = [(0, 1), (0, 2), (1, 2)]
        for step, order in ((-1, (0, 1, 2)), (1, (0, 2, 1))):
            cols = []
            for k in order:
                i, j = pairs[k]
                offset = [step if a in (i, j) else 0 for a in range(3)]
                cols.append((offset, shifted(offset) - u))
            dets.append(_det([[cols[c][1][:, a] + cols[c][0][a] for c in range(3)] for a in range(3)]))
    return dets


def _crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    for d in range(1, x.dim()):
        x = x.narrow(d, crop, x.shape[d] - 2 * crop)
    return x


def jacobian_stats(
    disp: torch.Tensor, mode: str = "central", spacing: Sequence[float] | None = None, crop: int = 2
) -> dict[str, torch.Tensor]:
    """The registration-paper statistics (each (B,) float64) over the voxels at least ``crop``
    from every border: see fastreg.metrics.jacobian_stats. Computed from the maps."""
    ndim = disp.shape[1]
    det = _crop(jacobian_det(disp, mode, spacing), crop).flatten(1).double()
    tets = [_crop(t, crop).flatten(1).double() for t in tetrahedra_dets(disp, spacing)]
    weight = 1.0 / (4 if ndim == 2 else 12)
    ndv = sum(torch.clamp(-t, min=0) for t in tets) * weight
    nan = torch.isnan(det) | torch.stack([torch.isnan(t) for t in tets]).any(0)
    n = det.shape[1]
    log3 = torch.log((det + 3).clamp(1e-9, 1e9))
    positive = det > 0
    logs = torch.where(positive, torch.log(torch.where(positive, det, torch.ones_like(det))), torch.zeros_like(det))
    count = positive.sum(1)
    mean_log = logs.sum(1) / count
    plain = torch.sqrt((torch.where(positive, logs - mean_log[:, None], torch.zeros_like(det)) ** 2).sum(1) / count)
    out = {
        "folding_percent": 100.0 * (det <= 0).double().sum(1) / n,
        "sdlogj": log3.std(1, unbiased=False),
        "sdlogj_plain": plain,
        "ndv_percent": 100.0 * ndv.sum(1) / n,
        "jdet_std": det.std(1, unbiased=False),
    }
    bad = nan.any(1)
    return {k: torch.where(bad, torch.full_like(v, math.nan), v) for k, v in out.items()}
