// fastal._cpu: the module. The kernel families register themselves (bind_* in the cpu_*.cpp files
// beside this one, sharing cpu_wire.h); what is left here is small: the fork guard and thread
// queries.
#include "cpu/omp_compat.h"

#include "bindings/cpu_wire.h"

using namespace fastal::bindings;

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "fastal CPU kernels (C++17, OpenMP)";
  install_fork_guard();
  bind_distances(m);
  bind_sparse(m);
  bind_lloyd(m);
  bind_gram(m);
  m.def(
      "parallel_sum",
      [](const Buf<float>& x) {
        const float* p = x.data();
        const int64_t n = x.size();
        auto nogil = kernel_scope();
        return parallel_sum(p, n);
      },
      py::arg("x").noconvert());
  m.def("num_threads", [] {
    serial_after_fork();  // what the kernels would use now
    return omp_get_max_threads();
  });
  m.def("in_forked_child", &in_forked_child,
        "True in a process forked after fastal._cpu was imported: its kernels run on one thread "
        "there (GNU OpenMP's threads do not survive fork)");
  m.attr("kmeanspp_block") = kKMeansPPBlock;
}
