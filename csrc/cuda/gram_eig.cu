// Batched Gram eigenvalues (CRC, Kong et al. eq. 9 and Alg. 1) on the GPU: the CUDA port of
// cpu/gram_eig.cpp, same definition, same threshold rule, float64 arithmetic for every storage
// type.
//
// For every group g the Gram matrix of S = L ∪ g is formed on its smaller side:
//   |S| <= D: the |S| x |S| matrix [[K_LL, K_Lg], [K_gL, K_gg]], K_LL = Z_L Z_Lᵀ once per call;
//   |S| >  D: the D x D matrix Z_Lᵀ Z_L + Z_gᵀ Z_g, Z_Lᵀ Z_L once per call.
// The shared part is one tiled kernel (shared_gram_kernel); then one thread block per matrix
// (gram_eig_kernel, a grid-stride loop over the groups) forms its matrix, reduces it to tridiagonal
// form and locates the wanted eigenvalues:
//
//   formation  |S| side: K_LL copied, each entry of K_gL and K_gg a warp-wide dot product over D;
//              D side: each entry of Z_Lᵀ Z_L + Σ_a z_a z_aᵀ by one thread. Every entry is computed
//              once (or by the same operations in both triangles), so the matrix is exactly
//              symmetric.
//   Householder the matrix is stored whole (both triangles). Step k's rank-2 update of the trailing
//              block is left pending and fused with the next symmetric matrix-vector product, as on
//              the CPU: one pass per step reads and writes each trailing element once. In that pass
//              a warp owns 32 consecutive columns (coalesced rows) and a slice of the rows; the
//              partial products of the slices are summed by warp 0, which also forms the reflector
//              (O(size) per step). Two barriers per step.
//   eigenvalues on the tridiagonal (d, e), scaled by a power of two so that max |entry| is in
//              [0.5, 1): Sturm counts (LDLᵀ inertia, O(size) each, pivmin = DBL_MIN as on the CPU).
//              λ_max and then λ⁺_min (the smallest eigenvalue above rtol · λ_max) by multisection:
//              each thread of the block evaluates one shift per round, so a round shrinks the
//              bracket by blockDim + 1 (~8 bits with 256 threads); the bracket invariant
//              count(lo) <= k < count(hi) is kept with the first shift whose count exceeds k (as
//              the CPU's kth_eigenvalue). Converged to the CPU's tolerances: width <= 2 eps |λ| for
//              λ_max, width <= max(eps λ_max / 2, 2 eps |λ|) for λ⁺_min. With return_all, every
//              eigenvalue by its own bisection (one thread per index), ascending (the brackets of
//              two indices are either equal or ordered; an insertion sort guards the order
//              regardless).
//
// Accuracy: Householder reduction is backward stable (the tridiagonal is similar to K + δK with
// ‖δK‖ = O(size · eps · ‖K‖)), and each Sturm count is exact for a matrix within a few ulps of the
// tridiagonal, so every returned eigenvalue carries an absolute error of a small multiple of
// size · eps · λ_max: the same bound as the CPU kernel, whose results these match to rounding.
//
// Small matrices (by default order <= 18 with enough groups; see choose_path) take another
// path: one thread per matrix (gram_small_kernel, common/gram_small.h), the serial reduction and
// Laguerre search of the CPU kernel, with the per-thread workspace interleaved in global memory. A
// block spends much of its time on barriers for such orders. The same source is built for the host
// (cpu/gram_small_host.cpp), where the CPU tests check it.
//
// Memory: the matrix and the work vectors live in shared memory when they fit the opt-in limit
// (float64 up to 166 x 166 on an H100, 227 KiB); else the matrix (and, past ~3,600, the vectors
// too) lives in a per-block slot of one global workspace, with no more blocks than fit both the GPU
// and kMaxWorkspaceBytes (but at least one: past order ~11,585 one slot alone is larger). All
// results for a group are computed by the same operations wherever the group falls in the batch and
// whichever memory path runs it: scores do not depend on the batch.
#include <math_constants.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "common/gram_small.h"
#include "common/group_check.h"
#include "common/rounding.h"
#include "cuda/device.cuh"
#include "cuda/gram_block.cuh"
#include "cuda/gram_warp.cuh"

namespace fastal::cuda {

GramDType parse_gram_dtype(const std::string& name) {
  if (name == "float32") return GramDType::Float32;
  if (name == "float64") return GramDType::Float64;
  fail_argument("dtype must be 'float32' or 'float64', got '", name, "'");
}

namespace {

constexpr size_t kMaxWorkspaceBytes = size_t{1} << 30;  // per-block slots of the global path
constexpr int kTile = 32;  // shared_gram_kernel: 32 x 32 outputs per block, 32 x 8 threads
constexpr int64_t kMaxSize = int64_t{1} << 20;  // order of the matrices (grid.y of the shared part)

// Threads per matrix: enough for the pass over the trailing block, few enough to keep the
// per-step barriers cheap for small matrices.
int gram_threads(int64_t size) { return size <= 32 ? 64 : (size <= 64 ? 128 : kMaxThreads); }

// ---- finiteness and peak -----------------------------------------------------------------------

// The scan's results (see gram_scan): out[kNonfinite] += rows with a NaN / Inf, out[kFirstRow] =
// min of those rows, out[kPeak] = max bits of |z| over the finite entries (non-negative doubles
// order like their bit patterns); out[kBadGroups], out[kFirstGroup] likewise for invalid groups.
// The zero-initialised counters come first, the min-initialised ones last.
enum ScanSlot { kNonfinite, kPeak, kBadGroups, kFirstRow, kFirstGroup, kScanSlots };

// Rows of Z with a NaN / Inf and the peak magnitude into out (ScanSlot). One warp per row.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    scan_kernel(const T* Z, int64_t n, int64_t D, unsigned long long* out) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t{gridDim.x} * kWarps;
  double peak = 0;
  for (int64_t row = int64_t{blockIdx.x} * kWarps + (threadIdx.x >> 5); row < n; row += warps) {
    const T* z = Z + row * D;
    bool bad = false;
    for (int64_t c = lane; c < D; c += 32) {
      const double v = fabs(load64(z + c));
      if (v <= DBL_MAX)
        peak = fmax(peak, v);
      else
        bad = true;  // inf or NaN
    }
    if (__any_sync(kFullMask, bad) && lane == 0) {
      atomicAdd(out + kNonfinite, 1ull);
      atomicMin(out + kFirstRow, static_cast<unsigned long long>(row));
    }
  }
  peak = warp_max_d(peak);
  if (lane == 0 && peak > 0)
    atomicMax(out + kPeak, static_cast<unsigned long long>(__double_as_longlong(peak)));
}

// Groups failing group_row_valid into out (ScanSlot). One warp per group (a grid-stride loop).
__global__ void __launch_bounds__(kThreads)
    check_groups_kernel(const int64_t* groups, int64_t n_groups, int64_t G, int64_t n,
                        const int64_t* lab_sorted, int64_t mL, unsigned long long* out) {
  // a lane per element: one thread per group waited on G² dependent loads
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t{gridDim.x} * kWarps;
  for (int64_t g = int64_t{blockIdx.x} * kWarps + threadIdx.x / 32; g < n_groups; g += warps) {
    const int64_t* row = groups + g * G;
    bool bad = false;
    for (int64_t a = lane; a < G; a += 32) bad |= !group_element_valid(row, a, n, lab_sorted, mL);
    if (__any_sync(kFullMask, bad) && lane == 0) {
      atomicAdd(out + kBadGroups, 1ull);
      atomicMin(out + kFirstGroup, static_cast<unsigned long long>(g));
    }
  }
}

// ---- the shared part -------------------------------------------------------------------------

// out (P x P, float64) = F Fᵀ with F(p, k) = Z[lab[p], k] (S side: P = mL, k < D) or
// F(p, k) = Z[lab[k], p] (D side: P = D, k < mL). 32 x 32 outputs per block, both operand tiles in
// shared memory (loads coalesced along Z's rows either way), 4 outputs per thread. Both triangles
// are computed, by the same products in the same order: the result is exactly symmetric. A labeled
// index out of range reads zeros here (the main kernel reports the whole call as NaN).
template <typename T, bool kSSide>
__global__ void __launch_bounds__(kTile * 8)
    shared_gram_kernel(const T* Z, int64_t n, int64_t D, const int64_t* lab, int64_t mL,
                       double* out) {
  __shared__ double fp[kTile][kTile + 1], fq[kTile][kTile + 1];  // [p or q][k]
  const int64_t P = kSSide ? mL : D, K = kSSide ? D : mL;
  const int tx = threadIdx.x & (kTile - 1), ty = threadIdx.x / kTile;  // 32 x 8
  const int64_t p0 = int64_t{blockIdx.y} * kTile, q0 = int64_t{blockIdx.x} * kTile;
  auto value = [&](int64_t row_pos, int64_t col) -> double {  // Z[lab[row_pos], col], guarded
    if (row_pos >= mL || col >= D) return 0.0;
    const int64_t r = __ldg(lab + row_pos);
    return (r >= 0 && r < n) ? load64(Z + r * D + col) : 0.0;
  };
  double acc[4] = {0, 0, 0, 0};
  for (int64_t k0 = 0; k0 < K; k0 += kTile) {
    for (int r = ty; r < kTile; r += 8) {
      if constexpr (kSSide) {  // p = p0 + r, k = k0 + tx: consecutive threads, consecutive columns
        fp[r][tx] = value(p0 + r, k0 + tx);
        fq[r][tx] = value(q0 + r, k0 + tx);
      } else {  // k = k0 + r, p = p0 + tx
        fp[tx][r] = k0 + r < mL ? value(k0 + r, p0 + tx) : 0.0;
        fq[tx][r] = k0 + r < mL ? value(k0 + r, q0 + tx) : 0.0;
      }
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kTile; ++kk) {
      const double b = fq[tx][kk];
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[i] = fma(fp[ty + 8 * i][kk], b, acc[i]);
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i) {
    const int64_t pr = p0 + ty + 8 * i, qc = q0 + tx;
    if (pr < P && qc < P) out[pr * P + qc] = acc[i];
  }
}

// ---- the per-group kernel (its device pieces: gram_block.cuh) --------------------------------

// One block per matrix, a grid-stride loop over the groups. Dynamic shared memory: kScalars
// doubles, then the work vectors (when vec_in_smem), then the matrix (when a_in_smem).
template <typename T>
__global__ void __launch_bounds__(kMaxThreads) gram_eig_kernel(const GramArgs p) {
  extern __shared__ double smem[];
  const int tid = threadIdx.x, T_ = blockDim.x;
  const int N = static_cast<int>(p.size);
  double* scal = smem;
  int* fb = reinterpret_cast<int*>(smem + 8);
  double* slot = p.work + int64_t{blockIdx.x} * p.slot;
  double* vec = p.vec_in_smem ? smem + kScalars : slot + (p.a_in_smem ? 0 : int64_t{N} * N);
  double* A = p.a_in_smem ? smem + kScalars + p.vec_len : slot;
  double* part = vec;  // max(T_, N): the pass's partial sums
  double* buf0 = part + max(T_, N);
  double* buf1 = buf0 + N;
  double* w = buf1 + N;
  double* nc = w + N;
  double* d = nc + N;
  double* e = d + N;
  double* e2 = e + N;

  if (tid == 0) fb[0] = fb[1] = fb[2] = T_;
  bool bad_labeled = false;
  for (int64_t i = tid; i < p.mL; i += T_) {
    const int64_t r = p.labeled[i];
    bad_labeled |= r < 0 || r >= p.n;
  }
  bad_labeled = __syncthreads_or(bad_labeled);
  int base = 0;  // multisection flag rotation, the same in every thread
  for (int64_t g = blockIdx.x; g < p.n_groups; g += gridDim.x) {
    const int64_t* grp = p.groups + g * p.G;
    bool bad = bad_labeled;
    for (int64_t a = tid; a < p.G; a += T_) {
      const int64_t r = grp[a];
      bad |= r < 0 || r >= p.n;
    }
    // also the barrier between the previous group's last reads and this group's writes
    if (__syncthreads_or(bad)) {  // out-of-range indices (gram.py checks them): NaN, nothing read
      if (tid == 0) p.min_eig[g] = CUDART_NAN;
      if (p.spectra)
        for (int i = tid; i < N; i += T_) p.spectra[g * N + i] = CUDART_NAN;
      continue;
    }
    form_matrix<T>(p, grp, A, N);
    __syncthreads();
    tridiagonalize(A, N, part, buf0, buf1, w, nc, d, e);
    solve_tridiagonal(d, e, e2, nc, N, p.rtol, p.min_eig + g,
                      p.spectra ? p.spectra + g * N : nullptr, scal, fb, base);
  }
}

size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

// One thread per group (slot s = the thread's global index; slots = the grid's threads). Each
// block checks the labeled indices once, together.
constexpr int kSmallThreads = 64;
template <typename T>
__global__ void __launch_bounds__(kSmallThreads) gram_small_kernel(const gram_small::Args p) {
  bool bad_labeled = false;
  for (int64_t j = threadIdx.x; j < p.mL; j += blockDim.x)
    bad_labeled |= !gram_small::labeled_in_range(p, j);
  const bool labeled_ok = !__syncthreads_or(bad_labeled);
  const int64_t s = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  for (int64_t g = s; g < p.n_groups; g += p.slots) gram_small::group_eig<T>(p, g, s, labeled_ok);
}

template <typename T>
void scan_impl(const T* Z, int64_t n, int64_t D, const GroupCheck& check,
               unsigned long long host[kScanSlots], int device, cudaStream_t stream) {
  using u64 = unsigned long long;
  StreamBuffer buf(kScanSlots * sizeof(u64), device, stream);
  auto* out = buf.as<u64>();
  CUDA_CHECK(cudaMemsetAsync(out, 0, kFirstRow * sizeof(u64), stream));
  CUDA_CHECK(
      cudaMemsetAsync(out + kFirstRow, 0xff, (kScanSlots - kFirstRow) * sizeof(u64), stream));
  const int grid = grid_for(scan_kernel<T>, (n + kWarps - 1) / kWarps, device);
  scan_kernel<T><<<grid, kThreads, 0, stream>>>(Z, n, D, out);
  CUDA_CHECK_LAUNCH("scan_kernel");
  if (check.n_groups > 0) {
    check_groups_kernel<<<blocks_for(check.n_groups * 32), kThreads, 0, stream>>>(
        check.groups, check.n_groups, check.G, n, check.lab_sorted, check.n_labeled, out);
    CUDA_CHECK_LAUNCH("check_groups_kernel");
  }
  CUDA_CHECK(cudaMemcpyAsync(host, out, kScanSlots * sizeof(u64), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

// The shared part into `shared` (P x P, both triangles): K_LL = Z_L Z_Lᵀ (S side, P = mL) or
// Z_Lᵀ Z_L (D side, P = D).
template <typename T>
void launch_shared_part(const T* Z, int64_t n, int64_t D, const int64_t* labeled, int64_t mL,
                        bool s_side, double* shared, cudaStream_t stream) {
  const int64_t P = s_side ? mL : D;
  if (P == 0) return;
  if (mL == 0) {  // D side without labeled rows: Z_Lᵀ Z_L = 0
    CUDA_CHECK(cudaMemsetAsync(shared, 0, sizeof(double) * static_cast<size_t>(P * P), stream));
    return;
  }
  const int64_t tiles = (P + kTile - 1) / kTile;  // <= 2^15 (P <= kMaxSize)
  const dim3 tgrid(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles));
  if (s_side)
    shared_gram_kernel<T, true><<<tgrid, kTile * 8, 0, stream>>>(Z, n, D, labeled, mL, shared);
  else
    shared_gram_kernel<T, false><<<tgrid, kTile * 8, 0, stream>>>(Z, n, D, labeled, mL, shared);
  CUDA_CHECK_LAUNCH("shared_gram_kernel");
}

// The paths for small matrices: one thread per matrix (gram_small_kernel: as many slots as threads
// that fit the GPU at once, the workspace bound and the groups, in whole blocks) or one warp per
// matrix (gram_warp.cu; no workspace).
template <typename T>
void gram_min_eig_small(const T* Z, int64_t n, int64_t D, const int64_t* labeled, int64_t mL,
                        const int64_t* groups, int64_t n_groups, int64_t G, double rtol,
                        double* min_eig, double* spectra, bool one_warp, int device,
                        cudaStream_t stream) {
  const bool s_side = mL + G <= D;
  const int64_t size = s_side ? mL + G : D;
  const int64_t P = s_side ? mL : D;
  int64_t blocks = 1, slots = 0;
  const int64_t slot = one_warp ? 0 : gram_small::slot_doubles(size);
  if (!one_warp) {
    int per_sm = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gram_small_kernel<T>,
                                                             kSmallThreads, 0));
    const int64_t resident = int64_t{sm_count(device)} * (per_sm > 0 ? per_sm : 1);
    const int64_t fit =
        static_cast<int64_t>(kMaxWorkspaceBytes / (sizeof(double) * slot)) / kSmallThreads;
    blocks = std::max<int64_t>(
        1, std::min({(n_groups + kSmallThreads - 1) / kSmallThreads, resident, fit}));
    slots = blocks * kSmallThreads;
  }

  const size_t shared_bytes = align_up(sizeof(double) * static_cast<size_t>(P * P));
  // never 0 bytes (the one-warp path with no labeled part on the |S| side needs none at all)
  StreamBuffer buf(
      std::max<size_t>(256, shared_bytes + sizeof(double) * static_cast<size_t>(slots * slot)),
      device, stream);
  auto* shared = buf.as<double>();
  launch_shared_part(Z, n, D, labeled, mL, s_side, shared, stream);
  const gram_small::Args args{Z,        n,
                              D,        labeled,
                              mL,       groups,
                              n_groups, G,
                              shared,   size,
                              rtol,     min_eig,
                              spectra,  reinterpret_cast<double*>(buf.as<char>() + shared_bytes),
                              slots};
  if (one_warp) {
    launch_gram_warp<T>(args, device, stream);
    return;
  }
  gram_small_kernel<T><<<static_cast<unsigned>(blocks), kSmallThreads, 0, stream>>>(args);
  CUDA_CHECK_LAUNCH("gram_small_kernel");
}

// Which path takes matrices of this order. Forced (tests and benchmarks) when small_max >= 0 or
// warp_max >= 0: one thread per matrix up to min(small_max, 32), else one warp up to
// min(warp_max, 32), else one block. By default: one warp up to order kDefaultWarpMax, else the
// one-thread rule below, else one block.
//
// The one-thread rule, measured on an H200 (binding alone): order 16, 20,000 groups: 1.39 ms per
// thread against 1.80 ms per block (D side), 1.25 against 2.07 (S side); order 32, 10,000
// groups: 4.6 against 2.0 and 5.5 against 2.8. The per-thread time grows about as order^2.7 and
// the block time as order^1.2, so they cross near order 19. The group rule: one thread's serial
// time is paid once for all the groups that fit at once, while the block path's grows with its
// waves (~8 blocks per SM), so the per-thread path needs about 8 · SMs · (order / 16)³ groups.
enum class SmallPath { Thread, Warp, Block };
constexpr int64_t kDefaultSmallMax = 18;
constexpr int64_t kDefaultWarpMax = 0;  // not yet measured on a GPU: off by default
SmallPath choose_path(int64_t size, int64_t n_groups, int64_t small_max, int64_t warp_max,
                      int device) {
  if (small_max >= 0 || warp_max >= 0) {
    if (size <= std::min(small_max, gram_small::kMaxOrder)) return SmallPath::Thread;
    if (size <= std::min(warp_max, kWarpMaxOrder)) return SmallPath::Warp;
    return SmallPath::Block;
  }
  if (size <= kDefaultWarpMax) return SmallPath::Warp;
  if (size > kDefaultSmallMax) return SmallPath::Block;
  const double scale = static_cast<double>(size) / 16.0;
  return static_cast<double>(n_groups) >= 8.0 * sm_count(device) * scale * scale * scale
             ? SmallPath::Thread
             : SmallPath::Block;
}

template <typename T>
void gram_min_eig_impl(const T* Z, int64_t n, int64_t D, const int64_t* labeled, int64_t mL,
                       const int64_t* groups, int64_t n_groups, int64_t G, double rtol,
                       double* min_eig, double* spectra, int64_t smem_limit, int64_t small_max,
                       int64_t warp_max, int device, cudaStream_t stream) {
  const bool s_side = mL + G <= D;
  const int64_t size = s_side ? mL + G : D;
  const int64_t P = s_side ? mL : D;  // the shared part is P x P
  const SmallPath path = choose_path(size, n_groups, small_max, warp_max, device);
  if (path != SmallPath::Block) {
    gram_min_eig_small(Z, n, D, labeled, mL, groups, n_groups, G, rtol, min_eig, spectra,
                       path == SmallPath::Warp, device, stream);
    return;
  }
  const int threads = gram_threads(size);
  auto kernel = gram_eig_kernel<T>;

  // shared memory: the scalars always; the vectors, then the matrix, while they fit
  cudaFuncAttributes attr{};
  CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  int optin = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int64_t scalar_bytes = kScalars * sizeof(double);
  int64_t budget = int64_t{optin} - static_cast<int64_t>(attr.sharedSizeBytes) - scalar_bytes;
  if (smem_limit >= 0 && smem_limit < budget) budget = smem_limit;
  const int64_t vec_len = kVectors * size + (threads > size ? threads : size);
  const int64_t vec_bytes = vec_len * static_cast<int64_t>(sizeof(double));
  const int64_t mat_bytes = size * size * static_cast<int64_t>(sizeof(double));
  const bool vec_in_smem = vec_bytes <= budget;
  const bool a_in_smem = vec_in_smem && vec_bytes + mat_bytes <= budget;
  const size_t smem = static_cast<size_t>(scalar_bytes + (vec_in_smem ? vec_bytes : 0) +
                                          (a_in_smem ? mat_bytes : 0));
  // The cap is a property of the kernel for the whole process: set it to the device's maximum, not
  // to this call's size, so that a concurrent call (the GIL is released) with a larger size cannot
  // have its cap lowered between its set and its launch.
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  optin - static_cast<int>(attr.sharedSizeBytes)));

  // global slots: one per block, no more blocks than fit the GPU and the workspace bound
  int64_t slot = (a_in_smem ? 0 : size * size) + (vec_in_smem ? 0 : vec_len);
  slot = (slot + 31) / 32 * 32;
  int64_t grid = n_groups < INT_MAX ? n_groups : INT_MAX;
  if (slot > 0) {
    int per_sm = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
    const int64_t resident = int64_t{sm_count(device)} * (per_sm > 0 ? per_sm : 1);
    const int64_t fit = static_cast<int64_t>(kMaxWorkspaceBytes / (sizeof(double) * slot));
    grid = std::min({grid, resident, fit > 0 ? fit : int64_t{1}});
  }

  const size_t shared_bytes = align_up(sizeof(double) * static_cast<size_t>(P * P));
  StreamBuffer buf(shared_bytes + sizeof(double) * static_cast<size_t>(grid * slot) + 256, device,
                   stream);
  auto* shared = buf.as<double>();
  launch_shared_part(Z, n, D, labeled, mL, s_side, shared, stream);
  GramArgs args{};
  args.Z = Z;
  args.n = n;
  args.D = D;
  args.labeled = labeled;
  args.mL = mL;
  args.groups = groups;
  args.n_groups = n_groups;
  args.G = G;
  args.shared = shared;
  args.size = size;
  args.rtol = rtol;
  args.min_eig = min_eig;
  args.spectra = spectra;
  args.work = slot > 0 ? reinterpret_cast<double*>(buf.as<char>() + shared_bytes) : nullptr;
  args.slot = slot;
  args.vec_len = vec_len;
  args.a_in_smem = a_in_smem;
  args.vec_in_smem = vec_in_smem;
  kernel<<<static_cast<unsigned>(grid), threads, smem, stream>>>(args);
  CUDA_CHECK_LAUNCH("gram_eig_kernel");
}

}  // namespace

GramScan gram_scan(GramDType dtype, const void* Z, int64_t n, int64_t D, const GroupCheck& check,
                   int device, cudaStream_t stream) {
  require_shape(n, D, "n", "D");
  FASTAL_REQUIRE(check.n_groups >= 0, "n_groups must be >= 0, got ", check.n_groups);
  FASTAL_REQUIRE(check.n_labeled >= 0, "n_labeled must be >= 0, got ", check.n_labeled);
  DeviceGuard guard(device);
  const size_t elem = dtype == GramDType::Float64 ? sizeof(double) : sizeof(float);
  require_device_ptr(Z, "z_ptr", device, elem);
  if (check.n_groups > 0) {
    FASTAL_REQUIRE(check.G >= 1, "G must be >= 1, got ", check.G);
    require_device_ptr(check.groups, "groups_ptr", device, alignof(int64_t));
    if (check.n_labeled > 0)
      require_device_ptr(check.lab_sorted, "labeled_sorted_ptr", device, alignof(int64_t));
  }
  unsigned long long host[kScanSlots] = {};
  if (dtype == GramDType::Float64)
    scan_impl(static_cast<const double*>(Z), n, D, check, host, device, stream);
  else
    scan_impl(static_cast<const float*>(Z), n, D, check, host, device, stream);
  GramScan r;
  r.nonfinite_rows = static_cast<int64_t>(host[kNonfinite]);
  r.first_row = r.nonfinite_rows ? static_cast<int64_t>(host[kFirstRow]) : -1;
  std::memcpy(&r.peak, &host[kPeak], sizeof(double));
  r.bad_groups = static_cast<int64_t>(host[kBadGroups]);
  r.first_group = r.bad_groups ? static_cast<int64_t>(host[kFirstGroup]) : -1;
  return r;
}

void gram_min_eig(GramDType dtype, const void* Z, int64_t n, int64_t D, const int64_t* labeled,
                  int64_t n_labeled, const int64_t* groups, int64_t n_groups, int64_t G,
                  double rtol, double* min_eig, double* spectra, int64_t smem_limit,
                  int64_t small_max, int64_t warp_max, int device, cudaStream_t stream) {
  require_shape(n, D, "n", "D");
  FASTAL_REQUIRE(n_labeled >= 0 && n_labeled <= n, "n_labeled must be in [0, n = ", n, "], got ",
                 n_labeled);
  FASTAL_REQUIRE(G >= 1, "G must be >= 1, got ", G);
  FASTAL_REQUIRE(n_groups >= 0, "n_groups must be >= 0, got ", n_groups);
  FASTAL_REQUIRE(rtol >= 0.0 && rtol < 1.0, "rtol must be in [0, 1), got ", rtol);
  const int64_t size = n_labeled + G <= D ? n_labeled + G : D;
  FASTAL_REQUIRE(size <= kMaxSize, "the Gram matrices would have order ", size,
                 " (min(n_labeled + G, D)); at most 2^20 is supported");
  DeviceGuard guard(device);
  if (n_groups == 0) return;
  const size_t elem = dtype == GramDType::Float64 ? sizeof(double) : sizeof(float);
  require_device_ptr(Z, "z_ptr", device, elem);
  if (n_labeled > 0) require_device_ptr(labeled, "labeled_ptr", device, alignof(int64_t));
  require_device_ptr(groups, "groups_ptr", device, alignof(int64_t));
  require_device_ptr(min_eig, "min_eig_ptr", device, alignof(double));
  if (spectra) require_device_ptr(spectra, "spectra_ptr", device, alignof(double));
  if (dtype == GramDType::Float64)
    gram_min_eig_impl(static_cast<const double*>(Z), n, D, labeled, n_labeled, groups, n_groups, G,
                      rtol, min_eig, spectra, smem_limit, small_max, warp_max, device, stream);
  else
    gram_min_eig_impl(static_cast<const float*>(Z), n, D, labeled, n_labeled, groups, n_groups, G,
                      rtol, min_eig, spectra, smem_limit, small_max, warp_max, device, stream);
}

}  // namespace fastal::cuda
