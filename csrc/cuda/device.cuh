// Device-side building blocks shared by distances.cu and kcenter.cu.
//
// Row work is done by a group of G lanes (G a power of two <= 32, chosen from d): lane `lg` of the
// group reads units lg, lg + G, lg + 2G, ... of the row, where a unit is 16 bytes (a uint4 load:
// 4 float32 or 8 float16/bfloat16) when every row is 16-byte aligned, one element otherwise. Each
// lane sums its units in increasing order, then the group reduces with a shuffle butterfly. The
// order of every addition depends only on (d, dtype, alignment of X), never on the row, so equal
// rows give equal distances and pruned and unpruned k-center runs agree bit for bit.
//
// The float32 centre row a distance is taken to is stored in "plane" layout when units are
// 16-byte vectors of 16-bit values: unit u's elements 0..3 at float4 [u], elements 4..7 at float4
// [nvec + u]. Lanes of a group then read consecutive float4s (no shared-memory bank conflicts).
// For float32 vectors and for scalar units the layout is the plain one.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common/check.h"
#include "common/key.h"
#include "cuda/cuda_check.h"
#include "cuda/kernels.h"

namespace fastal::cuda {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kThreads = 256;  // every row-oriented kernel: 8 warps per block
constexpr int kWarps = kThreads / 32;

// ---- storage types ---------------------------------------------------------------------------

template <typename T>
struct Storage;
template <>
struct Storage<float> {
  using Bits = unsigned int;
  static constexpr Bits kExpMask = 0x7f800000u;
};
template <>
struct Storage<__half> {
  using Bits = unsigned short;
  static constexpr Bits kExpMask = 0x7c00u;
};
template <>
struct Storage<__nv_bfloat16> {
  using Bits = unsigned short;
  static constexpr Bits kExpMask = 0x7f80u;
};

template <typename T>
constexpr int kVecElems = 16 / static_cast<int>(sizeof(T));  // elements in one 16-byte unit

template <typename T>
__device__ __forceinline__ float bits_to_float(typename Storage<T>::Bits b) {
  if constexpr (sizeof(T) == 4) {
    return __uint_as_float(b);
  } else if constexpr (std::is_same_v<T, __half>) {
    return __half2float(__ushort_as_half(b));
  } else {
    return __uint_as_float(static_cast<unsigned>(b) << 16);  // bfloat16: the upper half of a float
  }
}

// The two 16-bit values of a 32-bit word (lower address in the low half) as floats.
template <typename T>
__device__ __forceinline__ float2 word_to_float2(unsigned w) {
  return make_float2(bits_to_float<T>(static_cast<unsigned short>(w & 0xffffu)),
                     bits_to_float<T>(static_cast<unsigned short>(w >> 16)));
}

// Loads: STREAM marks data read once per pass (evict-first, keeps mind/near resident in L2).
template <bool STREAM>
__device__ __forceinline__ uint4 load_unit(const uint4* p) {
  if constexpr (STREAM)
    return __ldcs(p);
  else
    return __ldg(p);
}
template <bool STREAM, typename B>
__device__ __forceinline__ B load_bits(const B* p) {
  if constexpr (STREAM)
    return __ldcs(p);
  else
    return __ldg(p);
}
template <bool SMEM>
__device__ __forceinline__ float4 load_centre4(const float* c, int i) {
  const float4* c4 = reinterpret_cast<const float4*>(c) + i;
  if constexpr (SMEM)
    return *c4;
  else
    return __ldg(c4);
}
template <bool SMEM>
__device__ __forceinline__ float load_centre(const float* c, int k) {
  if constexpr (SMEM)
    return c[k];
  else
    return __ldg(c + k);
}

__device__ __forceinline__ float sq_acc(float x, float c, float acc) {
  const float t = x - c;
  return fmaf(t, t, acc);
}

// Position of element k of a row in the centre layout described at the top of this file.
template <typename T, bool VEC>
__host__ __device__ __forceinline__ int64_t centre_slot(int64_t k, int64_t d) {
  if constexpr (VEC && sizeof(T) == 2) {
    const int64_t u = k >> 3, e = k & 7, nvec = d >> 3;
    return (e >> 2) * (nvec * 4) + u * 4 + (e & 3);
  } else {
    return k;
  }
}

// ---- one row against the centre ---------------------------------------------------------------

// Squared Euclidean distance between `row` (d storage values) and the float32 centre `cen`, summed
// by the G lanes of a group; every lane of the group returns the same value. All 32 lanes of the
// warp must call it together (shuffles); lanes with active == false read nothing and add 0.
template <typename T, int G, bool VEC, bool SMEM, bool STREAM>
__device__ __forceinline__ float row_sqdist(const T* row, const float* cen, int d, int lg,
                                            bool active) {
  float acc = 0.f;
  if (active) {
    if constexpr (VEC) {
      constexpr int U = 4;  // units in flight per lane: memory-level parallelism
      const int nvec = d / kVecElems<T>;
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
            acc = sq_acc(__uint_as_float(v[q].x), c0.x, acc);
            acc = sq_acc(__uint_as_float(v[q].y), c0.y, acc);
            acc = sq_acc(__uint_as_float(v[q].z), c0.z, acc);
            acc = sq_acc(__uint_as_float(v[q].w), c0.w, acc);
          } else {
            const float4 c1 = load_centre4<SMEM>(cen, nvec + u);
            const float2 a = word_to_float2<T>(v[q].x), b = word_to_float2<T>(v[q].y);
            const float2 e = word_to_float2<T>(v[q].z), f = word_to_float2<T>(v[q].w);
            acc = sq_acc(a.x, c0.x, acc);
            acc = sq_acc(a.y, c0.y, acc);
            acc = sq_acc(b.x, c0.z, acc);
            acc = sq_acc(b.y, c0.w, acc);
            acc = sq_acc(e.x, c1.x, acc);
            acc = sq_acc(e.y, c1.y, acc);
            acc = sq_acc(f.x, c1.z, acc);
            acc = sq_acc(f.y, c1.w, acc);
          }
        }
      }
    } else {
      constexpr int U = 8;
      using B = typename Storage<T>::Bits;
      const B* rb = reinterpret_cast<const B*>(row);
      for (int k0 = lg; k0 < d; k0 += G * U) {
        B v[U];
#pragma unroll
        for (int q = 0; q < U; ++q)
          v[q] = (k0 + q * G < d) ? load_bits<STREAM>(rb + k0 + q * G) : B(0);
#pragma unroll
        for (int q = 0; q < U; ++q) {
          const int k = k0 + q * G;
          if (k >= d) break;
          acc = sq_acc(bits_to_float<T>(v[q]), load_centre<SMEM>(cen, k), acc);
        }
      }
    }
  }
  // Butterfly: lanes a and b add the same two values (a + b == b + a), so all agree exactly.
#pragma unroll
  for (int off = G / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(kFullMask, acc, off);
  return acc;
}

// ---- reductions --------------------------------------------------------------------------------

__device__ __forceinline__ unsigned long long warp_max(unsigned long long v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const unsigned long long o = __shfl_xor_sync(kFullMask, v, off);
    v = o > v ? o : v;
  }
  return v;
}

__device__ __forceinline__ unsigned long long warp_sum(unsigned long long v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// Copies the d-float centre row into shared memory (SMEM) or leaves it in global memory. Every
// thread of the block must call it (it synchronises the block).
template <bool SMEM>
__device__ __forceinline__ const float* stage_centre(const float* centre_row, float* smem, int d) {
  if constexpr (SMEM) {
    for (int k = threadIdx.x; k < d; k += blockDim.x) smem[k] = __ldg(centre_row + k);
    __syncthreads();
    return smem;
  } else {
    return centre_row;
  }
}

// ---- host-side launch shapes ------------------------------------------------------------------

// Rows can be read as 16-byte units when the base pointer and the row length are 16-byte aligned.
template <typename T>
inline bool rows_vectorizable(const void* X, int64_t d) {
  return reinterpret_cast<uintptr_t>(X) % 16 == 0 &&
         (d * static_cast<int64_t>(sizeof(T))) % 16 == 0;
}

// Lanes per row: the largest power of two <= 32 that leaves each lane at least four units, so
// that row_sqdist keeps 4 x 16 bytes per lane in flight (e.g. 16 lanes for 512 float16 values,
// 32 for 512 float32 values, 1 below 8 units).
inline int group_size(int64_t units) {
  int g = 1;
  while (g < 32 && int64_t{8} * g <= units) g *= 2;
  return g;
}

// Calls f(TypeTag<T>{}) with T the storage type of `dtype`.
template <typename T>
struct TypeTag {
  using type = T;
};
template <typename F>
inline void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32:
      f(TypeTag<float>{});
      return;
    case DType::Float16:
      f(TypeTag<__half>{});
      return;
    case DType::BFloat16:
      f(TypeTag<__nv_bfloat16>{});
      return;
  }
}

// Calls f(std::integral_constant<int, G>{}) for G in {1, 2, 4, 8, 16, 32}.
template <typename F>
inline void dispatch_group(int g, F&& f) {
  switch (g) {
    case 1:
      f(std::integral_constant<int, 1>{});
      return;
    case 2:
      f(std::integral_constant<int, 2>{});
      return;
    case 4:
      f(std::integral_constant<int, 4>{});
      return;
    case 8:
      f(std::integral_constant<int, 8>{});
      return;
    case 16:
      f(std::integral_constant<int, 16>{});
      return;
    default:
      f(std::integral_constant<int, 32>{});
      return;
  }
}

// Calls f(std::bool_constant<b>{}).
template <typename F>
inline void dispatch_bool(bool b, F&& f) {
  if (b)
    f(std::true_type{});
  else
    f(std::false_type{});
}

// Blocks for a grid-stride kernel: enough for `work_blocks` but no more than fill the device.
template <typename K>
inline int grid_for(K kernel, int64_t work_blocks, int device, size_t smem = 0) {
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  const int64_t full = int64_t{sm_count(device)} * (per_sm > 0 ? per_sm : 1);
  return static_cast<int>(work_blocks < 1 ? 1 : (work_blocks < full ? work_blocks : full));
}

// Blocks of kThreads for a grid-stride loop over `items`: at least 1, at most `cap`.
inline unsigned blocks_for(int64_t items, int64_t cap = 4096) {
  const int64_t b = (items + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b < cap ? b : cap));
}

// Argument checks of the entry points: `p` must be a non-null, `align`-byte aligned pointer that
// CUDA knows (device, managed or registered host memory), on `device` when it is device memory.
inline void require_device_ptr(const void* p, const char* name, int device, size_t align) {
  FASTAL_REQUIRE(p != nullptr, name, " is a null pointer");
  FASTAL_REQUIRE(reinterpret_cast<uintptr_t>(p) % align == 0, name, " must be ", align,
                 "-byte aligned, got address ", p);
  cudaPointerAttributes attr{};
  CUDA_CHECK(cudaPointerGetAttributes(&attr, p));
  FASTAL_REQUIRE(attr.type != cudaMemoryTypeUnregistered, name, " (address ", p,
                 ") is not CUDA memory; pass a device array");
  FASTAL_REQUIRE(attr.type != cudaMemoryTypeDevice || attr.device == device, name,
                 " lives on cuda:", attr.device, " but the call is for cuda:", device);
}

inline size_t dtype_size(DType dtype) { return dtype == DType::Float32 ? 4 : 2; }

constexpr int64_t kMaxRows = (int64_t{1} << 32) - 1;  // row indices must fit the 32-bit key half
constexpr int64_t kMaxCols = int64_t{1} << 30;  // int column offsets, with room for loop overshoot

inline void require_shape(int64_t n, int64_t d, const char* n_name, const char* d_name) {
  FASTAL_REQUIRE(n >= 1, n_name, " must be >= 1, got ", n);
  FASTAL_REQUIRE(n <= kMaxRows, n_name, " must be < 2^32, got ", n);
  FASTAL_REQUIRE(d >= 1, d_name, " must be >= 1, got ", d);
  FASTAL_REQUIRE(d <= kMaxCols, d_name, " must be <= 2^30, got ", d);
}

// Centre rows up to this many floats live in shared memory: 40 KiB plus the kernels' ~2.2 KiB of
// static shared memory stays under the 48 KiB a block gets without opting in.
constexpr int64_t kMaxSmemCentre = 10 * 1024;

}  // namespace fastal::cuda
