// CUDA threads emulated on one host thread, for tests of device code written against a policy of
// warp and block operations (common/gram_warp.h, common/topb_fused.h): every thread of a grid is a
// coroutine (glibc ucontext), and the coroutines switch only at warp, block and grid operations.
//
// run(body) starts body(block, thread) for every thread of the grid and schedules them in rounds,
// each in a new order (a fixed-seed shuffle, so runs repeat): a read that a missing barrier leaves
// unordered after another thread's write then sees the old value in some rounds and the new one in
// others, whichever thread comes first in the code.
// Each operation is a barrier of its group (the 32 lanes of a warp, the threads of a block, or the
// grid): a thread that reaches it yields until the whole group has; the last to arrive opens it.
// Values exchanged within a warp sit in two alternating buffers per warp, so a lane reading those
// of one operation cannot see those of the next (the next-but-one cannot start before every lane
// has passed the next barrier). Between operations a thread runs alone, so plain read-modify-writes
// stand in for atomics. Threads must meet the same operations in the same order, as __syncwarp
// with a full mask and __syncthreads require; a round in which no barrier opens is reported as an
// error. Built with glibc only (FASTAL_SIMT_EMULATION), whose ucontext routines are complete (musl
// has none; macOS wants _XOPEN_SOURCE and deprecates them); elsewhere the host builds that need it
// report that they are unavailable.
#pragma once
#include <cstdint>  // defines __GLIBC__ where glibc is the C library
#if defined(__GLIBC__)
#define FASTAL_SIMT_EMULATION 1
#endif

#ifdef FASTAL_SIMT_EMULATION
#include <ucontext.h>

#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <utility>
#include <vector>

namespace fastal::cpu {

class SimtEmulator {
 public:
  static constexpr int kLanes = 32;

  SimtEmulator(int blocks, int threads)
      : blocks_(blocks), threads_(threads), total_(blocks * threads) {
    if (blocks < 1 || threads < kLanes || threads % kLanes != 0)
      throw std::invalid_argument("SimtEmulator: blocks >= 1 and whole warps of threads");
    const size_t warps = static_cast<size_t>(total_ / kLanes);
    // not value-initialised: only the pages a coroutine touches are committed
    stacks_.reset(new char[static_cast<size_t>(total_) * kStackBytes]);
    ctx_.resize(static_cast<size_t>(total_));
    done_.resize(static_cast<size_t>(total_));
    warp_bar_.resize(warps);
    block_bar_.resize(static_cast<size_t>(blocks));
    gather_.resize(warps * 2 * kLanes);
  }
  SimtEmulator(const SimtEmulator&) = delete;
  SimtEmulator& operator=(const SimtEmulator&) = delete;

  // body(block, thread) on every thread until all return; throws std::logic_error when they stop
  // meeting at the same operations.
  void run(const std::function<void(int, int)>& body) {
    body_ = &body;
    SimtEmulator* outer = current_;
    current_ = this;
    finished_ = 0;
    for (int i = 0; i < total_; ++i) {
      done_[i] = 0;
      getcontext(&ctx_[i]);
      ctx_[i].uc_stack.ss_sp = stacks_.get() + static_cast<size_t>(i) * kStackBytes;
      ctx_[i].uc_stack.ss_size = kStackBytes;
      ctx_[i].uc_link = &main_;
      makecontext(&ctx_[i], &SimtEmulator::entry, 0);
    }
    std::vector<int> order(static_cast<size_t>(total_));
    for (int i = 0; i < total_; ++i) order[static_cast<size_t>(i)] = i;
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    bool stuck = false;
    while (finished_ < total_ && !stuck) {
      const int64_t opened = opened_, finished = finished_;
      for (int k = total_ - 1; k > 0; --k) {  // Fisher-Yates with xorshift64
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        std::swap(order[static_cast<size_t>(k)], order[static_cast<size_t>(rng % (k + 1))]);
      }
      for (const int i : order) {
        if (done_[i]) continue;
        index_ = i;
        swapcontext(&main_, &ctx_[i]);
      }
      stuck = opened_ == opened && finished_ == finished;
    }
    current_ = outer;
    if (stuck) throw std::logic_error("SIMT emulation: threads wait at different operations");
  }

  static SimtEmulator& current() { return *current_; }
  int block() const { return index_ / threads_; }
  int thread() const { return index_ % threads_; }
  int lane() const { return index_ % kLanes; }
  int blocks() const { return blocks_; }

  // The 32 values of the caller's warp, after every lane has given its own.
  const uint64_t* warp_gather(uint64_t v) {
    const size_t w = static_cast<size_t>(index_ / kLanes);
    uint64_t* buf = gather_.data() + (w * 2 + static_cast<size_t>(warp_bar_[w].gen & 1)) * kLanes;
    buf[lane()] = v;
    wait(warp_bar_[w], kLanes);
    return buf;
  }
  void warp_sync() { wait(warp_bar_[static_cast<size_t>(index_ / kLanes)], kLanes); }
  void block_sync() { wait(block_bar_[static_cast<size_t>(block())], threads_); }
  void grid_sync() { wait(grid_bar_, total_); }

 private:
  static constexpr size_t kStackBytes = size_t{64} << 10;
  struct Barrier {
    int arrived = 0;
    int64_t gen = 0;
  };

  void wait(Barrier& bar, int count) {
    const int64_t g = bar.gen;
    if (++bar.arrived == count) {
      bar.arrived = 0;
      ++bar.gen;
      ++opened_;
      return;
    }
    while (bar.gen == g) swapcontext(&ctx_[index_], &main_);
  }
  static void entry() {
    SimtEmulator& e = current();
    const int i = e.index_;
    (*e.body_)(i / e.threads_, i % e.threads_);
    e.done_[i] = 1;
    ++e.finished_;
  }  // returns to main_ through uc_link

  static inline thread_local SimtEmulator* current_ = nullptr;
  int blocks_, threads_, total_;
  std::unique_ptr<char[]> stacks_;
  std::vector<ucontext_t> ctx_;
  std::vector<char> done_;
  std::vector<Barrier> warp_bar_, block_bar_;
  Barrier grid_bar_;
  std::vector<uint64_t> gather_;
  ucontext_t main_{};
  const std::function<void(int, int)>* body_ = nullptr;
  int index_ = 0, finished_ = 0;
  int64_t opened_ = 0;
};

inline uint64_t bits_of(double v) {
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}
inline double double_of(uint64_t b) {
  double v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

// The warp policy of common/gram_warp.h on the emulator (warps of any block).
struct HostWarp {
  static double shfl(double v, int src) {
    return double_of(SimtEmulator::current().warp_gather(bits_of(v))[src]);
  }
  static double shfl_xor(double v, int m) {
    SimtEmulator& e = SimtEmulator::current();
    return double_of(e.warp_gather(bits_of(v))[e.lane() ^ m]);
  }
  static void sync() { SimtEmulator::current().warp_sync(); }
  static bool any(bool p) {
    const uint64_t* all = SimtEmulator::current().warp_gather(p ? 1 : 0);
    for (int l = 0; l < SimtEmulator::kLanes; ++l)
      if (all[l]) return true;
    return false;
  }
  template <typename T>
  static double load(const T* p) {
    return static_cast<double>(*p);
  }
};

}  // namespace fastal::cpu
#endif  // FASTAL_SIMT_EMULATION
