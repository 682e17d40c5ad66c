// Row-wise products with a factored matrix Φ whose column j is scale * a_j (x) h_j (Sparse
// Approximation, eq. 14; h_j read through HRows: in place, mapped, widened, with a bias 1): the
// adjoint (Φᵀ R)_j = scale * a_jᵀ R h_j and the product Φu = scale * Σ_j u_j a_j h_jᵀ, for a C x dh
// matrix R. One streaming pass over A and H, the C x dh operands in L1; a GEMM library would either
// materialise n x dh temporaries or run its skinny (N = C) case far below the bandwidth of the
// pass.
#include "cpu/omp_compat.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"

namespace fastal::cpu {

namespace {

constexpr int64_t kRowBlock =
    256;  // rows accumulated in the storage-precision buffer, then flushed

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

// Runs body(i, local_M) over the rows [0, n) in parallel; body returns whether it added to
// local_M. local_M accumulates in Acc<T> over at most kRowBlock added rows before it is flushed to
// a per-thread float64 total (so a sparse u costs a flush per kRowBlock non-zeros, not per block of
// rows); the totals are summed into M_out.
template <typename T, typename Body>
void accumulate_rows(int64_t n, int64_t C, int64_t dh, double* M_out, Body&& body) {
  const int64_t size = C * dh;
  const int threads = n * size > (int64_t{1} << 16) ? omp_get_max_threads() : 1;
  std::vector<double> totals(static_cast<size_t>(threads * size), 0.0);
#pragma omp parallel num_threads(threads)
  {
    std::vector<Acc<T>> local(static_cast<size_t>(size), Acc<T>(0));
    double* total = totals.data() + static_cast<int64_t>(omp_get_thread_num()) * size;
    int64_t pending = 0;  // rows in local since the last flush
    const auto flush = [&] {
      for (int64_t e = 0; e < size; ++e) {
        total[e] += local[e];
        local[e] = 0;
      }
      pending = 0;
    };
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i)
      if (body(i, local.data()) && ++pending == kRowBlock) flush();
    if (pending) flush();
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

#ifdef FASTAL_AVX2
template <typename S>
void adjoint_float(const float* A, const HRows<S>& H, int64_t C, const double* R, double scale,
                   const int64_t* rows, int64_t m, double* out);
#endif

// One buffer of dh values per thread, for the rows of H that cannot be read in place.
template <typename T>
std::vector<std::vector<T>> row_buffers(int64_t dh) {
  return std::vector<std::vector<T>>(static_cast<size_t>(omp_get_max_threads()),
                                     std::vector<T>(static_cast<size_t>(dh)));
}

template <typename S>
void factored_adjoint(const Acc<S>* A, const HRows<S>& H, int64_t C, const double* R, double scale,
                      const int64_t* rows, int64_t m, double* out) {
  using T = Acc<S>;
#ifdef FASTAL_AVX2
  if constexpr (std::is_same_v<T, float>) {
    adjoint_float(A, H, C, R, scale, rows, m, out);
    return;
  }
#endif
  const int64_t dh = H.dh();
  const auto Ra = to_acc<T>(R, C * dh);
#pragma omp parallel if (m * C * dh > (int64_t{1} << 16))
  {
    std::vector<T> t(static_cast<size_t>(C)), buf(static_cast<size_t>(dh));
#pragma omp for schedule(static)
    for (int64_t k = 0; k < m; ++k) {
      const int64_t j = rows ? rows[k] : k;
      r_times_h<T>(Ra.data(), C, dh, H.row(j, buf.data()), t.data());
      out[k] = scale * static_cast<double>(a_dot<T>(A + j * C, t.data(), C));
    }
  }
}

#ifdef FASTAL_AVX2
template <typename S>
void apply_float(const float* A, const HRows<S>& H, int64_t n, int64_t C, const double* u,
                 double scale, double* M);
#endif

template <typename S>
void factored_apply(const Acc<S>* A, const HRows<S>& H, int64_t n, int64_t C, const double* u,
                    double scale, double* M) {
  using T = Acc<S>;
#ifdef FASTAL_AVX2
  if constexpr (std::is_same_v<T, float>) {
    apply_float(A, H, n, C, u, scale, M);
    return;
  }
#endif
  const int64_t dh = H.dh();
  auto bufs = row_buffers<T>(dh);
  accumulate_rows<T>(n, C, dh, M, [&](int64_t i, T* local) {
    if (u[i] == 0) return false;
    const T* h = H.row(i, bufs[static_cast<size_t>(omp_get_thread_num())].data());
    rank_one<T>(local, A + i * C, h, C, dh, static_cast<T>(u[i]));
    return true;
  });
  for (int64_t e = 0; e < C * dh; ++e) M[e] *= scale;
}

#ifdef FASTAL_AVX2
// float32 lanes for the blocked kernels below: 8 (AVX2) or 16 (AVX-512; the blocked loops are the
// same, only the register width changes).
#ifdef FASTAL_AVX512
using BlockLanes = Lanes<float, 512>;
#else
using BlockLanes = Lanes<float>;
#endif

// float32 blocks of rows, register-blocked so that each FMA needs well under one load, in tiles
// shaped for the register file (AVX-512: 32 registers; AVX2: 16):
//   t[j][c] = R_c . h_j       P rows x Q classes per pass over the rows (P Q accumulators);
//   M_c += Σ_j coef[j][c] h_j  W registers of columns x Q classes per pass over the block.
// On a Zen 4 core (2 threads, n = 50k, C = 10, dh = 512) the AVX-512 shapes took the two passes
// from 9.4 + 9.5 ms (4 x 2 and 2 x 4, as under AVX2) to 7.7 + 6.4 ms: each h row is re-read from
// L2 C / Q times, and the R rows or coefficients once per P rows.
constexpr int64_t kBlockRows = 32;  // 32 rows of h (64 KiB at dh = 512) stay in L2 between passes

template <typename L>
struct TileShape {
  static constexpr int rows = 4;                      // P
  static constexpr int classes = L::n == 16 ? 5 : 2;  // Q of t = R h
  static constexpr int update_classes = L::n == 16 ? 5 : 4;
  static constexpr int update_width = L::n == 16 ? 4 : 2;  // W
};

// t[p][c + q] for rows h0 + p dh (row stride C in t), P x Q accumulators over the vector part of
// dh, then the scalar tail.
template <typename L, int P, int Q>
inline void r_times_h_tile(const float* R, int64_t C, int64_t dh, const float* h0, float* t,
                           int64_t c) {
  using V = typename L::V;
  V acc[P][Q];
  for (auto& row : acc)
    for (auto& a : row) a = L::set1(0.f);
  int64_t k = 0;
  for (; k + L::n <= dh; k += L::n) {
    V r[Q];
    for (int q = 0; q < Q; ++q) r[q] = L::load(R + (c + q) * dh + k);
    for (int p = 0; p < P; ++p) {
      const V hv = L::load(h0 + p * dh + k);
      for (int q = 0; q < Q; ++q) acc[p][q] = L::fma(hv, r[q], acc[p][q]);
    }
  }
  for (int p = 0; p < P; ++p)
    for (int q = 0; q < Q; ++q) {
      float s = L::sum(acc[p][q]);
      for (int64_t kk = k; kk < dh; ++kk) s += h0[p * dh + kk] * R[(c + q) * dh + kk];
      t[p * C + c + q] = s;
    }
}

// Every class of P rows: groups of Q, then of 2, then single classes.
template <typename L, int P>
inline void r_times_h_rows(const float* R, int64_t C, int64_t dh, const float* h0, float* t) {
  constexpr int Q = TileShape<L>::classes;
  int64_t c = 0;
  for (; c + Q <= C; c += Q) r_times_h_tile<L, P, Q>(R, C, dh, h0, t, c);
  for (; c + 2 <= C; c += 2) r_times_h_tile<L, P, 2>(R, C, dh, h0, t, c);
  for (; c < C; ++c) r_times_h_tile<L, P, 1>(R, C, dh, h0, t, c);
}

template <typename L>
void block_r_times_h(const float* R, int64_t C, int64_t dh, const float* H, int64_t rows,
                     float* t /* rows x C */) {
  constexpr int P = TileShape<L>::rows;
  int64_t j = 0;
  for (; j + P <= rows; j += P) r_times_h_rows<L, P>(R, C, dh, H + j * dh, t + j * C);
  for (; j < rows; ++j) r_times_h_rows<L, 1>(R, C, dh, H + j * dh, t + j * C);
}

// Classes c .. c + Q - 1 of M over columns k .. k + W L::n: Q W accumulators in registers.
template <typename L, int Q, int W>
inline void rank_update_classes(float* M, int64_t C, int64_t dh, const float* H, int64_t rows,
                                const float* coef, int64_t c, int64_t k) {
  using V = typename L::V;
  V acc[Q][W];
  for (int q = 0; q < Q; ++q)
    for (int w = 0; w < W; ++w) acc[q][w] = L::load(M + (c + q) * dh + k + w * L::n);
  for (int64_t j = 0; j < rows; ++j) {
    V h[W];
    for (int w = 0; w < W; ++w) h[w] = L::load(H + j * dh + k + w * L::n);
    for (int q = 0; q < Q; ++q) {
      const V f = L::set1(coef[j * C + c + q]);
      for (int w = 0; w < W; ++w) acc[q][w] = L::fma(f, h[w], acc[q][w]);
    }
  }
  for (int q = 0; q < Q; ++q)
    for (int w = 0; w < W; ++w) L::store(M + (c + q) * dh + k + w * L::n, acc[q][w]);
}

// Every class over columns k .. k + W L::n: groups of Q, then 4, 2 and 1 (C = 10: 5 + 5; C = 7:
// 5 + 2), all in registers; a scalar remainder re-read and re-wrote M once per row.
template <typename L, int W>
inline void rank_update_stripe(float* M, int64_t C, int64_t dh, const float* H, int64_t rows,
                               const float* coef, int64_t k) {
  constexpr int Q = TileShape<L>::update_classes;
  int64_t c = 0;
  for (; c + Q <= C; c += Q) rank_update_classes<L, Q, W>(M, C, dh, H, rows, coef, c, k);
  if constexpr (Q > 4)
    for (; c + 4 <= C; c += 4) rank_update_classes<L, 4, W>(M, C, dh, H, rows, coef, c, k);
  for (; c + 2 <= C; c += 2) rank_update_classes<L, 2, W>(M, C, dh, H, rows, coef, c, k);
  for (; c < C; ++c) rank_update_classes<L, 1, W>(M, C, dh, H, rows, coef, c, k);
}

template <typename L>
void block_rank_update(float* M, int64_t C, int64_t dh, const float* H, int64_t rows,
                       const float* coef /* rows x C */) {
  constexpr int W = TileShape<L>::update_width;
  int64_t k = 0;
  for (; k + W * L::n <= dh; k += W * L::n) rank_update_stripe<L, W>(M, C, dh, H, rows, coef, k);
  for (; k + L::n <= dh; k += L::n) rank_update_stripe<L, 1>(M, C, dh, H, rows, coef, k);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < rows; ++j)
      for (int64_t kk = k; kk < dh; ++kk) M[c * dh + kk] += coef[j * C + c] * H[j * dh + kk];
}

// M_c = scale * Σ_k coef[k][c] h_{j_k} over the m rows j_k = rows_at[k] (j_k = k when rows_at is
// nullptr), in blocks of kBlockRows; with rows_at, or when H's rows cannot be read in place
// (mapped, 16-bit or with the bias column), each block is gathered into thread-local copies (in
// cache) so that the blocked loops see contiguous float rows. fill(k0, rows, Ab, Hb, coef, scratch)
// writes the block's coefficients coef (rows x C); scratch holds kBlockRows x C floats of its own.
// Per-thread float32 sums are flushed to float64 every 256 rows.
template <typename S, typename Fill>
void blocked_rank_updates(const float* A, const HRows<S>& H, int64_t C, const int64_t* rows_at,
                          int64_t m, double scale, double* M, Fill&& fill) {
  const int64_t dh = H.dh(), size = C * dh;
  const int threads = m * size > (int64_t{1} << 16) ? omp_get_max_threads() : 1;
  std::vector<double> totals(static_cast<size_t>(threads * size), 0.0);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> local(static_cast<size_t>(size), 0.f), scratch(kBlockRows * C),
        coef(kBlockRows * C);
    std::vector<float> hb(kBlockRows * dh), ab(rows_at ? kBlockRows * C : 0);
    double* total = totals.data() + static_cast<int64_t>(omp_get_thread_num()) * size;
    const int64_t blocks = (m + kBlockRows - 1) / kBlockRows;
    int64_t since_flush = 0;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t k0 = b * kBlockRows, rows = std::min(m, k0 + kBlockRows) - k0;
      const float* Hb = rows_at ? nullptr : H.template direct<float>(k0);
      const float* Ab = A + k0 * C;
      if (rows_at) {
        for (int64_t q = 0; q < rows; ++q) {
          const int64_t i = rows_at[k0 + q];
          std::copy(A + i * C, A + (i + 1) * C, ab.begin() + q * C);
        }
        Ab = ab.data();
      }
      if (!Hb) {
        for (int64_t q = 0; q < rows; ++q)
          H.load(rows_at ? rows_at[k0 + q] : k0 + q, hb.data() + q * dh);
        Hb = hb.data();
      }
      fill(k0, rows, Ab, Hb, coef.data(), scratch.data());
      block_rank_update<BlockLanes>(local.data(), C, dh, Hb, rows, coef.data());
      if ((since_flush += rows) >= 256) {  // float32 partial sums over at most 256 rows
        for (int64_t e = 0; e < size; ++e) total[e] += local[e], local[e] = 0.f;
        since_flush = 0;
      }
    }
    for (int64_t e = 0; e < size; ++e) total[e] += local[e];
  }
  std::fill(M, M + size, 0.0);
  for (int t = 0; t < threads; ++t)
    for (int64_t e = 0; e < size; ++e) M[e] += totals[static_cast<size_t>(t * size + e)];
  for (int64_t e = 0; e < size; ++e) M[e] *= scale;
}

// factored_grad_apply for float32: g on the rows (all, or rows_at), and M from those g.
template <typename S>
void grad_apply_float(const float* A, const HRows<S>& H, int64_t C, const double* R, double scale,
                      const double* z, double beta, const int64_t* rows_at, int64_t m, double* g,
                      double* M) {
  const int64_t dh = H.dh();
  const std::vector<float> Rf(R, R + C * dh);
  blocked_rank_updates(
      A, H, C, rows_at, m, scale, M,
      [&](int64_t k0, int64_t rows, const float* Ab, const float* Hb, float* coef, float* t) {
        block_r_times_h<BlockLanes>(Rf.data(), C, dh, Hb, rows, t);
        for (int64_t q = 0; q < rows; ++q) {
          const float* a = Ab + q * C;
          float adj = 0;
          for (int64_t c = 0; c < C; ++c) adj += a[c] * t[q * C + c];
          const int64_t i = rows_at ? rows_at[k0 + q] : k0 + q;
          const double gi = 2 * scale * adj + 2 * beta * (z[i] - 1);
          g[k0 + q] = gi;
          for (int64_t c = 0; c < C; ++c) coef[q * C + c] = static_cast<float>(gi) * a[c];
        }
      });
}

// factored_adjoint for float32: t = R h in register tiles over blocks of rows (gathered into a
// thread-local copy when rows is given or H's rows cannot be read in place).
template <typename S>
void adjoint_float(const float* A, const HRows<S>& H, int64_t C, const double* R, double scale,
                   const int64_t* rows, int64_t m, double* out) {
  const int64_t dh = H.dh();
  const std::vector<float> Rf(R, R + C * dh);
  const int64_t blocks = (m + kBlockRows - 1) / kBlockRows;
#pragma omp parallel if (m * C * dh > (int64_t{1} << 16))
  {
    std::vector<float> t(kBlockRows * C), hb(kBlockRows * dh);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t k0 = b * kBlockRows, count = std::min(m, k0 + kBlockRows) - k0;
      const float* Hb = rows ? nullptr : H.template direct<float>(k0);
      if (!Hb) {
        for (int64_t q = 0; q < count; ++q)
          H.load(rows ? rows[k0 + q] : k0 + q, hb.data() + q * dh);
        Hb = hb.data();
      }
      block_r_times_h<BlockLanes>(Rf.data(), C, dh, Hb, count, t.data());
      for (int64_t q = 0; q < count; ++q) {
        const float* a = A + (rows ? rows[k0 + q] : k0 + q) * C;
        float s = 0;
        for (int64_t c = 0; c < C; ++c) s += a[c] * t[q * C + c];
        out[k0 + q] = scale * static_cast<double>(s);
      }
    }
  }
}

// factored_apply for float32: the rows with u_j != 0, gathered into blocks.
template <typename S>
void apply_float(const float* A, const HRows<S>& H, int64_t n, int64_t C, const double* u,
                 double scale, double* M) {
  std::vector<int64_t> nonzero;
  for (int64_t i = 0; i < n; ++i)
    if (u[i] != 0) nonzero.push_back(i);
  const int64_t* at = nonzero.data();
  blocked_rank_updates(
      A, H, C, at, static_cast<int64_t>(nonzero.size()), scale, M,
      [&](int64_t k0, int64_t rows, const float* Ab, const float*, float* coef, float*) {
        for (int64_t q = 0; q < rows; ++q) {
          const float f = static_cast<float>(u[at[k0 + q]]);
          for (int64_t c = 0; c < C; ++c) coef[q * C + c] = f * Ab[q * C + c];
        }
      });
}
#endif

template <typename S>
void factored_grad_apply(const Acc<S>* A, const HRows<S>& H, int64_t n, int64_t C, const double* R,
                         double scale, const double* z, double beta, const int64_t* rows, int64_t m,
                         double* g, double* M) {
  using T = Acc<S>;
  if (!rows) m = n;
#ifdef FASTAL_AVX2
  if constexpr (std::is_same_v<T, float>) {
    grad_apply_float(A, H, C, R, scale, z, beta, rows, m, g, M);
    return;
  }
#endif
  const int64_t dh = H.dh();
  const auto Ra = to_acc<T>(R, C * dh);
  const int threads = omp_get_max_threads();
  std::vector<std::vector<T>> scratch(static_cast<size_t>(threads), std::vector<T>(C));
  auto bufs = row_buffers<T>(dh);
  accumulate_rows<T>(m, C, dh, M, [&](int64_t k, T* local) {
    const auto thread = static_cast<size_t>(omp_get_thread_num());
    T* t = scratch[thread].data();
    const int64_t i = rows ? rows[k] : k;
    const T* a = A + i * C;
    const T* h = H.row(i, bufs[thread].data());
    r_times_h<T>(Ra.data(), C, dh, h, t);
    const double gi = 2 * scale * static_cast<double>(a_dot<T>(a, t, C)) + 2 * beta * (z[i] - 1);
    g[k] = gi;
    rank_one<T>(local, a, h, C, dh, static_cast<T>(gi));
    return true;
  });
  for (int64_t e = 0; e < C * dh; ++e) M[e] *= scale;
}

#define FASTAL_INSTANTIATE(S)                                                                      \
  template void factored_adjoint<S>(const Acc<S>*, const HRows<S>&, int64_t, const double*,        \
                                    double, const int64_t*, int64_t, double*);                     \
  template void factored_apply<S>(const Acc<S>*, const HRows<S>&, int64_t, int64_t, const double*, \
                                  double, double*);                                                \
  template void factored_grad_apply<S>(const Acc<S>*, const HRows<S>&, int64_t, int64_t,           \
                                       const double*, double, const double*, double,               \
                                       const int64_t*, int64_t, double*, double*);
FASTAL_INSTANTIATE(float)
FASTAL_INSTANTIATE(double)
FASTAL_INSTANTIATE(Half)
FASTAL_INSTANTIATE(BFloat16)
#undef FASTAL_INSTANTIATE

}  // namespace fastal::cpu
