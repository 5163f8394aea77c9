"""ANTs SyN (antspyx) as the registration peer of the quality benchmarks.

One function, ``syn``, so that every quality script runs the peer the same way: the images
go to ANTs on a unit-spacing, identity-direction grid (array axes = physical axes, so the
warped arrays come back in fastreg's axis order), ``type_of_transform="SyNOnly"`` (the
deformable stage alone: the pairs of the quality protocols need no affine), labels warped
with the forward transforms by ``genericLabel`` interpolation, and folding counted on the
Jacobian determinant of the forward warp with the border crop of
``fastreg.metrics.jacobian_stats``.
"""
from __future__ import annotations

import time

import torch


def syn(fixed: torch.Tensor, moving: torch.Tensor, moving_labels: torch.Tensor | None = None) -> dict:
    """Register ``moving`` (1, 1, *S) onto ``fixed`` (1, 1, *S) (2-D or 3-D) with ANTs SyN.

    Returns {"warped": (1, 1, *S) float32, "labels": (1, 1, *S) int64 or None (moving_labels
    warped), "folding_percent": share of det J <= 0 of the forward warp in %, "seconds": the
    registration's wall time (label warping and the Jacobian not included)}.
    """
    import ants

    ndim = fixed.dim() - 2
    f = ants.from_numpy(fixed[0, 0].double().cpu().numpy())
    m = ants.from_numpy(moving[0, 0].double().cpu().numpy())
    start = time.perf_counter()
    result = ants.registration(fixed=f, moving=m, type_of_transform="SyNOnly")
    seconds = time.perf_counter() - start
    warped = torch.from_numpy(result["warpedmovout"].numpy()).float()[None, None]
    labels = None
    if moving_labels is not None:
        lab = ants.from_numpy(moving_labels[0, 0].double().cpu().numpy())
        out = ants.apply_transforms(fixed=f, moving=lab, transformlist=result["fwdtransforms"],
                                    interpolator="genericLabel")
        labels = torch.from_numpy(out.numpy()).round().long()[None, None]
    det = ants.create_jacobian_determinant_image(f, result["fwdtransforms"][0]).numpy()
    c = 2  # the border crop of fastreg.metrics.jacobian_stats
    folding = 100.0 * float((det[(slice(c, -c),) * ndim] <= 0).mean())
    return {"warped": warped, "labels": labels, "folding_percent": folding, "seconds": seconds}
