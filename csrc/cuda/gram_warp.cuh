// The one-warp-per-matrix path of gram_min_eig (gram_warp.cu), for orders up to 32.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/gram_warp.h"

namespace fastal::cuda {

constexpr int64_t kWarpMaxOrder = gram_warp::kMaxOrder;  // one lane per row of the matrix

// λ⁺_min (and the spectra) of every group, one warp per matrix. args as for gram_small_kernel,
// but work and slots unused; args.shared must already hold the shared part (launch_shared_part).
template <typename T>
void launch_gram_warp(const gram_small::Args& args, int device, cudaStream_t stream);

}  // namespace fastal::cuda
