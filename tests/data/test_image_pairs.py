"""fastreg.data.ImagePairs over real files: CSV and folder layouts, normalization, resampling, labels, errors."""
import os

import numpy as np
import pytest
import torch
from nibabel.testing import data_path
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

import fastreg.io as fio
from fastreg.data import ImagePairs

ANATOMICAL = os.path.join(data_path, "anatomical.nii")  # (33, 41, 25) int16
SERIES = os.path.join(data_path, "example4d.nii.gz")  # (128, 96, 24, 2)


def random_affine() -> np.ndarray:
    affine = np.eye(4)
    rotation = Rotation.from_euler("xyz", (torch.rand(3) * 20 - 10).tolist(), degrees=True).as_matrix()
    affine[:3, :3] = rotation @ np.diag((1.6 + 0.4 * torch.rand(3)).tolist())
    affine[:3, 3] = (torch.rand(3) * 6 - 3).tolist() - affine[:3, :3] @ np.array([16.0, 20.0, 12.0])
    return affine  # the centre of a (33, 41, 25) grid lies within 3 mm of the origin


def normalized(data: np.ndarray, percentiles=(0.5, 99.5)) -> np.ndarray:
    low, high = np.percentile(data, percentiles)
    return np.clip((data - low) / (high - low), 0, 1)


def write_3d_pair(folder, fixed_name="f.nii.gz", moving_name="m.mgz", with_labels=True):
    """A fixed and a moving image from nibabel's anatomical volume on two oblique grids, with
    random label maps; returns the Images written."""
    anatomical = fio.load(ANATOMICAL).data
    fixed = fio.Image(anatomical + 40 * torch.rand_like(anatomical), random_affine(), dtype=np.float32)
    moving = fio.Image(anatomical.flip(2).contiguous(), random_affine(), dtype=np.int16)
    fio.save(os.path.join(folder, fixed_name), fixed)
    fio.save(os.path.join(folder, moving_name), moving)
    labels = []
    if with_labels:
        for name, image in (("fl.nii.gz", fixed), ("ml.nii.gz", moving)):
            label = fio.Image(torch.randint(0, 6, (1, *image.shape)).float(), image.affine, dtype=np.int16)
            fio.save(os.path.join(folder, name), label)
            labels.append(label)
    return fixed, moving, labels


def test_csv_pairs_resampled_normalized_with_labels(tmp_path):
    (tmp_path / "scans").mkdir()
    fixed, moving, (fixed_labels, moving_labels) = write_3d_pair(tmp_path / "scans")
    csv = tmp_path / "pairs.csv"
    row = "scans/f.nii.gz,scans/m.mgz,scans/fl.nii.gz,scans/ml.nii.gz\n"
    csv.write_text("fixed,moving,fixed_labels,moving_labels\n" + row + row)
    pairs = ImagePairs(csv)
    assert len(pairs) == 2 and pairs.pairs[0][0] == str(tmp_path / "scans" / "f.nii.gz")
    item = pairs[0]
    assert set(item) == {"fixed", "moving", "fixed_labels", "moving_labels"}
    for key in item:
        assert item[key].shape == (1, *fixed.shape)
    assert item["fixed"].dtype == torch.float32 and item["fixed_labels"].dtype == torch.int64
    np.testing.assert_allclose(item["fixed"][0].numpy(), normalized(fixed.data[0].numpy()), atol=1e-6)
    assert torch.equal(item["fixed_labels"], fixed_labels.data.long())

    # the moving image at A_moving^-1 A_fixed x, by scipy
    matrix = np.linalg.inv(moving.affine) @ fixed.affine
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.shape], indexing="ij")).reshape(3, -1)
    pos = matrix[:3, :3] @ grid + matrix[:3, 3:]
    inside = np.all((pos >= 0) & (pos <= np.array(moving.shape)[:, None] - 1), axis=0).reshape(fixed.shape)
    assert inside.mean() > 0.3
    expected = map_coordinates(normalized(moving.data[0].numpy()), pos, order=1).reshape(fixed.shape)
    np.testing.assert_allclose(item["moving"][0].numpy()[inside], expected[inside], atol=1e-5)
    assert item["moving"].min() >= 0 and item["moving"].max() <= 1
    away = np.all(np.abs(pos - np.floor(pos) - 0.5) > 1e-3, axis=0).reshape(fixed.shape) & inside
    nearest = map_coordinates(moving_labels.data[0].numpy(), pos, order=0).reshape(fixed.shape)
    assert np.array_equal(item["moving_labels"][0].numpy()[away], nearest[away])

    batch = next(iter(torch.utils.data.DataLoader(pairs, batch_size=2)))
    assert batch["moving"].shape == (2, 1, *fixed.shape) and torch.equal(batch["moving"][1], item["moving"])


def test_folder_of_fixed_and_moving_pictures(tmp_path):
    import skimage.data

    camera = skimage.data.camera()
    for key in ("a", "b"):
        top, left = torch.randint(0, 400, (2,)).tolist()
        crop = torch.from_numpy(camera[top : top + 40, left : left + 48].astype(np.float32))[None]
        fio.save(tmp_path / f"fixed_{key}.png", fio.Image(crop, dtype=np.uint8))
        fio.save(tmp_path / f"moving_{key}.png", fio.Image(crop.flip(1), dtype=np.uint8))
        labels = torch.randint(0, 4, (2, 1, 40, 48)).float()
        fio.save(tmp_path / f"fixed_labels_{key}.png", fio.Image(labels[0], dtype=np.uint8))
        fio.save(tmp_path / f"moving_labels_{key}.png", fio.Image(labels[1], dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    pairs = ImagePairs(tmp_path, percentiles=(0, 100))
    assert [os.path.basename(p[0]) for p in pairs.pairs] == ["fixed_a.png", "fixed_b.png"]
    item = pairs[1]
    fixed = fio.load(tmp_path / "fixed_b.png").data
    expected = (fixed - fixed.min()) / (fixed.max() - fixed.min())
    torch.testing.assert_close(item["fixed"], expected)
    moving = fio.load(tmp_path / "moving_b.png").data
    torch.testing.assert_close(item["moving"], (moving - moving.min()) / (moving.max() - moving.min()))
    assert torch.equal(item["moving_labels"], fio.load(tmp_path / "moving_labels_b.png").data.long())


def test_folder_all_pairs_with_label_subfolder(tmp_path):
    (tmp_path / "labels").mkdir()
    anatomical = fio.load(ANATOMICAL)
    for name in ("s1.nii.gz", "s2.nii", "s3.mgz"):
        fio.save(tmp_path / name, fio.Image(anatomical.data * torch.rand(()), random_affine()))
        labels = torch.randint(0, 3, (1, *anatomical.shape)).float()
        fio.save(tmp_path / "labels" / name, fio.Image(labels, dtype=np.uint8))
    pairs = ImagePairs(tmp_path)
    assert len(pairs) == 6 and len({(p[0], p[1]) for p in pairs.pairs}) == 6
    assert all(p[0] != p[1] and p[2].startswith(str(tmp_path / "labels")) for p in pairs.pairs)
    assert set(pairs[3]) == {"fixed", "moving", "fixed_labels", "moving_labels"}


def test_folder_and_csv_errors(tmp_path):
    with pytest.raises(ValueError, match="has no readable pairs"):
        ImagePairs(tmp_path)
    fio.save(tmp_path / "only.nii", fio.load(ANATOMICAL))
    with pytest.raises(ValueError, match="has no readable pairs.*found 1"):
        ImagePairs(tmp_path)
    fio.save(tmp_path / "fixed_1.nii", fio.load(ANATOMICAL))
    with pytest.raises(ValueError, match=r"do not pair up; unmatched keys \['1'\]"):
        ImagePairs(tmp_path)
    with pytest.raises(ValueError, match="source: expected a CSV file or a folder"):
        ImagePairs(tmp_path / "missing")
    csv = tmp_path / "p.csv"
    csv.write_text("fixed,moving\nfixed_1.nii,gone.nii\n")
    with pytest.raises(ValueError, match=r"p.csv, line 2: file not found: .*gone.nii"):
        ImagePairs(csv)
    csv.write_text("a,b\nfixed_1.nii,only.nii\n")
    with pytest.raises(ValueError, match="expected a header row with the columns fixed,moving"):
        ImagePairs(csv)
    csv.write_text("fixed,moving,fixed_labels\nfixed_1.nii,only.nii,only.nii\n")
    with pytest.raises(ValueError, match="both columns fixed_labels and moving_labels"):
        ImagePairs(csv)
    with pytest.raises(ValueError, match="percentiles"):
        ImagePairs(csv, percentiles=(60, 40))


def test_mismatched_shapes_and_series_raise_on_read(tmp_path):
    fixed, moving, _ = write_3d_pair(tmp_path)
    fio.save(tmp_path / "small.nii.gz", fio.Image(torch.randint(0, 3, (1, 5, 6, 7)).float(), dtype=np.uint8))
    csv = tmp_path / "p.csv"
    csv.write_text("fixed,moving,fixed_labels,moving_labels\nf.nii.gz,m.mgz,small.nii.gz,ml.nii.gz\n")
    with pytest.raises(ValueError, match=r"small.nii.gz: expected the shape \(33, 41, 25\) of its image"):
        ImagePairs(csv)[0]
    csv.write_text(f"fixed,moving\nf.nii.gz,{SERIES}\n")
    with pytest.raises(ValueError, match=r"example4d.nii.gz: expected 1 channel"):
        ImagePairs(csv)[0]
    fio.save(tmp_path / "flat.png", fio.Image(torch.randint(0, 255, (1, 9, 8)).float(), dtype=np.uint8))
    csv.write_text("fixed,moving\nf.nii.gz,flat.png\n")
    with pytest.raises(ValueError, match="flat.png: expected a 3-D image, got a 2-D image"):
        ImagePairs(csv)[0]
