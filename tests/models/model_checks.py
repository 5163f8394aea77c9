"""Checks shared by the model test files (imported by them, not a conftest fixture): a
synthetic pair with a known field, and a short overfit on it."""
from __future__ import annotations

import torch

import fastreg
from fastreg.data import random_smooth_field


def smooth_image(shape, batch: int = 1, dtype=torch.float32) -> torch.Tensor:
    """(batch, 1, *shape) smooth random image scaled to [0, 1]."""
    img = random_smooth_field(shape, batch=batch, magnitude=1.0, spacing=6, dtype=torch.float64)[:, :1]
    low = img.amin(dim=tuple(range(1, img.dim())), keepdim=True)
    high = img.amax(dim=tuple(range(1, img.dim())), keepdim=True)
    return ((img - low) / (high - low)).to(dtype)


def known_pair(shape, magnitude: float = 1.5, spacing: int = 16):
    """(fixed, moving, u_true): moving a smooth image, fixed = warp(moving, u_true) (border
    padding), u_true a smooth field of ``magnitude`` voxels: the model should predict u_true."""
    moving = smooth_image(shape)
    u_true = random_smooth_field(shape, magnitude=magnitude, spacing=spacing)
    return fastreg.warp(moving, u_true, padding_mode="border"), moving, u_true


def similarity_loss(fixed, moving, disp) -> torch.Tensor:
    """1 - LNCC (squared cc, 9^ndim box window) of fixed and the moving image warped by disp."""
    return 1 - fastreg.lncc(fixed, fastreg.warp(moving, disp), 9)


def field_error(disp, u_true, margin: int = 4) -> float:
    """Mean endpoint error (voxels) away from a ``margin`` at the border."""
    inner = (slice(None), slice(None)) + (slice(margin, -margin),) * (disp.dim() - 2)
    return (disp - u_true)[inner].norm(dim=1).mean().item()


def overfit(model, shape, steps: int = 30, lr: float = 1e-3):
    """Adam on one known pair: (loss before, loss after, field error before, after)."""
    fixed, moving, u_true = known_pair(shape)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with torch.no_grad():
        u = model(fixed, moving)
        before = similarity_loss(fixed, moving, u).item(), field_error(u, u_true)
    for _ in range(steps):
        loss = similarity_loss(fixed, moving, model(fixed, moving))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        u = model(fixed, moving)
        after = similarity_loss(fixed, moving, u).item(), field_error(u, u_true)
    return before[0], after[0], before[1], after[1]


def gradients_reach_every_parameter(model, fixed, moving) -> list[str]:
    """Names of trainable parameters whose gradient is missing or all zero after one backward."""
    similarity_loss(fixed, moving, model(fixed, moving)).backward()
    return [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
