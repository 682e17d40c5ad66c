// One work item per OpenMP iteration with a per-thread workspace, exceptions carried back: the loop
// of the Gram kernels (gram_eig.cpp, gram_lowrank.cpp), one matrix per thread.
#pragma once
#include "cpu/omp_compat.h"

#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>

namespace fastal::cpu {

// body(*workspace, g) for g in [0, n), dynamically scheduled; make() builds each thread's workspace
// (returning a std::unique_ptr). The first exception thrown (bad_alloc, bad input) stops the
// remaining items and is rethrown on the calling thread.
template <class Make, class Body>
void parallel_over_groups(int64_t n, Make make, Body body) {
  std::exception_ptr error = nullptr;
  std::atomic<bool> failed{false};
  auto record = [&] {
#pragma omp critical(fastal_group_error)
    if (!error) error = std::current_exception();
    failed = true;
  };
#pragma omp parallel
  {
    decltype(make()) ws;
    try {
      ws = make();
    } catch (...) {
      record();
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t g = 0; g < n; ++g) {
      if (failed) continue;
      try {
        body(*ws, g);
      } catch (...) {
        record();
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace fastal::cpu
