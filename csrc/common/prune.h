// The exact triangle-inequality pruning rule of k-center greedy, shared by CPU and CUDA.
//
// A row whose nearest centre a satisfies d(c, a) >= 2 mind cannot get strictly closer to the new
// centre c, since d(x, c) >= d(c, a) - d(x, a) >= mind. In squared terms: dca2 >= 4 mind2. The
// computed squared distances carry a relative error below (d + 4) u (u: unit roundoff of the
// accumulation type), so the test uses 4 (1 + slack)^2 with slack = 3 (d + 4) u: a pruned row's
// computed distance could not have been strictly below its current mind, and the picks match the
// unpruned kernel exactly.
#pragma once
#include <cstdint>

#include "common/key.h"

namespace fastal {

template <typename Acc>
FASTAL_HD Acc prune_factor(int64_t d, double unit_roundoff) {
  const double slack = 3.0 * (static_cast<double>(d) + 4.0) * unit_roundoff;
  return static_cast<Acc>(4.0 * (1.0 + slack) * (1.0 + slack));
}

// Whether the step that adds centre number pos (pos earlier centres, labeled ones included) to a
// pool of n rows prunes. The test needs d(c_new, a) for every earlier centre a: pos row reads,
// which pay only while the centres are few next to the rows. At most a fifth of the pool keeps
// those reads under a quarter of what an unpruned step reads (n - pos rows); past it (a large
// labeled set, or a budget near n) the step reads every row. pos only grows, so once off it stays
// off; the near[] bookkeeping stays exact either way, and the picks do not change.
FASTAL_HD bool prune_step(bool prune, int64_t pos, int64_t n) { return prune && 5 * pos <= n; }

// The centre-to-centre rows that the pruned steps t_begin <= t < t_end read (reported with the
// rows of the passes, so that rows_read counts every row read).
inline int64_t centre_rows_read(bool prune, int64_t n_labeled, int64_t t_begin, int64_t t_end,
                                int64_t n) {
  int64_t reads = 0;
  for (int64_t t = t_begin; t < t_end; ++t)
    if (prune_step(prune, n_labeled + t, n)) reads += n_labeled + t;
  return reads;
}

}  // namespace fastal
