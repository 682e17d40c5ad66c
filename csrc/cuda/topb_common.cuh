// Device pieces of the launch-sequence IHT top-b selection (topb.cu); the keys and digit passes,
// shared with the fused implementation, are in common/topb_key.h. See topb.cu for the method.
#pragma once
#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "common/topb_key.h"
#include "cuda/device.cuh"

namespace fastal::cuda::topb {

using namespace ::fastal::topb;  // NOLINT: the keys and constants (common/topb_key.h)

// The lanes of the warp whose value is NaN or Inf, counted into *count and the first (lowest index:
// lanes rise with it) as n - index into *first_from_end, a maximum, so that zero (the memset) means
// none. All lanes call it.
__device__ __forceinline__ void note_nonfinite(bool bad, int64_t i, int64_t n, u64* count,
                                               u64* first_from_end) {
  const unsigned lanes = __ballot_sync(kFullMask, bad);
  if (!lanes) return;
  const int64_t first = __shfl_sync(kFullMask, i, __ffs(lanes) - 1);
  if ((threadIdx.x & 31) == 0) {
    atomicAdd(count, static_cast<u64>(__popc(lanes)));
    atomicMax(first_from_end, static_cast<u64>(n - first));
  }
}

// s and sigma of rows base + q * kThreads + threadIdx.x for q < K, 0 past `end`: K coalesced
// loads of each in flight per thread.
template <int K>
__device__ __forceinline__ void load_rows(const float* s, const float* sigma, int64_t base,
                                          int64_t end, float (&sv)[K], float (&gv)[K]) {
#pragma unroll
  for (int q = 0; q < K; ++q) {
    const int64_t i = base + q * kThreads + threadIdx.x;
    sv[q] = i < end ? __ldg(s + i) : 0.f;
    gv[q] = i < end ? __ldg(sigma + i) : 0.f;
  }
}

// The bin of a pass's global histogram (kBins counters) holding the need-th smallest matching key
// (need >= 1): digit, keys of the histogram below it (before) and in it (count), and the 1-based
// rank of that key inside the bin. Every thread of the block calls it; the one that finds the bin
// (exactly one: the running counts rise through need) returns true. tmp: a BlockScan's storage.
struct BinChoice {
  unsigned digit;
  u64 before, count, rank;
};
__device__ __forceinline__ bool find_bin(const unsigned* hist, u64 need,
                                         typename cub::BlockScan<u64, kThreads>::TempStorage& tmp,
                                         BinChoice* out) {
  constexpr int kPer = kBins / kThreads;
  static_assert(kBins % kThreads == 0, "each thread scans whole bins");
  unsigned c[kPer];
  u64 sum = 0;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    c[k] = __ldcg(hist + threadIdx.x * kPer + k);  // other blocks' atomics: read through L2
    sum += c[k];
  }
  u64 before = 0;
  cub::BlockScan<u64, kThreads>(tmp).ExclusiveSum(sum, before);
  bool found = false;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    if (before < need && need <= before + c[k]) {
      *out = BinChoice{threadIdx.x * kPer + k, before, c[k], need - before};
      found = true;
    }
    before += c[k];
  }
  return found;
}

}  // namespace fastal::cuda::topb
