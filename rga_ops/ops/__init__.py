"""The Python face of every rga_ops operator: a wrapper that checks its inputs and dispatches to
the backend's implementation (`_IMPLEMENTATIONS` in each module). The operators' schemas, fake
kernels and autograd are rga_ops/_registry.py's, registered here for the compiled library."""

from .._extension import STATUS as _EXTENSION
from .._registry import register_compiled_library
from .batch_norm_relu_conv1x1 import batch_norm_relu_conv1x1
from .ha_soft_gate import ha_soft_gate
from .relation_project import relation_project
from .relation_stack import relation_stack

if _EXTENSION.loaded:
    register_compiled_library()

__all__ = ["batch_norm_relu_conv1x1", "ha_soft_gate", "relation_project", "relation_stack"]
