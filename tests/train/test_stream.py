"""Shuffled: a map-style dataset of single pairs as an indexed stream (seeded epochs)."""
import pytest
import torch

from fastreg import recipes
from fastreg.train import Shuffled, fit
from tiny import TinyMap


def ids(batch):
    """Which TinyMap pair each batch item is (by its fixed image)."""
    pairs = [TinyMap()[i]["fixed"] for i in range(5)]
    return [next(j for j, p in enumerate(pairs) if torch.equal(p, x)) for x in batch["fixed"]]


def test_each_epoch_is_a_seeded_permutation():
    seed = int(torch.randint(0, 2**30, ()))
    stream = Shuffled(TinyMap(), batch_size=2, seed=seed)
    first, second = ids(stream.take(0, 5)), ids(stream.take(5, 5))
    assert sorted(first) == sorted(second) == [0, 1, 2, 3, 4]
    assert ids(stream.take(3, 4)) == first[3:] + second[:2]  # across the epoch boundary
    assert ids(Shuffled(TinyMap(), batch_size=2, seed=seed).take(0, 5)) == first
    assert stream.take(0, 2)["fixed"].shape == (2, 1, 16, 16)


def test_pairs_of_different_shapes_in_one_batch_are_an_error():
    stream = Shuffled(TinyMap(odd=(0, 1, 2)), batch_size=5)
    with pytest.raises(ValueError, match="'fixed' of different shapes"):
        stream.take(0, 5)
    assert Shuffled(TinyMap(odd=(0,)), batch_size=1).take(0, 1)["fixed"].dim() == 4  # batch 1: any shape
    with pytest.raises(ValueError, match="holds no pairs"):
        Shuffled(TinyMap(n=0), batch_size=1)


def test_recipes_read_map_style_datasets_through_shuffled(recipe, tmp_path):
    r = recipes.override(recipes.load(recipe), ["data.kind='tiny:TinyMap'", "data.batch_size=3", "data.seed=4",
                                                "data.args.n=4", "validation.every=0"])
    model, data, _, loss, kwargs = recipes.resolve(r, torch.device("cpu"))
    assert isinstance(data, Shuffled) and data.batch_size == 3 and data.seed == 4
    result = fit(model, data, loss, steps=2, progress=False, tensorboard=False)
    assert result.pairs == 6
