// Device-side rows of a factored pool: per-sample last-layer gradients g_i = A_i (x) H_i kept as
// their factors (kernels.h, struct Factored), so that a distance costs O(C + dh), not O(C dh):
//
//   |g_i - g_c|^2 = max(0, (sqnorm_i + sqnorm_c) - 2 ((A_i . A_c)(H_i . H_c))),
//
// dot products accumulated in float32 with fmaf, the last three operations rounded one by one
// (__fadd_rn / __fmul_rn / __fsub_rn: no contraction, so the result does not depend on the
// compiler's choices). A non-positive result (rounding) is returned as +0.
//
// Row work follows device.cuh: a group of G lanes per row, lane lg reading units lg, lg + G, ...
// of each of the two segments (A_i, then H_i); a unit is 16 bytes when that segment's rows are
// 16-byte aligned (rows_vectorizable), one element otherwise, decided per segment at run time (a
// uniform branch). The order of every addition depends only on (C, dh, dtype, alignment), never on
// the row, so equal rows give equal distances and pruned and unpruned runs agree bit for bit.
//
// The float32 centre: A_c at [0, C), H_c at [coff, coff + dh) with coff = C rounded up to a
// multiple of 4 (float4 alignment); each segment in the plane layout of device.cuh when it is read
// as 16-byte units of 16-bit values. The padding floats are zero and never used.
//
// Rounding (used by the k-center pruning rule, kcenter_factored.cu). With u = 2^-24, L = C + dh,
// g_k = k u / (1 - k u) and N_x = |g_x|^2 exactly: the float32 sqnorm s_x (any summation order)
// is within g_{L+1} N_x; each dot product within g_C |A_x||A_y| (resp. g_dh |H_x||H_y|), whatever
// the order of its additions; their rounded product within g_{L+1} |g_x||g_y| <=
// g_{L+1} (N_x + N_y) / 2; with the rounding of the two additions,
//     |D~(x, y) - D(x, y)| <= g_{2L+6} (N_x + N_y) <= g_{2L+6} / (1 - g_{L+1}) (s_x + s_y).
// The error is absolute (cancellation between the sqnorms and the product), not relative to D.
#pragma once
#include "cuda/device.cuh"

namespace fastal::cuda {

inline int64_t factored_centre_offset(int64_t C) { return (C + 3) / 4 * 4; }

// What the kernels need of a factored pool (passed by value).
struct FactoredView {
  const void* A;
  const void* H;
  const float* sqnorm;
  int C, dh, coff;
  bool vec_a, vec_h;  // segment read as 16-byte units
};

template <typename T>
inline FactoredView factored_view(const Factored& f) {
  FactoredView v{};
  v.A = f.A;
  v.H = f.H;
  v.sqnorm = f.sqnorm;
  v.C = static_cast<int>(f.C);
  v.dh = static_cast<int>(f.dh);
  v.coff = static_cast<int>(factored_centre_offset(f.C));
  v.vec_a = rows_vectorizable<T>(f.A, f.C);
  v.vec_h = rows_vectorizable<T>(f.H, f.dh);
  return v;
}

// Lanes per row, from the units of both segments (device.cuh, group_size).
template <typename T>
inline int factored_group(const FactoredView& v) {
  const int64_t ua = v.vec_a ? v.C / kVecElems<T> : v.C;
  const int64_t uh = v.vec_h ? v.dh / kVecElems<T> : v.dh;
  return group_size(ua + uh);
}

__host__ __device__ __forceinline__ int64_t factored_centre_size(const FactoredView& v) {
  return int64_t{v.coff} + v.dh;
}

// Argument checks of a factored operand: its sizes (before selecting the device), then its pointers
// (names prefixed, e.g. "x_" or "rows_", as the bindings name them).
inline void require_factored_shape(const Factored& f, const char* n_name) {
  require_shape(f.n, f.C, n_name, "C");
  require_shape(f.n, f.dh, n_name, "dh");
  FASTAL_REQUIRE(f.C + f.dh <= kMaxCols, "C + dh must be <= 2^30, got ", f.C + f.dh);
}

inline void require_factored_ptrs(const Factored& f, DType dtype, const char* prefix, int device) {
  const std::string p(prefix);
  require_device_ptr(f.A, (p + "a_ptr").c_str(), device, dtype_size(dtype));
  require_device_ptr(f.H, (p + "h_ptr").c_str(), device, dtype_size(dtype));
  require_device_ptr(f.sqnorm, (p + "sqnorm_ptr").c_str(), device, alignof(float));
}

// ---- device side --------------------------------------------------------------------------------

// Lane lg's partial dot product of one segment (`len` storage values at `row`) with the float32
// centre segment `cen`.
template <typename T, int G, bool SMEM, bool STREAM>
__device__ __forceinline__ float seg_dot(const T* row, const float* cen, int len, bool vec,
                                         int lg) {
  float acc = 0.f;
  if (vec) {
    constexpr int U = 4;  // units in flight per lane
    const int nvec = len / kVecElems<T>;
    const uint4* r4 = reinterpret_cast<const uint4*>(row);
    for (int u0 = lg; u0 < nvec; u0 += G * U) {
      uint4 v[U];
#pragma unroll
      for (int q = 0; q < U; ++q)
        v[q] = (u0 + q * G < nvec) ? load_unit<STREAM>(r4 + u0 + q * G) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int q = 0; q < U; ++q) {
        const int u = u0 + q * G;
        if (u >= nvec) break;
        const float4 c0 = load_centre4<SMEM>(cen, u);
        if constexpr (sizeof(T) == 4) {
          acc = fmaf(__uint_as_float(v[q].x), c0.x, acc);
          acc = fmaf(__uint_as_float(v[q].y), c0.y, acc);
          acc = fmaf(__uint_as_float(v[q].z), c0.z, acc);
          acc = fmaf(__uint_as_float(v[q].w), c0.w, acc);
        } else {
          const float4 c1 = load_centre4<SMEM>(cen, nvec + u);
          const float2 a = word_to_float2<T>(v[q].x), b = word_to_float2<T>(v[q].y);
          const float2 e = word_to_float2<T>(v[q].z), f = word_to_float2<T>(v[q].w);
          acc = fmaf(a.x, c0.x, acc);
          acc = fmaf(a.y, c0.y, acc);
          acc = fmaf(b.x, c0.z, acc);
          acc = fmaf(b.y, c0.w, acc);
          acc = fmaf(e.x, c1.x, acc);
          acc = fmaf(e.y, c1.y, acc);
          acc = fmaf(f.x, c1.z, acc);
          acc = fmaf(f.y, c1.w, acc);
        }
      }
    }
  } else {
    constexpr int U = 8;
    using B = typename Storage<T>::Bits;
    const B* rb = reinterpret_cast<const B*>(row);
    for (int k0 = lg; k0 < len; k0 += G * U) {
      B v[U];
#pragma unroll
      for (int q = 0; q < U; ++q)
        v[q] = (k0 + q * G < len) ? load_bits<STREAM>(rb + k0 + q * G) : B(0);
#pragma unroll
      for (int q = 0; q < U; ++q) {
        const int k = k0 + q * G;
        if (k >= len) break;
        acc = fmaf(bits_to_float<T>(v[q]), load_centre<SMEM>(cen, k), acc);
      }
    }
  }
  return acc;
}

// (A_row . A_c) * (H_row . H_c), summed by the G lanes of a group; every lane of the group returns
// the same value. All 32 lanes of the warp must call it together (shuffles); lanes with
// active == false read nothing.
template <typename T, int G, bool SMEM, bool STREAM>
__device__ __forceinline__ float factored_product(const FactoredView& v, int64_t row,
                                                  const float* cen, int lg, bool active) {
  float da = 0.f, dh = 0.f;
  if (active) {
    da = seg_dot<T, G, SMEM, STREAM>(static_cast<const T*>(v.A) + row * v.C, cen, v.C, v.vec_a, lg);
    dh = seg_dot<T, G, SMEM, STREAM>(static_cast<const T*>(v.H) + row * v.dh, cen + v.coff, v.dh,
                                     v.vec_h, lg);
  }
  // Butterfly: lanes a and b add the same two values, so all lanes of the group agree exactly.
#pragma unroll
  for (int off = G / 2; off > 0; off >>= 1) {
    da += __shfl_xor_sync(kFullMask, da, off);
    dh += __shfl_xor_sync(kFullMask, dh, off);
  }
  return __fmul_rn(da, dh);
}

__device__ __forceinline__ float factored_dist2(float sq_x, float sq_y, float product) {
  const float r = __fsub_rn(__fadd_rn(sq_x, sq_y), __fmul_rn(2.f, product));
  return r > 0.f ? r : 0.f;  // also maps -0 to +0, so that packed keys of zero distances tie
}

// ---- near copies -------------------------------------------------------------------------------
//
// Near a copy the expansion above is rounding noise, up to about e (s_x + s_y), not 0: an exact
// duplicate of a chosen row kept a weight that could swamp the rows of small gradient (k-center
// picked copies of labeled rows, k-means++ drew them). As on the CPU (cpu/rows.h,
// FactoredRows::near_copy), a result within 2 e (s_x + s_y), e = 4 (L + 8) u, is recomputed as
//   |g_x - g_y|^2 = |dA|^2 |H_x|^2 + |A_y|^2 |dH|^2 + 2 (dA . A_y)(H_x . dH),   dA = A_x - A_y,
// which is 0 for a copy. Its error is within e (|dA| |H_x| + |A_y| |dH|)^2; it is kept only where
// that is within e (s_x + s_y), the expansion's bound, so the pruning rule of kcenter_factored.cu
// holds for whichever value is returned. Rare, so one thread does it serially, in a fixed order
// with explicit roundings: the value depends on the two rows only, never on the kernel or lane.

__host__ __device__ __forceinline__ float factored_error_scale(const FactoredView& v) {
  return 4.f * static_cast<float>(v.C + v.dh + 8) * 5.9604644775390625e-8f;  // u = 2^-24
}

// Two zero rows (s = 0: one-hot probabilities, or 16-bit A of confident rows rounded to 0) are
// at 0 already: not suspects, or every pair of them would be recomputed.
__device__ __forceinline__ bool factored_near_copy_suspect(const FactoredView& v, float dd,
                                                           float s) {
  return s > 0.f && dd <= 2.f * factored_error_scale(v) * s;
}

template <typename T>
__device__ __forceinline__ float factored_elem(const void* base, int64_t k) {
  using B = typename Storage<T>::Bits;
  return bits_to_float<T>(__ldg(static_cast<const B*>(base) + k));
}

// The other row of a recompute, read element by element: the float32 centre (layout above) or a
// row of a pool. Plain values, no captures by reference: the kernels keep them in registers.
struct CentreSource {
  const float* cen;
  int C, dh, coff;
  bool vec_a, vec_h;
  template <typename T>
  __device__ __forceinline__ float a(int k) const {
    return cen[vec_a ? centre_slot<T, true>(k, C) : k];
  }
  template <typename T>
  __device__ __forceinline__ float h(int k) const {
    return cen[coff + (vec_h ? centre_slot<T, true>(k, dh) : k)];
  }
};

struct PoolRowSource {
  const void* A;
  const void* H;
  int64_t a0, h0;  // the row's first element in A and in H
  template <typename T>
  __device__ __forceinline__ float a(int k) const {
    return factored_elem<T>(A, a0 + k);
  }
  template <typename T>
  __device__ __forceinline__ float h(int k) const {
    return factored_elem<T>(H, h0 + k);
  }
};

// The recompute of row x (of pool v) against the row `y` gives; `expanded` is the distance from
// the expansion, s = s_x + s_y.
template <typename T, typename Y>
__device__ __forceinline__ float factored_near_copy(const FactoredView& v, int64_t x, Y y,
                                                    float expanded, float s) {
  const int64_t xa = x * v.C, xh = x * v.dh;
  float daa = 0.f, dac = 0.f, acc = 0.f, hii = 0.f, dhh = 0.f, hid = 0.f;
#pragma unroll 1
  for (int k = 0; k < v.C; ++k) {
    const float a = factored_elem<T>(v.A, xa + k), c = y.template a<T>(k), dl = __fsub_rn(a, c);
    daa = fmaf(dl, dl, daa);
    dac = fmaf(dl, c, dac);
    acc = fmaf(c, c, acc);
  }
#pragma unroll 1
  for (int k = 0; k < v.dh; ++k) {
    const float h = factored_elem<T>(v.H, xh + k), c = y.template h<T>(k), dl = __fsub_rn(h, c);
    hii = fmaf(h, h, hii);
    dhh = fmaf(dl, dl, dhh);
    hid = fmaf(h, dl, hid);
  }
  const float t1 = __fmul_rn(daa, hii), t2 = __fmul_rn(acc, dhh);
  const float bound = __fadd_rn(sqrtf(t1), sqrtf(t2));
  if (!(__fmul_rn(bound, bound) <= s)) return expanded;
  const float r = __fadd_rn(__fadd_rn(t1, t2), __fmul_rn(2.f, __fmul_rn(dac, hid)));
  return r > 0.f ? r : 0.f;
}

// The recompute against the float32 centre `cen`, and against row y of pool w.
template <typename T>
__device__ __forceinline__ float factored_near_copy_centre(const FactoredView& v, int64_t x,
                                                           const float* cen, float expanded,
                                                           float s) {
  const CentreSource y{cen, v.C, v.dh, v.coff, v.vec_a, v.vec_h};
  return factored_near_copy<T>(v, x, y, expanded, s);
}

template <typename T>
__device__ __forceinline__ float factored_near_copy_rows(const FactoredView& v, int64_t x,
                                                         const FactoredView& w, int64_t y,
                                                         float expanded, float s) {
  const PoolRowSource row{w.A, w.H, y * w.C, y * w.dh};
  return factored_near_copy<T>(v, x, row, expanded, s);
}

// factored_dist2 of row x against the float32 centre `cen`, near copies recomputed.
template <typename T>
__device__ __forceinline__ float factored_dist2_to_centre(const FactoredView& v, int64_t x,
                                                          const float* cen, float sq_x, float sq_c,
                                                          float product) {
  const float dd = factored_dist2(sq_x, sq_c, product);
  const float s = __fadd_rn(sq_x, sq_c);
  return factored_near_copy_suspect(v, dd, s) ? factored_near_copy_centre<T>(v, x, cen, dd, s) : dd;
}

// Row c of the pool converted to the float32 centre layout, by the whole grid.
template <typename T>
__device__ __forceinline__ void stage_factored_centre(const FactoredView& v, int64_t c,
                                                      float* centre_row) {
  using B = typename Storage<T>::Bits;
  const B* a = reinterpret_cast<const B*>(static_cast<const T*>(v.A) + c * v.C);
  const B* h = reinterpret_cast<const B*>(static_cast<const T*>(v.H) + c * v.dh);
  const int64_t total = factored_centre_size(v);
  for (int64_t k = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; k < total;
       k += int64_t{gridDim.x} * blockDim.x) {
    if (k < v.C) {
      const int64_t slot = v.vec_a ? centre_slot<T, true>(k, v.C) : k;
      centre_row[slot] = bits_to_float<T>(__ldg(a + k));
    } else if (k < v.coff) {
      centre_row[k] = 0.f;  // padding: copied to shared memory with the rest, never used
    } else {
      const int64_t kh = k - v.coff;
      const int64_t slot = v.vec_h ? centre_slot<T, true>(kh, v.dh) : kh;
      centre_row[v.coff + slot] = bits_to_float<T>(__ldg(h + kh));
    }
  }
}

}  // namespace fastal::cuda
