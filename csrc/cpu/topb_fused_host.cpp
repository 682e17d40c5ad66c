// The fused GPU top-b kernel's body (common/topb_fused.h) built for the host and run on emulated
// threads (cpu/simt_emulation.h): a grid of `grid` blocks of 256 threads, then the candidates'
// stable sort and the support, as the device's host code does (cuda/topb_fused.cu), so that the
// CPU tests check the code the GPU runs. Tests only: slow (every warp operation switches
// coroutines). Compiled without floating-point contraction, as the device rounds the scores.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "common/check.h"
#include "common/topb_fused.h"
#include "cpu/kernels.h"
#include "cpu/simt_emulation.h"

namespace fastal::cpu {

#ifdef FASTAL_SIMT_EMULATION
namespace {

using topb::u64;
constexpr u64 kGarbage64 = 0xA5A5A5A5A5A5A5A5ull;  // stands in for memory nobody wrote

// The thread, warp, block and grid operations of common/topb_fused.h on the emulator. Threads run
// one at a time between operations, so plain read-modify-writes are atomic.
struct HostBlock {
  static SimtEmulator& emu() { return SimtEmulator::current(); }
  static int tid() { return emu().thread(); }
  static int block() { return emu().block(); }
  static int blocks() { return emu().blocks(); }
  static void sync_block() { emu().block_sync(); }
  static void sync_grid() { emu().grid_sync(); }
  static unsigned ballot(bool p) {
    const uint64_t* all = emu().warp_gather(p ? 1 : 0);
    unsigned m = 0;
    for (int l = 0; l < SimtEmulator::kLanes; ++l) m |= all[l] ? 1u << l : 0u;
    return m;
  }
  static unsigned match_any(unsigned v) {
    const uint64_t* all = emu().warp_gather(v);
    unsigned m = 0;
    for (int l = 0; l < SimtEmulator::kLanes; ++l) m |= all[l] == v ? 1u << l : 0u;
    return m;
  }
  static u64 shfl(u64 v, int src) { return emu().warp_gather(v)[src]; }
  static u64 shfl_up(u64 v, int off) {
    const int lane = emu().lane();
    const uint64_t* all = emu().warp_gather(v);
    return lane >= off ? all[lane - off] : v;
  }
  static u64 shfl_xor(u64 v, int m) {
    const int lane = emu().lane();
    return emu().warp_gather(v)[lane ^ m];
  }
  template <typename T>
  static T load(const T* p) {
    return *p;
  }
  template <typename T>
  static T load_l2(const T* p) {
    return *p;
  }
  static void atomic_add(unsigned* p, unsigned v) { *p += v; }
  static void atomic_add(u64* p, u64 v) { *p += v; }
  static void atomic_max(u64* p, u64 v) { *p = std::max(*p, v); }
};

}  // namespace
#endif

void iht_threshold_fused_host(const float* s, const float* sigma, int64_t n, int64_t b,
                              double alpha, bool exact, int grid, int64_t* support, float* w,
                              int64_t nonfinite[4]) {
#ifdef FASTAL_SIMT_EMULATION
  FASTAL_REQUIRE(n >= 1 && n < (int64_t{1} << 32), "n must be in [1, 2^32), got ", n);
  FASTAL_REQUIRE(b >= 1 && b <= n, "b must be in [1, n = ", n, "], got ", b);
  FASTAL_REQUIRE(grid >= 1 && grid <= 64, "grid must be in [1, 64], got ", grid);
  const int64_t cap = std::min<int64_t>(n, b + static_cast<int64_t>(topb::kBinCandidates));
  // as on the device: the result and the histograms zeroed, the rest left as it was (a pattern
  // here, so that a read before a write shows)
  topb::FusedResult res{};
  std::vector<unsigned> hist(static_cast<size_t>(topb::kPasses * topb::kBins), 0);
  std::vector<u64> block_counts(static_cast<size_t>(grid), kGarbage64);
  std::vector<u64> keys(static_cast<size_t>(cap), kGarbage64);
  std::vector<unsigned> index(static_cast<size_t>(cap), static_cast<unsigned>(kGarbage64));
  const topb::FusedParams p{s,
                            sigma,
                            n,
                            b,
                            topb::Rule{alpha, exact},
                            hist.data(),
                            block_counts.data(),
                            &res,
                            keys.data(),
                            index.data(),
                            cap,
                            w};
  std::vector<topb::FusedShared> shared(static_cast<size_t>(grid));
  std::memset(static_cast<void*>(shared.data()), 0xA5, sizeof(topb::FusedShared) * shared.size());
  SimtEmulator emu(grid, topb::kBlockThreads);
  emu.run(
      [&](int blk, int) { topb::fused_select<HostBlock>(p, shared[static_cast<size_t>(blk)]); });
  nonfinite[0] = static_cast<int64_t>(res.nonfinite[0]);
  nonfinite[1] = nonfinite[0] ? n - static_cast<int64_t>(res.first_from_end[0]) : -1;
  nonfinite[2] = static_cast<int64_t>(res.nonfinite[1]);
  nonfinite[3] = nonfinite[2] ? n - static_cast<int64_t>(res.first_from_end[1]) : -1;
  if (nonfinite[0] || nonfinite[2]) return;
  const auto m = static_cast<int64_t>(res.count);
  FASTAL_ASSERT(m >= b && m <= cap, "the fused top-b selection found ", m,
                " candidates for b = ", b, " (at most ", cap, ")");

  // the device sorts the candidates' keys (stable, over the bits that differ); a stable sort of
  // whole keys orders them alike
  const bool narrow = res.narrow != 0;
  const auto* keys32 = reinterpret_cast<const unsigned*>(keys.data());
  auto key_of = [&](int64_t c) { return narrow ? u64{keys32[c]} : keys[static_cast<size_t>(c)]; };
  std::vector<int64_t> order(static_cast<size_t>(m));
  std::iota(order.begin(), order.end(), int64_t{0});
  if (topb::sort_end_bit(res) > 0)
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t x, int64_t y) { return key_of(x) < key_of(y); });
  std::vector<unsigned> sorted_index(static_cast<size_t>(m));
  std::vector<u64> sorted_keys(static_cast<size_t>(m));
  std::vector<unsigned> sorted_keys32(static_cast<size_t>(m));
  for (int64_t j = 0; j < m; ++j) {
    sorted_index[j] = index[static_cast<size_t>(order[j])];
    sorted_keys[j] = key_of(order[j]);
    sorted_keys32[j] = static_cast<unsigned>(sorted_keys[j]);
  }
  const void* final_keys = narrow ? static_cast<const void*>(sorted_keys32.data())
                                  : static_cast<const void*>(sorted_keys.data());
  for (int64_t j = 0; j < b; ++j)
    topb::finish_entry(j, s, sorted_index.data(), final_keys, narrow, ~res.min_not, res.lo,
                       res.ranked != 0, support, w);
#else
  (void)s, (void)sigma, (void)n, (void)b, (void)alpha, (void)exact, (void)grid, (void)support,
      (void)w, (void)nonfinite;
  FASTAL_REQUIRE(false, "the SIMT emulation needs glibc's ucontext, which this build lacks");
#endif
}

}  // namespace fastal::cpu
