// IHT top-b thresholding on the GPU (Shen et al., Alg. 2 line 6, Appendix E; DESIGN.md family 5).
//
// score_j = 1/2 [-s_j]_+^2 - alpha sigma_j^2 (the paper's rule) or -1/2 [s_j]_+^2 - alpha sigma_j^2
// (the exact proximal step; see cpu/kernels.h) in float64, rounded exactly as the CPU
// kernel rounds it (cpu/topb.cpp: float32 inputs widened first, no fused multiply-adds: the
// __dmul_rn / __dsub_rn intrinsics are never contracted). Neither can be NaN for float32 inputs.
// The support is the b smallest scores ordered by (score, index), ties to the lowest index; w =
// [s]_+ on it, 0 elsewhere. CUB 3.0 (CUDA 13.0) has no DeviceTopK, so this is a radix select of its
// own, with one host round trip, at the end:
//   1. each score maps to an order-preserving uint64 key (-0.0 and +0.0 to one key). Up to six
//      histogram passes over the rows, 11 bits of the key per pass from the top: a pass counts the
//      digits of the keys that match the prefix found so far (shared-memory histogram,
//      warp-aggregated, one global atomicAdd per non-empty bin and block); the last block to
//      finish picks the bin that holds the b-th smallest key and extends the prefix. The passes
//      stop (later launches return at once) with a key range [lo, hi] and a quota q:
//      - the whole bin is needed, or the key is complete: lo = hi = T, the largest key of the bin
//        (or the b-th key), q = all keys equal to T, or the number of them to take;
//      - the bin holds at most kBinCandidates keys: lo and hi bound the bin, q = all of it. Every
//        key of the bin becomes a candidate, and the sort of step 4 ranks them. With spread scores
//        this ends after two passes instead of six.
//   2. count: per tile of 4096 rows, the keys < lo and in [lo, hi], packed into one uint64; the
//      last block turns the tile counts into exclusive prefix sums;
//   3. write: per tile, a block scan of the same flags gives every row its global (less, equal)
//      rank, so the candidates (key < lo, or in [lo, hi] among the first q) land in index order at
//      less + min(equal, q); w is written for every row in the same pass (0 for a bin's keys when
//      the bin is ranked by the sort);
//   4. cub::DeviceRadixSort::SortPairs of the candidates' keys with their indices, padded to
//      b + kBinCandidates with keys above every score: stable, and the candidates are in index
//      order, so the first b come out ordered by (score, index): the support. Then w = [s]_+ for
//      the support's keys from a ranked bin.
// The first pass also counts the NaN / Inf entries of s and sigma (and the first of each); the host
// reads them after the last launch, one synchronisation, and the caller raises for them. The
// selection is memory-safe for any keys, so non-finite rows only make the outputs meaningless.
// Launches: two memsets, up to 6 passes, count, write, CUB's sort, a copy and the w fix-up, all on
// the caller's stream; scratch from one stream-ordered StreamBuffer. Every pass reads s and sigma
// again (8 bytes a row) instead of storing keys (8 bytes written + 8 read a row).
// topb_fused.cu makes the same selection, bit for bit, in one cooperative kernel and a sort of the
// candidates alone (no count pass; 32-bit sort keys and indices); iht_threshold's `impl` chooses.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "cuda/device.cuh"
#include "cuda/topb_common.cuh"
#include "cuda/topb_fused.cuh"

namespace fastal::cuda {

namespace {

using namespace topb;  // NOLINT: the shared constants and helpers

constexpr int kUnroll = 4;                             // rows in flight per thread in a pass
constexpr int kItems = 16;                             // rows per thread in count / write
constexpr int64_t kTile = int64_t{kThreads} * kItems;  // rows per block in count / write
constexpr unsigned kNoBin = 0xffffffffu;
constexpr u64 kLessOne = u64{1} << 32;  // packed counts: (key < T) in the high half, (== T) low
constexpr u64 kLow = 0xffffffffull;
// The fused implementation (topb_fused.cu) has not been timed on a GPU yet: the launch sequence
// stays the default until it has.
constexpr bool kFusedByDefault = false;

// Selection state on the device, zeroed before the first pass.
struct SelectState {
  u64 prefix;  // the bits of the threshold key found so far ...
  u64 mask;    // ... and which bits those are
  u64 below;   // keys below the prefix's bin: all selected
  u64 lo, hi;  // when done: the candidate key range [lo, hi] (lo == hi: the threshold key T)
  u64 quota;   // when done: keys in [lo, hi] to take, lowest index first (~0: all)
  unsigned done;
  unsigned arrive;        // blocks of the current pass that have finished
  unsigned arrive_tiles;  // blocks of the count kernel that have finished
  // the first pass's finiteness check, [0] for s, [1] for sigma: entries that are NaN or Inf, and
  // n - (the first of them) as a maximum, so that zero (the memset) means none
  u64 nonfinite[2];
  u64 first_from_end[2];
};

// The last block of a pass: the bin of `hist` that holds the need-th smallest matching key, where
// need = b - below >= 1. Exactly one thread finds it (the running counts rise through need).
__device__ void choose_bin(const unsigned* hist, int64_t b, int shift, int width, SelectState* st) {
  __shared__ typename cub::BlockScan<u64, kThreads>::TempStorage tmp;
  // The state is read before the scan: its barrier orders every thread's read before the finder's
  // writes below (read after it, a late warp could see the new `below` and "find" a second bin).
  const u64 below = st->below, prefix0 = st->prefix, mask0 = st->mask;
  BinChoice bin;
  if (find_bin(hist, static_cast<u64>(b) - below, tmp, &bin)) {
    const u64 prefix = prefix0 | (u64{bin.digit} << shift);
    const u64 mask = mask0 | (((u64{1} << width) - 1) << shift);
    st->prefix = prefix;
    st->mask = mask;
    st->below = below + bin.before;
    if (bin.rank == bin.count || shift == 0) {  // the whole bin is needed, or the key is complete
      st->lo = st->hi = prefix | ~mask;
      st->quota = bin.rank == bin.count ? ~u64{0} : bin.rank;
      st->done = 1;
    } else if (bin.count <= kBinCandidates) {  // a small bin: all of it to the sort, which ranks it
      st->lo = prefix;                         // the bin's keys are prefix | (any lower bits)
      st->hi = prefix | ~mask;
      st->quota = ~u64{0};
      st->done = 1;
    }
  }
  if (threadIdx.x == 0) st->arrive = 0;  // for the next pass (a later launch)
}

__global__ void __launch_bounds__(kThreads)
    digit_pass_kernel(const float* s, const float* sigma, int64_t n, Rule rule, int64_t b,
                      int shift, int width, bool check, unsigned* hist, SelectState* st) {
  if (st->done) return;  // the same for every block: set by an earlier launch
  __shared__ unsigned h[kBins];
  __shared__ bool last;
  const u64 prefix = st->prefix, mask = st->mask;
  const unsigned digit_mask = (1u << width) - 1u;
  const int lane = threadIdx.x & 31;
  for (int i = threadIdx.x; i < kBins; i += kThreads) h[i] = 0;
  __syncthreads();
  const int64_t stride = int64_t{gridDim.x} * kThreads * kUnroll;
  // `base` is the same for the whole block, so every lane takes part in __match_any_sync
  for (int64_t base = int64_t{blockIdx.x} * kThreads * kUnroll; base < n; base += stride) {
    float sv[kUnroll], gv[kUnroll];
    load_rows(s, sigma, base, n, sv, gv);
#pragma unroll
    for (int q = 0; q < kUnroll; ++q) {
      const int64_t i = base + q * kThreads + threadIdx.x;
      if (check) {  // the same for the whole launch
        note_nonfinite(!isfinite(sv[q]), i, n, &st->nonfinite[0], &st->first_from_end[0]);
        note_nonfinite(!isfinite(gv[q]), i, n, &st->nonfinite[1], &st->first_from_end[1]);
      }
      const u64 key = score_key(sv[q], gv[q], rule);
      const bool match = i < n && (key & mask) == prefix;
      const unsigned digit = match ? static_cast<unsigned>(key >> shift) & digit_mask : kNoBin;
      // lanes with the same digit add once: many equal scores must not serialise on one bin
      const unsigned peers = __match_any_sync(kFullMask, digit);
      if (match && lane == __ffs(peers) - 1) atomicAdd(h + digit, __popc(peers));
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kBins; i += kThreads)
    if (h[i]) atomicAdd(hist + i, h[i]);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&st->arrive, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  choose_bin(hist, b, shift, width, st);
}

__device__ __forceinline__ u64 rank_flag(u64 key, u64 lo, u64 hi) {
  return key < lo ? kLessOne : (key <= hi ? u64{1} : u64{0});
}

// Per tile (one block): packed counts of keys < lo and in [lo, hi]; then the last block rewrites
// the `tiles` counts as exclusive prefix sums (neither half carries: both totals are <= n < 2^32).
__global__ void __launch_bounds__(kThreads)
    count_kernel(const float* s, const float* sigma, int64_t n, Rule rule, SelectState* st,
                 u64* tile_counts, int64_t tiles) {
  using Reduce = cub::BlockReduce<u64, kThreads>;
  using Scan = cub::BlockScan<u64, kThreads>;
  __shared__ typename Reduce::TempStorage reduce_tmp;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ bool last;
  const u64 lo = st->lo, hi = st->hi;
  const int64_t base = int64_t{blockIdx.x} * kTile;
  float sv[kItems], gv[kItems];
  load_rows(s, sigma, base, n, sv, gv);
  u64 packed = 0;
#pragma unroll
  for (int q = 0; q < kItems; ++q) {
    const int64_t i = base + q * kThreads + threadIdx.x;
    if (i < n) packed += rank_flag(score_key(sv[q], gv[q], rule), lo, hi);
  }
  const u64 total = Reduce(reduce_tmp).Sum(packed);
  if (threadIdx.x == 0) tile_counts[blockIdx.x] = total;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&st->arrive_tiles, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  // thread t scans the consecutive tiles [t * per, (t + 1) * per)
  const int64_t per = (tiles + kThreads - 1) / kThreads;
  const int64_t t0 = min(tiles, threadIdx.x * per), t1 = min(tiles, t0 + per);
  u64 sum = 0;
  for (int64_t t = t0; t < t1; ++t) sum += __ldcg(tile_counts + t);
  u64 run = 0;
  Scan(scan_tmp).ExclusiveSum(sum, run);
  for (int64_t t = t0; t < t1; ++t) {
    const u64 c = __ldcg(tile_counts + t);
    tile_counts[t] = run;
    run += c;
  }
}

// Per tile (one block, the tiles of count_kernel): every row's global (less, equal) rank from the
// tile's prefix and a block scan per round of kThreads consecutive rows (index order), then the
// survivors' keys and indices at less + min(equal, q), and w for every row.
__global__ void __launch_bounds__(kThreads)
    write_kernel(const float* s, const float* sigma, int64_t n, Rule rule, int64_t cap,
                 const SelectState* st, const u64* tile_before, u64* cand_keys, int64_t* cand_index,
                 float* w) {
  using Scan = cub::BlockScan<u64, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  const u64 lo = st->lo, hi = st->hi, quota = st->quota;
  const bool ranked_bin = lo != hi;  // the bin's keys are candidates; their w comes after the sort
  const u64 start = tile_before[blockIdx.x];
  u64 less = start >> 32, equal = start & kLow;  // rows before this round
  const int64_t base = int64_t{blockIdx.x} * kTile;
  float sv[kItems], gv[kItems];
  load_rows(s, sigma, base, n, sv, gv);
#pragma unroll
  for (int q = 0; q < kItems; ++q) {
    const int64_t i = base + q * kThreads + threadIdx.x;
    const bool valid = i < n;
    const u64 key = score_key(sv[q], gv[q], rule);
    const u64 flag = valid ? rank_flag(key, lo, hi) : 0;
    u64 excl = 0, round = 0;
    Scan(tmp).ExclusiveSum(flag, excl, round);
    const u64 my_less = less + (excl >> 32), my_equal = equal + (excl & kLow);
    const bool in_range = lo <= key && key <= hi;
    const bool take = key < lo || (in_range && my_equal < quota);
    if (valid) {
      if (take) {
        const u64 pos = my_less + (my_equal < quota ? my_equal : quota);
        if (pos < static_cast<u64>(cap)) {  // always, by the counts; a guard against a bad state
          cand_keys[pos] = key;
          cand_index[pos] = i;
        }
      }
      w[i] = take && !(ranked_bin && in_range) && sv[q] > 0.f ? sv[q] : 0.f;
    }
    less += round >> 32;
    equal += round & kLow;
    __syncthreads();  // tmp is reused by the next round's scan
  }
}

// After the sort, for a ranked bin only: w = [s]_+ for the support's keys from the bin (the write
// pass left them 0, not knowing which of the bin would be taken).
__global__ void __launch_bounds__(kThreads)
    bin_weights_kernel(const float* s, const SelectState* st, const u64* sorted_keys,
                       const int64_t* support, int64_t b, float* w) {
  const u64 lo = st->lo, hi = st->hi;
  if (lo == hi) return;
  for (int64_t j = int64_t{blockIdx.x} * kThreads + threadIdx.x; j < b;
       j += int64_t{gridDim.x} * kThreads) {
    if (sorted_keys[j] >= lo) {
      const int64_t i = support[j];
      const float v = s[i];
      w[i] = v > 0.f ? v : 0.f;
    }
  }
}

// Scratch layout: 256-byte aligned pieces of one allocation.
struct Scratch {
  size_t state, hist, tiles, cand_keys, cand_index, sorted_keys, sorted_index, sort_tmp, total;
};

size_t align_up(size_t v) { return (v + 255) / 256 * 256; }

Scratch plan_scratch(int64_t tiles, int64_t cap, size_t sort_bytes) {
  Scratch p{};
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += align_up(bytes);
    return here;
  };
  p.state = take(sizeof(SelectState));
  p.hist = take(sizeof(unsigned) * kBins * kPasses);
  p.tiles = take(sizeof(u64) * static_cast<size_t>(tiles));
  p.cand_keys = take(sizeof(u64) * static_cast<size_t>(cap));
  p.cand_index = take(sizeof(int64_t) * static_cast<size_t>(cap));
  p.sorted_keys = take(sizeof(u64) * static_cast<size_t>(cap));
  p.sorted_index = take(sizeof(int64_t) * static_cast<size_t>(cap));
  p.sort_tmp = take(sort_bytes);
  p.total = at;
  return p;
}

}  // namespace

NonfiniteCounts iht_threshold(const float* s, const float* sigma, int64_t n, int64_t b,
                              double alpha, bool exact, int64_t* support, float* w, int device,
                              cudaStream_t stream, int impl) {
  FASTAL_REQUIRE(impl >= -1 && impl <= 1,
                 "impl must be -1 (default), 0 (launches) or 1 (fused), "
                 "got ",
                 impl);
  FASTAL_REQUIRE(n >= 0, "n must be >= 0, got ", n);
  FASTAL_REQUIRE(n <= kMaxRows, "n must be < 2^32, got ", n);
  FASTAL_REQUIRE(b >= 0 && b <= n, "b must be in [0, n = ", n, "], got ", b);
  FASTAL_REQUIRE(std::isfinite(alpha) && alpha >= 0.0, "alpha must be finite and >= 0, got ",
                 alpha);
  const Rule rule{alpha, exact};
  DeviceGuard guard(device);
  NonfiniteCounts bad;
  if (n == 0) return bad;
  require_device_ptr(s, "s_ptr", device, alignof(float));
  require_device_ptr(sigma, "sigma_ptr", device, alignof(float));
  require_device_ptr(w, "w_ptr", device, alignof(float));
  if (b == 0) {  // nothing to select: the finiteness check alone
    CUDA_CHECK(cudaMemsetAsync(w, 0, static_cast<size_t>(n) * sizeof(float), stream));
    bad.s = count_nonfinite_rows(DType::Float32, s, n, 1, &bad.first_s, device, stream);
    bad.sigma = count_nonfinite_rows(DType::Float32, sigma, n, 1, &bad.first_sigma, device, stream);
    return bad;
  }
  require_device_ptr(support, "support_ptr", device, alignof(int64_t));
  const bool fused = impl == 1 || (impl < 0 && kFusedByDefault && topb::fused_supported(device));
  if (impl == 1)
    FASTAL_REQUIRE(topb::fused_supported(device),
                   "impl=1: the fused top-b kernel needs "
                   "cooperative launches, which this device does not support");
  if (fused) {
    if (topb::iht_threshold_fused(s, sigma, n, b, rule, support, w, device, stream, &bad))
      return bad;
    FASTAL_REQUIRE(impl != 1,
                   "impl=1: the device refused the fused top-b kernel's cooperative "
                   "launch (fewer multiprocessors available than it reports)");
  }  // else the launch sequence below

  const int64_t tiles = (n + kTile - 1) / kTile;
  // candidates: b, plus the keys of a ranked bin past its quota (at most kBinCandidates - 1)
  const int64_t cap = std::min<int64_t>(n, b + static_cast<int64_t>(kBinCandidates));
  size_t sort_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const u64*>(nullptr), static_cast<u64*>(nullptr),
      static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr), cap, 0, 64, stream));
  const Scratch plan = plan_scratch(tiles, cap, sort_bytes);
  StreamBuffer buf(plan.total, device, stream);
  char* base = buf.as<char>();
  auto* st = reinterpret_cast<SelectState*>(base + plan.state);
  auto* hist = reinterpret_cast<unsigned*>(base + plan.hist);
  auto* tile_counts = reinterpret_cast<u64*>(base + plan.tiles);
  auto* cand_keys = reinterpret_cast<u64*>(base + plan.cand_keys);
  auto* cand_index = reinterpret_cast<int64_t*>(base + plan.cand_index);
  auto* sorted_keys = reinterpret_cast<u64*>(base + plan.sorted_keys);
  auto* sorted_index = reinterpret_cast<int64_t*>(base + plan.sorted_index);
  CUDA_CHECK(cudaMemsetAsync(base, 0, plan.tiles, stream));  // state and every pass's histogram
  // unused candidate slots: key ~0 is above every score's key (a finite double's key is at most
  // 0xffef...), so the stable sort leaves them after the real candidates; index -1
  CUDA_CHECK(
      cudaMemsetAsync(base + plan.cand_keys, 0xff, plan.sorted_keys - plan.cand_keys, stream));

  const int64_t pass_rows = int64_t{kThreads} * kUnroll;
  const int pass_grid = grid_for(digit_pass_kernel, (n + pass_rows - 1) / pass_rows, device);
  for (int p = 0; p < kPasses; ++p) {
    digit_pass_kernel<<<pass_grid, kThreads, 0, stream>>>(
        s, sigma, n, rule, b, pass_shift(p), pass_width(p), p == 0, hist + p * kBins, st);
    CUDA_CHECK_LAUNCH("digit_pass_kernel");
  }
  count_kernel<<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(s, sigma, n, rule, st,
                                                                      tile_counts, tiles);
  CUDA_CHECK_LAUNCH("count_kernel");
  write_kernel<<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(
      s, sigma, n, rule, cap, st, tile_counts, cand_keys, cand_index, w);
  CUDA_CHECK_LAUNCH("write_kernel");
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(base + plan.sort_tmp, sort_bytes, cand_keys,
                                             sorted_keys, cand_index, sorted_index, cap, 0, 64,
                                             stream));
  CUDA_CHECK_LAUNCH("cub::DeviceRadixSort::SortPairs");
  CUDA_CHECK(cudaMemcpyAsync(support, sorted_index, sizeof(int64_t) * static_cast<size_t>(b),
                             cudaMemcpyDeviceToDevice, stream));
  bin_weights_kernel<<<blocks_for(b), kThreads, 0, stream>>>(s, st, sorted_keys, support, b, w);
  CUDA_CHECK_LAUNCH("bin_weights_kernel");
  u64 host[4];  // st->nonfinite, st->first_from_end: consecutive
  static_assert(offsetof(SelectState, first_from_end) == offsetof(SelectState, nonfinite) + 16,
                "nonfinite and first_from_end are read back in one copy");
  CUDA_CHECK(cudaMemcpyAsync(host, st->nonfinite, sizeof(host), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  bad.s = static_cast<int64_t>(host[0]);
  bad.sigma = static_cast<int64_t>(host[1]);
  bad.first_s = bad.s ? n - static_cast<int64_t>(host[2]) : -1;
  bad.first_sigma = bad.sigma ? n - static_cast<int64_t>(host[3]) : -1;
  return bad;
}

}  // namespace fastal::cuda
