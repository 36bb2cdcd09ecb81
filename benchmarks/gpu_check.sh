#!/usr/bin/env bash
# The whole GPU check in one run (< 8 minutes on one H200): build the extension for this GPU, run the
# CUDA-marked tests, then the confidence_select and SS-D benchmarks at paper scale. Logs and CSVs go to $OUT
# (default benchmarks/results/gpu); commit what it writes under benchmarks/results/.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/benchmarks/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 SSFDAN_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# Compiled Triton kernels (tests/conftest.py defaults to the interpreter, for CPU-only machines).
export TRITON_INTERPRET=0
status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, remember failures
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - start))s"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

cd "$ROOT"
step env 60 bash -c "nvidia-smi; $PY -c 'import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())'; $PY -m pip list 2>/dev/null | grep -i -E '^(setuptools|wheel|ninja|pybind11|pytest|pytest-benchmark|matplotlib) '"
step build 240 $PY -m pip install --no-build-isolation --no-deps -v . || { echo "build failed"; exit 1; }
# Run from outside the source tree so that the installed package (with its _C) is the one imported.
cd /tmp
step info 30 $PY -c "import ssfdan_ext; print(ssfdan_ext.build_info())"
step tests_cuda 240 $PY -m pytest "$ROOT/tests" -m cuda -q -rs --junitxml="$OUT/tests_cuda.xml"
step bench_confidence_select_paper 120 $PY "$ROOT/benchmarks/bench_confidence_select.py" --preset paper paper2k --device cuda \
  --repeats 10 --warmup 3 --out "$OUT"
step bench_ssd_paper 150 $PY "$ROOT/benchmarks/bench_ssd.py" --preset paper --device cuda --modes fwd full l1 \
  --repeats 5 --warmup 2 --out "$OUT"
step bench_ssd_paper_checkerboard 90 $PY "$ROOT/benchmarks/bench_ssd.py" --preset paper --device cuda \
  --layout checkerboard --modes full --repeats 5 --warmup 2 --out "$OUT"
exit $status
