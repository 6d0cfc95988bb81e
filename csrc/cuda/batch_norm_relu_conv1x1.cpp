// batch_norm_relu_conv1x1 on CUDA: out_b = W relu(scale * x_b + shift), where
// scale and shift fold the BatchNorm (mean, var, weight, bias) per channel.
// Composed of ATen ops on the current stream (elementwise kernels, reductions,
// cuBLAS): what the op is for, keeping only x for backward, holds as on the CPU,
// since the activation is a temporary of the forward and recomputed in the
// backward. Computed in float32 for half/bfloat16. Host code only.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../batch_norm_fold.h"
#include "../checks.h"
#include "../compute_dtype.h"
#include "device_guard.h"

namespace rga_ops::cuda {
namespace {

// relu(scale * x + shift), [B, K, N].
at::Tensor activation(const at::Tensor& x, const FoldedBatchNorm& f) {
  return at::addcmul(f.shift.view({-1, 1}), x, f.scale.view({-1, 1})).relu_();
}

at::Tensor batch_norm_relu_conv1x1_cuda(const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& var,
                                        const std::optional<at::Tensor>& bn_weight,
                                        const std::optional<at::Tensor>& bn_bias, const at::Tensor& conv_weight,
                                        bool /*training*/, double eps) {
  const auto guard = device_guard(x_in);
  check_batch_norm_relu_conv_inputs("rga_ops::batch_norm_relu_conv1x1", x_in, mean, var, bn_weight, bn_bias,
                                    conv_weight);
  const at::Tensor x = as_compute(x_in), w = as_compute(conv_weight);
  const int64_t b_dim = x.size(0);
  const at::Tensor y = activation(x, fold_batch_norm(x.scalar_type(), mean, var, bn_weight, bn_bias, eps));
  return at::bmm(w.expand({b_dim, w.size(0), w.size(1)}), y).to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_conv1x1_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& var,
    const std::optional<at::Tensor>& bn_weight, const std::optional<at::Tensor>& bn_bias,
    const at::Tensor& conv_weight, bool training, double eps) {
  constexpr const char* op = "rga_ops::batch_norm_relu_conv1x1_backward";
  const auto guard = device_guard(x_in);
  check_batch_norm_relu_conv_inputs(op, x_in, mean, var, bn_weight, bn_bias, conv_weight);
  check_grad(op, grad_in, x_in, {x_in.size(0), conv_weight.size(0), x_in.size(2)});
  const at::Tensor x = as_compute(x_in), w = as_compute(conv_weight), grad = as_compute(grad_in);
  const FoldedBatchNorm f = fold_batch_norm(x.scalar_type(), mean, var, bn_weight, bn_bias, eps);
  const int64_t b_dim = x.size(0), k_dim = x.size(1), n = x.size(2), h_dim = w.size(0);

  at::Tensor y = activation(x, f);
  const at::Tensor grad_conv = at::bmm(grad, y.transpose(1, 2)).sum(0);  // sum_b g_b y_b^T, [H, K]
  // dz = W^T g_b where y > 0 (ReLU's gradient), the gradient at the BatchNorm's output.
  at::Tensor dz = at::threshold_backward(at::bmm(w.t().expand({b_dim, k_dim, h_dim}), grad), y, 0);
  y.reset();
  at::Tensor centred = x - f.mean.view({-1, 1});
  const at::Tensor sum_dz = dz.sum(at::IntArrayRef{0, 2});                        // [K]
  const at::Tensor sum_dz_centred = (dz * centred).sum(at::IntArrayRef{0, 2});  // [K]
  // d bias = sum dz;  d weight = sum dz * xhat = invstd * sum dz (x - mean).
  const at::Tensor& invstd = f.invstd;
  const at::Tensor grad_bias = sum_dz, grad_weight = sum_dz_centred * invstd;
  if (training) {  // through the batch statistics: dx = scale (dz - mean(dz) - (x - mean) invstd^2 mean(dz (x - mean)))
    const double count = static_cast<double>(b_dim * n);
    const at::Tensor c1 = (sum_dz / count).view({-1, 1});
    const at::Tensor c2 = (sum_dz_centred * invstd * invstd / count).view({-1, 1});
    dz.sub_(c1).sub_(centred.mul_(c2));
  }
  dz.mul_(f.scale.view({-1, 1}));
  const auto weight_dtype = bn_weight ? bn_weight->scalar_type() : x_in.scalar_type();
  const auto bias_dtype = bn_bias ? bn_bias->scalar_type() : x_in.scalar_type();
  return {dz.to(x_in.scalar_type()), grad_weight.to(weight_dtype), grad_bias.to(bias_dtype),
          grad_conv.to(conv_weight.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(rga_ops, CUDA, m) {
  m.impl("batch_norm_relu_conv1x1", &batch_norm_relu_conv1x1_cuda);
  m.impl("batch_norm_relu_conv1x1_backward", &batch_norm_relu_conv1x1_backward_cuda);
}

}  // namespace rga_ops::cuda
