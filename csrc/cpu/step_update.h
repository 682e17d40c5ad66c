// The bookkeeping half of a k-center step over one chunk of rows, 16 (float32 accumulation) or 8
// (float64) rows per AVX-512 instruction: given the new distances dd (+inf where a row was not
// read), mind = min(mind, dd) with near = pos where it fell, and the farthest remaining point of
// the chunk. Split from the distances because, for short rows, the per-row branches and index
// tracking cost more than the distance itself (a step at n = 1M, d = 2 spent ~3 ns per row and
// thread on them).
#pragma once
#include <cstdint>
#include <limits>

#include "cpu/simd.h"

namespace fastal::cpu {

#ifdef FASTAL_AVX512
template <typename A>
struct ChunkFarthest {
  A value;
  int64_t index;
};

// The chunk's farthest point from each lane's best (index -1: none), ties to the lowest index.
template <typename A, int kLanes>
ChunkFarthest<A> merge_lanes(const A (&value)[kLanes], const int32_t (&at)[kLanes]) {
  ChunkFarthest<A> far{-std::numeric_limits<A>::infinity(), -1};
  for (int r = 0; r < kLanes; ++r) {
    if (at[r] < 0) continue;
    if (far.index < 0 || value[r] > far.value || (value[r] == far.value && at[r] < far.index))
      far = {value[r], at[r]};
  }
  return far;
}
// Rows [0, len) of the chunk: mind, near and dd point at its first row. Returns the largest
// mind among rows that are not centres (mind = -inf) and its index in the chunk, the lowest on
// ties; index -1 when every row is a centre.
inline ChunkFarthest<float> update_chunk(float* mind, int64_t* near, const float* dd, int64_t len,
                                         int64_t pos) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i pos_v = _mm512_set1_epi64(pos);
  __m512 best = ninf;
  __m512i best_at = _mm512_set1_epi32(-1);
  for (int64_t j = 0; j < len; j += 16) {
    const auto in = static_cast<__mmask16>(len - j >= 16 ? 0xffffu : (1u << (len - j)) - 1u);
    __m512 m = _mm512_maskz_loadu_ps(in, mind + j);
    const __m512 d = _mm512_maskz_loadu_ps(in, dd + j);
    const __mmask16 fell = _mm512_mask_cmp_ps_mask(in, d, m, _CMP_LT_OQ);
    if (fell) {
      _mm512_mask_storeu_ps(mind + j, fell, d);
      _mm512_mask_storeu_epi64(near + j, static_cast<__mmask8>(fell), pos_v);
      _mm512_mask_storeu_epi64(near + j + 8, static_cast<__mmask8>(fell >> 8), pos_v);
      m = _mm512_mask_mov_ps(m, fell, d);
    }
    // strictly greater: each lane keeps its first (lowest) row among equal values
    const __mmask16 live = _mm512_mask_cmp_ps_mask(in, m, ninf, _CMP_NEQ_OQ);
    const __mmask16 above = _mm512_mask_cmp_ps_mask(live, m, best, _CMP_GT_OQ);
    best = _mm512_mask_mov_ps(best, above, m);
    best_at = _mm512_mask_mov_epi32(best_at, above,
                                    _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int>(j))));
  }
  alignas(64) float value[16];
  alignas(64) int32_t at[16];
  _mm512_store_ps(value, best);
  _mm512_store_si512(at, best_at);
  return merge_lanes(value, at);
}

// The same for float64 accumulation, 8 rows per instruction.
inline ChunkFarthest<double> update_chunk(double* mind, int64_t* near, const double* dd,
                                          int64_t len, int64_t pos) {
  const __m512d ninf = _mm512_set1_pd(-std::numeric_limits<double>::infinity());
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i pos_v = _mm512_set1_epi64(pos);
  __m512d best = ninf;
  __m256i best_at = _mm256_set1_epi32(-1);
  for (int64_t j = 0; j < len; j += 8) {
    const auto in = static_cast<__mmask8>(len - j >= 8 ? 0xffu : (1u << (len - j)) - 1u);
    __m512d m = _mm512_maskz_loadu_pd(in, mind + j);
    const __m512d d = _mm512_maskz_loadu_pd(in, dd + j);
    const __mmask8 fell = _mm512_mask_cmp_pd_mask(in, d, m, _CMP_LT_OQ);
    if (fell) {
      _mm512_mask_storeu_pd(mind + j, fell, d);
      _mm512_mask_storeu_epi64(near + j, fell, pos_v);
      m = _mm512_mask_mov_pd(m, fell, d);
    }
    // strictly greater: each lane keeps its first (lowest) row among equal values
    const __mmask8 live = _mm512_mask_cmp_pd_mask(in, m, ninf, _CMP_NEQ_OQ);
    const __mmask8 above = _mm512_mask_cmp_pd_mask(live, m, best, _CMP_GT_OQ);
    best = _mm512_mask_mov_pd(best, above, m);
    best_at = _mm256_mask_mov_epi32(best_at, above,
                                    _mm256_add_epi32(lane, _mm256_set1_epi32(static_cast<int>(j))));
  }
  alignas(64) double value[8];
  alignas(32) int32_t at[8];
  _mm512_store_pd(value, best);
  _mm256_store_si256(reinterpret_cast<__m256i*>(at), best_at);
  return merge_lanes(value, at);
}
#endif

}  // namespace fastal::cpu
