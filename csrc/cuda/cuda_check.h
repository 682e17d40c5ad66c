// Host-side CUDA runtime helpers shared by the .cu files and the bindings (plain C++, no kernels):
// error checking that raises std::runtime_error with file:line, and a guard that selects a device
// for the duration of a call and restores the caller's device afterwards (torch and cupy keep
// their own notion of the current device; we must not change it behind their back).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <mutex>
#include <stdexcept>

#include "common/check.h"

namespace fastal::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file,
                                          int line) {
  cudaGetLastError();  // clear a non-sticky error so that the next check does not report it again
  throw std::runtime_error(concat("CUDA error at ", file, ":", line, " in ", what, ": ",
                                  cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
}

}  // namespace fastal::cuda

#define CUDA_CHECK(expr)                                                        \
  do {                                                                          \
    const cudaError_t fastal_err_ = (expr);                                     \
    if (fastal_err_ != cudaSuccess)                                             \
      ::fastal::cuda::throw_cuda_error(fastal_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// After every kernel launch (`name` a string literal): configuration errors surface here, not at
// the next API call.
#define CUDA_CHECK_LAUNCH(name)                                                             \
  do {                                                                                      \
    const cudaError_t fastal_err_ = cudaGetLastError();                                     \
    if (fastal_err_ != cudaSuccess)                                                         \
      ::fastal::cuda::throw_cuda_error(fastal_err_, "launch of " name, __FILE__, __LINE__); \
  } while (0)

namespace fastal::cuda {

// Number of visible devices, 0 when there is no driver or no device. Never throws.
inline int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // "no device" / "insufficient driver" must not linger as the last error
    return 0;
  }
  return count;
}

// Makes `device` current for the lifetime of the guard, then restores the previous device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : device_(device) {
    const int count = device_count();
    if (device < 0 || device >= count) {
      throw std::invalid_argument(
          concat("device must be a CUDA device index in [0, ", count, "), got ", device));
    }
    CUDA_CHECK(cudaGetDevice(&previous_));
    CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    if (previous_ != device_) cudaSetDevice(previous_);  // best effort: destructors must not throw
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_;
  int previous_ = 0;
};

inline int sm_count(int device) {
  int v = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
  return v;
}

inline bool has_memory_pools(int device) {
  int v = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMemoryPoolsSupported, device));
  return v != 0;
}

// Memory fastal's scratch pools keep across synchronisations, per device. The device's default
// pool keeps nothing (release threshold 0): every synchronisation unmapped the scratch, and each
// later call paid to map it again.
constexpr uint64_t kPoolKeepBytes = uint64_t{256} << 20;
constexpr int kMaxPoolDevices = 64;

// fastal's own stream-ordered pool on `device` (created on first use, kept for the process), or
// nullptr for a device index past kMaxPoolDevices (the default pool then serves it). Its own, so
// that the threshold does not change how the default pool, which other libraries share, behaves.
inline cudaMemPool_t scratch_pool(int device) {
  static std::mutex mutex;
  static cudaMemPool_t pools[kMaxPoolDevices] = {};
  if (device < 0 || device >= kMaxPoolDevices) return nullptr;
  std::lock_guard<std::mutex> lock(mutex);
  if (!pools[device]) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    cudaMemPool_t pool = nullptr;
    CUDA_CHECK(cudaMemPoolCreate(&pool, &props));
    uint64_t keep = kPoolKeepBytes;
    CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    pools[device] = pool;
  }
  return pools[device];
}

// Scratch device memory, freed on scope exit. Stream-ordered (no device-wide synchronisation)
// from scratch_pool where the device has memory pools, plain cudaMalloc/cudaFree otherwise.
class StreamBuffer {
 public:
  StreamBuffer(size_t bytes, int device, cudaStream_t stream)
      : stream_(stream), pooled_(has_memory_pools(device)) {
    if (!pooled_) {
      CUDA_CHECK(cudaMalloc(&ptr_, bytes));
      return;
    }
    cudaMemPool_t pool = scratch_pool(device);
    if (pool)
      CUDA_CHECK(cudaMallocFromPoolAsync(&ptr_, bytes, pool, stream));
    else
      CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
  }
  ~StreamBuffer() {
    if (!ptr_) return;
    if (pooled_)
      cudaFreeAsync(ptr_, stream_);
    else
      cudaFree(ptr_);
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  template <typename V>
  V* as() const {
    return static_cast<V*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
  bool pooled_;
};

}  // namespace fastal::cuda
