#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build fastreg._C with CUDA against the installed torch,
# run the whole test suite (CUDA and Triton tests run for real there), then the GPU
# benchmarks. Results go to $OUT (or ./gpu_results): pytest log, fastreg-bench table + JSON
# (default sizes) and the table of the large sizes.
# Usage: bash scripts/gpu_check.sh [extra fastreg-bench args]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, file=sys.stderr)"
FASTREG_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import fastreg; print('backends', fastreg.available_backends())" | tee -a "$OUT/gpu.txt"
set +e
FASTREG_REQUIRE_EXTENSION=1 "$PY" -m pytest tests -q -x --durations=15 2>&1 | tee "$OUT/pytest.log"
tests=${PIPESTATUS[0]}
"$PY" -m fastreg.cli.bench --device cuda --sizes default "$@" 2>&1 | tee "$OUT/bench.txt"
"$PY" -m fastreg.cli.bench --device cuda --sizes default --json "$@" > "$OUT/bench.json"
bench=$?
# The issues' full-size GPU targets (e.g. integrate_svf at 1x3x160x192x224) are in "large".
"$PY" -m fastreg.cli.bench --device cuda --sizes large "$@" 2>&1 | tee "$OUT/bench_large.txt"
bench=$(( bench || PIPESTATUS[0] ))
set -e
echo "gpu_check: tests exit $tests, bench exit $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
