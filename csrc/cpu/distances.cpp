// Min-distance-to-a-set, indexed float64 distances, the finiteness scan and the bandwidth probe
// (CPU, OpenMP).
#include "cpu/omp_compat.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"

namespace fastal::cpu {

namespace {
constexpr int64_t kRowsPerBlock = 16;              // rows of X kept hot while a Y tile streams by
constexpr int64_t kTileBytes = 256 * 1024;         // a Y tile, in the accumulation type, fits in L2
constexpr int64_t kSerialWork = int64_t{1} << 15;  // below this many elements, one thread is faster

// The nearest centre so far of one row: strict < keeps the lowest j on ties (centres are offered
// in increasing j), and a NaN distance still gets an index.
template <typename A>
inline void offer(A dd, int64_t j, A& best, int64_t& arg) {
  if (dd < best || arg < 0) {
    best = dd;
    arg = j;
  }
}

#ifdef FASTAL_AVX512
// Register blocks of the min-distance kernel: kBlockRows rows x kBlockCentres centres, one
// accumulator each (24 of the 32 AVX-512 registers). Every row vector loaded serves 4 centres and
// every centre vector 6 rows: one Zen 5 core ran ~76 G squared differences per second at d = 512
// (float32), against ~20 for one row-centre pair at a time, which loads both vectors for each
// product.
constexpr int kBlockRows = 6, kBlockCentres = 4;  // Wide::sum4 reduces 4 centres
constexpr int64_t kTaskRows = 16 * kBlockRows;    // rows per OpenMP task, widened once
constexpr int64_t kMinBlockedCentres = 8;

template <typename A>
struct Wide;
template <>
struct Wide<float> {
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int n = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p, Mask in) { return _mm512_maskz_loadu_ps(in, p); }
  static V loadu(const float* p) { return _mm512_loadu_ps(p); }
  static V fma(V x, V c, V acc) { return _mm512_fmadd_ps(x, c, acc); }
  static V sq_add(V x, V c, V acc) {
    const V t = _mm512_sub_ps(x, c);
    return _mm512_fmadd_ps(t, t, acc);
  }
  // out[q] = the sum of v[q]'s lanes, q < 4: 14 instructions where four reductions take ~32
  static void sum4(const V (&v)[4], float* out) {
    const V s01 = _mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], 0x44),
                                _mm512_shuffle_f32x4(v[0], v[1], 0xee));
    const V s23 = _mm512_add_ps(_mm512_shuffle_f32x4(v[2], v[3], 0x44),
                                _mm512_shuffle_f32x4(v[2], v[3], 0xee));
    // 128-bit lane q: four partial sums of v[q]
    V r = _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xdd));
    r = _mm512_add_ps(r, _mm512_permute_ps(r, 0x4e));
    r = _mm512_add_ps(r, _mm512_permute_ps(r, 0xb1));
    const __m512i first = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm_storeu_ps(out, _mm512_castps512_ps128(_mm512_permutexvar_ps(first, r)));
  }
};
template <>
struct Wide<double> {
  using V = __m512d;
  using Mask = __mmask8;
  static constexpr int n = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const double* p, Mask in) { return _mm512_maskz_loadu_pd(in, p); }
  static V loadu(const double* p) { return _mm512_loadu_pd(p); }
  static V fma(V x, V c, V acc) { return _mm512_fmadd_pd(x, c, acc); }
  static V sq_add(V x, V c, V acc) {
    const V t = _mm512_sub_pd(x, c);
    return _mm512_fmadd_pd(t, t, acc);
  }
  static void sum4(const V (&v)[4], double* out) {
    const V s01 = _mm512_add_pd(_mm512_shuffle_f64x2(v[0], v[1], 0x44),
                                _mm512_shuffle_f64x2(v[0], v[1], 0xee));
    const V s23 = _mm512_add_pd(_mm512_shuffle_f64x2(v[2], v[3], 0x44),
                                _mm512_shuffle_f64x2(v[2], v[3], 0xee));
    // 128-bit lane q: two partial sums of v[q]
    V r = _mm512_add_pd(_mm512_shuffle_f64x2(s01, s23, 0x88), _mm512_shuffle_f64x2(s01, s23, 0xdd));
    r = _mm512_add_pd(r, _mm512_permute_pd(r, 0x55));
    const __m512i first = _mm512_setr_epi64(0, 2, 4, 6, 0, 0, 0, 0);
    _mm256_storeu_pd(out, _mm512_castpd512_pd256(_mm512_permutexvar_pd(first, r)));
  }
};

// out[r][q] = sum_k (x[r][k] - c[q][k])^2 (SQ) or sum_k x[r][k] c[q][k] over off <= k < off + len;
// lanes past the end load as 0 on both sides.
template <bool SQ, typename A>
void reduce_block(const A* const (&x)[kBlockRows], const A* const (&c)[kBlockCentres], int64_t off,
                  int64_t len, A (&out)[kBlockRows][kBlockCentres]) {
  using W = Wide<A>;
  using V = typename W::V;
  auto term = [](V xv, V cv, V acc) { return SQ ? W::sq_add(xv, cv, acc) : W::fma(xv, cv, acc); };
  V acc[kBlockRows][kBlockCentres];
  for (auto& row : acc)
    for (auto& a : row) a = W::zero();
  // whole vectors without masks: with a mask in this loop GCC kept the accumulators in memory
  // too, which halved the speed
  const int64_t full = off + len / W::n * W::n, end = off + len;
  for (int64_t k = off; k < full; k += W::n) {
    V xv[kBlockRows];
    for (int r = 0; r < kBlockRows; ++r) xv[r] = W::loadu(x[r] + k);
    for (int q = 0; q < kBlockCentres; ++q) {
      const V cv = W::loadu(c[q] + k);
      for (int r = 0; r < kBlockRows; ++r) acc[r][q] = term(xv[r], cv, acc[r][q]);
    }
  }
  if (full < end) {
    const auto in = static_cast<typename W::Mask>((1u << (end - full)) - 1u);
    V xv[kBlockRows];
    for (int r = 0; r < kBlockRows; ++r) xv[r] = W::load(x[r] + full, in);
    for (int q = 0; q < kBlockCentres; ++q) {
      const V cv = W::load(c[q] + full, in);
      for (int r = 0; r < kBlockRows; ++r) acc[r][q] = term(xv[r], cv, acc[r][q]);
    }
  }
  for (int r = 0; r < kBlockRows; ++r) W::sum4(acc[r], out[r]);
}

// Where the blocked kernel keeps a task's rows and the centres: the prepared values (prepare_centre
// layout), at a fixed stride. Dense rows use the centres' own layout and stride d; factored rows
// start A_i and H_i each on a 64-byte boundary, zero-padded to whole vectors, then |g_i|^2: at the
// prepared stride C + dh + 1 most vector loads straddled two cache lines, which cost ~2x.
template <typename A>
constexpr int64_t padded(int64_t len) {
  return (len + Wide<A>::n - 1) / Wide<A>::n * Wide<A>::n;
}
template <typename T>
int64_t block_stride(const DenseRows<T>& rows) {
  return rows.d;
}
template <typename T>
int64_t block_stride(const FactoredRows<T>& rows) {
  using A = Acc<T>;
  return padded<A>(rows.C) + padded<A>(rows.dh) + Wide<A>::n;
}
// Row i in the block layout (out: block_stride values, zeroed beyond the data).
template <typename T>
void block_row(const DenseRows<T>& rows, int64_t i, Acc<T>* out) {
  rows.prepare(i, out);
}
template <typename T>
void block_row(const FactoredRows<T>& rows, int64_t i, Acc<T>* out) {
  const int64_t ca = padded<Acc<T>>(rows.C), ch = padded<Acc<T>>(rows.dh);
  std::fill(out, out + block_stride(rows), Acc<T>(0));
  prepare_centre(rows.Am + i * rows.C, out, rows.C);
  rows.prepare_h(i, out + ca);
  out[ca + ch] = rows.sqnorm[i];
}
// A centre (rows.prepare's layout) in the block layout.
template <typename T>
void block_centre(const FactoredRows<T>& rows, const Acc<T>* prepared, Acc<T>* out) {
  const int64_t ca = padded<Acc<T>>(rows.C), ch = padded<Acc<T>>(rows.dh);
  std::fill(out, out + block_stride(rows), Acc<T>(0));
  std::copy(prepared, prepared + rows.C, out);
  std::copy(prepared + rows.C, prepared + rows.C + rows.dh, out + ca);
  out[ca + ch] = prepared[rows.C + rows.dh];
}

// A block's squared distances: x[r] and c[q] in the block layout.
// Returns whether some distance may be a near copy's rounding noise (factored rows only).
template <typename T>
bool block_dist2(const DenseRows<T>& rows, const Acc<T>* const (&x)[kBlockRows],
                 const Acc<T>* const (&c)[kBlockCentres],
                 Acc<T> (&out)[kBlockRows][kBlockCentres]) {
  reduce_block<true>(x, c, 0, rows.d, out);
  return false;
}
// Factored rows: FactoredRows::dist2's |g_i|^2 + |g_c|^2 - 2 (a_i . a_c)(h_i . h_c), clamped at 0,
// with the two dot products in blocks (the zero padding adds nothing).
template <typename T>
bool block_dist2(const FactoredRows<T>& rows, const Acc<T>* const (&x)[kBlockRows],
                 const Acc<T>* const (&c)[kBlockCentres],
                 Acc<T> (&out)[kBlockRows][kBlockCentres]) {
  using A = Acc<T>;
  const int64_t ca = padded<A>(rows.C), ch = padded<A>(rows.dh);
  const A limit = rows.near_copy_limit();
  A da[kBlockRows][kBlockCentres], dh[kBlockRows][kBlockCentres];
  reduce_block<false>(x, c, 0, ca, da);
  reduce_block<false>(x, c, ca, ch, dh);
  bool near = false;
  for (int r = 0; r < kBlockRows; ++r)
    for (int q = 0; q < kBlockCentres; ++q) {
      const A s = x[r][ca + ch] + c[q][ca + ch];
      const A v = s - 2 * da[r][q] * dh[r][q];
      near |= FactoredRows<T>::near_copy_suspect(v, s, limit);
      out[r][q] = v > 0 ? v : A(0);
    }
  return near;
}

// Near a copy of the centre the factored expansion is rounding noise, ~e s rather than 0: as in
// FactoredRows::dist2, such distances are recomputed without the cancellation (an exact copy of a
// labeled row got a small positive distance in blocks, and k-center picked it). Dense: nothing.
// Block rows i.. (nr of them) against centres j.. (nc of them; prepared layout in `centres`).
template <typename T>
void recompute_near_copies(const DenseRows<T>&, const Acc<T>* const (&)[kBlockRows],
                           const Acc<T>* const (&)[kBlockCentres], const Acc<T>*, int64_t, int64_t,
                           int64_t, int64_t, Acc<T> (&)[kBlockRows][kBlockCentres]) {}
template <typename T>
void recompute_near_copies(const FactoredRows<T>& rows, const Acc<T>* const (&x)[kBlockRows],
                           const Acc<T>* const (&c)[kBlockCentres], const Acc<T>* centres,
                           int64_t i, int64_t nr, int64_t j, int64_t nc,
                           Acc<T> (&out)[kBlockRows][kBlockCentres]) {
  using A = Acc<T>;
  const int64_t at = padded<A>(rows.C) + padded<A>(rows.dh), cs = rows.centre_size();
  const A limit = rows.near_copy_limit();
  for (int64_t r = 0; r < nr; ++r)
    for (int64_t q = 0; q < nc; ++q) {
      const A s = x[r][at] + c[q][at];  // |g_i|^2 + |g_c|^2, as dist2's s
      if (FactoredRows<T>::near_copy_suspect(out[r][q], s, limit))
        out[r][q] = rows.near_copy(i + r, centres + (j + q) * cs, out[r][q], s);
    }
}

// 64-byte aligned scratch of `count` values (vector's own storage is only 16-byte aligned).
template <typename A>
struct AlignedBuffer {
  std::vector<A> storage;
  A* data = nullptr;
  explicit AlignedBuffer(int64_t count) : storage(static_cast<size_t>(count + 64 / sizeof(A))) {
    void* p = storage.data();
    size_t space = storage.size() * sizeof(A);
    data = static_cast<A*>(std::align(64, count * sizeof(A), p, space));
  }
};

// min_sqdist_to_centres in register blocks. Each task's rows are widened once into the block
// layout (dense float32 / float64 rows are read in place), so the inner loop is loads and FMAs
// only. A different summation order from dist2, with the same error bound (the pruning margins of
// cpu/rows.h hold for either).
template <typename Rows>
void min_sqdist_blocked(const Rows& rows, const AccOfRows<Rows>* centres, int64_t m,
                        AccOfRows<Rows>* out_dist2, int64_t* out_index) {
  using A = AccOfRows<Rows>;
  constexpr bool dense = std::is_same_v<Rows, DenseRows<typename Rows::Storage>>;
  constexpr bool in_place = std::is_same_v<Rows, DenseRows<A>>;
  const int64_t n = rows.n, cs = rows.centre_size(), stride = block_stride(rows);
  const int64_t tile = std::max<int64_t>(kBlockCentres, kTileBytes / (stride * int64_t(sizeof(A))));
  const int64_t n_blocks = (n + kTaskRows - 1) / kTaskRows;
  AlignedBuffer<A> relaid(dense ? 0 : m * stride);  // the centres in the block layout
  if constexpr (!dense)
    for (int64_t j = 0; j < m; ++j) block_centre(rows, centres + j * cs, relaid.data + j * stride);
  const A* cents = dense ? centres : relaid.data;

#pragma omp parallel if (n * m * rows.row_work() > kSerialWork)
  {
    AlignedBuffer<A> widened(in_place ? 0 : kTaskRows * stride);
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t i0 = b * kTaskRows, i1 = std::min(n, i0 + kTaskRows);
      const A* xs = nullptr;  // rows i0..i1 in the block layout
      if constexpr (in_place) {
        xs = rows.X + i0 * stride;
      } else {
        for (int64_t i = i0; i < i1; ++i) block_row(rows, i, widened.data + (i - i0) * stride);
        xs = widened.data;
      }
      A best[kTaskRows];
      int64_t arg[kTaskRows];
      std::fill(best, best + kTaskRows, std::numeric_limits<A>::infinity());
      std::fill(arg, arg + kTaskRows, int64_t{-1});
      for (int64_t j0 = 0; j0 < m; j0 += tile) {
        const int64_t j1 = std::min(m, j0 + tile);
        for (int64_t r0 = 0; r0 < i1 - i0; r0 += kBlockRows) {
          const int64_t nr = std::min<int64_t>(kBlockRows, i1 - i0 - r0);
          const A* x[kBlockRows];  // past the last row: repeat it, its results unused
          for (int r = 0; r < kBlockRows; ++r)
            x[r] = xs + (r0 + std::min<int64_t>(r, nr - 1)) * stride;
          for (int64_t j = j0; j < j1; j += kBlockCentres) {
            const int64_t nc = std::min<int64_t>(kBlockCentres, j1 - j);
            const A* c[kBlockCentres];
            for (int q = 0; q < kBlockCentres; ++q)
              c[q] = cents + (j + std::min<int64_t>(q, nc - 1)) * stride;
            A out[kBlockRows][kBlockCentres];
            if (block_dist2(rows, x, c, out))  // rare: a near copy somewhere in the block
              recompute_near_copies(rows, x, c, centres, i0 + r0, nr, j, nc, out);
            for (int64_t r = 0; r < nr; ++r)
              for (int64_t q = 0; q < nc; ++q) offer(out[r][q], j + q, best[r0 + r], arg[r0 + r]);
          }
        }
      }
      for (int64_t i = i0; i < i1; ++i) {
        out_dist2[i] = best[i - i0];
        out_index[i] = arg[i - i0];
      }
    }
  }
}
#endif
}  // namespace

template <typename Rows>
std::vector<AccOfRows<Rows>> prepare_centres(const Rows& set, const int64_t* index, int64_t m) {
  const int64_t cs = set.centre_size();
  std::vector<AccOfRows<Rows>> out(static_cast<size_t>(m * cs));
  for (int64_t j = 0; j < m; ++j) set.prepare(index[j], out.data() + j * cs);
  return out;
}

template <typename Rows>
void min_sqdist_to_centres(const Rows& rows, const AccOfRows<Rows>* centres, int64_t m,
                           AccOfRows<Rows>* out_dist2, int64_t* out_index) {
  using A = AccOfRows<Rows>;
#ifdef FASTAL_AVX512
  // blocks pay once a row meets several centres; one labeled point keeps the streaming loop
  if (m >= kMinBlockedCentres) return min_sqdist_blocked(rows, centres, m, out_dist2, out_index);
#endif
  const int64_t n = rows.n, cs = rows.centre_size();
  const int64_t tile = std::max<int64_t>(1, kTileBytes / (cs * int64_t(sizeof(A))));
  const int64_t n_blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;

#pragma omp parallel for schedule(dynamic, 1) if (n * m * rows.row_work() > kSerialWork)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t i0 = b * kRowsPerBlock, i1 = std::min(n, i0 + kRowsPerBlock);
    A best[kRowsPerBlock];
    int64_t arg[kRowsPerBlock];
    std::fill(best, best + kRowsPerBlock, std::numeric_limits<A>::infinity());
    std::fill(arg, arg + kRowsPerBlock, int64_t{-1});
    for (int64_t j0 = 0; j0 < m; j0 += tile) {
      const int64_t j1 = std::min(m, j0 + tile);
      for (int64_t i = i0; i < i1; ++i) {
        A& bi = best[i - i0];
        int64_t& ai = arg[i - i0];
        for (int64_t j = j0; j < j1; ++j) {
          offer(rows.dist2(i, centres + j * cs), j, bi, ai);
        }
      }
    }
    for (int64_t i = i0; i < i1; ++i) {
      out_dist2[i] = best[i - i0];
      out_index[i] = arg[i - i0];
    }
  }
}

template <typename T>
void segment_sum(const T* X, int64_t n, int64_t d, const int64_t* labels, int64_t k, double* sums,
                 int64_t* counts) {
  std::fill(sums, sums + k * d, 0.0);
  std::fill(counts, counts + k, int64_t{0});
  for (int64_t i = 0; i < n; ++i) ++counts[labels[i]];
  const int threads = omp_get_max_threads();
  const bool private_sums = k * d * threads <= (int64_t{1} << 25);  // <= 256 MiB of buffers
  if (n * d <= kSerialWork || threads == 1) {
    for (int64_t i = 0; i < n; ++i) {
      double* s = sums + labels[i] * d;
      const T* x = X + i * d;
      for (int64_t j = 0; j < d; ++j) s[j] += to_float(x[j]);
    }
  } else if (private_sums) {
    // each thread sums its rows into its own k x d buffer; buffers are added in thread order
    std::vector<double> partial(static_cast<size_t>(threads * k * d), 0.0);
#pragma omp parallel
    {
      double* mine = partial.data() + static_cast<int64_t>(omp_get_thread_num()) * k * d;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        double* s = mine + labels[i] * d;
        const T* x = X + i * d;
        for (int64_t j = 0; j < d; ++j) s[j] += to_float(x[j]);
      }
#pragma omp for schedule(static)
      for (int64_t e = 0; e < k * d; ++e) {
        double total = 0;
        for (int t = 0; t < threads; ++t) total += partial[static_cast<size_t>(t * k * d + e)];
        sums[e] = total;
      }
    }
  } else {
    // many clusters: each thread owns a band of columns and reads those of every row
    const int64_t band = std::max<int64_t>(16, (d + threads - 1) / threads);
#pragma omp parallel for schedule(static)
    for (int64_t j0 = 0; j0 < d; j0 += band) {
      const int64_t j1 = std::min(d, j0 + band);
      for (int64_t i = 0; i < n; ++i) {
        double* s = sums + labels[i] * d;
        const T* x = X + i * d;
        for (int64_t j = j0; j < j1; ++j) s[j] += to_float(x[j]);
      }
    }
  }
}

// Bits of the exponent field: all set means NaN or an infinity. Integer tests vectorise.
template <typename T>
struct ExpMask;
template <>
struct ExpMask<float> {
  using U = uint32_t;
  static constexpr U value = 0x7f800000u;
};
template <>
struct ExpMask<double> {
  using U = uint64_t;
  static constexpr U value = 0x7ff0000000000000ull;
};
template <>
struct ExpMask<Half> {
  using U = uint16_t;
  static constexpr U value = 0x7c00u;
};
template <>
struct ExpMask<BFloat16> {
  using U = uint16_t;
  static constexpr U value = 0x7f80u;
};

template <typename T>
int64_t count_nonfinite_rows(const T* X, int64_t n, int64_t d, int64_t* first, double* spread) {
  using U = typename ExpMask<T>::U;
  using A = Acc<T>;
  constexpr U mask = ExpMask<T>::value;
  static_assert(sizeof(U) == sizeof(T));
  const U* bits = reinterpret_cast<const U*>(X);
  std::vector<A> x0(static_cast<size_t>(n > 0 ? d : 0));
  for (int64_t k = 0; k < static_cast<int64_t>(x0.size()); ++k) x0[k] = to_float(X[k]);
  int64_t count = 0, first_bad = n;
  A widest = 0;
#pragma omp parallel if (n * d > kSerialWork)
  {
    std::vector<A> wide(std::is_same_v<T, A> ? 0 : static_cast<size_t>(d));
#pragma omp for reduction(+ : count) reduction(min : first_bad) reduction(max : widest)
    for (int64_t i = 0; i < n; ++i) {
      const U* x = bits + i * d;
      int bad = 0;
#pragma omp simd reduction(| : bad)
      for (int64_t k = 0; k < d; ++k) bad |= static_cast<int>((x[k] & mask) == mask);
      if (bad) {
        ++count;
        first_bad = std::min(first_bad, i);
        continue;
      }
      const A* v = widened(X + i * d, d, wide.data());  // 16-bit rows: vector conversion
      const A* c = x0.data();
      A m = 0;
#pragma omp simd reduction(max : m)
      for (int64_t k = 0; k < d; ++k) {
        const A diff = v[k] - c[k];
        const A a = diff < 0 ? -diff : diff;
        m = a > m ? a : m;
      }
      widest = std::max(widest, m);
    }
  }
  *first = count ? first_bad : -1;
  *spread = static_cast<double>(widest);
  return count;
}

void indexed_distances(const double* X, int64_t d, const int64_t* rows, int64_t nr,
                       const int64_t* cols, int64_t nc, bool nearest_only, double* out) {
  // Blocks of kRowsPerBlock rows against tiles of columns that fit in L2, each pair by direct
  // differences (identical rows are exactly 0 apart, as with scipy's cdist).
  const int64_t tile = std::max<int64_t>(1, kTileBytes / (d * int64_t(sizeof(double))));
  const int64_t blocks = (nr + kRowsPerBlock - 1) / kRowsPerBlock;
#pragma omp parallel for schedule(dynamic, 1) if (nr * nc * d > kSerialWork)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * kRowsPerBlock, r1 = std::min(nr, r0 + kRowsPerBlock);
    if (nearest_only) std::fill(out + r0, out + r1, std::numeric_limits<double>::infinity());
    for (int64_t c0 = 0; c0 < nc; c0 += tile) {
      const int64_t c1 = std::min(nc, c0 + tile);
      for (int64_t r = r0; r < r1; ++r) {
        const double* x = X + rows[r] * d;
        if (nearest_only) {
          double best = out[r];
          for (int64_t c = c0; c < c1; ++c) best = std::min(best, sqdist(x, X + cols[c] * d, d));
          out[r] = best;
        } else {
          for (int64_t c = c0; c < c1; ++c) out[r * nc + c] = sqdist(x, X + cols[c] * d, d);
        }
      }
    }
    const int64_t size = nearest_only ? r1 - r0 : (r1 - r0) * nc;
    double* o = out + (nearest_only ? r0 : r0 * nc);
    for (int64_t e = 0; e < size; ++e) o[e] = std::sqrt(o[e]);
  }
}

double parallel_sum(const float* x, int64_t n) {
  double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
  for (int64_t i0 = 0; i0 < n; i0 += 4096) {
    const int64_t i1 = std::min(n, i0 + 4096);
    float part = 0;
#pragma omp simd reduction(+ : part)
    for (int64_t i = i0; i < i1; ++i) part += x[i];
    total += part;
  }
  return total;
}

#define FASTAL_INSTANTIATE_ROWS(R)                                                              \
  template std::vector<AccOfRows<R>> prepare_centres<R>(const R&, const int64_t*, int64_t);     \
  template void min_sqdist_to_centres<R>(const R&, const AccOfRows<R>*, int64_t, AccOfRows<R>*, \
                                         int64_t*);
#define FASTAL_INSTANTIATE(T)                                                                \
  FASTAL_INSTANTIATE_ROWS(DenseRows<T>)                                                      \
  FASTAL_INSTANTIATE_ROWS(FactoredRows<T>)                                                   \
  template int64_t count_nonfinite_rows<T>(const T*, int64_t, int64_t, int64_t*, double*);   \
  template void segment_sum<T>(const T*, int64_t, int64_t, const int64_t*, int64_t, double*, \
                               int64_t*);
FASTAL_INSTANTIATE(float)
FASTAL_INSTANTIATE(double)
FASTAL_INSTANTIATE(Half)
FASTAL_INSTANTIATE(BFloat16)
#undef FASTAL_INSTANTIATE
#undef FASTAL_INSTANTIATE_ROWS

}  // namespace fastal::cpu
