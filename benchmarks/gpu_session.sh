#!/usr/bin/env bash
# The GPU work of a session that is lent a machine with an NVIDIA H100/H200 (the `device` tool,
# /work/.library/device): build the CUDA kernels there, test them, benchmark them.
#
#   bash benchmarks/gpu_session.sh [STEP ...]      (no STEP: the first five, in this order)
#     build              compile rga_ops with its CUDA kernels (sm_90) against the machine's own
#                        torch: pip install --no-build-isolation -e . (needs no network)
#     test-cuda          the tests that run on the GPU (pytest -k cuda: the CUDA-only tests and
#                        the cuda-parametrised ones, but not tests/cuda_emulation/, which runs the
#                        CUDA kernels on the CPU), in several workers if pytest-xdist is there
#     bench-ops          python -m benchmarks.run --part ops (the relation ops, batch 64)
#     bench-ha           python -m benchmarks.ha_soft_gate
#     bench-modules      python -m benchmarks.run --part modules --branches rgasc (batch 64)
#     test               the whole test suite, CPU tests included
#     bench-modules-all  python -m benchmarks.run --part modules (all three branches)
#     bench-models       python -m benchmarks.models (networks' training steps and inference, batch 64)
#     bench-memory       python -m benchmarks.memory_scaling (memory against input size; budget: the GPU's memory)
#
# One call of the device tool runs at most 10 minutes, and a session has 30 minutes of device
# time: spread the steps over calls (`build test-cuda`, then `bench-ops bench-ha`, then
# `bench-modules`). A warm machine keeps the build between calls; a step builds first when
# rga_ops cannot use its CUDA kernels yet. The log (gpu_session.log) and the results the steps
# wrote (benchmarks/results/*.json, *.md) end up in $OUT when it is set, which the device tool
# brings back (else in build/gpu_session/): copy the results into benchmarks/results/ and
# commit them as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-build/gpu_session}
LOG="$OUT_DIR/gpu_session.log"
START=build/gpu_session.start
mkdir -p "$OUT_DIR" build
touch "$START"
export PYTHONUNBUFFERED=1 RGA_OPS_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16}
[ $# -gt 0 ] || set -- build test-cuda bench-ops bench-ha bench-modules

say() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
run() { say "$*"; "$@" 2>&1 | tee -a "$LOG"; }
keep_results() {  # also when a step fails: what was written so far comes back
  if [ "$OUT_DIR" != "build/gpu_session" ]; then
    find benchmarks/results -newer "$START" -type f \( -name '*.json' -o -name '*.md' -o -name '*.png' \) \
      -exec cp {} "$OUT_DIR/" \;
  fi
}
trap keep_results EXIT
backends() { run "$PY" -c "import rga_ops; print(rga_ops.backends())"; }
cuda_usable() { "$PY" -c "import rga_ops, sys; sys.exit(not rga_ops.backends()['cuda'].usable)" 2>/dev/null; }
build() {
  run "$PY" -m pip install --no-build-isolation --no-deps -e .
  backends
  cuda_usable || { say "the cuda backend is not usable after the build"; exit 1; }
}
ensure_built() { cuda_usable || build; }
workers() { "$PY" -c "import xdist" 2>/dev/null && echo "-n ${PYTEST_WORKERS:-6}" || true; }

say "steps: $*"
run nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
run "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
for step in "$@"; do
  case "$step" in
    build) build ;;
    test-cuda) ensure_built; run "$PY" -m pytest -q -ra -k "cuda and not cuda_emulation" $(workers) ;;
    test) ensure_built; run "$PY" -m pytest -q -ra $(workers) ;;
    bench-ops) ensure_built; run "$PY" -m benchmarks.run --part ops ;;
    bench-ha) ensure_built; run "$PY" -m benchmarks.ha_soft_gate ;;
    bench-modules) ensure_built; run "$PY" -m benchmarks.run --part modules --branches rgasc ;;
    bench-modules-all) ensure_built; run "$PY" -m benchmarks.run --part modules ;;
    bench-models) ensure_built; run "$PY" -m benchmarks.models ;;
    bench-memory) ensure_built; run "$PY" -m benchmarks.memory_scaling ;;
    *) say "unknown step $step"; exit 2 ;;
  esac
done
say "done: $*"
