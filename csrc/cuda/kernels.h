// CUDA kernels of fastal: host entry points. Raw device pointers, sizes, a device index and the
// caller's stream in; no Python here. Each entry point validates its sizes (std::invalid_argument
// naming the argument), selects the device for the call, launches on `stream` and checks every
// launch (std::runtime_error). Storage types: float32, float16, bfloat16; arithmetic in float32.
// Only count_nonfinite_rows and synchronize wait for the stream; everything else is asynchronous.
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
void min_dist_to_set(DType dtype, const void* X, int64_t n, const void* Y, int64_t m, int64_t d,
                     float* dist, int64_t* index, int device, cudaStream_t stream);

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
  int64_t* centres;      // n_labeled + budget
  int64_t n_labeled, budget;
  uint64_t* keys;        // budget + 1
  float* centre_dist2;   // n_labeled + budget (used when prune)
  float* centre_row;     // d floats: the current centre in float32 (internal layout)
  uint64_t* counter;     // rows read, accumulated
  bool prune;
  int64_t t_begin, t_end;
  int device;
  cudaStream_t stream;
};

// Greedy steps t in [t_begin, t_end), entirely on the device: no host round trip.
void kcenter_steps(const KCenterSteps& s);

// picks[t] = index of keys[t] (-1 for an empty key), radius[t] = sqrt(max(0, value of keys[t+1]))
// (0 for an empty key), for t < budget.
void kcenter_decode(const uint64_t* keys, int64_t budget, int64_t* picks, float* radius,
                    int device, cudaStream_t stream);

namespace detail {
// min_dist_to_set without the device guard and checks, squared (sqrt=false) or not: the labeled
// initialisation of k-center calls it with mind / near as outputs.
void min_dist_to_set_launch(DType dtype, const void* X, int64_t n, const void* Y, int64_t m,
                            int64_t d, float* dist, int64_t* index, bool sqrt_out, int device,
                            cudaStream_t stream);
}  // namespace detail

}  // namespace fastal::cuda
