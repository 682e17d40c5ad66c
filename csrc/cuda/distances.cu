// Distances to a set and the finiteness scan, on the GPU.
//
// min_dist_to_set: every row of X (n x d) against every row of Y (m x d), keeping per row of X the
// smallest squared distance and its column (ties to the lowest index). A block owns 64 rows of X
// and walks tiles of 64 rows of Y; both tiles pass through shared memory in chunks of 32 columns,
// converted to float32, and each of the 16 x 16 threads keeps a 4 x 4 block of distances in
// registers (GEMM-style register blocking). The distance is the direct sum of (x - y)^2, summed
// over columns in order: the |x|^2 + |y|^2 - 2 x.y expansion would lose near-duplicates to
// cancellation. When X has too few rows to fill the GPU, Y's tiles are split over blockIdx.y and
// the partial minima meet in packed keys (pack_key(-dist2, j), atomicMax: smallest distance, then
// lowest j), decoded by a second kernel. No n x m matrix is ever stored.
//
// count_nonfinite_rows: a group of lanes per row tests the exponent bits (all ones: NaN or Inf);
// block totals meet in one atomicAdd (count) and one atomicMin (first row).
#include <climits>

#include "cuda/min_dist.cuh"

namespace fastal::cuda {

DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::Float32;
  if (name == "float16") return DType::Float16;
  if (name == "bfloat16") return DType::BFloat16;
  fail_argument("dtype must be one of 'float32', 'float16', 'bfloat16', got '", name, "'");
}

void synchronize(int device, cudaStream_t stream) {
  DeviceGuard guard(device);
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

namespace {

// ---- finiteness -----------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ bool word_nonfinite(unsigned w) {
  if constexpr (sizeof(T) == 4) {
    return (w & 0x7f800000u) == 0x7f800000u;
  } else {
    constexpr unsigned m = Storage<T>::kExpMask;
    return (w & m) == m || ((w >> 16) & m) == m;
  }
}

template <typename T, int G, bool VEC>
__global__ void __launch_bounds__(kThreads)
    nonfinite_rows_kernel(const T* X, int64_t n, int d, unsigned long long* out) {
  __shared__ unsigned long long s_count[kWarps], s_first[kWarps];
  constexpr int R = 32 / G;  // rows per warp pass
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, lg = lane % G;
  const unsigned group_mask = (G == 32 ? kFullMask : ((1u << G) - 1u)) << (lane / G * G);
  unsigned long long count = 0, first = ULLONG_MAX;
  const int64_t passes = (n + R - 1) / R;
  for (int64_t w = int64_t{blockIdx.x} * kWarps + warp; w < passes;
       w += int64_t{gridDim.x} * kWarps) {
    const int64_t row = w * R + lane / G;
    bool bad = false;
    if (row < n) {
      if constexpr (VEC) {
        const uint4* r4 = reinterpret_cast<const uint4*>(X + row * d);
        const int nvec = d / kVecElems<T>;
#pragma unroll 4
        for (int u = lg; u < nvec; u += G) {
          const uint4 v = __ldcs(r4 + u);
          bad |= word_nonfinite<T>(v.x) | word_nonfinite<T>(v.y) | word_nonfinite<T>(v.z) |
                 word_nonfinite<T>(v.w);
        }
      } else {
        using B = typename Storage<T>::Bits;
        const B* rb = reinterpret_cast<const B*>(X + row * d);
#pragma unroll 4
        for (int k = lg; k < d; k += G)
          bad |= (__ldcs(rb + k) & Storage<T>::kExpMask) == Storage<T>::kExpMask;
      }
    }
    const unsigned ballot = __ballot_sync(kFullMask, bad);
    if (row < n && lg == 0 && (ballot & group_mask)) {
      ++count;
      const auto r = static_cast<unsigned long long>(row);
      first = r < first ? r : first;
    }
  }
  count = warp_sum(count);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const unsigned long long o = __shfl_xor_sync(kFullMask, first, off);
    first = o < first ? o : first;
  }
  if (lane == 0) {
    s_count[warp] = count;
    s_first[warp] = first;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long c = 0, f = ULLONG_MAX;
    for (int w = 0; w < kWarps; ++w) {
      c += s_count[w];
      f = s_first[w] < f ? s_first[w] : f;
    }
    if (c) {
      atomicAdd(out, c);
      atomicMin(out + 1, f);
    }
  }
}

template <typename T>
int64_t count_nonfinite_impl(const T* X, int64_t n, int64_t d, int64_t* first, int device,
                             cudaStream_t stream) {
  StreamBuffer buf(2 * sizeof(unsigned long long), device, stream);
  auto* out = buf.as<unsigned long long>();
  CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(unsigned long long), stream));         // count
  CUDA_CHECK(cudaMemsetAsync(out + 1, 0xff, sizeof(unsigned long long), stream));  // first
  const bool vec = rows_vectorizable<T>(X, d);
  dispatch_group(group_size(vec ? d / kVecElems<T> : d), [&](auto g) {
    constexpr int G = decltype(g)::value;
    dispatch_bool(vec, [&](auto v) {
      auto kernel = nonfinite_rows_kernel<T, G, decltype(v)::value>;
      const int64_t passes = (n + 32 / G - 1) / (32 / G);
      const int grid = grid_for(kernel, (passes + kWarps - 1) / kWarps, device);
      kernel<<<grid, kThreads, 0, stream>>>(X, n, static_cast<int>(d), out);
      CUDA_CHECK_LAUNCH("nonfinite_rows_kernel");
    });
  });
  unsigned long long host[2] = {0, 0};
  CUDA_CHECK(cudaMemcpyAsync(host, out, sizeof host, cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  *first = host[0] ? static_cast<int64_t>(host[1]) : -1;
  return static_cast<int64_t>(host[0]);
}

// ---- min distance to a set ------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads)
    min_dist_kernel(const T* X, int64_t n, const T* Y, int64_t m, int d, int64_t tiles,
                    bool sqrt_out, float* dist, int64_t* index, unsigned long long* keys) {
  __shared__ __align__(16) float xs[kChunk][kPitch];
  __shared__ __align__(16) float ys[kChunk][kPitch];
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;  // outputs: rows ty*4+i, cols tx*4+j
  const int lr = threadIdx.x >> 2, lq = threadIdx.x & 3;   // staging: row lr, columns lq + 4e
  const int64_t row0 = int64_t{blockIdx.x} * kTile;
  const int64_t jt0 = tiles * blockIdx.y / gridDim.y, jt1 = tiles * (blockIdx.y + 1) / gridDim.y;
  const bool x_ok = row0 + lr < n;
  const T* xrow = X + (x_ok ? row0 + lr : 0) * d;

  float best[4];
  int64_t arg[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    best[i] = INFINITY;
    arg[i] = -1;
  }
  for (int64_t jt = jt0; jt < jt1; ++jt) {
    const int64_t col0 = jt * kTile;
    const bool y_ok = col0 + lr < m;
    const T* yrow = Y + (y_ok ? col0 + lr : 0) * d;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    for (int k0 = 0; k0 < d; k0 += kChunk) {
      // Padding (rows past n or m, columns past d) is 0 in both tiles: it adds exactly 0.
#pragma unroll
      for (int e = 0; e < kChunk / 4; ++e) {
        const int k = k0 + lq + 4 * e;
        xs[lq + 4 * e][lr] = (x_ok && k < d) ? load_elem(xrow + k) : 0.f;
        ys[lq + 4 * e][lr] = (y_ok && k < d) ? load_elem(yrow + k) : 0.f;
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
          for (int j = 0; j < 4; ++j) acc[i][j] = sq_acc(av[i], bv[j], acc[i][j]);
      }
      __syncthreads();  // the next stage overwrites xs / ys
    }
    // Columns in increasing order with a strict test: ties keep the lowest column.
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t col = col0 + tx * 4 + j;
        if (col < m && (acc[i][j] < best[i] || arg[i] < 0)) {
          best[i] = acc[i][j];
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

namespace detail {

void min_dist_to_set_launch(DType dtype, const void* X, int64_t n, const void* Y, int64_t m,
                            int64_t d, float* dist, int64_t* index, bool sqrt_out, int device,
                            cudaStream_t stream) {
  const int64_t row_blocks = (n + kTile - 1) / kTile, tiles = (m + kTile - 1) / kTile;
  const int64_t split = min_dist_split(row_blocks, tiles, device);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = static_cast<const T*>(X);
    const T* y = static_cast<const T*>(Y);
    const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(split));
    if (split == 1) {
      min_dist_kernel<T><<<grid, kThreads, 0, stream>>>(x, n, y, m, static_cast<int>(d), tiles,
                                                        sqrt_out, dist, index, nullptr);
      CUDA_CHECK_LAUNCH("min_dist_kernel");
      return;
    }
    StreamBuffer keys(static_cast<size_t>(n) * sizeof(unsigned long long), device, stream);
    auto* k = keys.as<unsigned long long>();
    CUDA_CHECK(cudaMemsetAsync(k, 0, static_cast<size_t>(n) * sizeof(unsigned long long), stream));
    min_dist_kernel<T><<<grid, kThreads, 0, stream>>>(x, n, y, m, static_cast<int>(d), tiles,
                                                      sqrt_out, dist, index, k);
    CUDA_CHECK_LAUNCH("min_dist_kernel");
    min_dist_finish(k, n, sqrt_out, dist, index, stream);
  });
}

}  // namespace detail

int64_t count_nonfinite_rows(DType dtype, const void* X, int64_t n, int64_t d, int64_t* first,
                             int device, cudaStream_t stream) {
  require_shape(n, d, "n", "d");
  DeviceGuard guard(device);
  require_device_ptr(X, "x_ptr", device, dtype_size(dtype));
  int64_t count = 0;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    count = count_nonfinite_impl(static_cast<const T*>(X), n, d, first, device, stream);
  });
  return count;
}

void min_dist_to_set(DType dtype, const void* X, int64_t n, const void* Y, int64_t m, int64_t d,
                     float* dist, int64_t* index, int device, cudaStream_t stream, bool squared) {
  require_shape(n, d, "n", "d");
  require_shape(m, d, "m", "d");
  DeviceGuard guard(device);
  require_device_ptr(X, "x_ptr", device, dtype_size(dtype));
  require_device_ptr(Y, "y_ptr", device, dtype_size(dtype));
  require_device_ptr(dist, "dist_ptr", device, alignof(float));
  require_device_ptr(index, "index_ptr", device, alignof(int64_t));
  detail::min_dist_to_set_launch(dtype, X, n, Y, m, d, dist, index, !squared, device, stream);
}

}  // namespace fastal::cuda
