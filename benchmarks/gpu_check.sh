#!/usr/bin/env bash
# The whole GPU verdict in one command on one H200 (about 7 minutes; GPU_CHECK_BUDGET seconds at most): build the
# extension for this GPU, the self-test, memcheck and racecheck over the library's kernels, the CUDA tests, and
# the paper-scale benchmarks. Everything it writes is packed into ONE archive, $OUT/gpu_check.tar.gz, plus a
# short $OUT/summary.txt (one line per step: PASS, FAIL, TIMEOUT or SKIP, its exit code and seconds). The archive
# is re-packed after every step, and on exit, so that a step that fails, hangs or is killed loses nothing that was
# already written. Unpack it under benchmarks/results/gpu/ and commit it there.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh                     # every step, in priority order
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh tests_cuda bench_ssd  # the build and then only the named steps
#
# Steps (in order): env build info memcheck racecheck tests_cuda bench_ssd bench_confidence_select
# bench_iteration compile_cuda bench_ssd_variants bench_domain_loss tests_cuda_random bench_iteration_reference.
# A step whose time limit would pass the budget is cut short to fit it; with under 15 s left, the remaining steps
# are skipped and say so.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/benchmarks/results/gpu}
BUDGET=${GPU_CHECK_BUDGET:-450}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
SUMMARY=$WORK/summary.txt
export PYTHONUNBUFFERED=1 SSFDAN_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# Compiled Triton kernels: the interpreter is for machines without a GPU.
export TRITON_INTERPRET=0
export TRITON_CACHE_DIR=$WORK/triton_cache
START=$SECONDS
SELECTED=" $* "
status=0
echo "gpu_check: $(date -u +%FT%TZ), budget ${BUDGET}s, steps: ${*:-all}" | tee "$SUMMARY"

pack() {
  cp "$SUMMARY" "$OUT/summary.txt" 2>/dev/null
  tar czf "$OUT/gpu_check.tar.gz.part" -C "$WORK" --exclude=triton_cache . 2>/dev/null \
    && mv "$OUT/gpu_check.tar.gz.part" "$OUT/gpu_check.tar.gz"
}
trap 'echo "gpu_check: interrupted after $((SECONDS - START))s" >> "$SUMMARY"; pack; exit 130' INT TERM
trap 'pack; rm -rf "$WORK"' EXIT  # everything is in the archive by then

selected() {  # env and build always run; another step when no step is named or it is
  [ "$1" = env ] || [ "$1" = build ] || [ -z "${SELECTED// /}" ] || [[ "$SELECTED" == *" $1 "* ]]
}

step() {  # step NAME LIMIT CMD...: run with a time limit (cut to the budget), log to $WORK/NAME.log, record
  local name=$1 limit=$2
  shift 2
  selected "$name" || return 0
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 15 ]; then
    printf '%-28s SKIP    (budget spent)\n' "$name" | tee -a "$SUMMARY"
    status=1
    return 1
  fi
  [ "$limit" -gt $((left - 5)) ] && limit=$((left - 5))
  echo "=== $name (limit ${limit}s, ${left}s of the budget left)"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  local verdict=PASS
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then verdict=TIMEOUT; elif [ "$rc" -ne 0 ]; then verdict=FAIL; fi
  [ "$rc" -eq 0 ] || status=1
  tail -n 25 "$WORK/$name.log"
  printf '%-28s %-7s exit %3d  %4ds\n' "$name" "$verdict" "$rc" $((SECONDS - t0)) | tee -a "$SUMMARY"
  pack
  return "$rc"
}

cd "$ROOT"
step env 30 bash -c "nvidia-smi; $PY -c 'import sys, torch, triton, numpy; print(sys.version); print(\"torch\", \
torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__, \"numpy\", numpy.__version__, \
torch.cuda.get_device_name())'; nvcc --version | tail -n 2; which compute-sanitizer ncu; $PY -m pip list 2>/dev/null"
step build 200 $PY -m pip install --no-build-isolation --no-deps -v . || { echo "build failed: no further step"; exit 1; }
# From outside the source tree, so that the installed package (with its _C) is the one imported.
cd /tmp
step info 90 $PY -m ssfdan_ext.info --check

# The sanitizers run the self-test's CUDA rows (every CUDA and Triton kernel, forward and backward, on small
# inputs). Without the caching allocator, memcheck sees the end of each tensor, not of a cached block. Racecheck
# looks for shared-memory hazards in the library's own kernels (library kernels such as cuDNN's are filtered out
# where this compute-sanitizer can filter by name).
SANITIZER=${COMPUTE_SANITIZER:-compute-sanitizer}
OWN_KERNELS='confidence|mode_|_routed|_sparse'
FILTER=()
if "$SANITIZER" --help 2>/dev/null | grep -q -- '--kernel-regex'; then FILTER=(--kernel-regex "kns=$OWN_KERNELS"); fi
step memcheck 75 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck --error-exitcode 3 \
  --print-limit 50 $PY -m ssfdan_ext.info --check --device cuda
step racecheck 75 "$SANITIZER" --tool racecheck --error-exitcode 3 --print-limit 50 "${FILTER[@]}" \
  $PY -m ssfdan_ext.info --check --device cuda

# Inductor compiling a whole training step is its own later step (compile_cuda): its compile time would crowd
# out the kernel tests.
# The randomized comparison (tests_cuda_random) is a later step too: each new shape may compile Triton kernels.
COMPILE_TEST=compiled_training_step_on_the_gpu
RANDOM_TEST=fused_on_the_gpu_equals_the_cpu_reference
step tests_cuda 170 $PY -m pytest "$ROOT/tests" -m cuda -k "not $COMPILE_TEST and not $RANDOM_TEST" -q -rs \
  -p no:cacheprovider --junitxml="$WORK/tests_cuda.xml"
step bench_ssd 120 bash -c "$PY '$ROOT/benchmarks/bench_ssd.py' --preset paper --device cuda --modes fwd full \
  --repeats 5 --warmup 2 --out '$WORK' && $PY '$ROOT/benchmarks/bench_ssd.py' --preset paper --device cuda \
  --layout checkerboard --modes full --repeats 5 --warmup 2 --out '$WORK'"
step bench_confidence_select 60 $PY "$ROOT/benchmarks/bench_confidence_select.py" --preset paper paper2k \
  --device cuda --repeats 10 --warmup 3 --out "$WORK"
step bench_iteration 120 $PY "$ROOT/benchmarks/bench_iteration.py" --preset paper --device cuda \
  --rows none global ssd-grouped ssd-fused --repeats 3 --warmup 2 --profiled 2 --out "$WORK"
step compile_cuda 90 $PY -m pytest "$ROOT/tests/test_compile.py" -m cuda -k "$COMPILE_TEST" -q -rs \
  -p no:cacheprovider
step bench_ssd_variants 90 bash -c "$PY '$ROOT/benchmarks/bench_ssd.py' --preset paper --device cuda --modes full \
  --precision fp32-ieee --repeats 5 --warmup 2 --out '$WORK' && $PY '$ROOT/benchmarks/bench_ssd.py' --preset \
  paper --device cuda --modes full --precision bf16 --repeats 5 --warmup 2 --out '$WORK'"
# The discriminator step on the paper's two crop sizes: both domains in one fused forward against two forwards.
step bench_domain_loss 45 $PY "$ROOT/benchmarks/bench_domain_loss.py" --preset paper-two-sizes --device cuda \
  --providers fused --modes joint paired --grads none --repeats 5 --warmup 2 --out "$WORK"

# The fused backend on the GPU against the CPU reference on random small shapes, layouts and strides (hypothesis,
# the tests' default of 20 examples): tiles that straddle class boundaries, classes without pairs.
step tests_cuda_random 75 $PY -m pytest "$ROOT/tests/test_properties.py" -m cuda -k "$RANDOM_TEST" -q -rs \
  -p no:cacheprovider --junitxml="$WORK/tests_cuda_random.xml"

# The per-class loop at paper scale, last: the slowest row, and the least needed.
step bench_iteration_reference 60 $PY "$ROOT/benchmarks/bench_iteration.py" --preset paper --device cuda \
  --rows ssd-reference --amp off --repeats 2 --warmup 1 --profiled 1 --out "$WORK/reference"

echo "gpu_check: finished after $((SECONDS - START))s, exit $status" | tee -a "$SUMMARY"
exit $status
