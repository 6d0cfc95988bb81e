// Reduced-precision inputs are computed in float32 (float32 accumulation, one
// rounding at the end); float32 and float64 stay as they are. Shared by the CPU
// and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

namespace rga_ops {

inline at::ScalarType compute_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// The tensor in the compute dtype, contiguous (what the elementwise kernels index); detached.
inline at::Tensor as_contiguous_compute(const at::Tensor& t) {
  return t.detach().to(compute_dtype(t.scalar_type())).contiguous();
}

// The tensor in the compute dtype, with a unit stride along one of its last two
// dimensions (what a GEMM operand needs); a copy only where necessary. Detached:
// kernels compute below autograd, also in the worker threads of at::parallel_for.
inline at::Tensor as_compute(const at::Tensor& t) {
  at::Tensor c = t.detach().to(compute_dtype(t.scalar_type()));
  return (c.stride(-1) == 1 || c.stride(-2) == 1) ? c : c.contiguous();
}

}  // namespace rga_ops
