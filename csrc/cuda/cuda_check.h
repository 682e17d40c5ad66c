// Host-side CUDA runtime helpers shared by the .cu files and the bindings (plain C++, no kernels):
// error checking that raises std::runtime_error with file:line, and a guard that selects a device
// for the duration of a call and restores the caller's device afterwards (torch and cupy keep
// their own notion of the current device; we must not change it behind their back).
#pragma once
#include <cuda_runtime_api.h>

#include <sstream>
#include <stdexcept>

namespace fastal::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file,
                                          int line) {
  cudaGetLastError();  // clear a non-sticky error so that the next check does not report it again
  std::ostringstream msg;
  msg << "CUDA error at " << file << ":" << line << " in " << what << ": " << cudaGetErrorName(err)
      << " (" << cudaGetErrorString(err) << ")";
  throw std::runtime_error(msg.str());
}

}  // namespace fastal::cuda

#define CUDA_CHECK(expr)                                                              \
  do {                                                                                \
    const cudaError_t fastal_err_ = (expr);                                           \
    if (fastal_err_ != cudaSuccess)                                                   \
      ::fastal::cuda::throw_cuda_error(fastal_err_, #expr, __FILE__, __LINE__);       \
  } while (0)

// After every kernel launch (`name` a string literal): configuration errors surface here, not at
// the next API call.
#define CUDA_CHECK_LAUNCH(name)                                                       \
  do {                                                                                \
    const cudaError_t fastal_err_ = cudaGetLastError();                               \
    if (fastal_err_ != cudaSuccess)                                                   \
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
      std::ostringstream msg;
      msg << "device must be a CUDA device index in [0, " << count << "), got " << device;
      throw std::invalid_argument(msg.str());
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

// Scratch device memory, freed on scope exit. Stream-ordered (no device-wide synchronisation)
// where the device has memory pools, plain cudaMalloc/cudaFree otherwise.
class StreamBuffer {
 public:
  StreamBuffer(size_t bytes, int device, cudaStream_t stream)
      : stream_(stream), pooled_(has_memory_pools(device)) {
    if (pooled_)
      CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
    else
      CUDA_CHECK(cudaMalloc(&ptr_, bytes));
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
