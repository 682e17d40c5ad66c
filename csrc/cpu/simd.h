// Storage types and the squared-distance inner loops of the CPU kernels.
//
// Rows are stored as float32, float64, float16 or bfloat16 and accumulated in float32 (float64 for
// float64). The summation order of one distance depends only on d, never on where the row sits, so
// identical rows give identical distances and the pruned and unpruned k-center kernels agree bit
// for bit. AVX2+FMA(+F16C) paths when the compiler targets them; a portable scalar path otherwise.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FASTAL_AVX2 1
// AVX-512 kernels where the compiler targets them; -DFASTAL_NO_AVX512 keeps such a build on the
// AVX2 ones (for A/B runs on one machine).
#if defined(__AVX512F__) && defined(__F16C__) && !defined(FASTAL_NO_AVX512)
#define FASTAL_AVX512 1
#endif
#endif

namespace fastal::cpu {

struct Half {
  uint16_t bits;
};  // IEEE binary16
struct BFloat16 {
  uint16_t bits;
};  // upper half of a binary32

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using Acc = typename AccOf<T>::type;

inline float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
  if (exp == 0x1fu) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exp = 113u;
    while (!(mant & 0x400u)) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float to_float(float v) { return v; }
inline double to_float(double v) { return v; }
#if defined(FASTAL_AVX2) && defined(__F16C__)
inline float to_float(Half v) { return _cvtsh_ss(v.bits); }  // exact, as half_to_float
#else
inline float to_float(Half v) { return half_to_float(v.bits); }
#endif
inline float to_float(BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// bfloat16 values per vector load in the row reductions: 16 (AVX2) or 32 (AVX-512).
#if defined(FASTAL_AVX512)
constexpr int64_t kBf16Block = 32;
#elif defined(FASTAL_AVX2)
constexpr int64_t kBf16Block = 16;
#else
constexpr int64_t kBf16Block = 0;
#endif

// The centre (a row of the accumulation type that sqdist compares against) in the layout sqdist
// reads. For bfloat16 under AVX2 / AVX-512 each block of kBf16Block holds the even elements, then
// the odd ones: one vector load of bfloat16 values splits into those two float vectors with a shift
// and a mask, with no widening shuffles. Other types keep the natural order.
// lay_out_centre<T> takes the centre as stored (T) or already in Acc<T> (k-means' float32 centres
// against 16-bit rows); prepare_centre is the stored case.
template <typename T, typename Src>
inline void lay_out_centre(const Src* src, Acc<T>* dst, int64_t d) {
  int64_t k = 0;
  if constexpr (std::is_same_v<T, BFloat16> && kBf16Block > 0) {
    constexpr int64_t half = kBf16Block / 2;
    for (; k + kBf16Block <= d; k += kBf16Block) {
      for (int64_t j = 0; j < half; ++j) {
        dst[k + j] = to_float(src[k + 2 * j]);
        dst[k + half + j] = to_float(src[k + 2 * j + 1]);
      }
    }
  }
  for (; k < d; ++k) dst[k] = to_float(src[k]);
}

template <typename T>
inline void prepare_centre(const T* src, Acc<T>* dst, int64_t d) {
  lay_out_centre<T>(src, dst, d);
}

#ifdef FASTAL_AVX2
// 8 float lanes (4 double lanes) loaded from storage and widened.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const BFloat16* p) {
  __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
#ifdef __F16C__
inline __m256 load8(const Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
#else
inline __m256 load8(const Half* p) {
  alignas(32) float tmp[8];
  for (int k = 0; k < 8; ++k) tmp[k] = half_to_float(p[k].bits);
  return _mm256_load_ps(tmp);
}
#endif

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline double hsum(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

// One SIMD register of T and the operations the blocked kernels need (k-means arg-min, factored
// products): Lanes<T> is an AVX2 register, Lanes<float, 512> an AVX-512 one.
template <typename T, int Bits = 256>
struct Lanes;
template <>
struct Lanes<float> {
  using V = __m256;
  static constexpr int n = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V less(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static V blend(V a, V b, V mask) { return _mm256_blendv_ps(a, b, mask); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static float sum(V v) { return hsum(v); }
};
template <>
struct Lanes<double> {
  using V = __m256d;
  static constexpr int n = 4;
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V set1(double x) { return _mm256_set1_pd(x); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V less(V a, V b) { return _mm256_cmp_pd(a, b, _CMP_LT_OQ); }
  static V blend(V a, V b, V mask) { return _mm256_blendv_pd(a, b, mask); }
  static V min(V a, V b) { return _mm256_min_pd(a, b); }
  static V max(V a, V b) { return _mm256_max_pd(a, b); }
  static double sum(V v) { return hsum(v); }
};
#endif

// The two reductions of a stored row x against a centre c laid out by prepare_centre:
// SQ = true gives the squared distance sum (x - c)^2, SQ = false the inner product sum x c.
// 32 lanes per iteration (64 for 16-bit rows under AVX-512; 16 for float64) in four independent
// accumulators hide the FMA latency, then a scalar tail.
#ifdef FASTAL_AVX2
template <bool SQ>
inline __m256 fma_term(__m256 x, __m256 c, __m256 acc) {
  if constexpr (SQ) {
    const __m256 t = _mm256_sub_ps(x, c);
    return _mm256_fmadd_ps(t, t, acc);
  } else {
    return _mm256_fmadd_ps(x, c, acc);
  }
}
template <bool SQ>
inline __m256d fma_term(__m256d x, __m256d c, __m256d acc) {
  if constexpr (SQ) {
    const __m256d t = _mm256_sub_pd(x, c);
    return _mm256_fmadd_pd(t, t, acc);
  } else {
    return _mm256_fmadd_pd(x, c, acc);
  }
}
#endif

#ifdef FASTAL_AVX512
template <>
struct Lanes<float, 512> {
  using V = __m512;
  static constexpr int n = 16;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(V v) { return _mm512_reduce_add_ps(v); }
};

// AVX-512 is used for 16-bit storage only: there the widening is the bottleneck and 16 lanes per
// instruction halve it (a float16 / bfloat16 step ran up to 1.6x faster on a Zen 5 core). For
// float32 rows out of cache the 512-bit loop ran ~1.8x slower than the AVX2 one on the same core
// (measured at n = 100k, d = 128), so float32 / float64 keep AVX2.
inline __m512 load16(const Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
template <bool SQ>
inline __m512 fma_term(__m512 x, __m512 c, __m512 acc) {
  if constexpr (SQ) {
    const __m512 t = _mm512_sub_ps(x, c);
    return _mm512_fmadd_ps(t, t, acc);
  } else {
    return _mm512_fmadd_ps(x, c, acc);
  }
}
// One block of 32 bfloat16 values: even elements into `even`, odd ones into `odd`.
template <bool SQ>
inline void bf16_block(const BFloat16* x, const float* c, __m512& even, __m512& odd) {
  const __m512i v = _mm512_loadu_si512(x);
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  even = fma_term<SQ>(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), _mm512_loadu_ps(c), even);
  odd = fma_term<SQ>(_mm512_castsi512_ps(_mm512_and_si512(v, high)), _mm512_loadu_ps(c + 16), odd);
}

// The AVX-512 body of reduce_row for 16-bit rows: 64 lanes per iteration in four accumulators,
// then single vectors; returns the sum and advances k past what it consumed.
template <bool SQ, typename T>
inline float reduce_row_16bit_avx512(const T* x, const float* c, int64_t d, int64_t& k) {
  __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                 _mm512_setzero_ps()};
  if constexpr (std::is_same_v<T, BFloat16>) {
    for (; k + 64 <= d; k += 64) {
      bf16_block<SQ>(x + k, c + k, a[0], a[1]);
      bf16_block<SQ>(x + k + 32, c + k + 32, a[2], a[3]);
    }
    if (k + 32 <= d) {
      bf16_block<SQ>(x + k, c + k, a[0], a[1]);
      k += 32;
    }
  } else {
    for (; k + 64 <= d; k += 64)
      for (int u = 0; u < 4; ++u)
        a[u] = fma_term<SQ>(load16(x + k + 16 * u), _mm512_loadu_ps(c + k + 16 * u), a[u]);
    for (; k + 16 <= d; k += 16) a[0] = fma_term<SQ>(load16(x + k), _mm512_loadu_ps(c + k), a[0]);
  }
#if defined(__AVX512BW__) && defined(__AVX512VL__)
  // The rest (under 16 float16 / 32 bfloat16 values, in the centre's natural order) by masked
  // loads, 16 at a time: zeros in the masked lanes add nothing. A scalar tail converting one value
  // at a time (in software, then) made a d = 8 float16 step ~3x slower than float32, and factored
  // rows with ~10 classes paid the same. Rows under 8 values do not come here (kVectorRowBytes).
  while (k < d) {
    const int64_t r = d - k < 16 ? d - k : 16;
    const auto m = static_cast<__mmask16>((1u << r) - 1u);
    const __m256i raw = _mm256_maskz_loadu_epi16(m, x + k);
    __m512 v;
    if constexpr (std::is_same_v<T, BFloat16>)
      v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
    else
      v = _mm512_cvtph_ps(raw);
    a[1] = fma_term<SQ>(v, _mm512_maskz_loadu_ps(m, c + k), a[1]);
    k += r;
  }
#endif
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
}
#endif

// Elements k..d-1 of the reduction, one at a time, added to total.
template <bool SQ, typename T>
inline Acc<T> reduce_scalar(const T* x, const Acc<T>* c, int64_t k, int64_t d, Acc<T> total) {
  for (; k < d; ++k) {
    if constexpr (SQ) {
      const Acc<T> t = to_float(x[k]) - c[k];
      total += t * t;
    } else {
      total += to_float(x[k]) * c[k];
    }
  }
  return total;
}

#ifdef FASTAL_AVX2
// The vector part of reduce_row: returns its sum and advances k past the elements it consumed.
template <bool SQ, typename T>
inline Acc<T> reduce_row_simd(const T* x, const Acc<T>* c, int64_t d, int64_t& k) {
  Acc<T> total = 0;
#ifdef FASTAL_AVX512
  if constexpr (sizeof(T) == 2) {
    total = reduce_row_16bit_avx512<SQ>(x, c, d, k);
  } else  // NOLINT(readability-misleading-indentation): the AVX2 chain below continues this one
#endif
      if constexpr (std::is_same_v<T, double>) {
    __m256d a[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                    _mm256_setzero_pd()};
    for (; k + 16 <= d; k += 16)
      for (int u = 0; u < 4; ++u)
        a[u] = fma_term<SQ>(_mm256_loadu_pd(x + k + 4 * u), _mm256_loadu_pd(c + k + 4 * u), a[u]);
    for (; k + 4 <= d; k += 4)
      a[0] = fma_term<SQ>(_mm256_loadu_pd(x + k), _mm256_loadu_pd(c + k), a[0]);
    total = hsum(_mm256_add_pd(_mm256_add_pd(a[0], a[1]), _mm256_add_pd(a[2], a[3])));
  } else if constexpr (std::is_same_v<T, BFloat16>) {
    const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    // Blocks of 16 alternate between (a[0], a[1]) and (a[2], a[3]) (even elements, odd ones),
    // with constant indices: a run-time index would keep a[] in memory.
    const auto block = [&](int64_t o, __m256& even, __m256& odd) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + o));
      even =
          fma_term<SQ>(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), _mm256_loadu_ps(c + o), even);
      odd = fma_term<SQ>(_mm256_castsi256_ps(_mm256_and_si256(v, high)), _mm256_loadu_ps(c + o + 8),
                         odd);
    };
    for (; k + 32 <= d; k += 32) {
      block(k, a[0], a[1]);
      block(k + 16, a[2], a[3]);
    }
    if (k + 16 <= d) {
      block(k, a[0], a[1]);
      k += 16;
    }
    total = hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
  } else {
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    for (; k + 32 <= d; k += 32)
      for (int u = 0; u < 4; ++u)
        a[u] = fma_term<SQ>(load8(x + k + 8 * u), _mm256_loadu_ps(c + k + 8 * u), a[u]);
    for (; k + 8 <= d; k += 8) a[0] = fma_term<SQ>(load8(x + k), _mm256_loadu_ps(c + k), a[0]);
    total = hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
  }
  return total;
}
#endif

// Rows shorter than this many bytes skip the vector part: one AVX2 vector of float32 / float64,
// 8 values of float16 / bfloat16. Otherwise it would only sum four zero accumulators (or one
// masked 512-bit lane) before the scalar loop: 1.25-1.35x the time of a k-center step of n = 1M
// rows with d = 2-6 (float32, float16, bfloat16) on the development CPU (RESULTS.md).
template <typename T>
constexpr int64_t kVectorRowBytes = sizeof(T) == 2 ? 16 : 32;

template <bool SQ, typename T>
inline Acc<T> reduce_row(const T* x, const Acc<T>* c, int64_t d) {
  int64_t k = 0;
  Acc<T> total = 0;
#ifdef FASTAL_AVX2
  if (d * int64_t(sizeof(T)) >= kVectorRowBytes<T>) total = reduce_row_simd<SQ>(x, c, d, k);
#endif
  return reduce_scalar<SQ>(x, c, k, d, total);
}

template <typename T>
inline Acc<T> sqdist(const T* x, const Acc<T>* c, int64_t d) {
  return reduce_row<true>(x, c, d);
}

template <typename T>
inline Acc<T> dot(const T* x, const Acc<T>* c, int64_t d) {
  return reduce_row<false>(x, c, d);
}

// count stored values as the accumulation type T: x itself when stored as T, else widened into buf
// (vector loads). Float16 and bfloat16 values are exact in float32, so the Lloyd kernels compute
// on them exactly what they compute on X.astype(float32).
template <typename T, typename S>
const T* widened(const S* x, int64_t count, T* buf) {
  if constexpr (std::is_same_v<S, T>) {
    return x;
  } else {
    int64_t i = 0;
#ifdef FASTAL_AVX2
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(buf + i, load8(x + i));
#endif
    for (; i < count; ++i) buf[i] = to_float(x[i]);
    return buf;
  }
}

}  // namespace fastal::cpu
