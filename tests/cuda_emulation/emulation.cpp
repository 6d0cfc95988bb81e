// The runtime of the CUDA emulation (emulation.h): threads, barriers, warp exchanges,
// the launch log.
#include "emulation.h"

#include <cxxabi.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

namespace cuda_emulation {
namespace {

constexpr int kWarpSize = 32;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s\n", what);
  std::abort();
}

// A barrier that threads can leave for good (drop), as threads that return from a
// kernel leave __syncthreads on a GPU. The waiting is on an atomic (a futex), outside the
// lock: hundreds of threads released at once do not queue for a mutex.
class Barrier {
 public:
  void reset(int count) {
    std::lock_guard<std::mutex> lock(mutex_);
    expected_ = count;
    arrived_ = 0;
  }

  // `on_release` runs in the last thread to arrive, before any thread goes on.
  void arrive_and_wait(const std::function<void()>& on_release = {}) {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint32_t generation = generation_.load(std::memory_order_relaxed);
    if (++arrived_ == expected_) {
      if (on_release) on_release();
      release();
      return;
    }
    lock.unlock();
    generation_.wait(generation, std::memory_order_acquire);
  }

  void drop() {
    std::lock_guard<std::mutex> lock(mutex_);
    --expected_;
    if (arrived_ > 0 && arrived_ == expected_) release();
  }

 private:
  void release() {
    arrived_ = 0;
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
  }

  std::mutex mutex_;
  int expected_ = 0, arrived_ = 0;
  std::atomic<uint32_t> generation_{0};
};

struct Warp {
  int lanes = 0;
  Barrier barrier;
  // Two sets of slots, used by turns: a lane can offer its value for the next exchange
  // only after every lane has offered for this one (passed the barrier), so no lane
  // overwrites a slot still to be read, with one barrier per exchange.
  unsigned char slots[2][kWarpSize][8];
};

// What the threads of one launch share; blocks reuse it one after another.
struct Block {
  int threads = 0;
  Barrier barrier;
  std::vector<std::unique_ptr<Warp>> warps;

  void reset() {
    barrier.reset(threads);
    for (auto& warp : warps) warp->barrier.reset(warp->lanes);
  }
};

struct ThreadPlace {
  Block* block;
  Warp* warp;
  int lane;
  uint64_t exchanges;  // this thread's warp exchanges so far in this block
};

thread_local ThreadPlace this_thread{nullptr, nullptr, 0, 0};

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

// The host threads of the launches, kept from one launch to the next: starting a few
// hundred threads costs more than most emulated launches. They wait on atomics (futexes),
// as the barriers do.
class ThreadTeam {
 public:
  // Runs body(t) for t in [0, count), each in a thread of its own, all at once; returns
  // when every one has returned. One call at a time (run_grid holds the launch lock).
  void run(int count, const std::function<void(int)>& body) {
    while (static_cast<int>(threads_.size()) < count) {
      threads_.emplace_back([this, t = static_cast<int>(threads_.size()), round = round_.load()] { work(t, round); });
    }
    body_ = &body;
    count_ = count;
    // Every thread of the team reports back, also those with nothing to do: none can still
    // be reading this round's body_ and count_ when the next round writes them.
    running_.store(static_cast<int>(threads_.size()), std::memory_order_relaxed);
    round_.fetch_add(1, std::memory_order_release);
    round_.notify_all();
    for (int left = running_.load(std::memory_order_acquire); left != 0;
         left = running_.load(std::memory_order_acquire)) {
      running_.wait(left, std::memory_order_acquire);
    }
  }

 private:
  // `seen`: the last round before this thread's first.
  void work(int t, uint32_t seen) {
    for (;; ++seen) {
      round_.wait(seen, std::memory_order_acquire);
      if (t < count_) (*body_)(t);
      if (running_.fetch_sub(1, std::memory_order_acq_rel) == 1) running_.notify_one();
    }
  }

  std::vector<std::thread> threads_;
  const std::function<void(int)>* body_ = nullptr;
  int count_ = 0;
  std::atomic<uint32_t> round_{0};
  std::atomic<int> running_{0};
};

// Never destroyed: its threads wait for the next launch until the process ends.
ThreadTeam& team() {
  static ThreadTeam* const team = new ThreadTeam;
  return *team;
}

}  // namespace

void sync_block() {
  if (this_thread.block == nullptr) fail("__syncthreads outside a kernel");
  this_thread.block->barrier.arrive_and_wait();
}

void exchange_in_warp(unsigned mask, const void* value, void* out, std::size_t bytes, int lane_mask) {
  Warp* warp = this_thread.warp;
  if (warp == nullptr) fail("warp shuffle outside a kernel");
  if (mask != 0xffffffffu || warp->lanes != kWarpSize) fail("warp shuffles are emulated for full warps only");
  const int source = this_thread.lane ^ lane_mask;
  if (source < 0 || source >= kWarpSize) fail("shuffle lane mask out of range");
  auto& slots = warp->slots[this_thread.exchanges++ % 2];
  std::memcpy(slots[this_thread.lane], value, bytes);
  warp->barrier.arrive_and_wait();
  std::memcpy(out, slots[source], bytes);
}

void run_grid(const void* kernel, dim3 grid, dim3 block, const std::function<void()>& kernel_body) {
  std::lock_guard<std::mutex> lock(launch_mutex);
  launch_log.push_back(describe(kernel, grid, block));
  gridDim = grid;
  blockDim = block;
  Block shared;
  shared.threads = static_cast<int>(block.x * block.y * block.z);
  for (int first = 0; first < shared.threads; first += kWarpSize) {
    shared.warps.push_back(std::make_unique<Warp>());
    shared.warps.back()->lanes = std::min(kWarpSize, shared.threads - first);
  }
  shared.reset();
  Barrier block_done;
  block_done.reset(shared.threads);
  const uint64_t blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;

  team().run(shared.threads, [&](int t) {
    threadIdx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
    for (uint64_t b = 0; b < blocks; ++b) {
      blockIdx = {static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                  static_cast<unsigned>(b / (static_cast<uint64_t>(grid.x) * grid.y))};
      this_thread = {&shared, shared.warps[t / kWarpSize].get(), t % kWarpSize, 0};
      kernel_body();
      // Returned from the kernel: no later barrier of this block waits for this thread.
      shared.barrier.drop();
      this_thread.warp->barrier.drop();
      block_done.arrive_and_wait([&] { shared.reset(); });
    }
    this_thread = {nullptr, nullptr, 0, 0};
  });
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
