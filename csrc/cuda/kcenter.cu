// k-center greedy on the GPU (Sener & Savarese, Alg. 1) with no host round trip per pick.
//
// State on the device: mind[i] (float32 squared distance of row i to its nearest centre, -inf for
// a centre), near[i] (position of that centre in `centres`), and keys[t], a packed (value, index)
// key (common/key.h) whose atomicMax is the arg-max with ties to the lowest index: keys[t] names
// pick t and keys[t + 1] holds the largest mind after it. Step t reads its pick from keys[t] on
// the device, so the host only queues launches:
//   1. prepare: centres[pos] = c, mind[c] = -inf, near[c] = pos, keys[t + 1] = 0, and row c of X
//      converted to float32 into centre_row (tiny);
//   2. centre distances (prune only): d(c, centre j)^2 for every earlier centre j, a group of
//      lanes per centre over the whole grid;
//   3. the fused pass over the pool: each warp takes 32 rows at a time, reads their mind / near,
//      drops centres and rows the triangle inequality rules out (common/prune.h), and hands the
//      remaining rows to groups of G lanes (device.cuh) that compute the distance to the centre
//      with 16-byte loads. The owner lane updates mind / near and offers pack_key(mind, i) to a
//      block maximum; one atomicMax per block into keys[t + 1], one atomicAdd into the
//      rows-read counter. The grid is sized from the SM count and strides over the pool.
// Invalid keys (0, or an index >= n: impossible for valid input) make every kernel of the step
// return without writing, so a bad state never turns into an out-of-bounds access.
#include <cmath>

#include "common/prune.h"
#include "cuda/greedy.cuh"

namespace fastal::cuda {

namespace {

// ---- initialisation ---------------------------------------------------------------------------

__global__ void init_first_kernel(int64_t n, int64_t first, float* mind, int64_t* near,
                                  unsigned long long* keys) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    mind[i] = INFINITY;
    near[i] = -1;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) keys[0] = pack_key(INFINITY, first);
}

// ---- one greedy step --------------------------------------------------------------------------

template <typename T, bool VEC>
__global__ void prepare_kernel(const T* X, int64_t n, int d, int64_t t, int64_t pos,
                               unsigned long long* keys, int64_t* centres, float* mind,
                               int64_t* near, float* centre_row) {
  const unsigned long long key = keys[t];
  if (!valid_pick(key, n)) return;
  const int64_t c = key_index(key);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    centres[pos] = c;
    mind[c] = -INFINITY;  // the fused pass then skips the new centre like any other
    near[c] = pos;
    keys[t + 1] = 0;  // the pass of this step reduces into it
  }
  using B = typename Storage<T>::Bits;
  const B* row = reinterpret_cast<const B*>(X + c * d);
  for (int64_t k = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; k < d;
       k += int64_t{gridDim.x} * blockDim.x)
    centre_row[centre_slot<T, VEC>(k, d)] = bits_to_float<T>(__ldg(row + k));
}

template <typename T, int G, bool VEC, bool SMEM>
__global__ void __launch_bounds__(kThreads)
    centre_dist_kernel(const T* X, int64_t n, int d, const int64_t* centres, int64_t pos,
                       const float* centre_row, float* out, const unsigned long long* keys,
                       int64_t t) {
  extern __shared__ float4 smem_centre[];
  if (!valid_pick(keys[t], n)) return;  // uniform over the grid
  const float* cen = stage_centre<SMEM>(centre_row, reinterpret_cast<float*>(smem_centre), d);
  constexpr int R = 32 / G;  // centres per warp pass
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, lg = lane % G;
  const int64_t passes = (pos + R - 1) / R;
  for (int64_t w = int64_t{blockIdx.x} * kWarps + warp; w < passes;
       w += int64_t{gridDim.x} * kWarps) {
    const int64_t j = w * R + lane / G;
    const int64_t row = j < pos ? centres[j] : -1;
    const bool has = row >= 0 && row < n;
    const float dd = row_sqdist<T, G, VEC, SMEM, false>(X + (has ? row : 0) * d, cen, d, lg, has);
    // An out-of-range centre (never for valid input) gets 0: it then prunes only rows at distance
    // 0.
    if (j < pos && lg == 0) out[j] = has ? dd : 0.f;
  }
}

struct PassArgs {
  const void* X;
  int64_t n;
  int d;
  float* mind;
  int64_t* near;
  const float* centre_row;
  const float* centre_dist2;
  unsigned long long* keys;
  unsigned long long* counter;
  int64_t t, pos;
  float factor;
  bool prune;
};

template <typename T, int G, bool VEC, bool SMEM>
__global__ void __launch_bounds__(kThreads) pass_kernel(PassArgs a) {
  extern __shared__ float4 smem_centre[];
  __shared__ int s_list[kWarps][32];    // lanes (rows) of the current batch that must be read
  __shared__ float s_dist[kWarps][32];  // their distances, by owner lane
  __shared__ unsigned long long s_reads[kWarps];
  if (!valid_pick(a.keys[a.t], a.n)) return;  // uniform over the grid
  const float* cen = stage_centre<SMEM>(a.centre_row, reinterpret_cast<float*>(smem_centre), a.d);
  const T* X = static_cast<const T*>(a.X);
  constexpr int R = 32 / G;  // rows a warp reads at once
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, grp = lane / G, lg = lane % G;
  const int64_t batches = (a.n + 31) / 32;
  unsigned long long best = 0, reads = 0;

  for (int64_t b = int64_t{blockIdx.x} * kWarps + warp; b < batches;
       b += int64_t{gridDim.x} * kWarps) {
    // Each lane owns one row of the batch: coalesced reads of mind / near.
    const int64_t i = b * 32 + lane;
    float m = i < a.n ? a.mind[i] : -INFINITY;
    const bool live = m != -INFINITY;  // in range and not a centre
    bool need = live;
    if (a.prune && live) {
      const int64_t c = a.near[i];
      if (c >= 0 && __ldg(a.centre_dist2 + c) >= a.factor * m) need = false;
    }
    const unsigned mask = __ballot_sync(kFullMask, need);
    if (need) s_list[warp][__popc(mask & ((1u << lane) - 1u))] = lane;
    __syncwarp();
    const int count = __popc(mask);
    // Groups take the listed rows R at a time; every lane runs the same trip count (shuffles).
    for (int k0 = 0; k0 < count; k0 += R) {
      const bool has = k0 + grp < count;
      const int owner = has ? s_list[warp][k0 + grp] : 0;
      const float dd =
          row_sqdist<T, G, VEC, SMEM, true>(X + (b * 32 + owner) * a.d, cen, a.d, lg, has);
      if (has && lg == 0) s_dist[warp][owner] = dd;
    }
    __syncwarp();
    if (need) {
      const float dd = s_dist[warp][lane];
      if (dd < m) {
        m = dd;
        a.mind[i] = dd;
        a.near[i] = a.pos;
      }
    }
    if (live) {
      const unsigned long long k = pack_key(m, i);
      best = k > best ? k : best;
    }
    reads += lane == 0 ? count : 0;
    __syncwarp();  // s_list / s_dist are rewritten by the next batch
  }

  reads = warp_sum(reads);
  if (lane == 0) s_reads[warp] = reads;
  block_max_to(best, a.keys + a.t + 1);  // synchronises the block: s_reads is complete
  if (threadIdx.x == 0) {
    unsigned long long r = 0;
    for (int w = 0; w < kWarps; ++w) r += s_reads[w];
    if (r) atomicAdd(a.counter, r);
  }
}

__global__ void decode_kernel(const unsigned long long* keys, int64_t budget, int64_t* picks,
                              float* radius) {
  for (int64_t t = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; t < budget;
       t += int64_t{gridDim.x} * blockDim.x) {
    const unsigned long long k = keys[t], next = keys[t + 1];
    picks[t] = k ? key_index(k) : -1;
    radius[t] = next ? sqrtf(fmaxf(0.f, key_value(next))) : 0.f;
  }
}

// ---- host side ----------------------------------------------------------------------------------

template <typename T, int G, bool VEC, bool SMEM>
void run_steps(const KCenterSteps& s) {
  const T* X = static_cast<const T*>(s.X);
  const int d = static_cast<int>(s.d);
  const size_t smem = SMEM ? static_cast<size_t>(d) * sizeof(float) : 0;
  auto pass = pass_kernel<T, G, VEC, SMEM>;
  auto cdist = centre_dist_kernel<T, G, VEC, SMEM>;
  const int pass_grid = grid_for(pass, (s.n + 32 * kWarps - 1) / (32 * kWarps), s.device, smem);
  const int cdist_max = grid_for(cdist, INT64_MAX, s.device, smem);
  const unsigned prep_grid = blocks_for(s.d, 64);
  constexpr int R = 32 / G;

  PassArgs a{};
  a.X = s.X;
  a.n = s.n;
  a.d = d;
  a.mind = s.mind;
  a.near = s.near;
  a.centre_row = s.centre_row;
  a.centre_dist2 = s.centre_dist2;
  a.keys = reinterpret_cast<unsigned long long*>(s.keys);
  a.counter = reinterpret_cast<unsigned long long*>(s.counter);
  a.factor = prune_factor<float>(s.d, std::ldexp(1.0, -24));  // float32 unit roundoff
  for (int64_t t = s.t_begin; t < s.t_end; ++t) {
    const int64_t pos = s.n_labeled + t;
    a.prune = prune_step(s.prune, pos, s.n);  // common/prune.h: counted by centre_rows_read
    prepare_kernel<T, VEC><<<prep_grid, kThreads, 0, s.stream>>>(
        X, s.n, d, t, pos, a.keys, s.centres, s.mind, s.near, s.centre_row);
    CUDA_CHECK_LAUNCH("prepare_kernel");
    if (a.prune && pos > 0) {
      const int64_t want = ((pos + R - 1) / R + kWarps - 1) / kWarps;
      const int grid = static_cast<int>(want < cdist_max ? want : cdist_max);
      cdist<<<grid, kThreads, smem, s.stream>>>(X, s.n, d, s.centres, pos, s.centre_row,
                                                s.centre_dist2, a.keys, t);
      CUDA_CHECK_LAUNCH("centre_dist_kernel");
    }
    a.t = t;
    a.pos = pos;
    pass<<<pass_grid, kThreads, smem, s.stream>>>(a);
    CUDA_CHECK_LAUNCH("pass_kernel");
  }
}

template <typename T>
void steps_for_type(const KCenterSteps& s) {
  const bool vec = rows_vectorizable<T>(s.X, s.d);
  const bool smem = s.d <= kMaxSmemCentre;
  dispatch_group(group_size(vec ? s.d / kVecElems<T> : s.d), [&](auto g) {
    dispatch_bool(vec, [&](auto v) {
      dispatch_bool(smem, [&](auto sm) {
        run_steps<T, decltype(g)::value, decltype(v)::value, decltype(sm)::value>(s);
      });
    });
  });
}

}  // namespace

void kcenter_init_labeled(DType dtype, const void* X, int64_t n, int64_t d, const void* rows,
                          int64_t n_labeled, const int64_t* centres, float* mind, int64_t* near,
                          uint64_t* keys, int device, cudaStream_t stream) {
  require_shape(n, d, "n", "d");
  FASTAL_REQUIRE(n_labeled >= 1 && n_labeled <= n, "n_labeled must be in [1, n = ", n, "], got ",
                 n_labeled);
  DeviceGuard guard(device);
  require_device_ptr(X, "x_ptr", device, dtype_size(dtype));
  require_device_ptr(rows, "rows_ptr", device, dtype_size(dtype));
  require_device_ptr(centres, "centres_ptr", device, alignof(int64_t));
  require_device_ptr(mind, "mind_ptr", device, alignof(float));
  require_device_ptr(near, "near_ptr", device, alignof(int64_t));
  require_device_ptr(keys, "keys_ptr", device, alignof(uint64_t));
  detail::min_dist_to_set_launch(dtype, X, n, rows, n_labeled, d, mind, near, false, device,
                                 stream);
  finish_labeled_init(n, n_labeled, centres, mind, keys, device, stream);
}

void kcenter_init_first(DType dtype, int64_t first, int64_t n, float* mind, int64_t* near,
                        uint64_t* keys, int device, cudaStream_t stream) {
  static_cast<void>(dtype);  // the state is float32 whatever the storage type
  require_shape(n, 1, "n", "d");
  FASTAL_REQUIRE(first >= 0 && first < n, "first must be in [0, ", n, "), got ", first);
  DeviceGuard guard(device);
  require_device_ptr(mind, "mind_ptr", device, alignof(float));
  require_device_ptr(near, "near_ptr", device, alignof(int64_t));
  require_device_ptr(keys, "keys_ptr", device, alignof(uint64_t));
  init_first_kernel<<<blocks_for(n), kThreads, 0, stream>>>(
      n, first, mind, near, reinterpret_cast<unsigned long long*>(keys));
  CUDA_CHECK_LAUNCH("init_first_kernel");
}

int64_t kcenter_steps(const KCenterSteps& s) {
  require_shape(s.n, s.d, "n", "d");
  require_kcenter_sizes(s.n, s.n_labeled, s.budget);
  FASTAL_REQUIRE(0 <= s.t_begin && s.t_begin <= s.t_end && s.t_end <= s.budget,
                 "steps [t_begin, t_end) = [", s.t_begin, ", ", s.t_end,
                 ") must satisfy 0 <= t_begin <= t_end <= budget = ", s.budget);
  DeviceGuard guard(s.device);
  require_device_ptr(s.X, "x_ptr", s.device, dtype_size(s.dtype));
  require_device_ptr(s.mind, "mind_ptr", s.device, alignof(float));
  require_device_ptr(s.near, "near_ptr", s.device, alignof(int64_t));
  require_device_ptr(s.centres, "centres_ptr", s.device, alignof(int64_t));
  require_device_ptr(s.keys, "keys_ptr", s.device, alignof(uint64_t));
  require_device_ptr(s.centre_row, "centre_row_ptr", s.device, 16);  // float4 reads
  require_device_ptr(s.counter, "counter_ptr", s.device, alignof(uint64_t));
  if (s.prune) require_device_ptr(s.centre_dist2, "centre_dist2_ptr", s.device, alignof(float));
  if (s.t_begin == s.t_end) return 0;
  dispatch_dtype(s.dtype, [&](auto tag) { steps_for_type<typename decltype(tag)::type>(s); });
  return centre_rows_read(s.prune, s.n_labeled, s.t_begin, s.t_end, s.n);
}

void kcenter_decode(const uint64_t* keys, int64_t budget, int64_t* picks, float* radius, int device,
                    cudaStream_t stream) {
  FASTAL_REQUIRE(budget >= 0, "budget must be >= 0, got ", budget);
  DeviceGuard guard(device);
  require_device_ptr(keys, "keys_ptr", device, alignof(uint64_t));
  if (budget == 0) return;
  require_device_ptr(picks, "picks_ptr", device, alignof(int64_t));
  require_device_ptr(radius, "radius_ptr", device, alignof(float));
  decode_kernel<<<blocks_for(budget), kThreads, 0, stream>>>(
      reinterpret_cast<const unsigned long long*>(keys), budget, picks, radius);
  CUDA_CHECK_LAUNCH("decode_kernel");
}

}  // namespace fastal::cuda
