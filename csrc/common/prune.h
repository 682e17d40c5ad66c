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

}  // namespace fastal
