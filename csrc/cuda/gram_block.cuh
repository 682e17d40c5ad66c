// The device side of the one-block-per-matrix path of gram_eig.cu (see that file's header for the
// algorithm): forming a group's Gram matrix, Householder tridiagonalisation with the pending
// rank-2 update fused into the next pass, and the Sturm-count multisection for the eigenvalues.
// Private to gram_eig.cu, the one file that includes it (hence the unnamed namespace): kept apart
// so that each file reads in one sitting.
#pragma once

#include <math_constants.h>

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "common/rounding.h"
#include "cuda/device.cuh"

namespace fastal::cuda {
namespace {

constexpr double kEps = DBL_EPSILON;  // 2^-52
constexpr double kPivmin = DBL_MIN;
constexpr int kMaxThreads = 256;
constexpr int kScalars = 16;  // doubles at the start of the dynamic shared memory (scalars, fb)
constexpr int kVectors = 7;   // work vectors of length size, besides the partial sums
constexpr int kIters = 64;    // multisection rounds (each gains >= 6 bits)
constexpr int kBisect = 128;  // bisection steps per eigenvalue with return_all

// ---- small device helpers --------------------------------------------------------------------

// Butterfly reductions: lanes a and b combine the same two values, so every lane ends equal.
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}
__device__ __forceinline__ double warp_max_d(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}
__device__ __forceinline__ double warp_min_d(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmin(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}
// max that keeps a NaN once seen (fmax would drop it)
__device__ __forceinline__ double nan_max(double m, double v) { return (v > m || v != v) ? v : m; }
__device__ __forceinline__ double warp_nan_max(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = nan_max(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

template <typename T>
__device__ __forceinline__ double load64(const T* p) {
  return static_cast<double>(__ldg(p));
}

// x . y over D values (storage T), by the 32 lanes of a warp; every lane returns the sum.
template <typename T>
__device__ __forceinline__ double warp_dot(const T* x, const T* y, int64_t D, int lane) {
  double s = 0;
#pragma unroll 4
  for (int64_t c = lane; c < D; c += 32) s = fma(load64(x + c), load64(y + c), s);
  return warp_sum_d(s);
}

// ---- the per-group kernel's device pieces -----------------------------------------------------

struct GramArgs {
  const void* Z;
  int64_t n, D;
  const int64_t* labeled;
  int64_t mL;
  const int64_t* groups;
  int64_t n_groups, G;
  const double* shared;  // S side: mL x mL; D side: D x D
  int64_t size;          // order of each matrix
  double rtol;
  double* min_eig;
  double* spectra;  // null without return_all
  double* work;     // global slots, `slot` doubles per block (null when nothing is global)
  int64_t slot;
  int64_t vec_len;  // doubles of the work vectors: kVectors * size + max(threads, size)
  bool a_in_smem, vec_in_smem;
};

// Row slices of the fused pass over `cols` columns with W warps: when there are fewer column tiles
// of 32 than warps, the rows are split so that every warp has work.
__device__ __forceinline__ int pass_slices(int cols, int W) {
  const int tiles = (cols + 31) / 32;
  return W >= tiles ? W / tiles : 1;
}

// The matrix of group `grp` into A (N x N, leading dimension N).
template <typename T>
__device__ void form_matrix(const GramArgs& p, const int64_t* grp, double* A, int N) {
  const T* Z = static_cast<const T*>(p.Z);
  const int64_t D = p.D, mL = p.mL, G = p.G;
  const int tid = threadIdx.x, T_ = blockDim.x, lane = tid & 31, warp = tid >> 5, W = T_ >> 5;
  if (mL + G <= D) {
    for (int64_t idx = tid; idx < mL * mL; idx += T_) {
      const int64_t i = idx / mL;
      A[i * N + (idx - i * mL)] = __ldg(p.shared + idx);
    }
    // rows mL + a, columns j <= mL + a (against L, then the group's own triangle): a warp per
    // entry, written to both triangles
    int64_t a = 0, j = warp;
    auto normalize = [&] {
      while (a < G && j > mL + a) {
        j -= mL + a + 1;
        ++a;
      }
    };
    for (normalize(); a < G; j += W, normalize()) {
      const T* za = Z + __ldg(grp + a) * D;
      const T* zj = Z + (j < mL ? __ldg(p.labeled + j) : __ldg(grp + (j - mL))) * D;
      const double s = warp_dot(za, zj, D, lane);
      if (lane == 0) {
        A[(mL + a) * N + j] = s;
        A[j * N + (mL + a)] = s;
      }
    }
  } else {
    // N = D: entry (i, j) = (Z_Lᵀ Z_L)_ij + Σ_a z_a[i] z_a[j]; (j, i) rounds the same products
    // alike
    const int64_t NN = int64_t{N} * N;
    for (int64_t idx = tid; idx < NN; idx += T_) {
      const int64_t i = idx / N, j = idx - i * N;
      double acc = __ldg(p.shared + idx);
      for (int64_t b = 0; b < G; ++b) {
        const T* z = Z + __ldg(grp + b) * D;
        acc = fma(load64(z + i), load64(z + j), acc);
      }
      A[idx] = acc;
    }
  }
}

// H x = alpha e_0 for x of length len >= 2, by warp 0: the reflector v into u[0, len), alpha into
// *alpha; returns beta = 2 / vᵀv (0, H = I, when x[1, len) is already zero). As cpu/gram_eig.cpp.
__device__ double householder_warp(const double* x, int len, double* u, double* alpha, int lane) {
  double mx = 0;
  for (int j = 1 + lane; j < len; j += 32) mx = fmax(mx, fabs(x[j]));
  mx = warp_max_d(mx);
  const double x0 = x[0];
  if (!(mx >= kPivmin)) {  // zero or subnormal: already reduced (common/tridiagonal.h's rule)
    for (int j = lane; j < len; j += 32) u[j] = 0;
    *alpha = x0;
    return 0;
  }
  const double scale = fmax(mx, fabs(x0)), inv = 1 / scale;
  double ss = 0;
  for (int j = lane; j < len; j += 32) {
    const double t = x[j] * inv;
    ss = fma(t, t, ss);
  }
  ss = warp_sum_d(ss);
  const double norm = scale * sqrt(ss);
  const double a = x0 > 0 ? -norm : norm;
  // normalised as LAPACK's (u[0] = 1, beta in [1, 2]): beta = 2 / uᵀu of u[0] = x0 - a overflowed
  // for columns below 2^-256 of the diagonal
  const double v0 = x0 - a, inv0 = 1 / v0;
  for (int j = 1 + lane; j < len; j += 32) u[j] = x[j] * inv0;
  if (lane == 0) u[0] = 1.0;
  *alpha = a;
  return -v0 / a;
}

// One fused pass over the trailing block B[1:, 1:] (B = A[k:, k:], m x m, leading dimension ld):
// B -= P wᵀ + w Pᵀ (the pending update, when `update`), part[slice][j - 1] = Σ_(rows of the slice)
// B[i][j] U[i - 1], and nxt[j - 1] = B[1][j] (= B[j][1], the next step's first column). A warp owns
// column tiles of 32 and a slice of rows; it walks up to kCols of its tiles side by side, so that
// each thread keeps kCols independent loads in flight per row (the global-memory path is bound by
// memory latency) and the row's P, w, U values are read once for all of them. Each column's sum
// runs over the rows in order, whatever the grouping.
constexpr int kCols = 4;
__device__ void fused_pass(double* B, int ld, int m, const double* P, const double* w,
                           const double* U, double* part, double* nxt, bool update) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = blockDim.x >> 5;
  const int cols = m - 1, tiles = (cols + 31) / 32, R = pass_slices(cols, W);
  int tile0, tstep, slice;
  if (W >= tiles) {
    tile0 = warp % tiles;
    slice = warp / tiles;
    tstep = tiles;
    if (slice >= R) return;
  } else {
    tile0 = warp;
    slice = 0;
    tstep = W;
  }
  const int len = (cols + R - 1) / R;
  const int i0 = 1 + slice * len, i1 = min(m, i0 + len);
  for (int t = tile0; t < tiles; t += kCols * tstep) {
    int j[kCols];
    bool on[kCols];
    double pj[kCols], wj[kCols], acc[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      j[c] = 1 + (t + c * tstep) * 32 + lane;
      on[c] = t + c * tstep < tiles && j[c] < m;
      pj[c] = on[c] ? P[j[c]] : 0.0;
      wj[c] = on[c] ? w[j[c]] : 0.0;
      acc[c] = 0;
    }
    if (!on[0]) continue;  // the first tile is the widest: nothing for this lane at all
    for (int i = i0; i < i1; ++i) {
      double* row = B + int64_t{i} * ld;
      double a[kCols];
#pragma unroll
      for (int c = 0; c < kCols; ++c) a[c] = on[c] ? row[j[c]] : 0.0;  // all loads first
      const double pi = P[i], wi = w[i], ui = U[i - 1];
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        if (!on[c]) continue;
        if (update) {
          a[c] -= sym2(pi, wj[c], wi, pj[c]);
          row[j[c]] = a[c];
        }
        acc[c] = fma(a[c], ui, acc[c]);
        if (i == 1) nxt[j[c] - 1] = a[c];
      }
    }
#pragma unroll
    for (int c = 0; c < kCols; ++c)
      if (on[c]) part[slice * cols + (j[c] - 1)] = acc[c];
  }
}

// Reduces the symmetric N x N matrix A (both triangles, leading dimension N; overwritten) to the
// tridiagonal (d[0, N), e[0, N - 1)). All threads call it; it starts and ends with a barrier.
__device__ void tridiagonalize(double* A, int N, double* part, double* buf0, double* buf1,
                               double* w, double* nc, double* d, double* e) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, W = blockDim.x >> 5;
  for (int i = tid; i < N; i += blockDim.x) buf0[i] = w[i] = 0;  // no pending update
  __syncthreads();
  double beta = 0;  // warp 0: the last reflector's beta
  // Step k works on B = A[k:, k:] (m = N - k) whose true value is B - (P wᵀ + w Pᵀ) (pending):
  // P = the last reflector (indexed by B's rows), U receives the new one (indexed by B[1:]'s rows).
  for (int k = 0;; ++k) {
    const int m = N - k;
    double* P = (k & 1) ? buf1 : buf0;
    double* U = (k & 1) ? buf0 : buf1;
    double* B = A + int64_t{k} * N + k;
    if (warp == 0) {
      if (k == 0) {
        for (int i = lane; i < m; i += 32) nc[i] = B[i];  // row 0 = column 0
      } else {
        // finish step k - 1: p = Σ slices, w = beta p - (beta² / 2)(pᵀ P) P (P: its reflector)
        const int R = pass_slices(m, W);
        double dot = 0;
        for (int j = lane; j < m; j += 32) {
          double s = part[j];
          for (int r = 1; r < R; ++r) s += part[r * m + j];
          part[j] = s;
          dot = fma(s, P[j], dot);
        }
        const double half = 0.5 * beta * (beta * warp_sum_d(dot));
        for (int j = lane; j < m; j += 32) w[j] = beta * part[j] - half * P[j];
        __syncwarp();
        const double w0 = w[0], p0 = P[0];
        for (int i = lane; i < m; i += 32) nc[i] -= sym2(P[i], w0, w[i], p0);  // true column 0
      }
      __syncwarp();
      if (m <= 2) {
        if (lane == 0) {
          d[k] = nc[0];
          if (m == 2) {
            e[k] = nc[1];
            d[k + 1] = B[N + 1] - sym2(P[1], w[1], w[1], P[1]);
          }
        }
      } else {
        double alpha;
        beta = householder_warp(nc + 1, m - 1, U, &alpha, lane);
        if (lane == 0) {
          d[k] = nc[0];
          e[k] = alpha;
        }
      }
    }
    if (m <= 2) break;
    __syncthreads();
    fused_pass(B, N, m, P, w, U, part, nc, k > 0);
    __syncthreads();
  }
  __syncthreads();
}

// Eigenvalues of the tridiagonal below x: negative pivots of LDLᵀ of T - x I (a pivot smaller than
// pivmin in magnitude counts as -pivmin), as cpu/gram_eig.cpp's count_below.
__device__ int sturm_count(const double* d, const double* e2, int N, double x) {
  double q = d[0] - x;
  if (fabs(q) < kPivmin) q = -kPivmin;
  int c = q < 0;
  for (int i = 1; i < N; ++i) {
    q = (d[i] - x) - e2[i - 1] / q;
    if (fabs(q) < kPivmin) q = -kPivmin;
    c += q < 0;
  }
  return c;
}

// The k-th smallest eigenvalue (0-based) given count(lo) <= k < count(hi): each of the blockDim
// threads counts at one of blockDim equispaced shifts per round; the new bracket is around the
// first shift whose count exceeds k. Until width <= max(abstol, 2 eps max(|lo|, |hi|)). All threads
// call it with the same arguments and get the same value. fb: three flags used in rotation
// (fb[base] holds blockDim on entry and again on exit), so that one barrier per round suffices.
__device__ double multisect(const double* d, const double* e2, int N, int k, double lo, double hi,
                            double abstol, int* fb, int& base) {
  const int T_ = blockDim.x, s = threadIdx.x;
  const double parts = T_ + 1;
  for (int it = 0; it < kIters; ++it) {
    const double width = hi - lo;
    if (!(width > fmax(abstol, 2 * kEps * fmax(fabs(lo), fabs(hi))))) break;
    int* cur = fb + base;
    if (s == 0) fb[(base + 1) % 3] = T_;  // last read two rounds ago; next written after a barrier
    if (sturm_count(d, e2, N, lo + width * (s + 1) / parts) > k) atomicMin(cur, s);
    __syncthreads();
    const int f = *cur;
    const double nlo = f > 0 ? lo + width * f / parts : lo;  // the shifts f - 1 and f
    const double nhi = f < T_ ? lo + width * (f + 1) / parts : hi;
    lo = nlo;
    hi = nhi;
    base = (base + 1) % 3;
  }
  return 0.5 * (lo + hi);
}

// λ⁺_min (and the spectrum) of the tridiagonal (d, e) into out[0] (and spectrum[0, N)). All threads
// call it. d, e are scaled in place; e2 and tmp (N doubles each) are scratch.
__device__ void solve_tridiagonal(double* d, double* e, double* e2, double* tmp, int N, double rtol,
                                  double* out, double* spectrum, double* scal, int* fb, int& base) {
  const int tid = threadIdx.x, lane = tid & 31;
  if (tid < 32) {
    double big = 0;
    for (int i = lane; i < N; i += 32) {
      big = nan_max(big, fabs(d[i]));
      if (i + 1 < N) big = nan_max(big, fabs(e[i]));
    }
    big = warp_nan_max(big);
    if (big >= kPivmin && big <= DBL_MAX) {
      // a power of two (exact) so that the squares can neither overflow nor underflow
      int exponent;
      frexp(big, &exponent);
      const double scale = ldexp(1.0, -exponent);
      for (int i = lane; i < N; i += 32) {
        d[i] *= scale;
        if (i + 1 < N) {
          e[i] *= scale;
          e2[i] = e[i] * e[i];
        }
      }
      __syncwarp();
      double glo = CUDART_INF, ghi = -CUDART_INF;  // Gershgorin interval
      for (int i = lane; i < N; i += 32) {
        const double r = (i > 0 ? fabs(e[i - 1]) : 0.0) + (i + 1 < N ? fabs(e[i]) : 0.0);
        glo = fmin(glo, d[i] - r);
        ghi = fmax(ghi, d[i] + r);
      }
      glo = warp_min_d(glo);
      ghi = warp_max_d(ghi);
      const double pad = 4 * kEps * fmax(fabs(glo), fabs(ghi)) + 4 * kPivmin * N;
      if (lane == 0) {
        scal[0] = glo - pad;
        scal[1] = ghi + pad;
        scal[2] = ldexp(1.0, exponent);
        scal[3] = 1;  // solve
      }
    } else if (lane == 0) {
      // the zero matrix, or a subnormal one (no positive eigenvalue, as common/tridiagonal.h);
      // NaN or inf
      scal[3] = big >= 0 && big < kPivmin ? 0 : -1;
    }
  }
  __syncthreads();
  const double status = scal[3];
  if (status != 1) {  // no positive eigenvalue (the zero matrix), or a non-finite matrix
    const double v = status == 0 ? 0.0 : CUDART_NAN;
    if (tid == 0) *out = v;
    if (spectrum)
      for (int i = tid; i < N; i += blockDim.x) spectrum[i] = v;
    return;
  }
  const double glo = scal[0], ghi = scal[1], unscale = scal[2];
  const double lmax = multisect(d, e2, N, N - 1, glo, ghi, 0.0, fb, base);
  double lmin = 0;
  if (lmax > 0) {
    const double thr = rtol * lmax;
    const int zeros = sturm_count(d, e2, N, thr);  // the same in every thread
    if (zeros < N)
      lmin = multisect(d, e2, N, zeros, thr, ghi, 0.5 * kEps * lmax, fb, base) * unscale;
  }
  if (tid == 0) *out = lmin;
  if (!spectrum) return;
  // every eigenvalue by bisection, one thread per index, to the accuracy of λ⁺_min
  const double abstol = 0.5 * kEps * (lmax > 0 ? lmax : fmax(fabs(glo), fabs(ghi)));
  for (int idx = tid; idx < N; idx += blockDim.x) {
    double lo = glo, hi = ghi;
    for (int it = 0; it < kBisect; ++it) {
      const double width = hi - lo;
      if (!(width > fmax(abstol, 2 * kEps * fmax(fabs(lo), fabs(hi))))) break;
      const double mid = lo + 0.5 * width;
      if (sturm_count(d, e2, N, mid) > idx)
        hi = mid;
      else
        lo = mid;
    }
    tmp[idx] = 0.5 * (lo + hi);
  }
  __syncthreads();
  if (tid == 0)  // already ascending when the counts are monotone: one pass then
    for (int i = 1; i < N; ++i) {
      const double v = tmp[i];
      int j = i;
      for (; j > 0 && tmp[j - 1] > v; --j) tmp[j] = tmp[j - 1];
      tmp[j] = v;
    }
  __syncthreads();
  for (int i = tid; i < N; i += blockDim.x) spectrum[i] = fmax(tmp[i], 0.0) * unscale;
}

}  // namespace
}  // namespace fastal::cuda
