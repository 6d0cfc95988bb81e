// Kernels that check the emulation itself (emulation.h): shuffles exchange the right
// lanes' values, and __syncthreads orders shared-memory writes before reads, also when
// whole warps have returned early and when blocks reuse the shared memory in turn.
// Registered as ops by emulated_ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "emulation.h"

namespace emulator_self_test {

constexpr int kThreads = 256;

// out[t] = in[t ^ lane_mask], t within one block of kThreads threads.
inline __global__ void xor_shuffle_kernel(const int64_t* in, int64_t* out, int lane_mask) {
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, in[threadIdx.x], lane_mask);
}

// sums[b] = values[b * 32 * warps : (b + 1) * 32 * warps].sum() by warp shuffles, then across
// warps in shared memory; the warps from `warps` on return at once.
inline __global__ void block_sum_kernel(const double* values, double* sums, int64_t n, int warps) {
  __shared__ double warp_sums[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (warp >= warps) {
    return;
  }
  const int64_t i = static_cast<int64_t>(blockIdx.x) * 32 * warps + threadIdx.x;
  double v = i < n ? values[i] : 0.0;
  for (int offset = 16; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  if (lane == 0) {
    warp_sums[warp] = v;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < warps; ++w) {
      total += warp_sums[w];
    }
    sums[blockIdx.x] = total;
  }
}

inline at::Tensor xor_shuffle(const at::Tensor& in, int64_t lane_mask) {
  TORCH_CHECK(in.dtype() == at::kLong && in.is_contiguous() && in.numel() == kThreads, "in: ", kThreads, " int64");
  at::Tensor out = at::empty_like(in);
  cuda_emulation::EmulatedLauncher{}(xor_shuffle_kernel, dim3(1), dim3(kThreads), in.const_data_ptr<int64_t>(),
                                     out.mutable_data_ptr<int64_t>(), static_cast<int>(lane_mask));
  return out;
}

inline at::Tensor block_sum(const at::Tensor& values, int64_t warps) {
  TORCH_CHECK(values.dtype() == at::kDouble && values.is_contiguous() && values.dim() == 1, "values: 1-d float64");
  TORCH_CHECK(warps >= 1 && warps <= kThreads / 32, "warps: 1 to ", kThreads / 32);
  const int64_t blocks = (values.numel() + 32 * warps - 1) / (32 * warps);
  at::Tensor sums = at::empty({blocks}, values.options());
  cuda_emulation::EmulatedLauncher{}(block_sum_kernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
                                     values.const_data_ptr<double>(), sums.mutable_data_ptr<double>(),
                                     values.numel(), static_cast<int>(warps));
  return sums;
}

}  // namespace emulator_self_test
