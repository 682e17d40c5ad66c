// What the two Lloyd kernels share (kmeans_lloyd.cpp, kmeans_bounded.cpp): the chunk of rows per
// BLAS call, the GEMM into a column-major tile, the arg-min, and the rule that makes a label not
// depend on the BLAS.
//
// A row's label is the centre of least direct squared distance sqdist(x, c_j) = Σ (x - c_j)²
// (cpu/simd.h; ties to the lowest j). The GEMM form v_j = |c_j|² - 2 x·c_j only filters: where
// its best beats its runner-up by more than its rounding can explain (gemm_gap), the direct
// distances put the same centre first; otherwise the centres within that gap are compared by
// direct distance (resolve). So the labels are the same whatever BLAS computed the tile and
// however it ordered its sums, and the bounded kernel, which computes most labels by direct
// distance alone, agrees with the plain one bit for bit.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/omp_compat.h"

#include "cpu/simd.h"

namespace fastal::cpu::lloyd {

constexpr int64_t kChunk = 256;  // most rows per GEMM: a kChunk x k tile stays in L2 for k <= 1000

using ::fastal::cpu::widened;  // (simd.h)

// Rows per chunk for k centres: kChunk, and fewer (down to 32) past k = 4096 so that a thread's
// tile stays near 4 MiB of float32 (256 rows of k = 50,000 would be 51 MB for every thread).
inline int64_t chunk_rows(int64_t k) {
  return std::clamp<int64_t>((int64_t{1} << 20) / k / 16 * 16, 32, kChunk);
}

template <typename T>
using Gemm = void (*)(const char*, const char*, const int*, const int*, const int*, const T*,
                      const T*, const int*, const T*, const int*, const T*, T*, const int*);
// MKL's Fortran mkl_set_num_threads_local_: this thread's MKL thread count (0: the global one);
// returns the previous value
using SetThreadsLocal = int (*)(const int*);

// For each of the rows r < m of a column-major tile (tile[j * ld + r], k >= 1 columns): the first j
// minimising tile[j * ld + r] + add[j] into arg[r], that minimum into best[r] and the least of the
// other columns' values into second[r] (+inf when k = 1). Each value is the one rounded sum a
// scalar loop forms and j runs upwards with a strict comparison, so SIMD lanes (two registers of
// rows at a time) give exactly the scalar answer, ties to the lowest j. GCC does not vectorise the
// scalar loop. SIMD lanes carry j as a T, exact while k <= 2^24.
template <typename T>
void first_argmin_columns(const T* tile, int64_t ld, int64_t m, int64_t k, const T* add, T* best,
                          T* second, int32_t* arg) {
  const T inf = std::numeric_limits<T>::infinity();
  int64_t r = 0;
#ifdef FASTAL_AVX2
  using L = Lanes<T>;
  constexpr int w = 2 * L::n;  // two registers: each tile line is read once
  if (k <= (int64_t{1} << 24)) {
    for (; r + w <= m; r += w) {
      typename L::V b0 = L::add(L::load(tile + r), L::set1(add[0]));
      typename L::V b1 = L::add(L::load(tile + r + L::n), L::set1(add[0]));
      typename L::V s0 = L::set1(inf), s1 = L::set1(inf);
      typename L::V a0 = L::set1(0), a1 = L::set1(0);
      for (int64_t j = 1; j < k; ++j) {
        const typename L::V c = L::set1(add[j]), jj = L::set1(static_cast<T>(j));
        const typename L::V v0 = L::add(L::load(tile + j * ld + r), c);
        const typename L::V v1 = L::add(L::load(tile + j * ld + r + L::n), c);
        s0 = L::min(s0, L::max(b0, v0));  // the runner-up: the larger of the old best and v
        s1 = L::min(s1, L::max(b1, v1));
        const typename L::V lt0 = L::less(v0, b0), lt1 = L::less(v1, b1);
        b0 = L::blend(b0, v0, lt0);
        b1 = L::blend(b1, v1, lt1);
        a0 = L::blend(a0, jj, lt0);
        a1 = L::blend(a1, jj, lt1);
      }
      T idx[w];
      L::store(best + r, b0);
      L::store(best + r + L::n, b1);
      L::store(second + r, s0);
      L::store(second + r + L::n, s1);
      L::store(idx, a0);
      L::store(idx + L::n, a1);
      for (int u = 0; u < w; ++u) arg[r + u] = static_cast<int32_t>(idx[u]);
    }
  }
#endif
  for (; r < m; ++r) {
    T b = tile[r] + add[0], s = inf;
    int32_t a = 0;
    for (int64_t j = 1; j < k; ++j) {
      const T v = tile[j * ld + r] + add[j];
      s = std::min(s, std::max(b, v));
      if (v < b) b = v, a = static_cast<int32_t>(j);
    }
    best[r] = b;
    second[r] = s;
    arg[r] = a;
  }
}

// |c_j|² in T, summed in order (the value the arg-min adds to every row's -2 x·c_j).
template <typename T>
void centre_sqnorms(const T* centres, int64_t k, int64_t d, T* csq) {
  for (int64_t j = 0; j < k; ++j) {
    T s = 0;
    for (int64_t c = 0; c < d; ++c) s += centres[j * d + c] * centres[j * d + c];
    csq[j] = s;
  }
}

// The rounding of the two forms, for the exact squared distances D_j = |x - c_j|² (float64
// arithmetic here rounds by ~1e-16 relative, far inside these):
//  - direct: sqdist is within `slack` D_j relative (the (d + 4) u of common/prune.h, with room);
//  - GEMM: |v_j - (D_j - |x|²)| <= gemm(xsq) and |xsq - |x|²| <= gemm(xsq), from the dot product
//    bound γ_d |x| |c| and the centre norms' γ_d |c|², with |c| <= max_norm: (d + 2) u (|c| +
//    |x|)².
struct Margins {
  double unit, slack, max_norm;
  int64_t d;

  template <typename T>
  Margins(const T* centres, int64_t k, int64_t d_)
      : unit(std::ldexp(1.0, -std::numeric_limits<T>::digits)),
        slack(1.5 * static_cast<double>(d_ + 4) * unit),
        max_norm(0),
        d(d_) {
    for (int64_t j = 0; j < k; ++j) {
      double s = 0;
      for (int64_t c = 0; c < d; ++c)
        s += static_cast<double>(centres[j * d + c]) * centres[j * d + c];
      max_norm = std::max(max_norm, std::sqrt(s) * (1 + 1e-12));
    }
  }

  double gemm(double xsq) const {
    const double xn = std::sqrt(std::max(xsq, 0.0)) * (1 + (d + 2) * unit);
    const double s = max_norm + xn;
    return 1.5 * static_cast<double>(d + 2) * unit * s * s + 1e-300;
  }

  // A lead of v_best over every other v_j by more than this puts the same centre first by direct
  // distance: D_j - D_best then exceeds 2 slack D_best / (1 - slack).
  double gemm_gap(double best, double xsq) const {
    const double e = gemm(xsq);
    return 2 * e + 2.01 * slack * (std::max(best + xsq, 0.0) + 2 * e);
  }
};

// The direct-distance arg-min (ties to the lowest j) over the centres whose tile value is at
// most `limit` (the best plus gemm_gap: every centre the direct distances could put first);
// its distance into *dist2.
template <typename T>
int64_t resolve(const T* x, const T* centres, int64_t d, const T* tile, int64_t ld, int64_t k,
                const T* add, double limit, T* dist2) {
  int64_t win = -1;
  T win_d = std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < k; ++j) {
    if (static_cast<double>(tile[j * ld] + add[j]) > limit) continue;
    const T dd = sqdist(x, centres + j * d, d);
    if (win < 0 || dd < win_d) win = j, win_d = dd;
  }
  *dist2 = win_d;
  return win;
}

// The column-major tile (rows x k) = -2 X_c Cᵀ: tile[j * rows + r] = -2 x_r · c_j, by the BLAS
// gemm. In this orientation MKL's single-threaded sgemm measured ~5% faster, and the arg-min
// runs along contiguous rows.
template <typename T>
void gemm_tile(Gemm<T> gemm, const T* xc, int64_t rows, const T* centres, int64_t k, int64_t d,
               T* tile) {
  const char trans = 'T', notrans = 'N';
  const int ir = static_cast<int>(rows), ik = static_cast<int>(k), id = static_cast<int>(d);
  const T alpha = -2, beta = 0;
  gemm(&trans, &notrans, &ir, &ik, &id, &alpha, xc, &id, centres, &id, &beta, tile, &ir);
}

// The labels of a chunk's rows from its tile (first_argmin_columns' best, second and arg): the
// GEMM's arg-min where it leads by gemm_gap, else resolve's; *resolved[r] says which. dist2 is
// the direct squared distance to the label either way: the GEMM form |x|² + v_best loses
// everything to rounding far from the origin (inertia 4.9x too large on tight float32 clusters,
// 44,000x at an offset of 1e4), and k-means sampling picks and empty-cluster moves read it.
template <typename T>
void chunk_labels(const Margins& mg, const T* xc, const T* xsq, const T* centres, int64_t d,
                  const T* tile, int64_t rows, int64_t k, const T* csq, const T* best,
                  const T* second, const int32_t* arg, int64_t* labels, T* dist2,
                  uint8_t* resolved) {
  for (int64_t r = 0; r < rows; ++r) {
    const double b = static_cast<double>(best[r]), x2 = static_cast<double>(xsq[r]);
    const double gap = mg.gemm_gap(b, x2);
    // a best of -inf (-2 x.c overflowed the type while every distance fits) proves nothing:
    // every centre is measured directly
    const bool finite = std::isfinite(b);
    resolved[r] = !(static_cast<double>(second[r]) - b > gap) || !finite;
    if (resolved[r]) {
      const double limit = finite ? b + gap : std::numeric_limits<double>::infinity();
      labels[r] = resolve(xc + r * d, centres, d, tile + r, rows, k, csq, limit, dist2 + r);
    } else {
      labels[r] = arg[r];
      dist2[r] = sqdist(xc + r * d, centres + arg[r] * d, d);
    }
  }
}

// How much farther each row's runner-up centre is than its nearest, in distance units, from the
// chunk's GEMM tile (its rounding included; +inf for k = 1): what a Yinyang-bounded step needs to
// settle the row once the centres move (the caller's guess whether bounds would pay).
template <typename T>
void chunk_margins(const T* xsq, const T* best, const T* second, int64_t rows, T* margin) {
  for (int64_t r = 0; r < rows; ++r) {
    const T near = std::sqrt(std::max(xsq[r] + best[r], T(0)));
    margin[r] = std::sqrt(std::max(xsq[r] + second[r], T(0))) - near;
  }
}

// The float64 sums and counts per label of a Lloyd step's rows (k x d and k), in one of two ways.
// Fused: each thread adds its rows to private sums while they are in cache, and these are added in
// thread order at the end (the totals depend on the thread count, never on scheduling). Private
// sums take threads * k * d doubles, GBs for k = 10^4 and d = 2048 on 64 threads, and as much
// traffic again per step to add them up. Past a limit they are left to a second pass instead, in
// which each thread owns a range of centres and adds their rows in row order: one more read of X,
// no private copies, totals that depend on nothing. Both kernels decide alike from the same sizes,
// so their sums agree bit for bit.
class RowSums {
 public:
  // Fused private sums up to 4 MiB, or up to 256 MiB while three times their size (written,
  // read, added) stays below a read of X; partial_limit >= 0 sets the limit in bytes instead.
  RowSums(int threads, int64_t n, int64_t k, int64_t d, int64_t row_bytes, int64_t partial_limit)
      : k_(k), d_(d), n_(n), counts_(static_cast<size_t>(threads) * k, 0) {
    const double bytes = static_cast<double>(threads) * k * d * sizeof(double);
    const double x_bytes = static_cast<double>(n) * row_bytes;
    fused_ = partial_limit >= 0 ? bytes <= static_cast<double>(partial_limit)
                                : bytes <= kSmall || (3 * bytes <= x_bytes && bytes <= kLarge);
    if (fused_) partial_.assign(static_cast<size_t>(threads) * k * d, 0.0);
  }

  // Thread t's row x, labelled a (inside the chunk loop).
  template <typename T>
  void add(int t, int64_t a, const T* x) {
    ++counts_[static_cast<size_t>(t) * k_ + a];
    if (!fused_) return;
    double* s = partial_.data() + (static_cast<int64_t>(t) * k_ + a) * d_;
    for (int64_t c = 0; c < d_; ++c) s[c] += static_cast<double>(to_float(x[c]));
  }

  // sums and counts, once every row of X has its label. Called by every thread of the kernel's
  // parallel region after its chunk loop (the loops here are shared out).
  template <typename T>
  void finish(const T* X, const int64_t* labels, double* sums, int64_t* counts) {
    const int team = omp_get_num_threads();
    const int64_t threads = static_cast<int64_t>(counts_.size()) / k_;
#pragma omp for schedule(static)
    for (int64_t j = 0; j < k_; ++j) {
      int64_t total = 0;
      for (int64_t u = 0; u < threads; ++u) total += counts_[u * k_ + j];
      counts[j] = total;
    }
    if (fused_) {
#pragma omp for schedule(static)
      for (int64_t e = 0; e < k_ * d_; ++e) {
        double total = 0;
        for (int64_t u = 0; u < threads; ++u) total += partial_[u * k_ * d_ + e];
        sums[e] = total;
      }
      return;
    }
#pragma omp single
    {  // centre ranges of about n / team rows each
      first_.assign(static_cast<size_t>(team) + 1, k_);
      int64_t j = 0, seen = 0;
      for (int u = 0; u < team; ++u) {
        first_[u] = j;
        const int64_t target = n_ * (u + 1) / team;
        while (j < k_ && seen + counts[j] <= target) seen += counts[j++];
      }
    }
    const int t = omp_get_thread_num();
    const int64_t j0 = first_[t], j1 = first_[t + 1];
    std::fill(sums + j0 * d_, sums + j1 * d_, 0.0);
    for (int64_t i = 0; i < n_; ++i) {
      const int64_t a = labels[i];
      if (a < j0 || a >= j1) continue;
      double* s = sums + a * d_;
      const T* x = X + i * d_;
      for (int64_t c = 0; c < d_; ++c) s[c] += static_cast<double>(to_float(x[c]));
    }
#pragma omp barrier
  }

 private:
  static constexpr double kSmall = 4.0 * (1 << 20), kLarge = 256.0 * (1 << 20);
  int64_t k_, d_, n_;
  bool fused_ = true;
  std::vector<int64_t> counts_;  // threads x k
  std::vector<double> partial_;  // threads x k x d, when fused
  std::vector<int64_t> first_;   // team + 1: thread u adds centres first_[u] .. first_[u + 1] - 1
};

}  // namespace fastal::cpu::lloyd
