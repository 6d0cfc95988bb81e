// ha_soft_gate on the CPU: out = x * sigmoid(relu(alpha[b, c] * s[b, p] + beta[c])),
// HA's soft-attention gate with the rank-1 1x1 conv and its BatchNorm folded into
// alpha and beta (docs/algebra.md §3). One read of x and one write of out per element;
// the backward recomputes the gate instead of keeping it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../checks.h"
#include "../compute_dtype.h"
#include "vectorized_gate.h"

namespace rga_ops::cpu {
namespace {

// float32 rows: vectorised.
// out[i] = x[i] * gate(a * s[i] + b).
RGA_OPS_MULTIVERSION
void gate_forward_f32(const float* x, const float* s, float a, float b, float* out, int64_t p) {
  for (int64_t i = 0; i < p; ++i) {
    out[i] = x[i] * soft_gate(a * s[i] + b);
  }
}

// dx = grad * g; dz = grad * x * g (1 - g) where z > 0; ds[i] += dz a;
// returns sum(dz s) in *dalpha and sum(dz) in *dbeta.
RGA_OPS_MULTIVERSION
void gate_backward_f32(const float* grad, const float* x, const float* s, float a, float b, float* dx,
                              float* ds, int64_t p, float* dalpha, float* dbeta) {
  constexpr int64_t kLanes = 8;
  float lane_alpha[kLanes] = {}, lane_beta[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= p; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      const float z = a * s[i + j] + b;
      const float g = soft_gate(z);
      dx[i + j] = grad[i + j] * g;
      const float dz = z > 0.0f ? grad[i + j] * x[i + j] * g * (1.0f - g) : 0.0f;
      lane_alpha[j] += dz * s[i + j];
      lane_beta[j] += dz;
      ds[i + j] += dz * a;
    }
  }
  float total_alpha = 0.0f, total_beta = 0.0f;
  for (; i < p; ++i) {
    const float z = a * s[i] + b;
    const float g = soft_gate(z);
    dx[i] = grad[i] * g;
    const float dz = z > 0.0f ? grad[i] * x[i] * g * (1.0f - g) : 0.0f;
    total_alpha += dz * s[i];
    total_beta += dz;
    ds[i] += dz * a;
  }
  for (int64_t j = 0; j < kLanes; ++j) {
    total_alpha += lane_alpha[j];
    total_beta += lane_beta[j];
  }
  *dalpha = total_alpha;
  *dbeta = total_beta;
}

// float64 rows (and the reference for what the float32 rows compute).
void gate_forward_row(const double* x, const double* s, double a, double b, double* out, int64_t p) {
  for (int64_t i = 0; i < p; ++i) {
    const double z = a * s[i] + b;
    out[i] = x[i] * (z > 0 ? 1 / (1 + std::exp(-z)) : 0.5);
  }
}

void gate_backward_row(const double* grad, const double* x, const double* s, double a, double b, double* dx,
                       double* ds, int64_t p, double* dalpha, double* dbeta) {
  double total_alpha = 0, total_beta = 0;
  for (int64_t i = 0; i < p; ++i) {
    const double z = a * s[i] + b;
    const double g = z > 0 ? 1 / (1 + std::exp(-z)) : 0.5;
    dx[i] = grad[i] * g;
    const double dz = z > 0 ? grad[i] * x[i] * g * (1 - g) : 0;
    total_alpha += dz * s[i];
    total_beta += dz;
    ds[i] += dz * a;
  }
  *dalpha = total_alpha;
  *dbeta = total_beta;
}

void gate_forward_row(const float* x, const float* s, float a, float b, float* out, int64_t p) {
  gate_forward_f32(x, s, a, b, out, p);
}

void gate_backward_row(const float* grad, const float* x, const float* s, float a, float b, float* dx, float* ds,
                       int64_t p, float* dalpha, float* dbeta) {
  gate_backward_f32(grad, x, s, a, b, dx, ds, p, dalpha, dbeta);
}

at::Tensor ha_soft_gate_cpu(const at::Tensor& x_in, const at::Tensor& s_in, const at::Tensor& alpha_in,
                            const at::Tensor& beta_in) {
  check_soft_gate_inputs("rga_ops::ha_soft_gate", x_in, s_in, alpha_in, beta_in);
  const at::Tensor x = as_contiguous_compute(x_in), s = as_contiguous_compute(s_in);
  const at::Tensor alpha = alpha_in.detach().to(x.scalar_type()).contiguous();
  const at::Tensor beta = beta_in.detach().to(x.scalar_type()).contiguous();
  const int64_t b_dim = x.size(0), c_dim = x.size(1), p = x.size(2) * x.size(3);
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ha_soft_gate_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const scalar_t* ap = alpha.const_data_ptr<scalar_t>();
    const scalar_t* bp = beta.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, b_dim * c_dim, std::max<int64_t>(1, 32768 / std::max<int64_t>(p, 1)),
                     [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        gate_forward_row(xp + row * p, sp + row / c_dim * p, ap[row], bp[row % c_dim], op + row * p, p);
      }
    });
  });
  return out.to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ha_soft_gate_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& s_in, const at::Tensor& alpha_in,
    const at::Tensor& beta_in) {
  constexpr const char* op = "rga_ops::ha_soft_gate_backward";
  check_soft_gate_inputs(op, x_in, s_in, alpha_in, beta_in);
  check_grad(op, grad_in, x_in, x_in.sizes());
  const at::Tensor x = as_contiguous_compute(x_in), s = as_contiguous_compute(s_in), grad = as_contiguous_compute(grad_in);
  const at::Tensor alpha = alpha_in.detach().to(x.scalar_type()).contiguous();
  const at::Tensor beta = beta_in.detach().to(x.scalar_type()).contiguous();
  const int64_t b_dim = x.size(0), c_dim = x.size(1), p = x.size(2) * x.size(3);
  at::Tensor dx = at::empty_like(x);
  at::Tensor ds = at::zeros_like(s);
  at::Tensor dalpha = at::empty_like(alpha);
  at::Tensor dbeta_rows = at::empty({b_dim, c_dim}, alpha.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ha_soft_gate_backward_cpu", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const scalar_t* ap = alpha.const_data_ptr<scalar_t>();
    const scalar_t* bp = beta.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    scalar_t* dsp = ds.data_ptr<scalar_t>();
    scalar_t* dap = dalpha.data_ptr<scalar_t>();
    scalar_t* dbp = dbeta_rows.data_ptr<scalar_t>();
    // One task per batch item: ds[b, :] sums over the channels of that item only.
    at::parallel_for(0, b_dim, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t c = 0; c < c_dim; ++c) {
          const int64_t row = b * c_dim + c;
          gate_backward_row(gp + row * p, xp + row * p, sp + b * p, ap[row], bp[c], dxp + row * p, dsp + b * p, p,
                            dap + row, dbp + row);
        }
      }
    });
  });
  return {dx.to(x_in.scalar_type()), ds.to(s_in.scalar_type()), dalpha.to(alpha_in.scalar_type()),
          dbeta_rows.sum(0).to(beta_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(rga_ops, CPU, m) {
  m.impl("ha_soft_gate", &ha_soft_gate_cpu);
  m.impl("ha_soft_gate_backward", &ha_soft_gate_backward_cpu);
}

}  // namespace rga_ops::cpu
