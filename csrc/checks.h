// Input validation shared by every kernel of every op: each message names the
// op, the argument, what was expected and what was given. rga_ops/_checks.py is the
// Python twin (wrappers, fake kernels, Triton launches): the same checks in the same
// words, shapes written [2, 3, 5] and dtypes as Python names them (torch.float32).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace rga_ops {

// The dtype as Python prints it (torch.float32), not as c10 does (Float).
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

inline void check_float_tensor(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.is_floating_point(), op, ": ", name,
              " must be a floating-point tensor, got dtype ", dtype_name(t.scalar_type()));
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim,
                      const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must have ", dim, " dimensions ", layout,
              ", got shape ", t.sizes());
}

// theta and phi: the two embeddings [B, C', N] of one relation branch.
inline void check_embeddings(const char* op, const at::Tensor& theta, const at::Tensor& phi) {
  check_dim(op, "theta", theta, 3, "[B, C', N]");
  check_dim(op, "phi", phi, 3, "[B, C', N]");
  check_float_tensor(op, "theta", theta);
  TORCH_CHECK_TYPE(phi.scalar_type() == theta.scalar_type(), op,
              ": phi must have the dtype of theta (", dtype_name(theta.scalar_type()), "), got ",
              dtype_name(phi.scalar_type()));
  TORCH_CHECK_VALUE(phi.device() == theta.device(), op, ": phi must be on the device of theta (",
              theta.device(), "), got ", phi.device());
  TORCH_CHECK_VALUE(phi.sizes() == theta.sizes(), op,
              ": phi must have the shape of theta [B, C', N] = ", theta.sizes(), ", got ",
              phi.sizes());
  TORCH_CHECK_VALUE(theta.size(1) > 0 && theta.size(2) > 0, op,
              ": theta must have C' > 0 and N > 0, got shape ", theta.sizes());
}

// weight: the 1x1 conv of the stacked relation, [K, 2N] (a [K, 2N, 1, 1] conv weight viewed 2-D).
inline void check_projection_weight(const char* op, const at::Tensor& theta,
                                    const at::Tensor& weight) {
  check_dim(op, "weight", weight, 2, "[K, 2N]");
  TORCH_CHECK_TYPE(weight.scalar_type() == theta.scalar_type(), op,
              ": weight must have the dtype of theta (", dtype_name(theta.scalar_type()), "), got ",
              dtype_name(weight.scalar_type()));
  TORCH_CHECK_VALUE(weight.device() == theta.device(), op,
              ": weight must be on the device of theta (", theta.device(), "), got ",
              weight.device());
  TORCH_CHECK_VALUE(weight.size(1) == 2 * theta.size(2), op, ": weight must be [K, 2N] = [K, ",
              2 * theta.size(2), "] for N = ", theta.size(2), ", got shape ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(0) > 0, op, ": weight must have K > 0 rows, got shape ",
              weight.sizes());
}

inline void check_grad(const char* op, const at::Tensor& grad, const at::Tensor& like,
                       at::IntArrayRef expected_shape) {
  TORCH_CHECK_VALUE(grad.sizes() == expected_shape, op, ": grad must have shape ", expected_shape,
              ", got ", grad.sizes());
  TORCH_CHECK_TYPE(grad.scalar_type() == like.scalar_type(), op, ": grad must have dtype ",
              dtype_name(like.scalar_type()), ", got ", dtype_name(grad.scalar_type()));
  TORCH_CHECK_VALUE(grad.device() == like.device(), op, ": grad must be on device ", like.device(),
              ", got ", grad.device());
}

}  // namespace rga_ops

namespace rga_ops {

// ha_soft_gate: x [B, C, H, W], s [B, 1, H, W], alpha [B, C], beta [C].
inline void check_soft_gate_inputs(const char* op, const at::Tensor& x, const at::Tensor& s,
                                   const at::Tensor& alpha, const at::Tensor& beta) {
  check_dim(op, "x", x, 4, "[B, C, H, W]");
  check_float_tensor(op, "x", x);
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK_VALUE(s.dim() == 4 && s.size(0) == b && s.size(1) == 1 && s.size(2) == h && s.size(3) == w,
                    op, ": s must be [B, 1, H, W] = [", b, ", 1, ", h, ", ", w, "], got shape ", s.sizes());
  TORCH_CHECK_VALUE(alpha.dim() == 2 && alpha.size(0) == b && alpha.size(1) == c, op,
                    ": alpha must be [B, C] = [", b, ", ", c, "], got shape ", alpha.sizes());
  TORCH_CHECK_VALUE(beta.dim() == 1 && beta.size(0) == c, op, ": beta must be [C] = [", c,
                    "], got shape ", beta.sizes());
  TORCH_CHECK_TYPE(s.scalar_type() == x.scalar_type(), op, ": s must have the dtype of x (",
                   dtype_name(x.scalar_type()), "), got ", dtype_name(s.scalar_type()));
  TORCH_CHECK_TYPE(beta.scalar_type() == alpha.scalar_type(), op,
                   ": beta must have the dtype of alpha (", dtype_name(alpha.scalar_type()), "), got ",
                   dtype_name(beta.scalar_type()));
  TORCH_CHECK_TYPE(alpha.scalar_type() == x.scalar_type() || alpha.scalar_type() == at::kFloat, op,
                   ": alpha must have the dtype of x (", dtype_name(x.scalar_type()), ") or float32, got ",
                   dtype_name(alpha.scalar_type()));
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"s", s}, {"alpha", alpha}, {"beta", beta}}) {
    TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " must be on the device of x (",
                      x.device(), "), got ", t.device());
  }
}

}  // namespace rga_ops

namespace rga_ops {

// batch_norm_relu_conv1x1: x [B, K, N], mean/var/bn_weight/bn_bias [K], conv_weight [H, K].
inline void check_batch_norm_relu_conv_inputs(const char* op, const at::Tensor& x, const at::Tensor& mean,
                                              const at::Tensor& var, const std::optional<at::Tensor>& bn_weight,
                                              const std::optional<at::Tensor>& bn_bias,
                                              const at::Tensor& conv_weight) {
  check_dim(op, "x", x, 3, "[B, K, N]");
  check_float_tensor(op, "x", x);
  const int64_t k = x.size(1);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"mean", &mean}, {"var", &var},
                                {"bn_weight", bn_weight ? &*bn_weight : nullptr},
                                {"bn_bias", bn_bias ? &*bn_bias : nullptr}}) {
    if (t == nullptr) continue;
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == k, op, ": ", name, " must be [K] = [", k, "], got shape ",
                      t->sizes());
    TORCH_CHECK_VALUE(t->device() == x.device(), op, ": ", name, " must be on the device of x (", x.device(),
                      "), got ", t->device());
  }
  TORCH_CHECK_VALUE(conv_weight.dim() == 2 && conv_weight.size(1) == k, op,
                    ": conv_weight must be [H, K] with K = ", k, ", got shape ", conv_weight.sizes());
  TORCH_CHECK_TYPE(conv_weight.scalar_type() == x.scalar_type(), op, ": conv_weight must have the dtype of x (",
                   dtype_name(x.scalar_type()), "), got ", dtype_name(conv_weight.scalar_type()));
  TORCH_CHECK_VALUE(conv_weight.device() == x.device(), op, ": conv_weight must be on the device of x (",
                    x.device(), "), got ", conv_weight.device());
}

}  // namespace rga_ops
