"""The drop-in modules folded for inference. In eval mode a BatchNorm is a per-channel affine map
with fixed coefficients, so `bn(conv(x)) = conv'(x)` with `w' = w * s`, `b' = (b - mean) * s + beta`,
`s = gamma / sqrt(var + eps)` (computed in float64, then rounded once). Inside RGA the same holds
for the relation branch (`relation_project` is linear in its weight) and for the attention
heads; HA's soft gate gets its conv's folded weight and an identity normalisation. Each folded
module computes what the eval-mode module computes, to rounding. Whole networks are folded by
the application (models.inference.fold_for_inference) with these pieces."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import ha_soft_gate, relation_project
from .ha import SoftAttention
from .rga import RGAModule

_BatchNorm = nn.modules.batchnorm._BatchNorm


def _fold_coefficients(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), float64: bn(y) = y * scale + shift in eval mode."""
    if bn.running_mean is None:
        raise ValueError(f"fold_for_inference: {bn} has no running statistics (track_running_stats=False) "
                         "and normalises with batch statistics even in eval mode; it cannot be folded")
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def folded_weight_and_bias(weight: torch.Tensor, bias: torch.Tensor | None,
                           bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(w', b') with bn(layer(x)) = layer'(x) for a conv or linear layer (weight [out, ...], bias [out])."""
    scale, shift = _fold_coefficients(bn)
    w = weight.detach().double() * scale.view(-1, *[1] * (weight.dim() - 1))
    b = shift if bias is None else bias.detach().double() * scale + shift
    return w.to(weight.dtype), b.to(weight.dtype)


def _parameter(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


def fold_batch_norm(layer: nn.Conv2d | nn.Linear, bn: _BatchNorm) -> nn.Module:
    """A new layer computing bn(layer(x)) in eval mode: `layer`'s geometry, folded weight, a bias."""
    weight, bias = folded_weight_and_bias(layer.weight, layer.bias, bn)
    like = dict(device=weight.device, dtype=weight.dtype)
    if isinstance(layer, nn.Linear):
        folded = nn.Linear(layer.in_features, layer.out_features, **like)
    else:
        # A subclass with nn.Conv2d's constructor (one that only changes how it convolves) stays itself.
        kind = type(layer) if type(layer).__init__ is nn.Conv2d.__init__ else nn.Conv2d
        folded = kind(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                      layer.dilation, layer.groups, True, layer.padding_mode, **like)
    folded.weight, folded.bias = _parameter(weight), _parameter(bias)
    return folded


class FoldedRGAModule(nn.Module):
    """An RGAModule in eval mode with every BatchNorm folded: per branch one embedding
    conv (theta, phi, gx stacked), the relation conv as `relation_project` plus a bias,
    and the two-layer attention head with biases. [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, module: RGAModule) -> None:
        super().__init__()
        self.in_channel, self.in_spatial = module.in_channel, module.in_spatial
        self.use_spatial, self.use_channel = module.use_spatial, module.use_channel
        self.inter_channel, self.inter_spatial = module.inter_channel, module.inter_spatial
        self.backend = module.backend
        for branch in [name for name, on in (("spatial", module.use_spatial), ("channel", module.use_channel)) if on]:
            embeddings = [getattr(module, f"{name}_{branch}") for name in ("theta", "phi", "gx")]
            folded = [folded_weight_and_bias(e[0].weight.flatten(1), None, e[1]) for e in embeddings]
            self.register_parameter(f"embed_{branch}_weight", _parameter(torch.cat([w for w, _ in folded])))
            self.register_parameter(f"embed_{branch}_bias", _parameter(torch.cat([b for _, b in folded])))
            gg = getattr(module, f"gg_{branch}")
            w, b = folded_weight_and_bias(gg[0].weight.flatten(1), None, gg[1])
            self.register_parameter(f"relation_{branch}_weight", _parameter(w))
            self.register_parameter(f"relation_{branch}_bias", _parameter(b))
            head = getattr(module, f"W_{branch}")
            for i, (conv, bn) in enumerate(((head[0], head[1]), (head[3], head[4]))):
                w, b = folded_weight_and_bias(conv.weight.flatten(1), None, bn)
                self.register_parameter(f"head_{branch}_weight{i}", _parameter(w))
                self.register_parameter(f"head_{branch}_bias{i}", _parameter(b))

    def extra_repr(self) -> str:
        return (f"in_channel={self.in_channel}, in_spatial={self.in_spatial}, use_spatial={self.use_spatial}, "
                f"use_channel={self.use_channel}, backend={self.backend!r}")

    def _attention(self, branch: str, theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Attention logits [B, 1, M] of relation nodes from theta, phi [B, C', M] and the mean embedding g [B, 1, M]."""
        rel = relation_project(theta, phi, getattr(self, f"relation_{branch}_weight"), backend=self.backend)
        rel = F.relu(rel + getattr(self, f"relation_{branch}_bias")[:, None])
        w0, b0 = getattr(self, f"head_{branch}_weight0"), getattr(self, f"head_{branch}_bias0")
        z = torch.matmul(w0[:, 1:], rel) + w0[:, :1] * g + b0[:, None]
        w1, b1 = getattr(self, f"head_{branch}_weight1"), getattr(self, f"head_{branch}_bias1")
        return torch.matmul(w1, F.relu(z)) + b1[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channel or x.shape[2] * x.shape[3] != self.in_spatial:
            raise ValueError(f"FoldedRGAModule was built for inputs [B, {self.in_channel}, H, W] with "
                             f"H*W = {self.in_spatial}, got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        if self.use_spatial:
            emb = F.relu(F.conv2d(x, self.embed_spatial_weight[:, :, None, None], self.embed_spatial_bias))
            theta, phi, g = emb.flatten(2).split(self.inter_channel, 1)
            a = self._attention("spatial", theta, phi, g.mean(1, keepdim=True))
            x = torch.sigmoid(a).view(b, 1, h, w) * x
        if self.use_channel:
            emb = F.relu(F.linear(x.reshape(b, c, h * w), self.embed_channel_weight, self.embed_channel_bias))
            theta, phi, g = emb.split(self.inter_spatial, 2)  # [B, C, N'] each: the channels are the nodes
            a = self._attention("channel", theta.transpose(1, 2), phi.transpose(1, 2), g.mean(2).view(b, 1, c))
            x = torch.sigmoid(a).view(b, c, 1, 1) * x
        return x


class FoldedSoftAttention(nn.Module):
    """HA's soft attention in eval mode with its BatchNorms folded. `gate(x)` = x * map
    by the fused ha_soft_gate, whose normalisation is then the identity (mean 0,
    variance 1, eps 0: exact); `forward(x)` returns the map [B, C, H, W]."""

    def __init__(self, module: SoftAttention) -> None:
        super().__init__()
        self.spatial_attn = module.spatial_attn
        self.channel_attn = module.channel_attn
        self.conv = fold_batch_norm(module.conv.conv, module.conv.bn)
        self.backend = module.backend
        like = dict(device=self.conv.weight.device, dtype=self.conv.weight.dtype)
        self.register_buffer("zeros", torch.zeros(self.conv.out_channels, **like), persistent=False)
        self.register_buffer("ones", torch.ones(self.conv.out_channels, **like), persistent=False)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.spatial_attn(x) * self.channel_attn(x)
        return torch.sigmoid(F.relu(self.conv(y)))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        s, c = self.spatial_attn(x), self.channel_attn(x).flatten(1)
        return ha_soft_gate(x, s, c, self.conv.weight.flatten(1), self.conv.bias, None, None, self.zeros, self.ones,
                            False, 0.0, 0.0, backend=self.backend)
