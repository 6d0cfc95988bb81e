// ha_soft_gate on the CPU: out = x * sigmoid(relu(alpha[b, c] * s[b, p] + beta[c])),
// HA's soft-attention gate with the rank-1 1x1 conv and its BatchNorm folded into
// alpha and beta (spec/MATH.md §3). One read of x and one write of out per element;
// the backward recomputes the gate instead of keeping it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../checks.h"

namespace rga_ops::cpu {
namespace {

// sigmoid(relu(z)): 0.5 where z <= 0.
template <typename acc_t>
inline acc_t gate_of(acc_t z) {
  return z > acc_t(0) ? acc_t(1) / (acc_t(1) + std::exp(-z)) : acc_t(0.5);
}

template <typename scalar_t, typename acc_t>
void gate_row(const scalar_t* x, const scalar_t* s, acc_t a, acc_t b, scalar_t* out, int64_t p) {
  for (int64_t i = 0; i < p; ++i) {
    const acc_t g = gate_of<acc_t>(a * static_cast<acc_t>(s[i]) + b);
    out[i] = static_cast<scalar_t>(static_cast<acc_t>(x[i]) * g);
  }
}

// One row (b, c) of the backward: writes dx, accumulates ds[b, :], returns (dalpha, dbeta) of the row.
template <typename scalar_t, typename acc_t>
std::pair<acc_t, acc_t> gate_row_backward(const scalar_t* grad, const scalar_t* x, const scalar_t* s,
                                          acc_t a, acc_t b, scalar_t* dx, acc_t* ds, int64_t p) {
  acc_t dalpha = 0, dbeta = 0;
  for (int64_t i = 0; i < p; ++i) {
    const acc_t si = static_cast<acc_t>(s[i]);
    const acc_t z = a * si + b;
    const acc_t g = gate_of<acc_t>(z);
    const acc_t gi = static_cast<acc_t>(grad[i]);
    dx[i] = static_cast<scalar_t>(gi * g);
    const acc_t dz = z > acc_t(0) ? gi * static_cast<acc_t>(x[i]) * g * (acc_t(1) - g) : acc_t(0);
    dalpha += dz * si;
    dbeta += dz;
    ds[i] += dz * a;
  }
  return {dalpha, dbeta};
}

at::Tensor ha_soft_gate_cpu(const at::Tensor& x_in, const at::Tensor& s_in, const at::Tensor& alpha_in,
                            const at::Tensor& beta_in) {
  check_soft_gate_inputs("rga_ops::ha_soft_gate", x_in, s_in, alpha_in, beta_in);
  const at::Tensor x = x_in.detach().contiguous(), s = s_in.detach().contiguous();
  const int64_t b_dim = x.size(0), c_dim = x.size(1), p = x.size(2) * x.size(3);
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ha_soft_gate_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor alpha = alpha_in.detach().to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const at::Tensor beta = beta_in.detach().to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const acc_t* ap = alpha.const_data_ptr<acc_t>();
    const acc_t* bp = beta.const_data_ptr<acc_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, b_dim * c_dim, std::max<int64_t>(1, 32768 / std::max<int64_t>(p, 1)),
                     [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / c_dim, c = row % c_dim;
        gate_row<scalar_t, acc_t>(xp + row * p, sp + b * p, ap[row], bp[c], op + row * p, p);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ha_soft_gate_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& s_in, const at::Tensor& alpha_in,
    const at::Tensor& beta_in) {
  constexpr const char* op = "rga_ops::ha_soft_gate_backward";
  check_soft_gate_inputs(op, x_in, s_in, alpha_in, beta_in);
  check_grad(op, grad_in, x_in, x_in.sizes());
  const at::Tensor x = x_in.detach().contiguous(), s = s_in.detach().contiguous();
  const at::Tensor grad = grad_in.detach().contiguous();
  const int64_t b_dim = x.size(0), c_dim = x.size(1), p = x.size(2) * x.size(3);
  at::Tensor dx = at::empty_like(x);
  at::Tensor ds, dalpha, dbeta;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ha_soft_gate_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor alpha = alpha_in.detach().to(acc_type).contiguous();
    const at::Tensor beta = beta_in.detach().to(acc_type).contiguous();
    at::Tensor ds_acc = at::zeros({b_dim, 1, x.size(2), x.size(3)}, x.options().dtype(acc_type));
    at::Tensor dalpha_acc = at::empty({b_dim, c_dim}, x.options().dtype(acc_type));
    at::Tensor dbeta_rows = at::empty({b_dim, c_dim}, x.options().dtype(acc_type));
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const acc_t* ap = alpha.const_data_ptr<acc_t>();
    const acc_t* bp = beta.const_data_ptr<acc_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    acc_t* dsp = ds_acc.data_ptr<acc_t>();
    acc_t* dap = dalpha_acc.data_ptr<acc_t>();
    acc_t* dbp = dbeta_rows.data_ptr<acc_t>();
    // One task per batch item: ds[b, :] sums over the channels of that item only.
    at::parallel_for(0, b_dim, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t c = 0; c < c_dim; ++c) {
          const int64_t row = b * c_dim + c;
          const auto [da, db] = gate_row_backward<scalar_t, acc_t>(
              gp + row * p, xp + row * p, sp + b * p, ap[row], bp[c], dxp + row * p, dsp + b * p, p);
          dap[row] = da;
          dbp[row] = db;
        }
      }
    });
    ds = ds_acc.to(s_in.scalar_type());
    dalpha = dalpha_acc.to(alpha_in.scalar_type());
    dbeta = dbeta_rows.sum(0).to(beta_in.scalar_type());
  });
  return {dx, ds, dalpha, dbeta};
}

}  // namespace

TORCH_LIBRARY_IMPL(rga_ops, CPU, m) {
  m.impl("ha_soft_gate", &ha_soft_gate_cpu);
  m.impl("ha_soft_gate_backward", &ha_soft_gate_backward_cpu);
}

}  // namespace rga_ops::cpu
