// relation_stack on the CPU: J[b, i, p] = G[b, p, i] and J[b, N + i, p] = G[b, i, p]
// with G = theta^T phi. Tiles of G are computed in a small local buffer and each
// is stored twice (row block and transposed column block); G is never allocated.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "compute_dtype.h"

namespace rga_ops::cpu {
namespace {

constexpr int64_t kTile = 64;

// One tile G[i0:i0+ti, j0:j0+tj] of one batch item, written to both halves of J.
template <typename out_t, typename acc_t>
void stack_tile(const acc_t* theta, const acc_t* phi, out_t* out, int64_t c_dim, int64_t n,
                int64_t i0, int64_t ti, int64_t j0, int64_t tj) {
  acc_t tile[kTile][kTile];
  for (int64_t i = 0; i < ti; ++i) {
    std::fill(tile[i], tile[i] + tj, acc_t(0));
  }
  for (int64_t c = 0; c < c_dim; ++c) {
    const acc_t* th = theta + c * n + i0;
    const acc_t* ph = phi + c * n + j0;
    for (int64_t i = 0; i < ti; ++i) {
      const acc_t a = th[i];
      acc_t* row = tile[i];
      for (int64_t j = 0; j < tj; ++j) {
        row[j] += a * ph[j];
      }
    }
  }
  // Column half: J[N + i, j] = G[i, j], contiguous along j.
  for (int64_t i = 0; i < ti; ++i) {
    out_t* dst = out + (n + i0 + i) * n + j0;
    for (int64_t j = 0; j < tj; ++j) {
      dst[j] = static_cast<out_t>(tile[i][j]);
    }
  }
  // Row half: J[j, i] = G[i, j], contiguous along i.
  for (int64_t j = 0; j < tj; ++j) {
    out_t* dst = out + (j0 + j) * n + i0;
    for (int64_t i = 0; i < ti; ++i) {
      dst[i] = static_cast<out_t>(tile[i][j]);
    }
  }
}

at::Tensor relation_stack_cpu(const at::Tensor& theta_in, const at::Tensor& phi_in) {
  check_embeddings("rga_ops::relation_stack", theta_in, phi_in);
  const at::Tensor theta = as_compute(theta_in).contiguous();
  const at::Tensor phi = as_compute(phi_in).contiguous();
  const int64_t b_dim = theta.size(0), c_dim = theta.size(1), n = theta.size(2);
  at::Tensor out = at::empty({b_dim, 2 * n, n}, theta_in.options());
  const int64_t tiles = (n + kTile - 1) / kTile;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, out.scalar_type(), "relation_stack_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const acc_t* th = theta.const_data_ptr<acc_t>();
        const acc_t* ph = phi.const_data_ptr<acc_t>();
        scalar_t* o = out.data_ptr<scalar_t>();
        at::parallel_for(0, b_dim * tiles * tiles, 1, [&](int64_t begin, int64_t end) {
          for (int64_t t = begin; t < end; ++t) {
            const int64_t b = t / (tiles * tiles);
            const int64_t i0 = (t / tiles % tiles) * kTile;
            const int64_t j0 = (t % tiles) * kTile;
            stack_tile<scalar_t, acc_t>(th + b * c_dim * n, ph + b * c_dim * n,
                                        o + b * 2 * n * n, c_dim, n, i0,
                                        std::min(kTile, n - i0), j0, std::min(kTile, n - j0));
          }
        });
      });
  return out;
}

// With gtop = grad[:, :N] and gbot = grad[:, N:] (so dG = gtop^T + gbot):
//   dtheta = phi dG^T = phi gtop + phi gbot^T,   dphi = theta dG = theta gtop^T + theta gbot.
std::tuple<at::Tensor, at::Tensor> relation_stack_backward_cpu(const at::Tensor& grad_in,
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

}  // namespace

TORCH_LIBRARY_IMPL(rga_ops, CPU, m) {
  m.impl("relation_stack", &relation_stack_cpu);
  m.impl("relation_stack_backward", &relation_stack_backward_cpu);
}

}  // namespace rga_ops::cpu
