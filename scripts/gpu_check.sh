#!/usr/bin/env bash
# One-shot check of the CUDA and Triton backends on a fresh GPU machine without network:
#   bash scripts/gpu_check.sh            (from anywhere; runs in the repository root)
# Uses the machine's preinstalled torch (PYTHON, default python3; .venv/bin/python if present).
# Stages, each with its own timeout inside a total budget (GPU_CHECK_BUDGET_S, default 470 s):
#   1. versions: nvidia-smi, torch, triton, nvcc
#   2. build the extension in place for the visible GPU's architecture (FORCE_CUDA=1)
#   3. pytest tests/stable_sam_ops (CUDA and Triton tests run on the GPU)
#   4. compute-sanitizer memcheck (if installed) on the NaN / huge-offset cases
#   5. benchmarks/bench_deformable_sample_gpu.py (writes benchmarks/RESULTS.md)
# Logs, junit XML and results go to $OUT when it is set (a temp dir otherwise). Exits non-zero if the build, the tests or the
# sanitizer failed; the benchmark table is printed last either way.
set -u
cd "$(dirname "$0")/.."

BUDGET_S=${GPU_CHECK_BUDGET_S:-470}
OUT_DIR=${OUT:-}
RESULT_DIR=${OUT_DIR:-$(mktemp -d /tmp/sso_gpu_check.XXXXXX)}
mkdir -p "$RESULT_DIR"
exec > >(tee "$RESULT_DIR/gpu_check.log") 2>&1

if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
  PY=.venv/bin/python
else
  PY=python3
fi
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda  # torch's guess from a shim nvcc on PATH can be wrong
fi
# Pure-Python test dependencies brought along for a machine without them (see tests()).
PYDEPS=${GPU_CHECK_PYDEPS:-.gpu_pydeps}
[ -d "$PYDEPS" ] && PYTHONPATH="$(cd "$PYDEPS" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS=${MAX_JOBS:-16}

declare -A STATUS
ORDER=()
remaining() { echo $(( BUDGET_S - SECONDS )); }
# stage NAME MAX_SECONDS FUNCTION: runs FUNCTION under timeout min(MAX_SECONDS, time left).
stage() {
  local name=$1 max=$2
  shift 2
  local left
  left=$(remaining)
  local limit=$(( max < left ? max : left ))
  ORDER+=("$name")
  if [ "$limit" -le 5 ]; then
    echo "=== [$SECONDS s] $name: skipped, time budget spent"
    STATUS[$name]="skipped (budget)"
    return
  fi
  echo "=== [$SECONDS s] $name (timeout ${limit}s)"
  # Stage functions run in a child bash (timeout cannot run a function), exported below.
  STAGE_LIMIT=$limit timeout --kill-after=10 "$limit" bash -c "$*"
  local rc=$?
  if [ "$rc" -eq 0 ]; then STATUS[$name]=ok; else STATUS[$name]="FAILED rc=$rc"; fi
  [ "$rc" -eq 124 ] && STATUS[$name]="TIMED OUT after ${limit}s"
  [ "$rc" -eq 200 ] && STATUS[$name]="skipped (tool not installed)"
  echo "=== [$SECONDS s] $name: ${STATUS[$name]}"
}

versions() {
  nvidia-smi || true
  "$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton not importable:", exc)
EOF
  command -v nvcc >/dev/null && nvcc --version | tail -2
  [ -n "${CUDA_HOME:-}" ] && "$CUDA_HOME/bin/nvcc" --version | tail -2
  return 0
}

build() {
  local arch=${TORCH_CUDA_ARCH_LIST:-}
  if [ -z "$arch" ]; then
    arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))") || return 1
  fi
  echo "building for arch $arch with MAX_JOBS=$MAX_JOBS, CUDA_HOME=${CUDA_HOME:-unset}"
  rm -f stable_sam_ops/_C*.so  # never test a stale build carried over from another machine
  FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" "$PY" setup.py build_ext --inplace || return 1
  "$PY" - <<'EOF'
import stable_sam_ops as s
from stable_sam_ops import _extension
print("backends:", s.available_backends(), "| compiled with CUDA:", _extension.compiled_with_cuda())
assert "cuda" in s.available_backends(), f"CUDA backend unavailable: {_extension.load_error()}"
EOF
}

tests() {
  if ! "$PY" -c "import pytest" 2>/dev/null; then
    echo "pytest is not installed for $PY. Without network: on a machine with pip, run"
    echo "  pip install --target .gpu_pydeps pytest pytest-benchmark"
    echo "in the repository and bring .gpu_pydeps along (GPU_CHECK_PYDEPS names another folder)."
    return 1
  fi
  local extra=()
  # pyproject's addopts name pytest-benchmark's option; without the plugin, drop them.
  "$PY" -c "import pytest_benchmark" 2>/dev/null || extra=(-o "addopts=-ra")
  "$PY" -m pytest tests/stable_sam_ops -q -rs -p no:cacheprovider "${extra[@]}" \
    --junitxml="$RESULT_DIR/pytest_stable_sam_ops.xml"
}

sanitizer() {
  local cs
  cs=$(command -v compute-sanitizer || true)
  [ -z "$cs" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/compute-sanitizer" ] \
    && cs="$CUDA_HOME/bin/compute-sanitizer"
  if [ -z "$cs" ]; then
    echo "compute-sanitizer not found"
    return 200
  fi
  local script
  script=$(mktemp /tmp/sso_memcheck.XXXXXX.py)
  cat > "$script" <<'EOF'
# NaN, infinite and huge offsets, both load paths, both backward paths of the CUDA kernels.
import torch
from stable_sam_ops import deformable_sample

def case(C, G, dtype, deterministic):
    torch.manual_seed(0)
    B, H, W = 2, 5, 7
    t = lambda *s: torch.randn(*s, device="cuda", dtype=dtype, requires_grad=True)
    value, residual = t(B, H, W, C), t(B, H, W, C)
    amplitude, alpha = t(B, H, W, G), t(B, 2)
    raw = torch.randn(B, H, W, G, 2, device="cuda", dtype=dtype) * 3
    raw[0, 0, 0] = float("nan"); raw[0, 1, 1, 0, 0] = float("inf"); raw[1, 2, 2, 0, 1] = float("-inf")
    raw[1, 4, 6] = 1e4; raw[0, 4, 0] = -1e4
    offset = raw.requires_grad_(True)
    torch.use_deterministic_algorithms(deterministic)
    for backend in ("cuda", "triton"):
        out = deformable_sample(value, offset, amplitude, residual, alpha, 4.0, backend=backend)
        out.sum().backward()
        if deterministic:
            break  # the Triton backend has no deterministic backward
    torch.use_deterministic_algorithms(False)

for dtype in (torch.float32, torch.bfloat16):
    for C, G in ((64, 2), (15, 3)):  # packed and scalar loads
        for det in (False, True):
            case(C, G, dtype, det)
torch.cuda.synchronize()
print("memcheck cases ran")
EOF
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool memcheck --error-exitcode 9 \
    --target-processes all "$PY" "$script"
  local rc=$?
  rm -f "$script"
  return $rc
}

bench() {
  # Leaves the benchmark time to print its table before the stage's timeout.
  "$PY" benchmarks/bench_deformable_sample_gpu.py --budget-s $(( STAGE_LIMIT - 30 )) \
    --out-dir "$RESULT_DIR"
}

export PY RESULT_DIR
export -f versions build tests sanitizer bench

stage versions 60 versions
stage build 240 build
if [ "${STATUS[build]}" = ok ]; then
  stage tests 200 tests
  stage sanitizer 120 sanitizer
  stage benchmark 300 bench
else
  echo "build failed: tests, sanitizer and benchmark not run"
  STATUS[tests]="not run (build failed)"; ORDER+=(tests)
fi

failed=0
echo
echo "=== gpu_check summary (${SECONDS}s of ${BUDGET_S}s budget)"
for name in "${ORDER[@]}"; do
  echo "  $name: ${STATUS[$name]}"
  case "$name:${STATUS[$name]}" in
    build:ok|tests:ok|sanitizer:ok|sanitizer:skipped*) ;;
    build:*|tests:*|sanitizer:*) failed=1 ;;
  esac
done
cp -f benchmarks/RESULTS.md "$RESULT_DIR/" 2>/dev/null
echo "  logs and results: $RESULT_DIR"
# The benchmark's table last, as the script promises.
if [ -f "$RESULT_DIR/bench_deformable_sample_gpu.md" ]; then
  echo
  grep -E '^(\||- )' "$RESULT_DIR/bench_deformable_sample_gpu.md"
else
  echo "(no benchmark table: the benchmark did not finish)"
fi
exit $failed
