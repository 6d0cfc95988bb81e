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
#include <cstring>
#include <vector>

#include "../checks.h"
#include "../compute_dtype.h"
#include "vectorized_gate.h"

namespace rga_ops::cpu {
namespace {

// float32: eight lanes at a time in GCC/Clang vector types (AVX2 in the x86-64-v3 clone of
// RGA_OPS_MULTIVERSION, two SSE registers in the baseline one), the same arithmetic as the
// scalar soft_gate of vectorized_gate.h, which does the tails. The backward keeps its sums in
// registers and has no aliasing checks to make: the auto-vectorised row loop it replaces was
// 2-2.5x slower.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte vectors in always-inlined helpers only
#endif
constexpr int64_t kLanes = 8;  // f32x8 and load8: vectorized_gate.h

__attribute__((always_inline)) inline void store8(float* p, const f32x8& v) { std::memcpy(p, &v, sizeof(v)); }

// soft_gate (sigmoid(relu(z)) with exp_nonpositive's polynomial) on eight lanes.
__attribute__((always_inline)) inline f32x8 soft_gate8(const f32x8& z) {
  const f32x8 zero = {};
  f32x8 x = z > zero ? -z : zero;
  x = x < -87.3f ? zero - 87.3f : x;
  const f32x8 t = x * 1.44269504088896341f;
  const f32x8 n = (t + 12582912.0f) - 12582912.0f;
  f32x8 r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  f32x8 p = zero + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const i32x8 bits = (__builtin_convertvector(n, i32x8) + 127) << 23;
  f32x8 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return 1.0f / (1.0f + p * scale);
}

__attribute__((always_inline)) inline float lane_sum(const f32x8& v) {
  float total = 0.0f;
  for (int64_t j = 0; j < kLanes; ++j) {
    total += v[j];
  }
  return total;
}

// Rows [begin, end) of [B C, P]: out = x * gate(alpha[row] * s[b] + beta[c]).
RGA_OPS_MULTIVERSION
void gate_forward_rows_f32(const float* x, const float* s, const float* alpha, const float* beta, float* out,
                           int64_t begin, int64_t end, int64_t c_dim, int64_t p) {
  for (int64_t row = begin; row < end; ++row) {
    const float a = alpha[row], b = beta[row % c_dim];
    const float* xr = x + row * p;
    const float* sr = s + row / c_dim * p;
    float* o = out + row * p;
    int64_t i = 0;
    for (; i + kLanes <= p; i += kLanes) {
      store8(o + i, load8(xr + i) * soft_gate8(a * load8(sr + i) + b));
    }
    for (; i < p; ++i) {
      o[i] = xr[i] * soft_gate(a * sr[i] + b);
    }
  }
}

// One item's C rows: dx = grad * g; dz = grad * x * g (1 - g) where z > 0; ds += dz alpha
// (ds zeroed by the caller); dalpha[c] = sum(dz s), dbeta[c] = sum(dz).
RGA_OPS_MULTIVERSION
void gate_backward_item_f32(const float* grad, const float* x, const float* s, const float* alpha,
                            const float* beta, float* dx, float* ds, float* dalpha, float* dbeta, int64_t c_dim,
                            int64_t p) {
  const f32x8 zero = {};
  for (int64_t c = 0; c < c_dim; ++c) {
    const float a = alpha[c], b = beta[c];
    const float* gr = grad + c * p;
    const float* xr = x + c * p;
    float* dxr = dx + c * p;
    f32x8 lanes_alpha = zero, lanes_beta = zero;
    int64_t i = 0;
    for (; i + kLanes <= p; i += kLanes) {
      const f32x8 sv = load8(s + i), gv = load8(gr + i);
      const f32x8 z = a * sv + b;
      const f32x8 g = soft_gate8(z);
      store8(dxr + i, gv * g);
      const f32x8 dz = z > zero ? gv * load8(xr + i) * g * (1.0f - g) : zero;
      lanes_alpha += dz * sv;
      lanes_beta += dz;
      store8(ds + i, load8(ds + i) + dz * a);
    }
    float total_alpha = lane_sum(lanes_alpha), total_beta = lane_sum(lanes_beta);
    for (; i < p; ++i) {
      const float z = a * s[i] + b;
      const float g = soft_gate(z);
      dxr[i] = gr[i] * g;
      const float dz = z > 0.0f ? gr[i] * xr[i] * g * (1.0f - g) : 0.0f;
      total_alpha += dz * s[i];
      total_beta += dz;
      ds[i] += dz * a;
    }
    dalpha[c] = total_alpha;
    dbeta[c] = total_beta;
  }
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

// The kernels' loops per dtype: float64 row by row, float32 by the functions above.
void gate_forward_rows(const double* x, const double* s, const double* alpha, const double* beta, double* out,
                       int64_t begin, int64_t end, int64_t c_dim, int64_t p) {
  for (int64_t row = begin; row < end; ++row) {
    gate_forward_row(x + row * p, s + row / c_dim * p, alpha[row], beta[row % c_dim], out + row * p, p);
  }
}

void gate_forward_rows(const float* x, const float* s, const float* alpha, const float* beta, float* out,
                       int64_t begin, int64_t end, int64_t c_dim, int64_t p) {
  gate_forward_rows_f32(x, s, alpha, beta, out, begin, end, c_dim, p);
}

void gate_backward_item(const double* grad, const double* x, const double* s, const double* alpha,
                        const double* beta, double* dx, double* ds, double* dalpha, double* dbeta, int64_t c_dim,
                        int64_t p) {
  for (int64_t c = 0; c < c_dim; ++c) {
    gate_backward_row(grad + c * p, x + c * p, s, alpha[c], beta[c], dx + c * p, ds, p, dalpha + c, dbeta + c);
  }
}

void gate_backward_item(const float* grad, const float* x, const float* s, const float* alpha, const float* beta,
                        float* dx, float* ds, float* dalpha, float* dbeta, int64_t c_dim, int64_t p) {
  gate_backward_item_f32(grad, x, s, alpha, beta, dx, ds, dalpha, dbeta, c_dim, p);
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
                     [&](int64_t begin, int64_t end) { gate_forward_rows(xp, sp, ap, bp, op, begin, end, c_dim, p); });
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
        const int64_t row = b * c_dim;
        gate_backward_item(gp + row * p, xp + row * p, sp + b * p, ap + row, bp, dxp + row * p, dsp + b * p, dap + row,
                           dbp + row, c_dim, p);
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
