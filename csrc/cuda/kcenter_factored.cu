// k-center greedy on the GPU over a factored pool (gradient embeddings, factored.cuh): the state,
// the packed-key arg-max and the three launches per step are those of kcenter.cu (read it first);
// only the row distance and the pruning test differ.
//   1. prepare: centres[pos] = c, mind[c] = -inf, near[c] = pos, keys[t + 1] = 0, and row c (A_c,
//      H_c) converted to the float32 centre layout into centre_row;
//   2. centre bounds (prune only): for every earlier centre j, D~(c, centre j) and its sqnorm;
//   3. the fused pass: a warp takes 32 rows, drops centres and the rows the pruning test rules out,
//      and groups of G lanes compute (A_i . A_c)(H_i . H_c) for the rest; the owner lane forms the
//      distance with its sqnorm, updates mind / near and offers its key to the block maximum.
//
// Pruning. The factored distance carries an absolute rounding error (factored.cuh): with
// L = C + dh, u = 2^-24 and (L + 8) u <= 2^-6, |D~(x, y) - D(x, y)| <= e' (s_x + s_y) with
// e' <= 1.06 (2L + 8) u, s the float32 sqnorms. Let e = 4 (L + 8) u >= 1.8 e' and, for a row x
// whose nearest centre is a (computed m = D~(x, a)) and the new centre c,
// E = e' (s_x + s_a + s_c). The row is skipped when
//     D~(c, a) >= prune_factor(L) m + 5 e (s_x + s_a + s_c)        (prune_factor >= 4, prune.h)
// Then D(c, a) >= D~(c, a) - E >= 4 (m + E) and D(x, a) <= m + E, so by the triangle inequality
// d(x, c) >= d(c, a) - d(x, a) >= 2 sqrt(m + E) - sqrt(m + E), i.e. D(x, c) >= m + E, and the
// computed D~(x, c) >= D(x, c) - E >= m: the row could not have become strictly closer, so pruned
// and unpruned runs pick the same rows. The margins of e (about 1.8x) and of prune_factor cover the
// float32 rounding of the test itself. Beyond L + 8 > 2^18 the bound is not used: no pruning.
// A near copy's recompute (factored.cuh) is kept only where its error, about (L + 3) u s, is
// within e' (s_x + s_y): the rule holds for whichever value a distance takes.
#include <cmath>

#include "common/prune.h"
#include "cuda/factored.cuh"
#include "cuda/greedy.cuh"

namespace fastal::cuda {

namespace {

template <typename T>
__global__ void prepare_factored_kernel(FactoredView v, int64_t n, int64_t t, int64_t pos,
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
  stage_factored_centre<T>(v, c, centre_row);
}

// out[j] = (D~(c, centre j), sqnorm of centre j) for the earlier centres j < pos.
template <typename T, int G, bool SMEM>
__global__ void __launch_bounds__(kThreads)
    centre_bound_kernel(FactoredView v, int64_t n, const int64_t* centres, int64_t pos,
                        const float* centre_row, float2* out, const unsigned long long* keys,
                        int64_t t) {
  extern __shared__ float4 smem_centre[];
  const unsigned long long key = keys[t];
  if (!valid_pick(key, n)) return;  // uniform over the grid
  const float sq_c = __ldg(v.sqnorm + key_index(key));
  const float* cen = stage_centre<SMEM>(centre_row, reinterpret_cast<float*>(smem_centre),
                                        static_cast<int>(factored_centre_size(v)));
  constexpr int R = 32 / G;  // centres per warp pass
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, lg = lane % G;
  const int64_t passes = (pos + R - 1) / R;
  for (int64_t w = int64_t{blockIdx.x} * kWarps + warp; w < passes;
       w += int64_t{gridDim.x} * kWarps) {
    const int64_t j = w * R + lane / G;
    const int64_t row = j < pos ? centres[j] : -1;
    const bool has = row >= 0 && row < n;
    const float p = factored_product<T, G, SMEM, false>(v, has ? row : 0, cen, lg, has);
    if (j < pos && lg == 0) {
      // An out-of-range centre (never for valid input) gets an infinite sqnorm: it prunes nothing.
      const float sq = has ? __ldg(v.sqnorm + row) : INFINITY;
      out[j] = make_float2(has ? factored_dist2_to_centre<T>(v, row, cen, sq, sq_c, p) : 0.f, sq);
    }
  }
}

struct FPassArgs {
  FactoredView v;
  int64_t n;
  float* mind;
  int64_t* near;
  const float* centre_row;
  const float2* bound;
  unsigned long long* keys;
  unsigned long long* counter;
  int64_t t, pos;
  float factor, e5;
  bool prune;
};

template <typename T, int G, bool SMEM>
__global__ void __launch_bounds__(kThreads) pass_factored_kernel(FPassArgs a) {
  extern __shared__ float4 smem_centre[];
  __shared__ int s_list[kWarps][32];    // lanes (rows) of the current batch that must be read
  __shared__ float s_prod[kWarps][32];  // their (A_i . A_c)(H_i . H_c), by owner lane
  __shared__ unsigned long long s_reads[kWarps];
  const unsigned long long key = a.keys[a.t];
  if (!valid_pick(key, a.n)) return;  // uniform over the grid
  const float sq_c = __ldg(a.v.sqnorm + key_index(key));
  const float* cen = stage_centre<SMEM>(a.centre_row, reinterpret_cast<float*>(smem_centre),
                                        static_cast<int>(factored_centre_size(a.v)));
  constexpr int R = 32 / G;  // rows a warp reads at once
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, grp = lane / G, lg = lane % G;
  const int64_t batches = (a.n + 31) / 32;
  unsigned long long best = 0, reads = 0;

  for (int64_t b = int64_t{blockIdx.x} * kWarps + warp; b < batches;
       b += int64_t{gridDim.x} * kWarps) {
    // Each lane owns one row of the batch: coalesced reads of mind / near / sqnorm.
    const int64_t i = b * 32 + lane;
    float m = i < a.n ? a.mind[i] : -INFINITY;
    const bool live = m != -INFINITY;  // in range and not a centre
    const float sq = live ? __ldg(a.v.sqnorm + i) : 0.f;
    bool need = live;
    if (a.prune && live) {
      const int64_t c = a.near[i];
      if (c >= 0) {
        const float2 q = __ldg(a.bound + c);
        if (q.x >= a.factor * m + a.e5 * (sq + q.y + sq_c)) need = false;
      }
    }
    const unsigned mask = __ballot_sync(kFullMask, need);
    if (need) s_list[warp][__popc(mask & ((1u << lane) - 1u))] = lane;
    __syncwarp();
    const int count = __popc(mask);
    // Groups take the listed rows R at a time; every lane runs the same trip count (shuffles).
    for (int k0 = 0; k0 < count; k0 += R) {
      const bool has = k0 + grp < count;
      const int owner = has ? s_list[warp][k0 + grp] : 0;
      const float p = factored_product<T, G, SMEM, true>(a.v, b * 32 + owner, cen, lg, has);
      if (has && lg == 0) s_prod[warp][owner] = p;
    }
    __syncwarp();
    if (need) {
      const float dd = factored_dist2_to_centre<T>(a.v, i, cen, sq, sq_c, s_prod[warp][lane]);
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
    __syncwarp();  // s_list / s_prod are rewritten by the next batch
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

// ---- host side ----------------------------------------------------------------------------------

template <typename T, int G, bool SMEM>
void run_steps(const KCenterStepsFactored& s, const FactoredView& v, bool prune) {
  const int64_t n = s.X.n, L = s.X.C + s.X.dh;
  const size_t smem = SMEM ? static_cast<size_t>(factored_centre_size(v)) * sizeof(float) : 0;
  auto pass = pass_factored_kernel<T, G, SMEM>;
  auto cbound = centre_bound_kernel<T, G, SMEM>;
  const int pass_grid = grid_for(pass, (n + 32 * kWarps - 1) / (32 * kWarps), s.device, smem);
  const int cbound_max = grid_for(cbound, INT64_MAX, s.device, smem);
  const unsigned prep_grid = blocks_for(L, 64);
  constexpr int R = 32 / G;
  const double u = std::ldexp(1.0, -24);  // float32 unit roundoff

  FPassArgs a{};
  a.v = v;
  a.n = n;
  a.mind = s.mind;
  a.near = s.near;
  a.centre_row = s.centre_row;
  a.bound = reinterpret_cast<const float2*>(s.centre_bound);
  a.keys = reinterpret_cast<unsigned long long*>(s.keys);
  a.counter = reinterpret_cast<unsigned long long*>(s.counter);
  a.factor = prune_factor<float>(L, u);
  a.e5 = static_cast<float>(5.0 * 4.0 * static_cast<double>(L + 8) * u);
  for (int64_t t = s.t_begin; t < s.t_end; ++t) {
    const int64_t pos = s.n_labeled + t;
    a.prune = prune_step(prune, pos, n);  // common/prune.h: counted by centre_rows_read
    prepare_factored_kernel<T><<<prep_grid, kThreads, 0, s.stream>>>(
        v, n, t, pos, a.keys, s.centres, s.mind, s.near, s.centre_row);
    CUDA_CHECK_LAUNCH("prepare_factored_kernel");
    if (a.prune && pos > 0) {
      const int64_t want = ((pos + R - 1) / R + kWarps - 1) / kWarps;
      const int grid = static_cast<int>(want < cbound_max ? want : cbound_max);
      cbound<<<grid, kThreads, smem, s.stream>>>(
          v, n, s.centres, pos, s.centre_row, reinterpret_cast<float2*>(s.centre_bound), a.keys, t);
      CUDA_CHECK_LAUNCH("centre_bound_kernel");
    }
    a.t = t;
    a.pos = pos;
    pass<<<pass_grid, kThreads, smem, s.stream>>>(a);
    CUDA_CHECK_LAUNCH("pass_factored_kernel");
  }
}

// Pruning needs the error bound of prune.h to stay meaningful in float32.
bool factored_prunes(const KCenterStepsFactored& s) {
  return s.prune && s.X.C + s.X.dh + 8 <= (int64_t{1} << 18);
}

template <typename T>
void steps_for_type(const KCenterStepsFactored& s) {
  const FactoredView v = factored_view<T>(s.X);
  const bool smem = factored_centre_size(v) <= kMaxSmemCentre;
  const bool prune = factored_prunes(s);
  dispatch_group(factored_group<T>(v), [&](auto g) {
    dispatch_bool(
        smem, [&](auto sm) { run_steps<T, decltype(g)::value, decltype(sm)::value>(s, v, prune); });
  });
}

}  // namespace

void kcenter_init_labeled_factored(DType dtype, const Factored& X, const Factored& rows,
                                   const int64_t* centres, float* mind, int64_t* near,
                                   uint64_t* keys, int device, cudaStream_t stream) {
  require_factored_shape(X, "n");
  FASTAL_REQUIRE(rows.n >= 1 && rows.n <= X.n, "n_labeled must be in [1, n = ", X.n, "], got ",
                 rows.n);
  FASTAL_REQUIRE(rows.C == X.C && rows.dh == X.dh, "the labeled rows must have the factor shapes ",
                 "of X (C = ", X.C, ", dh = ", X.dh, "), got C = ", rows.C, ", dh = ", rows.dh);
  DeviceGuard guard(device);
  require_factored_ptrs(X, dtype, "", device);
  require_factored_ptrs(rows, dtype, "rows_", device);
  require_device_ptr(centres, "centres_ptr", device, alignof(int64_t));
  require_device_ptr(mind, "mind_ptr", device, alignof(float));
  require_device_ptr(near, "near_ptr", device, alignof(int64_t));
  require_device_ptr(keys, "keys_ptr", device, alignof(uint64_t));
  detail::min_dist_to_set_factored_launch(dtype, X, rows, mind, near, false, device, stream);
  finish_labeled_init(X.n, rows.n, centres, mind, keys, device, stream);
}

int64_t kcenter_steps_factored(const KCenterStepsFactored& s) {
  require_factored_shape(s.X, "n");
  require_kcenter_sizes(s.X.n, s.n_labeled, s.budget);
  FASTAL_REQUIRE(0 <= s.t_begin && s.t_begin <= s.t_end && s.t_end <= s.budget,
                 "steps [t_begin, t_end) = [", s.t_begin, ", ", s.t_end,
                 ") must satisfy 0 <= t_begin <= t_end <= budget = ", s.budget);
  DeviceGuard guard(s.device);
  require_factored_ptrs(s.X, s.dtype, "", s.device);
  require_device_ptr(s.mind, "mind_ptr", s.device, alignof(float));
  require_device_ptr(s.near, "near_ptr", s.device, alignof(int64_t));
  require_device_ptr(s.centres, "centres_ptr", s.device, alignof(int64_t));
  require_device_ptr(s.keys, "keys_ptr", s.device, alignof(uint64_t));
  require_device_ptr(s.centre_row, "centre_row_ptr", s.device, 16);  // float4 reads
  require_device_ptr(s.counter, "counter_ptr", s.device, alignof(uint64_t));
  if (s.prune) require_device_ptr(s.centre_bound, "centre_bound_ptr", s.device, 8);  // float2
  if (s.t_begin == s.t_end) return 0;
  dispatch_dtype(s.dtype, [&](auto tag) { steps_for_type<typename decltype(tag)::type>(s); });
  return centre_rows_read(factored_prunes(s), s.n_labeled, s.t_begin, s.t_end, s.X.n);
}

}  // namespace fastal::cuda
