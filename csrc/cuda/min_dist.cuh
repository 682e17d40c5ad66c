// Pieces of the tiled "min distance to a set" kernels shared by distances.cu (dense rows) and
// distances_factored.cu (factored rows): tile sizes, the tie rule, and the split of Y's tiles over
// blockIdx.y whose partial minima meet in packed keys (pack_key(-dist2, j), atomicMax: smallest
// distance, then lowest j) decoded by min_dist_finish.
#pragma once
#include "cuda/device.cuh"

namespace fastal::cuda {

namespace {

constexpr int kTile = 64;   // rows of X (and of Y) per block tile
constexpr int kChunk = 32;  // columns per shared-memory stage
constexpr int kPitch = 72;  // pitch of a staged chunk: 16-byte aligned, bank-conflict-free stores

template <typename T>
__device__ __forceinline__ float load_elem(const T* p) {
  return bits_to_float<T>(__ldg(reinterpret_cast<const typename Storage<T>::Bits*>(p)));
}

// Is (d1, j1) a better minimum than (d2, j2)? Smaller distance, then lower index; j < 0 is empty.
__device__ __forceinline__ bool better(float d1, int64_t j1, float d2, int64_t j2) {
  if (j1 < 0) return false;
  if (j2 < 0) return true;
  return d1 < d2 || (d1 == d2 && j1 < j2);
}

__global__ void min_dist_finish_kernel(const unsigned long long* keys, int64_t n, bool sqrt_out,
                                       float* dist, int64_t* index) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const unsigned long long key = keys[i];
    const float d2 = key ? -key_value(key) : NAN;
    dist[i] = sqrt_out ? sqrtf(d2) : d2;
    index[i] = key ? key_index(key) : -1;
  }
}

// Blocks along Y for `row_blocks` blocks of X rows and `tiles` tiles of Y: with few rows of X,
// split Y's tiles over blockIdx.y so that about two waves of blocks run (needs stream-ordered
// scratch for the keys).
inline int64_t min_dist_split(int64_t row_blocks, int64_t tiles, int device) {
  const int64_t target = int64_t{sm_count(device)} * 8;
  int64_t split = 1;
  if (row_blocks < target && tiles > 1 && has_memory_pools(device)) {
    split = (target + row_blocks - 1) / row_blocks;
    split = split < tiles ? split : tiles;
    split = split < 65535 ? split : 65535;
  }
  return split;
}

inline void min_dist_finish(const unsigned long long* keys, int64_t n, bool sqrt_out, float* dist,
                            int64_t* index, cudaStream_t stream) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  min_dist_finish_kernel<<<static_cast<unsigned>(blocks < 4096 ? blocks : 4096), kThreads, 0,
                           stream>>>(keys, n, sqrt_out, dist, index);
  CUDA_CHECK_LAUNCH("min_dist_finish_kernel");
}

}  // namespace

}  // namespace fastal::cuda
