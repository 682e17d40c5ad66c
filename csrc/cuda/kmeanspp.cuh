// What kmeanspp.cu (the pass) and kmeanspp_sample.cu (the draw) share: the weight of a row.
#pragma once
#include "cuda/device.cuh"

namespace fastal::cuda {

namespace {

// w = max(mind, 0) in float64 (exact): -inf (a centre), 0 and NaN weigh nothing.
__device__ __forceinline__ double row_weight(float m) {
  return m > 0.f ? static_cast<double>(m) : 0.0;
}

}  // namespace

}  // namespace fastal::cuda
