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


def autotuned(configs: list[triton.Config], pinned: triton.Config, key: list[str]) -> Callable:
    """@triton.autotune over `configs` (keyed on the argument names `key`) on a GPU; in the
    interpreter only the `pinned` configuration (a single configuration is never benchmarked)."""
    return triton.autotune(configs=[pinned] if STATUS.interpreted else configs, key=key)


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: TF32 for float32 only where torch's own matmuls may use it
    (torch.set_float32_matmul_precision), else exact products ("ieee"; the only choice that
    matters for float32: half and bfloat16 products are exact in float32 anyway)."""
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
