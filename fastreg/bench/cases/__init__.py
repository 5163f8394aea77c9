"""Registry of benchmark cases: op family name -> module with ``cases(sizes, quick)``.

Each module defines ``cases(sizes: str, quick: bool) -> list[fastreg.bench.Case]``:
  sizes: one of SIZES; "tiny" (smoke tests, milliseconds), "quick" (small shapes),
         "default" (what ``fastreg-bench`` runs), "large" (realistic full-size volumes).
  quick: return the fewest cases that still cover the op's 2-D and 3-D paths (smoke
         tests and the pytest-benchmark suites), leaving out secondary variants.
The default run of every registered op must finish within one minute on 2 CPU cores:
keep each op's "default" CPU cost to about ten seconds and put big shapes in "large".
Adding an op = adding its module to this package and one line to REGISTRY.
"""
from importlib import import_module

SIZES = ("tiny", "quick", "default", "large")


def check_sizes(sizes: str) -> str:
    if sizes not in SIZES:
        raise ValueError(f"sizes: expected one of {SIZES}, got {sizes!r}")
    return sizes


# Case modules import check_sizes from here: keep the registry last.
REGISTRY = {
    "warp": import_module("fastreg.bench.cases.warp"),
    "integrate": import_module("fastreg.bench.cases.integrate"),
    "jacobian": import_module("fastreg.bench.cases.jacobian"),
    "lncc": import_module("fastreg.bench.cases.lncc"),
    "correlation": import_module("fastreg.bench.cases.correlation"),
}
