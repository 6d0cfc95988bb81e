// relation_stack's CUDA forward: J[b, i, p] = G[b, p, i] and J[b, N + i, p] = G[b, i, p]
// with G = theta^T phi. One thread block per 64 x 64 tile of G and batch item:
// the tile is computed once (float32 accumulation for half/bfloat16) from slices
// of theta and phi staged in shared memory, kept in shared memory, and stored
// twice with coalesced writes: its rows to the bottom half (J[N + i, j0:j0+64])
// and, read column-wise, its columns to the top half (J[j, i0:i0+64]). G is never
// allocated.
//
// The kernel and its host-side launch, written over a Launcher (see cuda_launcher.h)
// so that the tests compile this very file with g++ against an emulation of the
// CUDA runtime (tests/cuda_emulation/) and run it on the CPU. Only headers that
// g++ compiles belong here; what needs the CUDA runtime stays in the .cu file.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>

#include "../checks.h"

namespace rga_ops::cuda::relation_stack {

constexpr int kTile = 64;                  // a block computes G[i0:i0+kTile, j0:j0+kTile]
constexpr int kChunk = 16;                 // embedding channels staged in shared memory per step
constexpr int kSide = 16;                  // kSide x kSide threads ...
constexpr int kThreads = kSide * kSide;
constexpr int kPerThread = kTile / kSide;  // ... each computing kPerThread x kPerThread entries of the tile
constexpr int kStaging = 2 * kChunk * kTile;
constexpr int kPitch = kTile + 1;          // the finished tile's row pitch: a column read hits 32 banks
constexpr int kShared = kStaging > kTile * kPitch ? kStaging : kTile * kPitch;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) relation_stack_kernel(const scalar_t* __restrict__ theta,
                                                                  const scalar_t* __restrict__ phi,
                                                                  scalar_t* __restrict__ out, int64_t batch,
                                                                  int64_t channels, int64_t n) {
  // First the staged chunks of theta and phi, then (reusing the memory) the finished tile.
  __shared__ acc_t smem[kShared];
  acc_t* const theta_s = smem;                 // [kChunk][kTile]: theta[c0 + k, i0 + t]
  acc_t* const phi_s = smem + kChunk * kTile;  // [kChunk][kTile]: phi[c0 + k, j0 + t]
  acc_t* const tile = smem;                    // [kTile][kPitch]: G[i0 + r, j0 + col]

  const int tid = threadIdx.x;
  const int tx = tid % kSide, ty = tid / kSide;  // this thread's entries: rows ty + kSide*r, columns tx + kSide*q
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kTile;

  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    const scalar_t* theta_b = theta + b * channels * n;
    const scalar_t* phi_b = phi + b * channels * n;
    acc_t acc[kPerThread][kPerThread];
#pragma unroll
    for (int r = 0; r < kPerThread; ++r) {
#pragma unroll
      for (int q = 0; q < kPerThread; ++q) {
        acc[r][q] = acc_t(0);
      }
    }
    for (int64_t c0 = 0; c0 < channels; c0 += kChunk) {
      // Zeros outside [0, C') x [0, N): they add nothing to the products.
      for (int e = tid; e < kChunk * kTile; e += kThreads) {
        const int k = e / kTile, t = e % kTile;
        const int64_t c = c0 + k;
        theta_s[e] = (c < channels && i0 + t < n) ? static_cast<acc_t>(theta_b[c * n + i0 + t]) : acc_t(0);
        phi_s[e] = (c < channels && j0 + t < n) ? static_cast<acc_t>(phi_b[c * n + j0 + t]) : acc_t(0);
      }
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        acc_t a[kPerThread], p[kPerThread];
#pragma unroll
        for (int r = 0; r < kPerThread; ++r) {
          a[r] = theta_s[k * kTile + ty + kSide * r];
          p[r] = phi_s[k * kTile + tx + kSide * r];
        }
#pragma unroll
        for (int r = 0; r < kPerThread; ++r) {
#pragma unroll
          for (int q = 0; q < kPerThread; ++q) {
            acc[r][q] += a[r] * p[q];
          }
        }
      }
      __syncthreads();  // the staging is read completely before it is overwritten
    }
#pragma unroll
    for (int r = 0; r < kPerThread; ++r) {
#pragma unroll
      for (int q = 0; q < kPerThread; ++q) {
        tile[(ty + kSide * r) * kPitch + tx + kSide * q] = acc[r][q];
      }
    }
    __syncthreads();

    scalar_t* out_b = out + b * 2 * n * n;
    // Bottom half, J[N + i, j] = G[i, j]: the tile's rows, consecutive threads along j.
    for (int e = tid; e < kTile * kTile; e += kThreads) {
      const int r = e / kTile, col = e % kTile;
      const int64_t i = i0 + r, j = j0 + col;
      if (i < n && j < n) {
        out_b[(n + i) * n + j] = static_cast<scalar_t>(tile[r * kPitch + col]);
      }
    }
    // Top half, J[j, i] = G[i, j]: the tile's columns, consecutive threads along i.
    for (int e = tid; e < kTile * kTile; e += kThreads) {
      const int r = e / kTile, col = e % kTile;
      const int64_t j = j0 + r, i = i0 + col;
      if (i < n && j < n) {
        out_b[j * n + i] = static_cast<scalar_t>(tile[col * kPitch + r]);
      }
    }
    __syncthreads();  // the tile is stored completely before the next item's staging overwrites it
  }
}

// Checks the inputs, allocates J and launches the kernel through `launch`; batch items
// beyond the launcher's gridDim.z cap are strided over by the kernel.
template <typename Launcher>
at::Tensor forward(const at::Tensor& theta_in, const at::Tensor& phi_in, const Launcher& launch) {
  check_embeddings("rga_ops::relation_stack", theta_in, phi_in);
  const at::Tensor theta = theta_in.contiguous(), phi = phi_in.contiguous();
  const int64_t batch = theta.size(0), channels = theta.size(1), n = theta.size(2);
  at::Tensor out = at::empty({batch, 2 * n, n}, theta.options());
  if (batch == 0) {
    return out;
  }
  // N <= 65535 * kTile (4.2 million), the gridDim.y limit: J itself could not be allocated beyond that.
  const int64_t tiles = (n + kTile - 1) / kTile;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles),
                  static_cast<unsigned>(std::min<int64_t>(batch, launch.max_grid_z())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, theta.scalar_type(), "relation_stack_cuda", [&] {
    launch(relation_stack_kernel<scalar_t, at::opmath_type<scalar_t>>, grid, dim3(kThreads),
           theta.const_data_ptr<scalar_t>(), phi.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
           batch, channels, n);
  });
  return out;
}

}  // namespace rga_ops::cuda::relation_stack
