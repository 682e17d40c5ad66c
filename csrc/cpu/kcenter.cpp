// k-center greedy on the CPU (Sener & Savarese, Alg. 1): one fused pass per pick updates every
// point's distance to its nearest centre and finds the farthest point, with optional exact
// triangle-inequality pruning of rows that the new centre cannot improve.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/prune.h"
#include "cpu/kernels.h"
#include "cpu/step_update.h"

namespace fastal::cpu {

namespace {

constexpr int64_t kSerialWork = int64_t{1} << 16;  // below this many elements, one thread is faster

// The farthest non-centre point; ties to the lowest index. value = -inf when every point is a centre.
template <typename A>
struct Farthest {
  A value = -std::numeric_limits<A>::infinity();
  int64_t index = -1;
  void offer(A v, int64_t i) {
    if (index < 0 || v > value || (v == value && i < index)) {
      value = v;
      index = i;
    }
  }
  void merge(const Farthest& o) {
    if (o.index >= 0) offer(o.value, o.index);
  }
};

template <typename Rows>
void finish_step(KCenterState<Rows>& s, int64_t t, const Farthest<AccOfRows<Rows>>& far) {
  using A = AccOfRows<Rows>;
  s.radius2[t] = far.index >= 0 ? std::max(far.value, A(0)) : A(0);
  if (t + 1 < s.budget) s.picks[t + 1] = far.index;
}

}  // namespace

template <typename Rows>
AccOfRows<Rows> kcenter_init_labeled(KCenterState<Rows>& s) {
  using A = AccOfRows<Rows>;
  const auto centres = prepare_centres(s.rows, s.centres, s.n_labeled);
  min_sqdist_to_centres(s.rows, centres.data(), s.n_labeled, s.mind, s.near);
  for (int64_t j = 0; j < s.n_labeled; ++j) s.mind[s.centres[j]] = -std::numeric_limits<A>::infinity();
  Farthest<A> far;
  for (int64_t i = 0; i < s.rows.n; ++i)
    if (s.mind[i] != -std::numeric_limits<A>::infinity()) far.offer(s.mind[i], i);
  if (s.budget > 0) s.picks[0] = far.index;
  return far.index >= 0 ? std::max(far.value, A(0)) : A(0);
}

template <typename Rows>
void kcenter_init_first(KCenterState<Rows>& s, int64_t first) {
  std::fill(s.mind, s.mind + s.rows.n, std::numeric_limits<AccOfRows<Rows>>::infinity());
  std::fill(s.near, s.near + s.rows.n, int64_t{-1});
  if (s.budget > 0) s.picks[0] = first;
}

template <typename Rows>
void kcenter_steps(KCenterState<Rows>& s, int64_t t_begin, int64_t t_end) {
  using A = AccOfRows<Rows>;
  const Rows& rows = s.rows;
  const int64_t n = rows.n, work = rows.row_work();
  const bool parallel = n * work > kSerialWork;
  // dynamic chunks (pruning makes rows uneven), a few per thread and at least ~64 KiB of rows each
  const int64_t chunk = std::clamp<int64_t>(n / (8 * omp_get_max_threads()),
                                            std::min<int64_t>(4096, 16384 / work + 1), 4096);
  const int64_t n_chunks = (n + chunk - 1) / chunk, ahead = prefetch_rows_ahead(rows);
  const auto pruner = rows.pruner();
  std::vector<A> centre(static_cast<size_t>(rows.centre_size()));
  std::vector<A> centre_dist2, centre_weight;  // per earlier centre, for the pruning test
  if (s.prune) {
    centre_dist2.resize(static_cast<size_t>(s.n_labeled + s.budget));
    centre_weight.resize(static_cast<size_t>(s.n_labeled + s.budget));
    for (int64_t j = 0; j < s.n_labeled + t_begin; ++j) centre_weight[j] = rows.row_weight(s.centres[j]);
  }

  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t c = s.picks[t];
    const int64_t pos = s.n_labeled + t;  // this centre's position in s.centres
    const bool prune = prune_step(s.prune, pos, n);
    s.centres[pos] = c;
    rows.prepare(c, centre.data());
    if (s.prune) centre_weight[pos] = rows.row_weight(c);
    if (prune) {
#pragma omp parallel for schedule(static) if (parallel && pos * work > kSerialWork)
      for (int64_t j = 0; j < pos; ++j) centre_dist2[j] = rows.dist2(s.centres[j], centre.data());
      s.rows_read += static_cast<uint64_t>(pos);
    }
    const A weight_c = s.prune ? centre_weight[pos] : A(0);
    s.mind[c] = -std::numeric_limits<A>::infinity();
    s.near[c] = pos;

    // Whether row i must be read for this centre (not a centre, not pruned), given m = mind[i].
    auto must_read = [&](int64_t i, A m) {
      if (m == -std::numeric_limits<A>::infinity()) return false;
      const int64_t a = s.near[i];
      return !(prune && a >= 0 &&
               pruner.prunable(centre_dist2[a], m, rows.row_weight(i), centre_weight[a], weight_c));
    };
    Farthest<A> far;
    uint64_t reads = 0;
#pragma omp parallel if (parallel)
    {
      Farthest<A> local;
      uint64_t local_reads = 0;
#ifdef FASTAL_AVX512
      std::vector<A> dd;  // the chunk's new distances, +inf where a row is not read
      if constexpr (std::is_same_v<A, float>) dd.resize(static_cast<size_t>(chunk));
#endif
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t b = 0; b < n_chunks; ++b) {
        const int64_t i0 = b * chunk, i1 = std::min(n, i0 + chunk);
#ifdef FASTAL_AVX512
        if constexpr (std::is_same_v<A, float>) {  // distances first, then vector bookkeeping
          for (int64_t i = i0; i < i1; ++i) {
            const int64_t j = i + ahead;
            if (ahead > 0 && j < i1 && must_read(j, s.mind[j])) rows.prefetch_row(j);
            A v = std::numeric_limits<A>::infinity();
            if (must_read(i, s.mind[i])) {
              v = rows.dist2(i, centre.data());
              ++local_reads;
            }
            dd[i - i0] = v;
          }
          const ChunkFarthest f = update_chunk(s.mind + i0, s.near + i0, dd.data(), i1 - i0, pos);
          if (f.index >= 0) local.offer(f.value, i0 + f.index);
          continue;
        }
#endif
        for (int64_t i = i0; i < i1; ++i) {
          // row j stays in this chunk: other threads write mind/near beyond it
          const int64_t j = i + ahead;
          if (ahead > 0 && j < i1 && must_read(j, s.mind[j])) rows.prefetch_row(j);
          A m = s.mind[i];
          if (m == -std::numeric_limits<A>::infinity()) continue;  // a centre
          if (must_read(i, m)) {
            const A dd = rows.dist2(i, centre.data());
            ++local_reads;
            if (dd < m) {
              m = dd;
              s.mind[i] = dd;
              s.near[i] = pos;
            }
          }
          local.offer(m, i);
        }
      }
#pragma omp critical
      {
        far.merge(local);
        reads += local_reads;
      }
    }
    s.rows_read += reads;
    finish_step(s, t, far);
  }
}

#define FASTAL_INSTANTIATE_ROWS(R)                                             \
  template AccOfRows<R> kcenter_init_labeled<R>(KCenterState<R>&);             \
  template void kcenter_init_first<R>(KCenterState<R>&, int64_t);              \
  template void kcenter_steps<R>(KCenterState<R>&, int64_t, int64_t);
#define FASTAL_INSTANTIATE(T)              \
  FASTAL_INSTANTIATE_ROWS(DenseRows<T>)    \
  FASTAL_INSTANTIATE_ROWS(FactoredRows<T>)
FASTAL_INSTANTIATE(float)
FASTAL_INSTANTIATE(double)
FASTAL_INSTANTIATE(Half)
FASTAL_INSTANTIATE(BFloat16)
#undef FASTAL_INSTANTIATE
#undef FASTAL_INSTANTIATE_ROWS

}  // namespace fastal::cpu
