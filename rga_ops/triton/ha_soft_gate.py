"""HA's soft-attention gate in Triton (docs/algebra.md §3):
out[b, o, p] = x[b, o, p] * sigmoid(relu(alpha[b, o] * s[b, p] + beta[o])) for x [B, C, H, W],
s [B, 1, H, W], alpha [B, C], beta [C]; float32 math (float64 for float64 inputs).

Forward: one read of x and s, one write of out, in [BLOCK_R rows (b, o), BLOCK_P positions]
tiles. Backward: one program per item and block of BLOCK_R channels walks all positions,
recomputing the gate: dx = grad * g is written, dalpha[b, o] and the per-item parts of
dbeta are summed in the program, and ds[b, p] = sum_o alpha[b, o] dz[b, o, p] is written
as one partial sum per channel block (summed afterwards: no atomics, deterministic).
x and grad may have any strides over (b, c) as long as H and W fold into one dimension
(contiguous and channels_last layouts do); other layouts are copied first."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .._registry import OPS, compute_dtype, define
from ._library import autotuned, check_device, grid_yz, on_device, tile_configs

_FORWARD_CONFIGS = tile_configs(("BLOCK_R", "BLOCK_P"), (
    (1, 1024, 4, 1), (2, 512, 4, 1), (4, 256, 4, 1), (8, 128, 4, 1), (16, 64, 4, 1), (32, 32, 4, 1),
    (4, 1024, 8, 1), (8, 512, 8, 1), (16, 256, 8, 1), (64, 64, 8, 1)))
# The channel block of the backward is fixed per launch (not tuned): it sets the number of
# partial sums of ds, whose buffer is allocated before the launch.
_BACKWARD_BLOCK_R = 16
_BACKWARD_CONFIGS = tile_configs(("BLOCK_P",), ((32, 2, 3), (64, 4, 3), (128, 4, 3), (256, 8, 3)))


@triton.jit
def _gate(z):
    """sigmoid(relu(z)) and whether z > 0 (where the gate has a gradient)."""
    positive = z > 0
    return tl.where(positive, 1.0 / (1.0 + tl.exp(-tl.where(positive, z, 0.0))), 0.5), positive


@autotuned(_FORWARD_CONFIGS, triton.Config({"BLOCK_R": 4, "BLOCK_P": 32}), key=["R", "P"])
@triton.jit
def _gate_forward_kernel(
    x, s, alpha, beta, out, R, C, P, x_sb, x_sc, x_sp,
    FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Rows r = b C + o in grid x; position blocks in grid y, which holds at most 65535 programs:
    each program strides over the blocks. 64-bit offsets (an item may pass 2^31 elements)."""
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    dtype = tl.float64 if FP64 else tl.float32
    b, o = r // C, r % C
    row_mask = r < R
    a = tl.load(alpha + r, mask=row_mask, other=0.0).to(dtype)
    shift = tl.load(beta + o, mask=row_mask, other=0.0).to(dtype)
    for p0 in range(tl.program_id(1) * BLOCK_P, P, tl.num_programs(1) * BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
        mask = row_mask[:, None] & (p[None, :] < P)
        sv = tl.load(s + b[:, None] * P + p[None, :], mask=mask, other=0.0).to(dtype)
        xv = tl.load(x + b[:, None] * x_sb + o[:, None] * x_sc + p[None, :] * x_sp, mask=mask, other=0.0).to(dtype)
        g, _ = _gate(a[:, None] * sv + shift[:, None])
        tl.store(out + r[:, None] * P + p[None, :], (xv * g).to(out.dtype.element_ty), mask=mask)


@autotuned(_BACKWARD_CONFIGS, triton.Config({"BLOCK_P": 32}), key=["C", "P"])
@triton.jit
def _gate_backward_kernel(
    grad, x, s, alpha, beta, dx, ds_partial, dalpha, dbeta_rows, C, P,
    grad_sb, grad_sc, grad_sp, x_sb, x_sc, x_sp,
    FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """dx [B, C, P]; ds_partial[b, block, p] = sum over the block's channels o of alpha[b, o] dz[b, o, p];
    dalpha[b, o] = sum_p s[b, p] dz[b, o, p]; dbeta_rows[b, o] = sum_p dz[b, o, p]
    with dz = grad * x * g (1 - g) where alpha s + beta > 0, else 0. Items in grid x, channel
    blocks in grid y; 64-bit offsets."""
    b = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    o = (block * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    dtype = tl.float64 if FP64 else tl.float32
    row_mask = o < C
    a = tl.load(alpha + b * C + o, mask=row_mask, other=0.0).to(dtype)
    shift = tl.load(beta + o, mask=row_mask, other=0.0).to(dtype)
    sum_alpha = tl.zeros((BLOCK_R,), dtype=dtype)
    sum_beta = tl.zeros((BLOCK_R,), dtype=dtype)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
        mask = row_mask[:, None] & (p[None, :] < P)
        sv = tl.load(s + b * P + p, mask=p < P, other=0.0).to(dtype)
        xv = tl.load(x + b * x_sb + o[:, None] * x_sc + p[None, :] * x_sp, mask=mask, other=0.0).to(dtype)
        gv = tl.load(grad + b * grad_sb + o[:, None] * grad_sc + p[None, :] * grad_sp, mask=mask, other=0.0).to(dtype)
        g, positive = _gate(a[:, None] * sv[None, :] + shift[:, None])
        tl.store(dx + (b * C + o[:, None]) * P + p[None, :], (gv * g).to(dx.dtype.element_ty), mask=mask)
        dz = tl.where(positive & mask, gv * xv * g * (1.0 - g), 0.0)
        sum_alpha += tl.sum(dz * sv[None, :], axis=1)
        sum_beta += tl.sum(dz, axis=1)
        ds = tl.sum(dz * a[:, None], axis=0)
        tl.store(ds_partial + (b * tl.num_programs(1) + block) * P + p, ds.to(ds_partial.dtype.element_ty),
                 mask=p < P)
    tl.store(dalpha + b * C + o, sum_alpha.to(dalpha.dtype.element_ty), mask=row_mask)
    tl.store(dbeta_rows + b * C + o, sum_beta.to(dbeta_rows.dtype.element_ty), mask=row_mask)


def _positions(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(t, stride) such that t [B, C, H, W]'s positions p = h W + w are at p * stride from t[b, c, 0, 0]
    (a contiguous copy of t where H and W do not fold into one dimension)."""
    h, w = t.shape[2], t.shape[3]
    if w == 1:
        return t, t.stride(2)
    if h == 1 or t.stride(2) == w * t.stride(3):
        return t, t.stride(3)
    return t.contiguous(), 1


def register(namespace: str, use_triton_op: bool) -> None:
    """Defines namespace::ha_soft_gate and namespace::ha_soft_gate_backward, with autograd."""
    spec = OPS["ha_soft_gate"]
    op_name, backward_name = f"{namespace}::ha_soft_gate", f"{namespace}::ha_soft_gate_backward"

    def ha_soft_gate(x: torch.Tensor, s: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        out = spec.fake(op_name, x, s, alpha, beta)
        check_device(op_name, x)
        b, c, h, w = x.shape
        if out.numel() == 0:
            return out
        x, x_sp = _positions(x)
        s, alpha, beta = s.contiguous(), alpha.contiguous(), beta.contiguous()
        grid = lambda meta: (triton.cdiv(b * c, meta["BLOCK_R"]),  # noqa: E731
                             grid_yz(triton.cdiv(h * w, meta["BLOCK_P"])))
        with on_device(x):
            wrap_triton(_gate_forward_kernel.for_dtype(x.dtype))[grid](
                x, s, alpha, beta, out, b * c, c, h * w, x.stride(0), x.stride(1), x_sp,
                FP64=compute_dtype(x.dtype) == torch.float64)
        return out

    def ha_soft_gate_backward(grad: torch.Tensor, x: torch.Tensor, s: torch.Tensor, alpha: torch.Tensor,
                              beta: torch.Tensor):
        dx, ds, dalpha, dbeta = spec.backward_fake(backward_name, grad, x, s, alpha, beta)
        check_device(backward_name, x)
        b, c, h, w = x.shape
        if x.numel() == 0:
            return dx.zero_(), ds.zero_(), dalpha.zero_(), dbeta.zero_()
        (x, x_sp), (grad, grad_sp) = _positions(x), _positions(grad)
        s, alpha, beta = s.contiguous(), alpha.contiguous(), beta.contiguous()
        stat_dtype = compute_dtype(x.dtype)
        blocks = triton.cdiv(c, _BACKWARD_BLOCK_R)
        ds_partial = torch.empty((b, blocks, h * w), dtype=stat_dtype, device=x.device)
        dalpha_rows = torch.empty((b, c), dtype=stat_dtype, device=x.device)
        dbeta_rows = torch.empty((b, c), dtype=stat_dtype, device=x.device)
        with on_device(x):
            wrap_triton(_gate_backward_kernel.for_dtype(x.dtype))[(b, blocks)](
                grad, x, s, alpha, beta, dx, ds_partial, dalpha_rows, dbeta_rows, c, h * w,
                grad.stride(0), grad.stride(1), grad_sp, x.stride(0), x.stride(1), x_sp,
                FP64=stat_dtype == torch.float64, BLOCK_R=_BACKWARD_BLOCK_R)
        ds.copy_(ds_partial.sum(1).view(b, 1, h, w))
        dalpha.copy_(dalpha_rows)
        dbeta.copy_(dbeta_rows.sum(0))
        return dx, ds, dalpha, dbeta

    define(spec, namespace, ha_soft_gate, ha_soft_gate_backward, use_triton_op=use_triton_op)
