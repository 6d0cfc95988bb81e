// The ops of the test extension (namespace rga_ops_emulated), on CPU tensors: the device
// kernels of csrc/cuda/, compiled from the very headers the CUDA build uses and run through
// the emulation (emulation.h), which the tests compare with the CPU kernels of rga_ops; the
// emulated launcher's limits and log; the emulator's self-test kernels. One translation
// unit: the torch headers take most of its compile time.
#include "emulation.h"

#include <torch/library.h>

#include "cuda/ha_soft_gate_kernel.cuh"
#include "cuda/relation_stack_kernel.cuh"
#include "self_test_kernels.h"

namespace {

using cuda_emulation::EmulatedLauncher;

at::Tensor relation_stack(const at::Tensor& theta, const at::Tensor& phi) {
  return rga_ops::cuda::relation_stack::forward(theta, phi, EmulatedLauncher{});
}

at::Tensor ha_soft_gate(const at::Tensor& x, const at::Tensor& s, const at::Tensor& alpha, const at::Tensor& beta) {
  return rga_ops::cuda::ha_soft_gate::forward(x, s, alpha, beta, EmulatedLauncher{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ha_soft_gate_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& s, const at::Tensor& alpha,
    const at::Tensor& beta) {
  return rga_ops::cuda::ha_soft_gate::backward(grad, x, s, alpha, beta, EmulatedLauncher{});
}

// Returns the limits it replaces, for the caller to restore.
std::vector<int64_t> set_launch_limits(int64_t max_grid_z, int64_t max_index32) {
  auto& limits = cuda_emulation::launch_limits();
  std::vector<int64_t> previous{limits.max_grid_z, limits.max_index32};
  limits = {max_grid_z, max_index32};
  return previous;
}

std::vector<std::string> take_launch_log() { return cuda_emulation::take_launch_log(); }

}  // namespace

TORCH_LIBRARY(rga_ops_emulated, m) {
  m.def("relation_stack(Tensor theta, Tensor phi) -> Tensor");
  m.def("ha_soft_gate(Tensor x, Tensor s, Tensor alpha, Tensor beta) -> Tensor");
  m.def("ha_soft_gate_backward(Tensor grad, Tensor x, Tensor s, Tensor alpha, Tensor beta)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("set_launch_limits(int max_grid_z, int max_index32) -> int[]", &set_launch_limits);
  m.def("take_launch_log() -> str[]", &take_launch_log);
  m.def("xor_shuffle(Tensor input, int lane_mask) -> Tensor");
  m.def("block_sum(Tensor values, int warps) -> Tensor");
}

TORCH_LIBRARY_IMPL(rga_ops_emulated, CPU, m) {
  m.impl("relation_stack", &relation_stack);
  m.impl("ha_soft_gate", &ha_soft_gate);
  m.impl("ha_soft_gate_backward", &ha_soft_gate_backward);
  m.impl("xor_shuffle", &emulator_self_test::xor_shuffle);
  m.impl("block_sum", &emulator_self_test::block_sum);
}
