// The IHT top-b selection's keys and digit passes, shared by the GPU implementations
// (cuda/topb.cu, cuda/topb_fused.cu) and the host build of the fused one (cpu/topb_fused_host.cpp).
// See cuda/topb.cu for the method.
#pragma once
#include <cstdint>

#include "common/hd.h"
#include "common/rounding.h"

namespace fastal::topb {

using u64 = unsigned long long;

constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;
constexpr int kPasses = (64 + kDigitBits - 1) / kDigitBits;  // 6: 11 bits x 5, then 9
constexpr u64 kBinCandidates = 8192;  // a bin this small is ranked by the final sort

// The score's parameters, passed by value to every kernel.
struct Rule {
  double alpha;
  bool exact;
};

// Order-preserving key of the float64 score: a < b iff key(a) < key(b); -0.0 == +0.0. The score
// is rounded as the CPU kernel rounds it (cpu/topb.cpp): float32 inputs widened first, no fused
// multiply-adds.
FASTAL_HD u64 score_key(float s, float sigma, Rule rule) {
  const double sg = static_cast<double>(sigma);
  const double bonus = mul_rn(rule.alpha, mul_rn(sg, sg));
  double score;
  if (rule.exact) {
    const double pos = s > 0.f ? static_cast<double>(s) : 0.0;
    score = sub_rn(-mul_rn(0.5, mul_rn(pos, pos)), bonus);
  } else {
    const double neg = s < 0.f ? -static_cast<double>(s) : 0.0;
    score = sub_rn(mul_rn(0.5, mul_rn(neg, neg)), bonus);
  }
  if (score == 0.0) return u64{1} << 63;
  const u64 bits = double_bits(score);
  return (bits >> 63) ? ~bits : (bits | (u64{1} << 63));
}

// Pass p looks at key bits [shift, shift + width).
FASTAL_HD constexpr int pass_shift(int p) {
  return 64 - kDigitBits * (p + 1) > 0 ? 64 - kDigitBits * (p + 1) : 0;
}
FASTAL_HD constexpr int pass_width(int p) { return 64 - kDigitBits * p - pass_shift(p); }

}  // namespace fastal::topb
