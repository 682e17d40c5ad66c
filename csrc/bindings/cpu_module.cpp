// fastal._cpu: numpy-facing wrappers of the CPU kernels. Arrays arrive C-contiguous with the exact
// dtype (the Python layer casts on purpose; .noconvert() forbids silent copies); float16 and
// bfloat16 arrive as uint16 views. The GIL is released around every kernel.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "common/check.h"
#include "cpu/kernels.h"

namespace py = pybind11;
using namespace fastal::cpu;

namespace {

template <typename T> struct Wire { using type = T; };  // what numpy holds for storage type T
template <> struct Wire<Half> { using type = uint16_t; };
template <> struct Wire<BFloat16> { using type = uint16_t; };

template <typename T>
using In = py::array_t<typename Wire<T>::type, py::array::c_style>;
template <typename V>
using Buf = py::array_t<V, py::array::c_style>;

template <typename T>
const T* rows_of(const In<T>& a, const char* name, int64_t* n, int64_t* d) {
  FASTAL_REQUIRE(a.ndim() == 2, name, " must be 2-D (n, d), got ", a.ndim(), " dimensions");
  *n = a.shape(0);
  *d = a.shape(1);
  return reinterpret_cast<const T*>(a.data());
}

template <typename V>
V* vec_of(Buf<V>& a, const char* name, int64_t length) {
  FASTAL_REQUIRE(a.ndim() == 1 && a.shape(0) == length, name, " must have shape (", length,
                 ",), got ndim ", a.ndim(), " and length ", a.ndim() ? a.shape(0) : 0);
  return a.mutable_data();
}

template <typename T>
KCenterState<T> make_state(const In<T>& X, Buf<Acc<T>>& mind, Buf<int64_t>& near,
                           Buf<int64_t>& centres, int64_t n_labeled, Buf<int64_t>& picks,
                           Buf<Acc<T>>& radius2, bool prune) {
  KCenterState<T> s{};
  s.X = rows_of<T>(X, "X", &s.n, &s.d);
  s.budget = picks.ndim() == 1 ? picks.shape(0) : -1;
  FASTAL_REQUIRE(s.budget >= 0, "picks must be 1-D");
  FASTAL_REQUIRE(n_labeled >= 0 && n_labeled + s.budget <= s.n, "n_labeled + budget (", n_labeled,
                 " + ", s.budget, ") exceeds the number of rows of X (", s.n, ")");
  s.mind = vec_of(mind, "mind", s.n);
  s.near = vec_of(near, "near", s.n);
  s.centres = vec_of(centres, "centres", n_labeled + s.budget);
  s.picks = picks.mutable_data();
  s.radius2 = vec_of(radius2, "radius2", s.budget);
  s.n_labeled = n_labeled;
  s.prune = prune;
  return s;
}

template <typename T>
void register_dtype(py::module_& m, const std::string& tag) {
  using A = Acc<T>;

  m.def(("min_sqdist_to_set_" + tag).c_str(),
        [](const In<T>& X, const In<T>& Y) {
          int64_t n, d, m_rows, dy;
          const T* x = rows_of<T>(X, "X", &n, &d);
          const T* y = rows_of<T>(Y, "Y", &m_rows, &dy);
          FASTAL_REQUIRE(dy == d, "Y must have as many columns as X (", d, "), got ", dy);
          FASTAL_REQUIRE(m_rows >= 1, "Y must have at least one row");
          Buf<A> dist2(n);
          Buf<int64_t> index(n);
          A* pd = dist2.mutable_data();
          int64_t* pi = index.mutable_data();
          {
            py::gil_scoped_release nogil;
            min_sqdist_to_set(x, n, y, m_rows, d, pd, pi);
          }
          return py::make_tuple(dist2, index);
        },
        py::arg("X").noconvert(), py::arg("Y").noconvert());

  m.def(("count_nonfinite_rows_" + tag).c_str(),
        [](const In<T>& X) {
          int64_t n, d, first = -1, count;
          const T* x = rows_of<T>(X, "X", &n, &d);
          {
            py::gil_scoped_release nogil;
            count = count_nonfinite_rows(x, n, d, &first);
          }
          return py::make_tuple(count, first);
        },
        py::arg("X").noconvert());

  m.def(("kcenter_init_labeled_" + tag).c_str(),
        [](const In<T>& X, const In<T>& labeled_rows, Buf<A>& mind, Buf<int64_t>& near,
           Buf<int64_t>& centres, int64_t n_labeled, Buf<int64_t>& picks, Buf<A>& radius2) {
          auto s = make_state<T>(X, mind, near, centres, n_labeled, picks, radius2, false);
          int64_t m_rows, dy;
          const T* rows = rows_of<T>(labeled_rows, "labeled_rows", &m_rows, &dy);
          FASTAL_REQUIRE(n_labeled >= 1 && m_rows == n_labeled && dy == s.d,
                         "labeled_rows must have shape (", n_labeled, ", ", s.d, ")");
          for (int64_t j = 0; j < n_labeled; ++j)
            FASTAL_REQUIRE(s.centres[j] >= 0 && s.centres[j] < s.n, "centres[", j, "] = ",
                           s.centres[j], " is out of range for ", s.n, " rows");
          py::gil_scoped_release nogil;
          return kcenter_init_labeled(s, rows);
        },
        py::arg("X").noconvert(), py::arg("labeled_rows").noconvert(), py::arg("mind").noconvert(),
        py::arg("near").noconvert(), py::arg("centres").noconvert(), py::arg("n_labeled"),
        py::arg("picks").noconvert(), py::arg("radius2").noconvert());

  m.def(("kcenter_init_first_" + tag).c_str(),
        [](const In<T>& X, int64_t first, Buf<A>& mind, Buf<int64_t>& near, Buf<int64_t>& centres,
           Buf<int64_t>& picks, Buf<A>& radius2) {
          auto s = make_state<T>(X, mind, near, centres, 0, picks, radius2, false);
          FASTAL_REQUIRE(first >= 0 && first < s.n, "first must be in [0, ", s.n, "), got ", first);
          py::gil_scoped_release nogil;
          kcenter_init_first(s, first);
        },
        py::arg("X").noconvert(), py::arg("first"), py::arg("mind").noconvert(),
        py::arg("near").noconvert(), py::arg("centres").noconvert(), py::arg("picks").noconvert(),
        py::arg("radius2").noconvert());

  m.def(("kcenter_steps_" + tag).c_str(),
        [](const In<T>& X, Buf<A>& mind, Buf<int64_t>& near, Buf<int64_t>& centres,
           int64_t n_labeled, Buf<int64_t>& picks, Buf<A>& radius2, bool prune, int64_t t_begin,
           int64_t t_end) {
          auto s = make_state<T>(X, mind, near, centres, n_labeled, picks, radius2, prune);
          FASTAL_REQUIRE(0 <= t_begin && t_begin <= t_end && t_end <= s.budget,
                         "steps [", t_begin, ", ", t_end, ") out of range for budget ", s.budget);
          if (t_begin < t_end)
            FASTAL_REQUIRE(s.picks[t_begin] >= 0 && s.picks[t_begin] < s.n, "picks[", t_begin,
                           "] = ", s.picks[t_begin], " is out of range");
          py::gil_scoped_release nogil;
          kcenter_steps(s, t_begin, t_end);
          return s.rows_read;
        },
        py::arg("X").noconvert(), py::arg("mind").noconvert(), py::arg("near").noconvert(),
        py::arg("centres").noconvert(), py::arg("n_labeled"), py::arg("picks").noconvert(),
        py::arg("radius2").noconvert(), py::arg("prune"), py::arg("t_begin"), py::arg("t_end"));
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "fastal CPU kernels (C++17, OpenMP)";
  register_dtype<float>(m, "float32");
  register_dtype<double>(m, "float64");
  register_dtype<Half>(m, "float16");
  register_dtype<BFloat16>(m, "bfloat16");
  m.def("parallel_sum", [](const Buf<float>& x) {
    const float* p = x.data();
    const int64_t n = x.size();
    py::gil_scoped_release nogil;
    return parallel_sum(p, n);
  }, py::arg("x").noconvert());
  m.def("num_threads", [] { return omp_get_max_threads(); });
}
