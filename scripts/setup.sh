#!/usr/bin/env bash
# Sets up everything on a fresh machine: a virtual environment in .venv with torch 2.14.1 and
# torchvision 0.29.1 (taken from local disk where the machine has them), the project's
# dependencies, and the compiled extension (CPU kernels always; CUDA kernels when torch is a
# CUDA build and nvcc is present). Safe to run again: it only redoes what is missing or stale.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }

# The demo page's browser tests drive Debian's chromium through its chromedriver (no browser is
# downloaded at run time). Installed from Debian's registry when missing and this is root (CI).
if ! command -v chromedriver >/dev/null 2>&1 || ! { [ -x /usr/lib/chromium/chromium ] || command -v chromium >/dev/null 2>&1; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      chromium chromium-driver >/dev/null
    echo "setup.sh: installed $(chromium --version 2>/dev/null) for the browser tests"
  else
    echo "setup.sh: chromium and chromium-driver are missing (the browser tests need them):" \
         "sudo apt-get install chromium chromium-driver" >&2
  fi
fi

# Pinned torch first: the extension is compiled against exactly this build.
if ! "$VENV/bin/python" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
  pip_install "torch==2.14.1" "torchvision==0.29.1"
fi
pip_install setuptools wheel ninja pybind11

# torch guesses CUDA_HOME from the nvcc on PATH; a shim in /usr/local/bin would make that
# /usr/local, which has no libcudart. setup.py resolves this too; say it here for ninja's sake.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

# The sam2 extra: sam2 ships as a source package whose setup.py would build a CUDA extension
# Stable-SAM does not use (SAM2_BUILD_CUDA=0 skips it) and whose isolated build would fetch
# another torch (hence --no-build-isolation, and --no-deps so pip leaves torch alone); its own
# dependencies follow. Skipped when that sam2 is already there.
export SAM2_BUILD_CUDA=0
if ! "$VENV/bin/python" -c "import importlib.metadata as m, importlib.util as u; assert m.version('sam2') == '1.1.0'; assert all(u.find_spec(n) for n in ('sam2', 'hydra', 'iopath'))" 2>/dev/null; then
  pip_install --no-build-isolation --no-deps "sam2==1.1.0"
  pip_install "hydra-core>=1.3.2" "iopath>=0.1.10"
fi

# --no-build-isolation: the extension must be built against the torch installed above, not a
# torch that pip would fetch into an isolated build environment.
start=$(date +%s)
pip_install --no-build-isolation -e ".[test,triton,hq,onnx,serve,sam2]"
echo "setup.sh: environment ready in $VENV (extension build/install took $(( $(date +%s) - start )) s)"
"$VENV/bin/python" -c "import stable_sam_ops as s; print('stable_sam_ops backends available here:', s.available_backends(), '| CUDA kernels compiled:', s._extension.compiled_with_cuda())"
