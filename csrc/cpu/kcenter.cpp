// k-center greedy on the CPU (Sener & Savarese, Alg. 1): one fused pass per pick updates every
// point's distance to its nearest centre and finds the farthest point, with optional exact
// triangle-inequality pruning of rows that the new centre cannot improve.
#include "cpu/omp_compat.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/prune.h"
#include "cpu/kernels.h"
#include "cpu/prune_scan.h"
#include "cpu/step_update.h"

namespace fastal::cpu {

namespace {

constexpr int64_t kSerialWork = int64_t{1} << 16;  // below this many elements, one thread is faster

// Whether an unpruned step's bookkeeping runs 16 rows per instruction after the chunk's distances
// (cpu/step_update.h): float32 accumulation with AVX-512. Otherwise unpruned steps fuse the two;
// for float64 the split measured within this VM's noise (1.2x faster at d = 2, 1.27x slower at
// d = 8). Pruned steps always split: their distances come from the rows' bits.
template <typename A>
constexpr bool kVectorBookkeeping =
#ifdef FASTAL_AVX512
    std::is_same_v<A, float>;
#else
    false;
#endif

// The farthest non-centre point; ties to the lowest index. value = -inf when every point is a
// centre.
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
  const int64_t ahead_pruned = pruned_prefetch_rows_ahead(rows);
  const auto pruner = rows.pruner();
  std::vector<A> centre(static_cast<size_t>(rows.centre_size()));
  std::vector<A> centre_dist2, centre_weight;  // per earlier centre, for the pruning test
  if (s.prune) {
    centre_dist2.resize(static_cast<size_t>(s.n_labeled + s.budget));
    centre_weight.resize(static_cast<size_t>(s.n_labeled + s.budget));
    for (int64_t j = 0; j < s.n_labeled + t_begin; ++j)
      centre_weight[j] = rows.row_weight(s.centres[j]);
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
    constexpr A kCentre = -std::numeric_limits<A>::infinity();  // the mind of a centre
    s.mind[c] = kCentre;
    s.near[c] = pos;

    // The distances of the rows whose bits are set (+inf in dd for the others).
    auto kept_distances = [&](int64_t i0, int64_t i1, const uint64_t* words, A* dd) {
      std::fill(dd, dd + (i1 - i0), std::numeric_limits<A>::infinity());
      for_each_kept(rows, ahead_pruned, i0, i1, words,
                    [&](int64_t i) { dd[i - i0] = rows.dist2(i, centre.data()); });
    };
    // Unpruned steps: every non-centre row's distance (+inf in dd for centres).
    auto all_distances = [&](int64_t i0, int64_t i1, A* dd) {
      uint64_t read = 0;
      for (int64_t i = i0; i < i1; ++i) {
        // row j stays in this chunk: other threads write mind beyond it
        const int64_t j = i + ahead;
        if (ahead > 0 && j < i1 && s.mind[j] != kCentre) rows.prefetch_row(j);
        A v = std::numeric_limits<A>::infinity();
        if (s.mind[i] != kCentre) {
          v = rows.dist2(i, centre.data());
          ++read;
        }
        dd[i - i0] = v;
      }
      return read;
    };
    // mind = min(mind, dd), near = pos where it fell, and the chunk's farthest point (with
    // AVX-512: 16 or 8 rows per instruction).
    auto bookkeeping = [&](int64_t i0, int64_t i1, const A* dd, Farthest<A>& local) {
#ifdef FASTAL_AVX512
      const ChunkFarthest<A> f = update_chunk(s.mind + i0, s.near + i0, dd, i1 - i0, pos);
      if (f.index >= 0) local.offer(f.value, i0 + f.index);
#else
      for (int64_t i = i0; i < i1; ++i) {
        A m = s.mind[i];
        if (m == kCentre) continue;
        if (dd[i - i0] < m) {
          m = dd[i - i0];
          s.mind[i] = m;
          s.near[i] = pos;
        }
        local.offer(m, i);
      }
#endif
    };
    // Unpruned steps without vector bookkeeping (float64): distance and bookkeeping fused.
    auto fused_step = [&](int64_t i0, int64_t i1, Farthest<A>& local) {
      uint64_t read = 0;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t j = i + ahead;
        if (ahead > 0 && j < i1 && s.mind[j] != kCentre) rows.prefetch_row(j);
        A m = s.mind[i];
        if (m == kCentre) continue;
        const A v = rows.dist2(i, centre.data());
        ++read;
        if (v < m) {
          m = v;
          s.mind[i] = v;
          s.near[i] = pos;
        }
        local.offer(m, i);
      }
      return read;
    };

    Farthest<A> far;
    uint64_t reads = 0;
#pragma omp parallel if (parallel)
    {
      Farthest<A> local;
      uint64_t local_reads = 0;
      std::vector<A> dd(static_cast<size_t>(chunk));
      std::vector<uint64_t> words(static_cast<size_t>((chunk + 63) / 64));
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t b = 0; b < n_chunks; ++b) {
        const int64_t i0 = b * chunk, i1 = std::min(n, i0 + chunk);
        if (prune) {
          const uint64_t kept = rows_to_read(rows, pruner, s.mind, s.near, centre_dist2.data(),
                                             centre_weight.data(), weight_c, i0, i1, words.data());
          if (read_whole(kept, i1 - i0)) {
            local_reads += all_distances(i0, i1, dd.data());
          } else {
            kept_distances(i0, i1, words.data(), dd.data());
            local_reads += kept;
          }
          bookkeeping(i0, i1, dd.data(), local);
        } else if (kVectorBookkeeping<A>) {
          local_reads += all_distances(i0, i1, dd.data());
          bookkeeping(i0, i1, dd.data(), local);
        } else {
          local_reads += fused_step(i0, i1, local);
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

#define FASTAL_INSTANTIATE_ROWS(R)                                \
  template void kcenter_init_first<R>(KCenterState<R>&, int64_t); \
  template void kcenter_steps<R>(KCenterState<R>&, int64_t, int64_t);
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
