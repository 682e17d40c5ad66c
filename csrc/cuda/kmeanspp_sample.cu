// One D^2 draw of k-means++ on the device (kmeanspp.cu holds the state and the pass): picks[t] for
// u = uniforms[t], from the tile sums of the last pass and mind, in one block of 1024 threads.
//
// The rule (the float64 reference's): total = sum of w (w = max(mind, 0), 0 for a centre); if
// total > 0 the pick is the first row whose running sum of w exceeds u * total, else the
// floor(u r)-th non-centre in index order (r of them). The sampler follows it through three levels:
//   1. 1024 segments of consecutive tiles, one per thread: sequential sums, then block-wide scans
//      in a fixed order (Kogge-Stone within warps, warp totals scanned by warp 0);
//   2. the tiles of the chosen segment, walked in order by one lane from the segment's start;
//   3. the 256 rows of the chosen tile, 8 consecutive rows per lane: lane sums, a warp scan, then
//      the chosen lane walks its rows.
// At each level it takes the first child with positive weight whose running end passes the target,
// or, when rounding finds none, the last child with positive weight: the pick always has w > 0.
// The counts of the total == 0 branch are exact integers. No atomics touch a sum (only the min /
// max choosing the segment), so the same inputs give the same pick on every run.
#include <climits>
#include <cmath>

#include "cuda/kmeanspp.cuh"

namespace fastal::cuda {

namespace {

constexpr int kScanThreads = 1024;  // the sampler's block
constexpr int kScanWarps = kScanThreads / 32;
constexpr int kLaneRows = kKMeansPPTile / 32;  // rows of a tile per lane
static_assert(kScanWarps == 32, "warp 0 scans one total per warp");

template <typename V>
__device__ __forceinline__ V warp_inclusive_scan(V x, int lane) {
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const V o = __shfl_up_sync(kFullMask, x, off);
    if (lane >= off) x = o + x;
  }
  return x;
}

__global__ void __launch_bounds__(kScanThreads)
    sample_kernel(const float* mind, int64_t n, const double* tile_sum, const int32_t* tile_count,
                  const double* uniforms, int64_t t, int64_t* picks, double* totals) {
  __shared__ double s_end[kScanThreads];      // running end of each segment's weight
  __shared__ long long s_cend[kScanThreads];  // running end of each segment's count
  __shared__ double s_wtot[kScanWarps];
  __shared__ long long s_ctot[kScanWarps];
  __shared__ int s_first, s_last;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (t > 0) {  // an invalid earlier pick (impossible for valid input) invalidates the rest
    const int64_t prev = picks[t - 1];
    if (prev < 0 || prev >= n) {
      if (tid == 0) picks[t] = -1;
      return;
    }
  }
  // Level 1: thread j sums the tiles of segment j, then block-wide scans in a fixed order.
  const int64_t tiles = (n + kKMeansPPTile - 1) / kKMeansPPTile;
  const int64_t per = (tiles + kScanThreads - 1) / kScanThreads;
  const int64_t b0 = min(tiles, tid * per), b1 = min(tiles, b0 + per);
  double s = 0.0;
  long long c = 0;
  for (int64_t b = b0; b < b1; ++b) {
    s += tile_sum[b];
    c += tile_count[b];
  }
  double e = warp_inclusive_scan(s, lane);
  long long ec = warp_inclusive_scan(c, lane);
  if (lane == 31) {
    s_wtot[warp] = e;
    s_ctot[warp] = ec;
  }
  if (tid == 0) {
    s_first = INT_MAX;
    s_last = -1;
  }
  __syncthreads();
  if (warp == 0) {  // each lane rewrites only its own slot
    const double we = warp_inclusive_scan(s_wtot[lane], lane);
    const long long wc = warp_inclusive_scan(s_ctot[lane], lane);
    s_wtot[lane] = we;
    s_ctot[lane] = wc;
  }
  __syncthreads();
  if (warp > 0) {
    e = s_wtot[warp - 1] + e;
    ec = s_ctot[warp - 1] + ec;
  }
  s_end[tid] = e;
  s_cend[tid] = ec;
  __syncthreads();
  const double total = s_end[kScanThreads - 1];
  const long long r = s_cend[kScanThreads - 1];
  const double u = uniforms[t];
  const bool weighted = total > 0.0;
  const double target = weighted ? u * total : 0.0;
  long long q = 0;  // the uniform branch: the q-th non-centre
  if (!weighted && r > 0) {
    q = static_cast<long long>(floor(u * static_cast<double>(r)));
    q = q < 0 ? 0 : (q < r - 1 ? q : r - 1);
  }
  const bool positive = weighted ? s > 0.0 : c > 0;
  if (positive && (weighted ? e > target : ec > q)) atomicMin(&s_first, tid);
  if (positive) atomicMax(&s_last, tid);
  __syncthreads();
  if (warp != 0) return;  // no block synchronisation below
  if (r == 0) {           // every row is a centre (k > n - n_labeled): no pick
    if (lane == 0) {
      picks[t] = -1;
      totals[t] = total;
    }
    return;
  }
  const int seg = s_first != INT_MAX ? s_first : s_last;  // s_last >= 0: some segment is positive

  // Level 2: lane 0 walks the tiles of the segment from the segment's running start.
  int64_t tile = -1;
  double wstart = 0.0;
  long long cstart = 0;
  if (lane == 0) {
    const int64_t sb0 = min(tiles, static_cast<int64_t>(seg) * per), sb1 = min(tiles, sb0 + per);
    if (weighted) {
      double acc = seg > 0 ? s_end[seg - 1] : 0.0;
      for (int64_t b = sb0; b < sb1; ++b) {
        const double w = tile_sum[b];
        if (w > 0.0) {
          tile = b;  // the last positive tile so far, and its start: the fallback
          wstart = acc;
          const double next = acc + w;
          if (next > target) break;
          acc = next;
        }
      }
    } else {
      long long acc = seg > 0 ? s_cend[seg - 1] : 0;
      for (int64_t b = sb0; b < sb1; ++b) {
        const int cnt = tile_count[b];
        if (cnt > 0 && acc + cnt > q) {
          tile = b;
          break;
        }
        acc += cnt;
      }
      cstart = acc;
    }
  }
  tile = __shfl_sync(kFullMask, tile, 0);
  wstart = __shfl_sync(kFullMask, wstart, 0);
  cstart = __shfl_sync(kFullMask, cstart, 0);
  if (tile < 0) {  // impossible: the segment has a positive tile (and exact counts)
    if (lane == 0) picks[t] = -1;
    return;
  }

  // Level 3: lane l takes rows [8 l, 8 l + 8) of the tile.
  const int64_t r0 = tile * kKMeansPPTile + int64_t{lane} * kLaneRows;
  float mv[kLaneRows];
  double lw = 0.0;
  int lc = 0;
#pragma unroll
  for (int j = 0; j < kLaneRows; ++j) {
    mv[j] = r0 + j < n ? mind[r0 + j] : -INFINITY;
    lw += row_weight(mv[j]);
    lc += mv[j] != -INFINITY;
  }
  if (weighted) {
    const double lend = warp_inclusive_scan(lw, lane);
    double lbegin = __shfl_up_sync(kFullMask, lend, 1);
    if (lane == 0) lbegin = 0.0;
    const unsigned pos = __ballot_sync(kFullMask, lw > 0.0);
    const unsigned hit = __ballot_sync(kFullMask, lw > 0.0 && wstart + lend > target);
    // pos == 0 (no positive row in the tile) cannot follow from consistent tile sums; then
    // chosen = -1 and lane 0 writes "no pick" rather than leaving picks[t] unwritten.
    const int chosen = hit ? __ffs(static_cast<int>(hit)) - 1 : 31 - __clz(static_cast<int>(pos));
    if (chosen < 0 && lane == 0) {
      picks[t] = -1;
      totals[t] = total;
    }
    if (lane == chosen) {
      double acc = wstart + lbegin;
      int64_t pick = -1;
      for (int j = 0; j < kLaneRows; ++j) {
        const double w = row_weight(mv[j]);
        if (w > 0.0) {
          pick = r0 + j;  // the last positive row so far: the fallback
          if (acc + w > target) break;
          acc += w;
        }
      }
      picks[t] = pick;
      totals[t] = total;
    }
  } else {
    const int lcend = warp_inclusive_scan(lc, lane);
    const long long want = q - cstart;  // in [0, tile_count[tile])
    const unsigned hit = __ballot_sync(kFullMask, lc > 0 && lcend > want);
    const int chosen = __ffs(static_cast<int>(hit)) - 1;
    if (chosen < 0 && lane == 0) {  // as above: not reachable with consistent tile counts
      picks[t] = -1;
      totals[t] = total;
    }
    if (lane == chosen) {
      long long k = want - (lcend - lc);
      int64_t pick = -1;
      for (int j = 0; j < kLaneRows; ++j) {
        if (mv[j] == -INFINITY) continue;
        if (k == 0) {
          pick = r0 + j;
          break;
        }
        --k;
      }
      picks[t] = pick;
      totals[t] = total;
    }
  }
}

}  // namespace

namespace detail {

void kmeanspp_sample_launch(const float* mind, int64_t n, const double* tile_sum,
                            const int32_t* tile_count, const double* uniforms, int64_t t,
                            int64_t* picks, double* totals, cudaStream_t stream) {
  sample_kernel<<<1, kScanThreads, 0, stream>>>(mind, n, tile_sum, tile_count, uniforms, t, picks,
                                                totals);
  CUDA_CHECK_LAUNCH("sample_kernel");
}

}  // namespace detail

}  // namespace fastal::cuda
