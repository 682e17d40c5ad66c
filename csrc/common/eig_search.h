// Locating single eigenvalues of a symmetric matrix K from its inertia, shared by the paths of
// gram_min_eig: the CPU's tridiagonal one (cpu/gram_eig.cpp), its shared-eigendecomposition one
// (cpu/gram_lowrank.cpp) and the per-thread one of small matrices (common/gram_small.h, host and
// device). An evaluator E answers, for a shift x,
//   Pivots E::pivots(double x)                            the number of eigenvalues below x and the
//                                                         first two derivatives of log|det(K - xI)|
//   int64_t E::count(double x)                            the count alone
//   void E::counts(const double* x, double* cnt)          the counts alone, for kShifts shifts
// and the search below converges Laguerre's iteration to the wanted eigenvalue, every iterate
// checked by its count, with multisection rounds whenever an iterate misbehaves.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/hd.h"

namespace fastal {

constexpr int kShifts = 8;  // counts evaluated side by side (the tridiagonal divisions pipeline)

// count: eigenvalues below x; G = Σ_j 1 / (x - λ_j) and H = Σ_j 1 / (x - λ_j)²
struct Pivots {
  int64_t count;
  double G, H;
};

namespace eig_search {

constexpr double kEps = std::numeric_limits<double>::epsilon();

// The k-th smallest eigenvalue (0-based) given count(lo) <= k < count(hi), by multisection (at most
// `rounds` rounds of kShifts counts) until the bracket is narrower than max(abstol, 2 eps |hi|);
// *lo and *hi return the final bracket.
template <class E>
FASTAL_HOST_DEVICE void kth_eigenvalue_rounds(E& ev, int64_t k, double* lo, double* hi, int rounds,
                                              double abstol = 0) {
  double x[kShifts], cnt[kShifts];
  const double kk = static_cast<double>(k);
  for (int iter = 0; iter < rounds; ++iter) {
    const double width = *hi - *lo;
    if (!(width > std::max(abstol, 2 * kEps * std::max(std::abs(*lo), std::abs(*hi))))) break;
    for (int s = 0; s < kShifts; ++s) x[s] = *lo + width * (s + 1) / (kShifts + 1);
    ev.counts(x, cnt);
    int s = 0;
    while (s < kShifts && cnt[s] <= kk) ++s;
    if (s > 0) *lo = x[s - 1];
    if (s < kShifts) *hi = x[s];
  }
}

template <class E>
FASTAL_HOST_DEVICE double kth_eigenvalue(E& ev, int64_t k, double* lo, double* hi, double abstol) {
  kth_eigenvalue_rounds(ev, k, lo, hi, 64, abstol);
  return 0.5 * (*lo + *hi);
}

// Laguerre's step for a polynomial of degree m with real roots, from x towards the nearest root on
// the right (right = true) or the left: a positive distance, or NaN / inf when it breaks down.
// Written so that nothing cancels: (sq - G) = m ((m - 1) H - G²) / (sq + G) when G > 0, etc.
FASTAL_HD double laguerre_step(double m, double G, double H, bool right) {
  const double disc = std::max((m - 1) * (m * H - G * G), 0.0);
  const double sq = std::sqrt(disc);
  const double g = right ? G : -G;  // moving left is moving right on the mirrored polynomial
  if (g > 0) return (sq + g) / ((m - 1) * H - G * G);
  return m / (sq - g);
}

// The k-th smallest eigenvalue (0-based) of the n x n matrix from the bracket count(lo) <= k <
// count(hi) by Laguerre's iteration, which converges monotonically (cubically near a simple root)
// towards the nearest root on its side for a polynomial with real roots: from lo moving right
// (from_left) or from hi moving left. `deflate` roots known to sit near 0 (below lo) are divided
// out of G, H and the degree. Each iterate is checked by its count; a breakdown costs one
// multisection round, after which Laguerre resumes from the new end of the bracket (a few times,
// then multisection finishes). first, when given, is the evaluation at the starting point.
template <class E>
FASTAL_HOST_DEVICE double laguerre_eigenvalue(E& ev, int64_t n, int64_t k, double lo, double hi,
                                              bool from_left, int64_t deflate, double abstol,
                                              const Pivots* first = nullptr) {
  constexpr int kRestarts = 4;
  double x = from_left ? lo : hi;
  int restarts = 0;
  for (int iter = 0; iter < 40; ++iter) {
    const Pivots p = iter == 0 && first ? *first : ev.pivots(x);
    if (p.count <= k)
      lo = std::max(lo, x);
    else
      hi = std::min(hi, x);
    const double tol = 2 * kEps * std::abs(x) + abstol;
    if (hi - lo <= tol) return 0.5 * (lo + hi);
    bool ok = from_left ? p.count <= k : p.count > k;  // else rounding carried x past the root
    double next = x;
    if (ok) {
      double G = p.G, H = p.H;
      if (deflate > 0) {
        G -= deflate / x;
        H -= deflate / (x * x);
      }
      const double step = laguerre_step(static_cast<double>(n - deflate), G, H, from_left);
      if (step > 0 && std::isfinite(step) && step <= tol) return from_left ? x + step : x - step;
      next = from_left ? x + step : x - step;
      ok = step > 0 && std::isfinite(step) && next > lo && next < hi;
    }
    if (ok) {
      x = next;
      continue;
    }
    // breakdown (an iterate near a pole of a rational evaluator, or rounding): one multisection
    // round narrows the bracket, then Laguerre resumes from its end on the same side
    if (++restarts > kRestarts) break;
    double lo1 = lo, hi1 = hi;
    kth_eigenvalue_rounds(ev, k, &lo1, &hi1, 1);
    if (lo1 == lo && hi1 == hi) break;
    lo = lo1, hi = hi1;
    x = from_left ? lo : hi;
    first = nullptr;
  }
  return kth_eigenvalue(ev, k, &lo, &hi, abstol);
}

// λ⁺_min of the n x n PSD matrix, given λ_max (> 0) and an upper bound hi of the spectrum: the
// smallest eigenvalue above thr = rtol λ_max, or 0 when there is none. guess(z), when it returns a
// number in (thr, hi), is a point near the z-th eigenvalue (0-based) where Laguerre may start:
// rightwards when its count is z, leftwards when it is z + 1; otherwise it still bounds the search.
template <class E, class Guess>
FASTAL_HOST_DEVICE double min_positive_eigenvalue(E& ev, int64_t n, double lmax, double hi,
                                                  double rtol, Guess guess) {
  const double thr = rtol * lmax;
  const int64_t zeros = ev.count(thr);
  if (zeros >= n) return 0.0;
  const double abstol = 0.5 * kEps * lmax;  // the accuracy of the representation itself
  double lo = thr;
  const double start = guess(zeros);
  if (start > thr && start < hi) {
    const Pivots at = ev.pivots(start);
    if (at.count == zeros)
      return laguerre_eigenvalue(ev, n, zeros, start, hi, true, zeros, abstol, &at);
    if (at.count == zeros + 1)
      return laguerre_eigenvalue(ev, n, zeros, thr, start, false, zeros, abstol, &at);
    hi = start;  // several eigenvalues between thr and start: the default search, bounded
  }
  if (zeros == 0)  // every eigenvalue is right of thr: Laguerre converges from there directly
    return laguerre_eigenvalue(ev, n, 0, lo, hi, true, 0, abstol);
  // a cluster of (numerically) zero eigenvalues just left of thr slows Laguerre down: first move lo
  // off thr by multisection, then divide the cluster out (as roots at 0)
  while (lo <= thr) {
    const double lo0 = lo, hi0 = hi;
    kth_eigenvalue_rounds(ev, zeros, &lo, &hi, 1, abstol);
    if (lo == lo0 && hi == hi0) break;  // the bracket is as narrow as it gets
  }
  return laguerre_eigenvalue(ev, n, zeros, lo, hi, true, lo > 0 ? zeros : 0, abstol);
}

}  // namespace eig_search
}  // namespace fastal
