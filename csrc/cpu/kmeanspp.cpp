// k-means++ seeding (Arthur & Vassilvitskii 2007; BADGE, Ash et al. 2020) on the CPU: D^2 sampling
// with one fused pass per pick.
//
// Each pick is sampled from the float64 sums of max(mind, 0) over fixed blocks of kKMeansPPBlock
// rows, kept up to date by the pass that adds the previous centre: the sampler scans the block sums
// to find the block holding u * total, then that block's rows. Blocks are fixed (not per thread)
// and summed in row order, so the picks depend only on the data and the uniforms, not on the number
// of threads. The rule matches the float64 reference: the first row with cumsum(w) > u * total.
#include "cpu/omp_compat.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/prune.h"
#include "cpu/kernels.h"
#include "cpu/prune_scan.h"

namespace fastal::cpu {

namespace {

constexpr int64_t kSerialWork = int64_t{1} << 16;

inline int64_t n_blocks(int64_t n) { return (n + kKMeansPPBlock - 1) / kKMeansPPBlock; }

template <typename A>
inline double weight(A m) {
  return m > A(0) ? static_cast<double>(m) : 0.0;  // -inf (a centre) and 0 weigh nothing
}

template <typename Rows>
void sum_block(KMeansPPState<Rows>& s, int64_t b) {
  const int64_t i0 = b * kKMeansPPBlock, i1 = std::min(s.rows.n, i0 + kKMeansPPBlock);
  double total = 0;
  for (int64_t i = i0; i < i1; ++i) total += weight(s.mind[i]);
  s.block_sums[b] = total;
}

template <typename Rows>
void sum_all_blocks(KMeansPPState<Rows>& s) {
  const int64_t blocks = n_blocks(s.rows.n);
#pragma omp parallel for schedule(static) if (s.rows.n > kSerialWork)
  for (int64_t b = 0; b < blocks; ++b) sum_block(s, b);
}

// The row D^2 sampling draws for uniform u; -1 when every row is a centre.
template <typename Rows>
int64_t sample(const KMeansPPState<Rows>& s, double u) {
  using A = AccOfRows<Rows>;
  const int64_t n = s.rows.n, blocks = n_blocks(s.rows.n);
  double total = 0;
  for (int64_t b = 0; b < blocks; ++b) total += s.block_sums[b];
  if (total > 0) {
    const double target = u * total;
    double before = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      if (s.block_sums[b] > 0 && before + s.block_sums[b] > target) {
        // The walk adds onto `before` while the block sum started from 0: the two round
        // differently, so the walk can fall short. Then the last positive row of this block is the
        // draw (as on the GPU); a later block must not be entered, its first row may weigh 0.
        double acc = before;
        int64_t last = -1;
        const int64_t i1 = std::min(n, (b + 1) * kKMeansPPBlock);
        for (int64_t i = b * kKMeansPPBlock; i < i1; ++i) {
          const double w = weight(s.mind[i]);
          if (w == 0) continue;
          last = i;
          acc += w;
          if (acc > target) return i;
        }
        if (last >= 0) return last;
      }
      before += s.block_sums[b];
    }
    for (int64_t i = n - 1; i >= 0; --i)  // rounding left u * total at the very end
      if (weight(s.mind[i]) > 0) return i;
  }
  // Every remaining row coincides with a centre: take the floor(u r)-th non-centre, r of them.
  int64_t r = 0;
  for (int64_t i = 0; i < n; ++i) r += s.mind[i] != -std::numeric_limits<A>::infinity();
  if (r == 0) return -1;
  int64_t want = std::min(r - 1, static_cast<int64_t>(std::floor(u * static_cast<double>(r))));
  for (int64_t i = 0; i < n; ++i)
    if (s.mind[i] != -std::numeric_limits<A>::infinity() && want-- == 0) return i;
  return -1;
}

}  // namespace

template <typename Rows>
void kmeanspp_init_labeled(KMeansPPState<Rows>& s, const int64_t* labeled, int64_t n_labeled) {
  using A = AccOfRows<Rows>;
  for (int64_t j = 0; j < n_labeled; ++j) s.mind[labeled[j]] = -std::numeric_limits<A>::infinity();
  sum_all_blocks(s);
}

template <typename Rows>
void kmeanspp_init_first(KMeansPPState<Rows>& s, int64_t first) {
  std::fill(s.mind, s.mind + s.rows.n, std::numeric_limits<AccOfRows<Rows>>::infinity());
  std::fill(s.block_sums, s.block_sums + n_blocks(s.rows.n), 0.0);
  if (s.k > 0) s.picks[0] = first;
}

template <typename Rows>
void kmeanspp_steps(KMeansPPState<Rows>& s, int64_t t_begin, int64_t t_end) {
  using A = AccOfRows<Rows>;
  constexpr A kCentre = -std::numeric_limits<A>::infinity();  // the mind of a centre
  const Rows& rows = s.rows;
  const int64_t n = rows.n, blocks = n_blocks(s.rows.n);
  const bool parallel = n * rows.row_work() > kSerialWork;
  const int64_t ahead = prefetch_rows_ahead(rows), ahead_pruned = pruned_prefetch_rows_ahead(rows);
  const bool can_prune = s.near != nullptr;
  const auto pruner = rows.pruner();
  std::vector<A> centre(static_cast<size_t>(rows.centre_size()));
  std::vector<A> centre_dist2, centre_weight;  // per earlier centre, for the pruning test
  if (can_prune) {
    centre_dist2.resize(static_cast<size_t>(s.n_labeled + s.k));
    centre_weight.resize(static_cast<size_t>(s.n_labeled + s.k));
    for (int64_t j = 0; j < s.n_labeled + t_begin; ++j)
      centre_weight[j] = rows.row_weight(s.centres[j]);
  }
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t c = (t == 0 && s.has_first) ? s.picks[0] : sample(s, s.uniform[t]);
    s.picks[t] = c;
    if (c < 0) continue;                  // cannot happen for k <= n - n_labeled; the caller checks
    const int64_t pos = s.n_labeled + t;  // this centre's position in s.centres
    const bool prune = prune_step(can_prune, pos, n);
    rows.prepare(c, centre.data());
    if (can_prune) {
      s.centres[pos] = c;
      centre_weight[pos] = rows.row_weight(c);
      s.near[c] = pos;
    }
    if (prune) {
#pragma omp parallel for schedule(static) if (parallel && pos * rows.row_work() > kSerialWork)
      for (int64_t j = 0; j < pos; ++j) centre_dist2[j] = rows.dist2(s.centres[j], centre.data());
      s.rows_read += static_cast<uint64_t>(pos);
    }
    const A weight_c = can_prune ? centre_weight[pos] : A(0);
    s.mind[c] = kCentre;
    const int64_t block_of_c = c / kKMeansPPBlock;

    // mind = min(mind, d(row, c)) for row i (not a centre); returns whether it fell.
    auto update = [&](int64_t i) {
      const A dd = rows.dist2(i, centre.data());
      if (!(dd < s.mind[i])) return false;
      s.mind[i] = dd;
      if (can_prune) s.near[i] = pos;
      return true;
    };
    // Every non-centre row of block b in order, with the block's sum; returns the rows read.
    auto read_all = [&](int64_t b, int64_t i0, int64_t i1) {
      uint64_t read = 0;
      double total = 0;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t j = i + ahead;  // within this block: other threads write mind beyond it
        if (ahead > 0 && j < i1 && s.mind[j] != kCentre) rows.prefetch_row(j);
        if (s.mind[i] == kCentre) continue;
        update(i);
        ++read;
        total += weight(s.mind[i]);
      }
      s.block_sums[b] = total;
      return read;
    };
    uint64_t reads = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : reads) if (parallel)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t i0 = b * kKMeansPPBlock, i1 = std::min(n, i0 + kKMeansPPBlock);
      if (!prune) {  // one fused pass: distances and the block's sum
        reads += read_all(b, i0, i1);
        continue;
      }
      uint64_t words[kKMeansPPBlock / 64];
      const uint64_t kept = rows_to_read(rows, pruner, s.mind, s.near, centre_dist2.data(),
                                         centre_weight.data(), weight_c, i0, i1, words);
      if (read_whole(kept, i1 - i0)) {
        reads += read_all(b, i0, i1);
        continue;
      }
      bool changed = b == block_of_c;
      for_each_kept(rows, ahead_pruned, i0, i1, words, [&](int64_t i) { changed |= update(i); });
      reads += kept;
      // an unchanged block keeps its sum: the same minds summed in the same order
      if (changed) sum_block(s, b);
    }
    s.rows_read += reads;
  }
}

#define FASTAL_INSTANTIATE_ROWS(R)                                                    \
  template void kmeanspp_init_labeled<R>(KMeansPPState<R>&, const int64_t*, int64_t); \
  template void kmeanspp_init_first<R>(KMeansPPState<R>&, int64_t);                   \
  template void kmeanspp_steps<R>(KMeansPPState<R>&, int64_t, int64_t);
#define FASTAL_INSTANTIATE(T)           \
  FASTAL_INSTANTIATE_ROWS(DenseRows<T>) \
  FASTAL_INSTANTIATE_ROWS(FactoredRows<T>)
FASTAL_INSTANTIATE(float)
FASTAL_INSTANTIATE(double)
FASTAL_INSTANTIATE(Half)
FASTAL_INSTANTIATE(BFloat16)
#undef FASTAL_INSTANTIATE
#undef FASTAL_INSTANTIATE_ROWS

}  // namespace fastal::cpu
