"""Pure-PyTorch references that mirror the original implementations' computation.

They are the oracle every fast path is tested against: they materialise what the
originals materialise (the N x N relation matrix and its stacked copy).

Modules: ReferenceRGAModule (the official RGA_Module) and torchreid's HA blocks. Operators, one
per rga_ops operator: relation_stack, relation_project, ha_soft_gate (from s and c),
batch_norm_relu_conv1x1; and soft_gate, the closed-form gate the gate kernels compute."""

from .gates import batch_norm_relu_conv1x1, ha_soft_gate, soft_gate
from .ha import ChannelAttn, ConvBlock, HardAttn, HarmAttn, SoftAttn, SpatialAttn
from .rga import ReferenceRGAModule
from .relation import relation_project, relation_stack

__all__ = [
    "ChannelAttn", "ConvBlock", "HardAttn", "HarmAttn", "ReferenceRGAModule", "SoftAttn", "SpatialAttn",
    "batch_norm_relu_conv1x1", "ha_soft_gate", "relation_project", "relation_stack", "soft_gate",
]
