// gram_min_eig for matrices of order up to 32: one warp per matrix, lane i owning row i.
//
// The one-thread path (common/gram_small.h) does every step of a matrix serially and waits on
// memory at each; the block path spends a 16 x 16 matrix's time on barriers. Here a warp forms and
// reduces its matrix in shared memory with no barrier but __syncwarp, and one lane then runs the
// serial Laguerre search of the CPU kernel (common/tridiagonal.h) on the tridiagonal, O(order) per
// evaluation, while the SM's other warps keep it busy.
//
//   formation  lane i reads its row of Z (S side: z_{s_i} over D columns; D side: column i of the
//              group's rows) and takes the other rows' values by shuffles, so lane i accumulates
//              row i of the Gram matrix, fused multiply-adds in index order. Lanes i and j form
//              (i, j) and (j, i) by the same operations (fma(a, b, c) = fma(b, a, c)), so the
//              matrix is exactly symmetric; the labeled part is read from the shared part's lower
//              triangle. Stored whole (both triangles), rows padded to order + 1 doubles.
//   Householder step k: the reflector of column k from two warp reductions (max, then the scaled
//              sum of squares, as tridiagonal::householder), p = β A₂₂ v by rows, w = p - (β/2)
//              (pᵀv) v, and A₂₂ -= v wᵀ + w vᵀ with both products rounded (sym2), so the update
//              keeps the symmetry exactly.
//   eigenvalues lane 0: tridiagonal::min_positive (and implicit QL with return_all), as the CPU.
//
// Shared memory per warp: the matrix, then v, w, d, e, e², QL's scratch (order each).
#include <algorithm>
#include <cstdint>

#include <math_constants.h>

#include "common/tridiagonal.h"
#include "cuda/device.cuh"
#include "cuda/gram_warp.cuh"
#include "cuda/warp_reduce.cuh"

namespace fastal::cuda {

namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kLanes = 32;

constexpr int kChunk = 8;  // formation: steps staged per round

// Resident blocks per SM the registers must allow: the formation's kCols accumulators and the
// stage values the compiler keeps in flight take ~100 (kCols 8) to ~250 (kCols 32) registers
// unbounded; these bounds hold them with few or no spills.
__host__ __device__ constexpr int min_blocks(int kCols) { return kCols <= 16 ? 3 : 2; }

// Doubles of shared memory per warp: the matrix (or the formation's stage, if larger), then the
// six vectors.
__host__ __device__ constexpr int warp_slot_doubles(int N) {
  return (N * (N + 1) > kChunk * kLanes ? N * (N + 1) : kChunk * kLanes) + 6 * N;
}

template <typename T>
__device__ __forceinline__ double load_z(const T* p) {
  return static_cast<double>(__ldg(p));
}

// Lane `lane`'s row of the Gram matrix into A (row stride ld). acc[j] accumulates entry (lane, j);
// kCols >= N bounds the columns at compile time. The values of each chunk of kChunk columns of Z
// (S side) or rows of the group (D side) are staged in A, which is free until the end: lane i's
// value for step t at stage[t * 32 + i], read back by every lane.
template <typename T, int kCols>
__device__ void form_rows(const gram_small::Args& p, const int64_t* grp, double* A, int ld,
                          int lane) {
  const T* Z = static_cast<const T*>(p.Z);
  const int N = static_cast<int>(p.size), mL = static_cast<int>(p.mL);
  const int64_t D = p.D, G = p.G;
  const bool row = lane < N;
  const bool s_side = mL + G <= D;
  // S side: (i, j) = z_{s_i} . z_{s_j} over the D columns; D side (N = D): Σ_a z_a[i] z_a[j]
  const int64_t steps = s_side ? D : G;
  const T* zi = nullptr;
  if (s_side && row) zi = Z + (lane < mL ? p.labeled[lane] : grp[lane - mL]) * D;
  double* stage = A;
  double acc[kCols];
#pragma unroll
  for (int j = 0; j < kCols; ++j) acc[j] = 0.0;
  for (int64_t t0 = 0; t0 < steps; t0 += kChunk) {
    const int chunk = static_cast<int>(std::min<int64_t>(kChunk, steps - t0));
    double x[kChunk];
#pragma unroll
    for (int t = 0; t < kChunk; ++t) {
      x[t] = 0.0;
      if (row && t < chunk)
        x[t] = load_z(s_side ? zi + t0 + t : Z + grp[t0 + t] * D + lane);
    }
    __syncwarp();  // the previous chunk's reads are done
#pragma unroll
    for (int t = 0; t < kChunk; ++t) stage[t * kLanes + lane] = x[t];
    __syncwarp();
#pragma unroll 1  // unrolled, the compiler would hold the whole stage in registers
    for (int t = 0; t < chunk; ++t) {
      const double* st = stage + t * kLanes;
      const double xt = st[lane];
#pragma unroll
      for (int j = 0; j < kCols; ++j) acc[j] = fma(xt, st[j], acc[j]);
    }
  }
  __syncwarp();  // the stage's last reads, before A is written
  if (!row) return;
  double* Ai = A + lane * ld;
#pragma unroll
  for (int j = 0; j < kCols; ++j) {
    if (j >= N) break;
    const int hi = max(lane, j), lo = min(lane, j);  // the shared part's lower triangle
    if (s_side)
      Ai[j] = hi < mL ? p.shared[int64_t{hi} * mL + lo] : acc[j];
    else
      Ai[j] = p.shared[int64_t{hi} * N + lo] + acc[j];
  }
}

// Householder reduction of the N x N matrix in A (both triangles, overwritten) to the tridiagonal
// (d[0, N), e[0, N - 1)); v and w are N-long scratch. Lane i owns row i.
__device__ void tridiagonalize_rows(double* A, int ld, int N, double* v, double* w, double* d,
                                    double* e, int lane) {
  const bool row = lane < N;
  for (int k = 0; k + 2 < N; ++k) {
    const int o = k + 1;  // the trailing block A₂₂ = A[o:, o:]
    const bool mine = lane >= o && row;
    const double x = mine ? A[lane * ld + k] : 0.0;  // column k below the diagonal
    if (lane == 0) d[k] = A[k * ld + k];
    const double x0 = __shfl_sync(kFullMask, x, o);
    const double tail = warp_max_d(mine && lane > o ? fabs(x) : 0.0);
    if (tail == 0) {  // column k is already reduced (β = 0): A₂₂ is unchanged
      if (lane == 0) e[k] = x0;
      continue;
    }
    const double scale = fmax(tail, fabs(x0)), inv = 1 / scale;
    const double norm = scale * sqrt(warp_sum_d(mine ? (x * inv) * (x * inv) : 0.0));
    const double alpha = x0 > 0 ? -norm : norm;
    const double beta = 1 / (alpha * (alpha - x0));  // 2 / vᵀv
    const double vi = !mine ? 0.0 : (lane == o ? x0 - alpha : x);
    if (lane == 0) e[k] = alpha;
    if (row) v[lane] = vi;
    __syncwarp();
    double pi = 0;  // (A₂₂ v)_i
    if (mine) {
      const double* Ai = A + lane * ld;
      for (int j = o; j < N; ++j) pi = fma(Ai[j], v[j], pi);
    }
    pi *= beta;
    const double half = 0.5 * beta * warp_sum_d(pi * vi);
    const double wi = pi - half * vi;
    if (row) w[lane] = wi;
    __syncwarp();
    if (mine) {  // A₂₂ -= v wᵀ + w vᵀ
      double* Ai = A + lane * ld;
      for (int j = o; j < N; ++j) Ai[j] = __dsub_rn(Ai[j], sym2(vi, w[j], wi, v[j]));
    }
    __syncwarp();  // v and w are rewritten by the next step
  }
  if (lane == 0) {
    if (N >= 2) {
      d[N - 2] = A[(N - 2) * ld + N - 2];
      e[N - 2] = A[(N - 1) * ld + N - 2];
    }
    d[N - 1] = A[(N - 1) * ld + N - 1];
  }
  __syncwarp();
}

// λ⁺_min of the tridiagonal, by one lane. Not inlined: the serial search and the formation's
// accumulators then do not compete for the same registers.
__device__ __noinline__ double solve_tridiagonal_lane(double* d, double* e, double* e2, double* ql,
                                                      int N, double rtol, double* spectrum) {
  return tridiagonal::min_positive<tridiagonal::ScalarCounts>(d, e, e2, ql, N, rtol, spectrum);
}

// One warp per group, a grid-stride loop over the groups; each block checks labeled once.
template <typename T, int kCols>
__global__ void __launch_bounds__(kLanes* kWarpsPerBlock, min_blocks(kCols)) gram_warp_kernel(const gram_small::Args p) {
  extern __shared__ double smem[];
  const int lane = threadIdx.x % kLanes, warp = threadIdx.x / kLanes;
  const int N = static_cast<int>(p.size), ld = N + 1;
  double* A = smem + warp * warp_slot_doubles(N);
  double* v = A + (warp_slot_doubles(N) - 6 * N);
  double* w = v + N;
  double* d = w + N;
  double* e = d + N;
  double* e2 = e + N;
  double* ql = e2 + N;
  bool bad_labeled = false;
  for (int64_t j = threadIdx.x; j < p.mL; j += blockDim.x)
    bad_labeled |= !gram_small::labeled_in_range(p, j);
  const bool labeled_ok = !__syncthreads_or(bad_labeled);
  const int64_t warps = int64_t{gridDim.x} * kWarpsPerBlock;
  for (int64_t g = int64_t{blockIdx.x} * kWarpsPerBlock + warp; g < p.n_groups; g += warps) {
    const int64_t* grp = p.groups + g * p.G;
    double* spectrum = p.spectra ? p.spectra + g * N : nullptr;
    bool bad = false;
    for (int64_t a = lane; a < p.G; a += kLanes) bad |= grp[a] < 0 || grp[a] >= p.n;
    if (__any_sync(kFullMask, bad) || !labeled_ok) {  // NaN without a read out of bounds
      if (lane == 0) p.min_eig[g] = CUDART_NAN;
      if (spectrum)
        for (int i = lane; i < N; i += kLanes) spectrum[i] = CUDART_NAN;
      continue;
    }
    form_rows<T, kCols>(p, grp, A, ld, lane);
    __syncwarp();
    tridiagonalize_rows(A, ld, N, v, w, d, e, lane);
    if (lane == 0) p.min_eig[g] = solve_tridiagonal_lane(d, e, e2, ql, N, p.rtol, spectrum);
    __syncwarp();  // d, e and QL's scratch are rewritten for the next group
  }
}

template <typename T, int kCols>
void launch_cols(const gram_small::Args& args, int device, cudaStream_t stream) {
  const size_t smem = sizeof(double) * kWarpsPerBlock *
                      static_cast<size_t>(warp_slot_doubles(static_cast<int>(args.size)));
  // resident blocks only: the grid-stride loop gives each warp several groups
  const int64_t blocks = (args.n_groups + kWarpsPerBlock - 1) / kWarpsPerBlock;
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gram_warp_kernel<T, kCols>,
                                                           kLanes * kWarpsPerBlock, smem));
  const int64_t resident = int64_t{sm_count(device)} * std::max(per_sm, 1);
  const auto grid = static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, resident)));
  gram_warp_kernel<T, kCols><<<grid, kLanes * kWarpsPerBlock, smem, stream>>>(args);
  CUDA_CHECK_LAUNCH("gram_warp_kernel");
}

}  // namespace

template <typename T>
void launch_gram_warp(const gram_small::Args& args, int device, cudaStream_t stream) {
  FASTAL_REQUIRE(args.size >= 1 && args.size <= kWarpMaxOrder,
                 "the one-warp path takes orders 1 to 32, got ", args.size);
  if (args.size <= 8)
    launch_cols<T, 8>(args, device, stream);
  else if (args.size <= 16)
    launch_cols<T, 16>(args, device, stream);
  else
    launch_cols<T, 32>(args, device, stream);
}

template void launch_gram_warp<float>(const gram_small::Args&, int, cudaStream_t);
template void launch_gram_warp<double>(const gram_small::Args&, int, cudaStream_t);

}  // namespace fastal::cuda
