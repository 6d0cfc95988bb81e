"""Inference fast path: `fold_for_inference(model)` folds every BatchNorm that follows a
conv or linear layer into it, and the library's RGA and HA modules into their folded forms
(rga_ops.nn.FoldedRGAModule, FoldedSoftAttention: each RGA branch's three embeddings as one
conv, HA's soft gate with its conv folded). The result computes what the eval-mode model
computes, to rounding."""

from __future__ import annotations

import copy

from torch import nn
from torchvision.models.resnet import Bottleneck

from rga_ops.nn import (
    FoldedRGAModule,
    FoldedSoftAttention,
    RGAModule,
    SoftAttention,
    fold_batch_norm,
)
from rga_ops.reference import ConvBlock

from ..networks.resnet import ResNet50

_BatchNorm = nn.modules.batchnorm._BatchNorm


# Modules whose forward applies child `bn<k>` right after child `conv<k>`.
_CONV_BN_NAMES = {Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
                  ResNet50: (("conv1", "bn1"),), ConvBlock: (("conv", "bn"),)}


def _fold_children(module: nn.Module) -> int:
    """Folds below `module`, in place; returns the number of BatchNorms folded."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, RGAModule):
            setattr(module, name, FoldedRGAModule(child))
            count += sum(isinstance(m, _BatchNorm) for m in child.modules())
            continue
        if isinstance(child, SoftAttention):
            child = FoldedSoftAttention(child)
            setattr(module, name, child)
            count += 1
        count += _fold_children(child)
    pairs = next((names for kind, names in _CONV_BN_NAMES.items() if isinstance(module, kind)), ())
    for layer_name, bn_name in pairs:
        setattr(module, layer_name, fold_batch_norm(getattr(module, layer_name), getattr(module, bn_name)))
        setattr(module, bn_name, nn.Identity())
        count += 1
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            layer, bn = module[i], module[i + 1]
            if isinstance(layer, (nn.Conv2d, nn.Linear)) and isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module[i], module[i + 1] = fold_batch_norm(layer, bn), nn.Identity()
                count += 1
    return count


def _refuse_training(module: nn.Module, args) -> None:
    if module.training:
        raise RuntimeError(f"{type(module).__name__} was folded for inference (fold_for_inference) and "
                           "cannot run in training mode; fold a copy of the trained model instead")


def is_folded(model: nn.Module) -> bool:
    """Whether `model` was made by fold_for_inference."""
    return isinstance(getattr(model, "num_folded_batch_norms", None), int)


def fold_for_inference(model: nn.Module) -> nn.Module:
    """A copy of `model` for evaluation with its BatchNorms folded into the preceding conv or
    linear layers and each RGA branch's three embeddings as one conv; the same outputs as
    `model.eval()` (to rounding). `model` itself is not changed.

    Folds the models of this package (RGANet, HACNN, ResNet50) and any module built from
    RGAModule, SoftAttention / HarmoniousAttention, torchvision Bottlenecks, ConvBlocks and
    Sequential conv/linear + BatchNorm pairs. A BatchNorm with no layer before it (RGANet's
    `feat_bn`, whose input is the returned `feat_`) stays. The copy refuses training mode;
    its `num_folded_batch_norms` says how many BatchNorms were folded."""
    folded = copy.deepcopy(model).eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    count = _fold_children(folded)
    folded.num_folded_batch_norms = count
    folded.register_forward_pre_hook(_refuse_training)
    return folded
