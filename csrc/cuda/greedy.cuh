// Pieces of k-center greedy shared by kcenter.cu (dense rows) and kcenter_factored.cu (factored
// rows): the packed-key reductions, the labeled initialisation after the min-distance kernel, and
// small launch helpers. The state is the same for both kinds of pool (see kcenter.cu).
#pragma once
#include "cuda/device.cuh"

namespace fastal::cuda {

namespace {

__device__ __forceinline__ bool valid_pick(unsigned long long key, int64_t n) {
  return key != 0 && key_index(key) < n;
}

// Block-wide maximum of one key per thread, then one atomicMax from thread 0 (skipped for 0).
__device__ __forceinline__ void block_max_to(unsigned long long v, unsigned long long* target) {
  __shared__ unsigned long long s_max[kWarps];
  v = warp_max(v);
  if ((threadIdx.x & 31) == 0) s_max[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long m = 0;
    for (int w = 0; w < kWarps; ++w) m = s_max[w] > m ? s_max[w] : m;
    if (m) atomicMax(target, m);
  }
}

__global__ void mark_centres_kernel(const int64_t* centres, int64_t count, int64_t n, float* mind) {
  for (int64_t j = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; j < count;
       j += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c = centres[j];
    if (c >= 0 && c < n) mind[c] = -INFINITY;
  }
}

__global__ void __launch_bounds__(kThreads)
    farthest_kernel(const float* mind, int64_t n, unsigned long long* key) {
  unsigned long long best = 0;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float m = mind[i];
    if (m != -INFINITY) {
      const unsigned long long k = pack_key(m, i);
      best = k > best ? k : best;
    }
  }
  block_max_to(best, key);
}

inline void require_kcenter_sizes(int64_t n, int64_t n_labeled, int64_t budget) {
  FASTAL_REQUIRE(n_labeled >= 0, "n_labeled must be >= 0, got ", n_labeled);
  FASTAL_REQUIRE(budget >= 0, "budget must be >= 0, got ", budget);
  FASTAL_REQUIRE(n_labeled + budget <= n, "n_labeled + budget (", n_labeled, " + ", budget,
                 ") exceeds the number of rows n = ", n);
}

// After mind / near hold the squared distance to the nearest labeled row: the labeled rows become
// centres (mind = -inf) and keys[0] the farthest remaining row.
inline void finish_labeled_init(int64_t n, int64_t n_labeled, const int64_t* centres, float* mind,
                                uint64_t* keys, int device, cudaStream_t stream) {
  auto* key0 = reinterpret_cast<unsigned long long*>(keys);
  mark_centres_kernel<<<blocks_for(n_labeled), kThreads, 0, stream>>>(centres, n_labeled, n, mind);
  CUDA_CHECK_LAUNCH("mark_centres_kernel");
  CUDA_CHECK(cudaMemsetAsync(key0, 0, sizeof(unsigned long long), stream));
  const int grid = grid_for(farthest_kernel, (n + kThreads - 1) / kThreads, device);
  farthest_kernel<<<grid, kThreads, 0, stream>>>(mind, n, key0);
  CUDA_CHECK_LAUNCH("farthest_kernel");
}

}  // namespace

}  // namespace fastal::cuda
