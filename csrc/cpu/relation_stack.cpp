// relation_stack on the CPU: J[b, i, p] = G[b, p, i] and J[b, N + i, p] = G[b, i, p]
// with G = theta^T phi. Tiles of G are computed in a small local buffer and each
// is stored twice (row block and transposed column block); G is never allocated.
// The backward is GEMMs only (csrc/relation_gemms.h, shared with the CUDA kernels).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "../compute_dtype.h"
#include "../relation_gemms.h"

namespace rga_ops::cpu {
namespace {

// Rows of G computed per GEMM: a [kRows, N] block (512 KiB at N = 2048 in float32)
// stays in cache while it is stored to both halves of J.
constexpr int64_t kRows = 64;

// Stores the block G[i0:i0+rows, :] (row-major, [rows, N]) to J[N+i0:N+i0+rows, :]
// (contiguous rows) and, transposed, to J[:, i0:i0+rows] of the first half.
template <typename out_t, typename acc_t>
void store_block(const acc_t* block, out_t* out, int64_t n, int64_t i0, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t* src = block + r * n;
    out_t* dst = out + (n + i0 + r) * n;
    for (int64_t j = 0; j < n; ++j) {
      dst[j] = static_cast<out_t>(src[j]);
    }
  }
  constexpr int64_t kCols = 64;  // transpose in [rows, kCols] tiles
  for (int64_t j0 = 0; j0 < n; j0 += kCols) {
    const int64_t cols = std::min(kCols, n - j0);
    for (int64_t j = j0; j < j0 + cols; ++j) {
      out_t* dst = out + j * n + i0;
      for (int64_t r = 0; r < rows; ++r) {
        dst[r] = static_cast<out_t>(block[r * n + j]);
      }
    }
  }
}

at::Tensor relation_stack_cpu(const at::Tensor& theta_in, const at::Tensor& phi_in) {
  check_embeddings("rga_ops::relation_stack", theta_in, phi_in);
  const at::Tensor theta = as_compute(theta_in);
  const at::Tensor phi = as_compute(phi_in);
  const int64_t b_dim = theta.size(0), n = theta.size(2);
  at::Tensor out = at::empty({b_dim, 2 * n, n}, theta_in.options());
  const int64_t blocks = (n + kRows - 1) / kRows;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, out.scalar_type(), "relation_stack_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        scalar_t* o = out.data_ptr<scalar_t>();
        // Each task computes one row block of G with a GEMM into its own buffer
        // (single-threaded inside the parallel region) and stores it twice.
        at::parallel_for(0, b_dim * blocks, 1, [&](int64_t begin, int64_t end) {
          at::Tensor block = at::empty({kRows, n}, theta.options());
          for (int64_t t = begin; t < end; ++t) {
            const int64_t b = t / blocks, i0 = (t % blocks) * kRows;
            const int64_t rows = std::min(kRows, n - i0);
            at::Tensor g = block.narrow(0, 0, rows);
            at::mm_out(g, theta[b].narrow(1, i0, rows).t(), phi[b]);
            store_block<scalar_t, acc_t>(g.const_data_ptr<acc_t>(), o + b * 2 * n * n, n, i0, rows);
          }
        });
      });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rga_ops, CPU, m) {
  m.impl("relation_stack", &relation_stack_cpu);
  m.impl("relation_stack_backward", &relation_gemms::relation_stack_backward);
}

}  // namespace rga_ops::cpu
