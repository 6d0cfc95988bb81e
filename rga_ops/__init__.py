"""rga_ops: fast, memory-lean relation-aware global attention (RGA) for PyTorch.

Operators (also as torch.ops.rga_ops.* when the extension is built):
    relation_stack(theta, phi)            [B, C', N] x2 -> [B, 2N, N]
    relation_project(theta, phi, weight)  [B, C', N] x2, [K, 2N] -> [B, K, N]
Modules: rga_ops.nn.RGAModule (drop-in for the official RGA_Module).
What can run here: print(rga_ops.backends()).
"""

from . import nn, reference
from .backends import BackendStatus, BackendUnavailableError, backends
from .ops import ha_soft_gate, relation_project, relation_stack
from .triton import load_kernels as _load_triton_kernels

_load_triton_kernels()  # registers rga_ops_triton::* where the triton backend is usable

__version__ = "0.1.0"

__all__ = [
    "BackendStatus",
    "BackendUnavailableError",
    "backends",
    "ha_soft_gate",
    "nn",
    "reference",
    "relation_project",
    "relation_stack",
]
