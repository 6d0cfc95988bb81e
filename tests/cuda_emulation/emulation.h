// Just enough of CUDA, for g++, to compile the device kernels of csrc/cuda/*_kernel.cuh
// and run them on the CPU in tests: each CUDA thread a fiber of its own, the threads of a
// block run one at a time between barriers (block_scheduler.h says in which order), the
// blocks of a grid one after another. It checks index arithmetic, bounds, reductions,
// barriers and the host-side launch logic; it says nothing about speed, nor about races
// between blocks (which never overlap here).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Shared memory as a function-local static: one array per kernel instantiation, which all
// threads of a block see. Correct only because the blocks of a grid run one after another
// and launches hold a lock (run_grid), so no two blocks ever use it at the same time.
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Plain globals: the threads of a block are fibers on one host thread, and the scheduler sets
// threadIdx whenever it switches between them.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

namespace cuda_emulation {

// __syncthreads: waits for the block's threads that have not yet returned from the kernel.
void sync_block();

// One step of a warp shuffle: every lane of the warp offers `bytes` bytes at `value` and
// receives into `out` those that lane (its lane id ^ lane_mask) offered.
void exchange_in_warp(unsigned mask, const void* value, void* out, std::size_t bytes, int lane_mask);

// Runs kernel_body as each thread of `block`, for each block of `grid` in turn, under a lock
// that no other launch can hold meanwhile; logs the launch. `kernel` only names the launch
// in the log.
void run_grid(const void* kernel, dim3 grid, dim3 block, const std::function<void()>& kernel_body);

// What each launch since the last call ran: "kernel<template arguments><<<(grid), (block)>>>".
std::vector<std::string> take_launch_log();

// The sizes at which the launch logic leaves a path for another (see csrc/cuda/cuda_launcher.h).
// The CUDA launcher's by default; tests lower them to reach those paths at small shapes.
struct LaunchLimits {
  int64_t max_grid_z = 65535;
  int64_t max_index32 = std::numeric_limits<int32_t>::max();
};
LaunchLimits& launch_limits();

// The launcher of the kernel headers (the interface is described in csrc/cuda/cuda_launcher.h).
struct EmulatedLauncher {
  int64_t max_grid_z() const { return launch_limits().max_grid_z; }
  int64_t max_index32() const { return launch_limits().max_index32; }

  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block, Args&&... args) const {
    const std::tuple<Params...> params(std::forward<Args>(args)...);
    run_grid(reinterpret_cast<const void*>(kernel), grid, block, [&] { std::apply(kernel, params); });
  }
};

}  // namespace cuda_emulation

inline void __syncthreads() { cuda_emulation::sync_block(); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= 8, "the emulated shuffle exchanges up to 8 bytes per lane");
  T out;
  cuda_emulation::exchange_in_warp(mask, &value, &out, sizeof(T), lane_mask);
  return out;
}

inline float __expf(float x) { return std::exp(x); }
