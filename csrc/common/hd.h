// Annotations for code compiled both by the host compiler (the CPU module) and by nvcc for the
// device (the CUDA module): small helpers are forced inline, larger templates are left to the
// compiler. The unroll pragmas are the device compiler's; the host build leaves loops to its own.
#pragma once

#if defined(__CUDACC__)
#define FASTAL_HD __host__ __device__ __forceinline__
#define FASTAL_HOST_DEVICE __host__ __device__
#define FASTAL_NOINLINE __noinline__
#define FASTAL_UNROLL _Pragma("unroll")
#define FASTAL_NO_UNROLL _Pragma("unroll 1")
#else
#define FASTAL_HD inline
#define FASTAL_HOST_DEVICE
#define FASTAL_NOINLINE
#define FASTAL_UNROLL
#define FASTAL_NO_UNROLL
#endif
