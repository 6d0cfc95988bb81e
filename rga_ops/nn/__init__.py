"""Drop-in modules computed by rga_ops kernels."""

from .rga import RGAModule

__all__ = ["RGAModule"]
