"""Inference: the networks folded for evaluation (every BatchNorm into the layer before it, the
library's RGA and HA modules into their folded forms), torch.export and ONNX export, loading any checkpoint (ours, the official RGA code's, torchreid's
HA-CNN), feature extraction."""

from .export import export_for_inference, export_onnx
from .extract import FeatureExtractor, image_files
from .fold import fold_for_inference, is_folded
from .loading import CheckpointError, LoadedModel, load_model

__all__ = ["CheckpointError", "FeatureExtractor", "LoadedModel", "export_for_inference", "export_onnx",
           "fold_for_inference", "image_files", "is_folded", "load_model"]
