// A (value, index) pair packed into one 64-bit key so that the largest key holds the largest value
// and, among equal values, the lowest index. CUDA reduces keys with atomicMax; the CPU uses the
// same order so both backends break ties identically.
#pragma once
#include <cstdint>
#include <cstring>

#include "common/hd.h"

namespace fastal {

// Monotone map float -> uint32: a < b (as floats, -inf..+inf) iff ordered(a) < ordered(b).
FASTAL_HD uint32_t ordered_bits(float v) {
  uint32_t b;
#if defined(__CUDA_ARCH__)
  b = __float_as_uint(v);
#else
  std::memcpy(&b, &v, sizeof b);
#endif
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

FASTAL_HD float from_ordered_bits(uint32_t o) {
  uint32_t b = (o & 0x80000000u) ? (o & 0x7fffffffu) : ~o;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
#endif
}

FASTAL_HD uint64_t pack_key(float value, int64_t index) {
  return (static_cast<uint64_t>(ordered_bits(value)) << 32) |
         static_cast<uint64_t>(0xffffffffu - static_cast<uint32_t>(index));
}

FASTAL_HD int64_t key_index(uint64_t key) {
  return static_cast<int64_t>(0xffffffffu - static_cast<uint32_t>(key & 0xffffffffu));
}

FASTAL_HD float key_value(uint64_t key) {
  return from_ordered_bits(static_cast<uint32_t>(key >> 32));
}

}  // namespace fastal
