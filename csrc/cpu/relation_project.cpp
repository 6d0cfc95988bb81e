// relation_project on the CPU: the 1x1 conv (weight W = [W_in | W_out], [K, 2N])
// of the stacked relation of G = theta^T phi, re-associated (docs/algebra.md §1).
// Every product is an ATen GEMM (csrc/relation_gemms.h, shared with the CUDA
// kernels); nothing of size N x N exists, forward or backward.
#include <torch/library.h>

#include "../relation_gemms.h"

namespace rga_ops::cpu {

TORCH_LIBRARY_IMPL(rga_ops, CPU, m) {
  m.impl("_relation_project", &relation_gemms::relation_project);
  m.impl("relation_project_backward", &relation_gemms::relation_project_backward);
}

}  // namespace rga_ops::cpu
