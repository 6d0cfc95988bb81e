// A BatchNorm as a per-channel affine map, y = scale * x + shift with scale = weight * invstd and
// shift = bias - mean * scale: what batch_norm_relu_conv1x1's CPU and CUDA kernels apply (and
// differentiate) in place of the normalisation.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace rga_ops {

struct FoldedBatchNorm {
  at::Tensor mean, invstd, scale, shift;  // [K] each, contiguous, in `dtype`
};

inline FoldedBatchNorm fold_batch_norm(at::ScalarType dtype, const at::Tensor& mean, const at::Tensor& var,
                                       const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& bias, double eps) {
  FoldedBatchNorm f;
  f.mean = mean.detach().to(dtype).contiguous();
  f.invstd = (var.detach().to(dtype) + eps).rsqrt().contiguous();
  f.scale = weight ? (f.invstd * weight->detach().to(dtype)).contiguous() : f.invstd;
  f.shift = (-f.mean * f.scale).contiguous();
  if (bias) {
    f.shift = (f.shift + bias->detach().to(dtype)).contiguous();
  }
  return f;
}

}  // namespace rga_ops
