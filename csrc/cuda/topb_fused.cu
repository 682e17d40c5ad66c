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
// The kernel's body is common/topb_fused.h, which the CPU tests run on emulated threads; this file
// gives it the device's operations and launches it.
#include <cooperative_groups.h>

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "common/topb_fused.h"
#include "cuda/device.cuh"
#include "cuda/topb_fused.cuh"

namespace fastal::cuda::topb {

namespace {

namespace cg = cooperative_groups;
using ::fastal::topb::FusedParams;
using ::fastal::topb::FusedResult;
using ::fastal::topb::FusedShared;
using ::fastal::topb::kBinCandidates;
using ::fastal::topb::kBins;
using ::fastal::topb::kPasses;
using ::fastal::topb::kRound;
using ::fastal::topb::Rule;
using ::fastal::topb::u64;

constexpr int kMinBlocks = 4;  // resident blocks per SM: loads enough in flight to stream
static_assert(::fastal::topb::kBlockThreads == kThreads, "the body's blocks are kThreads wide");

// The thread, warp, block and grid operations of common/topb_fused.h on the device.
struct DeviceBlock {
  __device__ static int tid() { return static_cast<int>(threadIdx.x); }
  __device__ static int block() { return static_cast<int>(blockIdx.x); }
  __device__ static int blocks() { return static_cast<int>(gridDim.x); }
  __device__ static void sync_block() { __syncthreads(); }
  __device__ static void sync_grid() { cg::this_grid().sync(); }
  __device__ static unsigned ballot(bool p) { return __ballot_sync(kFullMask, p); }
  __device__ static unsigned match_any(unsigned v) { return __match_any_sync(kFullMask, v); }
  __device__ static u64 shfl(u64 v, int src) { return __shfl_sync(kFullMask, v, src); }
  __device__ static u64 shfl_up(u64 v, int off) { return __shfl_up_sync(kFullMask, v, off); }
  __device__ static u64 shfl_xor(u64 v, int m) { return __shfl_xor_sync(kFullMask, v, m); }
  template <typename T>
  __device__ static T load(const T* p) {
    return __ldg(p);
  }
  template <typename T>
  __device__ static T load_l2(const T* p) {
    return __ldcg(p);
  }
  __device__ static void atomic_add(unsigned* p, unsigned v) { atomicAdd(p, v); }
  __device__ static void atomic_add(u64* p, u64 v) { atomicAdd(p, v); }
  __device__ static void atomic_max(u64* p, u64 v) { atomicMax(p, v); }
};

__global__ void __launch_bounds__(kThreads, kMinBlocks) fused_select_kernel(const FusedParams p) {
  __shared__ FusedShared sh;
  ::fastal::topb::fused_select<DeviceBlock>(p, sh);
}

__global__ void __launch_bounds__(kThreads)
    finish_kernel(const float* s, const unsigned* index, const void* keys, bool narrow,
                  u64 smallest, u64 lo, bool ranked, int64_t b, int64_t* support, float* w) {
  for (int64_t j = int64_t{blockIdx.x} * kThreads + threadIdx.x; j < b;
       j += int64_t{gridDim.x} * kThreads)
    ::fastal::topb::finish_entry(j, s, index, keys, narrow, smallest, lo, ranked, support, w);
}

size_t align_up(size_t v) { return (v + 255) / 256 * 256; }

}  // namespace

bool fused_supported(int device) {
  int coop = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
  return coop != 0;
}

bool iht_threshold_fused(const float* s, const float* sigma, int64_t n, int64_t b, Rule rule,
                         int64_t* support, float* w, int device, cudaStream_t stream,
                         NonfiniteCounts* bad_out) {
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

  FusedParams params{s, sigma, n, b, rule, hist, block_counts, res, keys, index, cap, w};
  void* args[] = {&params};
  const cudaError_t launched =
      cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(fused_select_kernel), dim3(grid),
                                  dim3(kThreads), args, 0, stream);
  if (launched == cudaErrorCooperativeLaunchTooLarge) {  // fewer SMs than the device reports
    (void)cudaGetLastError();                            // (MPS, a partitioned GPU): refused
    return false;
  }
  CUDA_CHECK(launched);
  CUDA_CHECK_LAUNCH("fused_select_kernel");
  FusedResult host{};
  CUDA_CHECK(cudaMemcpyAsync(&host, res, sizeof(host), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  NonfiniteCounts bad;
  bad.s = static_cast<int64_t>(host.nonfinite[0]);
  bad.sigma = static_cast<int64_t>(host.nonfinite[1]);
  bad.first_s = bad.s ? n - static_cast<int64_t>(host.first_from_end[0]) : -1;
  bad.first_sigma = bad.sigma ? n - static_cast<int64_t>(host.first_from_end[1]) : -1;
  *bad_out = bad;
  if (bad.s || bad.sigma) return true;  // the caller raises; the outputs mean nothing
  const auto m = static_cast<int64_t>(host.count);
  FASTAL_ASSERT(m >= b && m <= cap, "the fused top-b selection found ", m,
                " candidates for b = ", b, " (at most ", cap, ")");

  const u64 smallest = ~host.min_not;
  const bool narrow = host.narrow != 0;
  const int end_bit = ::fastal::topb::sort_end_bit(host);
  const void* final_keys = keys;
  const unsigned* final_index = index;
  if (end_bit > 0) {  // else every candidate has the same key: index order is the order
    size_t bytes = std::max(sort32, sort64);
    if (narrow)
      CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
          base + o_tmp, bytes, static_cast<const unsigned*>(keys),
          static_cast<unsigned*>(sorted_keys), index, sorted_index, m, 0, end_bit, stream));
    else
      CUDA_CHECK(cub::DeviceRadixSort::SortPairs(base + o_tmp, bytes, static_cast<const u64*>(keys),
                                                 static_cast<u64*>(sorted_keys), index,
                                                 sorted_index, m, 0, end_bit, stream));
    CUDA_CHECK_LAUNCH("cub::DeviceRadixSort::SortPairs");
    final_keys = sorted_keys;
    final_index = sorted_index;
  }
  finish_kernel<<<blocks_for(b), kThreads, 0, stream>>>(
      s, final_index, final_keys, narrow, smallest, host.lo, host.ranked != 0, b, support, w);
  CUDA_CHECK_LAUNCH("finish_kernel");
  return true;
}

}  // namespace fastal::cuda::topb
