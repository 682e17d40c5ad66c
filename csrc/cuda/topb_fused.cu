// IHT top-b thresholding on the GPU as one cooperative kernel, then one sort: the fused
// implementation of the selection that topb.cu describes (same keys, same result bit for bit).
//
// The launch sequence of topb.cu pays, at n = 10^7, for up to six histogram launches (most of them
// empty), a count pass over the rows, a write pass with a block scan per 256 rows and a sort of
// b + 8192 64-bit keys with 64-bit values. Here:
//   1. One kernel, every block resident (cooperative launch), each block owning a contiguous slice
//      of the rows. Digit passes as in topb.cu, separated by grid-wide barriers, after which every
//      block reads the global histogram and chooses the same bin. A block keeps its own histogram
//      of the pass in shared memory, so when the selection ends it knows its rows below the bin
//      and in it without another pass over the rows. The blocks publish those counts; after one
//      more barrier each sums the counts of the blocks before it, and the write pass places the
//      candidates in index order (warp ballots, one small scan per 2048 rows) and writes w.
//      The first pass also counts NaN / Inf and finds the smallest key.
//   2. The host reads the result (one synchronisation, as before) and sorts the candidates only,
//      with 32-bit indices, over the key bits that differ among them: the keys less the smallest
//      key in 32 bits when the range fits (it does unless the scores span many binades).
//   3. A last kernel writes the support (int64) and w for the ranked bin's selected keys.
#include <cooperative_groups.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "cuda/device.cuh"
#include "cuda/topb_common.cuh"

namespace fastal::cuda::topb {

namespace {

namespace cg = cooperative_groups;

constexpr int kUnroll = 4;                 // rows in flight per thread in a digit pass
constexpr int kItems = 8;                  // rows per thread per round of the write pass
constexpr int kRound = kThreads * kItems;  // rows per round
constexpr unsigned kNoBin = 0xffffffffu;
constexpr u64 kLow = 0xffffffffull;
constexpr int kMinBlocks = 4;  // resident blocks per SM: loads enough in flight to stream
static_assert(kItems * kWarps == 64, "the round scan gives each lane of a warp two entries");

struct MinOp {
  __device__ u64 operator()(u64 a, u64 b) const { return a < b ? a : b; }
};

// What the host reads after the kernel; zeroed before it.
struct FusedResult {
  u64 nonfinite[2], first_from_end[2];  // [0] s, [1] sigma (see note_nonfinite)
  u64 min_not;                          // ~(the smallest key): a maximum, so that 0 means none
  u64 lo, hi, quota, count;             // the candidate bin [lo, hi], its quota, the candidates
  unsigned ranked;                      // the bin's keys are ranked by the sort
  unsigned narrow;                      // candidate keys stored as 32-bit key - smallest key
};

// The selection, the same in every block (each computes it from the same global histograms).
struct Selection {
  u64 prefix, mask, below, lo, hi, quota;
  unsigned digit;  // the bin chosen by the last pass
  bool done, ranked;
};

// Every block, after pass `shift`'s barrier: the bin of the global histogram `hist` holding the
// need-th smallest matching key (need = b - below), into sel. As topb.cu's choose_bin, except that
// [lo, hi] is always the bin.
__device__ void choose_bin(const unsigned* hist, int64_t b, int shift, int width, Selection& sel,
                           typename cub::BlockScan<u64, kThreads>::TempStorage& tmp) {
  const u64 below = sel.below, prefix0 = sel.prefix, mask0 = sel.mask;  // read before the scan
  BinChoice bin;
  if (!find_bin(hist, static_cast<u64>(b) - below, tmp, &bin)) return;
  const u64 prefix = prefix0 | (u64{bin.digit} << shift);
  const u64 mask = mask0 | (((u64{1} << width) - 1) << shift);
  sel.prefix = prefix;
  sel.mask = mask;
  sel.below = below + bin.before;
  sel.digit = bin.digit;
  sel.lo = prefix;
  sel.hi = prefix | ~mask;
  if (bin.rank == bin.count) {  // the whole bin is needed
    sel.done = true, sel.quota = ~u64{0}, sel.ranked = false;
  } else if (shift == 0) {  // the key is complete: the first `rank` of its rows
    sel.done = true, sel.quota = bin.rank, sel.ranked = false;
  } else if (bin.count <= kBinCandidates) {  // a small bin: all of it to the sort, which ranks it
    sel.done = true, sel.quota = ~u64{0}, sel.ranked = true;
  }
}

__global__ void __launch_bounds__(kThreads, kMinBlocks)
    fused_select_kernel(const float* s, const float* sigma, int64_t n, Rule rule, int64_t b,
                        unsigned* hist, u64* block_counts, FusedResult* res, void* cand_keys,
                        unsigned* cand_index, int64_t cap, float* w) {
  using Scan = cub::BlockScan<u64, kThreads>;
  using Reduce = cub::BlockReduce<u64, kThreads>;
  __shared__ unsigned h[kBins];  // this block's histogram of the current pass
  __shared__ union {
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage reduce;
  } tmp;
  __shared__ Selection sel;
  __shared__ u64 counts[2];              // this block's keys below the bin, and in it
  __shared__ u64 before_total[2];        // the blocks before this one (packed), and all blocks
  __shared__ u64 round_counts[kItems * kWarps];  // write pass: (less << 32 | in) per (q, warp)
  __shared__ u64 round_total;
  cg::grid_group grid = cg::this_grid();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t per = ((n + gridDim.x - 1) / gridDim.x + 31) / 32 * 32;
  const int64_t begin = std::min<int64_t>(n, blockIdx.x * per);
  const int64_t end = std::min<int64_t>(n, begin + per);
  if (tid == 0) {
    sel = Selection{};
    counts[0] = 0;
  }

  // ---- digit passes
  u64 kmin = ~u64{0};
  for (int p = 0; p < kPasses; ++p) {
    for (int i = tid; i < kBins; i += kThreads) h[i] = 0;
    __syncthreads();
    const u64 prefix = sel.prefix, mask = sel.mask;
    const int shift = pass_shift(p), width = pass_width(p);
    const unsigned digit_mask = (1u << width) - 1u;
    for (int64_t base = begin; base < end; base += int64_t{kThreads} * kUnroll) {
      float sv[kUnroll], gv[kUnroll];
      load_rows(s, sigma, base, end, sv, gv);
#pragma unroll
      for (int q = 0; q < kUnroll; ++q) {
        const int64_t i = base + q * kThreads + tid;
        const bool valid = i < end;
        if (p == 0) {
          note_nonfinite(!isfinite(sv[q]), i, n, &res->nonfinite[0], &res->first_from_end[0]);
          note_nonfinite(!isfinite(gv[q]), i, n, &res->nonfinite[1], &res->first_from_end[1]);
        }
        const u64 key = score_key(sv[q], gv[q], rule);
        if (p == 0 && valid) kmin = std::min(kmin, key);
        const bool match = valid && (key & mask) == prefix;
        const unsigned digit = match ? static_cast<unsigned>(key >> shift) & digit_mask : kNoBin;
        // lanes with the same digit add once: many equal scores must not serialise on one bin
        const unsigned peers = __match_any_sync(kFullMask, digit);
        if (match && lane == __ffs(peers) - 1) atomicAdd(h + digit, __popc(peers));
      }
    }
    if (p == 0) {
      const u64 block_min = Reduce(tmp.reduce).Reduce(kmin, MinOp{});
      if (tid == 0 && block_min != ~u64{0}) atomicMax(&res->min_not, ~block_min);
    }
    __syncthreads();
    for (int i = tid; i < kBins; i += kThreads)
      if (h[i]) atomicAdd(hist + p * kBins + i, h[i]);
    grid.sync();
    choose_bin(hist + p * kBins, b, shift, width, sel, tmp.scan);
    __syncthreads();
    // this block's keys below the chosen bin (within the prefix's bin) and in it
    const unsigned digit = sel.digit;
    u64 part = 0;
    for (int i = tid; i < kBins; i += kThreads) part += i < static_cast<int>(digit) ? h[i] : 0u;
    const u64 less = Reduce(tmp.reduce).Sum(part);
    if (tid == 0) {
      counts[0] += less;
      counts[1] = h[digit];
    }
    __syncthreads();
    if (sel.done) break;
  }

  // ---- the blocks' counts: this block's rows come after those of the blocks before it
  if (tid == 0) block_counts[blockIdx.x] = (counts[0] << 32) | counts[1];
  grid.sync();
  u64 mine = 0, all = 0;
  for (int j = tid; j < static_cast<int>(gridDim.x); j += kThreads) {
    const u64 c = __ldcg(block_counts + j);  // packed halves: each total is < 2^32, no carry
    all += c;
    mine += j < static_cast<int>(blockIdx.x) ? c : 0;
  }
  const u64 before = Reduce(tmp.reduce).Sum(mine);
  __syncthreads();
  const u64 total = Reduce(tmp.reduce).Sum(all);
  const u64 lo = sel.lo, hi = sel.hi, quota = sel.quota;
  const bool ranked = sel.ranked;
  const u64 smallest = ~__ldcg(&res->min_not);
  const bool narrow = hi - smallest <= kLow;
  if (tid == 0) {
    before_total[0] = before;
    before_total[1] = total;
    if (blockIdx.x == 0) {
      res->lo = lo;
      res->hi = hi;
      res->quota = quota;
      res->count = (total >> 32) + std::min(total & kLow, quota);
      res->ranked = ranked;
      res->narrow = narrow;
    }
  }
  __syncthreads();

  // ---- write pass: candidates in index order at less + min(in, quota), and w for every row
  u64 run_less = before_total[0] >> 32, run_in = before_total[0] & kLow;
  const unsigned below_lane = (1u << lane) - 1u;
  for (int64_t base = begin; base < end; base += kRound) {
    float sv[kItems], gv[kItems];
    load_rows(s, sigma, base, end, sv, gv);
    u64 keys[kItems];
    unsigned less_lanes[kItems], in_lanes[kItems];
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      const bool valid = base + q * kThreads + tid < end;
      keys[q] = score_key(sv[q], gv[q], rule);
      less_lanes[q] = __ballot_sync(kFullMask, valid && keys[q] < lo);
      in_lanes[q] = __ballot_sync(kFullMask, valid && keys[q] >= lo && keys[q] <= hi);
      if (lane == 0)
        round_counts[q * kWarps + warp] =
            (u64{static_cast<unsigned>(__popc(less_lanes[q]))} << 32) | __popc(in_lanes[q]);
    }
    __syncthreads();
    if (warp == 0) {  // exclusive scan of the (q, warp) counts: index order
      const u64 a = round_counts[2 * lane], c = round_counts[2 * lane + 1];
      u64 incl = a + c;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const u64 up = __shfl_up_sync(kFullMask, incl, off);
        if (lane >= off) incl += up;
      }
      const u64 excl = incl - (a + c);
      round_counts[2 * lane] = excl;
      round_counts[2 * lane + 1] = excl + a;
      if (lane == 31) round_total = incl;
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      const int64_t i = base + q * kThreads + tid;
      if (i >= end) continue;
      const u64 off = round_counts[q * kWarps + warp];
      const u64 my_less = run_less + (off >> 32) + __popc(less_lanes[q] & below_lane);
      const u64 my_in = run_in + (off & kLow) + __popc(in_lanes[q] & below_lane);
      const bool is_less = (less_lanes[q] >> lane) & 1u, is_in = (in_lanes[q] >> lane) & 1u;
      const bool take = is_less || (is_in && my_in < quota);
      if (take) {
        const u64 pos = my_less + std::min(my_in, quota);
        if (pos < static_cast<u64>(cap)) {  // always, by the counts; a guard against a bad state
          if (narrow)
            static_cast<unsigned*>(cand_keys)[pos] = static_cast<unsigned>(keys[q] - smallest);
          else
            static_cast<u64*>(cand_keys)[pos] = keys[q];
          cand_index[pos] = static_cast<unsigned>(i);
        }
      }
      w[i] = take && !(ranked && is_in) && sv[q] > 0.f ? sv[q] : 0.f;
    }
    run_less += round_total >> 32;
    run_in += round_total & kLow;
    __syncthreads();  // round_counts and round_total are rewritten by the next round
  }
}

// The support (int64) from the sorted indices, and for a ranked bin w = [s]_+ for its selected
// keys (the write pass left them 0). keys: 32-bit (key - smallest) when narrow, else 64-bit.
__global__ void __launch_bounds__(kThreads)
    finish_kernel(const float* s, const unsigned* index, const void* keys, bool narrow,
                  u64 smallest, u64 lo, bool ranked, int64_t b, int64_t* support, float* w) {
  for (int64_t j = int64_t{blockIdx.x} * kThreads + threadIdx.x; j < b;
       j += int64_t{gridDim.x} * kThreads) {
    const int64_t i = index[j];
    support[j] = i;
    if (!ranked) continue;
    const u64 key = narrow ? smallest + static_cast<const unsigned*>(keys)[j]
                           : static_cast<const u64*>(keys)[j];
    if (key >= lo) w[i] = s[i] > 0.f ? s[i] : 0.f;
  }
}

// The bits [0, width) of x that can be non-zero.
int bit_width(u64 x) { return x ? 64 - __builtin_clzll(x) : 0; }

size_t align_up(size_t v) { return (v + 255) / 256 * 256; }

}  // namespace

bool fused_supported(int device) {
  int coop = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
  return coop != 0;
}

NonfiniteCounts iht_threshold_fused(const float* s, const float* sigma, int64_t n, int64_t b,
                                    Rule rule, int64_t* support, float* w, int device,
                                    cudaStream_t stream) {
  int per_sm = 0;
  CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fused_select_kernel, kThreads, 0));
  FASTAL_REQUIRE(per_sm > 0, "the fused top-b kernel cannot be resident on this device");
  const int64_t resident = int64_t{sm_count(device)} * per_sm;
  const int grid = static_cast<int>(std::clamp<int64_t>((n + kRound - 1) / kRound, 1, resident));
  int64_t cap = std::min<int64_t>(n, b + static_cast<int64_t>(kBinCandidates));
  size_t sort32 = 0, sort64 = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort32, static_cast<const unsigned*>(nullptr), static_cast<unsigned*>(nullptr),
      static_cast<const unsigned*>(nullptr), static_cast<unsigned*>(nullptr), cap, 0, 32, stream));
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort64, static_cast<const u64*>(nullptr), static_cast<u64*>(nullptr),
      static_cast<const unsigned*>(nullptr), static_cast<unsigned*>(nullptr), cap, 0, 64, stream));

  // one allocation: result and histograms (zeroed together), block counts, candidates, sort
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t here = at;
    at += align_up(bytes);
    return here;
  };
  const size_t o_res = take(sizeof(FusedResult));
  const size_t o_hist = take(sizeof(unsigned) * kBins * kPasses);
  const size_t o_blocks = take(sizeof(u64) * static_cast<size_t>(grid));
  const size_t o_keys = take(sizeof(u64) * static_cast<size_t>(cap));
  const size_t o_index = take(sizeof(unsigned) * static_cast<size_t>(cap));
  const size_t o_sorted_keys = take(sizeof(u64) * static_cast<size_t>(cap));
  const size_t o_sorted_index = take(sizeof(unsigned) * static_cast<size_t>(cap));
  const size_t o_tmp = take(std::max(sort32, sort64));
  StreamBuffer buf(at, device, stream);
  char* base = buf.as<char>();
  auto* res = reinterpret_cast<FusedResult*>(base + o_res);
  auto* hist = reinterpret_cast<unsigned*>(base + o_hist);
  auto* block_counts = reinterpret_cast<u64*>(base + o_blocks);
  void* keys = base + o_keys;
  auto* index = reinterpret_cast<unsigned*>(base + o_index);
  void* sorted_keys = base + o_sorted_keys;
  auto* sorted_index = reinterpret_cast<unsigned*>(base + o_sorted_index);
  CUDA_CHECK(cudaMemsetAsync(base, 0, o_blocks, stream));

  void* args[] = {&s, &sigma, &n, &rule, &b, &hist, &block_counts, &res, &keys, &index, &cap, &w};
  CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(fused_select_kernel),
                                         dim3(grid), dim3(kThreads), args, 0, stream));
  CUDA_CHECK_LAUNCH("fused_select_kernel");
  FusedResult host{};
  CUDA_CHECK(cudaMemcpyAsync(&host, res, sizeof(host), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  NonfiniteCounts bad;
  bad.s = static_cast<int64_t>(host.nonfinite[0]);
  bad.sigma = static_cast<int64_t>(host.nonfinite[1]);
  bad.first_s = bad.s ? n - static_cast<int64_t>(host.first_from_end[0]) : -1;
  bad.first_sigma = bad.sigma ? n - static_cast<int64_t>(host.first_from_end[1]) : -1;
  if (bad.s || bad.sigma) return bad;  // the caller raises; the outputs mean nothing
  const auto m = static_cast<int64_t>(host.count);
  FASTAL_REQUIRE(m >= b && m <= cap, "internal error: the fused top-b selection found ", m,
                 " candidates for b = ", b, " (at most ", cap, ")");

  const u64 smallest = ~host.min_not;
  const bool narrow = host.narrow != 0;
  const int end_bit = narrow ? bit_width(host.hi - smallest) : bit_width(host.hi ^ smallest);
  const void* final_keys = keys;
  const unsigned* final_index = index;
  if (end_bit > 0) {  // else every candidate has the same key: index order is the order
    size_t bytes = std::max(sort32, sort64);
    if (narrow)
      CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
          base + o_tmp, bytes, static_cast<const unsigned*>(keys),
          static_cast<unsigned*>(sorted_keys), index, sorted_index, m, 0, end_bit, stream));
    else
      CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
          base + o_tmp, bytes, static_cast<const u64*>(keys), static_cast<u64*>(sorted_keys),
          index, sorted_index, m, 0, end_bit, stream));
    CUDA_CHECK_LAUNCH("cub::DeviceRadixSort::SortPairs");
    final_keys = sorted_keys;
    final_index = sorted_index;
  }
  finish_kernel<<<blocks_for(b), kThreads, 0, stream>>>(s, final_index, final_keys, narrow,
                                                        smallest, host.lo, host.ranked != 0, b,
                                                        support, w);
  CUDA_CHECK_LAUNCH("finish_kernel");
  return bad;
}

}  // namespace fastal::cuda::topb
