"""The `triton` backend: Triton kernels of the rga_ops operators, registered as
`rga_ops_triton::*` operators.

Where they run: on CUDA tensors when triton imports and a GPU is visible; on CPU
tensors only in Triton's interpreter, i.e. when TRITON_INTERPRET=1 was set before
rga_ops was imported (the kernels are decorated at import, and triton decides
there whether they compile or are interpreted). `STATUS` says which, and why not;
`rga_ops.backends()` reports it.

The operators are registered by `load_kernels()`, which `import rga_ops` runs once
the rest of the package exists (the kernels' wrappers reuse rga_ops.ops' input
checks), and only where the backend is usable."""

from __future__ import annotations

import dataclasses

import torch

OPS_NAMESPACE = "rga_ops_triton"


@dataclasses.dataclass(frozen=True)
class TritonStatus:
    usable: bool
    devices: tuple[str, ...]
    reason: str
    interpreted: bool = False


def _status() -> TritonStatus:
    try:
        import triton
        import triton.language  # noqa: F401
    except ImportError as e:
        return TritonStatus(False, (), f"triton does not import ({e}); `pip install triton`")
    if triton.knobs.runtime.interpret:
        return TritonStatus(
            True, ("cpu",),
            f"triton {triton.__version__} in its interpreter (TRITON_INTERPRET=1): CPU tensors only, for testing",
            interpreted=True,
        )
    if torch.cuda.is_available():
        # (not naming the GPU: that would initialise CUDA at import)
        return TritonStatus(True, ("cuda",), f"triton {triton.__version__}, kernels compiled for the visible GPU")
    return TritonStatus(
        False, (),
        f"triton {triton.__version__} imports but no GPU is visible; on the CPU the Triton kernels run only in "
        "triton's interpreter, with TRITON_INTERPRET=1 set before rga_ops is imported (for testing)",
    )


STATUS = _status()
_loaded = False


def load_kernels() -> None:
    """Registers the rga_ops_triton::* operators (where the backend is usable); idempotent."""
    global _loaded
    if STATUS.usable and not _loaded:
        from . import ha_soft_gate, relation_project, relation_stack

        for module in (relation_stack, relation_project, ha_soft_gate):
            module.register(OPS_NAMESPACE, use_triton_op=not STATUS.interpreted)
        _loaded = True
