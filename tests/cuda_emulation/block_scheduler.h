// How the emulation (emulation.cpp) runs the threads of a block: each CUDA thread is a
// fiber (a ucontext with a stack of its own) on the launching host thread; one runs at a
// time, until it waits at a barrier or returns, and then the first runnable thread in an
// order that reverses at every __syncthreads takes over. Deterministic, so a failure
// repeats; and adversarial where it matters: the threads run after a __syncthreads in the
// opposite order to the one before it, so a shared-memory read that the kernel fails to
// order after a write (a missing __syncthreads) sees the wrong value every time. Fibers
// rather than a host thread per CUDA thread: a switch costs well under a microsecond, a
// hand-over between host threads tens on a busy 2-core machine (blocks ran 5 to 30 times
// slower that way).
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <vector>

namespace cuda_emulation {

class BlockScheduler {
 public:
  // Each thread runs `body`; `on_switch(t)` runs whenever thread t (linear index in the
  // block) is about to run (it sets threadIdx).
  BlockScheduler(int threads, int warp_size, std::function<void()> body, std::function<void(int)> on_switch)
      : warp_size_(warp_size), body_(std::move(body)), on_switch_(std::move(on_switch)), state_(threads),
        contexts_(threads), stacks_(threads), warp_alive_((threads + warp_size - 1) / warp_size),
        warp_waiting_(warp_alive_.size()) {
    for (auto& stack : stacks_) stack.reset(new char[kStackBytes]);
  }

  // Runs every thread of the block from the start of the kernel until it returns.
  void run_block() {
    const int threads = static_cast<int>(state_.size());
    std::fill(state_.begin(), state_.end(), kRunnable);
    alive_ = threads;
    block_waiting_ = 0;
    for (std::size_t w = 0; w < warp_alive_.size(); ++w) {
      warp_alive_[w] = std::min(warp_size_, threads - static_cast<int>(w) * warp_size_);
      warp_waiting_[w] = 0;
    }
    descending_ = false;
    for (int t = 0; t < threads; ++t) {
      getcontext(&contexts_[t]);
      contexts_[t].uc_stack = {stacks_[t].get(), 0, kStackBytes};
      contexts_[t].uc_link = nullptr;
      makecontext(&contexts_[t], &BlockScheduler::entry, 0);
    }
    running_scheduler() = this;
    switch_to(next_runnable(), &launcher_);
    running_scheduler() = nullptr;
  }

  // The running thread.
  int current() const { return current_; }

  // __syncthreads: waits for the block's threads that have not returned from the kernel.
  void sync_block() {
    state_[current_] = kAtBlockBarrier;
    if (++block_waiting_ == alive_) release_block();
    pass_turn();
  }

  // The barrier of a warp shuffle: waits for the warp's threads that have not returned.
  void sync_warp() {
    const int w = current_ / warp_size_;
    state_[current_] = kAtWarpBarrier;
    if (++warp_waiting_[w] == warp_alive_[w]) release_warp(w);
    pass_turn();
  }

 private:
  enum State { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kReturned };
  static constexpr std::size_t kStackBytes = 128 * 1024;

  static BlockScheduler*& running_scheduler() {
    static BlockScheduler* scheduler = nullptr;
    return scheduler;
  }

  static void entry() {
    BlockScheduler& self = *running_scheduler();
    self.body_();
    self.finish();
  }

  // The current thread has returned from the kernel; the barriers stop waiting for it.
  [[noreturn]] void finish() {
    const int w = current_ / warp_size_;
    state_[current_] = kReturned;
    --alive_;
    if (--warp_alive_[w] > 0 && warp_waiting_[w] == warp_alive_[w]) release_warp(w);
    if (alive_ == 0) {
      setcontext(&launcher_);
    }
    if (block_waiting_ == alive_) release_block();
    current_ = next_runnable();
    on_switch_(current_);
    setcontext(&contexts_[current_]);
    std::abort();  // setcontext does not return
  }

  void release_block() {
    for (auto& s : state_) s = s == kAtBlockBarrier ? kRunnable : s;
    block_waiting_ = 0;
    descending_ = !descending_;
  }

  void release_warp(int w) {
    const int end = std::min<int>((w + 1) * warp_size_, static_cast<int>(state_.size()));
    for (int t = w * warp_size_; t < end; ++t) state_[t] = state_[t] == kAtWarpBarrier ? kRunnable : state_[t];
    warp_waiting_[w] = 0;
  }

  int next_runnable() const {
    const int threads = static_cast<int>(state_.size());
    for (int i = 0; i < threads; ++i) {
      const int t = descending_ ? threads - 1 - i : i;
      if (state_[t] == kRunnable) return t;
    }
    std::fprintf(stderr,
                 "cuda emulation: deadlock: every thread of the block waits at a barrier that the others "
                 "cannot reach (a __syncthreads in divergent code, or a shuffle with lanes that returned)\n");
    std::abort();
  }

  void switch_to(int t, ucontext_t* from) {
    current_ = t;
    on_switch_(t);
    swapcontext(from, &contexts_[t]);
  }

  // The current thread, at a barrier, hands over to the first runnable thread in order (itself
  // when it has just released the barrier and comes first); it goes on when its turn comes.
  void pass_turn() {
    const int self = current_, next = next_runnable();
    if (next != self) switch_to(next, &contexts_[self]);
  }

  const int warp_size_;
  const std::function<void()> body_;
  const std::function<void(int)> on_switch_;
  std::vector<State> state_;
  std::vector<ucontext_t> contexts_;
  std::vector<std::unique_ptr<char[]>> stacks_;
  std::vector<int> warp_alive_, warp_waiting_;
  ucontext_t launcher_;
  int current_ = 0, alive_ = 0, block_waiting_ = 0;
  bool descending_ = false;
};

}  // namespace cuda_emulation
