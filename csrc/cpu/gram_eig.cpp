// Batched Gram eigenvalues (CRC, Kong et al. eq. 9 and Alg. 1) on the CPU.
//
// For every group g the Gram matrix of S = L ∪ g, K = Z_S Z_Sᵀ, is formed on its smaller side:
//   |S| <= D: the |S| x |S| matrix [[K_LL, K_Lg], [K_gL, K_gg]], K_LL = Z_L Z_Lᵀ once per call;
//   |S| >  D: the D x D matrix Z_Lᵀ Z_L + Z_gᵀ Z_g, Z_Lᵀ Z_L computed once per call.
// Both have the same non-zero eigenvalues. The matrix is reduced to a symmetric tridiagonal T by
// Householder reflections; then only λ_max and λ⁺_min (the smallest eigenvalue above
// rtol * λ_max) are computed on T, O(n) per evaluation: Sturm counts (LDLᵀ inertia) bracket them,
// Laguerre's iteration converges to them (monotone for a real-rooted polynomial, so the count of
// every iterate checks it), and multisection finishes whenever an iterate misbehaves. The whole
// spectrum, when asked, comes from implicit QL on T. One matrix per thread, parallel over groups.
//
// Everything is computed in float64, whatever the storage type of Z: the products of float32 values
// are exact in float64, so a float32 Z gets eigenvalues as accurate as a float64 one.
//
// Tridiagonalisation (the O(n³) part, ~2/3 n³ multiply-adds): the lower triangle of the matrix is
// kept row-major; step k's rank-2 update of the trailing block is fused with the symmetric
// matrix-vector product that step k + 1 needs, so each step streams the trailing triangle once,
// four rows at a time (the vector operands are loaded once for the four rows). On a 2-core Zen 1
// this pass runs at the float64 FMA throughput of the core.
#include "cpu/omp_compat.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "common/check.h"
#include "cpu/dots.h"
#include "common/eig_search.h"
#include "common/tridiagonal.h"
#include "cpu/kernels.h"
#include "cpu/parallel_groups.h"

namespace fastal::cpu {

namespace {

inline int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// ---------------------------------------------------------------------------------------------
// formation

// Lower triangle of X Xᵀ (X: m rows of length len, stride ldx) into out (leading dimension ldo),
// rows in parallel.
void gram_lower_parallel(const double* X, int64_t ldx, int64_t m, int64_t len, double* out,
                         int64_t ldo) {
  const int64_t blocks = (m + 3) / 4;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t i0 = b * 4, i1 = std::min(m, i0 + 4);
    // the rectangle left of the 4-row block, then the small triangle
    cross_products(X + i0 * ldx, ldx, i1 - i0, X, ldx, i0, len, out + i0 * ldo, ldo);
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = i0; j <= i; ++j) out[i * ldo + j] = dot64(X + i * ldx, X + j * ldx, len);
  }
}

// ---------------------------------------------------------------------------------------------
// Householder tridiagonalisation

// Per-thread buffers of the reduction of an n x n matrix.
struct Workspace {
  std::vector<double> a;                        // n x ld, lower triangle
  std::vector<double> v, w, vn, pn, col, next;  // reflector vectors, columns
  std::vector<double> d, e, e2, ql;             // tridiagonal, squares, QL scratch
  int64_t ld = 0;
  // rows 32 bytes aligned, and consecutive rows half a cache line apart from a power-of-two
  // stride, so that the rows of the trailing block do not pile up in the same cache sets
  explicit Workspace(int64_t n) : ld(round_up(std::max<int64_t>(n, 1), 8) + 4) {
    a.assign(static_cast<size_t>(n * ld), 0.0);
    for (auto* x : {&v, &w, &vn, &pn, &col, &next, &d, &e, &e2, &ql})
      x->assign(static_cast<size_t>(n + 2), 0.0);  // vn, pn are used from index 1 (see below)
  }
};

// kRows rows r[k] (row index i_k) of the fused pass below, over the columns [j0, j1):
// a = r[k][j] - (v_{i_k} w_j + w_{i_k} v_j) stored back (kUpdate), sum[k] += a u_j,
// p_j += a u_{i_k}.
template <bool kUpdate, int kRows>
inline void pass_rows(double* const r[kRows], const double vi[kRows], const double wi[kRows],
                      const double ui[kRows], const double* v, const double* w, const double* us,
                      double* ps, int64_t j0, int64_t j1, double sum[kRows]) {
  int64_t j = j0;
#ifdef FASTAL_AVX2
  __m256d acc[kRows], bv[kRows], bw[kRows], bu[kRows];
  for (int k = 0; k < kRows; ++k) {
    acc[k] = _mm256_setzero_pd();
    bv[k] = _mm256_set1_pd(vi[k]);
    bw[k] = _mm256_set1_pd(wi[k]);
    bu[k] = _mm256_set1_pd(ui[k]);
  }
  for (; j + 4 <= j1; j += 4) {
    const __m256d uj = _mm256_loadu_pd(us + j);
    __m256d pj = _mm256_loadu_pd(ps + j);
    __m256d wj, vj;
    if constexpr (kUpdate) wj = _mm256_loadu_pd(w + j), vj = _mm256_loadu_pd(v + j);
    for (int k = 0; k < kRows; ++k) {
      __m256d a = _mm256_loadu_pd(r[k] + j);
      if constexpr (kUpdate) {
        a = _mm256_fnmadd_pd(bv[k], wj, a);
        a = _mm256_fnmadd_pd(bw[k], vj, a);
        _mm256_storeu_pd(r[k] + j, a);
      }
      acc[k] = _mm256_fmadd_pd(a, uj, acc[k]);
      pj = _mm256_fmadd_pd(a, bu[k], pj);
    }
    _mm256_storeu_pd(ps + j, pj);
  }
  for (int k = 0; k < kRows; ++k) sum[k] += hsum(acc[k]);
#endif
  for (; j < j1; ++j) {
    double pj = ps[j];
    for (int k = 0; k < kRows; ++k) {
      double a = r[k][j];
      if constexpr (kUpdate) {
        a -= vi[k] * w[j] + wi[k] * v[j];
        r[k][j] = a;
      }
      sum[k] += a * us[j];
      pj += a * ui[k];
    }
    ps[j] = pj;
  }
}

// Rows [i, i + K) of the fused pass below: the columns [1, i) by pass_rows, then the K x K corner
// triangle; next[row - 1] = the updated column 1 of each row.
template <bool kUpdate, int K>
inline void pass_block(double* B, int64_t ld, int64_t i, const double* v, const double* w,
                       const double* us, double* ps, double* next) {
  double* r[K];
  double vi[K], wi[K], ui[K], sum[K];
  for (int k = 0; k < K; ++k) {
    r[k] = B + (i + k) * ld;
    vi[k] = v[i + k], wi[k] = w[i + k], ui[k] = us[i + k], sum[k] = 0;
  }
  pass_rows<kUpdate, K>(r, vi, wi, ui, v, w, us, ps, 1, i, sum);
  for (int k = 0; k < K; ++k) {
    for (int c = 0; c < k; ++c) {  // (i + k, i + c), below the corner's diagonal
      double a = r[k][i + c];
      if constexpr (kUpdate) {
        a -= vi[k] * wi[c] + wi[k] * vi[c];
        r[k][i + c] = a;
      }
      sum[k] += a * ui[c];
      ps[i + c] += a * ui[k];
    }
    double a = r[k][i + k];
    if constexpr (kUpdate) {
      a -= 2 * vi[k] * wi[k];
      r[k][i + k] = a;
    }
    ps[i + k] += sum[k] + a * ui[k];
    next[i + k - 1] = r[k][1];
  }
}

// One pass over rows [1, m) of the trailing block B (leading dimension ld): B -= v wᵀ + w vᵀ on the
// lower triangle without its first column (B' = B[1:, 1:] after the update), and p = B' u, where
// u = vn has length m - 1; next[0, m - 1) receives the first column of B' on the way, so the next
// step needs no strided read. Rows are taken four at a time so the vectors are loaded once for all.
template <bool kUpdate>
void update_and_symv(double* B, int64_t ld, int64_t m, const double* v, const double* w,
                     const double* vn, double* pn, double* next) {
  // shifted views: us[j] = u[j - 1], ps[j] = p[j - 1] for j in [1, m)
  const double* us = vn - 1;
  double* ps = pn - 1;
  std::fill(pn, pn + (m - 1), 0.0);
  int64_t i = 1;
  for (; i + 4 <= m; i += 4) pass_block<kUpdate, 4>(B, ld, i, v, w, us, ps, next);
  if (i + 2 <= m) {
    pass_block<kUpdate, 2>(B, ld, i, v, w, us, ps, next);
    i += 2;
  }
  if (i < m) pass_block<kUpdate, 1>(B, ld, i, v, w, us, ps, next);
}

// Reduces the symmetric n x n matrix whose lower triangle is in ws.a to T = Qᵀ A Q (Q not kept):
// diagonal ws.d[0, n), off-diagonal ws.e[0, n - 1). ws.a is overwritten.
void tridiagonalize(Workspace& ws, int64_t n) {
  const int64_t ld = ws.ld;
  double* d = ws.d.data();
  double* e = ws.e.data();
  double* v = ws.v.data();
  double* w = ws.w.data();
  double* vn = ws.vn.data() + 1;  // update_and_symv forms vn - 1 and pn - 1: keep them in range
  double* pn = ws.pn.data() + 1;
  double* col = ws.col.data();
  double* next = ws.next.data();
  // Trailing block B = A[k:, k:] of size m = n - k with a pending update B -= v wᵀ + w vᵀ
  // (v = w = 0 at the start).
  std::fill(v, v + n, 0.0);
  std::fill(w, w + n, 0.0);
  bool pending = false;
  for (int64_t k = 0;; ++k) {
    const int64_t m = n - k;
    double* B = ws.a.data() + k * ld + k;
    if (m <= 2) {
      const double b00 = B[0] - 2 * v[0] * w[0];
      d[k] = b00;
      if (m == 2) {
        e[k] = B[ld] - (v[1] * w[0] + w[1] * v[0]);
        d[k + 1] = B[ld + 1] - 2 * v[1] * w[1];
      }
      return;
    }
    // the first column of the updated B (from memory at the first step, then from the previous
    // pass), then the reflector that annihilates col[2, m)
    if (k == 0)
      for (int64_t i = 0; i < m; ++i) col[i] = B[i * ld];
    else
      for (int64_t i = 0; i < m; ++i) col[i] = next[i] - (v[i] * w[0] + w[i] * v[0]);
    d[k] = col[0];
    double beta;
    e[k] = tridiagonal::householder(col + 1, m - 1, vn, &beta);
    // update B (rows and columns >= 1) and p = B[1:, 1:] vn in one pass
    if (pending)
      update_and_symv<true>(B, ld, m, v, w, vn, pn, next);
    else
      update_and_symv<false>(B, ld, m, v, w, vn, pn, next);
    // w = beta p - (beta² / 2) (pᵀ vn) vn, so that H B' H = B' - vn wᵀ - w vnᵀ
    const int64_t mn = m - 1;
    const double half = 0.5 * beta * (beta * dot64(pn, vn, mn));
    for (int64_t j = 0; j < mn; ++j) {
      v[j] = vn[j];
      w[j] = beta * pn[j] - half * vn[j];
    }
    pending = beta != 0;
    if (!pending) std::fill(w, w + mn, 0.0);
  }
}

// ---------------------------------------------------------------------------------------------
// eigenvalues of the tridiagonal (d, e), scaled so that max |entry| is in [0.5, 1)

// cnt[s] = number of eigenvalues below x[s], by the LDLᵀ pivots of T - x[s] I (Sturm sequence);
// a zero pivot is replaced by -pivmin. The kShifts recurrences run side by side.
inline void count_below(const double* d, const double* e2, int64_t n, const double* x,
                        double pivmin, double* cnt) {
#ifdef FASTAL_AVX2
  static_assert(kShifts == 8, "two AVX2 vectors of shifts");
  const __m256d x0 = _mm256_loadu_pd(x), x1 = _mm256_loadu_pd(x + 4);
  const __m256d pm = _mm256_set1_pd(pivmin), npm = _mm256_set1_pd(-pivmin);
  const __m256d absmask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffLL));
  const __m256d zero = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0);
  __m256d q0 = _mm256_setzero_pd(), q1 = _mm256_setzero_pd();
  __m256d c0 = zero, c1 = zero;
  for (int64_t i = 0; i < n; ++i) {
    const __m256d di = _mm256_set1_pd(d[i]);
    __m256d t0 = _mm256_sub_pd(di, x0), t1 = _mm256_sub_pd(di, x1);
    if (i > 0) {
      const __m256d ei = _mm256_set1_pd(e2[i - 1]);
      t0 = _mm256_sub_pd(t0, _mm256_div_pd(ei, q0));
      t1 = _mm256_sub_pd(t1, _mm256_div_pd(ei, q1));
    }
    // |t| < pivmin -> -pivmin
    t0 = _mm256_blendv_pd(t0, npm, _mm256_cmp_pd(_mm256_and_pd(t0, absmask), pm, _CMP_LT_OQ));
    t1 = _mm256_blendv_pd(t1, npm, _mm256_cmp_pd(_mm256_and_pd(t1, absmask), pm, _CMP_LT_OQ));
    q0 = t0;
    q1 = t1;
    c0 = _mm256_add_pd(c0, _mm256_and_pd(_mm256_cmp_pd(t0, zero, _CMP_LT_OQ), one));
    c1 = _mm256_add_pd(c1, _mm256_and_pd(_mm256_cmp_pd(t1, zero, _CMP_LT_OQ), one));
  }
  _mm256_storeu_pd(cnt, c0);
  _mm256_storeu_pd(cnt + 4, c1);
#else
  tridiagonal::count_below_scalar(d, e2, n, x, pivmin, cnt);
#endif
}

// The eig_search evaluator of the tridiagonal (d, e²): tridiagonal::ScalarCounts with AVX2 counts.
template <class V>
struct TridiagonalCounts {
  V d, e2;
  int64_t n;
  double pivmin;
  Pivots pivots(double x) const { return tridiagonal::ldl_pass(d, e2, n, x, pivmin); }
  int64_t count(double x) const { return tridiagonal::ldl_pass(d, e2, n, x, pivmin).count; }
  void counts(const double* x, double* cnt) const { count_below(d, e2, n, x, pivmin, cnt); }
};

// λ⁺_min of the tridiagonal in ws (size n), and the spectrum (ascending) into spectrum if given.
double solve_tridiagonal(Workspace& ws, int64_t n, double rtol, double* spectrum) {
  return tridiagonal::min_positive<TridiagonalCounts>(ws.d.data(), ws.e.data(), ws.e2.data(),
                                                      ws.ql.data(), n, rtol, spectrum);
}

// The lower triangle of group g's matrix into ws.a: on the S side [[K_LL, .], [K_gL, K_gg]] with
// K_LL copied from `shared` (leading dimension size), else Z_Lᵀ Z_L (shared) + Z_gᵀ Z_g.
template <typename T>
void form_matrix(const T* Z, int64_t D, const int64_t* group, int64_t G, int64_t mL, bool s_side,
                 const double* ZL, const double* shared, int64_t size, double* Zg, Workspace& ws) {
  gather_rows(Z, D, group, G, Zg);
  double* A = ws.a.data();
  const int64_t ld = ws.ld;
  if (s_side) {
    for (int64_t i = 0; i < mL; ++i)
      std::memcpy(A + i * ld, shared + i * size, sizeof(double) * static_cast<size_t>(i + 1));
    // rows mL + a: against L, then the group's own triangle
    cross_products(Zg, D, G, ZL, D, mL, D, A + mL * ld, ld);
    for (int64_t a = 0; a < G; ++a)
      for (int64_t b = 0; b <= a; ++b) A[(mL + a) * ld + mL + b] = dot64(Zg + a * D, Zg + b * D, D);
    return;
  }
  // row i: (Z_Lᵀ Z_L)[i, :i] + Σ_a Zg[a, i] Zg[a, :i], four group rows at a time
  for (int64_t i = 0; i < D; ++i) {
    double* row = A + i * ld;
    std::memcpy(row, shared + i * D, sizeof(double) * static_cast<size_t>(i + 1));
    int64_t a = 0;
    for (; a + 4 <= G; a += 4) {
      const double* z0 = Zg + a * D;
      const double *z1 = z0 + D, *z2 = z1 + D, *z3 = z2 + D;
      const double c0 = z0[i], c1 = z1[i], c2 = z2[i], c3 = z3[i];
#pragma omp simd
      for (int64_t j = 0; j <= i; ++j) row[j] += c0 * z0[j] + c1 * z1[j] + c2 * z2[j] + c3 * z3[j];
    }
    for (; a < G; ++a) {
      const double* z0 = Zg + a * D;
      const double c0 = z0[i];
#pragma omp simd
      for (int64_t j = 0; j <= i; ++j) row[j] += c0 * z0[j];
    }
  }
}

void check_gram_indices(int64_t n, const int64_t* labeled, int64_t n_labeled, const int64_t* groups,
                        int64_t n_groups, int64_t G) {
  std::vector<char> in_labeled(static_cast<size_t>(n), 0);
  for (int64_t j = 0; j < n_labeled; ++j) {
    const int64_t r = labeled[j];
    FASTAL_REQUIRE(r >= 0 && r < n, "labeled[", j, "] = ", r, " is out of range for Z with ", n,
                   " rows");
    FASTAL_REQUIRE(!in_labeled[r], "labeled has duplicate indices: ", r, " appears twice");
    in_labeled[r] = 1;
  }
  std::vector<int64_t> sorted(static_cast<size_t>(G));
  for (int64_t g = 0; g < n_groups; ++g) {
    const int64_t* row = groups + g * G;
    for (int64_t a = 0; a < G; ++a) {
      const int64_t r = row[a];
      FASTAL_REQUIRE(r >= 0 && r < n, "groups[", g, ", ", a, "] = ", r,
                     " is out of range for Z with ", n, " rows");
      FASTAL_REQUIRE(!in_labeled[r], "groups[", g, ", ", a, "] = ", r,
                     " is in labeled: a group must not overlap the labeled set");
    }
    std::copy(row, row + G, sorted.begin());
    std::sort(sorted.begin(), sorted.end());
    for (int64_t a = 1; a < G; ++a)
      FASTAL_REQUIRE(sorted[a] != sorted[a - 1], "groups[", g, "] holds index ", sorted[a],
                     " twice: indices within a group must be distinct");
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

template <typename T>
void gram_min_eig(const T* Z, int64_t n, int64_t D, const int64_t* labeled, int64_t n_labeled,
                  const int64_t* groups, int64_t n_groups, int64_t G, double rtol, double* min_eig,
                  double* spectra) {
  check_gram_indices(n, labeled, n_labeled, groups, n_groups, G);
  if (n_groups == 0) return;
  const int64_t mL = n_labeled;
  const bool s_side = mL + G <= D;  // form Z_S Z_Sᵀ (|S| x |S|), else Z_Sᵀ Z_S (D x D)
  const int64_t size = s_side ? mL + G : D;

  // the shared part, once: K_LL (mL x mL) or Z_Lᵀ Z_L (D x D), lower triangle, leading dim `size`
  std::vector<double> ZL(static_cast<size_t>(mL * D));
  gather_rows(Z, D, labeled, mL, ZL.data());
  std::vector<double> shared;
  if (s_side) {
    shared.assign(static_cast<size_t>(mL * size), 0.0);
    gram_lower_parallel(ZL.data(), D, mL, D, shared.data(), size);
  } else {
    shared.assign(static_cast<size_t>(D * D), 0.0);
    if (mL > 0) {
      std::vector<double> ZLt(static_cast<size_t>(D * mL));
      for (int64_t r = 0; r < mL; ++r)
        for (int64_t c = 0; c < D; ++c) ZLt[c * mL + r] = ZL[r * D + c];
      gram_lower_parallel(ZLt.data(), mL, D, mL, shared.data(), D);
    }
  }

  // one matrix (and its workspace) per thread
  struct Buffers {
    Workspace ws;
    std::vector<double> Zg;
  };
  parallel_over_groups(
      n_groups,
      [&] {
        auto b = std::make_unique<Buffers>(Buffers{Workspace(size), {}});
        b->Zg.resize(static_cast<size_t>(G * D));
        return b;
      },
      [&](Buffers& b, int64_t g) {
        form_matrix(Z, D, groups + g * G, G, mL, s_side, ZL.data(), shared.data(), size,
                    b.Zg.data(), b.ws);
        tridiagonalize(b.ws, size);
        min_eig[g] = solve_tridiagonal(b.ws, size, rtol, spectra ? spectra + g * size : nullptr);
      });
}

template void gram_min_eig<float>(const float*, int64_t, int64_t, const int64_t*, int64_t,
                                  const int64_t*, int64_t, int64_t, double, double*, double*);
template void gram_min_eig<double>(const double*, int64_t, int64_t, const int64_t*, int64_t,
                                   const int64_t*, int64_t, int64_t, double, double*, double*);

}  // namespace fastal::cpu
