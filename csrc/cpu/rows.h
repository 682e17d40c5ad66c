// The two kinds of pool the distance kernels read: a dense matrix X (n x d) and a factored
// gradient embedding g_i = A_i (x) H_i (A: n x C, H: n x dh, sqnorm_i = |A_i|^2 |H_i|^2). Both give
// a "centre" buffer in the accumulation type (prepare) and the squared distance of a row to it
// (dist2), so k-center, min-distance and k-means++ are written once for both.
//
// Factored distance: |g_i - g_c|^2 = sqnorm_i + sqnorm_c - 2 (A_i . A_c)(H_i . H_c), O(C + dh).
// Its rounding error is absolute, about (C + dh) u (sqnorm_i + sqnorm_c), not relative to the
// distance, so the exact pruning test (prunable) adds that margin; see common/prune.h for the
// dense rule. Where it cancels to that noise (near copies), a cancellation-free form is used.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/prune.h"
#include "cpu/simd.h"

namespace fastal::cpu {

// Streaming kernels (one new centre against every row) prefetch the row they will read about
// kPrefetchAhead bytes later, within their own chunk of rows and only if that row will be read. It
// pays for 16-bit storage out of cache: there the conversion work delays the demand loads enough
// that the hardware prefetcher alone left a float16 step at 1.3-1.6x the speed of float32 on the
// 2-core development VM, against ~2x with it. For float32 / float64 rows and for pools that fit in
// cache it measured neutral to 15% slower, so those kernels do not prefetch.
constexpr int64_t kPrefetchAhead = 2048;
constexpr int64_t kPrefetchMinBytes = int64_t{8} << 20;

inline void prefetch_bytes(const void* p, int64_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
  const char* b = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(b + o, 0, 3);
  if (bytes > 0) __builtin_prefetch(b + bytes - 1, 0, 3);  // the last line when p is unaligned
#else
  (void)p;
  (void)bytes;
#endif
}

// How many rows ahead a kernel reading `rows` in order should prefetch; 0: it should not.
template <typename Rows>
int64_t prefetch_rows_ahead(const Rows& rows) {
  const int64_t row_bytes = rows.row_bytes();
  const bool narrow = sizeof(typename Rows::Storage) == 2;
  if (!narrow || row_bytes <= 0 || rows.n * row_bytes < kPrefetchMinBytes) return 0;
  return std::max<int64_t>(1, (kPrefetchAhead + row_bytes - 1) / row_bytes);
}

// Pruned steps read a sparse subset of the rows, which the hardware prefetchers follow poorly:
// there, prefetching each kept row about kPrunedPrefetchAhead bytes of pool ahead paid for every
// storage type out of cache (a 100-component mixture with a quarter of the rows kept: float32
// d = 128 went from 2.7 to 1.9-2.0 ms per step, d = 512 from 1.3 to 1.0; float16 d = 128 from 1.6
// to 1.3). Further ahead, an unclustered pool (every row kept) slowed down again.
constexpr int64_t kPrunedPrefetchAhead = int64_t{32} << 10;

template <typename Rows>
int64_t pruned_prefetch_rows_ahead(const Rows& rows) {
  const int64_t row_bytes = rows.row_bytes();
  if (row_bytes <= 0 || rows.n * row_bytes < kPrefetchMinBytes) return 0;
  return std::max<int64_t>(1, kPrunedPrefetchAhead / row_bytes);
}

template <typename T>
struct DenseRows {
  using Storage = T;
  using A = Acc<T>;
  const T* X;
  int64_t n, d;

  int64_t centre_size() const { return d; }
  int64_t row_work() const { return d; }  // elements read per distance
  void prepare(int64_t c, A* out) const { prepare_centre(X + c * d, out, d); }
  A dist2(int64_t i, const A* centre) const { return sqdist(X + i * d, centre, d); }
  int64_t row_bytes() const { return d * int64_t(sizeof(T)); }
  void prefetch_row(int64_t i) const { prefetch_bytes(X + i * d, row_bytes()); }

  // True when the row cannot get strictly closer to the new centre (see common/prune.h).
  struct Pruner {
    A factor;
    bool prunable(A centre_dist2, A mind, A, A, A) const { return centre_dist2 >= factor * mind; }
  };
  Pruner pruner() const { return {prune_factor<A>(d, std::numeric_limits<A>::epsilon() / 2)}; }
  A row_weight(int64_t) const { return 0; }
};

// H_i is the stored row (hs values) followed, when bias, by an implicit 1 (the bias gradient's
// column, never stored: a pool's features serve as H without a copy); dh = hs + bias.
template <typename T>
struct FactoredRows {
  using Storage = T;
  using A = Acc<T>;
  const T* Am;      // n x C
  const T* H;       // n x hs
  const A* sqnorm;  // n
  int64_t n, C, dh, hs;
  bool bias;

  // H_i's dh values, prepared (the implicit 1 included).
  void prepare_h(int64_t i, A* out) const {
    prepare_centre(H + i * hs, out, hs);
    if (bias) out[hs] = A(1);
  }
  // centre layout: A_c (C values), H_c (dh values), sqnorm_c
  int64_t centre_size() const { return C + dh + 1; }
  int64_t row_work() const { return C + dh; }
  void prepare(int64_t c, A* out) const {
    prepare_centre(Am + c * C, out, C);
    prepare_h(c, out + C);
    out[C + dh] = sqnorm[c];
  }
  A dist2(int64_t i, const A* centre) const {
    const A da = dot(Am + i * C, centre, C);
    const A dh_ = dot(H + i * hs, centre + C, hs) + (bias ? centre[C + hs] : A(0));
    const A s = sqnorm[i] + centre[C + dh];
    const A r = s - 2 * da * dh_;
    // Near a copy of the centre the expansion is rounding noise, ~e s rather than 0: an exact
    // duplicate of a chosen row kept a D^2 weight that could swamp the rows of small gradient.
    if (near_copy_suspect(r, s, near_copy_limit()))
      return near_copy(i, centre, r > 0 ? r : A(0), s);
    return r > 0 ? r : A(0);  // s = 0 with a product that did not underflow: r < 0, i.e. 0
  }
  // Whether the expansion r may be a near copy's rounding noise (limit: near_copy_limit()). Two
  // zero rows (s = 0: one-hot probabilities, or 16-bit A of confident rows rounded to 0) are at 0
  // already, not suspects. Branch-free: it runs in the blocks' vectorised loops.
  A near_copy_limit() const { return 2 * error_scale(); }
  static bool near_copy_suspect(A r, A s, A limit) { return (s > 0) & (r <= limit * s); }
  // e of the Pruner: |D - delta| <= e (s_i + s_c) for every distance dist2 returns.
  A error_scale() const {
    return static_cast<A>(4.0 * double(C + dh + 8) * (std::numeric_limits<A>::epsilon() / 2));
  }
  // |g_i - g_c|^2 without the cancellation: A_i H_i^T - A_c H_c^T = dA H_i^T + A_c dH^T, so it is
  // |dA|^2 |H_i|^2 + |A_c|^2 |dH|^2 + 2 (dA . A_c)(H_i . dH): 0 for a copy. Its error is within
  // e (|dA| |H_i| + |A_c| |dH|)^2; it is kept only where that is within e s, the expansion's
  // bound, so the pruning tests (Pruner) hold for whichever is returned. Rare: not vectorised.
  A near_copy(int64_t i, const A* centre, A expanded, A s) const {
    thread_local std::vector<A> row;  // the row laid out as the centre is (no allocation per call)
    row.resize(static_cast<size_t>(C + dh));
    prepare_centre(Am + i * C, row.data(), C);
    prepare_h(i, row.data() + C);
    A daa = 0, dac = 0, acc = 0, hii = 0, dhh = 0, hid = 0;
    for (int64_t k = 0; k < C; ++k) {
      const A x = row[k], c = centre[k], dl = x - c;
      daa += dl * dl, dac += dl * c, acc += c * c;
    }
    for (int64_t k = C; k < C + dh; ++k) {
      const A x = row[k], c = centre[k], dl = x - c;
      hii += x * x, dhh += dl * dl, hid += x * dl;
    }
    const A t1 = daa * hii, t2 = acc * dhh;
    const A bound = std::sqrt(t1) + std::sqrt(t2);
    if (!(bound * bound <= s)) return expanded;
    const A r = t1 + t2 + 2 * dac * hid;
    return r > 0 ? r : A(0);
  }
  int64_t row_bytes() const { return (C + hs) * int64_t(sizeof(T)); }
  void prefetch_row(int64_t i) const {
    prefetch_bytes(Am + i * C, C * int64_t(sizeof(T)));
    prefetch_bytes(H + i * hs, hs * int64_t(sizeof(T)));
  }
  A row_weight(int64_t i) const { return sqnorm[i]; }

  // With |D - delta| <= E for the three computed distances involved (E = e (s_i + s_a + s_c)),
  // D(c, a) >= 4 mind + 5E implies delta(i, c) >= mind + E, hence D(i, c) >= mind: exact.
  // e = 4 (C + dh + 8) u covers the two dot products, their product, the sums and the rounding of
  // the stored sqnorm (a sum of C and of dh squares, computed outside this kernel), with room.
  struct Pruner {
    A factor, e5;
    bool prunable(A centre_dist2, A mind, A s_i, A s_a, A s_c) const {
      return centre_dist2 >= factor * mind + e5 * (s_i + s_a + s_c);
    }
  };
  Pruner pruner() const {
    const double u = std::numeric_limits<A>::epsilon() / 2;
    return {prune_factor<A>(C + dh, u), static_cast<A>(5.0 * 4.0 * double(C + dh + 8) * u)};
  }
};

}  // namespace fastal::cpu
