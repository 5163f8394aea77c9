"""fastreg.metrics against numpy/scipy/skimage/MONAI references (jacobian_stats is tested with
the op family in tests/ops/test_jacobian.py)."""
import numpy as np
import pytest
import scipy.ndimage
import torch

import fastreg
from fastreg import metrics
from fastreg.data import random_smooth_field


def smooth_labels(shape, batch, n_labels, generator=None):
    """Label maps from the argmax of smooth noise (regions, not salt and pepper)."""
    noise = random_smooth_field(shape, batch=batch * n_labels // len(shape) + batch, spacing=4, generator=generator)
    noise = noise.reshape(-1, *shape)[: batch * n_labels].reshape(batch, n_labels, *shape)
    return noise.argmax(1)


@pytest.mark.parametrize("shape", [(12, 13), (6, 7, 8)])
def test_cc(shape):
    a = torch.randn(3, 2, *shape, dtype=torch.float64)
    b = 0.5 * a + torch.randn_like(a)
    out = metrics.cc(a, b)
    expected = [np.corrcoef(x.flatten(), y.flatten())[0, 1] for x, y in zip(a.numpy(), b.numpy())]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("shape", [(20, 21), (8, 9, 10)])
def test_mutual_information_matches_histogram2d(shape):
    a = torch.rand(2, 1, *shape, dtype=torch.float64)
    b = torch.sin(3 * a) + 0.3 * torch.randn_like(a)
    out = metrics.mutual_information(a, b, bins=16)
    for i in range(2):
        joint, _, _ = np.histogram2d(a[i].numpy().ravel(), b[i].numpy().ravel(), bins=16)
        p = joint / joint.sum()
        pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
        nz = p > 0
        expected = (p[nz] * np.log(p[nz] / (pa @ pb)[nz])).sum()
        np.testing.assert_allclose(out[i].item(), expected, rtol=1e-10)
    assert metrics.mutual_information(a, a, bins=16)[0] > out[0]


def test_dice_matches_monai_and_numpy():
    from monai.metrics import compute_dice

    a = smooth_labels((16, 17, 18), 2, 5)
    b = smooth_labels((16, 17, 18), 2, 5)
    out = metrics.dice(a, b)
    labels = [1, 2, 3, 4]
    onehot = lambda x: torch.stack([x == k for k in range(5)], 1).float()  # noqa: E731
    expected = compute_dice(onehot(a), onehot(b), include_background=False)
    torch.testing.assert_close(out, expected.double(), rtol=1e-6, atol=1e-6)
    chosen = metrics.dice(a, b, labels=[3, 1, 7])
    for i in range(2):
        for j, k in enumerate([3, 1]):
            x, y = a[i].numpy() == k, b[i].numpy() == k
            assert chosen[i, j].item() == pytest.approx(2 * (x & y).sum() / (x.sum() + y.sum()), rel=1e-12)
    assert torch.isnan(chosen[:, 2]).all()
    torch.testing.assert_close(metrics.dice(a[:, None], b[:, None], labels), out)


def test_hd95_matches_monai():
    from monai.metrics import compute_hausdorff_distance

    a = smooth_labels((14, 15, 16), 2, 4)
    b = smooth_labels((14, 15, 16), 2, 4)
    spacing = (1.0, 0.8, 1.5)
    out = metrics.hd95(a, b, spacing)
    onehot = lambda x: torch.stack([x == k for k in range(4)], 1).float()  # noqa: E731
    expected = compute_hausdorff_distance(onehot(a), onehot(b), include_background=False, percentile=95, spacing=spacing)
    torch.testing.assert_close(out, expected.double(), rtol=1e-5, atol=1e-5)
    a2, b2 = smooth_labels((20, 21), 1, 3), smooth_labels((20, 21), 1, 3)
    expected2 = compute_hausdorff_distance(
        torch.stack([a2 == k for k in range(3)], 1).float(), torch.stack([b2 == k for k in range(3)], 1).float(),
        include_background=False, percentile=95)
    torch.testing.assert_close(metrics.hd95(a2, b2), expected2.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(20, 22), (10, 11, 12)])
def test_tre_matches_map_coordinates(shape):
    ndim = len(shape)
    disp = random_smooth_field(shape, batch=2, magnitude=2.0, spacing=4, dtype=torch.float64)
    hi = torch.tensor(shape, dtype=torch.float64) - 1
    points_f = torch.rand(2, 7, ndim, dtype=torch.float64) * hi
    points_m = torch.rand(2, 7, ndim, dtype=torch.float64) * hi
    spacing = (0.9, 1.1, 2.0)[:ndim]
    out = metrics.tre(points_f, points_m, disp, spacing)
    for i in range(2):
        moved = np.stack([scipy.ndimage.map_coordinates(disp[i, a].numpy(), points_f[i].numpy().T, order=1)
                          for a in range(ndim)], 1)
        expected = np.linalg.norm((points_f[i].numpy() + moved - points_m[i].numpy()) * np.array(spacing), axis=1)
        np.testing.assert_allclose(out[i].numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("shape", [(24, 25), (10, 11, 12)])
def test_ssim_matches_skimage(shape):
    from skimage.metrics import structural_similarity

    a = torch.rand(2, 1, *shape, dtype=torch.float64)
    b = (a + 0.2 * torch.randn_like(a)).clamp(0, 1)
    out = metrics.ssim(a, b)
    expected = [structural_similarity(x[0], y[0], data_range=1.0) for x, y in zip(a.numpy(), b.numpy())]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10)


def test_metrics_bad_input():
    a = torch.rand(1, 1, 8, 9)
    with pytest.raises(ValueError, match="b: expected shape"):
        metrics.cc(a, torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="bins"):
        metrics.mutual_information(a, a, bins=1)
    with pytest.raises(TypeError, match="labels_a"):
        metrics.dice(a, a)
    with pytest.raises(ValueError, match="win_size"):
        metrics.ssim(a, a, win_size=4)
    with pytest.raises(ValueError, match="points_f"):
        metrics.tre(torch.rand(1, 5, 3), torch.rand(1, 5, 3), torch.rand(1, 2, 8, 9))
    assert metrics.jacobian_stats is fastreg.metrics.jacobian_stats


# --- NaN and degenerate input are never hidden ------------------------------------------------


def test_mutual_information_of_an_item_with_nan_or_inf_is_nan():
    a, b = torch.rand(3, 1, 9, 8), torch.rand(3, 1, 9, 8)
    clean = metrics.mutual_information(a, b)
    a[0, 0, 4, 3] = float("nan")
    b[1, 0, 2, 2] = float("inf")
    out = metrics.mutual_information(a, b)
    assert out[:2].isnan().all()
    torch.testing.assert_close(out[2], clean[2])


def test_dice_with_no_labels_or_repeated_labels():
    a, b = torch.randint(0, 4, (2, 7, 9)), torch.randint(0, 4, (2, 7, 9))
    assert metrics.dice(a, b, labels=[]).shape == (2, 0)
    assert metrics.hd95(a, b, labels=[]).shape == (2, 0)
    once = metrics.dice(a, b, labels=[3, 1])
    twice = metrics.dice(a, b, labels=[3, 1, 3])
    torch.testing.assert_close(twice, once[:, [0, 1, 0]])
    assert torch.isfinite(twice).all()


def test_tre_accepts_integer_landmarks():
    disp = 2 * torch.rand(2, 3, 6, 7, 8, dtype=torch.float64) - 1
    points_f = torch.stack([torch.randint(0, s, (2, 5)) for s in (6, 7, 8)], dim=2)
    points_m = torch.stack([torch.randint(0, s, (2, 5)) for s in (6, 7, 8)], dim=2)
    out = metrics.tre(points_f, points_m, disp, spacing=(1.5, 1.0, 2.0))
    torch.testing.assert_close(out, metrics.tre(points_f.double(), points_m.double(), disp, spacing=(1.5, 1.0, 2.0)))
    with pytest.raises(TypeError, match="points_f"):
        metrics.tre(points_f.bool(), points_m, disp)


@pytest.mark.parametrize("data_range", [float("inf"), float("nan"), 0.0, -1.0])
def test_ssim_data_range_must_be_finite_and_positive(data_range):
    a, b = torch.rand(1, 1, 9, 9), torch.rand(1, 1, 9, 9)
    with pytest.raises(ValueError, match="data_range"):
        metrics.ssim(a, b, data_range=data_range)
