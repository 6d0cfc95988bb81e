"""Inference: the networks folded for evaluation (every BatchNorm into the layer before it, the
library's RGA and HA modules into their folded forms), torch.export and ONNX export."""

from .export import export_for_inference, export_onnx
from .fold import fold_for_inference, is_folded

__all__ = ["export_for_inference", "export_onnx", "fold_for_inference", "is_folded"]
