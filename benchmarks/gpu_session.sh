#!/usr/bin/env bash
# The GPU validation plan: ONE run of at most 9 minutes on a machine with an NVIDIA H100/H200,
# from a cold start with nothing kept from an earlier run (the machine benchmarks/gpu_machine.env
# describes: its own torch and triton, no network).
#
#   bash benchmarks/gpu_session.sh [--dry-run] [OUT_DIR]
#
# Steps, in order of value, each under its own timeout (and none past the plan's deadline), the
# plan going on past a failed or timed-out step:
#   versions    nvidia-smi, pip show setuptools torch triton ..., nvcc, compute-sanitizer, and
#               whether they are the versions of benchmarks/gpu_machine.env (python -m benchmarks.gpu_machine)
#   build       pip install --no-build-isolation --no-deps -e . with the CUDA kernels (sm_90,
#               MAX_JOBS=16), then rga_ops.backends()
#   gpu-tests   pytest -m gpu (every test that runs on the GPU), in parallel (pytest-xdist)
#   memcheck    compute-sanitizer --tool memcheck  over python -m benchmarks.device_kernels
#   racecheck   compute-sanitizer --tool racecheck over the same small run
#   bench-ops   python -m benchmarks.run --part ops --no-compile --batch 64
#   bench-modules  python -m benchmarks.run --part modules --branches rgasc --no-compile --batch 64
#   bench-ha    python -m benchmarks.ha_soft_gate
# RGA_OPS_TRITON_AUTOTUNE=0 throughout: each Triton kernel runs its default configuration (no
# autotuning sweep, which would compile every configuration per shape).
#
# OUT_DIR (default $OUT, which the device tool brings back, else build/gpu_session/out) gets
# at most three files, rewritten after every step, so that a run killed at its limit still
# returns everything done so far: gpu_session.log (the whole log), summary.txt (one line per
# step: ok / failed / timed out / skipped, and its time) and results.tar.gz (each step's log,
# the test report, and the benchmark results the steps wrote: copy those into
# benchmarks/results/ and commit them as they are).
#
# --dry-run: the same script on a machine without a GPU, with the GPU-only steps (nvidia-smi,
# the CUDA build, the sanitizer) skipped and the benchmarks in their --quick form on the CPU,
# against the rga_ops already installed; tests/test_gpu_session.py runs it so that the plan
# itself cannot rot.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
OUT_DIR=$(mkdir -p "${1:-${OUT:-build/gpu_session/out}}" && cd "${1:-${OUT:-build/gpu_session/out}}" && pwd)
PY=${PYTHON:-python3}
DEADLINE_S=${GPU_SESSION_DEADLINE_S:-525}  # the whole plan, leaving the 9 minutes' last seconds for packing
. benchmarks/gpu_machine.env

WORK=$(mktemp -d)  # what results.tar.gz holds
mkdir -p "$WORK/results"
LOG="$OUT_DIR/gpu_session.log"
SUMMARY="$WORK/summary.txt"
: > "$LOG"
: > "$SUMMARY"
touch "$WORK/started"
START=$(date +%s)
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} RGA_OPS_TRITON_AUTOTUNE=0
if [ "$DRY_RUN" = 1 ]; then
  DEVICE=cpu
else
  DEVICE=cuda
  export RGA_OPS_CUDA=1 TORCH_CUDA_ARCH_LIST=$GPU_ARCH
fi

elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "== [$(elapsed) s] $*" | tee -a "$LOG"; }

# Everything so far into OUT_DIR: the benchmark results written since the start, the steps' logs.
pack() {
  find benchmarks/results -newer "$WORK/started" -type f -exec cp {} "$WORK/results/" \;
  cp "$SUMMARY" "$OUT_DIR/summary.txt"
  tar czf "$OUT_DIR/results.tar.gz.tmp" -C "$WORK" . && mv "$OUT_DIR/results.tar.gz.tmp" "$OUT_DIR/results.tar.gz"
}

# step NAME MAX_SECONDS GPU_ONLY COMMAND: runs COMMAND (a bash command line) under a timeout of
# MAX_SECONDS or the time left before the deadline, whichever is less.
step() {
  local name=$1 max=$2 gpu_only=$3 command=$4 left status rc began
  left=$(( DEADLINE_S - $(elapsed) ))
  if [ "$DRY_RUN" = 1 ] && [ "$gpu_only" = 1 ]; then
    status="skipped (GPU only)"
  elif [ "$left" -lt 10 ]; then
    status="skipped (deadline)"
  else
    [ "$max" -lt "$left" ] || max=$left
    say "$name (at most $max s): $command"
    began=$(date +%s)
    timeout --kill-after=5 "$max" bash -c "$command" 2>&1 | tee -a "$LOG" > "$WORK/$name.log"
    rc=${PIPESTATUS[0]}
    case $rc in
      0) status="ok" ;;
      124|137) status="timed out after $max s" ;;
      *) status="failed (exit status $rc)" ;;
    esac
    status="$status, $(( $(date +%s) - began )) s"
  fi
  printf '%-14s %s\n' "$name" "$status" | tee -a "$SUMMARY" "$LOG"
  pack
}

workers() { "$PY" -c "import xdist" 2>/dev/null && echo "-n ${PYTEST_WORKERS:-8}"; }
backend=$([ "$DRY_RUN" = 1 ] && echo cpp || echo cuda)
backends="$PY -c \"import rga_ops, sys; r = rga_ops.backends(); print(r); sys.exit(not r['$backend'].usable)\""
if [ "$DRY_RUN" = 1 ]; then
  build="echo 'dry run: the CUDA build is skipped; the rga_ops installed here:' && $backends"
  quick="--quick --device cpu"
  ops_args="--part ops $quick" modules_args="--part modules $quick" ha_args="--quick --device cpu"
else
  build="$PY -m pip install --no-build-isolation --no-deps -e . && $backends"
  ops_args="--part ops --no-compile --batch 64" modules_args="--part modules --branches rgasc --no-compile --batch 64"
  ha_args=""
fi
sanitizer="compute-sanitizer --error-exitcode 1 --print-limit 20"

say "plan: $([ "$DRY_RUN" = 1 ] && echo "dry run, " )deadline $DEADLINE_S s, output in $OUT_DIR"
step versions 30 0 "(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true); \
$PY -m pip show setuptools torch triton torchvision ninja pytest-xdist 2>/dev/null | grep -E '^(Name|Version):'; \
(nvcc --version | tail -2 || true); (compute-sanitizer --version | tail -1 || true); $PY -m benchmarks.gpu_machine"
step build 200 0 "$build"
step gpu-tests 150 0 "$PY -m pytest -m gpu -q -ra -p no:cacheprovider $(workers) --junitxml=$WORK/gpu-tests.xml"
step memcheck 45 1 "$sanitizer --tool memcheck $PY -m benchmarks.device_kernels --device $DEVICE"
step racecheck 45 1 "$sanitizer --tool racecheck $PY -m benchmarks.device_kernels --device $DEVICE"
step bench-ops 120 0 "$PY -m benchmarks.run $ops_args"
step bench-modules 75 0 "$PY -m benchmarks.run $modules_args"
step bench-ha 45 0 "$PY -m benchmarks.ha_soft_gate $ha_args"
say "done in $(elapsed) s"
cat "$SUMMARY"
pack
! grep -qv ' ok, \| skipped (GPU only)' "$SUMMARY"
