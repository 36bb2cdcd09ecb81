#!/usr/bin/env bash
# The oldest supported versions, tested: builds this tree against torch 2.11.0 + torchvision 0.26.0 (the GPU
# machine's torch, with Triton 3.6) in a virtual environment of its own and runs the whole test suite from outside
# the source tree. About 3 GB of downloads the first time; the environment is reused by later runs.
#
#   bash benchmarks/compat_check.sh                 # venv in /tmp/ssfdan-compat-venv
#   COMPAT_VENV=/path/venv bash benchmarks/compat_check.sh -x -k routed   # extra arguments go to pytest
#
# The sources are copied first (without build outputs), so that objects compiled against another torch in the
# checkout's build/ folder are never linked into this build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${COMPAT_VENV:-/tmp/ssfdan-compat-venv}
TORCH=${COMPAT_TORCH:-2.11.0}
TORCHVISION=${COMPAT_TORCHVISION:-0.26.0}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=${MAX_JOBS:-2}
# Compile the CUDA sources when a toolkit is there (no GPU is needed for that), as CI does.
[ -x "$CUDA_HOME/bin/nvcc" ] && export SSFDAN_FORCE_CUDA=1

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" "torch==$TORCH" "torchvision==$TORCHVISION" setuptools wheel ninja pybind11 numpy
SRC=$(mktemp -d /tmp/ssfdan-compat-src.XXXXXX)
RUN=$(mktemp -d /tmp/ssfdan-compat-run.XXXXXX)
trap 'rm -rf "$SRC" "$RUN"' EXIT
tar -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.so' --exclude='*.egg-info' \
  --exclude=__pycache__ -cf - . | tar -C "$SRC" -xf -
"${PIP[@]}" --no-build-isolation "$SRC[test]"
# From outside the source tree, so that the installed package (with its _C) is the one imported, and from an empty
# directory: `python -m` puts the working directory first on sys.path, where any stray module (a dl.py in /tmp
# once shadowed the module of that name that a library imports) would be imported instead.
cd "$RUN"
"$VENV/bin/python" -c "import sys, torch, torchvision, numpy; import triton; import ssfdan_ext; \
print('compat_check: python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__); print(ssfdan_ext.build_info())"
"$VENV/bin/python" -m pytest "$SRC/tests" -q -p no:cacheprovider "$@"
