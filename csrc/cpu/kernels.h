// CPU kernels: plain pointers and sizes in, results out; no Python here. Storage type T is one of
// float, double, Half, BFloat16 (see simd.h); distances are squared and accumulated in Acc<T>.
#pragma once
#include <cstdint>

#include "cpu/simd.h"

namespace fastal::cpu {

// For every row of X (n x d), the squared distance to the nearest row of Y (m x d) and that row's
// index (ties: lowest index). X is read in blocks and Y in cache-sized tiles: no n x m matrix.
template <typename T>
void min_sqdist_to_set(const T* X, int64_t n, const T* Y, int64_t m, int64_t d, Acc<T>* out_dist2,
                       int64_t* out_index);

// Rows of X (n x d) holding a NaN or an infinity: returns their count, and the first one in *first.
template <typename T>
int64_t count_nonfinite_rows(const T* X, int64_t n, int64_t d, int64_t* first);

// Sum of a float array with all threads: the read-bandwidth probe of the benchmarks.
double parallel_sum(const float* x, int64_t n);

// k-center greedy state. mind[i] is the squared distance of row i to its nearest centre, -inf for
// a centre, +inf before any centre exists; near[i] is that centre's position in `centres`.
template <typename T>
struct KCenterState {
  const T* X;
  int64_t n, d;
  Acc<T>* mind;
  int64_t* near;
  int64_t* centres;    // capacity n_labeled + budget: the labeled points, then the picks
  int64_t n_labeled;
  int64_t budget;
  int64_t* picks;      // budget; picks[0] is set before the first step
  Acc<T>* radius2;     // budget; largest mind after each pick (0 once every point is a centre)
  bool prune;
  uint64_t rows_read;  // rows whose distance to a new centre was computed
};

// Initialises mind/near from the labeled rows and sets picks[0] to the farthest point; returns the
// squared covering radius of the labeled set. Requires n_labeled >= 1.
template <typename T>
Acc<T> kcenter_init_labeled(KCenterState<T>& s, const T* labeled_rows);

// Initialises mind = +inf, near = -1 and picks[0] = first (no labeled set).
template <typename T>
void kcenter_init_first(KCenterState<T>& s, int64_t first);

// Runs greedy steps [t_begin, t_end): each adds picks[t] as a centre, updates mind in one fused
// pass with the arg-max, and writes radius2[t] and picks[t + 1].
template <typename T>
void kcenter_steps(KCenterState<T>& s, int64_t t_begin, int64_t t_end);

}  // namespace fastal::cpu
