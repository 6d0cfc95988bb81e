"""How a Triton launch becomes a PyTorch operator, and the launch settings shared by
the kernels.

Each op's launch is written once and registered per environment:
- on a GPU with `torch.library.triton_op` (+ `wrap_triton` around every kernel), so
  that torch.compile sees the kernels inside the op; the launch itself serves as the
  fake kernel (it only allocates and launches, and wrap_triton launches nothing on
  fake tensors);
- in triton's interpreter with `torch.library.custom_op` + `register_fake`: there
  wrap_triton hands back the bare interpreted kernel, which would dereference fake
  tensors, so opcheck's fake-tensor tests and torch.compile need the opaque op
  with a separate fake kernel.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import torch
import triton

from . import STATUS


def define(
    qualname: str, schema: str, launch: Callable, fake: Callable, *, use_triton_op: bool
) -> torch._ops.OpOverload:
    """The operator `qualname` ("namespace::name") running `launch`; returns its overload."""
    if use_triton_op:
        torch.library.triton_op(qualname, launch, mutates_args=(), schema=schema)
    else:
        op = torch.library.custom_op(qualname, launch, mutates_args=(), schema=schema)
        op.register_fake(fake)
    namespace, name = qualname.split("::")
    return getattr(getattr(torch.ops, namespace), name).default


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


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation and intermediate dtype: float64 stays float64, everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_device(op: str, t: torch.Tensor) -> None:
    torch._check_value(
        t.device.type in STATUS.devices,
        lambda: f"{op}: the triton backend runs on {' and '.join(STATUS.devices) or 'no'} tensors here "
        f"({STATUS.reason}), got a tensor on {t.device}",
    )


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
