// The device guard every CUDA kernel entry holds: kernels registered with
// TORCH_LIBRARY_IMPL get no guard from the dispatcher, and both our launches and
// the current stream belong to the current device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>

#include <optional>

namespace rga_ops::cuda {

// Makes t's device current while the guard lives, when t is a CUDA tensor; when it
// is not (the dispatcher chose CUDA because of another argument), nothing changes
// and the input checks that follow name the misplaced argument.
inline c10::cuda::OptionalCUDAGuard device_guard(const at::Tensor& t) {
  return c10::cuda::OptionalCUDAGuard(t.is_cuda() ? std::optional<c10::Device>(t.device()) : std::nullopt);
}

}  // namespace rga_ops::cuda
