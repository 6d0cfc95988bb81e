"""Model factory: the networks of models/ by name, with their input size and objective."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from rga_ops.nn import RGAModule

from .objectives import BNNeckObjective, HACNNObjective

RGANET_BRANCHES = {"rganet": "rgasc", "rganet-s": "rgas", "rganet-c": "rgac"}
MODEL_NAMES = (*RGANET_BRANCHES, "hacnn")
# sigmoid(3) = 0.95: attention gates that start almost open (see open_attention_gates).
OPEN_GATE_BIAS = 3.0


@dataclass(frozen=True)
class BuiltModel:
    model: nn.Module
    objective: BNNeckObjective | HACNNObjective
    height: int
    width: int


def default_size(name: str) -> tuple[int, int]:
    """The input (height, width) a model is usually trained at."""
    _check_name(name)
    return (160, 64) if name == "hacnn" else (256, 128)


def build_model(
    name: str,
    num_classes: int,
    height: int | None = None,
    width: int | None = None,
    backend: str = "auto",
    *,
    scale: int = 8,
    d_scale: int = 8,
    dropout: float = 0.0,
    triplet: bool = True,
    label_smoothing: float = 0.1,
    margin: float = 0.3,
    triplet_weight: float = 1.0,
    identity_start: bool = False,
    pretrained: str | None = None,
) -> BuiltModel:
    """`name`: "rganet" (RGA-SC), "rganet-s", "rganet-c" or "hacnn".

    RGA-Net takes any height and width divisible by 16 (`scale`, `d_scale` as in
    the official code; small inputs need a smaller `d_scale`); HA-CNN only 160x64.
    `triplet`: train HA-CNN with the triplet term too (RGA-Net always has it unless
    `triplet_weight` is 0). `identity_start`: RGA-Net starts close to the identity
    (`zero_init_residual` and `open_attention_gates`), for training from scratch.
    `pretrained`: path of a local torchvision ResNet-50 ImageNet state_dict file for
    RGA-Net's trunk (HA-CNN has no ImageNet start: it is trained from scratch).
    """
    _check_name(name)
    default_height, default_width = default_size(name)
    height, width = height or default_height, width or default_width
    if name == "hacnn":
        if (height, width) != (160, 64):
            raise ValueError(f"hacnn takes 160x64 inputs only, got {height}x{width}")
        if pretrained is not None:
            raise ValueError("hacnn is trained from scratch (it has no ResNet-50 trunk); pretrained weights "
                             "apply to the rganet models only")
        from ..networks.hacnn import HACNN

        model = HACNN(num_classes, loss="triplet" if triplet else "softmax", backend=backend)
        objective = HACNNObjective(label_smoothing, margin, triplet_weight=triplet_weight if triplet else 0.0)
        return BuiltModel(model, objective, height, width)
    if height % 16 or width % 16:
        raise ValueError(f"{name} needs a height and width divisible by 16, got {height}x{width}")
    from ..networks.rganet import RGANet

    model = RGANet(num_classes, branch_name=RGANET_BRANCHES[name], height=height, width=width, scale=scale,
                   d_scale=d_scale, dropout=dropout, backend=backend, pretrained=pretrained)
    if identity_start:
        zero_init_residual(model)
        open_attention_gates(model)
    return BuiltModel(model, BNNeckObjective(label_smoothing, margin, triplet_weight=triplet_weight), height, width)


def zero_init_residual(model: nn.Module) -> int:
    """Zero the last BatchNorm weight of every torchvision residual block in `model`; returns how many.

    Each block then starts as the identity (Goyal et al., 2017, torchvision's `zero_init_residual`),
    which is what lets a ResNet-50 trained from scratch make progress within a few hundred steps.
    """
    count = 0
    for module in model.modules():
        last = module.bn3 if isinstance(module, Bottleneck) else module.bn2 if isinstance(module, BasicBlock) else None
        if last is not None:
            nn.init.zeros_(last.weight)
            count += 1
    return count


def open_attention_gates(model: nn.Module, bias: float = OPEN_GATE_BIAS) -> int:
    """Set the bias of the last BatchNorm of every RGA attention head (W_spatial, W_channel) to `bias`.

    Returns how many heads were set.

    The heads end in BatchNorm(1) followed by a sigmoid, so a fresh RGA module multiplies
    every position (or channel) by sigmoid(N(0, 1)): random gates between ~0.3 and ~0.7 that
    scramble the features of an untrained trunk at four stages. With `bias` 3 they start near
    sigmoid(3) = 0.95 and the module near the identity; training moves the bias as it needs.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, RGAModule):
            for head in (getattr(module, "W_spatial", None), getattr(module, "W_channel", None)):
                if head is not None:
                    nn.init.constant_(head[-1].bias, bias)
                    count += 1
    return count


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
