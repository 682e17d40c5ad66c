// One Lloyd iteration that skips the rows whose nearest centre provably stays the same, with the
// labels, sums and counts of lloyd_step (kmeans_lloyd.cpp) bit for bit.
//
// The bounds are those of Yinyang k-means (Ding et al., ICML 2015): each row keeps an upper bound
// on its distance to its own centre and, for each of t groups of centres, a lower bound on its
// distance to the group's other centres. When the centres move by shift[j], the bounds move by
// shift[label] and by the group's largest shift (triangle inequality). A row whose bounds separate
// its centre from every other keeps its label unread; otherwise its own distance is recomputed
// and, if still needed, its distances to the centres of the groups the bounds cannot rule out.
//
// Why the labels equal lloyd_step's: both are the least direct squared distance (ties to the
// lowest index; cpu/lloyd_tile.h). The bounds hold for the exact distances, every rounding of
// this kernel's own arithmetic pushed outwards, and a row is settled only when they put its
// centre first even after the direct distances' rounding (slack). A chunk whose open rows would
// compute more than 1/kDirectShareDen of its distances goes through lloyd_step's own GEMM path,
// which also refreshes its bounds. Sums are added row by row in lloyd_step's order over the same
// chunks and threads.
#include "cpu/omp_compat.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/check.h"
#include "cpu/kernels.h"
#include "cpu/lloyd_tile.h"

namespace fastal::cpu {

namespace {

using lloyd::kChunk;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kInfF = std::numeric_limits<float>::infinity();

// A chunk whose open rows need more than this share of its rows x k distances takes the GEMM: a
// distance computed alone costs several times its share of a GEMM
constexpr int64_t kDirectShareDen = 8;

// The float32 neighbours of a positive float32 (bit steps: std::nextafter is a libm call, and
// these run for every row and group)
float step_float(float f, int32_t by) {
  int32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  bits += by;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Bounds are distances (square roots), stored in float32 rounded outwards.
float round_up(double v) {
  const float f = static_cast<float>(v);
  return static_cast<double>(f) < v ? step_float(f, 1) : f;
}
float lower_of(double v) {
  if (!(v > 0)) return 0;
  const float f = static_cast<float>(v);
  return static_cast<double>(f) > v ? step_float(f, -1) : f;
}
float lower_of_sq(double d2) { return lower_of(std::sqrt(std::max(d2, 0.0))); }
float upper_of_sq(double d2) { return round_up(std::sqrt(std::max(d2, 0.0))); }

// The state of a row: its label, upper (its own centre's distance, at most), glower (every other
// centre's, at least) and, for each group g, lower[g] - offset[g] (the group's other centres', at
// least). offset[g] adds up the group's largest shift over the calls, so a group bound moves
// without being written; a row settled by upper and glower reads nothing else.
template <typename S>
struct Plan {
  using T = Acc<S>;
  int64_t n, d, k, t;
  const S* X;  // rows as stored; the arithmetic is in T (lloyd::widened)
  const T* xsq;
  const T* centres;
  const int32_t* group;  // of each centre, in [0, t)
  const double* offset;  // per group, this call's (after adding its shifts)
  double max_shift;      // the largest shift of any centre in this call
  std::vector<T> csq;
  std::vector<int64_t> members, start;  // centres of group g: members[start[g], start[g + 1])
  lloyd::Margins margins;
  double ratio;                  // sqrt((1 + slack) / (1 - slack)), pushed up
  std::vector<float> offset_up;  // offset rounded up to float32
  std::vector<int32_t> size;     // centres per group

  // The least other-centre bound that puts the own centre (distance at most u) strictly first
  // by direct distance, l²(1 - slack) > u²(1 + slack): l > threshold(u).
  float threshold(double u) const { return round_up(u * ratio); }
  // The group bounds of row i now (stored - offset, rounded down: the float32 difference is
  // within 2^-24 of its value, the scale takes it below) into out; returns their least. One
  // vectorisable pass: rows that miss the global bound all come here.
  float group_bounds(const float* stored, float* out) const {
    constexpr float kDown = 1.0f - 0x1p-22f;
    float least = kInfF;
    for (int64_t g = 0; g < t; ++g) {
      out[g] = std::max((stored[g] - offset_up[g]) * kDown, 0.0f);
      least = std::min(least, out[g]);
    }
    return least;
  }
  float stored_bound(double bound, int64_t g) const {
    return std::isinf(bound) ? kInfF : lower_of(bound + offset[g]);
  }
};

// The scratch of gemm_chunk's bounds, per thread: for each group g and row r of the chunk (at
// [g * kChunk + r]) the least and second least of v_j = tile + |c_j|^2 over the group's centres,
// the first centre holding the least, and the stored group bound; per row its x-terms.
template <typename T>
struct BoundScratch {
  std::vector<T> least, second;
  std::vector<int32_t> holder;
  std::vector<float> stored;
  std::vector<double> x2, two_e;    // per row: |x|^2 and twice the GEMM form's error bound
  std::vector<double> bound;        // per row: the least group bound so far
  std::vector<int32_t> label, own;  // per row: its centre and that centre's group
  explicit BoundScratch(int64_t t)
      : least(static_cast<size_t>(t * kChunk)),
        second(least.size()),
        holder(least.size()),
        stored(least.size()),
        x2(kChunk),
        two_e(kChunk),
        bound(kChunk),
        label(kChunk),
        own(kChunk) {}
};

// lower_of(v) for v >= 0 or +inf, without branches, so that the loops over rows vectorise
inline float lower_of_flat(double v) {
  const float f = static_cast<float>(v);
  int32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  bits -= static_cast<double>(f) > v ? 1 : 0;
  float down;
  std::memcpy(&down, &bits, sizeof down);
  return v > 0 ? down : 0.0f;
}
inline float lower_of_sq_flat(double d2) { return lower_of_flat(std::sqrt(std::max(d2, 0.0))); }

// Every row of the chunk through lloyd_step's GEMM path; fresh bounds from the tile. wide: room
// for the chunk's rows as T when X is stored otherwise. The bounds are computed a group at a
// time over the chunk's rows (contiguous, branch-free: it vectorises), then written per row.
template <typename S, typename T = Acc<S>>
void gemm_chunk(const Plan<S>& p, lloyd::Gemm<T> gemm, int64_t r0, int64_t rows, T* tile, T* best,
                T* second, int32_t* arg, T* dist2, uint8_t* resolved, BoundScratch<T>& b, T* wide,
                int64_t* labels, float* upper, float* glower, float* lower) {
  const T* xc = lloyd::widened(p.X + r0 * p.d, rows * p.d, wide);
  lloyd::gemm_tile(gemm, xc, rows, p.centres, p.k, p.d, tile);
  lloyd::first_argmin_columns(tile, rows, rows, p.k, p.csq.data(), best, second, arg);
  lloyd::chunk_labels(p.margins, xc, p.xsq + r0, p.centres, p.d, tile, rows, p.k, p.csq.data(),
                      best, second, arg, labels + r0, dist2, resolved);
  constexpr T kInfT = std::numeric_limits<T>::infinity();
  const double slack = p.margins.slack;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = r0 + r, a = labels[i];
    b.x2[r] = static_cast<double>(p.xsq[i]);
    b.two_e[r] = 2 * p.margins.gemm(b.x2[r]);
    b.bound[r] = kInf;
    b.label[r] = static_cast<int32_t>(a);
    b.own[r] = p.group[a];
    upper[i] = upper_of_sq(static_cast<double>(dist2[r]) * (1 + 2 * slack));  // direct
  }
  for (int64_t g = 0; g < p.t; ++g) {
    T* m1 = b.least.data() + g * kChunk;
    T* m2 = b.second.data() + g * kChunk;
    int32_t* holder = b.holder.data() + g * kChunk;
    std::fill(m1, m1 + rows, kInfT);
    std::fill(m2, m2 + rows, kInfT);
    std::fill(holder, holder + rows, -1);
    for (int64_t m = p.start[g]; m < p.start[g + 1]; ++m) {
      const int32_t j = static_cast<int32_t>(p.members[m]);
      const T* col = tile + static_cast<int64_t>(j) * rows;
      const T c = p.csq[j];
      for (int64_t r = 0; r < rows; ++r) {
        const T v = col[r] + c;
        const bool lt = v < m1[r];  // ties keep the first holder; the second least takes v
        m2[r] = lt ? m1[r] : std::min(m2[r], v);
        holder[r] = lt ? j : holder[r];
        m1[r] = lt ? v : m1[r];
      }
    }
    // the group's other centres: for the row's own group, the least without its own centre
    float* stored = b.stored.data() + g * kChunk;
    const double off = p.offset[g];
    for (int64_t r = 0; r < rows; ++r) {
      const bool mine = b.own[r] == g && holder[r] == b.label[r];
      const double v = static_cast<double>(mine ? m2[r] : m1[r]);
      const float lo = lower_of_sq_flat(v + b.x2[r] - b.two_e[r]);  // inf stays inf
      stored[r] = lower_of_flat(static_cast<double>(lo) + off);
      b.bound[r] = std::min(b.bound[r], static_cast<double>(lo));
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = r0 + r;
    float* lo = lower + i * p.t;
    for (int64_t g = 0; g < p.t; ++g) lo[g] = b.stored[g * kChunk + r];
    glower[i] = std::isinf(b.bound[r]) ? kInfF : static_cast<float>(b.bound[r]);  // a float
  }
}

// Phase 2 for one open row: its direct distances to its own centre (own, computed) and to the
// centres of every group its bounds leave open (bound[g]: the group bounds now); returns the least
// (ties to the lowest index) and updates its bounds. Groups left closed hold only centres farther
// by direct distance. wide: room for the row as T when X is stored otherwise.
template <typename S, typename T = Acc<S>>
int64_t open_row(const Plan<S>& p, int64_t i, int64_t a, double own, float* bound, double* cand,
                 uint8_t* checked, T* wide, float* upper, float* glower, float* lower,
                 int64_t* computed) {
  const T* x = lloyd::widened(p.X + i * p.d, p.d, wide);
  float* lo = lower + i * p.t;
  const double slack = p.margins.slack;
  const float threshold = p.threshold(std::sqrt(own * (1 + 2 * slack)));
  int64_t win = a;
  double win_d = own;
  for (int64_t g = 0; g < p.t; ++g) {
    checked[g] = !(bound[g] > threshold);
    if (!checked[g]) continue;
    for (int64_t m = p.start[g]; m < p.start[g + 1]; ++m) {
      const int64_t j = p.members[m];
      if (j == a) {
        cand[j] = own;
        continue;
      }
      cand[j] = static_cast<double>(sqdist(x, p.centres + j * p.d, p.d));
      ++*computed;
      if (cand[j] < win_d || (cand[j] == win_d && j < win)) win = j, win_d = cand[j];
    }
  }
  float least = kInfF;
  for (int64_t g = 0; g < p.t; ++g) {
    if (checked[g]) {
      double v = kInf;
      for (int64_t m = p.start[g]; m < p.start[g + 1]; ++m) {
        const int64_t j = p.members[m];
        if (j != win) v = std::min(v, cand[j]);
      }
      bound[g] = std::isinf(v) ? kInfF : lower_of_sq(v * (1 - slack));
      lo[g] = p.stored_bound(bound[g], g);
    } else if (win != a && p.group[a] == g) {  // the old centre is now one of the others
      bound[g] = std::min(bound[g], lower_of_sq(own * (1 - slack)));
      lo[g] = std::min(lo[g], p.stored_bound(bound[g], g));
    }
    least = std::min(least, bound[g]);
  }
  glower[i] = least;
  upper[i] = upper_of_sq(win_d * (1 + 2 * slack));
  return win;
}

}  // namespace

template <typename S>
int64_t lloyd_step_bounded(const S* X, int64_t n, int64_t d, const Acc<S>* xsq,
                           const Acc<S>* centres, int64_t k, const double* shift,
                           const int32_t* group, int64_t t, bool fresh, uintptr_t gemm_address,
                           uintptr_t threads_local_address, int64_t* labels, float* upper,
                           float* glower, float* lower, double* offset, double* sums,
                           int64_t* counts, int64_t partial_limit) {
  using T = Acc<S>;
  FASTAL_REQUIRE(d <= std::numeric_limits<int>::max() && k <= std::numeric_limits<int>::max(),
                 "d and k must fit a 32-bit BLAS integer");
  const auto gemm = reinterpret_cast<lloyd::Gemm<T>>(gemm_address);
  const auto threads_local = reinterpret_cast<lloyd::SetThreadsLocal>(threads_local_address);
  // this call's group offsets: the old ones plus each group's largest shift (rounded up)
  std::vector<double> group_shift(static_cast<size_t>(t), 0.0);
  double max_shift = 0;
  for (int64_t j = 0; j < k && !fresh; ++j) {
    group_shift[group[j]] = std::max(group_shift[group[j]], shift[j]);
    max_shift = std::max(max_shift, shift[j]);
  }
  for (int64_t g = 0; g < t; ++g)
    offset[g] = fresh ? 0.0 : (offset[g] + group_shift[g]) * (1 + 1e-15);
  Plan<S> p{n,       d,
            k,       t,
            X,       xsq,
            centres, group,
            offset,  max_shift * (1 + 1e-15),
            {},      {},
            {},      lloyd::Margins(centres, k, d),
            0.0,     {},
            {}};
  p.csq.resize(static_cast<size_t>(k));
  lloyd::centre_sqnorms(centres, k, d, p.csq.data());
  p.ratio = std::sqrt((1 + p.margins.slack) / (1 - p.margins.slack)) * (1 + 1e-15);
  p.offset_up.resize(static_cast<size_t>(t));
  for (int64_t g = 0; g < t; ++g) p.offset_up[g] = round_up(offset[g]);
  p.start.assign(static_cast<size_t>(t + 1), 0);
  for (int64_t j = 0; j < k; ++j) ++p.start[group[j] + 1];
  for (int64_t g = 0; g < t; ++g) p.start[g + 1] += p.start[g];
  p.size.resize(static_cast<size_t>(t));
  for (int64_t g = 0; g < t; ++g) p.size[g] = static_cast<int32_t>(p.start[g + 1] - p.start[g]);
  p.members.resize(static_cast<size_t>(k));
  {
    std::vector<int64_t> fill(p.start.begin(), p.start.end() - 1);
    for (int64_t j = 0; j < k; ++j) p.members[fill[group[j]]++] = j;
  }

  const int threads = omp_get_max_threads();
  // sized as rows of T, as lloyd_step does
  lloyd::RowSums row_sums(threads, n, k, d, d * static_cast<int64_t>(sizeof(T)), partial_limit);
  std::vector<int64_t> computed(static_cast<size_t>(threads), 0);
  const int64_t chunk = lloyd::chunk_rows(k), chunks = (n + chunk - 1) / chunk;
#pragma omp parallel num_threads(threads)
  {
    const int th = omp_get_thread_num();
    const int one = 1;
    const int saved = threads_local ? threads_local(&one) : 0;
    std::vector<T> tile(static_cast<size_t>(chunk * k)), best(kChunk), second(kChunk);
    std::vector<T> dist2(kChunk);
    BoundScratch<T> scratch(t);
    std::vector<int32_t> arg(kChunk);
    std::vector<double> own(kChunk), cand(static_cast<size_t>(k));
    std::vector<float> bounds(static_cast<size_t>(kChunk * t));  // the open rows' group bounds
    std::vector<uint8_t> open(kChunk), resolved(kChunk), checked(static_cast<size_t>(t));
    std::vector<T> wide(std::is_same_v<S, T> ? 0 : static_cast<size_t>(chunk * d));
    int64_t my_computed = 0;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < chunks; ++b) {
      const int64_t r0 = b * chunk, rows = std::min(chunk, n - r0);
      int64_t needed = 0;  // distances the open rows would compute
      // 1. move the bounds; settle the rows they can: by the global bound, then with the own
      // distance, then with the group bounds
      for (int64_t r = 0; r < rows && !fresh; ++r) {
        const int64_t i = r0 + r, a = labels[i];
        float l = lower_of(static_cast<double>(glower[i]) - p.max_shift);
        double u = static_cast<double>(upper[i]) + shift[a];
        open[r] = 0;
        if (!(l > p.threshold(u))) {
          const T* x = lloyd::widened(X + i * d, d, wide.data());
          own[r] = static_cast<double>(sqdist(x, centres + a * d, d));
          ++my_computed;
          u = std::sqrt(own[r] * (1 + 2 * p.margins.slack));
          const float threshold = p.threshold(u);
          if (!(l > threshold)) {
            float* bound = bounds.data() + r * t;
            l = p.group_bounds(lower + i * t, bound);
            if (!(l > threshold)) {
              open[r] = 1;
              int64_t more = 0;
              for (int64_t g = 0; g < t; ++g) more += bound[g] > threshold ? 0 : p.size[g];
              needed += more;
            }
          }
        }
        upper[i] = round_up(u);
        glower[i] = l;
      }
      if (fresh || needed * kDirectShareDen > rows * k) {
        gemm_chunk(p, gemm, r0, rows, tile.data(), best.data(), second.data(), arg.data(),
                   dist2.data(), resolved.data(), scratch, wide.data(), labels, upper, glower,
                   lower);
        my_computed += rows * k;
      } else {
        // 2. the open rows: their distances to the centres of the groups left open
        for (int64_t r = 0; r < rows; ++r)
          if (open[r])
            labels[r0 + r] =
                open_row(p, r0 + r, labels[r0 + r], own[r], bounds.data() + r * t, cand.data(),
                         checked.data(), wide.data(), upper, glower, lower, &my_computed);
      }
      for (int64_t r = 0; r < rows; ++r) row_sums.add(th, labels[r0 + r], X + (r0 + r) * d);
    }
    computed[th] = my_computed;
    if (threads_local) threads_local(&saved);
    row_sums.finish(X, labels, sums, counts);
  }
  int64_t total = 0;
  for (int64_t c : computed) total += c;
  return total;
}

#define FASTAL_INSTANTIATE(S)                                                                      \
  template int64_t lloyd_step_bounded<S>(const S*, int64_t, int64_t, const Acc<S>*, const Acc<S>*, \
                                         int64_t, const double*, const int32_t*, int64_t, bool,    \
                                         uintptr_t, uintptr_t, int64_t*, float*, float*, float*,   \
                                         double*, double*, int64_t*, int64_t);
FASTAL_INSTANTIATE(float)
FASTAL_INSTANTIATE(double)
FASTAL_INSTANTIATE(Half)
FASTAL_INSTANTIATE(BFloat16)
#undef FASTAL_INSTANTIATE

}  // namespace fastal::cpu
