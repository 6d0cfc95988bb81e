// The runtime of the CUDA emulation (emulation.h): the launches, __syncthreads and the warp
// exchanges over a BlockScheduler, the launch log.
#include "emulation.h"

#include <cxxabi.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>

#include "block_scheduler.h"

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

namespace cuda_emulation {
namespace {

constexpr int kWarpSize = 32;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s\n", what);
  std::abort();
}

// Two sets of slots per warp, used by turns: a lane offers its value for the next exchange
// only after every lane has offered for this one (passed its barrier) and so has read this
// one's, and no slot is overwritten before it is read, with one barrier per exchange.
struct WarpSlots {
  unsigned char slot[2][kWarpSize][8];
};

// What the threads of the running launch share: their scheduler, each warp's exchange
// slots, and each thread's count of warp exchanges so far in its block.
struct RunningLaunch {
  BlockScheduler* scheduler;
  std::vector<WarpSlots> warps;
  std::vector<uint64_t> exchanges;
};
RunningLaunch* running = nullptr;

std::mutex launch_mutex;  // one launch at a time: the emulated shared memory is static
std::vector<std::string> launch_log;

// "ns::kernel<args>" from the demangled "void ns::kernel<args>(parameters)".
std::string kernel_name(const void* kernel) {
  Dl_info info;
  if (dladdr(kernel, &info) == 0 || info.dli_sname == nullptr) return "(unnamed kernel)";
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> demangled(abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status),
                                                   std::free);
  std::string name = status == 0 ? demangled.get() : info.dli_sname;
  if (name.rfind("void ", 0) == 0) name.erase(0, 5);
  if (!name.empty() && name.back() == ')') {
    int depth = 0;
    for (std::size_t i = name.size(); i-- > 0;) {
      depth += name[i] == ')' ? 1 : name[i] == '(' ? -1 : 0;
      if (depth == 0) {
        name.erase(i);
        break;
      }
    }
  }
  return name;
}

std::string describe(const void* kernel, dim3 grid, dim3 block) {
  char dims[96];
  std::snprintf(dims, sizeof(dims), "<<<(%u, %u, %u), (%u, %u, %u)>>>", grid.x, grid.y, grid.z, block.x, block.y,
                block.z);
  return kernel_name(kernel) + dims;
}

}  // namespace

void sync_block() {
  if (running == nullptr) fail("__syncthreads outside a kernel");
  running->scheduler->sync_block();
}

void exchange_in_warp(unsigned mask, const void* value, void* out, std::size_t bytes, int lane_mask) {
  if (running == nullptr) fail("warp shuffle outside a kernel");
  const int thread = running->scheduler->current(), lane = thread % kWarpSize;
  if (mask != 0xffffffffu || thread - lane + kWarpSize > static_cast<int>(blockDim.x * blockDim.y * blockDim.z)) {
    fail("warp shuffles are emulated for full warps only");
  }
  const int source = lane ^ lane_mask;
  if (source < 0 || source >= kWarpSize) fail("shuffle lane mask out of range");
  auto& slots = running->warps[thread / kWarpSize].slot[running->exchanges[thread]++ % 2];
  std::memcpy(slots[lane], value, bytes);
  running->scheduler->sync_warp();
  std::memcpy(out, slots[source], bytes);
}

void run_grid(const void* kernel, dim3 grid, dim3 block, const std::function<void()>& kernel_body) {
  std::lock_guard<std::mutex> lock(launch_mutex);
  launch_log.push_back(describe(kernel, grid, block));
  gridDim = grid;
  blockDim = block;
  const int threads = static_cast<int>(block.x * block.y * block.z);
  BlockScheduler scheduler(threads, kWarpSize, kernel_body, [&](int t) {
    threadIdx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
  });
  RunningLaunch launch{&scheduler, std::vector<WarpSlots>((threads + kWarpSize - 1) / kWarpSize),
                       std::vector<uint64_t>(threads)};
  running = &launch;
  const uint64_t blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  for (uint64_t b = 0; b < blocks; ++b) {
    blockIdx = {static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                static_cast<unsigned>(b / (static_cast<uint64_t>(grid.x) * grid.y))};
    std::fill(launch.exchanges.begin(), launch.exchanges.end(), 0);
    scheduler.run_block();
  }
  running = nullptr;
}

std::vector<std::string> take_launch_log() {
  std::lock_guard<std::mutex> lock(launch_mutex);
  return std::exchange(launch_log, {});
}

LaunchLimits& launch_limits() {
  static LaunchLimits limits;
  return limits;
}

}  // namespace cuda_emulation
