"""fastreg.data.LabelMPairs and SynthMorphPairs: outputs, the disp convention, streams."""
import itertools

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

import fastreg
from fastreg.data import LabelMPairs, SynthMorphPairs


def _generator():
    return torch.Generator().manual_seed(int(torch.randint(2**31, ())))


def _constant_inside(labels: torch.Tensor, disp: torch.Tensor, radius: int) -> torch.Tensor:
    """Voxels whose label is constant within ``radius`` and whose x + disp(x) lies inside
    the image at least ``radius`` voxels from the border: (B, 1, *S) bool."""
    ndim = disp.shape[1]
    pool = (F.max_pool2d, F.max_pool3d)[ndim - 2]
    x = labels.double()
    constant = pool(x, 2 * radius + 1, 1, radius) == -pool(-x, 2 * radius + 1, 1, radius)
    shape = disp.shape[2:]
    grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij")).unsqueeze(0)
    position = grid + disp
    upper = torch.tensor(shape).view(1, ndim, *[1] * ndim) - 1 - radius
    inside = ((position >= radius) & (position <= upper)).all(1, keepdim=True)
    return constant & inside


def test_labelm_outputs_and_disp_convention():
    stream = LabelMPairs(96, batch_size=3, num_labels=8, margin=8)
    batch = stream.draw(_generator())
    assert set(batch) == {"fixed", "moving", "disp"}
    assert batch["fixed"].shape == batch["moving"].shape == (3, 1, 96, 96)
    assert batch["disp"].shape == (3, 2, 96, 96)
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in batch.values())
    fixed, moving, disp = batch["fixed"], batch["moving"], batch["disp"]
    assert fixed.min() >= 0 and fixed.max() <= 1
    # fixed is the label map as an image: the J gray levels label / (J - 1)
    assert torch.allclose(fixed * 7, (fixed * 7).round(), atol=1e-5)
    warped = fastreg.warp(moving, disp)
    mask = _constant_inside(fixed * 7, disp, 3)
    assert mask.double().mean() > 0.3
    error = (warped - fixed).abs()[mask]
    assert error.mean() < 2e-3
    assert torch.quantile(error, 0.99) < 0.5 / 7  # never half a gray level off, up to 1 %
    # where the label moved (moving shows another gray level than fixed), the warp restores
    # it and the opposite sign does not (40 draws: >= 98 % against <= 10 %)
    moved = _constant_inside(fixed * 7, disp, 1) & ((moving - fixed).abs() > 0.5 / 7)
    assert moved.sum() >= 50  # a weak draw moves ~200 such voxels of 27,648
    restored = ((warped - fixed).abs() < 0.5 / 7)[moved].double().mean()
    opposite = ((fastreg.warp(moving, -disp) - fixed).abs() < 0.5 / 7)[moved].double().mean()
    assert restored > 0.95 and opposite < 0.3
    assert (fastreg.metrics.jacobian_stats(disp)["folding_percent"] == 0).all()


def test_labelm_multimodal():
    seed = int(torch.randint(2**31, ()))
    mono = LabelMPairs(64, batch_size=2, margin=8).draw(torch.Generator().manual_seed(seed))
    multi = LabelMPairs(64, multimodal=True, batch_size=2, margin=8).draw(torch.Generator().manual_seed(seed))
    assert set(multi) == {"fixed", "moving", "moving_mono", "disp"}
    # the mono-modal twin is the mono-modal stream's moving image (same draws)
    for key in ("fixed", "disp"):
        torch.testing.assert_close(multi[key], mono[key])
    torch.testing.assert_close(multi["moving_mono"], mono["moving"])
    assert not torch.allclose(multi["moving"], multi["moving_mono"])
    # recolouring keeps the regions: inside each region of the warped-back fixed labels the
    # recoloured moving image is nearly constant
    warped = fastreg.warp(multi["moving"], multi["disp"])
    labels = (multi["fixed"] * 15).round()
    mask = _constant_inside(labels, multi["disp"], 3)
    for b in range(2):
        for j in labels[b].unique():
            region = warped[b][mask[b] & (labels[b] == j)]
            if region.numel() > 20:
                assert (region - region.median()).abs().quantile(0.95) < 0.02
    color = LabelMPairs(48, multimodal=True, recolor="colormap", channels=3, margin=4).draw(_generator())
    assert color["moving"].shape == (1, 3, 48, 48) and color["moving_mono"].shape == (1, 1, 48, 48)


@pytest.mark.parametrize("shape", [(36, 40, 32), (96, 80)])
def test_synthmorph_outputs_and_disp_convention(shape):
    ndim = len(shape)
    # large regions, so that many voxels have a constant neighbourhood at this small size
    stream = SynthMorphPairs(shape, num_labels=6, batch_size=2, scales=(6,), with_disp=True, kind="labelm", size="large")
    batch = stream.draw(_generator())
    assert set(batch) == {"fixed", "moving", "fixed_labels", "moving_labels", "fixed_disp", "moving_disp", "disp"}
    for key in ("fixed", "moving"):
        assert batch[key].shape == (2, 1, *shape) and batch[key].dtype == torch.float32
        assert batch[key].min() == 0 and batch[key].max() == 1
        assert batch[f"{key}_labels"].shape == (2, 1, *shape) and batch[f"{key}_labels"].dtype == torch.int64
        assert batch[f"{key}_disp"].shape == (2, ndim, *shape)
    assert not torch.equal(batch["fixed_labels"], batch["moving_labels"])
    warped = fastreg.warp(batch["moving_labels"].float(), batch["disp"], mode="nearest")
    mask = _constant_inside(batch["fixed_labels"], batch["disp"], 2)
    assert mask.double().mean() > 0.1
    agree = (warped == batch["fixed_labels"])[mask].double().mean()
    before = (batch["moving_labels"] == batch["fixed_labels"])[mask].double().mean()
    # sigma ~ U(0, max_std) can draw a deformation too weak to move a label inside the mask:
    # then there is nothing for the field to improve
    assert agree > 0.97 and (agree > before or before == 1)


def test_synthmorph_defaults_at_paper_recipe_scales():
    stream = SynthMorphPairs((32, 32, 32), batch_size=1)
    assert stream.num_labels == 26 and stream.contrast == "dynamic"
    assert stream.field == dict(scales=(24, 12, 6), max_std=3.0, half_res=True) and stream.steps == 5
    batch = stream.draw(_generator())
    assert "disp" not in batch and batch["fixed"].shape == (1, 1, 32, 32, 32)


def _first(stream: IterableDataset, n: int = 1):
    return list(itertools.islice(iter(stream), n))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("make", [
    lambda **kw: LabelMPairs(32, margin=4, num_labels=5, **kw),
    lambda **kw: SynthMorphPairs((24, 20, 22), num_labels=4, scales=(6,), **kw),
])
def test_streams_reproducible_per_seed_and_rank(make):
    seed = int(torch.randint(2**20, ()))
    a = _first(make(seed=seed), 2)
    b = _first(make(seed=seed), 2)
    assert all(_equal(x, y) for x, y in zip(a, b))
    assert not _equal(a[0], a[1])  # an infinite stream, not one batch repeated
    assert not _equal(a[0], _first(make(seed=seed + 1))[0])
    assert not _equal(a[0], _first(make(seed=seed, rank=1))[0])
    assert _equal(a[0], _first(make(seed=seed, rank=0))[0])


def test_dataloader_workers_draw_distinct_reproducible_streams():
    seed = int(torch.randint(2**20, ()))
    stream = LabelMPairs(32, margin=4, num_labels=5, batch_size=2, seed=seed)

    def run():
        loader = DataLoader(stream, batch_size=None, num_workers=2)
        return list(itertools.islice(iter(loader), 4))  # workers alternate: 0, 1, 0, 1

    first, second = run(), run()
    assert all(_equal(x, y) for x, y in zip(first, second))
    assert not _equal(first[0], first[1])
    # worker 0 of rank 0 draws the stream the main process draws without workers
    assert _equal(first[0], _first(stream)[0])
    assert first[0]["fixed"].shape == (2, 1, 32, 32)


def test_rank_from_torch_distributed(tmp_path):
    stream = LabelMPairs(32, margin=4, num_labels=5, seed=3)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert stream.stream_rank() == 0
        assert _equal(_first(stream)[0], _first(LabelMPairs(32, margin=4, num_labels=5, seed=3, rank=0))[0])
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("call, error, name", [
    (lambda: LabelMPairs(size=1), ValueError, "size"),
    (lambda: LabelMPairs(multimodal="yes"), TypeError, "multimodal"),
    (lambda: LabelMPairs(seed=-1), ValueError, "seed"),
    (lambda: LabelMPairs(batch_size=0), ValueError, "batch_size"),
    (lambda: LabelMPairs(num_labels=1), ValueError, "num_labels"),
    (lambda: LabelMPairs(recolor="random"), ValueError, "recolor"),
    (lambda: LabelMPairs(channels=2), ValueError, "channels"),
    (lambda: LabelMPairs(rank=-2), ValueError, "rank"),
    (lambda: SynthMorphPairs((32,)), ValueError, "shape"),
    (lambda: SynthMorphPairs((32, 32, 32), contrast="flat"), ValueError, "contrast"),
    (lambda: SynthMorphPairs((32, 32, 32), kind="cubes"), ValueError, "kind"),
    (lambda: SynthMorphPairs((32, 32, 32), scales=(0,)), ValueError, "scales"),
    (lambda: SynthMorphPairs((32, 32, 32), max_std=-3.0), ValueError, "max_std"),
    (lambda: SynthMorphPairs((32, 32, 32), steps=-1), ValueError, "steps"),
    (lambda: SynthMorphPairs((32, 32, 32), with_disp=1), TypeError, "with_disp"),
    (lambda: SynthMorphPairs((32, 32, 32), gamma_std=-0.5), ValueError, "gamma_std"),
])
def test_bad_input(call, error, name):
    with pytest.raises(error, match=name):
        call()
