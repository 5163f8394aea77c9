"""Imports point down: no module of the op layers imports one of a higher layer.

Layers, lowest first (docs/ARCHITECTURE.md): the shared helpers (the compiled _C, _extension,
_backend, _validate, _library, _checkpoint), then reference and triton (kernels; neither imports the
other's modules except triton's own), then ops, then compat, then nn. Every import statement
of fastreg/ counts, also those inside functions (a lazy import is still a dependency).
"""
import ast
from pathlib import Path

import pytest

import fastreg

ROOT = Path(fastreg.__file__).parent
HELPERS = ("_C", "_extension", "_backend", "_validate", "_library", "_checkpoint")  # may import each other
RANK = {**{name: 0 for name in HELPERS}, "reference": 1, "triton": 1, "ops": 2, "compat": 3, "nn": 4}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The fastreg modules ``path`` imports (``from fastreg import x`` names fastreg.x when x
    is a module, else the package fastreg itself)."""
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                where = ROOT.parent / sub.replace(".", "/")
                is_module = (where.with_suffix(".py").exists() or (where / "__init__.py").exists()
                             or any(where.parent.glob(f"{where.name}.*.so")))  # the compiled fastreg._C
                out.add(sub if is_module else base)
    return {name for name in out if name == "fastreg" or name.startswith("fastreg.")}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


LOW = sorted(p for p in ROOT.rglob("*.py") if _layer(_module(p)) is not None)


def test_the_layers_exist():
    assert {_layer(_module(p)) for p in LOW} == set(RANK) - {"_C"}


@pytest.mark.parametrize("path", LOW, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    layer = _layer(_module(path))
    for name in _imports(path):
        target = _layer(name)
        assert target is not None, f"{_module(path)} imports {name}, above the op layers"
        if target == layer or RANK[target] == RANK[layer] == 0:
            continue
        assert RANK[target] < RANK[layer], f"{_module(path)} ({layer}) imports {name} ({target}), not below it"


def test_no_import_cycles():
    """No module of the op layers reaches itself through imports (e.g. compat/_integrate.py and
    compat/voxelmorph importing each other)."""
    graph = {_module(p): {name for name in _imports(p) if _layer(name)} for p in LOW}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
