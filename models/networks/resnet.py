"""ResNet-50 trunk with torchvision's parameter names, a `last_stride` option and
ImageNet weights loaded from a local file (never downloaded)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

# The trunk's top-level submodules, in torchvision's order (also the state_dict order).
TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_CLASSIFIER = ("fc.",)


class NarrowMapConv2d(nn.Conv2d):
    """`nn.Conv2d` that skips the taps of its kernel that only ever meet zero padding, on maps one
    pixel wide or one pixel high.

    With zero padding of `dilation * (k // 2)` along a side of length 1, every output position
    reads that side's input only through the kernel's middle column (row): the other columns
    multiply padding zeros. The convolution then runs with that column alone (padding 0 along
    it), the same outputs and gradients to rounding (the skipped taps' gradients are exactly 0
    either way) for 1/k of the work. RGA-Net's trunk at 32x16 has 2x1 maps in layer3 and layer4,
    where this cuts a 16x4 training step's FLOPs by 16% (32.8 -> 27.7 GFLOP) and its time by about
    6% on a 2-core CPU. Parameters, state_dict and constructor are nn.Conv2d's; other maps run
    the plain convolution."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros" or not isinstance(self.padding, tuple):
            return super()._conv_forward(input, weight, bias)
        (ph, pw), (dh, dw) = self.padding, self.dilation
        kh, kw = weight.shape[-2:]
        height, width = input.shape[-2:]
        narrowed = False
        if width == 1 and kw > 1 and kw % 2 == 1 and pw == dw * (kw // 2):
            weight, pw, dw, narrowed = weight[..., kw // 2 : kw // 2 + 1], 0, 1, True
        if height == 1 and kh > 1 and kh % 2 == 1 and ph == dh * (kh // 2):
            weight, ph, dh, narrowed = weight[..., kh // 2 : kh // 2 + 1, :], 0, 1, True
        if not narrowed:
            return super()._conv_forward(input, weight, bias)
        return F.conv2d(input, weight, bias, self.stride, (ph, pw), (dh, dw), self.groups)


def _narrow_map_conv(conv: nn.Conv2d) -> NarrowMapConv2d:
    """`conv` (weights shared, not copied) as a NarrowMapConv2d."""
    narrow = NarrowMapConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                             conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                             device="meta")
    narrow.weight, narrow.bias = conv.weight, conv.bias
    return narrow


class ResNet50(nn.Module):
    """torchvision's ResNet-50 without its classifier: [B, 3, H, W] -> [B, 2048, H/32, W/32]
    (H/16, W/16 with last_stride=1).

    Submodules `conv1, bn1, relu, maxpool, layer1..layer4` are torchvision's own
    (Bottleneck with the stride on conv2, `downsample.0/1`), so torchvision's ImageNet
    state_dict loads into it (`load_imagenet`). `last_stride=1` gives layer4's first
    block stride 1 (its conv2 and its downsample conv), as re-id networks do. The blocks'
    3x3 convolutions are NarrowMapConv2d (nn.Conv2d with the same parameters), which skip the
    kernel columns that only read padding on maps one pixel wide (small inputs such as 32x16)."""

    def __init__(self, last_stride: int = 2) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"ResNet50: last_stride must be 1 or 2, got {last_stride!r}")
        resnet = ResNet(Bottleneck, [3, 4, 6, 3])
        for name in TRUNK:
            setattr(self, name, getattr(resnet, name))
        self.last_stride = last_stride
        first = self.layer4[0]
        first.conv2.stride = (last_stride, last_stride)
        first.downsample[0].stride = (last_stride, last_stride)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                block.conv2 = _narrow_map_conv(block.conv2)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1, bn1, relu, maxpool: [B, 3, H, W] -> [B, 64, H/4, W/4]."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def trunk_state_keys(self) -> list[str]:
        """The state_dict keys of the ResNet-50 trunk itself (not of modules a subclass adds)."""
        return [k for k in self.state_dict() if k.split(".", 1)[0] in TRUNK]

    def load_imagenet(self, path: str | os.PathLike, strict: bool = True) -> LoadReport:
        """Loads a torchvision ResNet-50 state_dict saved at `path` into the trunk; see load_imagenet_weights."""
        return load_imagenet_weights(self, path, strict)


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What load_imagenet_weights did.

    loaded: trunk keys taken from the file; ignored: the file's classifier keys (fc.*);
    missing: trunk keys the file lacks; unexpected: file keys the trunk does not have;
    mismatched: (key, shape in the file, shape in the trunk); counters_reset:
    `num_batches_tracked` keys absent from the file (files saved by PyTorch < 0.4.1),
    left at their initial value, which is harmless."""

    path: str
    loaded: tuple[str, ...]
    ignored: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    counters_reset: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"ImageNet weights from {self.path}: {len(self.loaded)} tensors loaded, "
                 f"{len(self.ignored)} classifier tensors ignored ({', '.join(self.ignored) or 'none'})"]
        for what, keys in (("missing from the file", self.missing), ("unexpected in the file", self.unexpected)):
            if keys:
                lines.append(f"  {len(keys)} {what}: {_abbreviate(keys)}")
        if self.mismatched:
            lines.append(f"  {len(self.mismatched)} with another shape: " + _abbreviate(
                [f"{k} (file {list(a)}, model {list(b)})" for k, a, b in self.mismatched]))
        if self.counters_reset:
            lines.append(f"  {len(self.counters_reset)} num_batches_tracked counters not in the file (kept at 0)")
        return "\n".join(lines)


def _abbreviate(keys, limit: int = 8) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# torchvision's (and torch.hub's) file names end in the first hex digits of the file's SHA-256.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth$")


def check_hash_in_name(path: str) -> None:
    """For a file named as torchvision names its weights (`resnet50-0676ba61.pth`), check that its
    SHA-256 starts with the hex digits in the name: a truncated or altered download raises ValueError."""
    match = _HASH_IN_NAME.search(os.path.basename(path))
    if match is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(match.group(1)):
        raise ValueError(f"ImageNet ResNet-50 weights: {path!r} is named for SHA-256 {match.group(1)}... but its "
                         f"SHA-256 is {digest.hexdigest()}: the file is incomplete or not the published one")


def load_imagenet_weights(trunk: ResNet50, path: str | os.PathLike, strict: bool = True) -> LoadReport:
    """Copies a torchvision ResNet-50 ImageNet state_dict from the local file `path` into
    `trunk` (a ResNet50 or a subclass; only its trunk keys are touched).

    The classifier (`fc.*`) is ignored. With `strict`, any trunk key missing from the
    file, any other key the trunk does not have, or any shape mismatch raises a
    ValueError listing them, and nothing is loaded; otherwise they are warned about
    and every matching tensor is loaded. Returns a LoadReport."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ImageNet ResNet-50 weights: no file at {path!r} (weights are never downloaded; "
                                "save torchvision's resnet50 state_dict to a local file and pass its path)")
    check_hash_in_name(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TypeError(f"ImageNet ResNet-50 weights: {path!r} does not hold a state_dict (a mapping of names to "
                        f"tensors), got {type(state).__name__}")
    own = trunk.state_dict()
    expected = trunk.trunk_state_keys()
    ignored = tuple(k for k in state if k.startswith(_CLASSIFIER))
    counters_reset = tuple(k for k in expected if k.endswith("num_batches_tracked") and k not in state)
    missing = tuple(k for k in expected if k not in state and k not in counters_reset)
    unexpected = tuple(k for k in state if k not in expected and k not in ignored)
    mismatched = tuple((k, tuple(state[k].shape), tuple(own[k].shape))
                       for k in expected if k in state and state[k].shape != own[k].shape)
    bad = {k for k, *_ in mismatched}
    loaded = tuple(k for k in expected if k in state and k not in bad)
    report = LoadReport(path, loaded, ignored, missing, unexpected, mismatched, counters_reset)
    if not report.ok:
        if strict:
            raise ValueError(f"{report}\nnothing was loaded; pass strict=False to load the matching tensors anyway")
        warnings.warn(str(report), stacklevel=2)
    with torch.no_grad():
        for k in loaded:
            own[k].copy_(state[k])
    return report
