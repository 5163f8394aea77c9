"""Lines of op-family glue at a git revision (or in the working tree), in four parts.

    python scripts/glue_lines.py            # the working tree
    python scripts/glue_lines.py main       # a revision

Glue is the code that wires a family's kernels into torch.library, or checks the contract
every op keeps, rather than computing or validating anything of the op. Every count is of
non-blank, non-comment lines.

1. Python glue (docstrings excluded):
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
2. C++ glue: csrc/bindings.cpp, csrc/ops.h and csrc/common/launch.cuh whole (schemas,
   declarations, registration, the shared launch helpers); in the families' sources
   (csrc/<family>/*.cpp, *.cu) the ``TORCH_LIBRARY``/``TORCH_LIBRARY_IMPL`` blocks and the
   launch helpers defined there (``kThreads``, ``kMaxBlocks``, ``blocks_for``,
   ``fits_int32``).
3. Contract tests in the families' test files (tests/ops/test_*.py, tests/triton/test_*.py):
   the test functions (decorators and docstrings included) whose name says they check a
   contract property rather than the family's mathematics: parity with the reference
   (``matches_reference``, ``reference_float``, ``float64_matches``, ``float32_matches``,
   ``keeps_float64``), ``gradcheck``, ``opcheck``, ``torch_compile`` or ``test_compile``,
   ``nan``, ``contiguous``, ``channels_last``, ``broadcast``, ``size_one``, ``zero_size``,
   ``empty_batch``, and bad input (``bad``, ``raise``, ``refused``, ``validated``).
4. The contract suite, tests/test_op_contract.py, whole (docstrings included).
"""
from __future__ import annotations

import ast
import re
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


CPP_WHOLE = ("csrc/bindings.cpp", "csrc/ops.h", "csrc/common/launch.cuh")
CPP_HELPERS = re.compile(r"^(constexpr int(64_t)? (kThreads|kMaxBlocks)\b|.*\b(blocks_for|fits_int32)\(.*\)\s*\{)")
CONTRACT_TEST = re.compile(
    r"matches_reference|reference_float|float64_matches|float32_matches|keeps_float64|gradcheck|opcheck"
    r"|torch_compile|^test_compile|nan|contiguous|channels_last|broadcast|size_one|zero_size|empty_batch"
    r"|bad|raise|refused|validated")


def files(rev: str | None, folder: str) -> list[str]:
    """Paths of the files under ``folder`` at ``rev`` (the working tree's, untracked included, if None)."""
    if rev is None:
        command = ["git", "ls-files", "--cached", "--others", "--exclude-standard", folder]
    else:
        command = ["git", "ls-tree", "-r", "--name-only", rev, folder]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()


def _is_code(line: str, comment: str = "#") -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith(comment)


def cpp_block_glue(text: str) -> int:
    """Code lines of the TORCH_LIBRARY(_IMPL) blocks and launch helpers of one C++ source."""
    lines, n, count = text.splitlines(), 0, 0
    while n < len(lines):
        line = lines[n]
        if line.startswith("TORCH_LIBRARY") or CPP_HELPERS.match(line):
            depth, start = 0, n
            while n < len(lines) - 1:  # to the line that closes the first brace (or ends the statement)
                depth += lines[n].count("{") - lines[n].count("}")
                if (depth <= 0 and "{" in "".join(lines[start:n + 1])) or (n == start and lines[n].rstrip().endswith(";")):
                    break
                n += 1
            count += sum(_is_code(x, "//") for x in lines[start:n + 1])
        n += 1
    return count


def cpp_glue(rev: str | None) -> tuple[int, int]:
    """(whole files, family blocks) of C++ glue."""
    texts = [text for text in (source(rev, path) for path in CPP_WHOLE) if text]
    whole = sum(_is_code(line, "//") for text in texts for line in text.splitlines())
    blocks = sum(cpp_block_glue(source(rev, path)) for path in files(rev, "csrc")
                 if path.endswith((".cpp", ".cu")) and path.count("/") == 2 and path not in CPP_WHOLE)
    return whole, blocks


def contract_test_glue(rev: str | None) -> tuple[int, int]:
    """(contract test lines in the families' test files, lines of tests/test_op_contract.py)."""
    family = 0
    for path in files(rev, "tests/ops") + files(rev, "tests/triton"):
        if not path.rsplit("/", 1)[-1].startswith("test_") or not path.endswith(".py"):
            continue
        text = source(rev, path)
        lines = text.splitlines()
        for node in ast.parse(text).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and CONTRACT_TEST.search(node.name):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                family += sum(_is_code(x) for x in lines[first - 1:node.end_lineno])
    suite = source(rev, "tests/test_op_contract.py")
    return family, sum(_is_code(x) for x in suite.splitlines()) if suite else 0


def main(rev: str | None) -> None:
    print(f"glue lines at {rev or 'the working tree'}")
    print("1. Python glue")
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
    python = total + n
    print(f"{'all':<12} {'':>5} {'':>8} {python:>6}")
    whole, blocks = cpp_glue(rev)
    print(f"2. C++ glue: {whole + blocks} ({whole} in {', '.join(CPP_WHOLE)}; {blocks} in the families' sources)")
    family, suite = contract_test_glue(rev)
    print(f"3. contract tests in the families' test files: {family}")
    print(f"4. tests/test_op_contract.py: {suite}")
    print(f"all four parts: {python + whole + blocks + family + suite}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
