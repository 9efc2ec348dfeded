#!/usr/bin/env bash
# One-shot check of the CUDA and Triton backends on a fresh GPU machine without network:
#   bash scripts/gpu_check.sh            (from anywhere; runs in the repository root)
# Sized for one device lease (15 minutes, machine start included): the default budget
# (GPU_CHECK_BUDGET_S, 270 s) leaves room to start a second machine and rerun the failed stages,
# whose command the summary prints. Stages, most valuable first, each capped and skipped once the
# budget is spent:
#   versions   nvidia-smi, torch, triton, nvcc
#   build      the extension in place for the visible GPU's architecture (FORCE_CUDA=1)
#   gpu_tests  the CUDA and Triton test files alone, GPU parameters only, per-test timeout
#              (CPU and emulation tests are CI's)
#   sanitizer  compute-sanitizer memcheck of the NaN / huge-offset cases, after a probe: a device
#              the sanitizer refuses marks the stage skipped, not failed
#   bench      benchmarks/bench_deformable_sample_gpu.py, budget checked and table written per row
# GPU_CHECK_STAGES=build,gpu_tests runs a subset (a machine starts bare: build before the rest);
# GPU_CHECK_BENCH_COMPILE=0 drops the torch.compile rows. Without a visible CUDA device every
# stage that needs one is skipped with the reason (the CPU dry run CI makes of this script).
# Logs, junit XML and results go to $OUT when it is set (a temp dir otherwise).
# Exit status: 0 all selected stages ok (a refused sanitizer counts as ok), 1 a stage failed or
# timed out, 2 bad settings, 3 nothing failed but build or gpu_tests could not run (no GPU,
# budget spent).
set -u
cd "$(dirname "$0")/.."

ALL_STAGES=(versions build gpu_tests sanitizer bench)
# name:cap seconds. Caps sum past the budget on purpose: a fast build leaves tests and the
# benchmark more; the budget, not the caps, bounds the run.
declare -A CAP=([versions]=30 [build]=130 [gpu_tests]=140 [sanitizer]=90 [bench]=150)
BUDGET_S=${GPU_CHECK_BUDGET_S:-270}
STAGES=${GPU_CHECK_STAGES:-$(IFS=,; echo "${ALL_STAGES[*]}")}
TEST_TIMEOUT_S=${GPU_CHECK_TEST_TIMEOUT_S:-60}

usage_error() {
  echo "gpu_check: error: $*" >&2
  exit 2
}
[[ "$BUDGET_S" =~ ^[0-9]+$ ]] \
  || usage_error "GPU_CHECK_BUDGET_S must be whole seconds, got '$BUDGET_S'"
[[ "$TEST_TIMEOUT_S" =~ ^[0-9]+$ ]] \
  || usage_error "GPU_CHECK_TEST_TIMEOUT_S must be whole seconds, got '$TEST_TIMEOUT_S'"
declare -A SELECTED=()
IFS=, read -r -a _requested <<< "$STAGES"
for s in "${_requested[@]}"; do
  [ -z "$s" ] && continue
  [ -n "${CAP[$s]:-}" ] || usage_error \
    "unknown stage '$s' in GPU_CHECK_STAGES (stages: $(IFS=,; echo "${ALL_STAGES[*]}"))"
  SELECTED[$s]=1
done
[ "${#SELECTED[@]}" -gt 0 ] || usage_error "GPU_CHECK_STAGES selects no stage"

RESULT_DIR=${OUT:-$(mktemp -d /tmp/sso_gpu_check.XXXXXX)}
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
# Pure-Python test dependencies brought along for a machine without them (see gpu_tests()).
PYDEPS=${GPU_CHECK_PYDEPS:-.gpu_pydeps}
[ -d "$PYDEPS" ] && PYTHONPATH="$(cd "$PYDEPS" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1

# Whether torch sees a CUDA device, asked once: every stage but versions needs one.
NO_GPU_REASON=$(timeout 60 "$PY" -c "
import torch
if torch.version.cuda is None: print('torch', torch.__version__, 'is built without CUDA')
elif not torch.cuda.is_available(): print('no CUDA device visible to torch', torch.__version__)
" 2>&1)
_rc=$?
[ "$_rc" -ne 0 ] && NO_GPU_REASON="$PY cannot ask torch for a GPU: $(tail -1 <<< "$NO_GPU_REASON")"
NO_GPU_REASON=$(tail -1 <<< "$NO_GPU_REASON")

declare -A STATUS
ORDER=()
remaining() { echo $(( BUDGET_S - SECONDS )); }
# stage NAME: runs the function NAME in a child bash under timeout min(cap, time left). The
# function returns 200 to mark the stage skipped, with the reason as its last line in
# $STAGE_REASON_FILE.
stage() {
  local name=$1 needs_gpu=$2
  [ -n "${SELECTED[$name]:-}" ] || return 0
  ORDER+=("$name")
  if [ "$needs_gpu" = gpu ] && [ -n "$NO_GPU_REASON" ]; then
    STATUS[$name]="skipped ($NO_GPU_REASON)"
    echo "=== [$SECONDS s] $name: ${STATUS[$name]}"
    return 0
  fi
  if [ "$name" != build ] && [ -n "${SELECTED[build]:-}" ] && [ "${STATUS[build]:-}" != ok ] \
      && [ "$needs_gpu" = gpu ]; then
    STATUS[$name]="not run (build ${STATUS[build]:-not run})"
    echo "=== [$SECONDS s] $name: ${STATUS[$name]}"
    return 0
  fi
  local left limit
  left=$(remaining)
  limit=$(( CAP[$name] < left ? CAP[$name] : left ))
  if [ "$limit" -le 5 ]; then
    STATUS[$name]="skipped (budget of ${BUDGET_S}s spent)"
    echo "=== [$SECONDS s] $name: ${STATUS[$name]}"
    return 0
  fi
  echo "=== [$SECONDS s] $name (timeout ${limit}s)"
  export STAGE_REASON_FILE="$RESULT_DIR/.reason_$name"
  rm -f "$STAGE_REASON_FILE"
  STAGE_LIMIT=$limit timeout --kill-after=10 "$limit" bash -c "$name"
  local rc=$?
  case $rc in
    0) STATUS[$name]=ok ;;
    124|137) STATUS[$name]="TIMED OUT after ${limit}s" ;;
    200) STATUS[$name]="skipped ($(tail -1 "$STAGE_REASON_FILE" 2>/dev/null || echo 'no reason given'))" ;;
    *) STATUS[$name]="FAILED rc=$rc" ;;
  esac
  rm -f "$STAGE_REASON_FILE"
  echo "=== [$SECONDS s] $name: ${STATUS[$name]}"
}

skip_stage() {
  echo "$*" > "$STAGE_REASON_FILE"
  echo "skipping: $*"
  return 200
}

versions() {
  nvidia-smi || echo "nvidia-smi: not available"
  "$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
else:
    print("no CUDA device visible")
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton not importable:", exc)
EOF
  command -v nvcc >/dev/null && nvcc --version | tail -2
  [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ] && "$CUDA_HOME/bin/nvcc" --version | tail -2
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
  require_cuda_backend
}

require_cuda_backend() {
  "$PY" - <<'EOF'
import stable_sam_ops as s
from stable_sam_ops import _extension
print("backends:", s.available_backends(), "| compiled with CUDA:", _extension.compiled_with_cuda())
assert "cuda" in s.available_backends(), f"CUDA backend unavailable: {_extension.load_error()}"
EOF
}

# The GPU parameters of the CUDA and Triton test files: test_cuda_backend.py's cpu-backend
# variants (ids ending in "cpu]") are CI's.
GPU_TEST_FILES="tests/stable_sam_ops/test_cuda_backend.py tests/stable_sam_ops/test_triton_backend.py"
GPU_TEST_SELECTION="not cpu]"

gpu_tests() {
  if ! "$PY" -c "import pytest" 2>/dev/null; then
    echo "pytest is not installed for $PY. Without network: on a machine with pip, run"
    echo "  pip install --target .gpu_pydeps pytest pytest-timeout"
    echo "in the repository and bring .gpu_pydeps along (GPU_CHECK_PYDEPS names another folder)."
    return 1
  fi
  require_cuda_backend || return 1
  local extra=()
  # pyproject's addopts name pytest-benchmark's option; without the plugin, drop them.
  "$PY" -c "import pytest_benchmark" 2>/dev/null || extra+=(-o "addopts=-ra")
  if "$PY" -c "import pytest_timeout" 2>/dev/null; then
    extra+=(--timeout "$TEST_TIMEOUT_S")
  else
    echo "pytest-timeout missing: no per-test timeout, the stage's own limit still holds"
  fi
  # shellcheck disable=SC2086
  "$PY" -m pytest $GPU_TEST_FILES -k "$GPU_TEST_SELECTION" -q -rs -p no:cacheprovider \
    "${extra[@]}" --junitxml="$RESULT_DIR/pytest_gpu.xml"
}

find_sanitizer() {
  local cs
  cs=$(command -v compute-sanitizer || true)
  [ -z "$cs" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/compute-sanitizer" ] \
    && cs="$CUDA_HOME/bin/compute-sanitizer"
  echo "$cs"
}

# compute-sanitizer on a trivial program: "Device not supported" (seen under gVisor) or any
# failure there is the tool's, not the kernels'. A CUDA C++ program when nvcc is there (seconds),
# else a one-line torch program.
probe_sanitizer() {
  local cs=$1 dir nvcc out rc
  dir=$(mktemp -d /tmp/sso_sanitizer_probe.XXXXXX)
  nvcc=$(command -v nvcc || { [ -n "${CUDA_HOME:-}" ] && echo "$CUDA_HOME/bin/nvcc"; })
  local probe=("$PY" -c "import torch; (torch.ones(4, device='cuda') + 1).sum().item()")
  if [ -n "$nvcc" ] && [ -x "$nvcc" ]; then
    printf '%s\n' '__global__ void one(int* p) { *p = 1; }' \
      'int main() { int* p; if (cudaMalloc(&p, 4)) return 1; one<<<1, 1>>>(p);' \
      '  return cudaDeviceSynchronize() != cudaSuccess; }' > "$dir/probe.cu"
    "$nvcc" -o "$dir/probe" "$dir/probe.cu" > /dev/null 2>&1 && probe=("$dir/probe")
  fi
  out=$("$cs" --tool memcheck --error-exitcode 9 "${probe[@]}" 2>&1)
  rc=$?
  rm -rf "$dir"
  if [ "$rc" -ne 0 ] || grep -qiE "not supported|error 999|internal error" <<< "$out"; then
    echo "compute-sanitizer refused a trivial program (rc=$rc):" \
      "$(grep -iE 'not supported|error' <<< "$out" | head -1)"
    return 1
  fi
}

sanitizer() {
  local cs
  cs=$(find_sanitizer)
  [ -z "$cs" ] && { skip_stage "compute-sanitizer not installed"; return; }
  require_cuda_backend || return 1
  local dir reason
  if ! reason=$(probe_sanitizer "$cs"); then
    skip_stage "$reason"
    return
  fi
  dir=$(mktemp -d /tmp/sso_memcheck.XXXXXX)
  cat > "$dir/cases.py" <<'EOF'
# NaN, infinite and huge offsets, both load paths, both backward paths of the CUDA kernels; the
# Triton kernels for float32 only (each Triton compile costs seconds under memcheck).
import torch
from stable_sam_ops import deformable_sample

def case(C, G, dtype, deterministic, backends):
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
    for backend in backends:
        out = deformable_sample(value, offset, amplitude, residual, alpha, 4.0, backend=backend)
        out.sum().backward()
    torch.use_deterministic_algorithms(False)

for dtype in (torch.float32, torch.bfloat16):
    for C, G in ((64, 2), (15, 3)):  # packed and scalar loads
        for det in (False, True):
            # The Triton backend has no deterministic backward.
            triton = dtype == torch.float32 and C == 64 and not det
            case(C, G, dtype, det, ("cuda", "triton") if triton else ("cuda",))
torch.cuda.synchronize()
print("memcheck cases ran")
EOF
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool memcheck --error-exitcode 9 \
    --target-processes all "$PY" "$dir/cases.py"
  local rc=$?
  rm -rf "$dir"
  return $rc
}

bench() {
  require_cuda_backend || return 1
  local extra=()
  [ "${GPU_CHECK_BENCH_COMPILE:-1}" = 0 ] && extra+=(--compile-batches)
  # The benchmark stops starting rows at its budget and writes its table after every row; the
  # margin covers the last row in flight.
  "$PY" benchmarks/bench_deformable_sample_gpu.py --budget-s $(( STAGE_LIMIT - 25 )) \
    --out-dir "$RESULT_DIR" "${extra[@]}"
}

export PY RESULT_DIR TEST_TIMEOUT_S GPU_TEST_FILES GPU_TEST_SELECTION
export -f versions build require_cuda_backend gpu_tests find_sanitizer probe_sanitizer \
  sanitizer bench skip_stage

echo "gpu_check: stages ${STAGES}, budget ${BUDGET_S}s, results in $RESULT_DIR"
[ -n "$NO_GPU_REASON" ] && echo "gpu_check: $NO_GPU_REASON: the stages that need a GPU are skipped"
stage versions cpu
stage build gpu
stage gpu_tests gpu
stage sanitizer gpu
stage bench gpu

failed=0
incomplete=0
rerun=()
echo
echo "=== gpu_check summary (${SECONDS}s of ${BUDGET_S}s budget)"
for name in "${ORDER[@]}"; do
  echo "  $name: ${STATUS[$name]}"
  case "$name:${STATUS[$name]}" in
    *:ok|sanitizer:skipped*|versions:*) ;;
    build:skipped*|gpu_tests:skipped*|*:"not run"*) incomplete=1; rerun+=("$name") ;;
    bench:skipped*) rerun+=("$name") ;;
    *) failed=1; rerun+=("$name") ;;
  esac
done
echo "  logs and results: $RESULT_DIR"
if [ "${#rerun[@]}" -gt 0 ] && [ -z "$NO_GPU_REASON" ]; then
  # A rerun lands on a fresh machine: it builds again first.
  [ "${rerun[0]}" = build ] || rerun=(build "${rerun[@]}")
  echo "  rerun what did not pass: GPU_CHECK_STAGES=$(IFS=,; echo "${rerun[*]}") bash scripts/gpu_check.sh"
fi
# The benchmark's table last: the most recent row-by-row copy if the stage was cut short.
if [ -f "$RESULT_DIR/bench_deformable_sample_gpu.md" ]; then
  echo
  grep -E '^(\||- |Notes)' "$RESULT_DIR/bench_deformable_sample_gpu.md"
else
  echo "(no benchmark table: the benchmark did not run a row)"
fi
[ "$failed" -eq 1 ] && exit 1
[ "$incomplete" -eq 1 ] && exit 3
exit 0
