"""Benchmarks of the fastreg ops against their peers (the engine behind ``fastreg-bench``).

  Case        one op call on fixed-size inputs: ours, the installed peers, the byte floor
  io_bytes    byte floor helper for Case.bytes_moved
  load_cases  the registered cases (fastreg.bench.cases.REGISTRY) of some op families
  run         measure cases: median times, peak memory, GB/s, ratios to the peers
              (implementations interleaved in rounds, ratios paired within a round)
  format_table  aligned text table of run's rows
"""
from fastreg.bench.case import Case, io_bytes, shape_name
from fastreg.bench.runner import format_table, load_cases, run

__all__ = ["Case", "io_bytes", "shape_name", "load_cases", "run", "format_table"]
