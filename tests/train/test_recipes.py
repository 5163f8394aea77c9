"""Recipes: the shipped TOML files parse and resolve (when their model, data and loss are
installed), keys and --set overrides are checked against the schema, a recipe trains."""
import importlib

import pytest
import torch

from fastreg import recipes
from tiny import RECIPE, TinyNet, TinyPairs


@pytest.mark.parametrize("name", recipes.available())
def test_shipped_recipe_round_trips_and_resolves(tmp_path, name):
    recipe = recipes.load(name)
    assert recipe["description"] and recipe["model"]["name"] and recipe["data"]["kind"] and recipe["loss"]["name"]
    (tmp_path / "r.toml").write_text(recipes.dumps(recipe))
    assert recipes.load(tmp_path / "r.toml") == recipe
    from fastreg.models import registry

    missing = []
    try:
        registry.model_class(recipe["model"]["name"])
    except ImportError as exc:
        missing.append(f"model {recipe['model']['name']!r} ({exc})")
    if not hasattr(importlib.import_module("fastreg.data"), recipe["data"]["kind"]):
        missing.append(f"fastreg.data.{recipe['data']['kind']}")
    if not hasattr(importlib.import_module("fastreg.nn"), "loss_for"):
        missing.append("fastreg.nn.loss_for")
    if recipe["model"]["pretrained"] and not hasattr(importlib.import_module("fastreg.models"), "load"):
        missing.append("fastreg.models.load")
    if missing:
        pytest.skip(f"{name} names what is not installed yet: {', '.join(missing)}")
    if recipe["data"]["kind"] == "ImagePairs":
        pytest.skip(f"{name} reads real pairs from --data")
    recipe = recipes.override(recipe, ["validation.every=0"])  # resolve without building a second stream
    model, data, validation, loss, kwargs = recipes.resolve(recipe, torch.device("cpu"))
    assert isinstance(model, torch.nn.Module) and callable(loss) and kwargs["steps"] == recipe["train"]["steps"]


def test_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="unireg-2d-labelm"):
        recipes.load("unireg-2d-labelmm")


def test_unknown_key_lists_the_valid_ones(recipe, tmp_path):
    with pytest.raises(ValueError, match="unknown recipe key 'train.lrr'; valid keys: .*train.lr"):
        recipes.override(recipes.load(recipe), ["train.lrr=0.1"])
    bad = tmp_path / "bad.toml"
    bad.write_text(RECIPE + "\n[optimizer]\nname = 'sgd'\n")
    with pytest.raises(ValueError, match=f"{bad}: unknown recipe key 'optimizer.name'"):
        recipes.load(bad)


@pytest.mark.parametrize(
    "assignment, error, match",
    [
        ("train.steps=2.5", TypeError, "train.steps expected int, got float"),
        ("train.lr=fast", TypeError, "train.lr expected float, got str"),
        ("train.amp=fp8", ValueError, "train.amp expected one of"),
        ("train.steps", ValueError, "expected key=value"),
        ("model.args=3", TypeError, "model.args expected a table"),
    ],
)
def test_set_checks_types(recipe, assignment, error, match):
    with pytest.raises(error, match=match):
        recipes.override(recipes.load(recipe), [assignment])


def test_set_parses_toml_values(recipe):
    lr = float(torch.rand(()) * 1e-2)
    recipe = recipes.override(recipes.load(recipe), [f"train.lr={lr!r}", "train.steps=7", "train.amp=bf16",
                                                          "model.args.width=4", "data.args.size=12", "log.tensorboard=false"])
    assert recipe["train"]["lr"] == lr and recipe["train"]["steps"] == 7 and recipe["train"]["amp"] == "bf16"
    assert recipe["model"]["args"] == {"width": 4} and recipe["data"]["args"] == {"size": 12}
    model, data, _, _, kwargs = recipes.resolve(recipe, torch.device("cpu"))
    assert isinstance(model, TinyNet) and model.conv1.out_channels == 4
    assert isinstance(data, TinyPairs) and data.size == 12 and data.batch_size == 2
    assert kwargs["amp"] == "bf16" and kwargs["lr"] == lr


@pytest.mark.parametrize(
    "assignment, error, match",
    [
        ("model.args.depth=3", ValueError, "model.args.depth: not an argument of TinyNet \\(valid: width, dropout\\)"),
        ("model.args.width=2.5", TypeError, "model.args.width: expected int"),
        ("model.name='tiny:Nothing'", ValueError, "model.name: cannot import 'tiny:Nothing'"),
        ("model.name='voxelmorph-9000'", ValueError, "name: expected one of"),
        ("data.kind='NoSuchPairs'", ValueError, "data.kind: fastreg.data has no 'NoSuchPairs'"),
        ("data.path='/no/such/folder'", ValueError, "data.path: no such file or folder"),
        ("model.pretrained='/no/such.pt'", ValueError, "model.pretrained: no such file"),
        ("data.seed=1", ValueError, r"validation.seed: equal to data.seed \(1\) on the same data"),
    ],
)
def test_resolve_errors_name_the_key(recipe, assignment, error, match):
    recipe = recipes.override(recipes.load(recipe), [assignment])
    with pytest.raises(error, match=match):
        recipes.resolve(recipe, torch.device("cpu"))


def test_real_pairs_hold_out_validation_pairs(recipe):
    """A finite set of pairs validated on itself (no validation.path): a seeded share is held
    out of training, the same on every resolve, never a training pair."""
    n = int(torch.randint(6, 20, ()).item())
    recipe = recipes.override(recipes.load(recipe), ["data.kind='tiny:TinyMap'", f"data.args.n={n}",
                                                     "validation.holdout=0.25", "data.seed=1"])
    _, data, validation, *_ = recipes.resolve(recipe, torch.device("cpu"))
    train_ids, held_ids = data.dataset.indices, validation.dataset.indices
    assert len(held_ids) == max(1, round(0.25 * n)) and sorted(train_ids + held_ids) == list(range(n))
    assert not set(train_ids) & set(held_ids)
    _, again, revalidation, *_ = recipes.resolve(recipe, torch.device("cpu"))
    assert again.dataset.indices == train_ids and revalidation.dataset.indices == held_ids
    seen = {round(float(v), 6) for b in range(4 * n) for v in data.take(b, 1)["fixed"].flatten()[:1]}
    held = {round(float(validation.dataset[i]["fixed"].flatten()[0]), 6) for i in range(len(held_ids))}
    assert not seen & held  # no held-out pair in four epochs of training batches
    with pytest.raises(ValueError, match="validation: the data holds 1 pair"):
        recipes.resolve(recipes.override(recipe, ["data.args.n=1"]), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"validation.holdout: expected a share in \(0, 1\)"):
        recipes.resolve(recipes.override(recipe, ["validation.holdout=1.5"]), torch.device("cpu"))


def test_run_writes_the_resolved_recipe_and_fine_tunes_from_it(recipe, tmp_path):
    recipe = recipes.override(recipes.load(recipe), ["train.steps=2"])
    result = recipes.run(recipe, tmp_path / "run")
    assert result.step == 2 and result.best["metric"] == "cc"
    assert recipes.load(tmp_path / "run" / "recipe.toml") == recipe
    tuned = recipes.override(recipe, [f"model.pretrained={str(result.checkpoint)!r}"])
    model, *_ = recipes.resolve(tuned, torch.device("cpu"))
    saved = torch.load(result.checkpoint, weights_only=False)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
