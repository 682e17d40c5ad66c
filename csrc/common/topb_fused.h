// The fused IHT top-b selection (cuda/topb_fused.cu describes it): the body of its one cooperative
// kernel, written against a policy P of thread, warp, block and grid operations so that the host
// build (cpu/topb_fused_host.cpp) runs this same source on emulated threads
// (cpu/simt_emulation.h) and the CPU tests check it. P has static members
//   int tid(), block(), blocks()                  threadIdx.x, blockIdx.x, gridDim.x
//   void sync_block(), sync_grid()                __syncthreads, the grid barrier
//   unsigned ballot(bool), match_any(unsigned)    the warp votes
//   u64 shfl(u64, int), shfl_up(u64, int), shfl_xor(u64, int)
//   T load(const T*), T load_l2(const T*)         a read-only load; a load of other blocks' writes
//   void atomic_add(unsigned*, unsigned), atomic_add(u64*, u64), atomic_max(u64*, u64)
// and blocks of kBlockThreads threads.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/hd.h"
#include "common/topb_key.h"

namespace fastal::topb {

constexpr int kBlockThreads = 256;
constexpr int kBlockWarps = kBlockThreads / 32;
constexpr int kUnroll = 4;                      // rows in flight per thread in a digit pass
constexpr int kItems = 8;                       // rows per thread per round of the write pass
constexpr int kRound = kBlockThreads * kItems;  // rows per round
constexpr int kPer = kBins / kBlockThreads;     // bins per thread when a block scans a histogram
constexpr unsigned kNoBin = 0xffffffffu;
constexpr u64 kLow = 0xffffffffull;
static_assert(kBins % kBlockThreads == 0, "each thread scans whole bins");
static_assert(kItems * kBlockWarps == 64, "the round scan gives each lane of a warp two entries");

// What the host reads after the kernel; zeroed before it.
struct FusedResult {
  u64 nonfinite[2], first_from_end[2];  // [0] s, [1] sigma: count, and n - (the first) as a max
  u64 min_not;                          // ~(the smallest key): a maximum, so that 0 means none
  u64 lo, hi, quota, count;             // the candidate bin [lo, hi], its quota, the candidates
  unsigned ranked;                      // the bin's keys are ranked by the sort
  unsigned narrow;                      // candidate keys stored as 32-bit key - smallest key
};

// The kernel's arguments.
struct FusedParams {
  const float* s;
  const float* sigma;
  int64_t n, b;
  Rule rule;
  unsigned* hist;     // kPasses x kBins, zeroed
  u64* block_counts;  // one per block
  FusedResult* res;   // zeroed
  void* cand_keys;    // cap 64-bit keys, or 32-bit offsets when narrow
  unsigned* cand_index;
  int64_t cap;
  float* w;
};

// The selection, the same in every block (each computes it from the same global histograms).
struct Selection {
  u64 prefix, mask, below, lo, hi, quota;
  unsigned digit;  // the bin chosen by the last pass
  bool done, ranked;
};

// A block's shared memory.
struct FusedShared {
  unsigned h[kBins];  // this block's histogram of the current pass
  Selection sel;
  u64 counts[2];                           // this block's keys below the bin, and in it
  u64 before;                              // the counts of the blocks before this one (packed)
  u64 round_counts[kItems * kBlockWarps];  // write pass: (less << 32 | in) per (q, warp)
  u64 round_total;
  u64 red[kBlockWarps];  // block reductions
};

FASTAL_HD int popc(unsigned x) {
#if defined(__CUDA_ARCH__)
  return __popc(x);
#elif defined(__GNUC__) || defined(__clang__)
  return __builtin_popcount(x);
#else
  int c = 0;
  for (; x; x &= x - 1) ++c;
  return c;
#endif
}
// 1 + the index of the lowest set bit, 0 for none
FASTAL_HD int ffs(unsigned x) {
#if defined(__CUDA_ARCH__)
  return __ffs(static_cast<int>(x));
#elif defined(__GNUC__) || defined(__clang__)
  return __builtin_ffs(static_cast<int>(x));
#else
  if (!x) return 0;
  int i = 1;
  for (; !(x & 1u); x >>= 1) ++i;
  return i;
#endif
}
FASTAL_HD bool finite(float x) {
#if defined(__CUDA_ARCH__)
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

// ---- block operations ------------------------------------------------------------------------

template <class P>
FASTAL_HOST_DEVICE u64 warp_reduce(u64 v, bool take_min) {
  for (int off = 16; off > 0; off >>= 1) {
    const u64 o = P::shfl_xor(v, off);
    v = take_min ? (o < v ? o : v) : v + o;
  }
  return v;
}

// The sum (or minimum) of v over the block, in every thread.
template <class P>
FASTAL_HOST_DEVICE u64 block_reduce(u64 v, bool take_min, FusedShared& sh) {
  v = warp_reduce<P>(v, take_min);
  const int t = P::tid();
  if ((t & 31) == 0) sh.red[t >> 5] = v;
  P::sync_block();
  u64 r = sh.red[0];
  for (int w = 1; w < kBlockWarps; ++w)
    r = take_min ? (sh.red[w] < r ? sh.red[w] : r) : r + sh.red[w];
  P::sync_block();  // red is rewritten by the next reduction
  return r;
}

// The sum of v over the threads before this one, in thread order.
template <class P>
FASTAL_HOST_DEVICE u64 block_exclusive_sum(u64 v, FusedShared& sh) {
  const int t = P::tid(), lane = t & 31, warp = t >> 5;
  u64 incl = v;
  for (int off = 1; off < 32; off <<= 1) {
    const u64 up = P::shfl_up(incl, off);
    if (lane >= off) incl += up;
  }
  if (lane == 31) sh.red[warp] = incl;
  P::sync_block();
  u64 before = 0;
  for (int w = 0; w < warp; ++w) before += sh.red[w];
  P::sync_block();
  return before + incl - v;
}

// The lanes of the warp whose value is NaN or Inf, counted into *count and the first (lowest
// index: lanes rise with it) as n - index into *first_from_end. All lanes call it.
template <class P>
FASTAL_HOST_DEVICE void note_nonfinite(bool bad, int64_t i, int64_t n, u64* count,
                                       u64* first_from_end) {
  const unsigned lanes = P::ballot(bad);
  if (!lanes) return;
  const auto first = static_cast<int64_t>(P::shfl(static_cast<u64>(i), ffs(lanes) - 1));
  if ((P::tid() & 31) == 0) {
    P::atomic_add(count, static_cast<u64>(popc(lanes)));
    P::atomic_max(first_from_end, static_cast<u64>(n - first));
  }
}

// Every block, after pass `shift`'s barrier: the bin of the global histogram `hist` holding the
// need-th smallest matching key (need = b - below), into sh.sel. Exactly one thread finds it (the
// running counts rise through need). [lo, hi] is the bin; it ends the selection when the whole bin
// is needed, when the key is complete, or when the bin is small enough for the sort to rank.
template <class P>
FASTAL_HOST_DEVICE void choose_bin(const unsigned* hist, int64_t b, int shift, int width,
                                   FusedShared& sh) {
  Selection& sel = sh.sel;
  const u64 below = sel.below, prefix0 = sel.prefix, mask0 = sel.mask;  // read before the scan
  const int t = P::tid();
  unsigned c[kPer];
  u64 sum = 0;
  for (int k = 0; k < kPer; ++k) {
    c[k] = P::load_l2(hist + t * kPer + k);  // other blocks' atomics
    sum += c[k];
  }
  u64 before = block_exclusive_sum<P>(sum, sh);
  const u64 need = static_cast<u64>(b) - below;
  for (int k = 0; k < kPer; ++k) {
    if (before < need && need <= before + c[k]) {
      const unsigned digit = static_cast<unsigned>(t * kPer + k);
      const u64 rank = need - before;  // 1-based rank of the b-th key inside the bin
      const u64 prefix = prefix0 | (u64{digit} << shift);
      const u64 mask = mask0 | (((u64{1} << width) - 1) << shift);
      sel.prefix = prefix;
      sel.mask = mask;
      sel.below = below + before;
      sel.digit = digit;
      sel.lo = prefix;
      sel.hi = prefix | ~mask;
      if (rank == c[k]) {  // the whole bin is needed
        sel.done = true, sel.quota = ~u64{0}, sel.ranked = false;
      } else if (shift == 0) {  // the key is complete: the first `rank` of its rows
        sel.done = true, sel.quota = rank, sel.ranked = false;
      } else if (c[k] <= kBinCandidates) {  // a small bin: all of it to the sort, which ranks it
        sel.done = true, sel.quota = ~u64{0}, sel.ranked = true;
      }
    }
    before += c[k];
  }
}

// s and sigma of rows base + q * kBlockThreads + tid for q < K, 0 past `end`.
template <class P, int K>
FASTAL_HD void load_rows(const FusedParams& p, int64_t base, int64_t end, float (&sv)[K],
                         float (&gv)[K]) {
  FASTAL_UNROLL
  for (int q = 0; q < K; ++q) {
    const int64_t i = base + q * kBlockThreads + P::tid();
    sv[q] = i < end ? P::load(p.s + i) : 0.f;
    gv[q] = i < end ? P::load(p.sigma + i) : 0.f;
  }
}

// ---- the kernel body ---------------------------------------------------------------------------

// Digit passes until the selection ends; returns with sh.sel final and sh.counts this block's.
template <class P>
FASTAL_HOST_DEVICE void digit_passes(const FusedParams& p, int64_t begin, int64_t end,
                                     FusedShared& sh) {
  const int tid = P::tid(), lane = tid & 31;
  u64 kmin = ~u64{0};
  for (int pass = 0; pass < kPasses; ++pass) {
    for (int i = tid; i < kBins; i += kBlockThreads) sh.h[i] = 0;
    P::sync_block();
    const u64 prefix = sh.sel.prefix, mask = sh.sel.mask;
    const int shift = pass_shift(pass), width = pass_width(pass);
    const unsigned digit_mask = (1u << width) - 1u;
    for (int64_t base = begin; base < end; base += int64_t{kBlockThreads} * kUnroll) {
      float sv[kUnroll], gv[kUnroll];
      load_rows<P>(p, base, end, sv, gv);
      FASTAL_UNROLL
      for (int q = 0; q < kUnroll; ++q) {
        const int64_t i = base + q * kBlockThreads + tid;
        const bool valid = i < end;
        if (pass == 0) {
          note_nonfinite<P>(!finite(sv[q]), i, p.n, &p.res->nonfinite[0],
                            &p.res->first_from_end[0]);
          note_nonfinite<P>(!finite(gv[q]), i, p.n, &p.res->nonfinite[1],
                            &p.res->first_from_end[1]);
        }
        const u64 key = score_key(sv[q], gv[q], p.rule);
        if (pass == 0 && valid && key < kmin) kmin = key;
        const bool match = valid && (key & mask) == prefix;
        const unsigned digit = match ? static_cast<unsigned>(key >> shift) & digit_mask : kNoBin;
        // lanes with the same digit add once: many equal scores must not serialise on one bin
        const unsigned peers = P::match_any(digit);
        if (match && lane == ffs(peers) - 1) P::atomic_add(sh.h + digit, popc(peers));
      }
    }
    if (pass == 0) {
      const u64 block_min = block_reduce<P>(kmin, true, sh);
      if (tid == 0 && block_min != ~u64{0}) P::atomic_max(&p.res->min_not, ~block_min);
    }
    P::sync_block();
    for (int i = tid; i < kBins; i += kBlockThreads)
      if (sh.h[i]) P::atomic_add(p.hist + pass * kBins + i, sh.h[i]);
    P::sync_grid();
    choose_bin<P>(p.hist + pass * kBins, p.b, shift, width, sh);
    P::sync_block();
    // this block's keys below the chosen bin (within the prefix's bin) and in it
    const unsigned digit = sh.sel.digit;
    u64 part = 0;
    for (int i = tid; i < kBins; i += kBlockThreads)
      part += i < static_cast<int>(digit) ? sh.h[i] : 0u;
    const u64 less = block_reduce<P>(part, false, sh);
    if (tid == 0) {
      sh.counts[0] += less;
      sh.counts[1] = sh.h[digit];
    }
    P::sync_block();
    if (sh.sel.done) return;
  }
}

// Every row of [begin, end) in index order: candidates at less + min(in, quota), and w.
template <class P>
FASTAL_HOST_DEVICE void write_rows(const FusedParams& p, int64_t begin, int64_t end, u64 smallest,
                                   bool narrow, FusedShared& sh) {
  const int tid = P::tid(), lane = tid & 31, warp = tid >> 5;
  const u64 lo = sh.sel.lo, hi = sh.sel.hi, quota = sh.sel.quota;
  const bool ranked = sh.sel.ranked;
  u64 run_less = sh.before >> 32, run_in = sh.before & kLow;
  const unsigned below_lane = (1u << lane) - 1u;
  for (int64_t base = begin; base < end; base += kRound) {
    float sv[kItems], gv[kItems];
    load_rows<P>(p, base, end, sv, gv);
    u64 keys[kItems];
    unsigned less_lanes[kItems], in_lanes[kItems];
    FASTAL_UNROLL
    for (int q = 0; q < kItems; ++q) {
      const bool valid = base + q * kBlockThreads + tid < end;
      keys[q] = score_key(sv[q], gv[q], p.rule);
      less_lanes[q] = P::ballot(valid && keys[q] < lo);
      in_lanes[q] = P::ballot(valid && keys[q] >= lo && keys[q] <= hi);
      if (lane == 0)
        sh.round_counts[q * kBlockWarps + warp] =
            (u64{static_cast<unsigned>(popc(less_lanes[q]))} << 32) | popc(in_lanes[q]);
    }
    P::sync_block();
    if (warp == 0) {  // exclusive scan of the (q, warp) counts: index order
      const u64 a = sh.round_counts[2 * lane], c = sh.round_counts[2 * lane + 1];
      u64 incl = a + c;
      for (int off = 1; off < 32; off <<= 1) {
        const u64 up = P::shfl_up(incl, off);
        if (lane >= off) incl += up;
      }
      const u64 excl = incl - (a + c);
      sh.round_counts[2 * lane] = excl;
      sh.round_counts[2 * lane + 1] = excl + a;
      if (lane == 31) sh.round_total = incl;
    }
    P::sync_block();
    FASTAL_UNROLL
    for (int q = 0; q < kItems; ++q) {
      const int64_t i = base + q * kBlockThreads + tid;
      if (i >= end) continue;
      const u64 off = sh.round_counts[q * kBlockWarps + warp];
      const u64 my_less = run_less + (off >> 32) + popc(less_lanes[q] & below_lane);
      const u64 my_in = run_in + (off & kLow) + popc(in_lanes[q] & below_lane);
      const bool is_less = (less_lanes[q] >> lane) & 1u, is_in = (in_lanes[q] >> lane) & 1u;
      const bool take = is_less || (is_in && my_in < quota);
      if (take) {
        const u64 pos = my_less + (my_in < quota ? my_in : quota);
        if (pos < static_cast<u64>(p.cap)) {  // always, by the counts; a guard against a bad state
          if (narrow)
            static_cast<unsigned*>(p.cand_keys)[pos] = static_cast<unsigned>(keys[q] - smallest);
          else
            static_cast<u64*>(p.cand_keys)[pos] = keys[q];
          p.cand_index[pos] = static_cast<unsigned>(i);
        }
      }
      p.w[i] = take && !(ranked && is_in) && sv[q] > 0.f ? sv[q] : 0.f;
    }
    run_less += sh.round_total >> 32;
    run_in += sh.round_total & kLow;
    P::sync_block();  // round_counts and round_total are rewritten by the next round
  }
}

// The whole kernel, every thread of every (co-resident) block.
template <class P>
FASTAL_HOST_DEVICE void fused_select(const FusedParams& p, FusedShared& sh) {
  const int tid = P::tid(), blk = P::block(), blocks = P::blocks();
  const int64_t per = ((p.n + blocks - 1) / blocks + 31) / 32 * 32;
  const int64_t begin = p.n < blk * per ? p.n : blk * per;
  const int64_t end = p.n < begin + per ? p.n : begin + per;
  if (tid == 0) {
    sh.sel = Selection{};
    sh.counts[0] = 0;
  }
  digit_passes<P>(p, begin, end, sh);

  // the blocks' counts: this block's rows come after those of the blocks before it
  if (tid == 0) p.block_counts[blk] = (sh.counts[0] << 32) | sh.counts[1];
  P::sync_grid();
  u64 mine = 0, all = 0;
  for (int j = tid; j < blocks; j += kBlockThreads) {
    const u64 c = P::load_l2(p.block_counts + j);  // packed halves: each total < 2^32, no carry
    all += c;
    mine += j < blk ? c : 0;
  }
  const u64 before = block_reduce<P>(mine, false, sh);
  const u64 total = block_reduce<P>(all, false, sh);
  const u64 smallest = ~P::load_l2(&p.res->min_not);
  const bool narrow = sh.sel.hi - smallest <= kLow;
  if (tid == 0) {
    sh.before = before;
    if (blk == 0) {
      const u64 quota = sh.sel.quota;
      p.res->lo = sh.sel.lo;
      p.res->hi = sh.sel.hi;
      p.res->quota = quota;
      p.res->count = (total >> 32) + ((total & kLow) < quota ? (total & kLow) : quota);
      p.res->ranked = sh.sel.ranked;
      p.res->narrow = narrow;
    }
  }
  P::sync_block();
  write_rows<P>(p, begin, end, smallest, narrow, sh);
}

// The key bits [0, end) in which the candidates differ, for the sort after the kernel (0: all keys
// equal, index order is the order): narrow keys are offsets from the smallest key.
FASTAL_HD int sort_end_bit(const FusedResult& r) {
  const u64 x = r.narrow ? r.hi - ~r.min_not : r.hi ^ ~r.min_not;
  int bits = 0;
  for (u64 y = x; y; y >>= 1) ++bits;
  return bits;
}

// Entry j < b of the support from the sorted candidates, and for a ranked bin w = [s]_+ for its
// selected keys (the write pass left them 0). keys: 32-bit (key - smallest) when narrow.
FASTAL_HD void finish_entry(int64_t j, const float* s, const unsigned* index, const void* keys,
                            bool narrow, u64 smallest, u64 lo, bool ranked, int64_t* support,
                            float* w) {
  const int64_t i = index[j];
  support[j] = i;
  if (!ranked) return;
  const u64 key =
      narrow ? smallest + static_cast<const unsigned*>(keys)[j] : static_cast<const u64*>(keys)[j];
  if (key >= lo) w[i] = s[i] > 0.f ? s[i] : 0.f;
}

}  // namespace fastal::topb
