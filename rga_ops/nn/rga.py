"""Drop-in RGA module: the official constructor, submodules and state_dict, with
a fast forward (docs/algebra.md) selected by `backend`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backends import check_backend_name, module_choices, resolve_backend
from ..ops import relation_project
from ..ops.batch_norm_relu_conv1x1 import KERNEL_BACKENDS as _FUSED_HEAD_BACKENDS
from ..reference.rga import ReferenceRGAModule
from .batch_norm import batch_norm_relu_conv, grouped_batch_norm


class RGAModule(ReferenceRGAModule):
    """Relation-aware global attention, [B, C, H, W] -> [B, C, H, W] (H*W == in_spatial).

    Same constructor arguments, submodule names and parameters as the official
    RGA_Module, so its state_dicts load with strict=True both ways. `backend` only
    changes how the forward is computed: "reference" runs the original
    computation; "torch", "cpp", "cuda" (and "auto", the fastest usable one for
    the input's device) run the fast path: each branch's three embeddings as one
    conv + one BatchNorm, and the relation followed by its 1x1 conv as
    `relation_project`, which never forms an N x N tensor.
    """

    def __init__(
        self,
        in_channel: int,
        in_spatial: int,
        use_spatial: bool = True,
        use_channel: bool = True,
        cha_ratio: int = 8,
        spa_ratio: int = 8,
        down_ratio: int = 8,
        backend: str = "auto",
    ) -> None:
        if not (use_spatial or use_channel):
            raise ValueError("RGAModule: at least one of use_spatial and use_channel must be True")
        for name, value in (("cha_ratio", cha_ratio), ("spa_ratio", spa_ratio), ("down_ratio", down_ratio)):
            if value <= 0:
                raise ValueError(f"RGAModule: {name} must be positive, got {value}")
        if in_channel // cha_ratio < 1 or in_spatial // spa_ratio < 1:
            raise ValueError(
                f"RGAModule: in_channel // cha_ratio and in_spatial // spa_ratio must be >= 1, got "
                f"{in_channel} // {cha_ratio} and {in_spatial} // {spa_ratio}"
            )
        for on, inter, what in ((use_spatial, in_spatial // spa_ratio, "1 + in_spatial // spa_ratio"),
                                (use_channel, in_channel // cha_ratio, "1 + in_channel // cha_ratio")):
            if on and (1 + inter) // down_ratio < 1:
                raise ValueError(
                    f"RGAModule: ({what}) // down_ratio must be >= 1 (the attention head's hidden width), "
                    f"got (1 + {inter}) // {down_ratio} = 0"
                )
        super().__init__(in_channel, in_spatial, use_spatial, use_channel, cha_ratio, spa_ratio, down_ratio)
        self.backend = check_backend_name(backend)

    def extra_repr(self) -> str:
        return (f"in_channel={self.in_channel}, in_spatial={self.in_spatial}, use_spatial={self.use_spatial}, "
                f"use_channel={self.use_channel}, backend={self.backend!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        backend = resolve_backend(self.backend, x.device)
        if backend == "reference":
            return super().forward(x)
        if self.use_spatial:
            x = self._spatial_gate(x, backend) * x
        if self.use_channel:
            x = self._channel_gate(x, backend) * x
        return x

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channel or x.shape[2] * x.shape[3] != self.in_spatial:
            raise ValueError(
                f"RGAModule was built for inputs [B, {self.in_channel}, H, W] with H*W = {self.in_spatial}, "
                f"got shape {tuple(x.shape)}"
                + (f" (H*W = {x.shape[2] * x.shape[3]})" if x.dim() == 4 else "")
            )

    @torch.no_grad()
    def attention(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The gates this module applies to `x`, values in (0, 1), for looking at (no autograd):
        "spatial" [B, 1, H, W] (RGA-S, when use_spatial), "channel" [B, C] (RGA-C, when use_channel,
        computed as the forward does: on the spatially gated input) and "output" (= forward(x), to
        rounding). The "reference" backend is computed by the "torch" one here."""
        self._check_input(x)
        backend = resolve_backend(self.backend, x.device)
        backend = "torch" if backend == "reference" else backend
        maps = {}
        if self.use_spatial:
            maps["spatial"] = self._spatial_gate(x, backend)
            x = maps["spatial"] * x
        if self.use_channel:
            gate = self._channel_gate(x, backend)
            maps["channel"] = gate.flatten(1)
            x = gate * x
        maps["output"] = x
        return maps

    def _spatial_gate(self, x: torch.Tensor, backend: str) -> torch.Tensor:
        b, c, h, w = x.shape
        n, ci, k = h * w, self.inter_channel, self.inter_spatial
        # theta, phi, gx: one conv C -> 3C' and one BatchNorm (theta and phi adjacent,
        # so relation_project sees them as one [B, 2C', N] operand).
        weight = torch.cat((self.theta_spatial[0].weight, self.phi_spatial[0].weight, self.gx_spatial[0].weight))
        choices = module_choices(x.device.type)
        if n >= c * choices.embedding_bmm_min_positions_per_channel:
            emb = torch.bmm(weight.view(1, 3 * ci, c).expand(b, -1, -1), x.reshape(b, c, n))
        elif n <= c * choices.embedding_gemm_max_positions_per_channel:
            positions = x.reshape(b, c, n).transpose(1, 2).reshape(b * n, c)
            emb = torch.mm(positions, weight.view(3 * ci, c).t()).view(b, n, 3 * ci).transpose(1, 2).contiguous()
        else:
            emb = F.conv2d(x, weight).reshape(b, 3 * ci, n)
        emb = F.relu(grouped_batch_norm(emb, (self.theta_spatial[1], self.phi_spatial[1], self.gx_spatial[1])))
        theta, phi, gx = emb.split(ci, 1)
        rel = relation_project(theta, phi, self.gg_spatial[0].weight.view(k, 2 * n), backend=backend)
        head = self._attention_head(self.W_spatial, rel, self.gg_spatial[1], gx.mean(1, keepdim=True), backend)
        return torch.sigmoid(head.view(b, 1, h, w))

    def _channel_gate(self, x: torch.Tensor, backend: str) -> torch.Tensor:
        # Channels are the nodes and positions the features: the embeddings are one
        # GEMM [B*C, N] x [N, 3N'] over the batch, normalised per feature.
        b, c, h, w = x.shape
        n, si, k = h * w, self.inter_spatial, self.inter_channel
        weight = torch.cat(
            (self.theta_channel[0].weight, self.phi_channel[0].weight, self.gx_channel[0].weight)
        ).view(3 * si, n)
        emb = torch.matmul(x.reshape(b * c, n), weight.t())
        emb = F.relu(grouped_batch_norm(emb, (self.theta_channel[1], self.phi_channel[1], self.gx_channel[1])))
        theta, phi, gx = emb.view(b, c, 3 * si).split(si, 2)
        rel = relation_project(theta.transpose(1, 2), phi.transpose(1, 2),
                               self.gg_channel[0].weight.view(k, 2 * c), backend=backend)
        head = self._attention_head(self.W_channel, rel, self.gg_channel[1], gx.mean(2).view(b, 1, c), backend)
        return torch.sigmoid(head.view(b, c, 1, 1))

    @staticmethod
    def _attention_head(head: torch.nn.Sequential, rel: torch.Tensor, rel_bn: torch.nn.BatchNorm2d,
                        g: torch.Tensor, backend: str) -> torch.Tensor:
        """head(cat(g, relu(rel_bn(rel)))) for rel [B, K, M] and g [B, 1, M] -> [B, 1, M],
        without materialising the concatenation. The BatchNorm + ReLU + first conv run as
        batch_norm_relu_conv1x1: with our compiled backends (which keep only rel for backward)
        where rel is large enough to repay the fused op (backends.module_choices), else as plain
        PyTorch ops (the "torch" backend: exportable, e.g. to ONNX; triton has no fused head)."""
        w0 = head[0].weight.flatten(1)
        fused = (backend in _FUSED_HEAD_BACKENDS
                 and rel[0].numel() >= module_choices(rel.device.type).fused_head_min_elements)
        projected = batch_norm_relu_conv(rel, rel_bn, w0[:, 1:], backend if fused else "torch")
        z = projected + w0[:, :1] * g
        z = head[2](head[1](z.unsqueeze(-1)))
        return head[4](head[3](z)).squeeze(-1)
