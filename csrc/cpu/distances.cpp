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

template <typename Rows>
std::vector<AccOfRows<Rows>> prepare_centres(const Rows& set, const int64_t* index, int64_t m) {
  const int64_t cs = set.centre_size();
  std::vector<AccOfRows<Rows>> out(static_cast<size_t>(m * cs));
  for (int64_t j = 0; j < m; ++j) set.prepare(index[j], out.data() + j * cs);
  return out;
}

template <typename Rows>
void min_sqdist_to_centres(const Rows& rows, const AccOfRows<Rows>* centres, int64_t m,
                           AccOfRows<Rows>* out_dist2, int64_t* out_index) {
  using A = AccOfRows<Rows>;
  const int64_t n = rows.n, cs = rows.centre_size();
  const int64_t tile = std::max<int64_t>(1, kTileBytes / (cs * int64_t(sizeof(A))));
  const int64_t n_blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;

#pragma omp parallel for schedule(dynamic, 1) if (n * m * rows.row_work() > kSerialWork)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t i0 = b * kRowsPerBlock, i1 = std::min(n, i0 + kRowsPerBlock);
    A best[kRowsPerBlock];
    int64_t arg[kRowsPerBlock];
    std::fill(best, best + kRowsPerBlock, std::numeric_limits<A>::infinity());
    std::fill(arg, arg + kRowsPerBlock, int64_t{-1});
    for (int64_t j0 = 0; j0 < m; j0 += tile) {
      const int64_t j1 = std::min(m, j0 + tile);
      for (int64_t i = i0; i < i1; ++i) {
        A& bi = best[i - i0];
        int64_t& ai = arg[i - i0];
        for (int64_t j = j0; j < j1; ++j) {
          const A dd = rows.dist2(i, centres + j * cs);
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

template <typename T>
void segment_sum(const T* X, int64_t n, int64_t d, const int64_t* labels, int64_t k, double* sums,
                 int64_t* counts) {
  std::fill(sums, sums + k * d, 0.0);
  std::fill(counts, counts + k, int64_t{0});
  for (int64_t i = 0; i < n; ++i) ++counts[labels[i]];
  const int threads = omp_get_max_threads();
  const bool private_sums = k * d * threads <= (int64_t{1} << 25);  // <= 256 MiB of buffers
  if (n * d <= kSerialWork || threads == 1) {
    for (int64_t i = 0; i < n; ++i) {
      double* s = sums + labels[i] * d;
      const T* x = X + i * d;
      for (int64_t j = 0; j < d; ++j) s[j] += to_float(x[j]);
    }
  } else if (private_sums) {
    // each thread sums its rows into its own k x d buffer; buffers are added in thread order
    std::vector<double> partial(static_cast<size_t>(threads * k * d), 0.0);
#pragma omp parallel
    {
      double* mine = partial.data() + static_cast<int64_t>(omp_get_thread_num()) * k * d;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        double* s = mine + labels[i] * d;
        const T* x = X + i * d;
        for (int64_t j = 0; j < d; ++j) s[j] += to_float(x[j]);
      }
#pragma omp for schedule(static)
      for (int64_t e = 0; e < k * d; ++e) {
        double total = 0;
        for (int t = 0; t < threads; ++t) total += partial[static_cast<size_t>(t * k * d + e)];
        sums[e] = total;
      }
    }
  } else {
    // many clusters: each thread owns a band of columns and reads those of every row
    const int64_t band = std::max<int64_t>(16, (d + threads - 1) / threads);
#pragma omp parallel for schedule(static)
    for (int64_t j0 = 0; j0 < d; j0 += band) {
      const int64_t j1 = std::min(d, j0 + band);
      for (int64_t i = 0; i < n; ++i) {
        double* s = sums + labels[i] * d;
        const T* x = X + i * d;
        for (int64_t j = j0; j < j1; ++j) s[j] += to_float(x[j]);
      }
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

#define FASTAL_INSTANTIATE_ROWS(R)                                                            \
  template std::vector<AccOfRows<R>> prepare_centres<R>(const R&, const int64_t*, int64_t);     \
  template void min_sqdist_to_centres<R>(const R&, const AccOfRows<R>*, int64_t, AccOfRows<R>*, \
                                         int64_t*);
#define FASTAL_INSTANTIATE(T)                                                  \
  FASTAL_INSTANTIATE_ROWS(DenseRows<T>)                                        \
  FASTAL_INSTANTIATE_ROWS(FactoredRows<T>)                                     \
  template int64_t count_nonfinite_rows<T>(const T*, int64_t, int64_t, int64_t*);  \
  template void segment_sum<T>(const T*, int64_t, int64_t, const int64_t*, int64_t, double*, int64_t*);
FASTAL_INSTANTIATE(float)
FASTAL_INSTANTIATE(double)
FASTAL_INSTANTIATE(Half)
FASTAL_INSTANTIATE(BFloat16)
#undef FASTAL_INSTANTIATE
#undef FASTAL_INSTANTIATE_ROWS

}  // namespace fastal::cpu
