// One OpenMP thread in a forked child. GNU OpenMP keeps a pool of team threads per thread that
// started a team; fork copies the pool's bookkeeping but not its threads, so the child's next
// parallel region waits forever for them (python's multiprocessing with "fork", a DataLoader
// worker). Every parallel region of fastal takes its team size from omp_get_max_threads (or has
// no num_threads clause), so setting it to 1 in the forking thread of the child runs the kernels
// serially there instead. Other threads of the child have pools of their own and keep theirs.
//
// GNU OpenMP: set in the fork handler, so torch's regions in the child (the same libgomp) get it
// too. LLVM's libomp (clang, Homebrew's libomp) resets itself in a fork handler of its own, which
// may run after ours; calling the runtime before that hung the child on a lock fork copied held.
// There the handler only records the fork and the forking thread's next call into the module sets
// the count (serial_after_fork).
#include "cpu/kernels.h"

#include "cpu/omp_compat.h"

#include <atomic>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace fastal::cpu {

namespace {
std::atomic<bool> forked_child{false};
std::atomic<bool> serial_pending{false};
#if defined(__unix__) || defined(__APPLE__)
pthread_t forking_thread;  // written before serial_pending is set, read after it is seen
void on_fork_child() {
  forking_thread = pthread_self();
  forked_child.store(true);
#if defined(KMP_VERSION_MAJOR)  // omp.h of LLVM's or Intel's runtime
  serial_pending.store(true);
#else
  omp_set_num_threads(1);
#endif
}
#endif
}  // namespace

void install_fork_guard() {
#if defined(__unix__) || defined(__APPLE__)
  static const int installed = pthread_atfork(nullptr, nullptr, on_fork_child);  // once
  (void)installed;
#endif
}

void serial_after_fork() {
#if defined(__unix__) || defined(__APPLE__)
  if (serial_pending.load() && pthread_equal(pthread_self(), forking_thread)) {
    omp_set_num_threads(1);
    serial_pending.store(false);
  }
#endif
}

bool in_forked_child() { return forked_child.load(); }

}  // namespace fastal::cpu
