"""The launch settings and helpers shared by the Triton kernels: autotuning (or the pinned
configuration of the interpreter), the dot precision, 64-bit-safe grids, the launch device.
How the launches become operators is the op table's (rga_ops/_registry.py, `define`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import torch
import triton

from .._checks import check_backend_device
from .._triton_probe import STATUS


# RGA_OPS_TRITON_AUTOTUNE=0: every kernel runs its first (default) configuration, with no autotuning
# sweep, which compiles each configuration once per shape key; for short runs such as the GPU
# validation plan (benchmarks/gpu_session.sh). Read when rga_ops is imported.
AUTOTUNE = os.environ.get("RGA_OPS_TRITON_AUTOTUNE", "1") != "0"


class Tuned:
    """A jitted kernel as launched per dtype: on a GPU autotuned over `configs` (keyed on the
    argument names `key`; only the first of them where AUTOTUNE is off); for float64 data (a
    correctness path, for gradcheck, whose tiles would take twice the shared memory) and in the
    interpreter with the small `pinned` configuration only, which is never benchmarked."""

    def __init__(self, kernel, configs: list[triton.Config], pinned: triton.Config, key: list[str]) -> None:
        self._pinned = triton.autotune(configs=[pinned], key=key)(kernel)
        self._tuned = self._pinned if STATUS.interpreted else triton.autotune(
            configs=configs if AUTOTUNE else configs[:1], key=key)(kernel)

    def for_dtype(self, dtype: torch.dtype):
        """The autotuner to launch for data of `dtype`."""
        return self._pinned if dtype == torch.float64 else self._tuned


def tile_configs(names: tuple[str, ...], tiles) -> list[triton.Config]:
    """A triton.Config per (block sizes named `names`..., num_warps, num_stages) in `tiles`."""
    return [triton.Config(dict(zip(names, t[:-2])), num_warps=t[-2], num_stages=t[-1]) for t in tiles]


def autotuned(configs: list[triton.Config], pinned: triton.Config, key: list[str]) -> Callable:
    """Decorator: the jitted kernel below as a Tuned kernel."""
    return lambda kernel: Tuned(kernel, configs, pinned, key)


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision for float32 data: TF32 only where torch's own float32 matmuls may
    use it (torch.get_float32_matmul_precision() is not "highest"), else exact float32 products
    ("ieee"). It has no effect on half and bfloat16 data."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest" and not STATUS.interpreted:
        return "tf32"
    return "ieee"


def check_device(op: str, t: torch.Tensor) -> None:
    check_backend_device(op, t, "triton", STATUS.devices, STATUS.reason)


# CUDA grids hold at most 65535 programs along y and z: the kernels launch at most that many
# there (batch items in z, the HA gate's position blocks in y) and each program strides over the rest.
MAX_GRID_YZ = 65535


def grid_yz(programs: int) -> int:
    """The programs to launch along grid y or z for `programs` units of work."""
    return min(programs, MAX_GRID_YZ)


def on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Makes t's GPU the current device around a launch: triton launches on the current device
    and its current stream, which need not be the tensor's."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
