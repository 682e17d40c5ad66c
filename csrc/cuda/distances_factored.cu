// Distances to a set for factored pools (factored.cuh): for every row of X, the smallest squared
// distance max(0, sx_i + sy_j - 2 (A_i . A'_j)(H_i . H'_j)) over the rows j of Y (recomputed near
// copies, factored.cuh), and that j (ties to the lowest index). The tiling is that of the dense
// kernel (distances.cu): a block owns 64 rows of X and walks tiles of 64 rows of Y; the A columns
// and then the H columns pass through shared memory in chunks of 32, converted to float32, and
// each of the 16 x 16 threads keeps 4 x 4 dot products of each factor in registers (fmaf, columns
// in order). With few rows of X, Y's tiles are split over blockIdx.y and the partial minima meet in
// packed keys (min_dist.cuh).
#include "cuda/factored.cuh"
#include "cuda/min_dist.cuh"

namespace fastal::cuda {

namespace {

// acc[i][j] += sum over the `len` columns of xrow_i . yrow_j, for this thread's 4 x 4 outputs.
// Every thread of the block calls it with the same len (it synchronises the block).
template <typename T>
__device__ __forceinline__ void tile_dots(const T* xrow, bool x_ok, const T* yrow, bool y_ok,
                                          int len, float (&xs)[kChunk][kPitch],
                                          float (&ys)[kChunk][kPitch], float (&acc)[4][4]) {
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int lr = threadIdx.x >> 2, lq = threadIdx.x & 3;
  for (int k0 = 0; k0 < len; k0 += kChunk) {
    // Padding (rows past n or m, columns past len) is 0 in both tiles: it adds exactly 0.
#pragma unroll
    for (int e = 0; e < kChunk / 4; ++e) {
      const int k = k0 + lq + 4 * e;
      xs[lq + 4 * e][lr] = (x_ok && k < len) ? load_elem(xrow + k) : 0.f;
      ys[lq + 4 * e][lr] = (y_ok && k < len) ? load_elem(yrow + k) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kChunk; ++kk) {
      const float4 a = *reinterpret_cast<const float4*>(&xs[kk][ty * 4]);
      const float4 b = *reinterpret_cast<const float4*>(&ys[kk][tx * 4]);
      const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();  // the next stage overwrites xs / ys
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    min_dist_factored_kernel(FactoredView x, int64_t n, FactoredView y, int64_t m, int64_t tiles,
                             bool sqrt_out, float* dist, int64_t* index, unsigned long long* keys) {
  __shared__ __align__(16) float xs[kChunk][kPitch];
  __shared__ __align__(16) float ys[kChunk][kPitch];
  __shared__ float s_near[16][kThreads];  // expansions of possible near copies (thread-minor)
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;  // outputs: rows ty*4+i, cols tx*4+j
  const int lr = threadIdx.x >> 2;                         // staging: row lr
  const int C = x.C, dh = x.dh;
  const int64_t row0 = int64_t{blockIdx.x} * kTile;
  const int64_t jt0 = tiles * blockIdx.y / gridDim.y, jt1 = tiles * (blockIdx.y + 1) / gridDim.y;
  const bool x_ok = row0 + lr < n;
  const int64_t xr = x_ok ? row0 + lr : 0;
  const T* xa = static_cast<const T*>(x.A) + xr * C;
  const T* xh = static_cast<const T*>(x.H) + xr * dh;

  float sx[4], best[4];
  int64_t arg[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = row0 + ty * 4 + i;
    sx[i] = row < n ? __ldg(x.sqnorm + row) : 0.f;
    best[i] = INFINITY;
    arg[i] = -1;
  }
  for (int64_t jt = jt0; jt < jt1; ++jt) {
    const int64_t col0 = jt * kTile;
    const bool y_ok = col0 + lr < m;
    const int64_t yr = y_ok ? col0 + lr : 0;
    float da[4][4], dh4[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) da[i][j] = dh4[i][j] = 0.f;
    tile_dots<T>(xa, x_ok, static_cast<const T*>(y.A) + yr * C, y_ok, C, xs, ys, da);
    tile_dots<T>(xh, x_ok, static_cast<const T*>(y.H) + yr * dh, y_ok, dh, xs, ys, dh4);
    float sy[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = col0 + tx * 4 + j;
      sy[j] = col < m ? __ldg(y.sqnorm + col) : 0.f;
    }
    // Columns in increasing order with a strict test: ties keep the lowest column. A possible near
    // copy (factored.cuh) is set aside, its expansion in shared memory, and recomputed after the
    // others under the same order on (distance, column), so that the recompute is inlined once.
    unsigned suspect = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t col = col0 + tx * 4 + j;
        const float dd = factored_dist2(sx[i], sy[j], __fmul_rn(da[i][j], dh4[i][j]));
        const bool near = factored_near_copy_suspect(x, dd, __fadd_rn(sx[i], sy[j]));
        if (near) s_near[4 * i + j][threadIdx.x] = dd;
        suspect |= unsigned{near && col < m && row0 + ty * 4 + i < n} << (4 * i + j);
        if (!near && col < m && (dd < best[i] || arg[i] < 0)) {
          best[i] = dd;
          arg[i] = col;
        }
      }
    while (suspect) {
      const int q = __ffs(suspect) - 1, qi = q / 4;
      suspect &= suspect - 1u;
      const int64_t row = row0 + ty * 4 + qi, col = col0 + tx * 4 + q % 4;
      const float s = __fadd_rn(__ldg(x.sqnorm + row), __ldg(y.sqnorm + col));
      const float dd = factored_near_copy_rows<T>(x, row, y, col, s_near[q][threadIdx.x], s);
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (i == qi && better(dd, col, best[i], arg[i])) {
          best[i] = dd;
          arg[i] = col;
        }
    }
  }
  // The 16 threads of a row of the block (one half-warp) combine their candidates.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) {
      const float ob = __shfl_xor_sync(kFullMask, best[i], off);
      const int64_t oa = __shfl_xor_sync(kFullMask, arg[i], off);
      if (better(ob, oa, best[i], arg[i])) {
        best[i] = ob;
        arg[i] = oa;
      }
    }
  }
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = row0 + ty * 4 + i;
      if (row >= n || arg[i] < 0) continue;
      if (keys) {
        atomicMax(keys + row, pack_key(-best[i], arg[i]));
      } else {
        dist[row] = sqrt_out ? sqrtf(best[i]) : best[i];
        index[row] = arg[i];
      }
    }
  }
}

}  // namespace

int64_t factored_centre_floats(int64_t C, int64_t dh) {
  FASTAL_REQUIRE(C >= 1 && dh >= 1, "C and dh must be >= 1, got C = ", C, ", dh = ", dh);
  return factored_centre_offset(C) + dh;
}

namespace detail {

void min_dist_to_set_factored_launch(DType dtype, const Factored& X, const Factored& Y, float* dist,
                                     int64_t* index, bool sqrt_out, int device,
                                     cudaStream_t stream) {
  const int64_t n = X.n, m = Y.n;
  const int64_t row_blocks = (n + kTile - 1) / kTile, tiles = (m + kTile - 1) / kTile;
  const int64_t split = min_dist_split(row_blocks, tiles, device);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const FactoredView x = factored_view<T>(X), y = factored_view<T>(Y);
    const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(split));
    if (split == 1) {
      min_dist_factored_kernel<T>
          <<<grid, kThreads, 0, stream>>>(x, n, y, m, tiles, sqrt_out, dist, index, nullptr);
      CUDA_CHECK_LAUNCH("min_dist_factored_kernel");
      return;
    }
    StreamBuffer keys(static_cast<size_t>(n) * sizeof(unsigned long long), device, stream);
    auto* k = keys.as<unsigned long long>();
    CUDA_CHECK(cudaMemsetAsync(k, 0, static_cast<size_t>(n) * sizeof(unsigned long long), stream));
    min_dist_factored_kernel<T>
        <<<grid, kThreads, 0, stream>>>(x, n, y, m, tiles, sqrt_out, dist, index, k);
    CUDA_CHECK_LAUNCH("min_dist_factored_kernel");
    min_dist_finish(k, n, sqrt_out, dist, index, stream);
  });
}

}  // namespace detail

void min_dist_to_set_factored(DType dtype, const Factored& X, const Factored& Y, float* dist,
                              int64_t* index, int device, cudaStream_t stream) {
  require_factored_shape(X, "n");
  require_factored_shape(Y, "m");
  FASTAL_REQUIRE(Y.C == X.C && Y.dh == X.dh, "Y must have the factor shapes of X (C = ", X.C,
                 ", dh = ", X.dh, "), got C = ", Y.C, ", dh = ", Y.dh);
  DeviceGuard guard(device);
  require_factored_ptrs(X, dtype, "x_", device);
  require_factored_ptrs(Y, dtype, "y_", device);
  require_device_ptr(dist, "dist_ptr", device, alignof(float));
  require_device_ptr(index, "index_ptr", device, alignof(int64_t));
  detail::min_dist_to_set_factored_launch(dtype, X, Y, dist, index, true, device, stream);
}

}  // namespace fastal::cuda
