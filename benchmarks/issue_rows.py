"""The rows of an issue's performance target, run through the bench runner.

    python benchmarks/issue_rows.py lncc          # windows 3, 5, 7, 9, 15 at 1x1x96^3 and 1x1x1024^2
    python benchmarks/issue_rows.py correlation   # (1, 32, 40, 48, 40), radius 1 (issue 5)

These are subsets of ``fastreg-bench --ops OP --sizes large`` whose full runs include peers
too slow to repeat (VoxelMorph's conv NCC at 160x192x224 takes ~90 s a call).
"""
import sys

from fastreg.bench import format_table, run
from fastreg.bench.cases import correlation, lncc

ROWS = {
    "lncc": lambda: [c for c in lncc.cases("large", quick=False) if "96^3" in c.name or "1024^2" in c.name],
    "correlation": lambda: correlation.shape_cases((1, 32, 40, 48, 40)),
}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ROWS:
        raise SystemExit(f"usage: python benchmarks/issue_rows.py {{{'|'.join(ROWS)}}}")
    print(format_table(run(ROWS[sys.argv[1]](), repeat=3, warmup=1)))
