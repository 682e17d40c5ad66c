// Batched Gram eigenvalues of matrices of order up to 32, one warp per matrix, lane i owning row i:
// the CUDA kernel's one-warp path (cuda/gram_warp.cu), and its host build
// (cpu/gram_small_host.cpp), where a warp emulator (cpu/simt_emulation.h) runs this same source so
// that CPU tests check it.
//
// The warp operations come from a policy W with static members
//   double shfl(double v, int src)      lane src's v
//   double shfl_xor(double v, int m)    lane (lane ^ m)'s v
//   void sync()                         __syncwarp
//   bool any(bool p)                    whether p holds on some lane
//   double load(const T* p)             a read-only load, widened
// Every lane calls them in the same order (the code below is uniform across the warp).
//
//   formation  lane i reads its row of Z (S side: z_{s_i} over D columns; D side: column i of the
//              group's rows), kChunk steps at a time staged in shared memory, and accumulates row i
//              of the Gram matrix, fused multiply-adds in index order. Lanes i and j form (i, j)
//              and (j, i) by the same operations (fma(a, b, c) = fma(b, a, c)), so the matrix is
//              exactly symmetric; the labeled part comes from the shared part's lower triangle.
//              Stored whole (both triangles), rows padded to order + 1 doubles.
//   Householder step k: the reflector of column k from two warp reductions (max, then the scaled
//              sum of squares, as tridiagonal::householder), p = β A₂₂ v by rows, w = p - (β/2)
//              (pᵀv) v, and A₂₂ -= v wᵀ + w vᵀ with both products rounded (sym2), so the update
//              keeps the symmetry exactly.
//   eigenvalues lane 0: tridiagonal::min_positive (and implicit QL with return_all), as the CPU.
//
// Per-warp scratch ("slot", shared memory on the GPU): the matrix (or the formation's stage, if
// larger), then v, w, d, e, e², QL's scratch (order each).
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/gram_small.h"
#include "common/hd.h"
#include "common/rounding.h"
#include "common/tridiagonal.h"

namespace fastal::gram_warp {

constexpr int kLanes = 32;
constexpr int64_t kMaxOrder = kLanes;  // one lane per row
constexpr int kChunk = 8;              // formation: steps staged per round

// Doubles of scratch per warp for order N.
FASTAL_HD constexpr int slot_doubles(int N) {
  return (N * (N + 1) > kChunk * kLanes ? N * (N + 1) : kChunk * kLanes) + 6 * N;
}

// Butterfly reductions: lanes a and b combine the same two values, so every lane ends equal. A
// sum's argument must be a rounded value (mul_rn, not a bare product): the device may otherwise
// fuse each lane's own product into the first add, and lanes a and b would round differently.
template <class W>
FASTAL_HD double lane_sum(double v) {
  for (int off = kLanes / 2; off > 0; off >>= 1) v += W::shfl_xor(v, off);
  return v;
}
template <class W>
FASTAL_HD double lane_max(double v) {
  for (int off = kLanes / 2; off > 0; off >>= 1) v = std::fmax(v, W::shfl_xor(v, off));
  return v;
}

// Lane `lane`'s row of the Gram matrix into A (row stride ld). acc[j] accumulates entry (lane, j);
// kCols >= N bounds the columns at compile time. Each chunk's values are staged in A, free until
// the end: lane i's value for step t at stage[t * 32 + i], read back by every lane.
template <class W, typename T, int kCols>
FASTAL_HOST_DEVICE void form_rows(const gram_small::Args& p, const int64_t* grp, double* A, int ld,
                                  int lane) {
  const T* Z = static_cast<const T*>(p.Z);
  const int N = static_cast<int>(p.size);
  const int64_t mL = p.mL, D = p.D, G = p.G;  // mL in 64 bits: it may pass 2^31 on the D side
  const bool row = lane < N;
  const bool s_side = mL + G <= D;
  // S side: (i, j) = z_{s_i} . z_{s_j} over the D columns; D side (N = D): Σ_a z_a[i] z_a[j]
  const int64_t steps = s_side ? D : G;
  const T* zi = nullptr;
  if (s_side && row) zi = Z + (lane < mL ? p.labeled[lane] : grp[lane - mL]) * D;
  double* stage = A;
  double acc[kCols];
  FASTAL_UNROLL
  for (int j = 0; j < kCols; ++j) acc[j] = 0.0;
  for (int64_t t0 = 0; t0 < steps; t0 += kChunk) {
    const int chunk = static_cast<int>(steps - t0 < kChunk ? steps - t0 : kChunk);
    double x[kChunk];
    FASTAL_UNROLL
    for (int t = 0; t < kChunk; ++t) {
      x[t] = 0.0;
      if (row && t < chunk) x[t] = W::load(s_side ? zi + t0 + t : Z + grp[t0 + t] * D + lane);
    }
    W::sync();  // the previous chunk's reads are done
    FASTAL_UNROLL
    for (int t = 0; t < kChunk; ++t) stage[t * kLanes + lane] = x[t];
    W::sync();
    FASTAL_NO_UNROLL  // unrolled, the compiler would hold the whole stage in registers
        for (int t = 0; t < chunk; ++t) {
      const double* st = stage + t * kLanes;
      const double xt = st[lane];
      FASTAL_UNROLL
      for (int j = 0; j < kCols; ++j) acc[j] = std::fma(xt, st[j], acc[j]);
    }
  }
  W::sync();  // the stage's last reads, before A is written
  if (!row) return;
  double* Ai = A + lane * ld;
  FASTAL_UNROLL
  for (int j = 0; j < kCols; ++j) {
    if (j >= N) break;
    const int hi = lane > j ? lane : j, lo = lane > j ? j : lane;  // the shared lower triangle
    if (s_side)
      Ai[j] = hi < mL ? p.shared[hi * mL + lo] : acc[j];
    else
      Ai[j] = p.shared[int64_t{hi} * N + lo] + acc[j];
  }
}

// Householder reduction of the N x N matrix in A (both triangles, overwritten) to the tridiagonal
// (d[0, N), e[0, N - 1)); v and w are N-long scratch. Lane i owns row i.
template <class W>
FASTAL_HOST_DEVICE void tridiagonalize_rows(double* A, int ld, int N, double* v, double* w,
                                            double* d, double* e, int lane) {
  const bool row = lane < N;
  for (int k = 0; k + 2 < N; ++k) {
    const int o = k + 1;  // the trailing block A₂₂ = A[o:, o:]
    const bool mine = lane >= o && row;
    const double x = mine ? A[lane * ld + k] : 0.0;  // column k below the diagonal
    if (lane == 0) d[k] = A[k * ld + k];
    const double x0 = W::shfl(x, o);
    const double tail = lane_max<W>(mine && lane > o ? std::fabs(x) : 0.0);
    if (!(tail >= tridiagonal::kPivmin)) {  // reduced (β = 0), or subnormal: tridiagonal.h's rule
      if (lane == 0) e[k] = x0;
      continue;
    }
    const double scale = std::fmax(tail, std::fabs(x0)), inv = 1 / scale;
    const double norm = scale * std::sqrt(lane_sum<W>(mine ? mul_rn(x * inv, x * inv) : 0.0));
    const double alpha = x0 > 0 ? -norm : norm;
    // normalised as tridiagonal::householder: v[o] = 1, β = 2 / vᵀv in [1, 2] (never overflows)
    const double v0 = x0 - alpha, inv0 = 1 / v0;
    const double beta = -v0 / alpha;
    const double vi = !mine ? 0.0 : (lane == o ? 1.0 : x * inv0);
    if (lane == 0) e[k] = alpha;
    if (row) v[lane] = vi;
    W::sync();
    double pi = 0;  // (A₂₂ v)_i
    if (mine) {
      const double* Ai = A + lane * ld;
      for (int j = o; j < N; ++j) pi = std::fma(Ai[j], v[j], pi);
    }
    pi *= beta;
    const double half = 0.5 * beta * lane_sum<W>(mul_rn(pi, vi));
    const double wi = sub_rn(pi, mul_rn(half, vi));
    if (row) w[lane] = wi;
    W::sync();
    if (mine) {  // A₂₂ -= v wᵀ + w vᵀ
      double* Ai = A + lane * ld;
      for (int j = o; j < N; ++j) Ai[j] = sub_rn(Ai[j], sym2(vi, w[j], wi, v[j]));
    }
    W::sync();  // v and w are rewritten by the next step
  }
  if (lane == 0) {
    if (N >= 2) {
      d[N - 2] = A[(N - 2) * ld + N - 2];
      e[N - 2] = A[(N - 1) * ld + N - 2];
    }
    d[N - 1] = A[(N - 1) * ld + N - 1];
  }
  W::sync();
}

// λ⁺_min of the tridiagonal, by one lane. Not inlined on the device: the serial search and the
// formation's accumulators then do not compete for the same registers.
FASTAL_HOST_DEVICE FASTAL_NOINLINE inline double solve_tridiagonal(double* d, double* e, double* e2,
                                                                   double* ql, int N, double rtol,
                                                                   double* spectrum) {
  return tridiagonal::min_positive<tridiagonal::ScalarCounts>(d, e, e2, ql, N, rtol, spectrum);
}

// Group g by the warp whose lane this is, in `slot` (slot_doubles(order) doubles): min_eig[g] (and
// spectra[g]); NaN when labeled_ok is false (a labeled index out of range; the caller checks once)
// or an index of the group is out of range, with nothing read out of bounds.
template <class W, typename T, int kCols>
FASTAL_HOST_DEVICE void group_eig(const gram_small::Args& p, int64_t g, double* slot, int lane,
                                  bool labeled_ok) {
  const int N = static_cast<int>(p.size), ld = N + 1;
  double* A = slot;
  double* v = slot + (slot_doubles(N) - 6 * N);
  double* w = v + N;
  double* d = w + N;
  double* e = d + N;
  double* e2 = e + N;
  double* ql = e2 + N;
  const int64_t* grp = p.groups + g * p.G;
  double* spectrum = p.spectra ? p.spectra + g * N : nullptr;
  bool bad = false;
  for (int64_t a = lane; a < p.G; a += kLanes) bad |= grp[a] < 0 || grp[a] >= p.n;
  if (W::any(bad) || !labeled_ok) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    if (lane == 0) p.min_eig[g] = nan;
    if (spectrum)
      for (int i = lane; i < N; i += kLanes) spectrum[i] = nan;
    return;
  }
  form_rows<W, T, kCols>(p, grp, A, ld, lane);
  W::sync();
  tridiagonalize_rows<W>(A, ld, N, v, w, d, e, lane);
  if (lane == 0) p.min_eig[g] = solve_tridiagonal(d, e, e2, ql, N, p.rtol, spectrum);
  W::sync();  // d, e and QL's scratch are rewritten for the next group
}

}  // namespace fastal::gram_warp
