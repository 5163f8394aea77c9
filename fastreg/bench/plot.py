"""Bar charts of benchmark ratios (``fastreg-bench --plot out.png``), for people who would
rather look than read: one panel per op family, one group of bars per case (size), one bar
per peer or backend, the height its speed ratio against the baseline (> 1: fastreg is
faster), forward and forward+backward side by side. matplotlib is imported here only."""
from __future__ import annotations

import os
import tempfile
from typing import Sequence

from fastreg.bench.runner import impl_label

PHASES = (("ratio_fwd", "fwd", "///"), ("ratio_fwd_bwd", "fwd+bwd", ""))


def plot_ratios(rows: Sequence[dict], path: str) -> None:
    """Draw the ratios of ``rows`` (as ``fastreg.bench.run`` returns them) into a PNG at
    ``path`` (written to a temporary name, then renamed: never a partial file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = [r for r in rows if not _is_baseline(r)]
    if not compared:
        raise ValueError("plot: no ratios to draw (run with peers or with more than one backend)")
    ops = list(dict.fromkeys(r["op"] for r in compared))
    fig, axes = plt.subplots(len(ops), 1, figsize=(11, 2.8 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        _panel(ax, [r for r in compared if r["op"] == op], op)
    first = rows[0]
    fig.suptitle(f"fastreg speed-up over each peer, {first['device']} (baseline {first['baseline']})", fontsize=10)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def _panel(ax, rows: Sequence[dict], op: str) -> None:
    cases = list(dict.fromkeys(f"{r['case']} {r['dtype']}" for r in rows))
    impls = list(dict.fromkeys(impl_label(r) for r in rows))
    bars = [(impl, phase) for impl in impls for phase in PHASES]
    width = 0.8 / max(len(bars), 1)
    colors = {impl: f"C{i}" for i, impl in enumerate(impls)}
    for j, (impl, (key, title, hatch)) in enumerate(bars):
        xs, heights = [], []
        for i, case in enumerate(cases):
            row = next((r for r in rows if f"{r['case']} {r['dtype']}" == case and impl_label(r) == impl), None)
            if row is not None and row.get(key):
                xs.append(i - 0.4 + (j + 0.5) * width)
                heights.append(row[key])
        if xs:
            ax.bar(xs, heights, width, color=colors[impl], hatch=hatch, edgecolor="white", label=f"vs {impl} ({title})")
    ax.set_yscale("log", base=2)  # ratios span 0.5x to 100x; a slowdown shows below the line
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(cases)), cases, fontsize=7, rotation=10)
    ax.set_ylabel("speed-up (x)")
    ax.set_title(op, fontsize=9, loc="left")
    ax.legend(fontsize=7, ncol=2, loc="upper right")


def _is_baseline(row: dict) -> bool:
    return row["impl"] == "fastreg" and f"fastreg[{row['backend']}]" == row["baseline"]
