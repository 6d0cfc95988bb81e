"""relation_project in Triton: out_b = A_b theta_b + B_b phi_b with A_b = W_in phi_b^T,
B_b = W_out theta_b^T (docs/algebra.md §1), for theta, phi [B, C', N] and W = [W_in | W_out]
[K, 2N]; no N x N tensor, forward or backward.

Four kernels, each a few tl.dot loops with masks for any C', N, K:
  _coefficients_kernel  [A^T ; B^T] [B, 2C', K] in one pass (both halves per program);
                        in backward the same kernel forms [dA^T ; dB^T] from the output gradient
  _project_kernel       out = [A | B] [theta ; phi]                      (inner size 2C')
  _embedding_grad_kernel dtheta = A^T g + dB^T W_out and dphi = B^T g + dA^T W_in
                        together, so each tile of g is read once for both (inner size 2K)
  _weight_grad_kernel   dW_in = sum_b dA_b phi_b, dW_out = sum_b dB_b theta_b, split over the
                        batch into partial sums where the output alone has too few tiles
The coefficients are kept in float32 (float64 for float64 inputs) for backward; the
tl.dot operands are in the input dtype (half and bfloat16 use tensor cores) and every
sum is accumulated in float32 (float64)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .._registry import OPS, compute_dtype, define
from ._library import autotuned, check_device, dot_precision, grid_yz, on_device, tile_configs


# (BLOCK_a, BLOCK_b, BLOCK_inner, warps, stages), each within an H100's shared memory in every
# dtype, float32 with TF32 dots included (whose pipelined tiles take the most); `python -m
# tests.triton.compile_for_gpu --all-configs` checks it. The embedding gradient loads seven
# tiles per step, hence fewer stages or smaller tiles.
_MATMUL_TILES = ((32, 64, 64, 4, 3), (64, 64, 32, 4, 3), (64, 128, 32, 4, 3), (128, 64, 32, 4, 3),
                 (128, 128, 32, 8, 3), (32, 128, 64, 4, 3), (16, 64, 128, 4, 3))
_EMBEDDING_GRAD_TILES = ((32, 64, 64, 4, 3), (64, 64, 32, 4, 3), (64, 128, 32, 4, 2),
                         (128, 64, 32, 4, 2), (128, 128, 16, 8, 2), (32, 128, 32, 4, 3))


# Every kernel indexes in 64 bits (offsets of large tensors pass 2^31) and takes the batch
# items in grid z, which holds at most 65535 programs: each program strides over the items.
@autotuned(tile_configs(("BLOCK_C", "BLOCK_K", "BLOCK_N"), _MATMUL_TILES),
           triton.Config({"BLOCK_C": 16, "BLOCK_K": 16, "BLOCK_N": 32}), key=["C", "K", "N"])
@triton.jit
def _coefficients_kernel(
    first, second, right, out, B, C, K, N, right_offset,
    first_sb, first_sc, first_sn, second_sb, second_sc, second_sn, right_sb, right_sk, right_sn,
    out_sb, out_sc, out_sk,
    FP64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """out[b, c, k] = sum_n first[b, c, n] right[b, k, n] and
    out[b, C + c, k] = sum_n second[b, c, n] right[b, k, right_offset + n]
    (right_sb = 0 for a right operand shared by the batch)."""
    c = (tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    k = (tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    for b in range(tl.program_id(2), B, tl.num_programs(2)):
        item = tl.cast(b, tl.int64)
        first_b = first + item * first_sb
        second_b = second + item * second_sb
        right_b = right + item * right_sb
        acc_first = tl.zeros((BLOCK_C, BLOCK_K), dtype=ACC)
        acc_second = tl.zeros((BLOCK_C, BLOCK_K), dtype=ACC)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
            left_mask = (c[:, None] < C) & (n[None, :] < N)
            right_mask = (n[:, None] < N) & (k[None, :] < K)
            r = tl.load(right_b + n[:, None] * right_sn + k[None, :] * right_sk, mask=right_mask, other=0.0)
            e = tl.load(first_b + c[:, None] * first_sc + n[None, :] * first_sn, mask=left_mask, other=0.0)
            acc_first = tl.dot(e, r, acc_first, input_precision=PRECISION, out_dtype=ACC)
            r = tl.load(right_b + (right_offset + n[:, None]) * right_sn + k[None, :] * right_sk, mask=right_mask,
                        other=0.0)
            e = tl.load(second_b + c[:, None] * second_sc + n[None, :] * second_sn, mask=left_mask, other=0.0)
            acc_second = tl.dot(e, r, acc_second, input_precision=PRECISION, out_dtype=ACC)
        mask = (c[:, None] < C) & (k[None, :] < K)
        out_b = out + item * out_sb
        tl.store(out_b + c[:, None] * out_sc + k[None, :] * out_sk, acc_first.to(out.dtype.element_ty), mask=mask)
        tl.store(out_b + (C + c[:, None]) * out_sc + k[None, :] * out_sk, acc_second.to(out.dtype.element_ty),
                 mask=mask)


@autotuned(tile_configs(("BLOCK_K", "BLOCK_N", "BLOCK_C"), _MATMUL_TILES),
           triton.Config({"BLOCK_K": 16, "BLOCK_N": 32, "BLOCK_C": 16}), key=["C", "K", "N"])
@triton.jit
def _project_kernel(
    coefficients, theta, phi, out, B, C, K, N,
    coef_sb, coef_sc, coef_sk, theta_sb, theta_sc, theta_sn, phi_sb, phi_sc, phi_sn, out_sb, out_sk, out_sn,
    FP64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out[b, k, n] = sum_c coefficients[b, c, k] theta[b, c, n] + coefficients[b, C + c, k] phi[b, c, n]."""
    k = (tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    n = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    for b in range(tl.program_id(2), B, tl.num_programs(2)):
        item = tl.cast(b, tl.int64)
        coefficients_b = coefficients + item * coef_sb
        theta_b = theta + item * theta_sb
        phi_b = phi + item * phi_sb
        acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
            coef_mask = (k[:, None] < K) & (c[None, :] < C)
            emb_mask = (c[:, None] < C) & (n[None, :] < N)
            a = tl.load(coefficients_b + k[:, None] * coef_sk + c[None, :] * coef_sc, mask=coef_mask, other=0.0)
            e = tl.load(theta_b + c[:, None] * theta_sc + n[None, :] * theta_sn, mask=emb_mask, other=0.0)
            acc = tl.dot(a.to(e.dtype), e, acc, input_precision=PRECISION, out_dtype=ACC)
            a = tl.load(coefficients_b + k[:, None] * coef_sk + (C + c[None, :]) * coef_sc, mask=coef_mask,
                        other=0.0)
            e = tl.load(phi_b + c[:, None] * phi_sc + n[None, :] * phi_sn, mask=emb_mask, other=0.0)
            acc = tl.dot(a.to(e.dtype), e, acc, input_precision=PRECISION, out_dtype=ACC)
        tl.store(out + item * out_sb + k[:, None] * out_sk + n[None, :] * out_sn, acc.to(out.dtype.element_ty),
                 mask=(k[:, None] < K) & (n[None, :] < N))


@autotuned(tile_configs(("BLOCK_C", "BLOCK_N", "BLOCK_K"), _EMBEDDING_GRAD_TILES),
           triton.Config({"BLOCK_C": 16, "BLOCK_N": 32, "BLOCK_K": 16}), key=["C", "K", "N"])
@triton.jit
def _embedding_grad_kernel(
    grad, weight, coefficients, coefficient_grads, dtheta, dphi, B, C, K, N,
    grad_sb, grad_sk, grad_sn, weight_sk, weight_sn, coef_sb, coef_sc, coef_sk, dcoef_sb, dcoef_sc, dcoef_sk,
    out_sb, out_sc, out_sn,
    FP64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dtheta = A^T g + dB^T W_out, dphi = B^T g + dA^T W_in per item, with A^T, B^T the halves
    of `coefficients` and dA^T, dB^T those of `coefficient_grads` ([B, 2C', K] each);
    dtheta and dphi share the strides out_*."""
    c = (tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    n = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    for b in range(tl.program_id(2), B, tl.num_programs(2)):
        item = tl.cast(b, tl.int64)
        grad_b = grad + item * grad_sb
        coefficients_b = coefficients + item * coef_sb
        coefficient_grads_b = coefficient_grads + item * dcoef_sb
        acc_theta = tl.zeros((BLOCK_C, BLOCK_N), dtype=ACC)
        acc_phi = tl.zeros((BLOCK_C, BLOCK_N), dtype=ACC)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            right_mask = (k[:, None] < K) & (n[None, :] < N)
            left_mask = (c[:, None] < C) & (k[None, :] < K)
            g = tl.load(grad_b + k[:, None] * grad_sk + n[None, :] * grad_sn, mask=right_mask, other=0.0)
            w_in = tl.load(weight + k[:, None] * weight_sk + n[None, :] * weight_sn, mask=right_mask, other=0.0)
            w_out = tl.load(weight + k[:, None] * weight_sk + (N + n[None, :]) * weight_sn, mask=right_mask,
                            other=0.0)
            a = tl.load(coefficients_b + c[:, None] * coef_sc + k[None, :] * coef_sk, mask=left_mask, other=0.0)
            bt = tl.load(coefficients_b + (C + c[:, None]) * coef_sc + k[None, :] * coef_sk, mask=left_mask,
                         other=0.0)
            da = tl.load(coefficient_grads_b + c[:, None] * dcoef_sc + k[None, :] * dcoef_sk, mask=left_mask,
                         other=0.0)
            db = tl.load(coefficient_grads_b + (C + c[:, None]) * dcoef_sc + k[None, :] * dcoef_sk,
                         mask=left_mask, other=0.0)
            acc_theta = tl.dot(a.to(g.dtype), g, acc_theta, input_precision=PRECISION, out_dtype=ACC)
            acc_theta = tl.dot(db.to(g.dtype), w_out, acc_theta, input_precision=PRECISION, out_dtype=ACC)
            acc_phi = tl.dot(bt.to(g.dtype), g, acc_phi, input_precision=PRECISION, out_dtype=ACC)
            acc_phi = tl.dot(da.to(g.dtype), w_in, acc_phi, input_precision=PRECISION, out_dtype=ACC)
        offsets = item * out_sb + c[:, None] * out_sc + n[None, :] * out_sn
        mask = (c[:, None] < C) & (n[None, :] < N)
        tl.store(dtheta + offsets, acc_theta.to(dtheta.dtype.element_ty), mask=mask)
        tl.store(dphi + offsets, acc_phi.to(dphi.dtype.element_ty), mask=mask)


@autotuned(tile_configs(("BLOCK_K", "BLOCK_N", "BLOCK_C"), _MATMUL_TILES),
           triton.Config({"BLOCK_K": 16, "BLOCK_N": 32, "BLOCK_C": 16}), key=["C", "K", "N", "ITEMS"])
@triton.jit
def _weight_grad_kernel(
    coefficient_grads, theta, phi, out, B, C, K, N, ITEMS,
    dcoef_sb, dcoef_sc, dcoef_sk, theta_sb, theta_sc, theta_sn, phi_sb, phi_sc, phi_sn, out_ss, out_sk, out_sn,
    FP64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """The sums over items [s * ITEMS, (s + 1) * ITEMS) of out[s, k, n] = sum_c dA_b[k, c] phi_b[c, n] and
    out[s, k, N + n] = sum_c dB_b[k, c] theta_b[c, n], with [dA^T ; dB^T] = coefficient_grads [B, 2C', K]."""
    k = (tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    n = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    split = tl.program_id(2).to(tl.int64)
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    acc_in = tl.zeros((BLOCK_K, BLOCK_N), dtype=ACC)
    acc_out = tl.zeros((BLOCK_K, BLOCK_N), dtype=ACC)
    first_item = split * ITEMS
    for item in range(first_item, tl.minimum(first_item + ITEMS, B)):
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
            left_mask = (k[:, None] < K) & (c[None, :] < C)
            right_mask = (c[:, None] < C) & (n[None, :] < N)
            dcoef = coefficient_grads + item * dcoef_sb + k[:, None] * dcoef_sk
            da = tl.load(dcoef + c[None, :] * dcoef_sc, mask=left_mask, other=0.0)
            db = tl.load(dcoef + (C + c[None, :]) * dcoef_sc, mask=left_mask, other=0.0)
            p = tl.load(phi + item * phi_sb + c[:, None] * phi_sc + n[None, :] * phi_sn, mask=right_mask, other=0.0)
            t = tl.load(theta + item * theta_sb + c[:, None] * theta_sc + n[None, :] * theta_sn, mask=right_mask,
                        other=0.0)
            acc_in = tl.dot(da.to(p.dtype), p, acc_in, input_precision=PRECISION, out_dtype=ACC)
            acc_out = tl.dot(db.to(t.dtype), t, acc_out, input_precision=PRECISION, out_dtype=ACC)
    out += split * out_ss + k[:, None] * out_sk
    mask = (k[:, None] < K) & (n[None, :] < N)
    tl.store(out + n[None, :] * out_sn, acc_in.to(out.dtype.element_ty), mask=mask)
    tl.store(out + (N + n[None, :]) * out_sn, acc_out.to(out.dtype.element_ty), mask=mask)


# The weight gradient's output [K, 2N] alone has few tiles at small N and K: the batch is
# split so that about this many programs run (a GPU has ~100+ multiprocessors).
_WEIGHT_GRAD_PROGRAMS = 512
_WEIGHT_GRAD_TILE = 64


def _weight_grad_splits(b: int, k: int, n: int) -> int:
    tiles = triton.cdiv(k, _WEIGHT_GRAD_TILE) * triton.cdiv(n, _WEIGHT_GRAD_TILE)
    return max(1, min(b, _WEIGHT_GRAD_PROGRAMS // tiles))


def _flags(dtype: torch.dtype) -> dict:
    return dict(FP64=compute_dtype(dtype) == torch.float64, PRECISION=dot_precision(dtype))


def _coefficients(first, second, right, right_offset, out) -> None:
    """out [B, 2C', K] = [first_b right_b[:, :n]^T ; second_b right_b[:, offset:offset + n]^T] per item."""
    b, c, n = first.shape
    k = out.shape[2]
    right_strides = (0, *right.stride()) if right.dim() == 2 else right.stride()
    grid = lambda meta: (triton.cdiv(c, meta["BLOCK_C"]), triton.cdiv(k, meta["BLOCK_K"]),  # noqa: E731
                         grid_yz(b))
    wrap_triton(_coefficients_kernel.for_dtype(first.dtype))[grid](
        first, second, right, out, b, c, k, n, right_offset, *first.stride(), *second.stride(), *right_strides,
        *out.stride(), **_flags(first.dtype))


def register(namespace: str, use_triton_op: bool) -> None:
    """Defines namespace::_relation_project (-> out, coefficients) and
    namespace::relation_project_backward, with autograd through the first output."""
    spec = OPS["relation_project"]
    op_name, backward_name = f"{namespace}::relation_project", f"{namespace}::relation_project_backward"

    def relation_project(theta: torch.Tensor, phi: torch.Tensor, weight: torch.Tensor):
        out, coefficients = spec.fake(op_name, theta, phi, weight)
        check_device(op_name, theta)
        b, c, n = theta.shape
        k = weight.shape[0]
        if b == 0:
            return out, coefficients
        grid = lambda meta: (triton.cdiv(k, meta["BLOCK_K"]), triton.cdiv(n, meta["BLOCK_N"]),  # noqa: E731
                             grid_yz(b))
        with on_device(theta):
            _coefficients(phi, theta, weight, n, coefficients)  # [A^T ; B^T] = [phi W_in^T ; theta W_out^T]
            wrap_triton(_project_kernel.for_dtype(theta.dtype))[grid](
                coefficients, theta, phi, out, b, c, k, n, *coefficients.stride(), *theta.stride(), *phi.stride(),
                *out.stride(), **_flags(theta.dtype))
        return out, coefficients

    def relation_project_backward(grad, theta, phi, weight, coefficients):
        dtheta, dphi, dweight = spec.backward_fake(backward_name, grad, theta, phi, weight, coefficients)
        check_device(backward_name, theta)
        b, c, n = theta.shape
        k = weight.shape[0]
        if b == 0:
            return dtheta, dphi, dweight.zero_()
        coefficients = coefficients.to(compute_dtype(theta.dtype))
        flags = _flags(theta.dtype)
        coefficient_grads = torch.empty_like(coefficients)
        splits = _weight_grad_splits(b, k, n)
        items = triton.cdiv(b, splits)
        splits = triton.cdiv(b, items)
        partial = torch.empty((splits, k, 2 * n), dtype=coefficients.dtype, device=theta.device)
        embedding_grid = lambda meta: (triton.cdiv(c, meta["BLOCK_C"]), triton.cdiv(n, meta["BLOCK_N"]),  # noqa: E731
                                       grid_yz(b))
        weight_grid = lambda meta: (triton.cdiv(k, meta["BLOCK_K"]), triton.cdiv(n, meta["BLOCK_N"]),  # noqa: E731
                                    splits)
        with on_device(theta):
            # [dA^T ; dB^T] = [theta g^T ; phi g^T] per item, [B, 2C', K].
            _coefficients(theta, phi, grad, 0, coefficient_grads)
            wrap_triton(_embedding_grad_kernel.for_dtype(theta.dtype))[embedding_grid](
                grad, weight, coefficients, coefficient_grads, dtheta, dphi, b, c, k, n, *grad.stride(),
                *weight.stride(), *coefficients.stride(), *coefficient_grads.stride(), *dtheta.stride(), **flags)
            wrap_triton(_weight_grad_kernel.for_dtype(theta.dtype))[weight_grid](
                coefficient_grads, theta, phi, partial, b, c, k, n, items, *coefficient_grads.stride(),
                *theta.stride(), *phi.stride(), *partial.stride(), **flags)
        return dtheta, dphi, dweight.copy_(partial.sum(0))

    define(spec, namespace, relation_project, relation_project_backward, use_triton_op=use_triton_op)
