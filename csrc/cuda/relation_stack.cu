// relation_stack on CUDA: the tiled forward kernel and its launch are in
// relation_stack_kernel.cuh (also compiled by the tests' CPU emulation); here they
// run under the device guard on the current stream. The backward is GEMMs only
// (csrc/relation_gemms.h, cuBLAS here).
#include <torch/library.h>

#include "../relation_gemms.h"
#include "cuda_launcher.h"
#include "device_guard.h"
#include "relation_stack_kernel.cuh"

namespace rga_ops::cuda {
namespace {

at::Tensor relation_stack_cuda(const at::Tensor& theta, const at::Tensor& phi) {
  const auto guard = device_guard(theta);
  return relation_stack::forward(theta, phi, CudaLauncher{});
}

std::tuple<at::Tensor, at::Tensor> relation_stack_backward_cuda(const at::Tensor& grad, const at::Tensor& theta,
                                                                const at::Tensor& phi) {
  const auto guard = device_guard(theta);
  return relation_gemms::relation_stack_backward(grad, theta, phi);
}

}  // namespace

TORCH_LIBRARY_IMPL(rga_ops, CUDA, m) {
  m.impl("relation_stack", &relation_stack_cuda);
  m.impl("relation_stack_backward", &relation_stack_backward_cuda);
}

}  // namespace rga_ops::cuda
