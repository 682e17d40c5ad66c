// Batched Gram eigenvalues of small matrices, one matrix per thread: the CUDA kernel's path for
// orders up to kMaxOrder (cuda/gram_eig.cu), and its host build (cpu/gram_small_host.cpp), which
// runs this same source with the same workspace layout so that CPU tests check it.
//
// The GPU's block-per-matrix path keeps a whole thread block busy with one matrix, and for a 16 x
// 16 matrix most of its time goes to barriers and to warps waiting on one another. Here each thread
// forms, reduces and solves its own matrix, serially, as one CPU core does (cpu/gram_eig.cpp), and
// thousands of groups give thousands of threads.
//
// Workspace: `slots` per-thread slots interleaved element by element (element i of slot s at
// work[i * slots + s]): the threads of a warp run the same loops, touch the same element of their
// slots at the same time, and so read and write consecutive addresses.
//
// Per group (order N = min(|L| + G, D), as gram_eig.cu; shared: the P x P labeled part, both
// triangles, leading dimension P):
//   formation  S side: K_LL copied, K_gL and K_gg by dot products over D; D side: Z_Lᵀ Z_L plus
//              Σ_a z_a z_aᵀ. Only the lower triangle is formed, packed by rows.
//   Householder tridiagonalisation, unfused: step k forms the reflector of column k, p = β A₂₂ v,
//              w = p - (β/2)(pᵀv) v and A₂₂ -= v wᵀ + w vᵀ on the lower triangle.
//   eigenvalues common/tridiagonal.h's min_positive: Laguerre's iteration checked by Sturm counts,
//              as on the CPU; with return_all, implicit QL.
// A group with an index out of [0, n), or every group when a labeled index is (the caller checks
// those once: labeled_ok), gets NaN without a read out of bounds; gram.py rejects such input first.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/hd.h"
#include "common/tridiagonal.h"

namespace fastal::gram_small {

constexpr int64_t kMaxOrder = 32;  // the largest order this path takes (see gram_eig.cu)

// Element i of one thread's slot.
struct Strided {
  double* p;
  int64_t stride;
  FASTAL_HD double& operator[](int64_t i) const { return p[i * stride]; }
  FASTAL_HD Strided operator+(int64_t k) const { return {p + k * stride, stride}; }
};

// Doubles per slot for order N: the packed lower triangle, then v, w, d, e, e2 (N each).
FASTAL_HD int64_t slot_doubles(int64_t N) { return N * (N + 1) / 2 + 5 * N; }

// Row-major packed lower triangle: (i, j), j <= i.
FASTAL_HD int64_t tri(int64_t i, int64_t j) { return i * (i + 1) / 2 + j; }

struct Args {
  const void* Z;  // n x D, storage T
  int64_t n, D;
  const int64_t* labeled;  // mL indices
  int64_t mL;
  const int64_t* groups;  // n_groups x G
  int64_t n_groups, G;
  const double* shared;  // S side: K_LL (mL x mL); D side: Z_Lᵀ Z_L (D x D)
  int64_t size;          // N
  double rtol;
  double* min_eig;  // n_groups
  double* spectra;  // n_groups x N, or null
  double* work;     // slots * slot_doubles(N)
  int64_t slots;
};

template <typename T>
FASTAL_HD double dot(const T* x, const T* y, int64_t D) {
  double s = 0;
  for (int64_t k = 0; k < D; ++k) s += static_cast<double>(x[k]) * static_cast<double>(y[k]);
  return s;
}

// The lower triangle of group g's matrix into A.
template <typename T>
FASTAL_HOST_DEVICE void form(const Args& p, const int64_t* grp, Strided A) {
  const T* Z = static_cast<const T*>(p.Z);
  const int64_t D = p.D, mL = p.mL, G = p.G, N = p.size;
  if (mL + G <= D) {  // S side: [[K_LL, .], [K_gL, K_gg]]
    for (int64_t i = 0; i < mL; ++i)
      for (int64_t j = 0; j <= i; ++j) A[tri(i, j)] = p.shared[i * mL + j];
    for (int64_t a = 0; a < G; ++a) {
      const T* za = Z + grp[a] * D;
      for (int64_t j = 0; j < mL; ++j) A[tri(mL + a, j)] = dot(za, Z + p.labeled[j] * D, D);
      for (int64_t b = 0; b <= a; ++b) A[tri(mL + a, mL + b)] = dot(za, Z + grp[b] * D, D);
    }
    return;
  }
  for (int64_t i = 0; i < N; ++i)  // D side: (Z_Lᵀ Z_L)_ij + Σ_a z_a[i] z_a[j]
    for (int64_t j = 0; j <= i; ++j) {
      double acc = p.shared[i * N + j];
      for (int64_t a = 0; a < G; ++a) {
        const T* z = Z + grp[a] * D;
        acc += static_cast<double>(z[i]) * static_cast<double>(z[j]);
      }
      A[tri(i, j)] = acc;
    }
}

// Householder reduction of the N x N matrix (lower triangle packed in A, overwritten) to the
// tridiagonal (d[0, N), e[0, N - 1)); v and w are N-long scratch.
FASTAL_HOST_DEVICE inline void tridiagonalize(Strided A, int64_t N, Strided v, Strided w, Strided d,
                                              Strided e) {
  for (int64_t k = 0; k + 2 < N; ++k) {
    const int64_t m = N - k - 1, o = k + 1;  // the trailing block A₂₂ = A[o:, o:] is m x m
    for (int64_t i = 0; i < m; ++i) w[i] = A[tri(o + i, k)];
    d[k] = A[tri(k, k)];
    double beta;
    e[k] = tridiagonal::householder(w, m, v, &beta);
    if (beta == 0) continue;  // column k is already reduced: A₂₂ is unchanged
    for (int64_t i = 0; i < m; ++i) w[i] = 0;
    for (int64_t i = 0; i < m; ++i) {  // w = A₂₂ v from the lower triangle
      const double vi = v[i];
      double acc = 0;
      for (int64_t j = 0; j < i; ++j) {
        const double a = A[tri(o + i, o + j)];
        acc += a * v[j];
        w[j] += a * vi;
      }
      w[i] += acc + A[tri(o + i, o + i)] * vi;
    }
    double pv = 0;
    for (int64_t i = 0; i < m; ++i) {
      w[i] *= beta;
      pv += w[i] * v[i];
    }
    const double half = 0.5 * beta * pv;
    for (int64_t i = 0; i < m; ++i) w[i] -= half * v[i];
    for (int64_t i = 0; i < m; ++i) {  // A₂₂ -= v wᵀ + w vᵀ
      const double vi = v[i], wi = w[i];
      for (int64_t j = 0; j <= i; ++j) A[tri(o + i, o + j)] -= vi * w[j] + wi * v[j];
    }
  }
  if (N >= 2) {
    d[N - 2] = A[tri(N - 2, N - 2)];
    e[N - 2] = A[tri(N - 1, N - 2)];
  }
  d[N - 1] = A[tri(N - 1, N - 1)];
}

// Whether every labeled index is in [0, n); the caller checks once for all its groups.
FASTAL_HD bool labeled_in_range(const Args& p, int64_t j) {
  return p.labeled[j] >= 0 && p.labeled[j] < p.n;
}

// Group g in slot s: min_eig[g] (and spectra[g]); NaN when labeled_ok is false (see
// labeled_in_range) or an index of the group is out of range.
template <typename T>
FASTAL_HOST_DEVICE void group_eig(const Args& p, int64_t g, int64_t s, bool labeled_ok) {
  const int64_t N = p.size;
  const int64_t* grp = p.groups + g * p.G;
  double* spectrum = p.spectra ? p.spectra + g * N : nullptr;
  bool bad = !labeled_ok;
  for (int64_t a = 0; a < p.G; ++a) bad |= grp[a] < 0 || grp[a] >= p.n;
  if (bad) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    p.min_eig[g] = nan;
    if (spectrum)
      for (int64_t i = 0; i < N; ++i) spectrum[i] = nan;
    return;
  }
  const Strided A{p.work + s, p.slots};
  const Strided v = A + N * (N + 1) / 2, w = v + N, d = w + N, e = d + N, e2 = e + N;
  form<T>(p, grp, A);
  tridiagonalize(A, N, v, w, d, e);
  // v is free again: QL's scratch
  p.min_eig[g] =
      tridiagonal::min_positive<tridiagonal::ScalarCounts>(d, e, e2, v, N, p.rtol, spectrum);
}

}  // namespace fastal::gram_small
