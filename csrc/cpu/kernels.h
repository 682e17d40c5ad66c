// CPU kernels: plain pointers and sizes in, results out; no Python here. A pool is a Rows type
// (cpu/rows.h): DenseRows<T> or FactoredRows<T> with T one of float, double, Half, BFloat16;
// distances are squared and accumulated in Acc<T>.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/rows.h"

namespace fastal::cpu {

template <typename Rows>
using AccOfRows = typename Rows::A;

// For every row of `rows`, the squared distance to the nearest of the m centres in `centres`
// (m x rows.centre_size(), laid out by rows.prepare) and that centre's index (ties: lowest).
// Rows are read in blocks and centres in cache-sized tiles: no n x m matrix.
template <typename Rows>
void min_sqdist_to_centres(const Rows& rows, const AccOfRows<Rows>* centres, int64_t m,
                           AccOfRows<Rows>* out_dist2, int64_t* out_index);

// The centres buffer of min_sqdist_to_centres for the given rows of `set` (m of them).
template <typename Rows>
std::vector<AccOfRows<Rows>> prepare_centres(const Rows& set, const int64_t* index, int64_t m);

// Rows of X (n x d) holding a NaN or an infinity: returns their count, and the first one in *first.
// In the same pass *spread = max |x_ij - x_0j| in float64 (meaningful when the count is 0): rows
// that differ by so little that their squared distances underflow are refused by the caller.
template <typename T>
int64_t count_nonfinite_rows(const T* X, int64_t n, int64_t d, int64_t* first, double* spread);

// Per-cluster float64 sums of the rows of X (n x d) with labels in [0, k) (checked by the caller)
// and the cluster sizes: the update step of k-means. Independent of the thread count up to the
// order of float64 additions across threads.
template <typename T>
void segment_sum(const T* X, int64_t n, int64_t d, const int64_t* labels, int64_t k, double* sums,
                 int64_t* counts);

// IHT top-b (Shen et al., Appendix E): support[0, b) = the b indices with the smallest score,
// ordered by (score, index); w = [s]_+ on them, 0 elsewhere. Paper: the score of Appendix E,
// 1/2 [-s_j]_+^2 - alpha sigma_j^2. Exact: -1/2 [s_j]_+^2 - alpha sigma_j^2, whose b smallest
// give the exact minimiser of 1/2 |w - s|^2 - alpha sum_{j in S} sigma_j^2 over sets S of b rows
// and w >= 0 zero outside S (Appendix E leaves out the 1/2 s_j^2 of the rows not selected).
// Exact selection; O(n) expected (sampled threshold, one streaming pass, selection on the
// survivors). Scores are computed in float64 (see topb.cpp).
enum class IhtRule { Paper, Exact };
template <typename T>
void iht_threshold(const T* s, const T* sigma, int64_t n, int64_t b, double alpha, IhtRule rule,
                   int64_t* support, T* w);

// The H factor of a factored Φ as the products read it: candidate j's row is row map[j] of H
// (map == nullptr: row j), d values stored as S and widened to Acc<S>, then an implicit trailing 1
// when bias (the bias gradient's column, never stored): dh() = d + bias. So a pool's features serve
// as H in place, whatever rows are labeled and whatever their 16-bit storage.
template <typename S>
struct HRows {
  const S* H;
  const int64_t* map;
  int64_t d;
  bool bias;

  int64_t dh() const { return d + (bias ? 1 : 0); }
  // Candidate j's row where it can be read in place as T, else nullptr.
  template <typename T>
  const T* direct(int64_t j) const {
    if constexpr (std::is_same_v<S, T>)
      return map || bias ? nullptr : H + j * d;
    else
      return nullptr;
  }
  // Candidate j's dh values written to out as T.
  template <typename T>
  void load(int64_t j, T* out) const {
    const S* h = H + (map ? map[j] : j) * d;
    if constexpr (std::is_same_v<S, T>)
      std::copy(h, h + d, out);
    else
      widened<T>(h, d, out);
    if (bias) out[d] = T(1);
  }
  // Candidate j's row as T: in place, or loaded into buf (dh values).
  template <typename T>
  const T* row(int64_t j, T* buf) const {
    if (const T* p = direct<T>(j)) return p;
    load(j, buf);
    return buf;
  }
};

// Products with a factored Φ (column j = scale * a_j (x) h_j; A n x C row-major in Acc<S>, H as
// above; R, M are C x dh float64):
//   factored_adjoint:    out[k] = scale * a_jᵀ R h_j for j = rows[k] (rows == nullptr: j = k < m)
//   factored_apply:      M = scale * Σ_j u_j a_j h_jᵀ (rows with u_j = 0 skipped)
//   factored_grad_apply: g_j = 2 scale a_jᵀ R h_j + 2 beta (z_j - 1) and M = scale * Σ_j g_j a_j
//   h_jᵀ,
//                        in one pass (the IHT gradient step and its line search); over every
//                        row (rows == nullptr, g of length n) or over j = rows[k], k < m (g[k];
//                        De-bias).
template <typename S>
void factored_adjoint(const Acc<S>* A, const HRows<S>& H, int64_t C, const double* R, double scale,
                      const int64_t* rows, int64_t m, double* out);
template <typename S>
void factored_apply(const Acc<S>* A, const HRows<S>& H, int64_t n, int64_t C, const double* u,
                    double scale, double* M);
template <typename S>
void factored_grad_apply(const Acc<S>* A, const HRows<S>& H, int64_t n, int64_t C, const double* R,
                         double scale, const double* z, double beta, const int64_t* rows, int64_t m,
                         double* g, double* M);

// Euclidean distances (float64, direct differences) between rows rows[r] and cols[c] of X (n x d):
// out[r * nc + c], or with nearest_only out[r] = the smallest over c (+inf when nc = 0). The robust
// k-center MIP's distance matrix and its distances to the labeled set, with no gathered copy.
void indexed_distances(const double* X, int64_t d, const int64_t* rows, int64_t nr,
                       const int64_t* cols, int64_t nc, bool nearest_only, double* out);

// Sum of a float array with all threads: the read-bandwidth probe of the benchmarks.
double parallel_sum(const float* x, int64_t n);

// k-center greedy state. mind[i] is the squared distance of row i to its nearest centre, -inf for
// a centre, +inf before any centre exists; near[i] is that centre's position in `centres`.
template <typename Rows>
struct KCenterState {
  using A = AccOfRows<Rows>;
  Rows rows;
  A* mind;
  int64_t* near;
  int64_t* centres;  // capacity n_labeled + budget: the labeled points, then the picks
  int64_t n_labeled;
  int64_t budget;
  int64_t* picks;  // budget; picks[0] is set before the first step
  A* radius2;      // budget; largest mind after each pick (0 once every point is a centre)
  bool prune;
  uint64_t rows_read;  // rows whose distance to a new centre was computed (earlier centres too)
};

// Initialises mind = +inf, near = -1 and picks[0] = first (no labeled set).
template <typename Rows>
void kcenter_init_first(KCenterState<Rows>& s, int64_t first);

// Runs greedy steps [t_begin, t_end): each adds picks[t] as a centre, updates mind in one fused
// pass with the arg-max, and writes radius2[t] and picks[t + 1].
template <typename Rows>
void kcenter_steps(KCenterState<Rows>& s, int64_t t_begin, int64_t t_end);

// k-means++ (D^2 sampling) state. mind[i]: squared distance to the nearest centre, -inf for a
// centre. block_sums[b]: float64 sum of max(mind, 0) over non-centres of rows [b * kBlock, ...).
constexpr int64_t kKMeansPPBlock = 2048;
template <typename Rows>
struct KMeansPPState {
  using A = AccOfRows<Rows>;
  Rows rows;
  A* mind;
  int64_t* picks;         // k; picks[0] preset when has_first
  const double* uniform;  // k draws in [0, 1): pick t uses uniform[t] when it is sampled
  int64_t k;
  bool has_first;
  double* block_sums;  // ceil(n / kKMeansPPBlock), kept between calls of kmeanspp_steps
  // Exact triangle-inequality pruning as in k-center (common/prune.h) when near is given:
  // near[i] is the position in centres of row i's nearest centre (-1: none yet), centres holds the
  // n_labeled labeled rows, then the picks. A pruned row's mind cannot change, so the draws are
  // those of the unpruned pass.
  int64_t* near = nullptr;
  int64_t* centres = nullptr;  // capacity n_labeled + k
  int64_t n_labeled = 0;
  uint64_t rows_read = 0;  // rows whose distance to a new centre was computed (earlier centres too)
};

// The labeled rows (labeled[0, n_labeled)) become centres. On entry mind holds every row's squared
// distance to its nearest labeled row (min_sqdist_to_centres, which the caller runs in calls of
// bounded work); the labeled rows' become -inf, and the block sums are formed.
template <typename Rows>
void kmeanspp_init_labeled(KMeansPPState<Rows>& s, const int64_t* labeled, int64_t n_labeled);

// No labeled rows: mind = +inf, picks[0] is the given first pick.
template <typename Rows>
void kmeanspp_init_first(KMeansPPState<Rows>& s, int64_t first);

// Picks t in [t_begin, t_end): sample (or take the first), then one fused pass updating mind and
// the block sums (with near: of the rows the pruning test keeps, and the sums of the blocks that
// changed). Deterministic: independent of the thread count.
template <typename Rows>
void kmeanspp_steps(KMeansPPState<Rows>& s, int64_t t_begin, int64_t t_end);

// One Lloyd iteration of k-means (kmeans_lloyd.cpp): labels[i] = the nearest centre (first on
// ties) by |c|² - 2 x·c from the BLAS gemm at gemm_address (Fortran sgemm / dgemm signature,
// called from every OpenMP thread, single-threaded: by MKL's Fortran mkl_set_num_threads_local_ at
// threads_local_address, or, when that is 0, by the caller's limits; near-ties settled by direct
// distance), dist2[i] = the direct squared distance Σ (x - c)² to that centre, sums (k x d,
// float64) and counts of the rows per centre. One pass over X,
// or two where threads x k x d private float64 sums would be large (lloyd::RowSums; partial_limit
// >= 0 sets their limit in bytes, -1 the default). margin (when not null): each row's
// runner-up distance minus its nearest, from the GEMM tile (lloyd::chunk_margins).
// X stored as S (float32, float64, float16, bfloat16); xsq, centres and dist2 in Acc<S>, the
// 16-bit rows widened to float32 (so their step is that of X.astype(float32), bit for bit).
template <typename S>
void lloyd_step(const S* X, int64_t n, int64_t d, const Acc<S>* xsq, const Acc<S>* centres,
                int64_t k, uintptr_t gemm_address, uintptr_t threads_local_address, int64_t* labels,
                Acc<S>* dist2, double* sums, int64_t* counts, int64_t partial_limit = -1,
                Acc<S>* margin = nullptr);

// lloyd_step's labels, sums and counts (bit for bit) without reading the rows whose nearest
// centre the Yinyang bounds settle (kmeans_bounded.cpp). State carried between the calls of one
// fit, all rewritten: labels, upper (n: each row's distance to its centre, at most), glower (n: to
// every other centre, at least), lower (n x t: to the other centres of each group, at least, plus
// offset[g]) and offset (t); fresh = true ignores them (the first call).
// shift[j] >= how far centre j moved since the previous call; group[j] in [0, t). Returns the
// distances computed (a GEMM chunk counts rows x k).
template <typename S>
int64_t lloyd_step_bounded(const S* X, int64_t n, int64_t d, const Acc<S>* xsq,
                           const Acc<S>* centres, int64_t k, const double* shift,
                           const int32_t* group, int64_t t, bool fresh, uintptr_t gemm_address,
                           uintptr_t threads_local_address, int64_t* labels, float* upper,
                           float* glower, float* lower, double* offset, double* sums,
                           int64_t* counts, int64_t partial_limit = -1);

// Batched Gram eigenvalues (CRC, Kong et al. eq. 9; gram_eig.cpp). For every row g of groups
// (n_groups x G) the Gram matrix of S = labeled ∪ g, K = Z_S Z_Sᵀ with Z n x D (T = float or
// double), is formed on its smaller side (size = min(n_labeled + G, D); the labeled part once per
// call), reduced to tridiagonal form and solved in float64: min_eig[g] = the smallest eigenvalue
// above rtol * λ_max (0 when there is none), spectra (n_groups x size, ascending, negatives clamped
// to 0) when not null. Throws std::invalid_argument for indices out of range, duplicates in
// labeled or within a group, and groups overlapping labeled.
template <typename T>
void gram_min_eig(const T* Z, int64_t n, int64_t D, const int64_t* labeled, int64_t n_labeled,
                  const int64_t* groups, int64_t n_groups, int64_t G, double rtol, double* min_eig,
                  double* spectra);

// The CUDA kernel's path for orders up to 32, one matrix per thread (common/gram_small.h), built
// for the host so that tests check it (gram_small_host.cpp): the same results as gram_min_eig (to
// rounding) over `slots` interleaved workspace slots. Indices are not checked: a group with one
// out of range (or any labeled index out of range) gets NaN, as on the GPU.
template <typename T>
void gram_min_eig_small(const T* Z, int64_t n, int64_t D, const int64_t* labeled, int64_t mL,
                        const int64_t* groups, int64_t n_groups, int64_t G, double rtol,
                        int64_t slots, double* min_eig, double* spectra);

// The CUDA kernel's one-warp path for orders up to 32 (common/gram_warp.h) built for the host on an
// emulated warp (cpu/simt_emulation.h), one group at a time (gram_small_host.cpp; tests only):
// the same results as gram_min_eig to rounding; out-of-range indices give NaN, as on the GPU.
template <typename T>
void gram_min_eig_warp(const T* Z, int64_t n, int64_t D, const int64_t* labeled, int64_t mL,
                       const int64_t* groups, int64_t n_groups, int64_t G, double rtol,
                       double* min_eig, double* spectra);

// The fused GPU top-b kernel (common/topb_fused.h) on `grid` emulated blocks, then its host steps
// (topb_fused_host.cpp; tests only): support (b) and w (n) as iht_threshold's, and nonfinite =
// (NaN / Inf in s, first, in sigma, first), after which the outputs mean nothing. 1 <= b <= n.
void iht_threshold_fused_host(const float* s, const float* sigma, int64_t n, int64_t b,
                              double alpha, bool exact, int grid, int64_t* support, float* w,
                              int64_t nonfinite[4]);

// valid[g] = whether row g of groups passes the CUDA kernel's device check (common/group_check.h:
// indices in [0, n), none in lab_sorted, which is ascending, none twice); host build, tests only.
void gram_groups_valid(const int64_t* groups, int64_t n_groups, int64_t G, int64_t n,
                       const int64_t* lab_sorted, int64_t n_labeled, bool* valid);

// The same λ⁺_min from one shared eigendecomposition (gram_lowrank.cpp): lam (m, ascending) and
// basis (m x D, row-major float64) diagonalise the labeled part — D side (s_side false): lam, Q of
// Z_Lᵀ Z_L, basis = Qᵀ, m = D; S side: lam, Q of Z_L Z_Lᵀ, basis = Qᵀ Z_L, m = |L| — and each
// group costs O(m G D + m G²) per evaluation instead of a Householder reduction. Index overlap and
// duplicates are the caller's to check (gram.py); out-of-range indices throw.
template <typename T>
void gram_min_eig_lowrank(const T* Z, int64_t n, int64_t D, const int64_t* groups, int64_t n_groups,
                          int64_t G, const double* basis, const double* lam, int64_t m, bool s_side,
                          double rtol, double* min_eig);

// One OpenMP thread in a process forked from this one (cpu/fork_guard.cpp): install_fork_guard
// is idempotent; serial_after_fork applies it, and every entry point calls it before its kernels.
void install_fork_guard();
void serial_after_fork();
bool in_forked_child();

}  // namespace fastal::cpu
