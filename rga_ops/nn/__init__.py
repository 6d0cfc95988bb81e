"""Drop-in modules computed by rga_ops kernels, their folded forms for inference, and
`batch_norm_step` (what a BatchNorm module decides before it normalises, for code that
normalises with its parameters by other means)."""

from .batch_norm import batch_norm_step
from .fold import FoldedRGAModule, FoldedSoftAttention, fold_batch_norm, folded_weight_and_bias
from .ha import HarmoniousAttention, SoftAttention
from .rga import RGAModule

__all__ = ["FoldedRGAModule", "FoldedSoftAttention", "HarmoniousAttention", "RGAModule", "SoftAttention",
           "batch_norm_step", "fold_batch_norm", "folded_weight_and_bias"]
