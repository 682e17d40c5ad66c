// One OpenMP thread in a forked child. GNU OpenMP keeps a pool of team threads per thread that
// started a team; fork copies the pool's bookkeeping but not its threads, so the child's next
// parallel region waits forever for them (python's multiprocessing with "fork", a DataLoader
// worker). Every parallel region of fastal takes its team size from omp_get_max_threads (or has
// no num_threads clause), so setting it to 1 in the forking thread of the child runs the kernels
// serially there instead. Other threads of the child have pools of their own and keep theirs.
#include "cpu/kernels.h"

#include <omp.h>

#include <atomic>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace fastal::cpu {

namespace {
std::atomic<bool> forked_child{false};
void on_fork_child() {
  forked_child.store(true);
  omp_set_num_threads(1);
}
}  // namespace

void install_fork_guard() {
#if defined(__unix__) || defined(__APPLE__)
  static const int installed = pthread_atfork(nullptr, nullptr, on_fork_child);  // once
  (void)installed;
#endif
}

bool in_forked_child() { return forked_child.load(); }

}  // namespace fastal::cpu
