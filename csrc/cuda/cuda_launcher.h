// How the kernel headers (*_kernel.cuh) launch their kernels on a GPU. The headers are
// templates over a launcher so that the tests can run the same kernels and the same
// host-side launch logic on the CPU through an emulation (tests/cuda_emulation/),
// with its own launcher that lowers the size limits below to reach the paths they
// guard at small shapes. A launcher provides:
//   max_grid_z():    the most blocks along gridDim.z; the kernels stride over batch
//                    items beyond it;
//   max_index32():   the largest count of elements (or vectors) that a kernel with
//                    32-bit index arithmetic may be given; beyond it the 64-bit one runs;
//   operator()(kernel, grid, block, args...): runs kernel(args...) over grid x block.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>
#include <utility>

namespace rga_ops::cuda {

// On the current stream of the current device (the caller holds the device guard),
// each launch checked.
struct CudaLauncher {
  int64_t max_grid_z() const { return 65535; }
  int64_t max_index32() const { return std::numeric_limits<int32_t>::max(); }

  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block, Args&&... args) const {
    kernel<<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace rga_ops::cuda
