"""The README's usage examples run as written."""
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    text = README.read_text()
    usage = text[text.index("## Use") : text.index("## Benchmarks")]
    blocks = [part.split("```")[0] for part in usage.split("```python")[1:]]
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:  # the second block continues the first
        exec(compile(block, str(README), "exec"), namespace)
