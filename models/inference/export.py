"""Export of the inference networks: `torch.export` (any backend; our compiled kernels
appear as `rga_ops::` operators in the graph) and ONNX through the torch exporter
(computed with the "torch" backend, plain PyTorch operators only)."""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from ..networks.backend import set_backend
from .fold import fold_for_inference, is_folded


def _folded(model: nn.Module) -> nn.Module:
    return model if is_folded(model) else fold_for_inference(model)


def _dynamic_batch(dynamic_batch: bool):
    return ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None


def export_for_inference(model: nn.Module, example: torch.Tensor,
                         dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """`torch.export.export` of the folded model (fold_for_inference, unless `model` is folded
    already) on `example` [B, 3, H, W], with a dynamic batch size unless `dynamic_batch` is
    False. `.module()` of the result runs it; the rga_ops modules keep their backend."""
    return torch.export.export(_folded(model), (example,), dynamic_shapes=_dynamic_batch(dynamic_batch))


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike,
                dynamic_batch: bool = True) -> torch.onnx.ONNXProgram:
    """Writes the folded model as ONNX to `path` with the torch exporter (`dynamo=True`),
    computed with the "torch" backend (`model` itself is not changed). The input is named
    "images"; the outputs "feat_", "feat" for RGANet, "features" for HACNN. Needs the
    packages onnx and onnxscript."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(f"export_onnx needs onnx and onnxscript (pip install onnx onnxscript): {error}") from None
    folded = copy.deepcopy(_folded(model))
    set_backend(folded, "torch")
    with torch.no_grad():
        outputs = folded(example)
    names = ["feat_", "feat"] if isinstance(outputs, tuple) and len(outputs) == 2 else ["features"]
    return torch.onnx.export(folded, (example,), os.fspath(path), dynamo=True, input_names=["images"],
                             output_names=names, dynamic_shapes=_dynamic_batch(dynamic_batch), verbose=False)
