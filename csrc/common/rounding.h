// Explicitly rounded float64 operations for code built both for the host and for the device: on
// the device the intrinsics that nvcc never fuses into multiply-adds; on the host plain operations,
// in files compiled without contraction (-ffp-contract=off, CMakeLists.txt).
#pragma once
#include <cstdint>
#include <cstring>

#include "common/hd.h"

namespace fastal {

FASTAL_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
FASTAL_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
FASTAL_HD double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

// a b + c d, both products rounded: (i, j) and (j, i) of a symmetric rank-2 update round alike.
FASTAL_HD double sym2(double a, double b, double c, double d) {
  return add_rn(mul_rn(a, b), mul_rn(c, d));
}

// The bits of a double.
FASTAL_HD uint64_t double_bits(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

}  // namespace fastal
