"""``fastreg train``: a run, bad input (exit 2, nothing overwritten), Ctrl-C (a checkpoint and
exit 130, then --resume)."""
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastreg.cli.main import main
from tiny import SUBPROCESS_ENV


def test_train_runs_a_recipe(recipe, tmp_path, capsys):
    code = main(["train", str(recipe), "--out", str(tmp_path / "run"), "--steps", "2", "--set", "train.lr=0.003"])
    out = capsys.readouterr().out
    assert code == 0 and "trained to step 2" in out and "best validation cc" in out
    assert (tmp_path / "run/checkpoints/step-00000002.pt").is_file()
    assert "lr = 0.003" in (tmp_path / "run/recipe.toml").read_text()


@pytest.mark.parametrize(
    "args, match",
    [
        (["no-such-recipe"], "neither a shipped recipe"),
        (["RECIPE", "--set", "train.lrr=1"], "unknown recipe key 'train.lrr'"),
        (["RECIPE", "--data", "/no/such/pairs"], "data.path: no such file or folder"),
        (["RECIPE", "--set", "model.args.depth=2"], "model.args.depth: not an argument"),
    ],
)
def test_bad_input_exits_2_before_training(recipe, tmp_path, capsys, args, match):
    args = [str(recipe) if a == "RECIPE" else a for a in args]
    assert main(["train", *args, "--out", str(tmp_path / "run")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "pairs, match",
    [
        ({}, "data: the stream yielded no batches"),
        ({"a.pt": (16, 15), "b.pt": (16, 16)}, "data: 'moving' has shape (1, 1, 16, 15), 'fixed' has (1, 1, 16, 16)"),
    ],
)
def test_a_data_folder_without_good_pairs_exits_2(recipe, tmp_path, capsys, pairs, match):
    folder = tmp_path / "pairs"
    folder.mkdir()
    for name, size in pairs.items():
        torch.save({"fixed": torch.rand(1, 1, 16, 16), "moving": torch.rand(1, 1, *size)}, folder / name)
    assert main(["train", str(recipe), "--data", str(folder), "--set", "data.kind='tiny:FolderPairs'",
                 "--set", "data.batch_size=1", "--set", "validation.every=0", "--out", str(tmp_path / "run")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_existing_run_is_not_overwritten(recipe, tmp_path, capsys):
    assert main(["train", str(recipe), "--out", str(tmp_path), "--steps", "1"]) == 0
    ckpt = tmp_path / "checkpoints/step-00000001.pt"
    before = ckpt.read_bytes()
    assert main(["train", str(recipe), "--out", str(tmp_path), "--steps", "2"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert ckpt.read_bytes() == before


def test_ctrl_c_writes_a_checkpoint_and_resume_continues(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fastreg.cli.train", str(recipe), "--out", str(out), "--steps", "100000",
           "--set", "checkpoint.every=0", "--set", "validation.every=0"]
    proc = subprocess.Popen(cmd, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    csv = out / "train.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if csv.exists() and len(csv.read_text().splitlines()) >= 3:  # header + 2 steps
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    step = int(stdout.split("interrupted at step ")[1].split()[0])
    assert step >= 2 and (out / f"checkpoints/step-{step:08d}.pt").is_file()
    assert main(["train", str(recipe), "--out", str(out), "--steps", str(step + 1), "--resume",
                 "--set", "checkpoint.every=0", "--set", "validation.every=0"]) == 0
    assert f"trained to step {step + 1}" in capsys.readouterr().out
