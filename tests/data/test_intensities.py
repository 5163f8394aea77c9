"""fastreg.data intensities: contrasts, rendering, corruptions, colormaps, recolouring."""
import pytest
import torch

from fastreg.data import apply_colormap, label_map, pair_contrast, random_colormap, recolor_labels, render
from fastreg.data.intensities import gaussian_blur


def _generator():
    return torch.Generator().manual_seed(int(torch.randint(2**31, ())))


def _labels(shape=(48, 40), num_labels=5, batch=4):
    return label_map(shape, num_labels=num_labels, batch=batch, generator=_generator())


def _label_means(image, labels, num_labels):
    counts = torch.stack([torch.bincount(l.flatten(), minlength=num_labels) for l in labels]).double()
    sums = torch.stack([torch.bincount(l.flatten(), weights=i.flatten().double(), minlength=num_labels)
                        for l, i in zip(labels, image)])
    return sums / counts.clamp_min(1), counts


@pytest.mark.parametrize("shape", [(48, 40), (20, 24, 18)])
def test_render_range_and_label_statistics(shape):
    num_labels = 5
    labels = _labels(shape, num_labels)
    (mean, std), _ = pair_contrast(4, num_labels, "dynamic", generator=_generator())
    image = render(labels, mean, std, background_zero_p=0.0, generator=_generator())
    assert image.shape == labels.shape and image.dtype == torch.float32
    flat = image.flatten(1)
    assert torch.allclose(flat.amin(1), torch.zeros(4)) and torch.allclose(flat.amax(1), torch.ones(4))
    # min-max scaling is affine: per-label means follow a + s * drawn mean, each up to its
    # standard error s * std / sqrt(count) (a, s fitted by weighted least squares; a
    # permutation of the means gives residuals of tens of standard errors)
    means, counts = _label_means(image, labels, num_labels)
    for b in range(4):
        present = counts[b] > 50
        assert present.sum() >= 3
        drawn, got, n = mean[b][present].double(), means[b][present], counts[b][present]
        design = torch.stack([torch.ones_like(drawn), drawn], 1)
        coef = torch.linalg.lstsq(design * n.sqrt()[:, None], (got * n.sqrt())[:, None]).solution[:, 0]
        standard_error = coef[1].abs() * std[b][present].double() / n.sqrt()
        assert ((got - design @ coef).abs() <= 6 * standard_error).all()


def test_contrast_ranges_and_static_pairs():
    (mf, sf), (mm, sm) = pair_contrast(300, 7, "static", generator=_generator())
    assert mf is mm and sf is sm
    assert mf.min() >= 0.1 and mf.max() <= 1.0 and sf.min() >= 0.02 and sf.max() <= 0.1
    (mf, sf), (mm, sm) = pair_contrast(300, 7, "dynamic", generator=_generator())
    assert not torch.equal(mf, mm) and sf.max() <= 0.1
    (mf, sf), (mm, sm) = pair_contrast(300, 7, "dynamic*", generator=_generator())
    assert sf.min() >= 0.05 and sf.max() <= 0.2 and sf.mean() == pytest.approx(0.125, abs=0.01)


def test_background_zeroed_with_probability():
    """Label 0 is set to intensity 0 in about 20 % of the images (binomial, 400 draws)."""
    labels = _labels((16, 16), 3, batch=400)
    labels[:, :, :4] = 0  # every image has background
    (mean, std), _ = pair_contrast(400, 3, generator=_generator())
    image = render(labels, mean, std, generator=_generator())
    background = image[:, :, :4].flatten(1)
    zeroed = (background.std(1) == 0).double().mean()
    assert zeroed == pytest.approx(0.2, abs=0.07)


def test_corruptions():
    labels = _labels((40, 44), 4)
    (mean, std), _ = pair_contrast(4, 4, generator=_generator())
    seed = int(torch.randint(2**31, ()))
    plain = render(labels, mean, std, generator=torch.Generator().manual_seed(seed))
    for name in ("blur_std", "bias_std", "gamma_std", "noise_std"):
        image = render(labels, mean, std, generator=torch.Generator().manual_seed(seed), **{name: 2.0})
        assert image.shape == plain.shape and image.min() >= 0 and image.max() <= 1
        assert not torch.allclose(image, plain), name


def test_gaussian_blur():
    image = torch.rand(2, 3, 30, 28, dtype=torch.float64)
    blurred = gaussian_blur(image, 1.5)
    assert blurred.shape == image.shape
    assert blurred.std() < 0.5 * image.std()
    torch.testing.assert_close(blurred.mean(), image.mean(), atol=0.01, rtol=0)
    constant = torch.full((1, 1, 10, 12, 14), 0.37)
    torch.testing.assert_close(gaussian_blur(constant, 2.0), constant)


def test_colormaps_are_monotonic():
    cmap = random_colormap(6, 3, knots=9, generator=_generator())
    assert cmap.shape == (6, 3, 9)
    assert (cmap.diff(dim=-1) >= 0).all() and (cmap[..., 0] == 0).all() and (cmap[..., -1] == 1).all()
    ramp = torch.linspace(0, 1, 500).view(1, 1, 20, 25).expand(6, 1, 20, 25)
    color = apply_colormap(ramp, cmap)
    assert color.shape == (6, 3, 20, 25)
    assert (color.flatten(2).diff(dim=-1) >= -1e-6).all()
    assert (color.flatten(2)[..., 0] == 0).all() and torch.allclose(color.flatten(2)[..., -1], torch.ones(6, 3))
    # at the knots the map takes the knot values
    knots = torch.linspace(0, 1, 9).view(1, 1, 9, 1).expand(6, 1, 9, 1)
    torch.testing.assert_close(apply_colormap(knots, cmap)[..., 0], cmap)


def test_recolor_labels():
    labels = _labels((36, 30), 6)
    colored = recolor_labels(labels, 6, 3, generator=_generator())
    assert colored.shape == (4, 3, 36, 30) and colored.min() >= 0 and colored.max() <= 1
    for b in range(4):
        for j in labels[b].unique():
            region = colored[b][:, labels[b, 0] == j]
            assert (region == region[:, :1]).all()  # one colour per label


@pytest.mark.parametrize("call, error, name", [
    (lambda l, m, s: render(l.float(), m, s), TypeError, "labels"),
    (lambda l, m, s: render(l[:, 0], m, s), ValueError, "labels"),
    (lambda l, m, s: render(l, m[:, :2], s[:, :2]), ValueError, "labels"),
    (lambda l, m, s: render(l, m[:1], s), ValueError, "mean"),
    (lambda l, m, s: render(l, m, s, background_zero_p=1.5), ValueError, "background_zero_p"),
    (lambda l, m, s: render(l, m, s, blur_std=-1.0), ValueError, "blur_std"),
    (lambda l, m, s: pair_contrast(2, 5, "bright"), ValueError, "contrast"),
    (lambda l, m, s: recolor_labels(l, 2), ValueError, "labels"),
    (lambda l, m, s: random_colormap(2, knots=1), ValueError, "knots"),
    (lambda l, m, s: apply_colormap(m.view(4, 1, 5, 1).repeat(1, 2, 1, 1), random_colormap(4)), ValueError, "image"),
])
def test_bad_input(call, error, name):
    labels = _labels((20, 20), 5)
    labels[:, :, 0, 0] = 4
    (mean, std), _ = pair_contrast(4, 5, generator=_generator())
    with pytest.raises(error, match=name):
        call(labels, mean, std)
