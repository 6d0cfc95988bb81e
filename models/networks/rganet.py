"""RGA-Net: ResNet-50 with an RGA module after each stage and a BNNeck head
(docs/compatibility.md), state_dict-compatible with the authors' ResNet50_RGA_Model."""

from __future__ import annotations

import os

import torch
from torch import nn

from rga_ops.backends import check_backend_name
from rga_ops.nn import RGAModule

from .backend import OneBackend
from .resnet import ResNet50

# branch_name -> (use_spatial, use_channel); "baseline" is the same network without RGA.
BRANCHES = {"rgasc": (True, True), "rgas": (True, False), "rgac": (False, True), "baseline": None}
# Per stage: (channels, downsampling of the input) with last stride 1.
STAGES = ((256, 4), (512, 8), (1024, 16), (2048, 16))
FEATURE_DIM = 2048


class RGABackbone(ResNet50):
    """ResNet-50 (last stride 1) with `rga_att{1..4}` applied after `layer{1..4}`:
    [B, 3, H, W] -> [B, 2048, H/16, W/16]. Without branches it is the plain trunk."""

    def __init__(self, branches: tuple[bool, bool] | None, height: int, width: int, scale: int, d_scale: int,
                 backend: str) -> None:
        super().__init__(last_stride=1)
        self.height, self.width = height, width
        self.has_rga = branches is not None
        if self.has_rga:
            for k, (channels, down) in enumerate(STAGES, 1):
                try:
                    module = RGAModule(channels, (height // down) * (width // down), *branches,
                                       cha_ratio=scale, spa_ratio=scale, down_ratio=d_scale, backend=backend)
                except ValueError as error:
                    raise ValueError(
                        f"RGANet: no RGA module for layer{k} ({channels} channels at {height // down}x{width // down}) "
                        f"at input {height}x{width} with scale={scale}, d_scale={d_scale}: {error}") from None
                self.add_module(f"rga_att{k}", module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for k in range(1, 5):
            x = getattr(self, f"layer{k}")(x)
            if self.has_rga:
                x = getattr(self, f"rga_att{k}")(x)
        return x


class RGANet(OneBackend, nn.Module):
    """Re-id network of the RGA paper: [B, 3, height, width] -> features.

    `branch_name`: "rgasc" (spatial and channel RGA), "rgas", "rgac", or "baseline"
    (no RGA: the same ResNet-50 and head). `scale` is the RGA modules' cha_ratio and
    spa_ratio, `d_scale` their down_ratio. `backend` reaches every RGA module (see
    `rga_ops.backends()`); it only changes how they are computed and can be changed
    later through the `backend` property. `pretrained`: path of a local torchvision
    ResNet-50 ImageNet state_dict for the trunk (RGA modules and head start from scratch).

    forward(x): training mode -> (feat_ [B, 2048] pooled, feat [B, 2048] after feat_bn
    (and dropout), logits [B, num_classes]); eval mode -> (feat_, feat).
    The state_dict has the original model's keys and shapes (612 for rgasc at 256x128)."""

    def __init__(self, num_classes: int, branch_name: str = "rgasc", height: int = 256, width: int = 128,
                 scale: int = 8, d_scale: int = 8, dropout: float = 0.0, backend: str = "auto",
                 pretrained: str | os.PathLike | None = None) -> None:
        super().__init__()
        if branch_name not in BRANCHES:
            raise ValueError(f"RGANet: unknown branch_name {branch_name!r}; expected one of {tuple(BRANCHES)}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"RGANet: num_classes must be a positive int, got {num_classes!r}")
        if height <= 0 or width <= 0 or height % 16 or width % 16:
            raise ValueError(f"RGANet: height and width must be positive multiples of 16 (the RGA modules are "
                             f"built for the feature maps at strides 4, 8 and 16), got {height}x{width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"RGANet: dropout must be in [0, 1), got {dropout!r}")
        check_backend_name(backend)
        self.branch_name = branch_name
        self.num_classes = num_classes
        self.dropout = dropout
        self.backbone = RGABackbone(BRANCHES[branch_name], height, width, scale, d_scale, backend)
        self.feat_bn = nn.BatchNorm1d(FEATURE_DIM)
        self.feat_bn.bias.requires_grad_(False)
        if dropout > 0:
            self.drop = nn.Dropout(dropout)
        self.cls = nn.Linear(FEATURE_DIM, num_classes, bias=False)
        nn.init.normal_(self.cls.weight, std=0.001)
        self._backend = backend
        # What loading the ImageNet weights did (a LoadReport), None without `pretrained`.
        self.imagenet_report = self.backbone.load_imagenet(pretrained) if pretrained is not None else None

    @property
    def height(self) -> int:
        return self.backbone.height

    @property
    def width(self) -> int:
        return self.backbone.width


    def extra_repr(self) -> str:
        return f"branch_name={self.branch_name!r}, input={self.height}x{self.width}, backend={self._backend!r}"

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"RGANet.forward takes a tensor [B, 3, H, W], got {type(x).__name__}")
        sized = self.backbone.has_rga
        if x.dim() != 4 or x.shape[1] != 3 or (sized and tuple(x.shape[2:]) != (self.height, self.width)):
            built = f"[B, 3, {self.height}, {self.width}]" if sized else "[B, 3, H, W]"
            hint = (f"; build RGANet(..., height={x.shape[2]}, width={x.shape[3]}) for this size"
                    if sized and x.dim() == 4 and x.shape[1] == 3 else "")
            raise ValueError(f"RGANet ({self.branch_name}) was built for inputs {built} (its RGA modules are sized "
                             f"for the feature maps of that input), got shape {tuple(x.shape)}{hint}"
                             if sized else f"RGANet was built for inputs {built}, got shape {tuple(x.shape)}")

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """The attention of every RGA module for inputs `x` [B, 3, H, W], as the paper's figures show it:
        {"rga_att1": {"spatial": [B, 1, H/4, W/4], "channel": [B, 256]}, ..., "rga_att4": {...}} with the
        gates in (0, 1) (RGA-S: "spatial", RGA-C: "channel", each where the branch exists). Computed in
        eval mode (the model's mode is restored); forward itself is unchanged and pays nothing for it."""
        self._check_input(x)
        if not self.backbone.has_rga:
            raise ValueError("RGANet (baseline) has no RGA modules, hence no attention maps")
        was_training = self.training
        self.eval()
        try:
            maps = {}
            x = self.backbone.stem(x)
            for k in range(1, 5):
                gates = getattr(self.backbone, f"rga_att{k}").attention(getattr(self.backbone, f"layer{k}")(x))
                x = gates.pop("output")
                maps[f"rga_att{k}"] = gates
            return maps
        finally:
            self.train(was_training)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._check_input(x)
        feat_ = self.backbone(x).mean((2, 3))
        feat = self.feat_bn(feat_)
        if self.dropout > 0:
            feat = self.drop(feat)
        if not self.training:
            return feat_, feat
        return feat_, feat, self.cls(feat)
