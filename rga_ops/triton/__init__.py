"""The `triton` backend: Triton kernels of the rga_ops operators, one module per op, registered
as `rga_ops_triton::*` operators (schemas, fake kernels and autograd from the op table,
rga_ops/_registry.py) when this package is imported, where the backend is usable
(rga_ops._triton_probe.STATUS says where: on CUDA tensors, or on CPU tensors in triton's
interpreter)."""

from __future__ import annotations

import importlib

from .._triton_probe import STATUS

OPS_NAMESPACE = "rga_ops_triton"
# The kernel modules, one per op: each has register(namespace, use_triton_op).
KERNEL_MODULES = ("relation_stack", "relation_project", "ha_soft_gate")


def kernel_modules() -> list:
    """The kernel modules (importing them needs triton, not a GPU)."""
    return [importlib.import_module(f"{__name__}.{name}") for name in KERNEL_MODULES]


def register(namespace: str, use_triton_op: bool) -> None:
    """Defines namespace::<op> and namespace::<op>_backward for every kernel module."""
    for module in kernel_modules():
        module.register(namespace, use_triton_op=use_triton_op)


if STATUS.usable:
    register(OPS_NAMESPACE, use_triton_op=not STATUS.interpreted)
