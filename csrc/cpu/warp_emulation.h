// A CUDA warp emulated on one host thread, for tests of device code written against a warp policy
// (common/gram_warp.h): 32 lanes as coroutines (POSIX ucontext), switched at every warp operation.
//
// run(body) starts body(lane) on each lane and schedules them round robin. A warp operation is a
// barrier: a lane that reaches it yields until all 32 have; the last one to arrive lets them all
// pass. Exchanged values sit in two alternating buffers, so a lane reading the values of one
// operation cannot see those of the next (the next-but-one cannot start before every lane has
// passed the next barrier). Lanes must call the operations in the same order, as on the device
// where __syncwarp with a full mask requires it; a lane that returns while others wait at a barrier
// is reported as an error. Built with glibc only (FASTAL_WARP_EMULATION), whose ucontext routines
// are complete (musl has none; macOS wants _XOPEN_SOURCE and deprecates them); elsewhere the host
// builds that need it report that they are unavailable.
#pragma once
#include <cstdint>  // defines __GLIBC__ where glibc is the C library
#if defined(__GLIBC__)
#define FASTAL_WARP_EMULATION 1
#endif

#ifdef FASTAL_WARP_EMULATION
#include <ucontext.h>

#include <functional>
#include <stdexcept>
#include <vector>

namespace fastal::cpu {

class WarpEmulator {
 public:
  static constexpr int kLanes = 32;

  WarpEmulator() : stacks_(static_cast<size_t>(kLanes) * kStackBytes) {}
  WarpEmulator(const WarpEmulator&) = delete;
  WarpEmulator& operator=(const WarpEmulator&) = delete;

  // body(lane) on every lane until all return; throws std::logic_error when the lanes diverge.
  void run(const std::function<void(int)>& body) {
    body_ = &body;
    WarpEmulator* outer = current_;
    current_ = this;
    arrived_ = finished_ = 0;
    for (int l = 0; l < kLanes; ++l) {
      done_[l] = false;
      getcontext(&lanes_[l]);
      lanes_[l].uc_stack.ss_sp = stacks_.data() + static_cast<size_t>(l) * kStackBytes;
      lanes_[l].uc_stack.ss_size = kStackBytes;
      lanes_[l].uc_link = &main_;
      makecontext(&lanes_[l], &WarpEmulator::entry, 0);
    }
    bool diverged = false;
    while (finished_ < kLanes && !diverged) {
      const int64_t gen = gen_;
      for (int l = 0; l < kLanes; ++l) {
        if (done_[l]) continue;
        lane_ = l;
        swapcontext(&main_, &lanes_[l]);
      }
      // a full round in which no barrier opened, with some lanes finished: the rest wait forever
      diverged = gen_ == gen && finished_ > 0 && finished_ < kLanes;
    }
    current_ = outer;
    if (diverged) throw std::logic_error("warp emulation: lanes diverged at a warp operation");
  }

  static WarpEmulator& current() { return *current_; }
  int lane() const { return lane_; }

  // Lane src's v, after every lane has given its own.
  double exchange(double v, int src) {
    const int64_t g = gen_;
    values_[g & 1][lane_] = v;
    barrier();
    return values_[g & 1][src];
  }
  // Whether p holds on some lane.
  bool any(bool p) {
    const int64_t g = gen_;
    flags_[g & 1][lane_] = p;
    barrier();
    bool r = false;
    for (int l = 0; l < kLanes; ++l) r |= flags_[g & 1][l];
    return r;
  }
  void barrier() {
    const int64_t g = gen_;
    if (++arrived_ == kLanes) {
      arrived_ = 0;
      ++gen_;
      return;
    }
    while (gen_ == g) yield();
  }

 private:
  static constexpr size_t kStackBytes = size_t{256} << 10;

  void yield() { swapcontext(&lanes_[lane_], &main_); }
  static void entry() {
    WarpEmulator& w = current();
    const int l = w.lane_;
    (*w.body_)(l);
    w.done_[l] = true;
    ++w.finished_;
  }  // returns to main_ through uc_link

  static inline thread_local WarpEmulator* current_ = nullptr;
  std::vector<char> stacks_;
  ucontext_t main_{}, lanes_[kLanes]{};
  const std::function<void(int)>* body_ = nullptr;
  int lane_ = 0, arrived_ = 0, finished_ = 0;
  int64_t gen_ = 0;
  bool done_[kLanes]{};
  double values_[2][kLanes]{};
  bool flags_[2][kLanes]{};
};

// The warp policy of common/gram_warp.h on the emulator.
struct HostWarp {
  static double shfl(double v, int src) { return WarpEmulator::current().exchange(v, src); }
  static double shfl_xor(double v, int m) {
    WarpEmulator& w = WarpEmulator::current();
    return w.exchange(v, w.lane() ^ m);
  }
  static void sync() { WarpEmulator::current().barrier(); }
  static bool any(bool p) { return WarpEmulator::current().any(p); }
  template <typename T>
  static double load(const T* p) {
    return static_cast<double>(*p);
  }
};

}  // namespace fastal::cpu
#endif  // FASTAL_WARP_EMULATION
