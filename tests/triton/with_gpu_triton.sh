#!/usr/bin/env bash
# Runs a command with the GPU machine's triton (GPU_TRITON in benchmarks/gpu_machine.env) beside a
# CPU build of torch (CHECK_TORCH), in a virtual environment of its own under build/ (made once,
# about a minute; pip downloads triton), e.g.
#   bash tests/triton/with_gpu_triton.sh python -m tests.triton.compile_for_gpu --all-configs
# so that kernels which compile with a newer triton but not with the GPU machine's fail here.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benchmarks/gpu_machine.env
venv="build/venv-triton-$GPU_TRITON"
probe="import torch, triton; assert triton.__version__ == '$GPU_TRITON', triton.__version__"
if ! "$venv/bin/python" -c "$probe" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q "torch==$CHECK_TORCH" "triton==$GPU_TRITON" numpy
  "$venv/bin/python" -c "$probe"
fi
PATH="$PWD/$venv/bin:$PATH" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$@"
