// k-means++ seeding (D^2 sampling; Arthur & Vassilvitskii 2007, BADGE: Ash et al. 2020) on the GPU,
// dense or factored rows, with no host round trip per pick.
//
// State (kernels.h, KMeansPPState): mind[i], the float32 squared distance of row i to its nearest
// centre (-inf: a centre); the weight of a row is w_i = max(mind_i, 0) (0 for a centre). The pool
// is cut into fixed tiles of kKMeansPPTile = 256 rows, whatever the grid: tile_sum[b] (float64 sum
// of w over tile b) and tile_count[b] (its non-centres), as left by the last pass. Step t:
//   1. sample (skipped for t = 0 when the host gave the first pick; kmeanspp_sample.cu): one
//      block draws the row for u = uniforms[t] from the tile sums and mind, writes picks[t];
//   2. prepare: mind[pick] = -inf, the pick's row converted to the float32 centre layout;
//   3. the fused pass (skipped after the last pick): every non-centre row gets
//      mind = min(mind, dist2(row, pick)); each tile's sum and count are rewritten. A block takes
//      whole tiles (grid-stride), thread j of the block owns row j of the tile; groups of G lanes
//      compute the distances (device.cuh, factored.cuh) and the owner lane updates its row.
//
// Every sum has a fixed order (butterflies over fixed lanes, sequential loops), and so has the
// sampler's: the same inputs give the same picks on every run and every grid size. Per pick:
// O(n d) (dense) or O(n (C + dh)) (factored) in the pass, O(n / 256) in the sampler.
#include <cmath>

#include "cuda/factored.cuh"
#include "cuda/kmeanspp.cuh"

namespace fastal::cuda {

namespace {

static_assert(kKMeansPPTile == kThreads, "a pass block owns one tile row per thread");

// ---- rows: dense and factored, behind one interface for the pass --------------------------------

// Staging: row c converted to the float32 centre layout, by the whole grid.
template <typename T, bool VEC>
struct DenseStage {
  const T* X;
  int d;
  __device__ __forceinline__ void operator()(int64_t c, float* centre_row) const {
    using B = typename Storage<T>::Bits;
    const B* row = reinterpret_cast<const B*>(X + c * d);
    for (int64_t k = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; k < d;
         k += int64_t{gridDim.x} * blockDim.x)
      centre_row[centre_slot<T, VEC>(k, d)] = bits_to_float<T>(__ldg(row + k));
  }
};

template <typename T>
struct FactoredStage {
  FactoredView v;
  __device__ __forceinline__ void operator()(int64_t c, float* centre_row) const {
    stage_factored_centre<T>(v, c, centre_row);
  }
};

// part(): computed by the G lanes of a group (all lanes of the warp call it together); finish():
// the squared distance from it, by the lane owning the row.
template <typename T, int G, bool VEC, bool SMEM>
struct DenseRows {
  static constexpr int kG = G;
  const T* X;
  int d;
  __device__ __forceinline__ float part(int64_t row, const float* cen, int lg, bool active) const {
    return row_sqdist<T, G, VEC, SMEM, true>(X + (active ? row : 0) * d, cen, d, lg, active);
  }
  __device__ __forceinline__ float finish(float part, int64_t, const float*, float) const {
    return part;
  }
  __device__ __forceinline__ float centre_sqnorm(int64_t) const { return 0.f; }
  DenseStage<T, VEC> stage() const { return {X, d}; }
};

template <typename T, int G, bool SMEM>
struct FactoredRows {
  static constexpr int kG = G;
  FactoredView v;
  __device__ __forceinline__ float part(int64_t row, const float* cen, int lg, bool active) const {
    return factored_product<T, G, SMEM, true>(v, row, cen, lg, active);
  }
  __device__ __forceinline__ float finish(float part, int64_t i, const float* cen,
                                          float sq_c) const {
    return factored_dist2_to_centre<T>(v, i, cen, __ldg(v.sqnorm + i), sq_c, part);
  }
  __device__ __forceinline__ float centre_sqnorm(int64_t c) const { return __ldg(v.sqnorm + c); }
  FactoredStage<T> stage() const { return {v}; }
};

// ---- tile sums ----------------------------------------------------------------------------------

// Sum of w and count of non-centres over the block's tile (thread j: row j), in a fixed order,
// written by thread 0. Every thread of the block must call it (it synchronises the block twice).
__device__ __forceinline__ void tile_reduce(double w, bool live, double* sum_out,
                                            int32_t* count_out) {
  __shared__ double s_sum[kWarps];
  __shared__ int s_count[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) w += __shfl_xor_sync(kFullMask, w, off);
  const int count = __popc(__ballot_sync(kFullMask, live));
  if (lane == 0) {
    s_sum[warp] = w;
    s_count[warp] = count;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0.0;
    int c = 0;
    for (int k = 0; k < kWarps; ++k) {
      s += s_sum[k];
      c += s_count[k];
    }
    *sum_out = s;
    *count_out = c;
  }
  __syncthreads();  // s_sum / s_count are rewritten for the next tile
}

__global__ void __launch_bounds__(kThreads)
    tile_sums_kernel(const float* mind, int64_t n, double* tile_sum, int32_t* tile_count) {
  const int64_t tiles = (n + kKMeansPPTile - 1) / kKMeansPPTile;
  for (int64_t b = blockIdx.x; b < tiles; b += gridDim.x) {
    const int64_t i = b * kKMeansPPTile + threadIdx.x;
    const float m = i < n ? mind[i] : -INFINITY;
    tile_reduce(row_weight(m), m != -INFINITY, tile_sum + b, tile_count + b);
  }
}

// ---- initialisation -----------------------------------------------------------------------------

__global__ void mark_rows_kernel(const int64_t* rows, int64_t count, int64_t n, float* mind) {
  for (int64_t j = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; j < count;
       j += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c = rows[j];
    if (c >= 0 && c < n) mind[c] = -INFINITY;
  }
}

__global__ void init_first_kernel(int64_t n, int64_t first, float* mind, int64_t* picks) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    mind[i] = INFINITY;
  if (blockIdx.x == 0 && threadIdx.x == 0) picks[0] = first;
}

// ---- one pick -----------------------------------------------------------------------------------

template <class Stage>
__global__ void prepare_kernel(Stage stage, int64_t n, const int64_t* picks, int64_t t, float* mind,
                               float* centre_row) {
  const int64_t c = picks[t];
  if (c < 0 || c >= n) return;
  if (blockIdx.x == 0 && threadIdx.x == 0) mind[c] = -INFINITY;  // the pass skips it from now on
  stage(c, centre_row);
}

template <class Rows, bool SMEM>
__global__ void __launch_bounds__(kThreads)
    pass_kernel(Rows rows, int64_t n, int centre_floats, float* mind, const int64_t* picks,
                int64_t t, const float* centre_row, double* tile_sum, int32_t* tile_count) {
  extern __shared__ float4 smem_centre[];
  __shared__ float s_part[kWarps][32];  // each row's part(), by owner lane
  const int64_t c = picks[t];
  if (c < 0 || c >= n) return;  // uniform over the grid
  const float* cen =
      stage_centre<SMEM>(centre_row, reinterpret_cast<float*>(smem_centre), centre_floats);
  const float sq_c = rows.centre_sqnorm(c);
  constexpr int G = Rows::kG, R = 32 / G;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, grp = lane / G, lg = lane % G;
  const int64_t tiles = (n + kKMeansPPTile - 1) / kKMeansPPTile;
  for (int64_t b = blockIdx.x; b < tiles; b += gridDim.x) {
    const int64_t base = b * kKMeansPPTile + warp * 32, i = base + lane;
    float m = i < n ? mind[i] : -INFINITY;
    const bool live = m != -INFINITY;  // in range and not a centre
    const unsigned mask = __ballot_sync(kFullMask, live);
    if (mask) {  // uniform over the warp
      // Groups take the 32 rows R at a time; every lane runs the same trip count (shuffles).
      for (int k0 = 0; k0 < 32; k0 += R) {
        const int row = k0 + grp;
        const bool has = (mask >> row) & 1u;
        const float p = rows.part(base + row, cen, lg, has);
        if (has && lg == 0) s_part[warp][row] = p;
      }
      __syncwarp();
    }
    double w = 0.0;
    if (live) {
      const float dd = rows.finish(s_part[warp][lane], i, cen, sq_c);
      if (dd < m) {
        m = dd;
        mind[i] = dd;
      }
      w = row_weight(m);
    }
    tile_reduce(w, live, tile_sum + b, tile_count + b);  // synchronises: s_part may be rewritten
  }
}

// ---- host side ----------------------------------------------------------------------------------

template <class Rows, bool SMEM>
void run_steps(const Rows& rows, int64_t n, int64_t centre_floats, int64_t row_values,
               const KMeansPPState& s) {
  const size_t smem = SMEM ? static_cast<size_t>(centre_floats) * sizeof(float) : 0;
  auto pass = pass_kernel<Rows, SMEM>;
  const int pass_grid = grid_for(pass, kmeanspp_tiles(n), s.device, smem);
  const unsigned prep_grid = blocks_for(row_values, 64);
  const auto stage = rows.stage();
  for (int64_t t = s.t_begin; t < s.t_end; ++t) {
    if (!(t == 0 && s.first_given))
      detail::kmeanspp_sample_launch(s.mind, n, s.tile_sum, s.tile_count, s.uniforms, t, s.picks,
                                     s.totals, s.stream);
    prepare_kernel<<<prep_grid, kThreads, 0, s.stream>>>(stage, n, s.picks, t, s.mind,
                                                         s.centre_row);
    CUDA_CHECK_LAUNCH("prepare_kernel");
    if (t + 1 < s.k) {  // the state after the last pick is never sampled
      pass<<<pass_grid, kThreads, smem, s.stream>>>(rows, n, static_cast<int>(centre_floats),
                                                    s.mind, s.picks, t, s.centre_row, s.tile_sum,
                                                    s.tile_count);
      CUDA_CHECK_LAUNCH("pass_kernel");
    }
  }
}

void require_state_sizes(const KMeansPPState& s, int64_t n) {
  FASTAL_REQUIRE(s.k >= 1 && s.k <= n, "k must be in [1, n = ", n, "], got ", s.k);
  FASTAL_REQUIRE(0 <= s.t_begin && s.t_begin <= s.t_end && s.t_end <= s.k,
                 "steps [t_begin, t_end) = [", s.t_begin, ", ", s.t_end,
                 ") must satisfy 0 <= t_begin <= t_end <= k = ", s.k);
}

void require_state_ptrs(const KMeansPPState& s) {
  require_device_ptr(s.mind, "mind_ptr", s.device, alignof(float));
  require_device_ptr(s.picks, "picks_ptr", s.device, alignof(int64_t));
  require_device_ptr(s.uniforms, "uniforms_ptr", s.device, alignof(double));
  require_device_ptr(s.tile_sum, "tile_sum_ptr", s.device, alignof(double));
  require_device_ptr(s.tile_count, "tile_count_ptr", s.device, alignof(int32_t));
  require_device_ptr(s.totals, "totals_ptr", s.device, alignof(double));
  require_device_ptr(s.centre_row, "centre_row_ptr", s.device, 16);  // float4 reads
}

void require_tiles(double* tile_sum, int32_t* tile_count, int device) {
  require_device_ptr(tile_sum, "tile_sum_ptr", device, alignof(double));
  require_device_ptr(tile_count, "tile_count_ptr", device, alignof(int32_t));
}

// After mind holds the squared distance to the nearest labeled row: labeled rows become centres,
// then the tile sums the first draw reads.
void finish_labeled(int64_t n, const int64_t* labeled, int64_t n_labeled, float* mind,
                    double* tile_sum, int32_t* tile_count, int device, cudaStream_t stream) {
  mark_rows_kernel<<<blocks_for(n_labeled), kThreads, 0, stream>>>(labeled, n_labeled, n, mind);
  CUDA_CHECK_LAUNCH("mark_rows_kernel");
  const int grid = grid_for(tile_sums_kernel, kmeanspp_tiles(n), device);
  tile_sums_kernel<<<grid, kThreads, 0, stream>>>(mind, n, tile_sum, tile_count);
  CUDA_CHECK_LAUNCH("tile_sums_kernel");
}

}  // namespace

int64_t kmeanspp_tiles(int64_t n) {
  FASTAL_REQUIRE(n >= 1, "n must be >= 1, got ", n);
  return (n + kKMeansPPTile - 1) / kKMeansPPTile;
}

void kmeanspp_init_labeled(DType dtype, const void* X, int64_t n, int64_t d, const void* rows,
                           int64_t n_labeled, const int64_t* labeled, float* mind, double* tile_sum,
                           int32_t* tile_count, int device, cudaStream_t stream) {
  require_shape(n, d, "n", "d");
  FASTAL_REQUIRE(n_labeled >= 1 && n_labeled <= n, "n_labeled must be in [1, n = ", n, "], got ",
                 n_labeled);
  DeviceGuard guard(device);
  require_device_ptr(X, "x_ptr", device, dtype_size(dtype));
  require_device_ptr(rows, "rows_ptr", device, dtype_size(dtype));
  require_device_ptr(labeled, "labeled_ptr", device, alignof(int64_t));
  require_device_ptr(mind, "mind_ptr", device, alignof(float));
  require_tiles(tile_sum, tile_count, device);
  StreamBuffer nearest(static_cast<size_t>(n) * sizeof(int64_t), device, stream);
  detail::min_dist_to_set_launch(dtype, X, n, rows, n_labeled, d, mind, nearest.as<int64_t>(),
                                 false, device, stream);
  finish_labeled(n, labeled, n_labeled, mind, tile_sum, tile_count, device, stream);
}

void kmeanspp_init_labeled_factored(DType dtype, const Factored& X, const Factored& rows,
                                    const int64_t* labeled, float* mind, double* tile_sum,
                                    int32_t* tile_count, int device, cudaStream_t stream) {
  require_factored_shape(X, "n");
  FASTAL_REQUIRE(rows.n >= 1 && rows.n <= X.n, "n_labeled must be in [1, n = ", X.n, "], got ",
                 rows.n);
  FASTAL_REQUIRE(rows.C == X.C && rows.dh == X.dh, "the labeled rows must have the factor shapes ",
                 "of X (C = ", X.C, ", dh = ", X.dh, "), got C = ", rows.C, ", dh = ", rows.dh);
  DeviceGuard guard(device);
  require_factored_ptrs(X, dtype, "", device);
  require_factored_ptrs(rows, dtype, "rows_", device);
  require_device_ptr(labeled, "labeled_ptr", device, alignof(int64_t));
  require_device_ptr(mind, "mind_ptr", device, alignof(float));
  require_tiles(tile_sum, tile_count, device);
  StreamBuffer nearest(static_cast<size_t>(X.n) * sizeof(int64_t), device, stream);
  detail::min_dist_to_set_factored_launch(dtype, X, rows, mind, nearest.as<int64_t>(), false,
                                          device, stream);
  finish_labeled(X.n, labeled, rows.n, mind, tile_sum, tile_count, device, stream);
}

void kmeanspp_init_first(int64_t first, int64_t n, float* mind, int64_t* picks, int device,
                         cudaStream_t stream) {
  require_shape(n, 1, "n", "d");
  FASTAL_REQUIRE(first >= 0 && first < n, "first must be in [0, ", n, "), got ", first);
  DeviceGuard guard(device);
  require_device_ptr(mind, "mind_ptr", device, alignof(float));
  require_device_ptr(picks, "picks_ptr", device, alignof(int64_t));
  init_first_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, first, mind, picks);
  CUDA_CHECK_LAUNCH("init_first_kernel");
}

void kmeanspp_steps(DType dtype, const void* X, int64_t n, int64_t d, const KMeansPPState& s) {
  require_shape(n, d, "n", "d");
  require_state_sizes(s, n);
  DeviceGuard guard(s.device);
  require_device_ptr(X, "x_ptr", s.device, dtype_size(dtype));
  require_state_ptrs(s);
  if (s.t_begin == s.t_end) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vec = rows_vectorizable<T>(X, d);
    const bool smem = d <= kMaxSmemCentre;
    dispatch_group(group_size(vec ? d / kVecElems<T> : d), [&](auto g) {
      dispatch_bool(vec, [&](auto v) {
        dispatch_bool(smem, [&](auto sm) {
          using Rows = DenseRows<T, decltype(g)::value, decltype(v)::value, decltype(sm)::value>;
          const Rows rows{static_cast<const T*>(X), static_cast<int>(d)};
          run_steps<Rows, decltype(sm)::value>(rows, n, d, d, s);
        });
      });
    });
  });
}

void kmeanspp_steps_factored(DType dtype, const Factored& X, const KMeansPPState& s) {
  require_factored_shape(X, "n");
  require_state_sizes(s, X.n);
  DeviceGuard guard(s.device);
  require_factored_ptrs(X, dtype, "", s.device);
  require_state_ptrs(s);
  if (s.t_begin == s.t_end) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const FactoredView v = factored_view<T>(X);
    const int64_t floats = factored_centre_size(v);
    dispatch_group(factored_group<T>(v), [&](auto g) {
      dispatch_bool(floats <= kMaxSmemCentre, [&](auto sm) {
        using Rows = FactoredRows<T, decltype(g)::value, decltype(sm)::value>;
        run_steps<Rows, decltype(sm)::value>(Rows{v}, X.n, floats, X.C + X.dh, s);
      });
    });
  });
}

}  // namespace fastal::cuda
