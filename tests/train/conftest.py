"""Fixtures of the training tests."""
import pytest

from tiny import RECIPE


@pytest.fixture
def recipe(tmp_path):
    """A recipe file training TinyNet on TinyPairs (tests/train/tiny.py)."""
    path = tmp_path / "tiny.toml"
    path.write_text(RECIPE)
    return path
