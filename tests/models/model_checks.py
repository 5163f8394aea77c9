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


def assert_rejects_bad_pairs(model) -> None:
    """A 3-D model refuses mismatched shapes, 2 channels, 2-D images and integer images,
    naming the argument."""
    import pytest

    image = smooth_image((8, 8, 8))
    with pytest.raises(ValueError, match="moving: expected the shape of fixed"):
        model(image, smooth_image((8, 8, 12)))
    with pytest.raises(ValueError, match="fixed: expected 1 channel"):
        model(image.expand(1, 2, 8, 8, 8), image.expand(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="fixed: expected a 5-D tensor"):
        model(smooth_image((8, 8)), smooth_image((8, 8)))
    with pytest.raises(TypeError, match="fixed: expected a floating-point"):
        model((image * 255).to(torch.uint8), image)


def assert_compiles(model, shape, weight) -> None:
    """torch.compile (aot_eager, full graph) gives the eager field and the eager gradient of
    ``weight`` (a parameter of the first layer, so the gradient crosses every op)."""
    fixed, moving = smooth_image(shape), smooth_image(shape)
    out = torch.compile(model, backend="aot_eager", fullgraph=True)(fixed, moving)
    ref = model(fixed, moving)
    torch.testing.assert_close(out, ref)
    (grad,) = torch.autograd.grad(out.square().sum(), weight)
    (grad_ref,) = torch.autograd.grad(ref.square().sum(), weight)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-3, atol=1e-4 * grad_ref.abs().max().item())


def assert_state_dict_round_trip(model, fresh, shape, path) -> None:
    """Weights saved to ``path`` and loaded into ``fresh`` give the same field."""
    torch.save(model.state_dict(), path)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    fixed, moving = smooth_image(shape), smooth_image(shape)
    with torch.no_grad():
        assert torch.equal(fresh(fixed, moving), model(fixed, moving))


def assert_bf16_autocast_keeps_the_field_float32(model, shape) -> None:
    fixed, moving = smooth_image(shape), smooth_image(shape)
    with torch.no_grad():
        ref = model(fixed, moving)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(fixed, moving)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    # bf16 features move a softmax over offsets (DP-VFA) or a correlation volume (DP-Conv-C):
    # over 40 seeds of these random-init models the mean change was 5 % of the field's mean
    # magnitude (median) and at most 42 %; a field computed in the wrong dtype or from
    # garbage is off by about its own size. The change comes from the encoder's bf16
    # features alone (encoder in float32: 0 %; the projections in float32 as well as the
    # attention and the fields: DP-VFA median 4.5 %, worst 37 %, as without; only the 1x1
    # stem in bf16: worst 41 %): a random-init model's near one-hot softmax and its instance
    # norms over a few coarse voxels turn a 0.4 % feature change into flipped arg-maxes,
    # which the x2^level upsampling makes voxel-sized, so the bound cannot be tighter
    assert (low - ref).abs().mean() < 0.6 * ref.abs().mean()


def assert_backends_agree_in_float64(model, shape) -> None:
    """The model (float64) on the reference backend and on the cpu backend: the same field."""
    model = model.double()
    fixed, moving = (smooth_image(shape, dtype=torch.float64) for _ in range(2))
    with torch.no_grad(), fastreg.use_backend("reference"):
        expected = model(fixed, moving)
    with torch.no_grad(), fastreg.use_backend("cpu"):
        got = model(fixed, moving)
    assert expected.abs().max() > 0.05
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
