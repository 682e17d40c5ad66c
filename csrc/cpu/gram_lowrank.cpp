// Batched Gram eigenvalues from one shared eigendecomposition (gram_min_eig's "lowrank" method).
//
// The caller diagonalises the labeled part once per call (Λ ascending, an m x D basis P) so that
// every group's matrix is a small change of a diagonal one:
//   D side (|S| > D):  Z_Lᵀ Z_L + Z_gᵀ Z_g = Q (Λ + V Vᵀ) Qᵀ,  V = Qᵀ Z_gᵀ        (P = Qᵀ, m = D)
//   S side (|S| <= D): Z_S Z_Sᵀ is similar to [[Λ, V], [Vᵀ, C]], V = Qᵀ Z_L Z_gᵀ,
//                      C = Z_g Z_gᵀ                                   (P = Qᵀ Z_L, m = |L|)
// Per group only V = P Z_gᵀ (m x G, m G D multiply-adds) is formed. For a shift x the inertia of
// K - xI follows from that of a G x G matrix (Haynsworth), with r_i = 1 / (Λ_i - x):
//   D side: #(λ < x) = #(Λ < x) - #neg(M),  M(x) = I + Σ_i r_i v_i v_iᵀ
//   S side: #(λ < x) = #(Λ < x) + #neg(M),  M(x) = C - xI - Σ_i r_i v_i v_iᵀ
// (v_i: row i of V), and det(K - xI) = det(Λ - xI) det M(x) gives Laguerre's derivatives:
//   G = Σ_i 1/(x - Λ_i) + tr(M⁻¹M'),   H = Σ_i 1/(x - Λ_i)² + tr((M⁻¹M')²) - tr(M⁻¹M'').
// An evaluation costs O(m G²) instead of the O(size³) Householder reduction of the tridiagonal
// method, so this method wins for large matrices and small groups (gram.py chooses). The inertia of
// M comes from an elimination with Bunch–Parlett pivots (1 x 1 or 2 x 2, bounded growth); the
// search itself (Laguerre checked by counts, multisection fallback) is eig_search.h's, shared with
// the tridiagonal method. Everything in float64.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "common/check.h"
#include "cpu/dots.h"
#include "common/eig_search.h"
#include "cpu/kernels.h"
#include "cpu/parallel_groups.h"

namespace fastal::cpu {

namespace {
constexpr double kEps = std::numeric_limits<double>::epsilon();

// Swaps index p and q of the symmetric G x G matrix A (rows and columns) and of every G x G block
// of the G x (nr G) matrix R (rows, and columns within each block).
void swap_symmetric(double* A, double* R, int64_t G, int nr, int64_t p, int64_t q) {
  if (p == q) return;
  const int64_t ldr = nr * G;
  for (int64_t j = 0; j < G; ++j) std::swap(A[p * G + j], A[q * G + j]);
  for (int64_t i = 0; i < G; ++i) std::swap(A[i * G + p], A[i * G + q]);
  if (!R) return;
  for (int64_t j = 0; j < ldr; ++j) std::swap(R[p * ldr + j], R[q * ldr + j]);
  for (int64_t i = 0; i < G; ++i)
    for (int b = 0; b < nr; ++b) std::swap(R[i * ldr + b * G + p], R[i * ldr + b * G + q]);
}

// Elimination of the symmetric G x G matrix A (full, row-major, overwritten) with Bunch–Parlett
// symmetric pivoting: the number of negative eigenvalues of A (that of its 1 x 1 / 2 x 2 pivots,
// by Sylvester's law). With R (G x nr G: nr blocks R_j), the same permutation P and row operations
// are applied and R is overwritten with the blocks (P A Pᵀ)⁻¹ (P R_j Pᵀ) = P (A⁻¹ R_j) Pᵀ, whose
// traces and traces of products are those of A⁻¹ R_j. block[k] = pivot size starting at k (0 for
// the second row of a 2 x 2). A pivot below eps² of the block's largest entry counts as negative
// (as Sturm counts take a zero pivot to -pivmin).
int64_t inertia_solve(double* A, double* R, int64_t G, int nr, int* block) {
  const double alpha = (1 + std::sqrt(17.0)) / 8;  // balances the growth of 1 x 1 and 2 x 2 steps
  const int64_t ldr = nr * G;
  int64_t neg = 0;
  for (int64_t k = 0; k < G;) {
    int64_t p = k, r = k, s = k;
    double mu0 = -1, mu1 = 0;
    for (int64_t i = k; i < G; ++i) {
      if (std::abs(A[i * G + i]) > mu0) mu0 = std::abs(A[i * G + i]), p = i;
      for (int64_t j = k; j < i; ++j)
        if (std::abs(A[i * G + j]) > mu1) mu1 = std::abs(A[i * G + j]), r = i, s = j;
    }
    const double pivmin = kEps * kEps * std::max(mu0, mu1) + std::numeric_limits<double>::min();
    // 1 x 1 also for the last row, and where no off-diagonal entry is positive (NaN data must
    // not send a 2 x 2 pivot past row G - 1)
    if (mu0 >= alpha * mu1 || k + 1 == G || !(mu1 > 0)) {  // 1 x 1 on the largest diagonal entry
      swap_symmetric(A, R, G, nr, k, p);
      double d = A[k * G + k];
      if (std::abs(d) < pivmin) d = A[k * G + k] = -pivmin;
      neg += d < 0;
      block[k] = 1;
      for (int64_t i = k + 1; i < G; ++i) {
        const double f = A[i * G + k] / d;
        if (f == 0) continue;
        for (int64_t j = k; j < G; ++j) A[i * G + j] -= f * A[k * G + j];
        if (R)
          for (int64_t j = 0; j < ldr; ++j) R[i * ldr + j] -= f * R[k * ldr + j];
      }
      k += 1;
      continue;
    }
    // 2 x 2 pivot on the largest off-diagonal entry (r, s), r > s: s to k, r to k + 1. Its
    // determinant is < -(1 - alpha²) A_rs² < 0: one negative and one positive eigenvalue.
    swap_symmetric(A, R, G, nr, k, s);
    if (r == k) r = s;
    swap_symmetric(A, R, G, nr, k + 1, r);
    const double a = A[k * G + k], b = A[(k + 1) * G + k], c = A[(k + 1) * G + k + 1];
    const double det = a * c - b * b;
    neg += 1;
    block[k] = 2, block[k + 1] = 0;
    for (int64_t i = k + 2; i < G; ++i) {
      const double x = A[i * G + k], y = A[i * G + k + 1];
      const double f1 = (x * c - y * b) / det, f2 = (y * a - x * b) / det;
      for (int64_t j = k; j < G; ++j) A[i * G + j] -= f1 * A[k * G + j] + f2 * A[(k + 1) * G + j];
      if (R)
        for (int64_t j = 0; j < ldr; ++j)
          R[i * ldr + j] -= f1 * R[k * ldr + j] + f2 * R[(k + 1) * ldr + j];
    }
    k += 2;
  }
  if (!R) return neg;
  // back substitution through the block upper-triangular factor, bottom up, in place
  for (int64_t k = G - 1; k >= 0; --k) {
    const int64_t k0 = block[k] == 0 ? k - 1 : k;  // first row of the pivot block ending at k
    const int64_t end = k + 1;
    for (int64_t i = k0; i <= k; ++i)
      for (int64_t j = end; j < G; ++j) {
        const double f = A[i * G + j];
        if (f == 0) continue;
        for (int64_t t = 0; t < ldr; ++t) R[i * ldr + t] -= f * R[j * ldr + t];
      }
    if (k0 == k) {
      const double inv = 1 / A[k * G + k];
      for (int64_t t = 0; t < ldr; ++t) R[k * ldr + t] *= inv;
    } else {
      const double a = A[k0 * G + k0], b = A[k * G + k0], c = A[k * G + k];
      const double det = a * c - b * b;
      for (int64_t t = 0; t < ldr; ++t) {
        const double y0 = R[k0 * ldr + t], y1 = R[k * ldr + t];
        R[k0 * ldr + t] = (c * y0 - b * y1) / det;
        R[k * ldr + t] = (a * y1 - b * y0) / det;
      }
    }
    k = k0;
  }
  return neg;
}

// Per-thread buffers of one group.
struct LowRankWork {
  std::vector<double> Zg;      // G x D, the group's rows
  std::vector<double> Vt;      // G x m, Vᵀ (scaled)
  std::vector<double> lam;     // m, Λ (scaled)
  std::vector<double> C;       // G x G, Z_g Z_gᵀ (scaled)
  std::vector<double> rpow;    // 3 x m: r, r², r³
  std::vector<double> weight;  // 3 G x m: r^k ∘ Vᵀ rows, k = 1, 2, 3
  std::vector<double> prod;    // 3 G x G: the weighted products
  std::vector<double> M, R;    // G x G and G x 2G for inertia_solve
  std::vector<int> block;
  LowRankWork(int64_t m, int64_t G, int64_t D)
      : Zg(G * D),
        Vt(G * m),
        lam(m),
        C(G * G),
        rpow(3 * m),
        weight(3 * G * m),
        prod(3 * G * G),
        M(G * G),
        R(2 * G * G),
        block(G) {}
};

// The eig_search evaluator of one group (see the top of the file).
struct LowRankCounts {
  LowRankWork& w;
  int64_t m, G;
  bool s_side;
  double floor;  // |Λ_i - x| below this is taken as -floor: Λ_i counts as below x

  // Fills weight rows k < nk with r^(k+1) ∘ Vᵀ and returns #(Λ < x), Σ r and Σ r².
  int64_t weigh(double x, int nk, double* sum_r, double* sum_r2) {
    double* r1 = w.rpow.data();
    double *r2 = r1 + m, *r3 = r2 + m;
    int64_t below = 0;
    double s1 = 0, s2 = 0;
    for (int64_t i = 0; i < m; ++i) {
      double diff = w.lam[i] - x;
      if (std::abs(diff) < floor) diff = -floor;
      below += diff < 0;
      const double r = 1 / diff;
      r1[i] = r, r2[i] = r * r, r3[i] = r * r * r;
      s1 += r, s2 += r * r;
    }
    for (int k = 0; k < nk; ++k)
      for (int64_t a = 0; a < G; ++a) {
        const double* v = w.Vt.data() + a * m;
        const double* rk = w.rpow.data() + k * m;
        double* out = w.weight.data() + (k * G + a) * m;
#pragma omp simd
        for (int64_t i = 0; i < m; ++i) out[i] = rk[i] * v[i];
      }
    *sum_r = s1, *sum_r2 = s2;
    return below;
  }

  // M (and with derivs R = [M' | M'']) at x from the weighted products.
  void assemble(double x, bool derivs) {
    const double sigma = s_side ? -1.0 : 1.0;
    const double* S0 = w.prod.data();
    const double* S1 = S0 + G * G;
    const double* S2 = S1 + G * G;
    for (int64_t a = 0; a < G; ++a)
      for (int64_t b = 0; b < G; ++b) {
        const int64_t lower = a >= b ? a * G + b : b * G + a;  // the products' lower triangles
        const double diag = a == b ? 1.0 : 0.0;
        const double base = s_side ? w.C[a * G + b] - x * diag : diag;
        w.M[a * G + b] = base + sigma * S0[lower];
        if (derivs) {
          w.R[a * 2 * G + b] = (s_side ? -diag : 0.0) + sigma * S1[lower];
          w.R[a * 2 * G + G + b] = 2 * sigma * S2[lower];
        }
      }
  }

  int64_t count_at(double x, bool derivs, double* sum_r, double* sum_r2) {
    const int nk = derivs ? 3 : 1;
    const int64_t below = weigh(x, nk, sum_r, sum_r2);
    // prod[k G + a, b] = Σ_i r_i^(k+1) V_ia V_ib
    if (m > 0)
      for (int k = 0; k < nk; ++k)  // lower triangles, in 4-row strips (assemble mirrors them)
        for (int64_t a = 0; a < G; a += 4) {
          const int64_t rows = std::min<int64_t>(4, G - a);
          cross_products(w.weight.data() + (k * G + a) * m, m, rows, w.Vt.data(), m, a + rows, m,
                         w.prod.data() + (k * G + a) * G, G);
        }
    else
      std::fill(w.prod.begin(), w.prod.end(), 0.0);
    assemble(x, derivs);
    const int64_t neg =
        inertia_solve(w.M.data(), derivs ? w.R.data() : nullptr, G, 2, w.block.data());
    return s_side ? below + neg : below - neg;
  }

  Pivots pivots(double x) {
    double sum_r, sum_r2;
    const int64_t count = count_at(x, true, &sum_r, &sum_r2);
    const double* R = w.R.data();
    double tr1 = 0, tr11 = 0, tr2 = 0;
    for (int64_t a = 0; a < G; ++a) {
      tr1 += R[a * 2 * G + a];
      tr2 += R[a * 2 * G + G + a];
      for (int64_t b = 0; b < G; ++b) tr11 += R[a * 2 * G + b] * R[b * 2 * G + a];
    }
    // Σ 1/(x - Λ_i) = -Σ r_i
    return {count, -sum_r + tr1, sum_r2 + tr11 - tr2};
  }

  int64_t count(double x) {
    double s1, s2;
    return count_at(x, false, &s1, &s2);
  }

  void counts(const double* x, double* cnt) {
    double s1, s2;
    for (int s = 0; s < kShifts; ++s) cnt[s] = static_cast<double>(count_at(x[s], false, &s1, &s2));
  }
};

// λ⁺_min of one group.
template <typename T>
double group_min_eig(const T* Z, int64_t D, const int64_t* group, int64_t G, const double* basis,
                     const double* lam, int64_t m, bool s_side, double rtol, LowRankWork& w) {
  gather_rows(Z, D, group, G, w.Zg.data());
  if (m > 0) cross_products(w.Zg.data(), D, G, basis, D, m, D, w.Vt.data(), m);
  cross_products(w.Zg.data(), D, G, w.Zg.data(), D, G, D, w.C.data(), G);  // C = Z_g Z_gᵀ
  // λ_max(K) = λ_max(Z_Lᵀ Z_L + Z_gᵀ Z_g) lies in [max(Λ_max, max_a C_aa), Λ_max + λ_max(C)],
  // and λ_max(C) is at most its largest absolute row sum (Gershgorin) and its trace
  const double lam_max = m > 0 ? std::max(lam[m - 1], 0.0) : 0.0;
  double trace = 0, rows = 0, diag = 0;
  for (int64_t a = 0; a < G; ++a) {
    double row = 0;
    for (int64_t b = 0; b < G; ++b) row += std::abs(w.C[a * G + b]);
    rows = std::max(rows, row);
    trace += w.C[a * G + a];
    diag = std::max(diag, w.C[a * G + a]);
  }
  double hi = lam_max + std::min(trace, rows);
  // every row zero, or the whole matrix subnormal (below 2^-1022, where no power of two brings it
  // to O(1) and its eigenvalues have no relative precision): no positive eigenvalue, as the
  // tridiagonal method says (common/tridiagonal.h)
  if (!(hi >= std::numeric_limits<double>::min())) return 0.0;
  // scale K by an even power of two (exact) so that its entries are O(1)
  int exponent;
  std::frexp(hi, &exponent);
  exponent += exponent & 1;
  const double scale = std::ldexp(1.0, -exponent), root = std::ldexp(1.0, -exponent / 2);
  for (int64_t i = 0; i < m; ++i) w.lam[i] = lam[i] * scale;
  // V is in units of Z (D side: Qᵀ Z_gᵀ) or of Z² (S side: Qᵀ Z_L Z_gᵀ)
  const double v_scale = s_side ? scale : root;
  for (auto& v : w.Vt) v *= v_scale;
  for (auto& c : w.C) c *= scale;
  hi *= scale;
  const int64_t n = s_side ? m + G : m;  // the order of the matrix whose spectrum is searched
  const double pad = 8 * kEps * hi + 8 * std::numeric_limits<double>::min() * n;
  hi += pad;
  LowRankCounts ev{w, m, G, s_side, kEps * kEps * hi};
  // λ_max by Laguerre from above every eigenvalue (monotone). It only sets the zero threshold
  // rtol λ_max, so 1e-6 of the spectrum's scale is enough (the tridiagonal method goes to eps).
  const double lmax_lo = std::max(lam_max, diag) * scale * (1 - 16 * kEps) - pad;
  const double lmax =
      eig_search::laguerre_eigenvalue(ev, n, n - 1, lmax_lo, hi, false, 0, 1e-6 * hi);
  if (!(lmax > 0)) return 0.0;
  // Laguerre for λ⁺_min starts between two poles, away from both (near a pole G and H cancel):
  // by interlacing λ_z(K) >= Λ_z on the D side (a positive semi-definite update) and
  // λ_z(K) <= Λ_z on the S side (a bordered matrix, Cauchy), so the gap above Λ_z (D side) or
  // below it (S side) is where λ_z is most likely; poles closer than 1e-10 count as one (e.g.
  // the zeros of a rank-deficient labeled part).
  const auto guess = [&](int64_t z) {
    int64_t i = s_side ? z - 1 : z;
    if (i < 0) return 0.0;
    while (i + 1 < m && w.lam[i + 1] <= w.lam[i] + 1e-10 * hi) ++i;
    return i + 1 < m ? 0.5 * (w.lam[i] + w.lam[i + 1]) : 0.0;
  };
  return eig_search::min_positive_eigenvalue(ev, n, lmax, hi, rtol, guess) / scale;
}

}  // namespace

template <typename T>
void gram_min_eig_lowrank(const T* Z, int64_t n, int64_t D, const int64_t* groups, int64_t n_groups,
                          int64_t G, const double* basis, const double* lam, int64_t m, bool s_side,
                          double rtol, double* min_eig) {
  for (int64_t k = 0; k < n_groups * G; ++k)
    FASTAL_REQUIRE(groups[k] >= 0 && groups[k] < n, "groups[", k / G, ", ", k % G,
                   "] = ", groups[k], " is out of range for Z with ", n, " rows");
  for (int64_t i = 0; i < m; ++i)
    FASTAL_REQUIRE(std::isfinite(lam[i]), "the shared eigenvalues must be finite");
  parallel_over_groups(
      n_groups, [&] { return std::make_unique<LowRankWork>(m, G, D); },
      [&](LowRankWork& w, int64_t g) {
        min_eig[g] = group_min_eig(Z, D, groups + g * G, G, basis, lam, m, s_side, rtol, w);
      });
}

template void gram_min_eig_lowrank<float>(const float*, int64_t, int64_t, const int64_t*, int64_t,
                                          int64_t, const double*, const double*, int64_t, bool,
                                          double, double*);
template void gram_min_eig_lowrank<double>(const double*, int64_t, int64_t, const int64_t*, int64_t,
                                           int64_t, const double*, const double*, int64_t, bool,
                                           double, double*);

}  // namespace fastal::cpu
