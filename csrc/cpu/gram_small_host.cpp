// Host builds of device code of the CUDA Gram kernel, so that the CPU test suite checks the code
// the GPU runs (fastal's CPU kernel, gram_eig.cpp, uses none of it):
// - the per-thread path for small matrices (common/gram_small.h): the same source, the same
//   interleaved workspace and the same grid-stride assignment of groups to slots, with OpenMP
//   threads standing in for the GPU's;
// - the per-warp path (common/gram_warp.h): the same source on emulated warps
//   (cpu/simt_emulation.h), with the device kernel's assignment of groups to warps;
// - the check of device groups (common/group_check.h), row by row.
// Compiled without floating-point contraction, as the device's explicitly rounded operations
// (common/rounding.h) are. Elsewhere nvcc may fuse a multiply and an add (its default), e.g. in the
// tridiagonal eigenvalue search, so device eigenvalues can differ from these in the last bits; the
// operations that must round alike on every lane or in both triangles are the explicit ones.
#include "cpu/omp_compat.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "common/check.h"
#include "common/gram_small.h"
#include "common/gram_warp.h"
#include "common/group_check.h"
#include "cpu/kernels.h"
#include "cpu/simt_emulation.h"

namespace fastal::cpu {

namespace {

// Row r of Z as float64, or zeros for an index out of range (the device's shared part does the
// same; every group then scores NaN).
template <typename T>
void row64(const T* Z, int64_t n, int64_t D, int64_t r, double* out) {
  for (int64_t k = 0; k < D; ++k)
    out[k] = r >= 0 && r < n ? static_cast<double>(Z[r * D + k]) : 0.0;
}

// The shared part, both triangles: K_LL (S side, P = mL) or Z_Lᵀ Z_L (D side, P = D).
template <typename T>
std::vector<double> shared_part(const T* Z, int64_t n, int64_t D, const int64_t* labeled,
                                int64_t mL, bool s_side) {
  std::vector<double> ZL(static_cast<size_t>(mL * D));
  for (int64_t j = 0; j < mL; ++j) row64(Z, n, D, labeled[j], ZL.data() + j * D);
  const int64_t P = s_side ? mL : D;
  std::vector<double> shared(static_cast<size_t>(P * P), 0.0);
  for (int64_t i = 0; i < P; ++i)
    for (int64_t j = 0; j < P; ++j) {
      double acc = 0;
      if (s_side)
        for (int64_t k = 0; k < D; ++k) acc += ZL[i * D + k] * ZL[j * D + k];
      else
        for (int64_t r = 0; r < mL; ++r) acc += ZL[r * D + i] * ZL[r * D + j];
      shared[i * P + j] = acc;
    }
  return shared;
}

#ifdef FASTAL_SIMT_EMULATION
template <typename T, int kCols>
void run_warp_groups(const gram_small::Args& args, bool labeled_ok) {
  // as the device kernel (cuda/gram_warp.cu): blocks of 4 warps, each warp with its own slot and a
  // grid-stride loop over the groups, so a slot is reused from one group to the next
  constexpr int kBlocks = 2, kWarpsPerBlock = 4, kWarps = kBlocks * kWarpsPerBlock;
  const int64_t per_slot = gram_warp::slot_doubles(static_cast<int>(args.size));
  // NaN-filled, as uninitialised shared memory may be: a read before a write shows in the results
  std::vector<double> slots(static_cast<size_t>(kWarps * per_slot),
                            std::numeric_limits<double>::quiet_NaN());
  SimtEmulator emu(kBlocks, kWarpsPerBlock * SimtEmulator::kLanes);
  emu.run([&](int block, int thread) {
    const int warp = thread / SimtEmulator::kLanes, lane = thread % SimtEmulator::kLanes;
    double* slot = slots.data() + (block * kWarpsPerBlock + warp) * per_slot;
    for (int64_t g = block * kWarpsPerBlock + warp; g < args.n_groups; g += kWarps)
      gram_warp::group_eig<HostWarp, T, kCols>(args, g, slot, lane, labeled_ok);
  });
}
#else
template <typename T, int kCols>
void run_warp_groups(const gram_small::Args&, bool) {
  FASTAL_REQUIRE(false, "the warp emulation needs glibc's ucontext, which this build lacks");
}
#endif

}  // namespace

template <typename T>
void gram_min_eig_small(const T* Z, int64_t n, int64_t D, const int64_t* labeled, int64_t mL,
                        const int64_t* groups, int64_t n_groups, int64_t G, double rtol,
                        int64_t slots, double* min_eig, double* spectra) {
  const bool s_side = mL + G <= D;
  const int64_t size = s_side ? mL + G : D;
  FASTAL_REQUIRE(size <= gram_small::kMaxOrder, "the small path takes orders up to ",
                 gram_small::kMaxOrder, ", got ", size);
  FASTAL_REQUIRE(slots >= 1, "slots must be >= 1, got ", slots);
  if (n_groups == 0) return;
  slots = std::min(slots, n_groups);
  const std::vector<double> shared = shared_part(Z, n, D, labeled, mL, s_side);
  std::vector<double> work(static_cast<size_t>(slots * gram_small::slot_doubles(size)),
                           std::numeric_limits<double>::quiet_NaN());  // as the warp slots
  gram_small::Args args{Z,      n,        D,       labeled,       mL,
                        groups, n_groups, G,       shared.data(), size,
                        rtol,   min_eig,  spectra, work.data(),   slots};
  // static: each thread takes a run of neighbouring slots, which share cache lines
  bool labeled_ok = true;
  for (int64_t j = 0; j < mL; ++j) labeled_ok &= gram_small::labeled_in_range(args, j);
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < slots; ++s)
    for (int64_t g = s; g < n_groups; g += slots) gram_small::group_eig<T>(args, g, s, labeled_ok);
}

template <typename T>
void gram_min_eig_warp(const T* Z, int64_t n, int64_t D, const int64_t* labeled, int64_t mL,
                       const int64_t* groups, int64_t n_groups, int64_t G, double rtol,
                       double* min_eig, double* spectra) {
  const bool s_side = mL + G <= D;
  const int64_t size = s_side ? mL + G : D;
  FASTAL_REQUIRE(size <= gram_warp::kMaxOrder, "the one-warp path takes orders up to ",
                 gram_warp::kMaxOrder, ", got ", size);
  if (n_groups == 0) return;
  const std::vector<double> shared = shared_part(Z, n, D, labeled, mL, s_side);
  const gram_small::Args args{Z,      n,        D,       labeled,       mL,
                              groups, n_groups, G,       shared.data(), size,
                              rtol,   min_eig,  spectra, nullptr,       0};
  bool labeled_ok = true;
  for (int64_t j = 0; j < mL; ++j) labeled_ok &= gram_small::labeled_in_range(args, j);
  // the device's instantiations (cuda/gram_warp.cu)
  if (size <= 8)
    run_warp_groups<T, 8>(args, labeled_ok);
  else if (size <= 16)
    run_warp_groups<T, 16>(args, labeled_ok);
  else
    run_warp_groups<T, 32>(args, labeled_ok);
}

void gram_groups_valid(const int64_t* groups, int64_t n_groups, int64_t G, int64_t n,
                       const int64_t* lab_sorted, int64_t n_labeled, bool* valid) {
  for (int64_t g = 0; g < n_groups; ++g)
    valid[g] = group_row_valid(groups + g * G, G, n, lab_sorted, n_labeled);
}

template void gram_min_eig_small<float>(const float*, int64_t, int64_t, const int64_t*, int64_t,
                                        const int64_t*, int64_t, int64_t, double, int64_t, double*,
                                        double*);
template void gram_min_eig_small<double>(const double*, int64_t, int64_t, const int64_t*, int64_t,
                                         const int64_t*, int64_t, int64_t, double, int64_t, double*,
                                         double*);
template void gram_min_eig_warp<float>(const float*, int64_t, int64_t, const int64_t*, int64_t,
                                       const int64_t*, int64_t, int64_t, double, double*, double*);
template void gram_min_eig_warp<double>(const double*, int64_t, int64_t, const int64_t*, int64_t,
                                        const int64_t*, int64_t, int64_t, double, double*, double*);

}  // namespace fastal::cpu
