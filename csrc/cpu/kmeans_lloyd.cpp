// One Lloyd iteration of k-means over dense rows (float32 / float64; float16 / bfloat16 widened to
// float32 a chunk at a time), in one pass over X.
//
// Chunks of rows (lloyd::chunk_rows) go to the OpenMP threads; for its chunk a thread calls the
// BLAS GEMM the caller passes (the MKL torch links, made single-threaded in each of our threads by
// its mkl_set_num_threads_local_, or scipy's OpenBLAS, which the caller limits to one thread: the
// only thread pool is ours) for -2 X_c Cᵀ, adds |c|², takes the arg-min per row (the first minimum
// on ties; SIMD across rows) and adds the row to its float64 sums of the next update (or leaves
// the sums to a second pass where private ones would be large: lloyd::RowSums). A row whose best
// and runner-up are closer than the GEMM's rounding is settled by direct distances
// (cpu/lloyd_tile.h), so labels do not depend on the BLAS. The squared distance returned is the
// direct one to the label, Σ (x - c)², never the GEMM form.
// Scikit-learn's Lloyd iteration is organised the same way (chunked GEMM + arg-min + sums inside
// one parallel loop); before this kernel fastal ran the GEMM in torch, the arg-min in torch and
// the sums in a second pass over X.
#include "cpu/omp_compat.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/check.h"
#include "cpu/kernels.h"
#include "cpu/lloyd_tile.h"

namespace fastal::cpu {

using lloyd::Gemm;
using lloyd::SetThreadsLocal;

template <typename S>
void lloyd_step(const S* X, int64_t n, int64_t d, const Acc<S>* xsq, const Acc<S>* centres,
                int64_t k, uintptr_t gemm_address, uintptr_t threads_local_address, int64_t* labels,
                Acc<S>* dist2, double* sums, int64_t* counts, int64_t partial_limit,
                Acc<S>* margin) {
  using T = Acc<S>;
  FASTAL_REQUIRE(d <= std::numeric_limits<int>::max() && k <= std::numeric_limits<int>::max(),
                 "d and k must fit a 32-bit BLAS integer");
  const auto gemm = reinterpret_cast<Gemm<T>>(gemm_address);
  const auto threads_local = reinterpret_cast<SetThreadsLocal>(threads_local_address);
  std::vector<T> csq(static_cast<size_t>(k));
  lloyd::centre_sqnorms(centres, k, d, csq.data());
  const lloyd::Margins margins(centres, k, d);
  const int threads = omp_get_max_threads();
  // sized as rows of T whatever the storage: a float16 pool sums as its float32 copy would
  lloyd::RowSums row_sums(threads, n, k, d, d * static_cast<int64_t>(sizeof(T)), partial_limit);
  const int64_t chunk = lloyd::chunk_rows(k), chunks = (n + chunk - 1) / chunk;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    // MKL runs on another OpenMP runtime: it would start threads inside every call from ours
    const int one = 1;
    const int saved = threads_local ? threads_local(&one) : 0;
    std::vector<T> tile(static_cast<size_t>(chunk * k)), best(chunk), second(chunk);
    std::vector<T> wide(std::is_same_v<S, T> ? 0 : static_cast<size_t>(chunk * d));
    std::vector<int32_t> arg(chunk);
    std::vector<uint8_t> resolved(chunk);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < chunks; ++b) {
      const int64_t r0 = b * chunk, rows = std::min(chunk, n - r0);
      const T* xc = lloyd::widened(X + r0 * d, rows * d, wide.data());
      lloyd::gemm_tile(gemm, xc, rows, centres, k, d, tile.data());
      lloyd::first_argmin_columns(tile.data(), rows, rows, k, csq.data(), best.data(),
                                  second.data(), arg.data());
      lloyd::chunk_labels(margins, xc, xsq + r0, centres, d, tile.data(), rows, k, csq.data(),
                          best.data(), second.data(), arg.data(), labels + r0, dist2 + r0,
                          resolved.data());
      if (margin) lloyd::chunk_margins(xsq + r0, best.data(), second.data(), rows, margin + r0);
      for (int64_t r = 0; r < rows; ++r) row_sums.add(t, labels[r0 + r], xc + r * d);
    }
    if (threads_local) threads_local(&saved);
    row_sums.finish(X, labels, sums, counts);
  }
}

#define FASTAL_INSTANTIATE(S)                                                                      \
  template void lloyd_step<S>(const S*, int64_t, int64_t, const Acc<S>*, const Acc<S>*, int64_t,   \
                              uintptr_t, uintptr_t, int64_t*, Acc<S>*, double*, int64_t*, int64_t, \
                              Acc<S>*);
FASTAL_INSTANTIATE(float)
FASTAL_INSTANTIATE(double)
FASTAL_INSTANTIATE(Half)
FASTAL_INSTANTIATE(BFloat16)
#undef FASTAL_INSTANTIATE

}  // namespace fastal::cpu
