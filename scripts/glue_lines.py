"""Lines of op-family glue per family at a git revision (or in the working tree).

    python scripts/glue_lines.py            # the working tree
    python scripts/glue_lines.py main       # a revision

Glue is the code that wires a family's kernels into torch.library rather than computing or
validating anything of the op: non-blank, non-comment lines (docstrings excluded) of
  fastreg/ops/<family>.py     fake kernels, setup_context/backward adapters, register_*
                              functions, the family's declaration and every module-level
                              statement that registers; in the public functions, the
                              dispatch to a kernel backend (the ``backend == "triton"`` branch
                              with its lazy import, the ``torch.ops.fastreg`` /
                              ``_library.kernel`` call);
  fastreg/triton/<family>.py  imports of fastreg, op-definition helpers (``_define_op``,
                              ``_register``), decorators defining ops, thin wrappers around
                              ``torch.ops.fastreg``, module-level registration statements,
                              and the launchers' re-validation (``raise`` statements with the
                              ``if`` that guards them, ``_check*`` helpers, asserts);
  fastreg/_library.py         counted once, as the shared row.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

FAMILIES = ("warp", "integrate", "lncc", "correlation", "jacobian")
ROOT = Path(__file__).resolve().parent.parent
GLUE_DEFS = ("_fake", "fake_", "_setup", "register_", "_reference", "_backward_args", "_register", "_define_op")


def source(rev: str | None, path: str) -> str | None:
    if rev is None:
        file = ROOT / path
        return file.read_text() if file.exists() else None
    done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def code_lines(text: str, nodes) -> set[int]:
    """Line numbers of the nodes' code (blank, comment and docstring lines left out)."""
    lines = text.splitlines()
    docstrings = set()
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    out = set()
    for node in nodes:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        for n in range(first, node.end_lineno + 1):
            stripped = lines[n - 1].strip()
            if stripped and not stripped.startswith("#") and n not in docstrings:
                out.add(n)
    return out


def _mentions(node, *names: str) -> bool:
    text = ast.unparse(node)
    return any(name in text for name in names)


def ops_glue(text: str) -> int:
    tree = ast.parse(text)
    nodes = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith(GLUE_DEFS):
            nodes.append(node)
        elif isinstance(node, (ast.Expr, ast.If)) and _mentions(node, "register", "triton"):
            nodes.append(node)
        elif isinstance(node, ast.Assign) and _mentions(node, "_library.Family"):
            nodes.append(node)
        elif isinstance(node, ast.FunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.If) and _mentions(inner.test, '"triton"', "'triton'"):
                    nodes.append(inner)
                elif isinstance(inner, (ast.Return, ast.Assign)) and _mentions(inner, "torch.ops.fastreg", "_library.kernel"):
                    nodes.append(inner)
    return len(code_lines(text, nodes))


def triton_glue(text: str) -> int:
    tree = ast.parse(text)
    nodes = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fastreg"):
            nodes.append(node)
        elif isinstance(node, (ast.Expr, ast.If)) and _mentions(node, "register"):
            nodes.append(node)
        elif isinstance(node, ast.Assign) and _mentions(node, "_define_op", "custom_op", "triton_op"):
            nodes.append(node)
        elif isinstance(node, ast.FunctionDef):
            if node.name.startswith(("_register", "_check")):
                nodes.append(node)
                continue
            body = [b for b in node.body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]
            if len(body) == 1 and isinstance(body[0], ast.Return) and _mentions(body[0], "torch.ops.fastreg"):
                nodes.append(node)  # a thin wrapper around the registered op
                continue
            nodes.extend(d for d in node.decorator_list if _mentions(d, "_define_op", "_register", "triton_op"))
            for inner in ast.walk(node):
                if isinstance(inner, ast.If) and any(isinstance(b, ast.Raise) for b in inner.body):
                    nodes.append(inner)
                elif isinstance(inner, ast.Assert):
                    nodes.append(inner)
    return len(code_lines(text, nodes))


def main(rev: str | None) -> None:
    print(f"glue lines at {rev or 'the working tree'}")
    print(f"{'family':<12} {'ops/':>5} {'triton/':>8} {'total':>6}")
    total = 0
    for family in FAMILIES:
        ops = source(rev, f"fastreg/ops/{family}.py")
        tri = source(rev, f"fastreg/triton/{family}.py")
        a = ops_glue(ops) if ops else 0
        b = triton_glue(tri) if tri else 0
        total += a + b
        print(f"{family:<12} {a:>5} {b:>8} {a + b:>6}")
    shared = source(rev, "fastreg/_library.py")
    n = len(code_lines(shared, ast.parse(shared).body)) if shared else 0
    print(f"{'_library.py':<12} {'':>5} {'':>8} {n:>6}")
    print(f"{'all':<12} {'':>5} {'':>8} {total + n:>6}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
