// The parts of the relation ops that are GEMMs and nothing else, written once
// with ATen ops so that the CPU and CUDA kernels run the same computation: ATen
// picks the device's GEMM (MKL/OpenBLAS or cuBLAS) and runs on the current
// stream. Callers check their inputs and, on CUDA, hold a device guard.
//
// relation_project (docs/algebra.md §1), with W = [W_in | W_out] ([K, 2N]):
//   out_b = A_b theta_b + B_b phi_b,  A_b = W_in phi_b^T,  B_b = W_out theta_b^T  ([K, C'])
// Nothing of size N x N exists, forward or backward.
#pragma once

#include <ATen/ATen.h>

#include "checks.h"
#include "compute_dtype.h"

namespace rga_ops::relation_gemms {

// [x_b ; y_b] stacked along dim 1, [B, 2C', N]: a free view when y directly follows
// x in memory with the same strides (the embeddings of RGAModule are laid out so),
// a copy otherwise.
inline at::Tensor stack_channels(const at::Tensor& x, const at::Tensor& y) {
  const int64_t c = x.size(1);
  const bool adjacent = x.strides() == y.strides() &&
                        static_cast<const char*>(y.const_data_ptr()) ==
                            static_cast<const char*>(x.const_data_ptr()) +
                                c * x.stride(1) * x.element_size();
  if (adjacent) {
    return x.as_strided({x.size(0), 2 * c, x.size(2)}, x.strides());
  }
  return at::cat({x, y}, 1);
}

// x [B, C', N] as a [B*C', N] matrix (a view where the layout allows it).
inline at::Tensor flat(const at::Tensor& x) { return x.reshape({x.size(0) * x.size(1), x.size(2)}); }

// Whether x [B, C', N] is a [B*C', N] matrix without a copy.
inline bool foldable(const at::Tensor& x) { return x.stride(0) == x.size(1) * x.stride(1) && x.stride(2) == 1; }

// x_b w^T for every b, [B, C', K]: one GEMM over the batch where x folds to [B*C', N]
// without a copy, else a batched GEMM (x's own strides, no copy either).
inline at::Tensor times_transposed(const at::Tensor& x, const at::Tensor& w) {
  const int64_t b = x.size(0), c = x.size(1), n = x.size(2), k = w.size(0);
  if (foldable(x)) {
    return at::mm(x.view({b * c, n}), w.t()).view({b, c, k});
  }
  return at::bmm(x, w.t().expand({b, n, k}));
}

// out = sum_b lhs_b x_b for lhs_t = [lhs_0^T ; lhs_1^T ; ...] ([B*C', K]) and x [B, C', N]: one GEMM
// with inner size B*C' on every device (a batched addbmm is one GEMM per item on CUDA). x is copied
// to [B*C', N] where it does not fold (RGAModule's theta and phi are channel slices): a copy of
// an input-sized tensor, against B launches.
inline void sum_of_products(at::Tensor& out, const at::Tensor& lhs_t, const at::Tensor& x) {
  at::mm_out(out, lhs_t.t(), flat(x));
}

// [A_b^T ; B_b^T] for every b, [B, 2C', K].
inline at::Tensor project_coefficients(const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& w_in,
                                       const at::Tensor& w_out) {
  return at::cat({times_transposed(phi, w_in), times_transposed(theta, w_out)}, 1);
}

// rga_ops::_relation_project: (out [B, K, N] in theta's dtype, coefficients [B, 2C', K] in the compute dtype).
inline std::tuple<at::Tensor, at::Tensor> relation_project(const at::Tensor& theta_in, const at::Tensor& phi_in,
                                                           const at::Tensor& weight_in) {
  constexpr const char* op = "rga_ops::relation_project";
  check_embeddings(op, theta_in, phi_in);
  check_projection_weight(op, theta_in, weight_in);
  const at::Tensor theta = as_compute(theta_in), phi = as_compute(phi_in);
  const at::Tensor weight = as_compute(weight_in);
  const int64_t n = theta.size(2);
  at::Tensor coeff_t = project_coefficients(theta, phi, weight.narrow(1, 0, n), weight.narrow(1, n, n));
  // One batched GEMM with inner size 2C': out_b = [A_b | B_b] [theta_b ; phi_b].
  at::Tensor out = at::bmm(coeff_t.transpose(1, 2), stack_channels(theta, phi));
  return {out.to(theta_in.scalar_type()), coeff_t};
}

// rga_ops::relation_project_backward: (dtheta, dphi, dweight).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> relation_project_backward(
    const at::Tensor& grad_in, const at::Tensor& theta_in, const at::Tensor& phi_in, const at::Tensor& weight_in,
    const at::Tensor& coeff_in) {
  constexpr const char* op = "rga_ops::relation_project_backward";
  check_embeddings(op, theta_in, phi_in);
  check_projection_weight(op, theta_in, weight_in);
  const int64_t b = theta_in.size(0), c = theta_in.size(1), n = theta_in.size(2);
  const int64_t k = weight_in.size(0);
  check_grad(op, grad_in, theta_in, {b, k, n});
  TORCH_CHECK_VALUE(coeff_in.sizes() == at::IntArrayRef({b, 2 * c, k}), op, ": coefficients must have shape [",
                    b, ", ", 2 * c, ", ", k, "], got ", coeff_in.sizes());
  TORCH_CHECK_VALUE(coeff_in.device() == theta_in.device(), op, ": coefficients must be on the device of theta (",
                    theta_in.device(), "), got ", coeff_in.device());

  const at::Tensor theta = as_compute(theta_in), phi = as_compute(phi_in);
  const at::Tensor weight = as_compute(weight_in), grad = as_compute(grad_in);
  const at::Tensor w_in = weight.narrow(1, 0, n), w_out = weight.narrow(1, n, n);
  const at::Tensor coeff_t = as_compute(coeff_in).to(theta.scalar_type());  // [A_b^T ; B_b^T], [B, 2C', K]

  // [dA_b | dB_b] = g_b [theta_b ; phi_b]^T, [B, K, 2C'] (the large operand g untransposed).
  const at::Tensor dcoeff = at::bmm(grad, stack_channels(theta, phi).transpose(1, 2));
  const at::Tensor da_t = flat(dcoeff.narrow(2, 0, c).transpose(1, 2).contiguous());  // [B*C', K]
  const at::Tensor db_t = flat(dcoeff.narrow(2, c, c).transpose(1, 2).contiguous());

  // dtheta_b = A_b^T g_b + dB_b^T W_out,  dphi_b = B_b^T g_b + dA_b^T W_in.
  at::Tensor dtheta = at::mm(db_t, w_out).view({b, c, n});
  dtheta.baddbmm_(coeff_t.narrow(1, 0, c), grad);
  at::Tensor dphi = at::mm(da_t, w_in).view({b, c, n});
  dphi.baddbmm_(coeff_t.narrow(1, c, c), grad);

  // dW_in = sum_b dA_b phi_b,  dW_out = sum_b dB_b theta_b: one GEMM each over the batch.
  at::Tensor dweight = at::zeros({k, 2 * n}, weight.options());
  at::Tensor dw_in = dweight.narrow(1, 0, n), dw_out = dweight.narrow(1, n, n);
  sum_of_products(dw_in, da_t, phi);
  sum_of_products(dw_out, db_t, theta);

  const auto dtype = theta_in.scalar_type();
  return {dtheta.to(dtype), dphi.to(dtype), dweight.to(dtype)};
}

// rga_ops::relation_stack_backward. With gtop = grad[:, :N] and gbot = grad[:, N:] (so dG = gtop^T + gbot):
//   dtheta = phi dG^T = phi gtop + phi gbot^T,   dphi = theta dG = theta gtop^T + theta gbot.
inline std::tuple<at::Tensor, at::Tensor> relation_stack_backward(const at::Tensor& grad_in,
                                                                  const at::Tensor& theta_in,
                                                                  const at::Tensor& phi_in) {
  constexpr const char* op = "rga_ops::relation_stack_backward";
  check_embeddings(op, theta_in, phi_in);
  const int64_t b = theta_in.size(0), n = theta_in.size(2);
  check_grad(op, grad_in, theta_in, {b, 2 * n, n});
  const at::Tensor theta = as_compute(theta_in), phi = as_compute(phi_in);
  const at::Tensor grad = as_compute(grad_in);
  const at::Tensor gtop = grad.narrow(1, 0, n), gbot = grad.narrow(1, n, n);
  at::Tensor dtheta = at::bmm(phi, gtop).baddbmm_(phi, gbot.transpose(1, 2));
  at::Tensor dphi = at::bmm(theta, gbot).baddbmm_(theta, gtop.transpose(1, 2));
  const auto dtype = theta_in.scalar_type();
  return {dtheta.to(dtype), dphi.to(dtype)};
}

}  // namespace rga_ops::relation_gemms
