// Float64 row helpers of the Gram kernels (gram_eig.cpp, gram_lowrank.cpp): gathering rows as
// float64, single dots, and a 4 x 2 register-blocked product of row sets, X Yᵀ.
#pragma once
#include <cstdint>

#include "cpu/simd.h"

namespace fastal::cpu {

// Rows idx[0, m) of Z (n x D, storage T) as float64, m x D.
template <typename T>
void gather_rows(const T* Z, int64_t D, const int64_t* idx, int64_t m, double* out) {
  for (int64_t r = 0; r < m; ++r) {
    const T* z = Z + idx[r] * D;
    double* o = out + r * D;
    for (int64_t c = 0; c < D; ++c) o[c] = static_cast<double>(z[c]);
  }
}

inline double dot64(const double* x, const double* y, int64_t len) {
  int64_t c = 0;
  double s = 0;
#ifdef FASTAL_AVX2
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  for (; c + 8 <= len; c += 8) {
    a0 = _mm256_fmadd_pd(_mm256_loadu_pd(x + c), _mm256_loadu_pd(y + c), a0);
    a1 = _mm256_fmadd_pd(_mm256_loadu_pd(x + c + 4), _mm256_loadu_pd(y + c + 4), a1);
  }
  s = hsum(_mm256_add_pd(a0, a1));
#endif
  for (; c < len; ++c) s += x[c] * y[c];
  return s;
}

// out[i * ldo + j] = x_i . y_j for 4 rows of X and 2 rows of Y (length len): 8 dot products with
// 6 loads per 8 multiply-adds.
inline void dots_4x2(const double* const x[4], const double* y0, const double* y1, int64_t len,
                     double* out, int64_t ldo) {
  int64_t c = 0;
  double s[4][2] = {};
#ifdef FASTAL_AVX2
  __m256d acc[4][2];
  for (auto& r : acc) r[0] = r[1] = _mm256_setzero_pd();
  for (; c + 4 <= len; c += 4) {
    const __m256d a = _mm256_loadu_pd(y0 + c), b = _mm256_loadu_pd(y1 + c);
    for (int r = 0; r < 4; ++r) {
      const __m256d xr = _mm256_loadu_pd(x[r] + c);
      acc[r][0] = _mm256_fmadd_pd(xr, a, acc[r][0]);
      acc[r][1] = _mm256_fmadd_pd(xr, b, acc[r][1]);
    }
  }
  for (int r = 0; r < 4; ++r) s[r][0] = hsum(acc[r][0]), s[r][1] = hsum(acc[r][1]);
#endif
  for (; c < len; ++c)
    for (int r = 0; r < 4; ++r) s[r][0] += x[r][c] * y0[c], s[r][1] += x[r][c] * y1[c];
  for (int r = 0; r < 4; ++r) out[r * ldo] = s[r][0], out[r * ldo + 1] = s[r][1];
}

// out[i * ldo + j] = X_i . Y_j for i in [0, p), j in [0, q) (rows of length len, strides ldx, ldy).
inline void cross_products(const double* X, int64_t ldx, int64_t p, const double* Y, int64_t ldy,
                           int64_t q, int64_t len, double* out, int64_t ldo) {
  int64_t i = 0;
  for (; i + 4 <= p; i += 4) {
    const double* x = X + i * ldx;
    const double* rows[4] = {x, x + ldx, x + 2 * ldx, x + 3 * ldx};
    int64_t j = 0;
    for (; j + 2 <= q; j += 2)
      dots_4x2(rows, Y + j * ldy, Y + (j + 1) * ldy, len, out + i * ldo + j, ldo);
    for (; j < q; ++j)
      for (int64_t r = 0; r < 4; ++r) out[(i + r) * ldo + j] = dot64(x + r * ldx, Y + j * ldy, len);
  }
  for (; i < p; ++i)
    for (int64_t j = 0; j < q; ++j) out[i * ldo + j] = dot64(X + i * ldx, Y + j * ldy, len);
}

}  // namespace fastal::cpu
