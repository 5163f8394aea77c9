"""pair_loss: the (fixed, warped, disp) presets of fastreg.nn called on a batch and a field."""
import pytest
import torch

import fastreg
from fastreg.train.objective import one_hot, pair_loss
from tiny import TinyPairs


def recorder():
    calls = []

    def fn(fixed, warped, disp, **labels):
        calls.append((fixed, warped, disp, labels))
        return ((fixed - warped) ** 2).mean()

    return fn, calls


def test_warps_the_mono_modal_twin_when_there_is_one():
    batch = TinyPairs(seed=int(torch.randint(0, 2**30, ()))).take(0, 2)
    disp = batch["disp"]
    fn, calls = recorder()
    pair_loss(fn)(batch, disp)
    torch.testing.assert_close(calls[-1][1], fastreg.warp(batch["moving"], disp))
    mono = torch.rand_like(batch["moving"])
    pair_loss(fn)({**batch, "moving_mono": mono}, disp)
    torch.testing.assert_close(calls[-1][1], fastreg.warp(mono, disp))
    assert calls[-1][3] == {}


def test_labels_are_warped_as_one_hot_probabilities_with_gradients():
    batch = TinyPairs(seed=int(torch.randint(0, 2**30, ())), labels=True).take(0, 2)
    disp = batch["disp"].clone().requires_grad_(True)
    fn, calls = recorder()
    pair_loss(fn, labels=True, num_labels=5)(batch, disp)
    labels = calls[-1][3]
    assert torch.equal(labels["fixed_labels"], batch["fixed_labels"])
    warped = labels["warped_labels"]
    assert warped.shape == (2, 5, 16, 16)
    torch.testing.assert_close(warped, fastreg.warp(one_hot(batch["moving_labels"], 5, torch.float32), disp))
    warped.sum().backward()  # linear interpolation of probabilities: differentiable in disp
    assert disp.grad is not None
    with pytest.raises(ValueError, match="needs 'fixed_labels' and 'moving_labels'"):
        pair_loss(fn, labels=True)(TinyPairs().take(0, 1), disp[:1])


def test_one_hot_layout():
    labels = torch.randint(0, 4, (2, 1, 5, 6))
    hot = one_hot(labels, 4, torch.float64)
    assert hot.shape == (2, 4, 5, 6) and torch.equal(hot.argmax(1, keepdim=True), labels)
