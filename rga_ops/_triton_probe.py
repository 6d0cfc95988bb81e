"""Whether the `triton` backend can run here, and where: triton imports, and either a GPU is
visible or triton's interpreter was chosen (TRITON_INTERPRET=1 before rga_ops was imported: the
kernels are decorated at import, and triton decides there whether they compile or are
interpreted). Imports triton, never the kernels (rga_ops.triton), so that the backend table can
report the backend without loading them."""

from __future__ import annotations

import dataclasses

import torch


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
