// ha_soft_gate's CUDA kernels: out = x * sigmoid(relu(alpha[b, c] * s[b, p] + beta[c])),
// HA's soft-attention gate with the rank-1 1x1 conv and its BatchNorm folded into
// alpha and beta (docs/algebra.md §3). Computed in float32 for half/bfloat16 (float64
// for float64).
//
// Forward: memory-bound, one read of x and one write of out, 16-byte vector
// accesses where the layout allows (s, alpha and beta are small and cached).
// Backward: the gate is recomputed; dx is elementwise, dalpha[b, c] and
// dbeta[c] are sums over positions and ds[b, p] a sum over channels. A block
// covers 32 channels x 128 positions of one item: warps reduce over positions,
// shared memory over the block's channels; the per-block partial sums are added
// up by ATen afterwards (deterministic: no atomics).
//
// The kernels and their host-side launch, written over a Launcher (see cuda_launcher.h)
// so that the tests compile this very file with g++ against an emulation of the
// CUDA runtime (tests/cuda_emulation/) and run it on the CPU. Only headers that
// g++ compiles belong here; what needs the CUDA runtime stays in the .cu file.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>

#include "../checks.h"
#include "../compute_dtype.h"

namespace rga_ops::cuda::ha_soft_gate {

using at::cuda::detail::IntDivider;

constexpr int kThreads = 256;
constexpr int kMaxGridY = 65535;

// sigmoid(relu(z)).
__device__ __forceinline__ float soft_gate(float z) { return z > 0.0f ? 1.0f / (1.0f + __expf(-z)) : 0.5f; }
__device__ __forceinline__ double soft_gate(double z) { return z > 0.0 ? 1.0 / (1.0 + ::exp(-z)) : 0.5; }

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Vector {
  T v[kVec];
};

// ---- forward ------------------------------------------------------------------------------

constexpr int kUnroll = 4;  // vectors per thread, loaded before any is used

// x and out as [B*C, P] rows of `row_vectors` vectors of kVec elements (P % kVec == 0);
// vector v lies in row v / row_vectors, i.e. item (row / C) and channel (row % C).
template <typename scalar_t, typename acc_t, int kVec, typename index_t>
__global__ void __launch_bounds__(kThreads) gate_forward_kernel(const scalar_t* __restrict__ x,
                                                                const scalar_t* __restrict__ s,
                                                                const acc_t* __restrict__ alpha,
                                                                const acc_t* __restrict__ beta,
                                                                scalar_t* __restrict__ out, index_t vectors,
                                                                IntDivider<index_t> row_vectors,
                                                                IntDivider<index_t> channels) {
  using V = Vector<scalar_t, kVec>;
  const V* x_v = reinterpret_cast<const V*>(x);
  const V* s_v = reinterpret_cast<const V*>(s);
  V* out_v = reinterpret_cast<V*>(out);
  const index_t first = static_cast<index_t>(blockIdx.x) * (kThreads * kUnroll) + threadIdx.x;

  V xs[kUnroll], ss[kUnroll];
  acc_t a[kUnroll], bias[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const index_t v = first + u * kThreads;
    if (v < vectors) {
      const auto row = row_vectors.divmod(v);       // row.div: b * C + c; row.mod: vector within the row
      const auto item = channels.divmod(row.div);   // item.div: b; item.mod: c
      xs[u] = x_v[v];
      ss[u] = s_v[item.div * row_vectors.divisor + row.mod];
      a[u] = alpha[row.div];
      bias[u] = beta[item.mod];
    }
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const index_t v = first + u * kThreads;
    if (v < vectors) {
      V o;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const acc_t z = a[u] * static_cast<acc_t>(ss[u].v[k]) + bias[u];
        o.v[k] = static_cast<scalar_t>(static_cast<acc_t>(xs[u].v[k]) * soft_gate(z));
      }
      out_v[v] = o;
    }
  }
}

template <typename scalar_t, typename acc_t, int kVec, typename index_t, typename Launcher>
void launch_gate_forward(const at::Tensor& x, const at::Tensor& s, const at::Tensor& alpha, const at::Tensor& beta,
                         at::Tensor& out, int64_t channels, int64_t positions, const Launcher& launch) {
  const int64_t vectors = x.numel() / kVec;
  const int64_t blocks = (vectors + kThreads * kUnroll - 1) / (kThreads * kUnroll);
  launch(gate_forward_kernel<scalar_t, acc_t, kVec, index_t>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
         x.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(), alpha.const_data_ptr<acc_t>(),
         beta.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), static_cast<index_t>(vectors),
         IntDivider<index_t>(static_cast<index_t>(positions / kVec)),
         IntDivider<index_t>(static_cast<index_t>(channels)));
}

inline bool aligned(const at::Tensor& t, size_t bytes) {
  return reinterpret_cast<std::uintptr_t>(t.const_data_ptr()) % bytes == 0;
}

// 32-bit indices (with multiply-shift division) where the vector count allows, else 64-bit.
template <typename scalar_t, typename acc_t, int kVec, typename Launcher>
void gate_forward(const at::Tensor& x, const at::Tensor& s, const at::Tensor& alpha, const at::Tensor& beta,
                  at::Tensor& out, int64_t channels, int64_t positions, const Launcher& launch) {
  if (x.numel() / kVec <= launch.max_index32()) {
    launch_gate_forward<scalar_t, acc_t, kVec, uint32_t>(x, s, alpha, beta, out, channels, positions, launch);
  } else {
    launch_gate_forward<scalar_t, acc_t, kVec, int64_t>(x, s, alpha, beta, out, channels, positions, launch);
  }
}

template <typename Launcher>
at::Tensor forward(const at::Tensor& x_in, const at::Tensor& s_in, const at::Tensor& alpha_in,
                   const at::Tensor& beta_in, const Launcher& launch) {
  check_soft_gate_inputs("rga_ops::ha_soft_gate", x_in, s_in, alpha_in, beta_in);
  const at::Tensor x = x_in.contiguous(), s = s_in.contiguous();
  const auto acc_dtype = compute_dtype(x.scalar_type());
  const at::Tensor alpha = alpha_in.detach().to(acc_dtype).contiguous();
  const at::Tensor beta = beta_in.detach().to(acc_dtype).contiguous();
  const int64_t channels = x.size(1), positions = x.size(2) * x.size(3);
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ha_soft_gate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    if (positions % kVec == 0 && aligned(x, 16) && aligned(s, 16) && aligned(out, 16)) {
      gate_forward<scalar_t, acc_t, kVec>(x, s, alpha, beta, out, channels, positions, launch);
    } else {
      gate_forward<scalar_t, acc_t, 1>(x, s, alpha, beta, out, channels, positions, launch);
    }
  });
  return out;
}

// ---- backward -----------------------------------------------------------------------------

constexpr int kWarps = kThreads / 32;
constexpr int kBlockChannels = 32;                   // channels per block, kBlockChannels / kWarps per warp
constexpr int kLanePositions = 4;                    // positions per lane
constexpr int kBlockPositions = 32 * kLanePositions;  // positions per block

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Block (position tile, channel tile, item). Writes dx, and partial sums:
//   dalpha_part, dbeta_part [position tiles, B, C]: sum over the tile's positions of dz * s and dz,
//   ds_part [channel tiles, B, P]: sum over the tile's channels of dz * alpha.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) gate_backward_kernel(
    const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x, const scalar_t* __restrict__ s,
    const acc_t* __restrict__ alpha, const acc_t* __restrict__ beta, scalar_t* __restrict__ dx,
    acc_t* __restrict__ ds_part, acc_t* __restrict__ dalpha_part, acc_t* __restrict__ dbeta_part, int64_t batch,
    int64_t channels, int64_t positions) {
  __shared__ acc_t ds_s[kWarps][kBlockPositions];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kBlockPositions;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kBlockChannels;

  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    acc_t s_lane[kLanePositions], ds_lane[kLanePositions];
#pragma unroll
    for (int j = 0; j < kLanePositions; ++j) {
      const int64_t p = p0 + lane + 32 * j;
      s_lane[j] = p < positions ? static_cast<acc_t>(s[b * positions + p]) : acc_t(0);
      ds_lane[j] = acc_t(0);
    }
    for (int m = 0; m < kBlockChannels / kWarps; ++m) {
      const int64_t c = c0 + warp + kWarps * m;
      if (c >= channels) {
        break;  // the same for the whole warp, which the shuffles below need
      }
      const acc_t a = alpha[b * channels + c], bias = beta[c];
      const int64_t row = (b * channels + c) * positions;
      acc_t sum_dz_s = acc_t(0), sum_dz = acc_t(0);
#pragma unroll
      for (int j = 0; j < kLanePositions; ++j) {
        const int64_t p = p0 + lane + 32 * j;
        if (p < positions) {
          const acc_t z = a * s_lane[j] + bias;
          const acc_t g = soft_gate(z);
          const acc_t go = static_cast<acc_t>(grad[row + p]);
          dx[row + p] = static_cast<scalar_t>(go * g);
          const acc_t dz = z > acc_t(0) ? go * static_cast<acc_t>(x[row + p]) * g * (acc_t(1) - g) : acc_t(0);
          sum_dz_s += dz * s_lane[j];
          sum_dz += dz;
          ds_lane[j] += dz * a;
        }
      }
      sum_dz_s = warp_sum(sum_dz_s);
      sum_dz = warp_sum(sum_dz);
      if (lane == 0) {
        const int64_t k = (static_cast<int64_t>(blockIdx.x) * batch + b) * channels + c;
        dalpha_part[k] = sum_dz_s;
        dbeta_part[k] = sum_dz;
      }
    }
#pragma unroll
    for (int j = 0; j < kLanePositions; ++j) {
      ds_s[warp][lane + 32 * j] = ds_lane[j];
    }
    __syncthreads();
    for (int t = threadIdx.x; t < kBlockPositions; t += kThreads) {
      const int64_t p = p0 + t;
      if (p < positions) {
        acc_t total = acc_t(0);
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
          total += ds_s[w][t];
        }
        ds_part[(static_cast<int64_t>(blockIdx.y) * batch + b) * positions + p] = total;
      }
    }
    __syncthreads();  // ds_s is read completely before the next item overwrites it
  }
}

template <typename Launcher>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_in,
                                                                    const at::Tensor& x_in, const at::Tensor& s_in,
                                                                    const at::Tensor& alpha_in,
                                                                    const at::Tensor& beta_in,
                                                                    const Launcher& launch) {
  constexpr const char* op = "rga_ops::ha_soft_gate_backward";
  check_soft_gate_inputs(op, x_in, s_in, alpha_in, beta_in);
  check_grad(op, grad_in, x_in, x_in.sizes());
  const at::Tensor x = x_in.contiguous(), s = s_in.contiguous(), grad = grad_in.contiguous();
  const auto acc_dtype = compute_dtype(x.scalar_type());
  const at::Tensor alpha = alpha_in.detach().to(acc_dtype).contiguous();
  const at::Tensor beta = beta_in.detach().to(acc_dtype).contiguous();
  const int64_t batch = x.size(0), channels = x.size(1), positions = x.size(2) * x.size(3);
  const int64_t position_tiles = (positions + kBlockPositions - 1) / kBlockPositions;
  const int64_t channel_tiles = (channels + kBlockChannels - 1) / kBlockChannels;
  TORCH_CHECK_VALUE(channel_tiles <= kMaxGridY, op, ": at most ", kMaxGridY * kBlockChannels,
                    " channels are supported, got ", channels);
  const auto acc_options = x.options().dtype(acc_dtype);
  at::Tensor dx = at::empty_like(x);
  at::Tensor ds_part = at::zeros({channel_tiles, batch, positions}, acc_options);
  at::Tensor dalpha_part = at::zeros({position_tiles, batch, channels}, acc_options);
  at::Tensor dbeta_part = at::zeros({position_tiles, batch, channels}, acc_options);
  if (x.numel() > 0) {
    // Batch items beyond the launcher's gridDim.z cap are strided over by the kernel.
    const dim3 grid(static_cast<unsigned>(position_tiles), static_cast<unsigned>(channel_tiles),
                    static_cast<unsigned>(std::min<int64_t>(batch, launch.max_grid_z())));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ha_soft_gate_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      launch(gate_backward_kernel<scalar_t, acc_t>, grid, dim3(kThreads), grad.const_data_ptr<scalar_t>(),
             x.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(), alpha.const_data_ptr<acc_t>(),
             beta.const_data_ptr<acc_t>(), dx.mutable_data_ptr<scalar_t>(), ds_part.mutable_data_ptr<acc_t>(),
             dalpha_part.mutable_data_ptr<acc_t>(), dbeta_part.mutable_data_ptr<acc_t>(), batch, channels,
             positions);
    });
  }
  const at::Tensor ds = ds_part.sum(0).view(s_in.sizes());
  return {dx, ds.to(s_in.scalar_type()), dalpha_part.sum(0).to(alpha_in.scalar_type()),
          dbeta_part.sum(at::IntArrayRef{0, 1}).to(beta_in.scalar_type())};
}

}  // namespace rga_ops::cuda::ha_soft_gate
