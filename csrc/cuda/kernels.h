// CUDA kernels of fastal: host entry points. Raw device pointers, sizes, a device index and the
// caller's stream in; no Python here. Each entry point validates its sizes (std::invalid_argument
// naming the argument), selects the device for the call, launches on `stream` and checks every
// launch (std::runtime_error). Storage types: float32, float16, bfloat16; arithmetic in float32 —
// except gram_min_eig (float32 or float64 storage, float64 arithmetic). Only count_nonfinite_rows,
// gram_scan, iht_threshold and synchronize wait for the stream; everything else is asynchronous.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

namespace fastal::cuda {

enum class DType { Float32, Float16, BFloat16 };

// "float32" | "float16" | "bfloat16"; anything else is std::invalid_argument naming `dtype`.
DType parse_dtype(const std::string& name);

// Waits for all work queued on `stream` of `device`.
void synchronize(int device, cudaStream_t stream);

// Rows of X (n x d, row-major) holding a NaN or an infinity: their count, and the first such row
// in *first (-1 if none). Synchronises the stream to return.
int64_t count_nonfinite_rows(DType dtype, const void* X, int64_t n, int64_t d, int64_t* first,
                             int device, cudaStream_t stream);

// For every row of X (n x d), the Euclidean distance to the nearest row of Y (m x d), float32, and
// that row's index (int64, ties to the lowest). Tiled; never forms an n x m matrix.
// squared: dist holds squared distances (k-means' assignment) instead of distances.
void min_dist_to_set(DType dtype, const void* X, int64_t n, const void* Y, int64_t m, int64_t d,
                     float* dist, int64_t* index, int device, cudaStream_t stream,
                     bool squared = false);

// k-center greedy state on the device (see kcenter.cu). mind: float32 squared distance of every
// row to its nearest centre (-inf for a centre); near: int64 position of that centre in `centres`;
// keys: uint64 packed (value, index) keys, keys[t] holds pick t and keys[t + 1] the squared radius
// after it (length budget + 1, zeroed by the caller).

// Initialises mind/near from the labeled rows (gathered contiguous: n_labeled x d) and sets
// keys[0] to the farthest non-labeled row. centres[0, n_labeled) hold the labeled row indices.
void kcenter_init_labeled(DType dtype, const void* X, int64_t n, int64_t d, const void* rows,
                          int64_t n_labeled, const int64_t* centres, float* mind, int64_t* near,
                          uint64_t* keys, int device, cudaStream_t stream);

// No labeled set: mind = +inf, near = -1, keys[0] = pack_key(+inf, first).
void kcenter_init_first(DType dtype, int64_t first, int64_t n, float* mind, int64_t* near,
                        uint64_t* keys, int device, cudaStream_t stream);

struct KCenterSteps {
  DType dtype;
  const void* X;
  int64_t n, d;
  float* mind;
  int64_t* near;
  int64_t* centres;  // n_labeled + budget
  int64_t n_labeled, budget;
  uint64_t* keys;       // budget + 1
  float* centre_dist2;  // n_labeled + budget (used when prune)
  float* centre_row;    // d floats: the current centre in float32 (internal layout)
  uint64_t* counter;    // rows read, accumulated
  bool prune;
  int64_t t_begin, t_end;
  int device;
  cudaStream_t stream;
};

// Greedy steps t in [t_begin, t_end), entirely on the device: no host round trip. Returns the
// centre-to-centre rows the pruned steps read (common/prune.h); the passes count theirs on the
// device, in counter.
int64_t kcenter_steps(const KCenterSteps& s);

// picks[t] = index of keys[t] (-1 for an empty key), radius[t] = sqrt(max(0, value of keys[t+1]))
// (0 for an empty key), for t < budget.
void kcenter_decode(const uint64_t* keys, int64_t budget, int64_t* picks, float* radius, int device,
                    cudaStream_t stream);

// ---- factored pools (gradient embeddings, see factored.cuh) ------------------------------------

// Row i is the flattened outer product A_i (x) H_i: A (n x C) and H (n x dh) hold storage values of
// one dtype, row-major and contiguous; sqnorm (n, float32) = |A_i|^2 |H_i|^2. The squared distance
// of rows i and j is max(0, sqnorm_i + sqnorm_j - 2 (A_i . A_j)(H_i . H_j)), dots in float32.
struct Factored {
  const void* A;
  const void* H;
  const float* sqnorm;
  int64_t n, C, dh;
};

// Floats of the centre buffer of a factored step: A_c, padding to a multiple of 4, H_c.
int64_t factored_centre_floats(int64_t C, int64_t dh);

// min_dist_to_set for factored X and Y (same C and dh).
void min_dist_to_set_factored(DType dtype, const Factored& X, const Factored& Y, float* dist,
                              int64_t* index, int device, cudaStream_t stream);

// kcenter_init_labeled for a factored pool; rows holds the labeled rows gathered (rows.n of them,
// in the order of centres[0, rows.n)). kcenter_init_first and kcenter_decode serve both kinds.
void kcenter_init_labeled_factored(DType dtype, const Factored& X, const Factored& rows,
                                   const int64_t* centres, float* mind, int64_t* near,
                                   uint64_t* keys, int device, cudaStream_t stream);

struct KCenterStepsFactored {
  DType dtype;
  Factored X;
  float* mind;
  int64_t* near;
  int64_t* centres;  // n_labeled + budget
  int64_t n_labeled, budget;
  uint64_t* keys;       // budget + 1
  float* centre_bound;  // 2 (n_labeled + budget): per earlier centre (d^2 to the new one, sqnorm)
  float* centre_row;    // factored_centre_floats(C, dh), 16-byte aligned
  uint64_t* counter;    // rows read, accumulated
  bool prune;
  int64_t t_begin, t_end;
  int device;
  cudaStream_t stream;
};

// Greedy steps t in [t_begin, t_end) on a factored pool (see kcenter_factored.cu); returns as
// kcenter_steps does.
int64_t kcenter_steps_factored(const KCenterStepsFactored& s);

// ---- k-means++ seeding (D^2 sampling, see kmeanspp.cu) ------------------------------------------

// Rows per partial sum: the sums are per fixed tile of rows, whatever the grid.
constexpr int64_t kKMeansPPTile = 256;
int64_t kmeanspp_tiles(int64_t n);

// State: mind (n, float32) squared distance to the nearest centre (-inf: a centre); tile_sum /
// tile_count (kmeanspp_tiles(n)): float64 sum of max(mind, 0) and number of non-centres per tile,
// as left by the last pass; picks (k); uniforms (k, float64 in [0, 1)) on the device.
struct KMeansPPState {
  float* mind;
  int64_t* picks;
  int64_t k;
  const double* uniforms;
  double* tile_sum;
  int32_t* tile_count;
  double* totals;     // k: the total weight pick t was drawn from (not written for a given first)
  float* centre_row;  // d (dense) or factored_centre_floats(C, dh) floats, 16-byte aligned
  bool first_given;   // picks[0] was set by kmeanspp_init_first: step 0 does not sample
  int64_t t_begin, t_end;
  int device;
  cudaStream_t stream;
};

// mind = squared distance to the nearest labeled row (rows: the labeled rows gathered, in the
// order of labeled[0, n_labeled)), labeled rows -inf, tile sums. Dense and factored.
void kmeanspp_init_labeled(DType dtype, const void* X, int64_t n, int64_t d, const void* rows,
                           int64_t n_labeled, const int64_t* labeled, float* mind, double* tile_sum,
                           int32_t* tile_count, int device, cudaStream_t stream);
void kmeanspp_init_labeled_factored(DType dtype, const Factored& X, const Factored& rows,
                                    const int64_t* labeled, float* mind, double* tile_sum,
                                    int32_t* tile_count, int device, cudaStream_t stream);

// No labeled rows: mind = +inf, picks[0] = first (then steps run with first_given = true).
void kmeanspp_init_first(int64_t first, int64_t n, float* mind, int64_t* picks, int device,
                         cudaStream_t stream);

// Picks t in [t_begin, t_end) entirely on the device: sample (unless t == 0 and first_given), make
// the pick a centre, one fused pass (skipped after the last pick, t == k - 1).
void kmeanspp_steps(DType dtype, const void* X, int64_t n, int64_t d, const KMeansPPState& s);
void kmeanspp_steps_factored(DType dtype, const Factored& X, const KMeansPPState& s);

// ---- IHT top-b thresholding (see topb.cu) -------------------------------------------------------

// s, sigma (n, float32): support (b, int64) = the b indices with the smallest
// score_j = 1/2 [-s_j]_+^2 - alpha sigma_j^2 (exact: -1/2 [s_j]_+^2 - alpha sigma_j^2;
// see cpu/kernels.h), in float64 rounded as cpu/topb.cpp rounds it, ordered by (score, index);
// w (n, float32) = max(s, 0) on the support, 0 elsewhere. 0 <= b <= n < 2^32, alpha finite >= 0.
// Returns the NaN / Inf entries of s and sigma (counted on the way; the outputs mean nothing when
// there are any, and the caller raises). Synchronises the stream to return.
struct NonfiniteCounts {
  int64_t s = 0, first_s = -1, sigma = 0, first_sigma = -1;
};
// impl chooses the implementation: 0 the launch sequence (topb.cu), 1 one cooperative kernel and a
// sort (topb_fused.cu), -1 the default; both give the same bits.
NonfiniteCounts iht_threshold(const float* s, const float* sigma, int64_t n, int64_t b,
                              double alpha, bool exact, int64_t* support, float* w, int device,
                              cudaStream_t stream, int impl = -1);

// ---- batched Gram eigenvalues (see gram_eig.cu) ------------------------------------------------

// Storage of Z for gram_min_eig: float32 or float64 (the arithmetic is float64 for both).
enum class GramDType { Float32, Float64 };

// "float32" | "float64"; anything else is std::invalid_argument naming `dtype`.
GramDType parse_gram_dtype(const std::string& name);

// Groups (n_groups x G int64, on the device) for gram_scan to check, against the labeled indices
// sorted ascending (n_labeled, on the device). n_groups = 0: none.
struct GroupCheck {
  const int64_t* groups = nullptr;
  int64_t n_groups = 0, G = 0;
  const int64_t* lab_sorted = nullptr;
  int64_t n_labeled = 0;
};

struct GramScan {
  int64_t nonfinite_rows = 0, first_row = -1;  // rows of Z holding a NaN or an infinity
  double peak = 0;                             // the largest |entry| over the finite entries
  int64_t bad_groups = 0, first_group = -1;    // groups failing common/group_check.h
};

// One pass over Z (n x D, row-major): the rows holding a NaN or an infinity and the largest |entry|
// over the finite entries (0 for an all-zero Z); in the same synchronisation, the groups of `check`
// with an index out of [0, n), in the labeled set or twice. Synchronises the stream to return.
GramScan gram_scan(GramDType dtype, const void* Z, int64_t n, int64_t D, const GroupCheck& check,
                   int device, cudaStream_t stream);

// For every group g (row g of groups, n_groups x G int64) the Gram matrix of S = labeled ∪ g on its
// smaller side (|S| <= D: Z_S Z_Sᵀ, else Z_Lᵀ Z_L + Z_gᵀ Z_g, the labeled part once per call), in
// float64: min_eig[g] = its smallest eigenvalue above rtol · λ_max (0.0 when none) and, when
// spectra is not null, spectra[g, :] = all its eigenvalues ascending, negatives clamped to 0
// (n_groups x min(|S|, D)). Z must be finite and the indices valid (gram_scan checks both); an
// index out of [0, n) makes the results of its group (every
// group, for labeled) NaN without reading out of bounds. Matrices of order up to 18 run one per
// thread when there are enough groups to fill the GPU that way (see choose_path), others one
// per thread block; small_max >= 0 or warp_max >= 0 overrides that choice (orders up to
// min(small_max, 32) one per thread, then up to min(warp_max, 32) one per warp, the rest one per
// block), and smem_limit caps the shared memory the block path uses for the matrix and
// work vectors (bytes; negative: the device's opt-in limit). Both exist so that tests and
// benchmarks can force each path. Asynchronous; scratch is stream-ordered.
void gram_min_eig(GramDType dtype, const void* Z, int64_t n, int64_t D, const int64_t* labeled,
                  int64_t n_labeled, const int64_t* groups, int64_t n_groups, int64_t G,
                  double rtol, double* min_eig, double* spectra, int64_t smem_limit,
                  int64_t small_max, int64_t warp_max, int device, cudaStream_t stream);

namespace detail {
// min_dist_to_set without the device guard and checks, squared (sqrt=false) or not: the labeled
// initialisation of k-center calls it with mind / near as outputs.
void min_dist_to_set_launch(DType dtype, const void* X, int64_t n, const void* Y, int64_t m,
                            int64_t d, float* dist, int64_t* index, bool sqrt_out, int device,
                            cudaStream_t stream);
// The same for factored X and Y (C, dh and dtype shared).
void min_dist_to_set_factored_launch(DType dtype, const Factored& X, const Factored& Y, float* dist,
                                     int64_t* index, bool sqrt_out, int device,
                                     cudaStream_t stream);
// One k-means++ draw on the device (kmeanspp_sample.cu): picks[t] (-1 if every row is a centre or
// picks[t - 1] is invalid) and totals[t], from mind, the tile sums and uniforms[t].
void kmeanspp_sample_launch(const float* mind, int64_t n, const double* tile_sum,
                            const int32_t* tile_count, const double* uniforms, int64_t t,
                            int64_t* picks, double* totals, cudaStream_t stream);
}  // namespace detail

}  // namespace fastal::cuda
