"""Pure-PyTorch references that mirror the original implementations' computation.

They are the oracle every fast path is tested against: they materialise what the
originals materialise (the N x N relation matrix and its stacked copy)."""

from .rga import ReferenceRGAModule
from .relation import relation_project, relation_stack

__all__ = ["ReferenceRGAModule", "relation_project", "relation_stack"]
