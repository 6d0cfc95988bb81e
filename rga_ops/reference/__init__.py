"""Pure-PyTorch references that mirror the original implementations' computation.

They are the oracle every fast path is tested against: they materialise what the
originals materialise (the N x N relation matrix and its stacked copy)."""

from .ha import ChannelAttn, ConvBlock, HardAttn, HarmAttn, SoftAttn, SpatialAttn
from .rga import ReferenceRGAModule
from .relation import relation_project, relation_stack

__all__ = [
    "ChannelAttn", "ConvBlock", "HardAttn", "HarmAttn", "ReferenceRGAModule", "SoftAttn", "SpatialAttn",
    "relation_project", "relation_stack",
]
