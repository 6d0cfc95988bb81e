"""Drop-in modules computed by rga_ops kernels."""

from .ha import HarmoniousAttention, SoftAttention
from .rga import RGAModule

__all__ = ["HarmoniousAttention", "RGAModule", "SoftAttention"]
