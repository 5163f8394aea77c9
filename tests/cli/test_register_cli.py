"""``fastreg register`` / ``fastreg apply``: outputs, summaries, exit codes, nothing half-written."""
import contextlib
import csv
import io as stdio
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastreg import io, models
from fastreg.cli.main import main
from fastreg.train import checkpoint

OUTPUTS = {"warped.nii.gz", "field.nii.gz", "inverse.nii.gz", "stats.json", "preview.png"}


def run(argv):
    out, err = stdio.StringIO(), stdio.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A `fastreg train` run folder holding a checkpoint of a tiny UniReg."""
    folder = tmp_path_factory.mktemp("run")
    model = models.create("unireg", ndim=2, widths=(4, 8))
    (folder / "checkpoints").mkdir()
    (folder / "recipe.toml").write_text('[model]\nname = "unireg"\n\n[model.args]\nndim = 2\nwidths = [4, 8]\n')
    checkpoint.save(checkpoint.step_path(folder, 5),
                    {"step": 5, "model_signature": checkpoint.model_signature(model), "model": model.state_dict()})
    return folder


def smooth(*shape):
    x = torch.rand(1, 1, *shape)
    pool = F.avg_pool2d if len(shape) == 2 else F.avg_pool3d
    return pool(x, 5, 1, 2, count_include_pad=False)[0] * 300


@pytest.fixture
def pair(tmp_path):
    affine = np.diag([1.2, 0.8, 1.0, 1.0])
    fixed, moving = io.Image(smooth(32, 36), affine), io.Image(smooth(32, 36), affine)
    labels = io.Image((moving.data / 60).floor(), affine, dtype=np.int16)
    paths = {name: tmp_path / f"{name}.nii.gz" for name in ("fixed", "moving", "labels")}
    for name, image in zip(paths, (fixed, moving, labels)):
        io.save(paths[name], image)
    return paths


def test_register_writes_every_output(pair, run_folder, tmp_path):
    out = tmp_path / "out"
    code, text, err = run(["register", str(pair["fixed"]), str(pair["moving"]), "-o", str(out), "--model",
                           str(run_folder), "--moving-labels", str(pair["labels"]), "--fixed-labels",
                           str(pair["labels"]), "--affine", "on", "--format", "itk"])
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == OUTPUTS | {"warped_labels.nii.gz", "affine.txt"}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["affine"] and stats["field_format"] == "itk" and "dice" in stats["stats"]
    assert "CC" in text and "seconds:" in text and "Dice mean" in text
    fixed = io.load(pair["fixed"])
    assert io.load_field(out / "field.nii.gz", fixed).shape == (2, 32, 36)
    assert io.load(out / "warped_labels.nii.gz").dtype == np.int16
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    # apply the saved field: the same as the registration's own warp
    target = tmp_path / "applied.nii.gz"
    code, _, err = run(["apply", str(out / "field.nii.gz"), str(pair["labels"]), "-o", str(target),
                        "--like", str(pair["fixed"]), "--nearest"])
    assert code == 0, err
    torch.testing.assert_close(io.load(target).data, io.load(out / "warped_labels.nii.gz").data)
    code, _, err = run(["apply", str(out / "field.nii.gz"), str(pair["labels"]), "-o", str(target), "--nearest"])
    assert code == 2 and "exists; pass --force" in err
    code, _, err = run(["apply", str(out / "field.nii.gz"), str(pair["labels"]), "-o", str(target), "--nearest", "--force"])
    assert code == 0, err  # the field's own grid stands in for --like
    torch.testing.assert_close(io.load(target).data, io.load(out / "warped_labels.nii.gz").data)
    cubic = tmp_path / "cubic.nii.gz"
    code, _, err = run(["apply", str(out / "field.nii.gz"), str(pair["moving"]), "-o", str(cubic), "--cubic"])
    assert code == 0, err
    expected = io.apply_field(pair["moving"], io.load_field(out / "field.nii.gz", fixed), fixed, mode="bicubic")
    torch.testing.assert_close(io.load(cubic).data, expected.data)
    linear = io.apply_field(pair["moving"], io.load_field(out / "field.nii.gz", fixed), fixed)
    assert not torch.allclose(expected.data, linear.data)


def test_existing_output_needs_force(pair, run_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous results")
    argv = ["register", str(pair["fixed"]), str(pair["moving"]), "-o", str(out), "--model", str(run_folder),
            "--no-preview"]
    code, _, err = run(argv)
    assert code == 2 and "already holds results; pass --force" in err
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    code, _, err = run(argv + ["--force"])
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == OUTPUTS - {"preview.png"}


def test_bad_input_exits_2_and_writes_nothing(pair, run_folder, tmp_path):
    out = tmp_path / "out"
    volume = tmp_path / "volume.nii.gz"
    io.save(volume, io.Image(smooth(8, 8, 8)))
    nan = tmp_path / "nan.nii.gz"
    data = io.load(pair["moving"]).data.clone()
    data[0, 3, 3] = float("nan")
    io.save(nan, io.Image(data))
    real = tmp_path / "real.nii.gz"
    labels = io.load(pair["labels"])
    io.save(real, io.Image(labels.data + 0.5, labels.affine))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(pair["moving"].read_bytes()[:200])
    model = ["--model", str(run_folder)]
    cases = [
        ([str(pair["fixed"]), str(broken)] + model, "cannot read the image"),
        ([str(tmp_path / "missing.nii.gz"), str(pair["moving"])] + model, "file not found"),
        ([str(pair["fixed"]), str(volume)] + model, "expected a 2-D image like fixed, got a 3-D one"),
        ([str(pair["fixed"]), str(pair["moving"]), "--model", "nope"], "unireg-2d"),
        ([str(pair["fixed"]), str(nan)] + model, "NaN"),
        ([str(pair["fixed"]), str(pair["moving"]), "--moving-labels", str(real)] + model, "integer label map"),
        ([str(pair["fixed"]), str(pair["moving"]), "--nio", "--iterations", "10,x"] + model, "--iterations"),
    ]
    for argv, message in cases:
        code, _, err = run(["register", *argv, "-o", str(out)])
        assert code == 2 and message in err, (argv, err)
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_example_runs_the_shipped_model_or_a_checkpoint(run_folder, tmp_path):
    code, _, err = run(["register", "--example", "-o", str(tmp_path / "a"), "--affine", "off", "--no-preview"])
    assert code == 0, err
    summary = json.loads((tmp_path / "a" / "stats.json").read_text())
    stats = summary["stats"]
    assert summary["model"] == "unireg-2d"
    assert stats["cc_after"] > stats["cc_before"] + 0.02 and stats["folding_percent"] < 1
    code, text, err = run(["register", "--example", "-o", str(tmp_path / "b"), "--model", str(run_folder),
                           "--affine", "off", "--no-preview"])
    assert code == 0, err
    names = {p.name for p in (tmp_path / "b").iterdir()}
    assert {"fixed.png", "moving.png", "warped.png", "field.nii.gz", "stats.json"} <= names
    assert io.load(tmp_path / "b" / "warped.png").dtype == np.uint8


def test_pairs_table_errors(run_folder, tmp_path):
    table = tmp_path / "pairs.csv"
    table.write_text("a,b\nx.nii.gz,y.nii.gz\n")
    code, _, err = run(["register", "--pairs", str(table), "-o", str(tmp_path / "o"), "--model", str(run_folder)])
    assert code == 2 and "expected a header with columns fixed, moving" in err
    code, _, err = run(["register", "--pairs", str(tmp_path / "none.csv"), "-o", str(tmp_path / "o")])
    assert code == 2 and "file not found" in err


def test_pairs_are_resumable(pair, run_folder, tmp_path):
    table = tmp_path / "pairs.csv"
    table.write_text(f"fixed,moving,moving_labels\n{pair['fixed'].name},{pair['moving'].name},{pair['labels'].name}\n"
                     f"{pair['moving'].name},{pair['fixed'].name},\n")
    out = tmp_path / "many"
    argv = ["register", "--pairs", str(table), "-o", str(out), "--model", str(run_folder), "--no-preview",
            "--affine", "off"]
    code, text, err = run(argv)
    assert code == 0, err
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["pair"] for r in rows] == ["pair-00000", "pair-00001"]
    assert (out / "pair-00000" / "warped_labels.nii.gz").is_file()
    assert not (out / "pair-00001" / "warped_labels.nii.gz").exists()
    (out / "pair-00001" / "stats.json").unlink()
    with open(out / "results.csv") as f:
        kept = f.readlines()[:2]
    (out / "results.csv").write_text("".join(kept))  # as if interrupted after the first pair
    code, text, err = run(argv)
    assert code == 0, err and "1 done before" in text
    with open(out / "results.csv") as f:
        assert [r["pair"] for r in csv.DictReader(f)] == ["pair-00000", "pair-00001"]
    assert (out / "pair-00001" / "stats.json").is_file()


def pairs_table(tmp_path, count):
    """A pairs CSV of ``count`` distinct random 2-D pairs (NIfTI files next to it)."""
    lines = ["fixed,moving"]
    for k in range(count):
        for role in ("f", "m"):
            io.save(tmp_path / f"{role}{k}.nii.gz", io.Image(smooth(24, 20)))
        lines.append(f"f{k}.nii.gz,m{k}.nii.gz")
    table = tmp_path / "pairs.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def test_pairs_stop_at_an_unreadable_pair_with_the_earlier_ones_written(run_folder, tmp_path):
    table = pairs_table(tmp_path, 3)
    (tmp_path / "m1.nii.gz").unlink()
    out = tmp_path / "many"
    code, _, err = run(["register", "--pairs", str(table), "-o", str(out), "--model", str(run_folder),
                        "--no-preview", "--affine", "off"])
    assert code == 2 and "m1.nii.gz" in err
    with open(out / "results.csv") as f:
        assert [r["pair"] for r in csv.DictReader(f)] == ["pair-00000"]
    assert sorted(p.name for p in out.iterdir()) == ["pair-00000", "results.csv"]  # nothing half-written


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_pairs_shard_over_torchrun_processes(run_folder, tmp_path):
    """Two processes share five pairs (0, 2, 4 and 1, 3), append to one results.csv under a
    lock, and give the same fields as one process."""
    table = pairs_table(tmp_path, 5)
    common = ["--pairs", str(table), "--model", str(run_folder), "--no-preview", "--affine", "off", "--device", "cpu"]
    cmd = ["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "fastreg.cli.main", "register",
           "-o", str(tmp_path / "two"), *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 0 of 2" in done.stdout and "process 1 of 2" in done.stdout
    with open(tmp_path / "two" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["pair"] for r in rows) == [f"pair-{k:05d}" for k in range(5)]
    assert all(r["moving"].endswith(f"m{int(r['pair'][5:])}.nii.gz") for r in rows)
    code, _, err = run(["register", "-o", str(tmp_path / "one"), *common])
    assert code == 0, err
    for k in range(5):
        a = io.load(tmp_path / "two" / f"pair-{k:05d}" / "field.nii.gz").data
        b = io.load(tmp_path / "one" / f"pair-{k:05d}" / "field.nii.gz").data
        assert torch.allclose(a, b, atol=1e-5)
