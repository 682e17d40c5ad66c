// Shared by the binding files of fastal._cpu: how numpy arrays cross into the CPU kernels. Arrays
// arrive C-contiguous with the exact dtype (the Python layer casts on purpose; .noconvert() forbids
// silent copies); float16 and bfloat16 arrive as uint16 views. The GIL is released around every
// kernel. Each cpu_*.cpp registers one kernel family (bind_* below); cpu_module.cpp calls them.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "common/check.h"
#include "cpu/kernels.h"

namespace py = pybind11;

namespace fastal::bindings {

using namespace fastal::cpu;

template <typename T>
struct Wire {
  using type = T;
};  // what numpy holds for storage type T
template <>
struct Wire<Half> {
  using type = uint16_t;
};
template <>
struct Wire<BFloat16> {
  using type = uint16_t;
};

template <typename T>
using In = py::array_t<typename Wire<T>::type, py::array::c_style>;
template <typename V>
using Buf = py::array_t<V, py::array::c_style>;

// Where a binding runs kernels (`auto nogil = kernel_scope();`): the GIL released, and one OpenMP
// thread if this is the forking thread of a forked child (cpu/fork_guard.cpp).
[[nodiscard]] inline py::gil_scoped_release kernel_scope() {
  serial_after_fork();
  return py::gil_scoped_release();
}

template <typename T>
const T* rows_of(const In<T>& a, const char* name, int64_t* n, int64_t* d) {
  FASTAL_REQUIRE(a.ndim() == 2, name, " must be 2-D (n, d), got ", a.ndim(), " dimensions");
  *n = a.shape(0);
  *d = a.shape(1);
  // Kernels size their row chunks by d (k-center divides by it): a row of no values is refused
  // here.
  FASTAL_REQUIRE(*d >= 1, name, " must have at least one column, got shape (", *n, ", 0)");
  return reinterpret_cast<const T*>(a.data());
}

template <typename V>
V* vec_of(Buf<V>& a, const char* name, int64_t length) {
  FASTAL_REQUIRE(a.ndim() == 1 && a.shape(0) == length, name, " must have shape (", length,
                 ",), got ndim ", a.ndim(), " and length ", a.ndim() ? a.shape(0) : 0);
  return a.mutable_data();
}

// An element of a pool tuple that must already be a C-contiguous array of exactly type V.
template <typename V>
Buf<V> exact(const py::tuple& pool, size_t k, const char* name) {
  const py::handle h = pool[k];
  FASTAL_REQUIRE(Buf<V>::check_(h) &&
                     py::array(py::reinterpret_borrow<py::object>(h)).flags() & py::array::c_style,
                 name, " must be a C-contiguous array of the kernel's exact dtype");
  return py::reinterpret_borrow<Buf<V>>(h);
}

// A pool crosses as a tuple: (X,) for a dense matrix, (A, H, sqnorm, bias) for a factored embedding
// (bias: H has an implicit trailing 1, see FactoredRows).
// The arrays stay referenced by the tuple for the whole call.
template <typename T>
DenseRows<T> dense_rows(const py::tuple& pool) {
  const auto X = exact<typename Wire<T>::type>(pool, 0, "X");
  DenseRows<T> r{};
  r.X = rows_of<T>(X, "X", &r.n, &r.d);
  return r;
}

template <typename T>
FactoredRows<T> factored_rows(const py::tuple& pool) {
  FASTAL_REQUIRE(pool.size() == 4, "a factored pool must be (A, H, sqnorm, bias), got a tuple of ",
                 pool.size());
  const auto A = exact<typename Wire<T>::type>(pool, 0, "A");
  const auto H = exact<typename Wire<T>::type>(pool, 1, "H");
  auto sq = exact<Acc<T>>(pool, 2, "sqnorm");
  FASTAL_REQUIRE(py::isinstance<py::bool_>(pool[3]), "bias (pool[3]) must be a bool");
  FactoredRows<T> r{};
  int64_t nh;
  r.Am = rows_of<T>(A, "A", &r.n, &r.C);
  r.H = rows_of<T>(H, "H", &nh, &r.hs);
  FASTAL_REQUIRE(nh == r.n, "A and H must have the same number of rows, got ", r.n, " and ", nh);
  r.bias = pool[3].cast<bool>();
  r.dh = r.hs + (r.bias ? 1 : 0);
  r.sqnorm = vec_of(sq, "sqnorm", r.n);
  return r;
}

// Calls f with the Rows object of the pool: dense for a 1-tuple, factored for a 4-tuple.
template <typename T, typename F>
auto with_rows(const py::tuple& pool, F&& f) {
  FASTAL_REQUIRE(pool.size() == 1 || pool.size() == 4,
                 "pool must be (X,) or (A, H, sqnorm, bias), got a tuple of ", pool.size());
  if (pool.size() == 1) return f(dense_rows<T>(pool));
  return f(factored_rows<T>(pool));
}

template <typename Rows>
KCenterState<Rows> make_state(const Rows& rows, Buf<AccOfRows<Rows>>& mind, Buf<int64_t>& near,
                              Buf<int64_t>& centres, int64_t n_labeled, Buf<int64_t>& picks,
                              Buf<AccOfRows<Rows>>& radius2, bool prune) {
  KCenterState<Rows> s{};
  s.rows = rows;
  s.budget = picks.ndim() == 1 ? picks.shape(0) : -1;
  FASTAL_REQUIRE(s.budget >= 0, "picks must be 1-D");
  FASTAL_REQUIRE(n_labeled >= 0 && n_labeled + s.budget <= rows.n, "n_labeled + budget (",
                 n_labeled, " + ", s.budget, ") exceeds the number of rows (", rows.n, ")");
  s.mind = vec_of(mind, "mind", rows.n);
  s.near = vec_of(near, "near", rows.n);
  s.centres = vec_of(centres, "centres", n_labeled + s.budget);
  s.picks = picks.mutable_data();
  s.radius2 = vec_of(radius2, "radius2", s.budget);
  s.n_labeled = n_labeled;
  s.prune = prune;
  for (int64_t j = 0; j < n_labeled; ++j)
    FASTAL_REQUIRE(s.centres[j] >= 0 && s.centres[j] < rows.n, "centres[", j, "] = ", s.centres[j],
                   " is out of range for ", rows.n, " rows");
  return s;
}

// Calls f(Storage<T>{}, "name") for each storage type of the kernels, float64 included: the
// per-dtype registrations of the binding files (float16 / bfloat16 cross as uint16, see Wire).
template <typename T>
struct Storage {
  using type = T;
};
template <typename F>
void for_each_storage(F&& f) {
  f(Storage<float>{}, "float32");
  f(Storage<double>{}, "float64");
  f(Storage<Half>{}, "float16");
  f(Storage<BFloat16>{}, "bfloat16");
}

void bind_distances(py::module_& m);  // cpu_distances.cpp: distances, k-center, k-means++
void bind_sparse(py::module_& m);     // cpu_sparse.cpp: IHT top-b, factored products
void bind_lloyd(py::module_& m);      // cpu_lloyd.cpp: Lloyd steps (fused, bounded)
void bind_gram(py::module_& m);       // cpu_gram.cpp: batched Gram eigenvalues

}  // namespace fastal::bindings
