// fastal._cpu: one k-means Lloyd iteration, fused (GEMM + arg-min + sums) or bounded (Hamerly /
// Elkan-style bounds), per storage dtype.
#include "bindings/cpu_wire.h"

namespace fastal::bindings {

namespace {

// One fused Lloyd iteration (X float32 / float64, or float16 / bfloat16 as uint16 with float32
// xsq and centres): labels, squared distances, float64 sums and counts per centre; the GEMM is the
// BLAS function at gemm_address (MKL's or scipy's sgemm / dgemm; sgemm for 16-bit X),
// single-threaded per call through MKL's mkl_set_num_threads_local_ (when given) or the caller;
// partial_limit: the bytes of thread-private sums allowed (-1: lloyd::RowSums' default); margin:
// None, or an (n,) array of the centres' dtype that receives each row's runner-up distance minus
// its nearest.
// (n, d, k) of a Lloyd step's inputs, checked: X (n, d), xsq (n,), centres (k >= 1, d), a gemm.
template <typename S, typename T>
std::tuple<int64_t, int64_t, int64_t> lloyd_sizes(const In<S>& X, const Buf<T>& xsq,
                                                  const Buf<T>& centres, uintptr_t gemm_address) {
  FASTAL_REQUIRE(X.ndim() == 2, "X must be 2-D (n, d), got ", X.ndim(), " dimensions");
  const int64_t n = X.shape(0), d = X.shape(1);
  FASTAL_REQUIRE(xsq.ndim() == 1 && xsq.shape(0) == n, "xsq must have shape (", n, ",)");
  FASTAL_REQUIRE(centres.ndim() == 2 && centres.shape(1) == d && centres.shape(0) >= 1,
                 "centres must have shape (k, ", d, ") with k >= 1");
  FASTAL_REQUIRE(gemm_address != 0, "gemm_address must be a BLAS gemm function");
  return {n, d, centres.shape(0)};
}

// Whether the bytes of two C-contiguous arrays overlap.
inline bool overlaps(const py::array& a, const py::array& b) {
  const auto* a0 = static_cast<const char*>(a.data());
  const auto* b0 = static_cast<const char*>(b.data());
  return a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

// The caller's margin buffer: an (n,) array of T that the kernel may write while it reads X, xsq
// and centres on other threads.
template <typename S, typename T>
T* margin_buffer(const py::object& margin, Buf<T>& out, int64_t n, const In<S>& X,
                 const Buf<T>& xsq, const Buf<T>& centres) {
  FASTAL_REQUIRE(py::isinstance<py::array>(margin), "margin must be a numpy array or None, got ",
                 std::string(py::str(py::type::of(margin).attr("__name__"))));
  const auto a = margin.cast<py::array>();
  FASTAL_REQUIRE(a.dtype().is(py::dtype::of<T>()), "margin must have dtype ",
                 std::string(py::str(py::dtype::of<T>())), ", got ",
                 std::string(py::str(a.dtype())));
  FASTAL_REQUIRE(py::isinstance<Buf<T>>(margin), "margin must be C-contiguous");
  FASTAL_REQUIRE(a.writeable(), "margin must be writable");
  out = py::reinterpret_borrow<Buf<T>>(margin);
  T* p = vec_of(out, "margin", n);
  FASTAL_REQUIRE(!overlaps(a, X) && !overlaps(a, xsq) && !overlaps(a, centres),
                 "margin must not share memory with X, xsq or centres");
  return p;
}

template <typename S>
void register_lloyd(py::module_& m, const std::string& tag) {
  using T = Acc<S>;
  m.def(("kmeans_lloyd_step_" + tag).c_str(),
        [](const In<S>& X, const Buf<T>& xsq, const Buf<T>& centres, uintptr_t gemm_address,
           uintptr_t threads_local_address, int64_t partial_limit, const py::object& margin) {
          const auto [n, d, k] = lloyd_sizes<S>(X, xsq, centres, gemm_address);
          T* pm = nullptr;
          Buf<T> margin_out;
          if (!margin.is_none()) pm = margin_buffer<S>(margin, margin_out, n, X, xsq, centres);
          Buf<int64_t> labels(n);
          Buf<T> dist2(n);
          Buf<double> sums({k, d});
          Buf<int64_t> counts(k);
          const S* px = reinterpret_cast<const S*>(X.data());
          const T *pq = xsq.data(), *pc = centres.data();
          int64_t* pl = labels.mutable_data();
          T* pd = dist2.mutable_data();
          double* ps = sums.mutable_data();
          int64_t* pk = counts.mutable_data();
          {
            auto nogil = kernel_scope();
            lloyd_step(px, n, d, pq, pc, k, gemm_address, threads_local_address, pl, pd, ps, pk,
                       partial_limit, pm);
          }
          return py::make_tuple(labels, dist2, sums, counts);
        },
        py::arg("X").noconvert(), py::arg("xsq").noconvert(), py::arg("centres").noconvert(),
        py::arg("gemm_address"), py::arg("threads_local_address") = 0,
        py::arg("partial_limit") = -1, py::arg("margin") = py::none());
}

// One bounded Lloyd iteration: labels, upper, glower, lower and offset are the fit's state, updated
// in place; returns (sums, counts, distances computed).
template <typename S>
void register_lloyd_bounded(py::module_& m, const std::string& tag) {
  using T = Acc<S>;
  m.def(("kmeans_lloyd_bounded_step_" + tag).c_str(),
        [](const In<S>& X, const Buf<T>& xsq, const Buf<T>& centres, const Buf<double>& shift,
           const Buf<int32_t>& group, int64_t n_groups, bool fresh, Buf<int64_t>& labels,
           Buf<float>& upper, Buf<float>& glower, Buf<float>& lower, Buf<double>& offset,
           uintptr_t gemm_address, uintptr_t threads_local_address, int64_t partial_limit) {
          const auto [n, d, k] = lloyd_sizes<S>(X, xsq, centres, gemm_address);
          FASTAL_REQUIRE(n_groups >= 1 && n_groups <= k, "n_groups must be in [1, ", k, "]");
          FASTAL_REQUIRE(shift.ndim() == 1 && shift.shape(0) == k, "shift must have shape (", k,
                         ",)");
          FASTAL_REQUIRE(group.ndim() == 1 && group.shape(0) == k, "group must have shape (", k,
                         ",)");
          FASTAL_REQUIRE(lower.ndim() == 2 && lower.shape(0) == n && lower.shape(1) == n_groups,
                         "lower must have shape (", n, ", ", n_groups, ")");
          int64_t* pl = vec_of(labels, "labels", n);
          float* pu = vec_of(upper, "upper", n);
          float* pgl = vec_of(glower, "glower", n);
          double* po = vec_of(offset, "offset", n_groups);
          const int32_t* pg = group.data();
          const double* ps = shift.data();
          for (int64_t j = 0; j < k; ++j) {
            FASTAL_REQUIRE(pg[j] >= 0 && pg[j] < n_groups, "group[", j, "] = ", pg[j],
                           " is not in [0, ", n_groups, ")");
            FASTAL_REQUIRE(fresh || ps[j] >= 0, "shift[", j, "] = ", ps[j], " is not >= 0");
          }
          if (!fresh)
            for (int64_t i = 0; i < n; ++i)
              FASTAL_REQUIRE(pl[i] >= 0 && pl[i] < k, "labels[", i, "] = ", pl[i],
                             " is not in [0, ", k, ")");
          Buf<double> sums({k, d});
          Buf<int64_t> counts(k);
          const S* px = reinterpret_cast<const S*>(X.data());
          const T *pq = xsq.data(), *pc = centres.data();
          float* plo = lower.mutable_data();
          double* psum = sums.mutable_data();
          int64_t* pk = counts.mutable_data();
          int64_t computed = 0;
          {
            auto nogil = kernel_scope();
            computed = lloyd_step_bounded(px, n, d, pq, pc, k, ps, pg, n_groups, fresh,
                                          gemm_address, threads_local_address, pl, pu, pgl, plo, po,
                                          psum, pk, partial_limit);
          }
          return py::make_tuple(sums, counts, computed);
        },
        py::arg("X").noconvert(), py::arg("xsq").noconvert(), py::arg("centres").noconvert(),
        py::arg("shift").noconvert(), py::arg("group").noconvert(), py::arg("n_groups"),
        py::arg("fresh"), py::arg("labels").noconvert(), py::arg("upper").noconvert(),
        py::arg("glower").noconvert(), py::arg("lower").noconvert(), py::arg("offset").noconvert(),
        py::arg("gemm_address"), py::arg("threads_local_address") = 0,
        py::arg("partial_limit") = -1);
}

}  // namespace

void bind_lloyd(py::module_& m) {
  for_each_storage([&](auto storage, const char* tag) {
    using S = typename decltype(storage)::type;
    register_lloyd<S>(m, tag);
    register_lloyd_bounded<S>(m, tag);
  });
}

}  // namespace fastal::bindings
