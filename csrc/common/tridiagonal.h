// The symmetric-tridiagonal half of gram_min_eig, shared by the CPU kernel (cpu/gram_eig.cpp) and
// the per-thread path for small matrices (common/gram_small.h, host and device): the Householder
// reflector, the LDLᵀ pivot recurrence (Sturm count and the derivatives Laguerre needs), implicit
// QL for whole spectra, and λ⁺_min of a tridiagonal T.
//
// Vectors are passed as any type with operator[] (a raw pointer, or common/gram_small.h's strided
// view of a per-thread slot), so one source serves both memory layouts.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/eig_search.h"
#include "common/hd.h"

namespace fastal {

namespace tridiagonal {

constexpr double kEps = std::numeric_limits<double>::epsilon();  // 2^-52
constexpr double kPivmin = std::numeric_limits<double>::min();   // smallest |pivot| of LDLᵀ

// The reflector H = I - beta v vᵀ with H x = alpha e_0 for x of length m >= 1 (v[0, m) written).
// Returns alpha; beta = 0 (H = I) when x[1, m) is already zero, or subnormal: below kPivmin, where
// Python's rescaling (a peak of Z in [2^-240, 2^240]) puts it under 2^-500 of the matrix's largest
// entry, far below the eigenvalues' rounding. Normalised as LAPACK's: v[0] = 1 and beta in [1, 2]
// (with v[0] = x[0] - alpha, beta = 2 / vᵀv reached 2^512 once the column was below 2^-256 of the
// diagonal, and beta² overflowed in the rank-2 update: λ⁺_min of such matrices came out as noise).
template <class X, class V>
FASTAL_HOST_DEVICE double householder(X x, int64_t m, V v, double* beta) {
  double scale = 0;
  for (int64_t j = 1; j < m; ++j) scale = std::fmax(scale, std::abs(x[j]));
  if (!(scale >= kPivmin)) {
    for (int64_t j = 0; j < m; ++j) v[j] = 0.0;
    *beta = 0;
    return x[0];
  }
  scale = std::fmax(scale, std::abs(x[0]));
  const double inv = 1 / scale;
  double ss = 0;
  for (int64_t j = 0; j < m; ++j) ss += (x[j] * inv) * (x[j] * inv);
  const double norm = scale * std::sqrt(ss);
  const double alpha = x[0] > 0 ? -norm : norm;
  const double v0 = x[0] - alpha;  // |v0| = |x[0]| + norm >= norm: no cancellation, no underflow
  const double inv0 = 1 / v0;
  v[0] = 1.0;
  for (int64_t j = 1; j < m; ++j) v[j] = x[j] * inv0;
  *beta = -v0 / alpha;  // 2 / vᵀv of the unnormalised v, times v0²
  return alpha;
}

// One LDLᵀ pass over T - x I (T: diagonal d, squared off-diagonal e2): the number of negative
// pivots (eigenvalues below x; a pivot smaller than pivmin in magnitude counts as -pivmin) and the
// first two derivatives of log|det(T - x I)|, G = Σ_j 1 / (x - λ_j) and H = Σ_j 1 / (x - λ_j)²,
// from the recurrences of the pivots q_i and their derivatives (r_i = q_i' / q_i, h_i = q_i'' /
// q_i).
template <class V>
FASTAL_HOST_DEVICE Pivots ldl_pass(const V& d, const V& e2, int64_t n, double x, double pivmin) {
  double q = d[0] - x;
  q = std::abs(q) < pivmin ? -pivmin : q;
  double inv = 1 / q, r = -inv, h = 0;  // q_0' = -1, q_0'' = 0
  double G = r, H = r * r;
  int64_t count = q < 0;
  for (int64_t i = 1; i < n; ++i) {
    const double g = e2[i - 1] * inv;  // e²_{i-1} / q_{i-1}
    q = (d[i] - x) - g;
    q = std::abs(q) < pivmin ? -pivmin : q;
    const double inv_i = 1 / q;
    const double r_i = (g * r - 1) * inv_i;
    const double h_i = g * inv_i * (h - 2 * r * r);
    inv = inv_i, r = r_i, h = h_i;
    G += r;
    H += r * r - h;
    count += q < 0;
  }
  return {count, G, H};
}

// cnt[s] = eigenvalues below x[s] for kShifts shifts, the recurrences side by side (the divisions
// pipeline); the same pivots as ldl_pass.
template <class V>
FASTAL_HOST_DEVICE void count_below_scalar(const V& d, const V& e2, int64_t n, const double* x,
                                           double pivmin, double* cnt) {
  double q[kShifts];
  for (int s = 0; s < kShifts; ++s) cnt[s] = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int s = 0; s < kShifts; ++s) {
      double t = d[i] - x[s];
      if (i > 0) t -= e2[i - 1] / q[s];
      t = std::abs(t) < pivmin ? -pivmin : t;
      q[s] = t;
      cnt[s] += t < 0 ? 1.0 : 0.0;
    }
  }
}

// The eig_search evaluator of the tridiagonal (d, e²) with scalar counts (the CPU kernel has its
// own with AVX2 counts).
template <class V>
struct ScalarCounts {
  V d, e2;
  int64_t n;
  double pivmin;
  FASTAL_HOST_DEVICE Pivots pivots(double x) const { return ldl_pass(d, e2, n, x, pivmin); }
  FASTAL_HOST_DEVICE int64_t count(double x) const { return ldl_pass(d, e2, n, x, pivmin).count; }
  FASTAL_HOST_DEVICE void counts(const double* x, double* cnt) const {
    count_below_scalar(d, e2, n, x, pivmin, cnt);
  }
};

// All eigenvalues of (d, e) by implicit QL with Wilkinson shifts (e is destroyed; e[n - 1] is
// scratch), ascending in d.
template <class V, class W>
FASTAL_HOST_DEVICE void ql_eigenvalues(V d, W e, int64_t n) {
  if (n == 0) return;
  const double tiny = std::numeric_limits<double>::min();
  e[n - 1] = 0;
  for (int64_t l = 0; l < n; ++l) {
    for (int iter = 0; iter < 64; ++iter) {
      int64_t m = l;  // the first negligible e[m] at or after l closes the block [l, m]
      for (; m < n - 1; ++m)
        if (std::abs(e[m]) <= kEps * (std::abs(d[m]) + std::abs(d[m + 1])) + tiny) break;
      if (m == l) break;  // d[l] has converged
      // Wilkinson-type shift from the leading 2 x 2 of the block, applied as the implicit shift
      double g = (d[l + 1] - d[l]) / (2 * e[l]);
      double r = std::sqrt(g * g + 1);
      g = d[m] - d[l] + e[l] / (g + (g >= 0 ? r : -r));
      double s = 1, c = 1, p = 0;
      int64_t i = m - 1;
      bool deflated = false;
      for (; i >= l; --i) {  // chase the bulge from the bottom of the block up with rotations
        const double f = s * e[i], b = c * e[i];
        r = std::sqrt(f * f + g * g);
        e[i + 1] = r;
        if (r == 0) {  // underflow: the block splits at i + 1
          d[i + 1] -= p;
          e[m] = 0;
          deflated = true;
          break;
        }
        s = f / r;
        c = g / r;
        g = d[i + 1] - p;
        r = (d[i] - g) * s + 2 * c * b;
        p = s * r;
        d[i + 1] = g + p;
        g = c * r - b;
      }
      if (deflated) continue;
      d[l] -= p;
      e[l] = g;
      e[m] = 0;
    }
  }
  // insertion sort (host and device alike); QL leaves d nearly ordered
  for (int64_t i = 1; i < n; ++i) {
    const double v = d[i];
    int64_t j = i;
    for (; j > 0 && d[j - 1] > v; --j) d[j] = d[j - 1];
    d[j] = v;
  }
}

// No guess for min_positive_eigenvalue: the default search from the threshold.
struct NoGuess {
  FASTAL_HD double operator()(int64_t) const { return 0.0; }
};

// λ⁺_min of the tridiagonal (d[0, n), e[0, n - 1)) with n >= 1: the smallest eigenvalue above
// rtol · λ_max, 0 when there is none (the zero matrix included). d and e are scaled in place; e2
// (n - 1 values) is scratch. With a spectrum (n values; null for none), also every eigenvalue,
// ascending and clamped at 0, by implicit QL with ql (n values) as scratch. Evaluator:
// ScalarCounts or one with the same members (d, e2, n, pivmin), in that order.
template <template <class> class Evaluator, class V>
FASTAL_HOST_DEVICE double min_positive(V d, V e, V e2, V ql, int64_t n, double rtol,
                                       double* spectrum) {
  double big = 0;
  for (int64_t i = 0; i < n; ++i) big = std::fmax(big, std::abs(d[i]));
  for (int64_t i = 0; i + 1 < n; ++i) big = std::fmax(big, std::abs(e[i]));
  // the zero matrix, or one whose entries are all subnormal (no power of two brings them to O(1),
  // and eigenvalues there have no relative precision): no positive eigenvalue
  if (!(big >= kPivmin)) {
    if (spectrum)
      for (int64_t i = 0; i < n; ++i) spectrum[i] = 0.0;
    return 0.0;
  }
  // scale by a power of two (exact) so that the squares below can neither overflow nor underflow
  int exponent;
  std::frexp(big, &exponent);
  const double scale = std::ldexp(1.0, -exponent), unscale = std::ldexp(1.0, exponent);
  double glo = std::numeric_limits<double>::infinity(), ghi = -glo;  // Gershgorin interval
  for (int64_t i = 0; i < n; ++i) {
    d[i] *= scale;
    if (i + 1 < n) {
      e[i] *= scale;
      e2[i] = e[i] * e[i];
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const double radius = (i > 0 ? std::abs(e[i - 1]) : 0.0) + (i + 1 < n ? std::abs(e[i]) : 0.0);
    glo = std::fmin(glo, d[i] - radius);
    ghi = std::fmax(ghi, d[i] + radius);
  }
  const double pad = 4 * kEps * std::fmax(std::abs(glo), std::abs(ghi)) + 4 * kPivmin * n;
  glo -= pad;
  ghi += pad;

  if (spectrum) {
    for (int64_t i = 0; i < n; ++i) spectrum[i] = d[i];
    for (int64_t i = 0; i + 1 < n; ++i) ql[i] = e[i];
    ql_eigenvalues(spectrum, ql, n);
    for (int64_t i = 0; i < n; ++i) spectrum[i] = std::fmax(spectrum[i], 0.0) * unscale;
  }

  // λ_max by Laguerre from the Gershgorin bound (above every eigenvalue, so it moves left
  // monotonically). It only sets the zero threshold rtol λ_max: 1e-6 of the scale is enough.
  Evaluator<V> ev{d, e2, n, kPivmin};
  const double lmax = eig_search::laguerre_eigenvalue(ev, n, n - 1, glo, ghi, false, 0, 1e-6 * ghi);
  if (!(lmax > 0)) return 0.0;
  return eig_search::min_positive_eigenvalue(ev, n, lmax, ghi, rtol, NoGuess{}) * unscale;
}

}  // namespace tridiagonal
}  // namespace fastal
