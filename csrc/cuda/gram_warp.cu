// gram_min_eig for matrices of order up to 32: one warp per matrix, lane i owning row i
// (common/gram_warp.h, which the host build runs under a warp emulator for the CPU tests).
//
// The one-thread path (common/gram_small.h) does every step of a matrix serially and waits on
// memory at each; the block path spends a 16 x 16 matrix's time on barriers. Here a warp forms and
// reduces its matrix in shared memory with no barrier but __syncwarp, and one lane then runs the
// serial Laguerre search of the CPU kernel on the tridiagonal, O(order) per evaluation, while the
// SM's other warps keep it busy.
#include <algorithm>
#include <cstdint>

#include "common/gram_warp.h"
#include "cuda/device.cuh"
#include "cuda/gram_warp.cuh"

namespace fastal::cuda {

namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kLanes = gram_warp::kLanes;

// Resident blocks per SM the registers must allow: the formation's kCols accumulators and the
// stage values the compiler keeps in flight take ~100 (kCols 8) to ~250 (kCols 32) registers
// unbounded; these bounds hold them with few or no spills.
__host__ __device__ constexpr int min_blocks(int kCols) { return kCols <= 16 ? 3 : 2; }

// The warp operations of common/gram_warp.h on the device.
struct DeviceWarp {
  __device__ static double shfl(double v, int src) { return __shfl_sync(kFullMask, v, src); }
  __device__ static double shfl_xor(double v, int m) { return __shfl_xor_sync(kFullMask, v, m); }
  __device__ static void sync() { __syncwarp(); }
  __device__ static bool any(bool p) { return __any_sync(kFullMask, p) != 0; }
  template <typename T>
  __device__ static double load(const T* p) {
    return static_cast<double>(__ldg(p));
  }
};

// One warp per group, a grid-stride loop over the groups; each block checks labeled once.
template <typename T, int kCols>
__global__ void __launch_bounds__(kLanes* kWarpsPerBlock, min_blocks(kCols))
    gram_warp_kernel(const gram_small::Args p) {
  extern __shared__ double smem[];
  const int lane = threadIdx.x % kLanes, warp = threadIdx.x / kLanes;
  double* slot = smem + warp * gram_warp::slot_doubles(static_cast<int>(p.size));
  bool bad_labeled = false;
  for (int64_t j = threadIdx.x; j < p.mL; j += blockDim.x)
    bad_labeled |= !gram_small::labeled_in_range(p, j);
  const bool labeled_ok = !__syncthreads_or(bad_labeled);
  const int64_t warps = int64_t{gridDim.x} * kWarpsPerBlock;
  for (int64_t g = int64_t{blockIdx.x} * kWarpsPerBlock + warp; g < p.n_groups; g += warps)
    gram_warp::group_eig<DeviceWarp, T, kCols>(p, g, slot, lane, labeled_ok);
}

template <typename T, int kCols>
void launch_cols(const gram_small::Args& args, int device, cudaStream_t stream) {
  const size_t smem = sizeof(double) * kWarpsPerBlock *
                      static_cast<size_t>(gram_warp::slot_doubles(static_cast<int>(args.size)));
  // resident blocks only: the grid-stride loop gives each warp several groups
  const int64_t blocks = (args.n_groups + kWarpsPerBlock - 1) / kWarpsPerBlock;
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gram_warp_kernel<T, kCols>,
                                                           kLanes * kWarpsPerBlock, smem));
  const int64_t resident = int64_t{sm_count(device)} * std::max(per_sm, 1);
  const auto grid = static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, resident)));
  gram_warp_kernel<T, kCols><<<grid, kLanes * kWarpsPerBlock, smem, stream>>>(args);
  CUDA_CHECK_LAUNCH("gram_warp_kernel");
}

}  // namespace

template <typename T>
void launch_gram_warp(const gram_small::Args& args, int device, cudaStream_t stream) {
  FASTAL_REQUIRE(args.size >= 1 && args.size <= kWarpMaxOrder,
                 "the one-warp path takes orders 1 to 32, got ", args.size);
  if (args.size <= 8)
    launch_cols<T, 8>(args, device, stream);
  else if (args.size <= 16)
    launch_cols<T, 16>(args, device, stream);
  else
    launch_cols<T, 32>(args, device, stream);
}

template void launch_gram_warp<float>(const gram_small::Args&, int, cudaStream_t);
template void launch_gram_warp<double>(const gram_small::Args&, int, cudaStream_t);

}  // namespace fastal::cuda
