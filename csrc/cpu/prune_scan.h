// The scan of a pruned step, shared by k-center (kcenter.cpp) and k-means++ (kmeanspp.cpp): which
// rows of a chunk the triangle-inequality test (common/prune.h) leaves to read, whether to read
// the chunk whole instead, and the walk over the kept rows.
#pragma once
#include <cstdint>
#include <limits>

#include "cpu/rows.h"

namespace fastal::cpu {

// A pruned step (k-center, k-means++) reads a chunk whole, in order, when its test keeps at least
// this share of the rows: skipping a few rows here and there saved no time against the sequential
// stream and the hardware prefetcher. On the Zen 4 VM (k-center, float32, 100-component mixture,
// budget 100, where a step keeps from all to almost none of the rows) pruned steps went from 1.15
// to 0.77 ms at n = 100k, d = 128 (unpruned: 0.85-0.93), 4.7 to 4.2 ms at d = 512, 6.3 to 3.8 ms
// at n = 400k; on a Gaussian pool, where the test keeps every row, from 1.22 to 0.91 ms
// (d = 128). Shares of 0.15, 0.25, 0.5, 0.75 and 0.9 were tried; 0.25-0.5 did best. Reading a
// pruned row changes nothing: its distance cannot fall below its mind (see common/prune.h).
constexpr double kReadWholeShare = 0.35;

inline bool read_whole(uint64_t kept, int64_t rows) {
  return static_cast<double>(kept) >= kReadWholeShare * static_cast<double>(rows);
}

// The rows of [i0, i1) that a pruned step must read, as bits (row i0 + 64 w + k is bit k of
// words[w]); returns how many. A row is read unless it is a centre (mind = -inf) or its nearest
// centre a = near[i] satisfies the test against the new centre (centre_dist2[a] = d(c_new, a)^2,
// centre_weight / weight_c: the rows' weights the test needs). Without branches: the outcome,
// branched on one row at a time, mispredicted often enough that a pruned k-center step at d <= 32
// was slower than an unpruned one reading 4x more rows.
template <typename Rows, typename Pruner, typename A>
uint64_t rows_to_read(const Rows& rows, const Pruner& pruner, const A* mind, const int64_t* near,
                      const A* centre_dist2, const A* centre_weight, A weight_c, int64_t i0,
                      int64_t i1, uint64_t* words) {
  constexpr A kCentre = -std::numeric_limits<A>::infinity();
  uint64_t kept = 0;
  for (int64_t w = 0; w * 64 < i1 - i0; ++w) {
    uint64_t bits = 0;
    for (int64_t k = 0, i = i0 + w * 64; k < 64 && i < i1; ++k, ++i) {
      const A m = mind[i];
      const int64_t a = near[i], a0 = a < 0 ? 0 : a;
      const bool pruned = (a >= 0) & pruner.prunable(centre_dist2[a0], m, rows.row_weight(i),
                                                     centre_weight[a0], weight_c);
      bits |= static_cast<uint64_t>((m != kCentre) & !pruned) << k;
    }
    words[w] = bits;
    kept += static_cast<uint64_t>(__builtin_popcountll(bits));
  }
  return kept;
}

// visit(i) for every row of [i0, i1) whose bit is set, in order, prefetching the kept row `ahead`
// rows later in the chunk (ahead = 0: none).
template <typename Rows, typename Visit>
void for_each_kept(const Rows& rows, int64_t ahead, int64_t i0, int64_t i1, const uint64_t* words,
                   Visit&& visit) {
  for (int64_t w = 0; w * 64 < i1 - i0; ++w)
    for (uint64_t bits = words[w]; bits != 0; bits &= bits - 1) {
      const int64_t r = w * 64 + __builtin_ctzll(bits), ra = r + ahead;
      if (ahead > 0 && i0 + ra < i1 && ((words[ra / 64] >> (ra % 64)) & 1))
        rows.prefetch_row(i0 + ra);
      visit(i0 + r);
    }
}

}  // namespace fastal::cpu
