"""The Python face of every rga_ops operator: wrapper with backend dispatch, fake
kernel and autograd registration."""

from .ha_soft_gate import ha_soft_gate
from .relation_project import relation_project
from .relation_stack import relation_stack

__all__ = ["ha_soft_gate", "relation_project", "relation_stack"]
