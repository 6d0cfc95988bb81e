// ha_soft_gate on CUDA: the forward and backward kernels and their launch are in
// ha_soft_gate_kernel.cuh (also compiled by the tests' CPU emulation); here they run
// under the device guard on the current stream.
#include <torch/library.h>

#include "cuda_launcher.h"
#include "device_guard.h"
#include "ha_soft_gate_kernel.cuh"

namespace rga_ops::cuda {
namespace {

at::Tensor ha_soft_gate_cuda(const at::Tensor& x, const at::Tensor& s, const at::Tensor& alpha,
                             const at::Tensor& beta) {
  const auto guard = device_guard(x);
  return ha_soft_gate::forward(x, s, alpha, beta, CudaLauncher{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ha_soft_gate_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& s, const at::Tensor& alpha,
    const at::Tensor& beta) {
  const auto guard = device_guard(x);
  return ha_soft_gate::backward(grad, x, s, alpha, beta, CudaLauncher{});
}

}  // namespace

TORCH_LIBRARY_IMPL(rga_ops, CUDA, m) {
  m.impl("ha_soft_gate", &ha_soft_gate_cuda);
  m.impl("ha_soft_gate_backward", &ha_soft_gate_backward_cuda);
}

}  // namespace rga_ops::cuda
