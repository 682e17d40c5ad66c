// Row-wise products with a factored matrix Φ whose column j is scale * a_j (x) h_j (Sparse
// Approximation, eq. 14): the adjoint (Φᵀ R)_j = scale * a_jᵀ R h_j and the product
// Φu = scale * Σ_j u_j a_j h_jᵀ, for a C x dh matrix R. One streaming pass over A and H, the C x dh
// operands in L1; a GEMM library would either materialise n x dh temporaries or run its skinny
// (N = C) case far below the bandwidth of the pass.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu/kernels.h"

namespace fastal::cpu {

namespace {

constexpr int64_t kRowBlock = 256;  // rows accumulated in the storage-precision buffer, then flushed

// t[c] = R_c . h for every class c; R in the accumulation type.
template <typename T>
inline void r_times_h(const Acc<T>* R, int64_t C, int64_t dh, const T* h, Acc<T>* t) {
  for (int64_t c = 0; c < C; ++c) t[c] = dot(h, R + c * dh, dh);
}

template <typename T>
inline Acc<T> a_dot(const T* a, const Acc<T>* t, int64_t C) {
  Acc<T> s = 0;
  for (int64_t c = 0; c < C; ++c) s += a[c] * t[c];
  return s;
}

// M (C x dh, accumulation type) += coef * a (x) h
template <typename T>
inline void rank_one(Acc<T>* M, const T* a, const T* h, int64_t C, int64_t dh, Acc<T> coef) {
  for (int64_t c = 0; c < C; ++c) {
    const Acc<T> f = coef * a[c];
    if (f == 0) continue;
    Acc<T>* m = M + c * dh;
#pragma omp simd
    for (int64_t k = 0; k < dh; ++k) m[k] += f * h[k];
  }
}

// Runs body(i, local_M) over the rows [0, n) in parallel; local_M accumulates in Acc<T> for at most
// kRowBlock rows before it is added to a per-thread float64 total; totals are summed into M_out.
template <typename T, typename Body>
void accumulate_rows(int64_t n, int64_t C, int64_t dh, double* M_out, Body&& body) {
  const int64_t size = C * dh;
  const int threads = n * size > (int64_t{1} << 16) ? omp_get_max_threads() : 1;
  std::vector<double> totals(static_cast<size_t>(threads * size), 0.0);
#pragma omp parallel num_threads(threads)
  {
    std::vector<Acc<T>> local(static_cast<size_t>(size), Acc<T>(0));
    double* total = totals.data() + static_cast<int64_t>(omp_get_thread_num()) * size;
    const int64_t blocks = (n + kRowBlock - 1) / kRowBlock;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t i1 = std::min(n, (b + 1) * kRowBlock);
      for (int64_t i = b * kRowBlock; i < i1; ++i) body(i, local.data());
      for (int64_t e = 0; e < size; ++e) {
        total[e] += local[e];
        local[e] = 0;
      }
    }
  }
  std::fill(M_out, M_out + size, 0.0);
  for (int t = 0; t < threads; ++t)
    for (int64_t e = 0; e < size; ++e) M_out[e] += totals[static_cast<size_t>(t * size + e)];
}

template <typename T>
std::vector<Acc<T>> to_acc(const double* R, int64_t size) {
  return std::vector<Acc<T>>(R, R + size);
}

}  // namespace

template <typename T>
void factored_adjoint(const T* A, const T* H, int64_t C, int64_t dh, const double* R, double scale,
                      const int64_t* rows, int64_t m, double* out) {
  const auto Ra = to_acc<T>(R, C * dh);
#pragma omp parallel if (m * C * dh > (int64_t{1} << 16))
  {
    std::vector<Acc<T>> t(static_cast<size_t>(C));
#pragma omp for schedule(static)
    for (int64_t k = 0; k < m; ++k) {
      const int64_t j = rows ? rows[k] : k;
      r_times_h(Ra.data(), C, dh, H + j * dh, t.data());
      out[k] = scale * static_cast<double>(a_dot(A + j * C, t.data(), C));
    }
  }
}

template <typename T>
void factored_apply(const T* A, const T* H, int64_t n, int64_t C, int64_t dh, const double* u,
                    double scale, double* M) {
  accumulate_rows<T>(n, C, dh, M, [&](int64_t i, Acc<T>* local) {
    if (u[i] != 0) rank_one(local, A + i * C, H + i * dh, C, dh, static_cast<Acc<T>>(u[i]));
  });
  for (int64_t e = 0; e < C * dh; ++e) M[e] *= scale;
}

template <typename T>
void factored_grad_apply(const T* A, const T* H, int64_t n, int64_t C, int64_t dh, const double* R,
                         double scale, const double* z, double beta, double* g, double* M) {
  const auto Ra = to_acc<T>(R, C * dh);
  const int threads = omp_get_max_threads();
  std::vector<std::vector<Acc<T>>> scratch(static_cast<size_t>(threads), std::vector<Acc<T>>(C));
  accumulate_rows<T>(n, C, dh, M, [&](int64_t i, Acc<T>* local) {
    Acc<T>* t = scratch[static_cast<size_t>(omp_get_thread_num())].data();
    const T* a = A + i * C;
    const T* h = H + i * dh;
    r_times_h(Ra.data(), C, dh, h, t);
    const double gi = 2 * scale * static_cast<double>(a_dot(a, t, C)) + 2 * beta * (z[i] - 1);
    g[i] = gi;
    rank_one(local, a, h, C, dh, static_cast<Acc<T>>(gi));
  });
  for (int64_t e = 0; e < C * dh; ++e) M[e] *= scale;
}

#define FASTAL_INSTANTIATE(T)                                                                     \
  template void factored_adjoint<T>(const T*, const T*, int64_t, int64_t, const double*, double,  \
                                    const int64_t*, int64_t, double*);                            \
  template void factored_apply<T>(const T*, const T*, int64_t, int64_t, int64_t, const double*,   \
                                  double, double*);                                              \
  template void factored_grad_apply<T>(const T*, const T*, int64_t, int64_t, int64_t,             \
                                       const double*, double, const double*, double, double*,    \
                                       double*);
FASTAL_INSTANTIATE(float)
FASTAL_INSTANTIATE(double)
#undef FASTAL_INSTANTIATE

}  // namespace fastal::cpu
