"""relation_stack in Triton: J [B, 2N, N] with J[:, :N, p] = G[p, :], J[:, N:, p] = G[:, p],
G = theta^T phi for theta, phi [B, C', N].

Forward: each program computes one [BLOCK_I, BLOCK_J] tile of G (a tl.dot over C')
and stores it twice: as is to J[N + i, j] and transposed to J[j, i]; G never exists.
Backward: with dG = dJ[N:] + dJ[:N]^T, dtheta = phi dG^T and dphi = theta dG; one
kernel forms dG's tiles on the fly from the two halves of dJ, once per output."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .._registry import OPS, compute_dtype, define
from ._library import autotuned, check_device, dot_precision, grid_yz, on_device, tile_configs


# (BLOCK_a, BLOCK_b, BLOCK_C, warps, stages), each within an H100's shared memory in every dtype,
# float32 with TF32 dots included (whose pipelined tiles take the most); `python -m
# tests.triton.compile_for_gpu --all-configs` checks it.
_FORWARD_TILES = ((64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3), (128, 128, 32, 8, 3),
                  (128, 128, 64, 8, 2), (64, 64, 64, 4, 2))
_BACKWARD_TILES = ((64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3), (64, 64, 64, 4, 2),
                   (128, 128, 32, 8, 2))


@autotuned(tile_configs(("BLOCK_I", "BLOCK_J", "BLOCK_C"), _FORWARD_TILES),
           triton.Config({"BLOCK_I": 16, "BLOCK_J": 32, "BLOCK_C": 16}), key=["C", "N"])
@triton.jit
def _relation_stack_kernel(
    theta, phi, out, B, C, N,
    theta_sb, theta_sc, theta_sn, phi_sb, phi_sc, phi_sn, out_sb, out_sr, out_sn,
    FP64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # 64-bit indices: J's offsets pass 2^31 from N = 32768 on (and any stride may be large).
    i = (tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)).to(tl.int64)
    j = (tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)).to(tl.int64)
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    # Items in grid z, which holds at most 65535 programs: each program strides over the batch.
    for b in range(tl.program_id(2), B, tl.num_programs(2)):
        item = tl.cast(b, tl.int64)
        acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
            t = tl.load(theta + item * theta_sb + c[None, :] * theta_sc + i[:, None] * theta_sn,
                        mask=(c[None, :] < C) & (i[:, None] < N), other=0.0)
            p = tl.load(phi + item * phi_sb + c[:, None] * phi_sc + j[None, :] * phi_sn,
                        mask=(c[:, None] < C) & (j[None, :] < N), other=0.0)
            acc = tl.dot(t, p, acc, input_precision=PRECISION, out_dtype=ACC)
        g = acc.to(out.dtype.element_ty)
        out_b = out + item * out_sb
        tl.store(out_b + (N + i[:, None]) * out_sr + j[None, :] * out_sn, g,
                 mask=(i[:, None] < N) & (j[None, :] < N))
        tl.store(out_b + j[:, None] * out_sr + i[None, :] * out_sn, tl.trans(g),
                 mask=(j[:, None] < N) & (i[None, :] < N))


@autotuned(tile_configs(("BLOCK_P", "BLOCK_Q", "BLOCK_C"), _BACKWARD_TILES),
           triton.Config({"BLOCK_P": 32, "BLOCK_Q": 16, "BLOCK_C": 16}), key=["C", "N"])
@triton.jit
def _relation_stack_backward_kernel(
    emb, grad, out, B, C, N,
    emb_sb, emb_sc, emb_sn, grad_sb, bottom_offset, row_sp, row_sq, col_sp, col_sq, out_sb, out_sc, out_sn,
    FP64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out[b, c, p] = sum_q emb[b, c, q] (grad[b, N + .] at (p, q) + grad[b, :N] at (p, q)), the
    two halves addressed through (row_sp, row_sq) and (col_sp, col_sq), which make this
    dtheta (emb = phi) or dphi (emb = theta); the bottom half starts `bottom_offset` (N times
    grad's row stride, computed on the host where it cannot overflow) after the top."""
    c = (tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    p = (tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    for b in range(tl.program_id(2), B, tl.num_programs(2)):
        item = tl.cast(b, tl.int64)
        emb_b = emb + item * emb_sb
        grad_b = grad + item * grad_sb
        acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
        for q0 in range(0, N, BLOCK_Q):
            q = q0 + tl.arange(0, BLOCK_Q).to(tl.int64)
            mask = (q[:, None] < N) & (p[None, :] < N)
            bottom = tl.load(grad_b + bottom_offset + q[:, None] * row_sq + p[None, :] * row_sp, mask=mask, other=0.0)
            top = tl.load(grad_b + q[:, None] * col_sq + p[None, :] * col_sp, mask=mask, other=0.0)
            dg = (bottom.to(ACC) + top.to(ACC)).to(grad.dtype.element_ty)
            e = tl.load(emb_b + c[:, None] * emb_sc + q[None, :] * emb_sn, mask=(c[:, None] < C) & (q[None, :] < N),
                        other=0.0)
            acc = tl.dot(e, dg, acc, input_precision=PRECISION, out_dtype=ACC)
        tl.store(out + item * out_sb + c[:, None] * out_sc + p[None, :] * out_sn, acc.to(out.dtype.element_ty),
                 mask=(c[:, None] < C) & (p[None, :] < N))


def _flags(dtype: torch.dtype) -> dict:
    return dict(FP64=compute_dtype(dtype) == torch.float64, PRECISION=dot_precision(dtype))


def register(namespace: str, use_triton_op: bool) -> None:
    """Defines namespace::relation_stack and namespace::relation_stack_backward, with autograd."""
    spec = OPS["relation_stack"]
    op_name, backward_name = f"{namespace}::relation_stack", f"{namespace}::relation_stack_backward"

    def relation_stack(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        out = spec.fake(op_name, theta, phi)
        check_device(op_name, theta)
        b, c, n = theta.shape
        if b == 0:
            return out
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_I"]), triton.cdiv(n, meta["BLOCK_J"]),  # noqa: E731
                             grid_yz(b))
        with on_device(theta):
            wrap_triton(_relation_stack_kernel.for_dtype(theta.dtype))[grid](
                theta, phi, out, b, c, n, *theta.stride(), *phi.stride(), *out.stride(), **_flags(theta.dtype))
        return out

    def relation_stack_backward(grad: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor):
        dtheta, dphi = spec.backward_fake(backward_name, grad, theta, phi)
        check_device(backward_name, theta)
        b, c, n = theta.shape
        if b == 0:
            return dtheta, dphi
        gb, gr, gn = grad.stride()
        grid = lambda meta: (triton.cdiv(c, meta["BLOCK_C"]), triton.cdiv(n, meta["BLOCK_P"]),  # noqa: E731
                             grid_yz(b))
        kernel = _relation_stack_backward_kernel.for_dtype(theta.dtype)
        with on_device(theta):
            # dtheta[c, i] = sum_j phi[c, j] (dJ[N + i, j] + dJ[j, i]): p = i, q = j.
            wrap_triton(kernel)[grid](phi, grad, dtheta, b, c, n, *phi.stride(), gb, n * gr, gr, gn, gn, gr,
                                      *dtheta.stride(), **_flags(theta.dtype))
            # dphi[c, j] = sum_i theta[c, i] (dJ[N + i, j] + dJ[j, i]): p = j, q = i.
            wrap_triton(kernel)[grid](theta, grad, dphi, b, c, n, *theta.stride(), gb, n * gr, gn, gr, gr, gn,
                                      *dphi.stride(), **_flags(theta.dtype))
        return dtheta, dphi

    define(spec, namespace, relation_stack, relation_stack_backward, use_triton_op=use_triton_op)
