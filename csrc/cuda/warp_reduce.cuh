// Float64 warp reductions and the rounded symmetric product, shared by the Gram kernels
// (gram_eig.cu, gram_warp.cu).
#pragma once
#include "cuda/device.cuh"

namespace fastal::cuda {

// a b + c d with both products rounded and no fused multiply-add, so that (i, j) and (j, i) of a
// symmetric rank-2 update round identically.
__device__ __forceinline__ double sym2(double a, double b, double c, double d) {
  return __dadd_rn(__dmul_rn(a, b), __dmul_rn(c, d));
}

// Butterfly reductions: lanes a and b combine the same two values, so every lane ends equal.
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}
__device__ __forceinline__ double warp_max_d(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}
__device__ __forceinline__ double warp_min_d(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmin(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}
// max that keeps a NaN once seen (fmax would drop it)
__device__ __forceinline__ double nan_max(double m, double v) { return (v > m || v != v) ? v : m; }
__device__ __forceinline__ double warp_nan_max(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = nan_max(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

}  // namespace fastal::cuda
