// batch_norm_relu_conv1x1 on the CPU: out_b = W relu(scale * x_b + shift), where
// scale and shift fold the BatchNorm (mean, var, weight, bias) per channel.
// The activation is formed one batch item at a time in a buffer that stays in
// cache and goes straight into the GEMM; the backward recomputes it the same way
// and fuses the ReLU mask, BatchNorm's reductions and its input gradient into two
// passes over x.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <cmath>

#include "../batch_norm_fold.h"
#include "../checks.h"
#include "../compute_dtype.h"
#include "vectorized_gate.h"

namespace rga_ops::cpu {
namespace {

template <typename T>
inline void affine_relu_loop(const T* x, T scale, T shift, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i] * scale + shift;
    y[i] = v > T(0) ? v : T(0);
  }
}

// dz = dy where y > 0, else 0 (in place); returns sum(dz) and sum(dz * (x - mean)).
template <typename T>
inline void relu_mask_loop(const T* x, const T* y, T* dz, T mean, int64_t n, T* sum_dz, T* sum_dzx) {
  constexpr int64_t kLanes = 8;
  T lane_dz[kLanes] = {}, lane_dzx[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      const T d = y[i + j] > T(0) ? dz[i + j] : T(0);
      dz[i + j] = d;
      lane_dz[j] += d;
      lane_dzx[j] += d * (x[i + j] - mean);
    }
  }
  T total_dz = 0, total_dzx = 0;
  for (; i < n; ++i) {
    const T d = y[i] > T(0) ? dz[i] : T(0);
    dz[i] = d;
    total_dz += d;
    total_dzx += d * (x[i] - mean);
  }
  for (int64_t j = 0; j < kLanes; ++j) {
    total_dz += lane_dz[j];
    total_dzx += lane_dzx[j];
  }
  *sum_dz = total_dz;
  *sum_dzx = total_dzx;
}

// Training-mode BatchNorm input gradient, in place: dx = a (dz - c1 - (x - mean) c2).
template <typename T>
inline void batch_norm_input_grad_loop(const T* x, T* dz, T a, T c1, T c2, T mean, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    dz[i] = a * (dz[i] - c1 - (x[i] - mean) * c2);
  }
}

// float32 rows compiled for AVX2 + FMA too (see vectorized_gate.h); float64 rows as they are.
RGA_OPS_MULTIVERSION
void affine_relu_row(const float* x, float scale, float shift, float* y, int64_t n) {
  affine_relu_loop(x, scale, shift, y, n);
}
RGA_OPS_MULTIVERSION
void relu_mask_row(const float* x, const float* y, float* dz, float mean, int64_t n, float* sum_dz,
                       float* sum_dzx) {
  relu_mask_loop(x, y, dz, mean, n, sum_dz, sum_dzx);
}
RGA_OPS_MULTIVERSION
void batch_norm_input_grad_row(const float* x, float* dz, float a, float c1, float c2, float mean, int64_t n) {
  batch_norm_input_grad_loop(x, dz, a, c1, c2, mean, n);
}
void affine_relu_row(const double* x, double scale, double shift, double* y, int64_t n) {
  affine_relu_loop(x, scale, shift, y, n);
}
void relu_mask_row(const double* x, const double* y, double* dz, double mean, int64_t n, double* sum_dz,
                       double* sum_dzx) {
  relu_mask_loop(x, y, dz, mean, n, sum_dz, sum_dzx);
}
void batch_norm_input_grad_row(const double* x, double* dz, double a, double c1, double c2, double mean,
                                   int64_t n) {
  batch_norm_input_grad_loop(x, dz, a, c1, c2, mean, n);
}

// relu(scale[k] * x + shift[k]) for the K rows of one item, [K, N].
template <typename scalar_t>
void activation(const scalar_t* x, const scalar_t* scale, const scalar_t* shift, scalar_t* y, int64_t k_dim,
                int64_t n) {
  for (int64_t k = 0; k < k_dim; ++k) {
    affine_relu_row(x + k * n, scale[k], shift[k], y + k * n, n);
  }
}

at::Tensor batch_norm_relu_conv1x1_cpu(const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& var,
                                       const std::optional<at::Tensor>& bn_weight,
                                       const std::optional<at::Tensor>& bn_bias, const at::Tensor& conv_weight,
                                       bool /*training*/, double eps) {
  check_batch_norm_relu_conv_inputs("rga_ops::batch_norm_relu_conv1x1", x_in, mean, var, bn_weight, bn_bias,
                                    conv_weight);
  const at::Tensor x = as_contiguous_compute(x_in), w = as_contiguous_compute(conv_weight);
  const FoldedBatchNorm f = fold_batch_norm(x.scalar_type(), mean, var, bn_weight, bn_bias, eps);
  const int64_t b_dim = x.size(0), k_dim = x.size(1), n = x.size(2);
  at::Tensor out = at::empty({b_dim, w.size(0), n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_relu_conv1x1_cpu", [&] {
    const scalar_t* scale = f.scale.const_data_ptr<scalar_t>();
    const scalar_t* shift = f.shift.const_data_ptr<scalar_t>();
    // The workers run ATen ops (mm_out) on tensors made by the caller, maybe under InferenceMode,
    // which is thread-local: give them the caller's thread-local state.
    const at::ThreadLocalState caller_state;
    at::parallel_for(0, b_dim, 1, [&](int64_t begin, int64_t end) {
      const at::ThreadLocalStateGuard state_guard(caller_state);
      at::Tensor y = at::empty({k_dim, n}, x.options());
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* xb = x[b].const_data_ptr<scalar_t>();
        scalar_t* yp = y.data_ptr<scalar_t>();
        activation(xb, scale, shift, yp, k_dim, n);
        at::Tensor out_b = out[b];
        at::mm_out(out_b, w, y);
      }
    });
  });
  return out.to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_conv1x1_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& var,
    const std::optional<at::Tensor>& bn_weight, const std::optional<at::Tensor>& bn_bias,
    const at::Tensor& conv_weight, bool training, double eps) {
  constexpr const char* op = "rga_ops::batch_norm_relu_conv1x1_backward";
  check_batch_norm_relu_conv_inputs(op, x_in, mean, var, bn_weight, bn_bias, conv_weight);
  check_grad(op, grad_in, x_in, {x_in.size(0), conv_weight.size(0), x_in.size(2)});
  const at::Tensor x = as_contiguous_compute(x_in), w = as_contiguous_compute(conv_weight);
  const at::Tensor grad = as_contiguous_compute(grad_in);
  const FoldedBatchNorm f = fold_batch_norm(x.scalar_type(), mean, var, bn_weight, bn_bias, eps);
  const int64_t b_dim = x.size(0), k_dim = x.size(1), n = x.size(2), h_dim = w.size(0);
  at::Tensor dx = at::empty_like(x);
  // Per-item partial sums, reduced over the batch afterwards (no shared accumulators).
  at::Tensor dw_items = at::empty({b_dim, h_dim, k_dim}, x.options());
  at::Tensor sum_dz = at::empty({b_dim, k_dim}, x.options()), sum_dzx = at::empty({b_dim, k_dim}, x.options());
  const at::Tensor w_t = w.t();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_relu_conv1x1_backward_cpu", [&] {
    const scalar_t* scale = f.scale.const_data_ptr<scalar_t>();
    const scalar_t* shift = f.shift.const_data_ptr<scalar_t>();
    const scalar_t* mu = f.mean.const_data_ptr<scalar_t>();
    // The workers run ATen ops (mm_out) on tensors made by the caller, maybe under InferenceMode,
    // which is thread-local: give them the caller's thread-local state.
    const at::ThreadLocalState caller_state;
    at::parallel_for(0, b_dim, 1, [&](int64_t begin, int64_t end) {
      const at::ThreadLocalStateGuard state_guard(caller_state);
      at::Tensor y = at::empty({k_dim, n}, x.options());
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* xb = x[b].const_data_ptr<scalar_t>();
        scalar_t* yp = y.data_ptr<scalar_t>();
        activation(xb, scale, shift, yp, k_dim, n);
        at::Tensor dw_b = dw_items[b], dz_b = dx[b];
        at::mm_out(dw_b, grad[b], y.t());  // dW_b = g_b y_b^T
        at::mm_out(dz_b, w_t, grad[b]);    // dy_b = W^T g_b, masked in place below
        scalar_t* dz = dz_b.data_ptr<scalar_t>();
        scalar_t* sdz = sum_dz[b].data_ptr<scalar_t>();
        scalar_t* sdzx = sum_dzx[b].data_ptr<scalar_t>();
        for (int64_t k = 0; k < k_dim; ++k) {
          relu_mask_row(xb + k * n, yp + k * n, dz + k * n, mu[k], n, sdz + k, sdzx + k);
        }
      }
    });
  });
  const at::Tensor total_dz = sum_dz.sum(0), total_dzx = sum_dzx.sum(0);  // [K]
  // d bias = sum dz;  d weight = sum dz * xhat = invstd * sum dz (x - mean).
  at::Tensor grad_bias = total_dz, grad_weight = total_dzx * f.invstd;
  if (training) {  // BatchNorm through its batch statistics: dx = a (dz - mean(dz) - xhat mean(dz xhat)).
    const double count = static_cast<double>(b_dim * n);
    const at::Tensor c1 = (total_dz / count).contiguous();
    const at::Tensor c2 = (total_dzx * f.invstd * f.invstd / count).contiguous();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_relu_conv1x1_backward_cpu", [&] {
      const scalar_t* scale = f.scale.const_data_ptr<scalar_t>();
      const scalar_t* mu = f.mean.const_data_ptr<scalar_t>();
      const scalar_t* c1p = c1.const_data_ptr<scalar_t>();
      const scalar_t* c2p = c2.const_data_ptr<scalar_t>();
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* dxp = dx.data_ptr<scalar_t>();
      at::parallel_for(0, b_dim * k_dim, 1, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t k = row % k_dim;
          batch_norm_input_grad_row(xp + row * n, dxp + row * n, scale[k], c1p[k], c2p[k], mu[k], n);
        }
      });
    });
  } else {
    dx.mul_(f.scale.view({1, k_dim, 1}));
  }
  const auto weight_dtype = bn_weight ? bn_weight->scalar_type() : x_in.scalar_type();
  const auto bias_dtype = bn_bias ? bn_bias->scalar_type() : x_in.scalar_type();
  return {dx.to(x_in.scalar_type()), grad_weight.to(weight_dtype), grad_bias.to(bias_dtype),
          dw_items.sum(0).to(conv_weight.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(rga_ops, CPU, m) {
  m.impl("batch_norm_relu_conv1x1", &batch_norm_relu_conv1x1_cpu);
  m.impl("batch_norm_relu_conv1x1_backward", &batch_norm_relu_conv1x1_backward_cpu);
}

}  // namespace rga_ops::cpu
