"""fastreg.data.label_map: shapes, label statistics, reproducibility, the SynthMorph work
grid, errors."""
import pytest
import torch
import torch.nn.functional as F

from fastreg.data import label_map
from fastreg.data.labels import KINDS, upsampled_argmax

SHAPES = {2: (96, 80), 3: (40, 36, 44)}


def _seed():
    return int(torch.randint(2**31, ()))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_label_frequencies(kind, ndim):
    """Every label appears, each with share about 1 / J over a batch (labels are exchangeable)."""
    num_labels = 6
    batch = 12 if ndim == 2 else 4
    labels = label_map(SHAPES[ndim], num_labels=num_labels, kind=kind, batch=batch,
                       generator=torch.Generator().manual_seed(_seed()))
    assert labels.shape == (batch, 1, *SHAPES[ndim]) and labels.dtype == torch.int64
    assert labels.min() >= 0 and labels.max() < num_labels
    share = torch.bincount(labels.flatten(), minlength=num_labels).double() / labels.numel()
    assert (share > 0.3 / num_labels).all() and (share < 2.5 / num_labels).all(), share
    # labels form regions, not salt and pepper: most voxels share the label of their neighbour
    same = (labels[..., 1:] == labels[..., :-1]).double().mean()
    assert same > 0.7


@pytest.mark.parametrize("kind", KINDS)
def test_reproducible_and_distinct(kind):
    seed = _seed()
    a, b, c = (label_map((48, 40), num_labels=5, kind=kind, batch=2, generator=torch.Generator().manual_seed(s))
               for s in (seed, seed, seed + 1))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a[0], a[1])


def test_sizes_order_the_region_sizes():
    """small < medium < large: fewer label changes along a line for larger shapes."""
    def changes(kind, size):
        labels = label_map((160, 160), num_labels=8, kind=kind, size=size, batch=4,
                           generator=torch.Generator().manual_seed(_seed()))
        return (labels[..., 1:] != labels[..., :-1]).double().mean()
    for kind in ("labelm", "spheres"):
        small, medium, large = (changes(kind, s) for s in ("small", "medium", "large"))
        assert small > medium > large


def test_labelm_is_the_argmax_of_upsampled_noise():
    """label_map("labelm") against F.interpolate + argmax of the same coarse draws."""
    seed = _seed()
    labels = label_map((70, 50), num_labels=7, kind="labelm", batch=3, generator=torch.Generator().manual_seed(seed))
    noise = torch.randn((3, 7, 6, 6), generator=torch.Generator().manual_seed(seed))
    expected = F.interpolate(noise, size=(70, 50), mode="bilinear", align_corners=True).argmax(1, keepdim=True)
    assert (labels == expected).double().mean() > 0.999  # float rounding may flip near-ties


def test_upsampled_argmax_in_slabs(monkeypatch):
    values = torch.randn(2, 5, 7, 6, 8, dtype=torch.float64)
    expected = F.interpolate(values, size=(30, 25, 33), mode="trilinear", align_corners=True).argmax(1, keepdim=True)
    monkeypatch.setattr("fastreg.data.labels.SLAB_VALUES", 5 * 25 * 33 * 3)  # slabs of a few rows
    assert torch.equal(upsampled_argmax(values, (30, 25, 33)), expected)


def test_synthmorph_work_grid_approximates_full_resolution():
    """The per-label warps on the coarse work grid (at least 48 voxels per axis) give nearly
    the full-resolution map; below 48 voxels the work grid is the image grid."""
    seed = _seed()
    maps = [label_map((192, 160), num_labels=12, kind="synthmorph", work_factor=f, batch=2,
                      generator=torch.Generator().manual_seed(seed)) for f in (1, 4)]
    assert 0.9 < (maps[0] == maps[1]).double().mean() < 1
    small = [label_map((40, 44), num_labels=5, kind="synthmorph", work_factor=f,
                       generator=torch.Generator().manual_seed(seed)) for f in (1, 4)]
    assert torch.equal(small[0], small[1])


def test_synthmorph_warps_the_labels():
    """The per-label deformations change the map drawn from the same noise ("labelm")."""
    seed = _seed()
    labelm, synthmorph = (label_map((64, 64), num_labels=6, kind=k, generator=torch.Generator().manual_seed(seed))
                          for k in ("labelm", "synthmorph"))
    assert (labelm != synthmorph).double().mean() > 0.2


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(shape=(32, 32, 32, 32)), ValueError, "shape"),
    (dict(num_labels=0), ValueError, "num_labels"),
    (dict(num_labels=2.5), TypeError, "num_labels"),
    (dict(kind="voronoi"), ValueError, "kind"),
    (dict(size="huge"), ValueError, "size"),
    (dict(batch=0), ValueError, "batch"),
    (dict(work_factor=0), ValueError, "work_factor"),
    (dict(generator="seed"), TypeError, "generator"),
])
def test_bad_input(kwargs, error, name):
    kwargs = {"shape": (32, 32), "num_labels": 4, **kwargs}
    with pytest.raises(error, match=name):
        label_map(**kwargs)
