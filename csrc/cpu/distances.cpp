// Min-distance-to-a-set, the finiteness scan and the bandwidth probe (CPU, OpenMP).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/kernels.h"

namespace fastal::cpu {

namespace {
constexpr int64_t kRowsPerBlock = 16;           // rows of X kept hot while a Y tile streams by
constexpr int64_t kTileBytes = 256 * 1024;      // a Y tile, in the accumulation type, fits in L2
constexpr int64_t kSerialWork = int64_t{1} << 15;  // below this many elements, one thread is faster
}  // namespace

template <typename T>
void min_sqdist_to_set(const T* X, int64_t n, const T* Y, int64_t m, int64_t d, Acc<T>* out_dist2,
                       int64_t* out_index) {
  using A = Acc<T>;
  // Y once in the accumulation type (a copy only for float16/bfloat16 storage).
  std::vector<A> y_acc;
  const A* Ya;
  if constexpr (std::is_same_v<T, A>) {
    Ya = Y;
  } else {
    y_acc.resize(static_cast<size_t>(m * d));
    for (int64_t j = 0; j < m; ++j) prepare_centre(Y + j * d, y_acc.data() + j * d, d);
    Ya = y_acc.data();
  }
  const int64_t tile = std::max<int64_t>(1, kTileBytes / std::max<int64_t>(1, d * int64_t(sizeof(A))));
  const int64_t n_blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;

#pragma omp parallel for schedule(dynamic, 1) if (n * m * d > kSerialWork)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t i0 = b * kRowsPerBlock, i1 = std::min(n, i0 + kRowsPerBlock);
    A best[kRowsPerBlock];
    int64_t arg[kRowsPerBlock];
    std::fill(best, best + kRowsPerBlock, std::numeric_limits<A>::infinity());
    std::fill(arg, arg + kRowsPerBlock, int64_t{-1});
    for (int64_t j0 = 0; j0 < m; j0 += tile) {
      const int64_t j1 = std::min(m, j0 + tile);
      for (int64_t i = i0; i < i1; ++i) {
        const T* x = X + i * d;
        A& bi = best[i - i0];
        int64_t& ai = arg[i - i0];
        for (int64_t j = j0; j < j1; ++j) {
          const A dd = sqdist(x, Ya + j * d, d);
          if (dd < bi || ai < 0) {  // strict: ties keep the lowest j; NaN still gets an index
            bi = dd;
            ai = j;
          }
        }
      }
    }
    for (int64_t i = i0; i < i1; ++i) {
      out_dist2[i] = best[i - i0];
      out_index[i] = arg[i - i0];
    }
  }
}

// Bits of the exponent field: all set means NaN or an infinity. Integer tests vectorise.
template <typename T> struct ExpMask;
template <> struct ExpMask<float> { using U = uint32_t; static constexpr U value = 0x7f800000u; };
template <> struct ExpMask<double> {
  using U = uint64_t;
  static constexpr U value = 0x7ff0000000000000ull;
};
template <> struct ExpMask<Half> { using U = uint16_t; static constexpr U value = 0x7c00u; };
template <> struct ExpMask<BFloat16> { using U = uint16_t; static constexpr U value = 0x7f80u; };

template <typename T>
int64_t count_nonfinite_rows(const T* X, int64_t n, int64_t d, int64_t* first) {
  using U = typename ExpMask<T>::U;
  constexpr U mask = ExpMask<T>::value;
  static_assert(sizeof(U) == sizeof(T));
  const U* bits = reinterpret_cast<const U*>(X);
  int64_t count = 0, first_bad = n;
#pragma omp parallel for reduction(+ : count) reduction(min : first_bad) if (n * d > kSerialWork)
  for (int64_t i = 0; i < n; ++i) {
    const U* x = bits + i * d;
    int bad = 0;
#pragma omp simd reduction(| : bad)
    for (int64_t k = 0; k < d; ++k) bad |= static_cast<int>((x[k] & mask) == mask);
    if (bad) {
      ++count;
      first_bad = std::min(first_bad, i);
    }
  }
  *first = count ? first_bad : -1;
  return count;
}

double parallel_sum(const float* x, int64_t n) {
  double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
  for (int64_t i0 = 0; i0 < n; i0 += 4096) {
    const int64_t i1 = std::min(n, i0 + 4096);
    float part = 0;
#pragma omp simd reduction(+ : part)
    for (int64_t i = i0; i < i1; ++i) part += x[i];
    total += part;
  }
  return total;
}

#define FASTAL_INSTANTIATE(T)                                                                 \
  template void min_sqdist_to_set<T>(const T*, int64_t, const T*, int64_t, int64_t, Acc<T>*, \
                                     int64_t*);                                             \
  template int64_t count_nonfinite_rows<T>(const T*, int64_t, int64_t, int64_t*);
FASTAL_INSTANTIATE(float)
FASTAL_INSTANTIATE(double)
FASTAL_INSTANTIATE(Half)
FASTAL_INSTANTIATE(BFloat16)
#undef FASTAL_INSTANTIATE

}  // namespace fastal::cpu
