// Annotations for code compiled both by the host compiler (the CPU module) and by nvcc for the
// device (the CUDA module): small helpers are forced inline, larger templates are left to the
// compiler.
#pragma once

#if defined(__CUDACC__)
#define FASTAL_HD __host__ __device__ __forceinline__
#define FASTAL_HOST_DEVICE __host__ __device__
#else
#define FASTAL_HD inline
#define FASTAL_HOST_DEVICE
#endif
