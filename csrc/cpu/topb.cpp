// IHT top-b thresholding (Shen et al., Alg. 2 line 6 and Appendix E) on the CPU.
//
// The b smallest scores (ties to the lowest index) form the support, and w = [s]_+ on it. Scores
// (kernels.h, IhtRule): the paper's 1/2 [-s_j]_+^2 - alpha sigma_j^2, or the exact proximal one
// -1/2 [s_j]_+^2 - alpha sigma_j^2. A full nth_element over n = 10^7 pairs costs ~10x one
// streaming pass, so: estimate a threshold from a strided sample of the scores, keep the rows at or
// below it in one parallel pass, and finish with nth_element + sort on the few survivors. If the
// sample underestimated (fewer than b survivors), the pass is repeated with a higher sample rank,
// and in the end with no threshold at all, so the result is always exact.
#include "cpu/omp_compat.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "common/check.h"
#include "cpu/kernels.h"

namespace fastal::cpu {

namespace {

// In float64 whatever the storage type, without FMA contraction (this file is compiled with
// -ffp-contract=off), so that a float64 numpy reference computes bit-identical scores. A NaN in s
// or sigma gives a NaN score (std::max(NaN, 0) is its first argument), which survivors() rejects.
// The file's -fno-trapping-math lets gcc turn the branches into selects and vectorise the scores.
template <IhtRule Rule, typename T>
inline double iht_score(T s, T sigma, double alpha) {
  const double sg = static_cast<double>(sigma);
  // alpha = 0 drops the sigma term: 0 * (a sigma^2 past float64) would be NaN. sg - sg keeps a
  // NaN sigma NaN, and is +0.0 like 0 * sg^2 otherwise.
  const double bonus = alpha == 0.0 ? sg - sg : alpha * (sg * sg);
  if constexpr (Rule == IhtRule::Exact) {
    const double pos = std::max(static_cast<double>(s), 0.0);  // NaN stays NaN (first argument)
    return -(0.5 * (pos * pos)) - bonus;
  }
  const double neg = std::max(-static_cast<double>(s), 0.0);
  return 0.5 * (neg * neg) - bonus;
}

struct Keyed {
  double score;
  int64_t index;
  bool operator<(const Keyed& o) const {
    return score < o.score || (score == o.score && index < o.index);
  }
};

// All rows with score <= threshold (every row when threshold is +inf), in ascending index order.
// A NaN input or score (the paper's rule on float64 input: inf - inf when both terms overflow) is
// an error: the row could be neither ranked nor dropped (the solvers call this without a Python
// check).
template <IhtRule Rule, typename T>
std::vector<Keyed> survivors(const T* s, const T* sigma, int64_t n, double alpha,
                             double threshold) {
  const int threads = n > (int64_t{1} << 16) ? omp_get_max_threads() : 1;
  std::vector<std::vector<Keyed>> parts(static_cast<size_t>(threads));
  int64_t first_nan = n;
  // Blocks of scores: a branch-free (vectorised) pass computes them and whether any is kept or
  // NaN, and only such blocks are walked row by row; small blocks, so that with the ~1% of rows
  // a threshold keeps most blocks have none. Per row, the push_back kept compilers from
  // vectorising the scores.
  constexpr int64_t kBlock = 32;
#pragma omp parallel num_threads(threads) reduction(min : first_nan)
  {
    auto& mine = parts[static_cast<size_t>(omp_get_thread_num())];
    double sc[kBlock];
#pragma omp for schedule(static)  // contiguous ranges in thread order: index order below
    for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
      const int64_t len = std::min(kBlock, n - j0);
      const T* sb = s + j0;
      const T* gb = sigma + j0;
      int hits = 0;  // an int, not a bool: gcc vectorises no bool reduction
      for (int64_t k = 0; k < len; ++k) {
        const double v = iht_score<Rule>(sb[k], gb[k], alpha);
        sc[k] = v;
        hits |= !(v > threshold);  // kept, or NaN
      }
      if (hits == 0) continue;
      for (int64_t k = 0; k < len; ++k) {
        if (sc[k] <= threshold) {
          mine.push_back({sc[k], j0 + k});
        } else if (sc[k] != sc[k]) {  // NaN fails <= too: off the path of the rows kept
          first_nan = std::min(first_nan, j0 + k);
        }
      }
    }
  }
  FASTAL_REQUIRE(first_nan == n, "the IHT score is NaN at index ", first_nan,
                 " (s = ", static_cast<double>(s[first_nan]),
                 ", sigma = ", static_cast<double>(sigma[first_nan]),
                 "): a NaN input, or both terms of 1/2 [-s]_+^2 - alpha sigma^2 overflow float64");
  std::vector<Keyed> all;
  size_t total = 0;
  for (const auto& p : parts) total += p.size();
  all.reserve(total);
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());  // static: index order
  return all;
}

template <IhtRule Rule, typename T>
void select_top_b(const T* s, const T* sigma, int64_t n, int64_t b, double alpha, int64_t* support,
                  T* w) {
  std::fill(w, w + n, T(0));
  if (b == 0) return;
  // a strided sample of the scores; rank it where about 1.5 b / n + 4 sqrt(b) / n of it lies
  const int64_t m = std::min<int64_t>(n, 16384);
  std::vector<double> sample(static_cast<size_t>(m));
  for (int64_t k = 0; k < m; ++k) {
    const int64_t j = static_cast<int64_t>((static_cast<double>(k) + 0.5) * n / m);
    const double sc = iht_score<Rule>(s[j], sigma[j], alpha);
    sample[k] =
        sc == sc ? sc : std::numeric_limits<double>::infinity();  // NaN: survivors() rejects it
  }
  std::vector<Keyed> keep;
  double frac = 1.5 * static_cast<double>(b) / n + 4.0 * std::sqrt(static_cast<double>(b)) / n;
  for (int attempt = 0; attempt < 3 && static_cast<int64_t>(keep.size()) < b;
       ++attempt, frac *= 4) {
    const int64_t rank = static_cast<int64_t>(std::ceil(frac * m));
    double threshold = std::numeric_limits<double>::infinity();
    if (b < n && rank < m &&
        attempt < 2) {  // the rank-th sample score: O(m), not a sort of the sample
      std::nth_element(sample.begin(), sample.begin() + rank, sample.end());
      threshold = sample[static_cast<size_t>(rank)];
    }
    keep = survivors<Rule>(s, sigma, n, alpha, threshold);
  }
  // with no threshold every row survives unless it was NaN, which survivors() rejected
  FASTAL_REQUIRE(static_cast<int64_t>(keep.size()) >= b, "internal: ", keep.size(),
                 " rows survived the top-b selection, fewer than b = ", b);
  std::nth_element(keep.begin(), keep.begin() + (b - 1), keep.end());
  std::sort(keep.begin(), keep.begin() + b);
  for (int64_t k = 0; k < b; ++k) {
    const int64_t j = keep[static_cast<size_t>(k)].index;
    support[k] = j;
    w[j] = s[j] > T(0) ? s[j] : T(0);
  }
}

}  // namespace

// The rule as a template argument: a run-time branch per row cost ~5% at n = 10^6.
template <typename T>
void iht_threshold(const T* s, const T* sigma, int64_t n, int64_t b, double alpha, IhtRule rule,
                   int64_t* support, T* w) {
  if (rule == IhtRule::Exact) {
    select_top_b<IhtRule::Exact>(s, sigma, n, b, alpha, support, w);
  } else {
    select_top_b<IhtRule::Paper>(s, sigma, n, b, alpha, support, w);
  }
}

template void iht_threshold<float>(const float*, const float*, int64_t, int64_t, double, IhtRule,
                                   int64_t*, float*);
template void iht_threshold<double>(const double*, const double*, int64_t, int64_t, double, IhtRule,
                                    int64_t*, double*);

}  // namespace fastal::cpu
