"""rga_ops: fast, memory-lean relation-aware global attention (RGA) and harmonious attention (HA)
for PyTorch.

Operators (also as torch.ops.rga_ops.* when the extension is built), each with backend=:
    relation_stack(theta, phi)            [B, C', N] x2 -> [B, 2N, N]
    relation_project(theta, phi, weight)  [B, C', N] x2, [K, 2N] -> [B, K, N]
    ha_soft_gate(x, s, c, ...)            HA's soft-attention gate, [B, C, H, W]
    batch_norm_relu_conv1x1(x, ...)       [B, K, N] -> [B, H, N], keeping only x for backward
Modules: rga_ops.nn.RGAModule (drop-in for the official RGA_Module), SoftAttention and
HarmoniousAttention (torchreid's SoftAttn and HarmAttn). References: rga_ops.reference.
What can run here: print(rga_ops.backends()).
"""

from . import nn, reference, triton  # triton: registers rga_ops_triton::* where that backend is usable
from .backends import BackendStatus, BackendUnavailableError, backends
from .ops import batch_norm_relu_conv1x1, ha_soft_gate, relation_project, relation_stack

__version__ = "0.1.0"

__all__ = [
    "BackendStatus",
    "BackendUnavailableError",
    "backends",
    "batch_norm_relu_conv1x1",
    "ha_soft_gate",
    "nn",
    "reference",
    "relation_project",
    "relation_stack",
    "triton",
]
