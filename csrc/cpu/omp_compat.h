// OpenMP's runtime calls, or their one-thread values in a build without OpenMP
// (FASTAL_OPENMP=OFF, or AUTO where CMake finds none: AppleClang without libomp). The pragmas
// need nothing: a compiler without OpenMP ignores them and every region runs on the caller's
// thread.
#pragma once

#if defined(_OPENMP)
#include <omp.h>
#else
inline int omp_get_max_threads() { return 1; }
inline int omp_get_num_threads() { return 1; }
inline int omp_get_thread_num() { return 0; }
inline void omp_set_num_threads(int) {}
#endif
