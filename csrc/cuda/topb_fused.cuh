// The fused IHT top-b implementation (topb_fused.cu), called by iht_threshold (topb.cu).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/topb_key.h"
#include "cuda/kernels.h"

namespace fastal::cuda::topb {

// Whether the device can run it (cooperative launches).
bool fused_supported(int device);

// The selection for 1 <= b <= n, the arguments checked by iht_threshold, with the NaN / Inf counts
// into *bad. False, with nothing computed, when the device refuses the cooperative launch (fewer
// SMs available than it reports, under MPS or on a partitioned GPU).
bool iht_threshold_fused(const float* s, const float* sigma, int64_t n, int64_t b,
                         ::fastal::topb::Rule rule, int64_t* support, float* w, int device,
                         cudaStream_t stream, NonfiniteCounts* bad);

}  // namespace fastal::cuda::topb
