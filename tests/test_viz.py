"""fastreg.viz and the preview sheet: valid PNGs, what the pictures show, bad input."""
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from fastreg import viz
from fastreg.data import __main__ as preview
from fastreg.data import random_field

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    return pixels


@pytest.mark.parametrize("shape", [(40, 48), (24, 28, 20)])
def test_every_picture_writes_a_png(tmp_path, shape):
    ndim = len(shape)
    fixed, moving = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    disp = random_field(shape, batch=2)
    drawings = {
        "image": lambda p: viz.image(fixed, save=p),
        "pair": lambda p: viz.pair(fixed, moving, moving, save=p),
        "checkerboard": lambda p: viz.checkerboard(fixed, moving, save=p),
        "overlay": lambda p: viz.overlay(fixed, moving, save=p),
        "grid": lambda p: viz.deformation_grid(disp, background=fixed, spacing=4, save=p),
        "jacobian": lambda p: viz.jacobian_map(disp, save=p),
    }
    if ndim == 3:
        drawings["slices"] = lambda p: viz.slices(fixed, save=p)
        drawings["image axis 2"] = lambda p: viz.image(fixed[0, 0].numpy(), axis=2, index=3, save=p)
    for name, draw in drawings.items():
        path = tmp_path / f"{name}.png"
        result = draw(path)
        assert isinstance(result, Figure) or hasattr(result, "figure"), name
        _read_png(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.png" for n in drawings)  # no temporaries


def test_checkerboard_alternates_the_two_images():
    a, b = torch.rand(32, 32), 5 * torch.rand(32, 32)
    shown = np.asarray(viz.checkerboard(a, b, tiles=4).images[0].get_array())
    unit_a, unit_b = ((x - x.min()) / (x.max() - x.min()) for x in (a.numpy(), b.numpy()))
    for r in range(0, 32, 8):
        for c in range(0, 32, 8):
            expected = unit_a if (r + c) // 8 % 2 == 0 else unit_b
            np.testing.assert_allclose(shown[r:r + 8, c:c + 8], expected[r:r + 8, c:c + 8], rtol=1e-6)


def test_overlay_is_gray_where_images_agree():
    x = torch.rand(1, 1, 30, 30)
    shown = np.asarray(viz.overlay(x, x).images[0].get_array())
    np.testing.assert_allclose(shown[..., 0], shown[..., 1])
    shown = np.asarray(viz.overlay(x, 1 - x).images[0].get_array())
    assert np.abs(shown[..., 0] - shown[..., 1]).mean() > 0.3


def test_deformation_grid_follows_the_field():
    disp = torch.zeros(1, 2, 33, 33)
    disp[:, 1] = 2.5  # every point moves 2.5 voxels along the columns
    ax = viz.deformation_grid(disp, spacing=8)
    rows = [line.get_xydata() for line in ax.lines[:5]]
    for r, xy in zip(range(0, 33, 8), rows):
        np.testing.assert_allclose(xy[:, 1], r)  # row lines stay on their row
        np.testing.assert_allclose(xy[:, 0], np.arange(33) + 2.5)


def test_jacobian_map_marks_folds(tmp_path):
    disp = torch.zeros(1, 2, 32, 32)
    disp[0, 1, :, 12:20] = -2.0 * torch.arange(8).float()  # columns collapse: det < 0 there
    ax = viz.jacobian_map(disp, save=tmp_path / "folds.png")
    assert "folds" in ax.get_title() and "0.00" not in ax.get_title()
    folds = ax.images[1].get_array()
    assert (~np.ma.getmaskarray(folds)).sum() > 0  # drawn where det <= 0
    smooth = viz.jacobian_map(random_field((32, 32)))
    assert "folds 0.00 %" in smooth.get_title()


@pytest.mark.parametrize("call, error, name", [
    (lambda p: viz.image(torch.rand(2, 2, 2, 2, 2, 2)), ValueError, "x"),
    (lambda p: viz.image([[0.0, 1.0]]), TypeError, "x"),
    (lambda p: viz.image(torch.rand(8, 9, 10), axis=3), ValueError, "axis"),
    (lambda p: viz.image(torch.rand(8, 9, 10), index=8), ValueError, "index"),
    (lambda p: viz.checkerboard(torch.rand(10, 10), torch.rand(12, 10)), ValueError, "warped"),
    (lambda p: viz.checkerboard(torch.rand(10, 10), torch.rand(10, 10), tiles=0), ValueError, "tiles"),
    (lambda p: viz.deformation_grid(torch.rand(1, 3, 10, 10)), ValueError, "disp"),
    (lambda p: viz.deformation_grid(torch.rand(1, 2, 10, 10), spacing=0), ValueError, "spacing"),
    (lambda p: viz.jacobian_map(torch.ones(1, 2, 10, 10, dtype=torch.int64)), TypeError, "disp"),
    (lambda p: viz.image(torch.rand(10, 10), save=p / "x.jpg"), ValueError, "save"),
    (lambda p: viz.image(torch.rand(10, 10), save=p / "missing" / "x.png"), ValueError, "save"),
    (lambda p: viz.image(torch.rand(10, 10), ax="left"), TypeError, "ax"),
])
def test_bad_input(tmp_path, call, error, name):
    with pytest.raises(error, match=name):
        call(tmp_path)
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.parametrize("kind, size", [("labelm", 64), ("synthmorph", 32)])
def test_preview_sheet(tmp_path, kind, size, capsys):
    out = tmp_path / "sheet.png"
    assert preview.main(["--preview", str(out), "--kind", kind, "--pairs", "2", "--size", str(size)]) == 0
    pixels = _read_png(out)
    assert pixels.shape[0] > 300 and pixels[..., :3].std() > 0.1
    assert "wrote" in capsys.readouterr().out


def test_preview_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        preview.main(["--preview", str(tmp_path / "x.png"), "--pairs", "0"])
    with pytest.raises(SystemExit):
        preview.main(["--preview", str(tmp_path / "x.gif")])
    assert not list(tmp_path.iterdir())


def test_import_fastreg_leaves_matplotlib_out():
    code = "import sys, fastreg, fastreg.data; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
