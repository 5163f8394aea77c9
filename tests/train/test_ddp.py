"""torchrun with 2 gloo processes (DistributedDataParallel on the CPU) ends with the weights of
one process trained on the doubled batch: rank r draws its half of each doubled batch."""
import shutil
import subprocess

import pytest
import torch

from fastreg.cli.main import main
from tiny import SUBPROCESS_ENV


def weights(path):
    return torch.load(path, weights_only=False)["model"]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_torchrun_two_gloo_processes_match_one_with_the_doubled_batch(recipe, tmp_path):
    common = ["--steps", "3", "--device", "cpu", "--set", "validation.every=0", "--set", "train.grad_accum=2"]
    cmd = ["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "fastreg.cli.train", str(recipe),
           "--out", str(tmp_path / "ddp"), "--set", "data.batch_size=2", *common]
    done = subprocess.run(cmd, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["train", str(recipe), "--out", str(tmp_path / "one"), "--set", "data.batch_size=4", *common]) == 0
    ddp, one = weights(tmp_path / "ddp/checkpoints/step-00000003.pt"), weights(tmp_path / "one/checkpoints/step-00000003.pt")
    start = weights(tmp_path / "one/checkpoints/step-00000002.pt")
    for k in one:
        assert not torch.equal(one[k], start[k])  # the last step moved the weights
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-4, atol=1e-6)
    state = torch.load(tmp_path / "ddp/checkpoints/step-00000003.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert len((tmp_path / "ddp/train.csv").read_text().splitlines()) == 4  # one writer: header + 3 steps


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_torchrun_resume_is_exact(recipe, tmp_path):
    """2 gloo processes stopped at step 2 and resumed to 3 end as 2 processes run straight to 3."""
    common = ["--device", "cpu", "--set", "validation.every=0", "--set", "data.batch_size=2", "--set", "model.args.dropout=0.2"]

    def torchrun(out, *args):
        cmd = ["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "fastreg.cli.train", str(recipe),
               "--out", str(out), *common, *args]
        done = subprocess.run(cmd, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    torchrun(tmp_path / "straight", "--steps", "3")
    torchrun(tmp_path / "resumed", "--steps", "2")
    torchrun(tmp_path / "resumed", "--steps", "3", "--resume")
    a = weights(tmp_path / "straight/checkpoints/step-00000003.pt")
    b = weights(tmp_path / "resumed/checkpoints/step-00000003.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
