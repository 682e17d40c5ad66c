// One Lloyd iteration of k-means over dense float32 / float64 rows, in one pass over X.
//
// Chunks of kChunk rows go to the OpenMP threads; for its chunk a thread calls the BLAS GEMM the
// caller passes (the MKL torch links, made single-threaded in each of our threads by its
// mkl_set_num_threads_local_, or scipy's OpenBLAS, which the caller limits to one thread: the only
// thread pool is ours) for -2 X_c Cᵀ, adds |c|², takes the arg-min per row (the first minimum on
// ties; SIMD across rows) and adds the row to its own float64 sums of the next update. The squared
// distance is |x|² + min_j (|c_j|² - 2 x·c_j), clamped at 0. Thread-private sums are added in
// thread order: the result does not depend on scheduling (it does on the thread count, which
// sets the partition: float64 rows round differently). Scikit-learn's Lloyd iteration is
// organised the same way (chunked GEMM + arg-min + sums inside one parallel loop); before this
// kernel fastal ran the GEMM in torch, the arg-min in torch and the sums in a second pass over X.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/check.h"
#include "cpu/kernels.h"
#include "cpu/simd.h"

namespace fastal::cpu {

namespace {

constexpr int64_t kChunk = 256;  // rows per GEMM: a kChunk x k tile stays in L2 for k <= 1000

template <typename T>
using Gemm = void (*)(const char*, const char*, const int*, const int*, const int*, const T*,
                      const T*, const int*, const T*, const int*, const T*, T*, const int*);
// MKL's Fortran mkl_set_num_threads_local_: this thread's MKL thread count (0: the global one);
// returns the previous value
using SetThreadsLocal = int (*)(const int*);

// For each of the rows r < m of a column-major tile (tile[j * ld + r], k >= 1 columns): the first j
// minimising tile[j * ld + r] + add[j] into arg[r] and that minimum into best[r]. Each value is the
// one rounded sum a scalar loop forms and j runs upwards with a strict comparison, so SIMD lanes
// (two registers of rows at a time) give exactly the scalar answer, ties to the lowest j. GCC does
// not vectorise the scalar loop. SIMD lanes carry j as a T, exact while k <= 2^24.
template <typename T>
void first_argmin_columns(const T* tile, int64_t ld, int64_t m, int64_t k, const T* add, T* best,
                          int32_t* arg) {
  int64_t r = 0;
#ifdef FASTAL_AVX2
  using L = Lanes<T>;
  constexpr int w = 2 * L::n;  // two registers: each tile line is read once
  if (k <= (int64_t{1} << 24)) {
    for (; r + w <= m; r += w) {
      typename L::V b0 = L::add(L::load(tile + r), L::set1(add[0]));
      typename L::V b1 = L::add(L::load(tile + r + L::n), L::set1(add[0]));
      typename L::V a0 = L::set1(0), a1 = L::set1(0);
      for (int64_t j = 1; j < k; ++j) {
        const typename L::V c = L::set1(add[j]), jj = L::set1(static_cast<T>(j));
        const typename L::V v0 = L::add(L::load(tile + j * ld + r), c);
        const typename L::V v1 = L::add(L::load(tile + j * ld + r + L::n), c);
        const typename L::V lt0 = L::less(v0, b0), lt1 = L::less(v1, b1);
        b0 = L::blend(b0, v0, lt0);
        b1 = L::blend(b1, v1, lt1);
        a0 = L::blend(a0, jj, lt0);
        a1 = L::blend(a1, jj, lt1);
      }
      T idx[w];
      L::store(best + r, b0);
      L::store(best + r + L::n, b1);
      L::store(idx, a0);
      L::store(idx + L::n, a1);
      for (int u = 0; u < w; ++u) arg[r + u] = static_cast<int32_t>(idx[u]);
    }
  }
#endif
  for (; r < m; ++r) {
    T b = tile[r] + add[0];
    int32_t a = 0;
    for (int64_t j = 1; j < k; ++j) {
      const T v = tile[j * ld + r] + add[j];
      if (v < b) b = v, a = static_cast<int32_t>(j);
    }
    best[r] = b;
    arg[r] = a;
  }
}

}  // namespace

template <typename T>
void lloyd_step(const T* X, int64_t n, int64_t d, const T* xsq, const T* centres, int64_t k,
                uintptr_t gemm_address, uintptr_t threads_local_address, int64_t* labels,
                T* dist2, double* sums, int64_t* counts) {
  FASTAL_REQUIRE(d <= std::numeric_limits<int>::max() && k <= std::numeric_limits<int>::max(),
                 "d and k must fit a 32-bit BLAS integer");
  const auto gemm = reinterpret_cast<Gemm<T>>(gemm_address);
  const auto threads_local = reinterpret_cast<SetThreadsLocal>(threads_local_address);
  std::vector<T> csq(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) {
    T s = 0;
    for (int64_t c = 0; c < d; ++c) s += centres[j * d + c] * centres[j * d + c];
    csq[j] = s;
  }
  const int threads = omp_get_max_threads();
  std::vector<double> partial(static_cast<size_t>(threads) * k * d, 0.0);
  std::vector<int64_t> partial_counts(static_cast<size_t>(threads) * k, 0);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    // MKL runs on another OpenMP runtime: it would start threads inside every call from ours
    const int one = 1;
    const int saved = threads_local ? threads_local(&one) : 0;
    std::vector<T> tile(static_cast<size_t>(kChunk * k)), best(static_cast<size_t>(kChunk));
    std::vector<int32_t> arg(static_cast<size_t>(kChunk));
    double* my_sums = partial.data() + static_cast<int64_t>(t) * k * d;
    int64_t* my_counts = partial_counts.data() + static_cast<int64_t>(t) * k;
    const char trans = 'T', notrans = 'N';
    const int ik = static_cast<int>(k), id = static_cast<int>(d);
    const T alpha = -2, beta = 0;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < chunks; ++b) {
      const int64_t r0 = b * kChunk, rows = std::min(kChunk, n - r0);
      const int ir = static_cast<int>(rows);
      const T* xc = X + r0 * d;
      // column-major tile (rows x k) = X_c (rows x d) · Cᵀ: tile[j * rows + r] = -2 x_r · c_j. In
      // this orientation MKL's single-threaded sgemm measured ~5% faster, and the arg-min runs
      // along contiguous rows
      gemm(&trans, &notrans, &ir, &ik, &id, &alpha, xc, &id, centres, &id, &beta, tile.data(),
           &ir);
      first_argmin_columns(tile.data(), rows, rows, k, csq.data(), best.data(), arg.data());
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = r0 + r, a = arg[r];
        labels[i] = a;
        dist2[i] = std::max<T>(best[r] + xsq[i], 0);
        ++my_counts[a];
        double* s = my_sums + a * d;
        const T* x = xc + r * d;
        for (int64_t c = 0; c < d; ++c) s[c] += static_cast<double>(x[c]);
      }
    }
    if (threads_local) threads_local(&saved);
    // add the threads' sums in thread order
#pragma omp for schedule(static)
    for (int64_t e = 0; e < k * d; ++e) {
      double total = 0;
      for (int u = 0; u < threads; ++u) total += partial[static_cast<size_t>(u) * k * d + e];
      sums[e] = total;
    }
#pragma omp for schedule(static)
    for (int64_t j = 0; j < k; ++j) {
      int64_t total = 0;
      for (int u = 0; u < threads; ++u) total += partial_counts[static_cast<size_t>(u) * k + j];
      counts[j] = total;
    }
  }
}

template void lloyd_step<float>(const float*, int64_t, int64_t, const float*, const float*,
                                int64_t, uintptr_t, uintptr_t, int64_t*, float*, double*,
                                int64_t*);
template void lloyd_step<double>(const double*, int64_t, int64_t, const double*, const double*,
                                 int64_t, uintptr_t, uintptr_t, int64_t*, double*, double*,
                                 int64_t*);

}  // namespace fastal::cpu
