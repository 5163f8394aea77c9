#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, inside a 15-minute device slot: build fastreg._C with CUDA
# for the present GPU's architecture only, run only the tests that touch the CUDA and Triton
# backends (marker `gpu`, set in tests/conftest.py), then the GPU benchmark rows of every op
# with CUDA events and the copy-bandwidth fraction. Everything goes to $OUT (or ./gpu_results):
# gpu.txt, build.log, pytest.log, bench.txt, bench.json, bench_large.txt.
#   bash scripts/gpu_check.sh           # < 8 min on an H100/H200: gpu tests, default + large sizes
#   bash scripts/gpu_check.sh --quick   # < 4 min: gpu tests without `slow`, default sizes only
# Extra arguments after --quick (or alone) go to fastreg-bench, e.g. --ops warp,integrate.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; shift; fi
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, file=sys.stderr)"
# Only the present GPU's architecture (e.g. 9.0 on Hopper), all cores: the build is most of
# the slot otherwise.
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' ')
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}
start=$(date +%s)
FASTREG_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1 \
  || { tail -50 "$OUT/build.log"; exit 1; }
echo "gpu_check: build ${TORCH_CUDA_ARCH_LIST} in $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import fastreg; print('backends', fastreg.available_backends())" | tee -a "$OUT/gpu.txt"
set +e
MARK="gpu"
[ "$QUICK" -eq 1 ] && MARK="gpu and not slow"
FASTREG_REQUIRE_EXTENSION=1 "$PY" -m pytest tests -q -m "$MARK" --durations=15 -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log"
tests=${PIPESTATUS[0]}
"$PY" -m fastreg.cli.bench --device cuda --sizes default --quiet --json "$@" > "$OUT/bench.json"
bench=$?
"$PY" -c "import json, sys; from fastreg.bench import format_table; print(format_table(json.load(open(sys.argv[1]))))" \
  "$OUT/bench.json" | tee "$OUT/bench.txt"
if [ "$QUICK" -eq 0 ]; then
  # The issues' full-size GPU targets (warp and integrate at 1x3x160x192x224, LNCC 2x16x128^3).
  "$PY" -m fastreg.cli.bench --device cuda --sizes large --quiet "$@" 2>&1 | tee "$OUT/bench_large.txt"
  bench=$(( bench || PIPESTATUS[0] ))
fi
set -e
echo "gpu_check: tests exit $tests, bench exit $bench, $(( $(date +%s) - start )) s after the build started"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
