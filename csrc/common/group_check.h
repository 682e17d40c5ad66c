// The validity of one group of gram_min_eig, shared by the CUDA scan (cuda/gram_eig.cu), which
// checks device groups in the same pass and synchronisation as the NaN scan of Z, and its host
// build (cpu/gram_small_host.cpp), which the CPU tests compare with gram.py's host check.
#pragma once
#include <cstdint>

#include "common/hd.h"

namespace fastal {

// Whether element a of the group `row` is in [0, n), not in the labeled set (lab_sorted: mL
// indices, ascending) and not equal to an earlier element: O(log mL + a). The CUDA scan checks
// the elements of a group in parallel (one lane each).
FASTAL_HOST_DEVICE inline bool group_element_valid(const int64_t* row, int64_t a, int64_t n,
                                                   const int64_t* lab_sorted, int64_t mL) {
  const int64_t r = row[a];
  if (r < 0 || r >= n) return false;
  int64_t lo = 0, hi = mL;  // the first labeled index >= r
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (lab_sorted[mid] < r)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < mL && lab_sorted[lo] == r) return false;
  for (int64_t b = 0; b < a; ++b)
    if (row[b] == r) return false;
  return true;
}

// Whether all G elements of `row` are valid: O(G log mL + G²), meant for the group sizes of CRC
// (tens).
FASTAL_HOST_DEVICE inline bool group_row_valid(const int64_t* row, int64_t G, int64_t n,
                                               const int64_t* lab_sorted, int64_t mL) {
  for (int64_t a = 0; a < G; ++a)
    if (!group_element_valid(row, a, n, lab_sorted, mL)) return false;
  return true;
}

}  // namespace fastal
