// fastal._cpu: numpy-facing wrappers of the CPU kernels. Arrays arrive C-contiguous with the exact
// dtype (the Python layer casts on purpose; .noconvert() forbids silent copies); float16 and
// bfloat16 arrive as uint16 views. The GIL is released around every kernel.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <optional>

#include <string>
#include <tuple>

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
  // Kernels size their row chunks by d (k-center divides by it): a row of no values is refused here.
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
  FASTAL_REQUIRE(Buf<V>::check_(h) && py::array(py::reinterpret_borrow<py::object>(h)).flags() &
                                          py::array::c_style,
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
    FASTAL_REQUIRE(s.centres[j] >= 0 && s.centres[j] < rows.n, "centres[", j, "] = ",
                   s.centres[j], " is out of range for ", rows.n, " rows");
  return s;
}

template <typename T>
void register_dtype(py::module_& m, const std::string& tag) {
  using A = Acc<T>;

  m.def(("min_sqdist_to_set_" + tag).c_str(),
        [](const py::tuple& pool, const py::tuple& set) {
          return with_rows<T>(pool, [&](auto rows) {
            using R = decltype(rows);
            R y;
            if constexpr (std::is_same_v<R, DenseRows<T>>) {
              y = dense_rows<T>(set);
              FASTAL_REQUIRE(y.d == rows.d, "Y must have as many columns as X (", rows.d, "), got ", y.d);
            } else {
              FASTAL_REQUIRE(set.size() == 4, "Y must be factored like X");
              y = factored_rows<T>(set);
              FASTAL_REQUIRE(y.C == rows.C && y.dh == rows.dh, "Y must have the factor shapes of X");
            }
            FASTAL_REQUIRE(y.n >= 1, "Y must have at least one row");
            Buf<A> dist2(rows.n);
            Buf<int64_t> index(rows.n);
            A* pd = dist2.mutable_data();
            int64_t* pi = index.mutable_data();
            {
              py::gil_scoped_release nogil;
              std::vector<int64_t> all(static_cast<size_t>(y.n));
              for (int64_t j = 0; j < y.n; ++j) all[j] = j;
              const auto centres = prepare_centres(y, all.data(), y.n);
              min_sqdist_to_centres(rows, centres.data(), y.n, pd, pi);
            }
            return py::make_tuple(dist2, index);
          });
        },
        py::arg("pool"), py::arg("set"));

  // Dense rows against centres given in the accumulation type (float32 for 16-bit rows), so that
  // k-means never rounds its centres to the rows' storage.
  m.def(("min_sqdist_to_centres_" + tag).c_str(),
        [](const In<T>& X, const Buf<A>& centres) {
          DenseRows<T> rows{};
          rows.X = rows_of<T>(X, "X", &rows.n, &rows.d);
          const int64_t d = rows.d;
          FASTAL_REQUIRE(centres.ndim() == 2 && centres.shape(1) == d && centres.shape(0) >= 1,
                         "centres must have shape (m, ", d, ") with m >= 1");
          const int64_t m = centres.shape(0);
          Buf<A> dist2(rows.n);
          Buf<int64_t> index(rows.n);
          const A* pc = centres.data();
          A* pd = dist2.mutable_data();
          int64_t* pi = index.mutable_data();
          {
            py::gil_scoped_release nogil;
            std::vector<A> laid(static_cast<size_t>(m * d));
            for (int64_t j = 0; j < m; ++j) lay_out_centre<T>(pc + j * d, laid.data() + j * d, d);
            min_sqdist_to_centres(rows, laid.data(), m, pd, pi);
          }
          return py::make_tuple(dist2, index);
        },
        py::arg("X").noconvert(), py::arg("centres").noconvert());

  m.def(("count_nonfinite_rows_" + tag).c_str(),
        [](const In<T>& X) {
          int64_t n, d, first = -1, count;
          double spread = 0;
          const T* x = rows_of<T>(X, "X", &n, &d);
          {
            py::gil_scoped_release nogil;
            count = count_nonfinite_rows(x, n, d, &first, &spread);
          }
          return py::make_tuple(count, first, spread);
        },
        py::arg("X").noconvert());

  m.def(("segment_sum_" + tag).c_str(),
        [](const In<T>& X, const Buf<int64_t>& labels, int64_t k) {
          int64_t n, d;
          const T* x = rows_of<T>(X, "X", &n, &d);
          FASTAL_REQUIRE(labels.ndim() == 1 && labels.shape(0) == n, "labels must have shape (", n, ",)");
          FASTAL_REQUIRE(k >= 1, "k must be >= 1, got ", k);
          const int64_t* lab = labels.data();
          for (int64_t i = 0; i < n; ++i)
            FASTAL_REQUIRE(lab[i] >= 0 && lab[i] < k, "labels[", i, "] = ", lab[i], " is not in [0, ", k, ")");
          Buf<double> sums({k, d});
          Buf<int64_t> counts(k);
          double* ps = sums.mutable_data();
          int64_t* pc = counts.mutable_data();
          {
            py::gil_scoped_release nogil;
            segment_sum(x, n, d, lab, k, ps, pc);
          }
          return py::make_tuple(sums, counts);
        },
        py::arg("X").noconvert(), py::arg("labels").noconvert(), py::arg("k"));

  m.def(("kcenter_init_first_" + tag).c_str(),
        [](const py::tuple& pool, int64_t first, Buf<A>& mind, Buf<int64_t>& near,
           Buf<int64_t>& centres, Buf<int64_t>& picks, Buf<A>& radius2) {
          with_rows<T>(pool, [&](auto rows) {
            auto s = make_state(rows, mind, near, centres, 0, picks, radius2, false);
            FASTAL_REQUIRE(first >= 0 && first < rows.n, "first must be in [0, ", rows.n, "), got ", first);
            py::gil_scoped_release nogil;
            kcenter_init_first(s, first);
          });
        },
        py::arg("pool"), py::arg("first"), py::arg("mind").noconvert(),
        py::arg("near").noconvert(), py::arg("centres").noconvert(), py::arg("picks").noconvert(),
        py::arg("radius2").noconvert());

  m.def(("kcenter_steps_" + tag).c_str(),
        [](const py::tuple& pool, Buf<A>& mind, Buf<int64_t>& near, Buf<int64_t>& centres,
           int64_t n_labeled, Buf<int64_t>& picks, Buf<A>& radius2, bool prune, int64_t t_begin,
           int64_t t_end) {
          return with_rows<T>(pool, [&](auto rows) {
            auto s = make_state(rows, mind, near, centres, n_labeled, picks, radius2, prune);
            FASTAL_REQUIRE(0 <= t_begin && t_begin <= t_end && t_end <= s.budget, "steps [",
                           t_begin, ", ", t_end, ") out of range for budget ", s.budget);
            if (t_begin < t_end)
              FASTAL_REQUIRE(s.picks[t_begin] >= 0 && s.picks[t_begin] < rows.n, "picks[",
                             t_begin, "] = ", s.picks[t_begin], " is out of range");
            // the state of earlier calls is read back as indices: O(n), against O(n d) a step
            const int64_t placed = n_labeled + t_begin;
            for (int64_t j = n_labeled; j < placed; ++j)
              FASTAL_REQUIRE(s.centres[j] >= 0 && s.centres[j] < rows.n, "centres[", j, "] = ",
                             s.centres[j], " is out of range for ", rows.n, " rows");
            if (prune)
              for (int64_t i = 0; i < rows.n; ++i)
                FASTAL_REQUIRE(s.near[i] >= -1 && s.near[i] < placed, "near[", i, "] = ", s.near[i],
                               " is not -1 or a centre position in [0, ", placed, ")");
            py::gil_scoped_release nogil;
            kcenter_steps(s, t_begin, t_end);
            return s.rows_read;
          });
        },
        py::arg("pool"), py::arg("mind").noconvert(), py::arg("near").noconvert(),
        py::arg("centres").noconvert(), py::arg("n_labeled"), py::arg("picks").noconvert(),
        py::arg("radius2").noconvert(), py::arg("prune"), py::arg("t_begin"), py::arg("t_end"));

  // k-means++: labeled (int64, may be empty) or first >= 0 starts it; block_sums persists between
  // calls of the steps.
  // with labeled rows, mind must already hold every row's squared distance to the nearest one
  // (fastal.ops.min_sqdist_cpu, in interruptible calls)
  m.def(("kmeanspp_init_" + tag).c_str(),
        [](const py::tuple& pool, Buf<int64_t>& labeled, int64_t first, Buf<A>& mind,
           Buf<int64_t>& picks, Buf<double>& block_sums) {
          with_rows<T>(pool, [&](auto rows) {
            using R = decltype(rows);
            KMeansPPState<R> s{};
            s.rows = rows;
            s.mind = vec_of(mind, "mind", rows.n);
            s.k = picks.ndim() == 1 ? picks.shape(0) : 0;
            s.picks = picks.mutable_data();
            s.block_sums = vec_of(block_sums, "block_sums", (rows.n + kKMeansPPBlock - 1) / kKMeansPPBlock);
            const int64_t n_labeled = labeled.ndim() == 1 ? labeled.shape(0) : -1;
            FASTAL_REQUIRE(n_labeled >= 0, "labeled must be 1-D");
            const int64_t* lab = labeled.data();
            for (int64_t j = 0; j < n_labeled; ++j)
              FASTAL_REQUIRE(lab[j] >= 0 && lab[j] < rows.n, "labeled[", j, "] = ", lab[j],
                             " is out of range for ", rows.n, " rows");
            if (n_labeled == 0 && s.k > 0)
              FASTAL_REQUIRE(first >= 0 && first < rows.n, "first must be in [0, ", rows.n, "), got ", first);
            py::gil_scoped_release nogil;
            if (n_labeled > 0)
              kmeanspp_init_labeled(s, lab, n_labeled);
            else
              kmeanspp_init_first(s, first);
          });
        },
        py::arg("pool"), py::arg("labeled").noconvert(), py::arg("first"),
        py::arg("mind").noconvert(), py::arg("picks").noconvert(),
        py::arg("block_sums").noconvert());

  // near / centres (optional, together): prune as k-center does; returns the rows read.
  m.def(("kmeanspp_steps_" + tag).c_str(),
        [](const py::tuple& pool, Buf<A>& mind, Buf<int64_t>& picks, const Buf<double>& uniform,
           Buf<double>& block_sums, bool has_first, int64_t t_begin, int64_t t_end,
           std::optional<Buf<int64_t>> near, std::optional<Buf<int64_t>> centres,
           int64_t n_labeled) {
          return with_rows<T>(pool, [&](auto rows) {
            using R = decltype(rows);
            KMeansPPState<R> s{};
            s.rows = rows;
            s.mind = vec_of(mind, "mind", rows.n);
            s.k = picks.ndim() == 1 ? picks.shape(0) : -1;
            FASTAL_REQUIRE(s.k >= 0 && s.k <= rows.n, "picks must be 1-D with at most n entries");
            s.picks = picks.mutable_data();
            FASTAL_REQUIRE(uniform.ndim() == 1 && uniform.shape(0) == s.k, "uniform must have shape (", s.k, ",)");
            s.uniform = uniform.data();
            s.block_sums = vec_of(block_sums, "block_sums", (rows.n + kKMeansPPBlock - 1) / kKMeansPPBlock);
            s.has_first = has_first;
            FASTAL_REQUIRE(0 <= t_begin && t_begin <= t_end && t_end <= s.k, "steps [", t_begin,
                           ", ", t_end, ") out of range for k ", s.k);
            if (has_first && t_begin == 0 && t_end > 0)
              FASTAL_REQUIRE(s.picks[0] >= 0 && s.picks[0] < rows.n, "picks[0] is out of range");
            FASTAL_REQUIRE(near.has_value() == centres.has_value(),
                           "near and centres are given together or not at all");
            if (near) {
              FASTAL_REQUIRE(n_labeled >= 0, "n_labeled must be >= 0");
              s.near = vec_of(*near, "near", rows.n);
              s.centres = vec_of(*centres, "centres", n_labeled + s.k);
              s.n_labeled = n_labeled;
              // the state of earlier calls is read back as indices: O(n), against O(n d) a step
              const int64_t placed = n_labeled + t_begin;
              for (int64_t j = 0; j < placed; ++j)
                FASTAL_REQUIRE(s.centres[j] >= 0 && s.centres[j] < rows.n, "centres[", j, "] = ",
                               s.centres[j], " is out of range for ", rows.n, " rows");
              for (int64_t i = 0; i < rows.n; ++i)
                FASTAL_REQUIRE(s.near[i] >= -1 && s.near[i] < placed, "near[", i, "] = ",
                               s.near[i], " is not -1 or a centre position in [0, ", placed, ")");
            }
            py::gil_scoped_release nogil;
            kmeanspp_steps(s, t_begin, t_end);
            return s.rows_read;
          });
        },
        py::arg("pool"), py::arg("mind").noconvert(), py::arg("picks").noconvert(),
        py::arg("uniform").noconvert(), py::arg("block_sums").noconvert(), py::arg("has_first"),
        py::arg("t_begin"), py::arg("t_end"), py::arg("near").noconvert() = py::none(),
        py::arg("centres").noconvert() = py::none(), py::arg("n_labeled") = 0);
}

}  // namespace

template <typename T>
void register_topb(py::module_& m, const std::string& tag) {
  m.def(("iht_threshold_" + tag).c_str(),
        [](const Buf<T>& s, const Buf<T>& sigma, int64_t b, double alpha, bool exact) {
          FASTAL_REQUIRE(s.ndim() == 1, "s must be 1-D, got ", s.ndim(), " dimensions");
          const int64_t n = s.shape(0);
          FASTAL_REQUIRE(sigma.ndim() == 1 && sigma.shape(0) == n, "sigma must have shape (", n, ",)");
          FASTAL_REQUIRE(b >= 0 && b <= n, "b must be in [0, ", n, "], got ", b);
          Buf<int64_t> support(b);
          Buf<T> w(n);
          const T* ps = s.data();
          const T* pg = sigma.data();
          int64_t* out = support.mutable_data();
          T* pw = w.mutable_data();
          {
            py::gil_scoped_release nogil;
            iht_threshold(ps, pg, n, b, alpha, exact ? IhtRule::Exact : IhtRule::Paper, out, pw);
          }
          return py::make_tuple(support, w);
        },
        py::arg("s").noconvert(), py::arg("sigma").noconvert(), py::arg("b"), py::arg("alpha"),
        py::arg("exact") = false);
}

// The factored products of the Sparse Approximation solvers (see kernels.h). A is (n, C) in
// Acc<S>; H holds the features as stored (S: float32, float64, or float16 / bfloat16 as uint16) and
// is read through hrows (candidate j -> row hrows[j] of H; None: H has the n rows of A) with an
// implicit trailing 1 when bias: the products have dh = H's width + bias columns.
template <typename S>
void register_factored_products(py::module_& m, const std::string& tag) {
  using T = Acc<S>;
  struct Factors {
    const T* A;
    HRows<S> H;
    int64_t n, C, dh;
  };
  auto factors = [](const Buf<T>& A, const In<S>& H, const std::optional<Buf<int64_t>>& hrows,
                    bool bias) {
    FASTAL_REQUIRE(A.ndim() == 2 && H.ndim() == 2, "A (n, C) and H (rows, d) must be 2-D");
    const int64_t n = A.shape(0), rows_h = H.shape(0);
    const int64_t* map = nullptr;
    if (hrows) {
      FASTAL_REQUIRE(hrows->ndim() == 1 && hrows->shape(0) == n, "hrows must have shape (", n,
                     ",) like A's rows");
      map = hrows->data();
      for (int64_t k = 0; k < n; ++k)
        FASTAL_REQUIRE(map[k] >= 0 && map[k] < rows_h, "hrows[", k, "] = ", map[k],
                       " is out of range for H's ", rows_h, " rows");
    } else {
      FASTAL_REQUIRE(rows_h == n, "A (n, C) and H (n, d) must have the same number of rows");
    }
    const HRows<S> h{reinterpret_cast<const S*>(H.data()), map, H.shape(1), bias};
    return Factors{A.data(), h, n, A.shape(1), h.dh()};
  };
  auto matrix = [](const Buf<double>& R, const Factors& f, const char* name) {
    FASTAL_REQUIRE(R.ndim() == 2 && R.shape(0) == f.C && R.shape(1) == f.dh, name,
                   " must have shape (", f.C, ", ", f.dh, ")");
    return R.data();
  };
  auto vector = [](const Buf<double>& v, int64_t n, const char* name) {
    FASTAL_REQUIRE(v.ndim() == 1 && v.shape(0) == n, name, " must have shape (", n, ",)");
    return v.data();
  };
  // (rows, count): the checked subset, or (nullptr, n) for every row
  auto row_subset = [](const std::optional<Buf<int64_t>>& rows, int64_t n) {
    if (!rows) return std::pair<const int64_t*, int64_t>{nullptr, n};
    FASTAL_REQUIRE(rows->ndim() == 1, "rows must be 1-D");
    const int64_t* idx = rows->data();
    const int64_t count = rows->shape(0);
    for (int64_t k = 0; k < count; ++k)
      FASTAL_REQUIRE(idx[k] >= 0 && idx[k] < n, "rows[", k, "] = ", idx[k], " is out of range");
    return std::pair<const int64_t*, int64_t>{idx, count};
  };

  m.def(("factored_adjoint_" + tag).c_str(),
        [=](const Buf<T>& A, const In<S>& H, const Buf<double>& R, double scale,
            std::optional<Buf<int64_t>> rows, std::optional<Buf<int64_t>> hrows, bool bias) {
          const Factors f = factors(A, H, hrows, bias);
          const double* r = matrix(R, f, "R");
          const auto [idx, count] = row_subset(rows, f.n);
          Buf<double> out(count);
          double* po = out.mutable_data();
          {
            py::gil_scoped_release nogil;
            factored_adjoint(f.A, f.H, f.C, r, scale, idx, count, po);
          }
          return out;
        },
        py::arg("A").noconvert(), py::arg("H").noconvert(), py::arg("R").noconvert(),
        py::arg("scale"), py::arg("rows") = py::none(), py::arg("hrows") = py::none(),
        py::arg("bias") = false);

  m.def(("factored_apply_" + tag).c_str(),
        [=](const Buf<T>& A, const In<S>& H, const Buf<double>& u, double scale,
            std::optional<Buf<int64_t>> hrows, bool bias) {
          const Factors f = factors(A, H, hrows, bias);
          const double* pu = vector(u, f.n, "u");
          Buf<double> M({f.C, f.dh});
          double* pm = M.mutable_data();
          {
            py::gil_scoped_release nogil;
            factored_apply(f.A, f.H, f.n, f.C, pu, scale, pm);
          }
          return M;
        },
        py::arg("A").noconvert(), py::arg("H").noconvert(), py::arg("u").noconvert(),
        py::arg("scale"), py::arg("hrows") = py::none(), py::arg("bias") = false);

  m.def(("factored_grad_apply_" + tag).c_str(),
        [=](const Buf<T>& A, const In<S>& H, const Buf<double>& R, double scale,
            const Buf<double>& z, double beta, std::optional<Buf<int64_t>> rows,
            std::optional<Buf<int64_t>> hrows, bool bias) {
          const Factors f = factors(A, H, hrows, bias);
          const double* r = matrix(R, f, "R");
          const double* pz = vector(z, f.n, "z");
          const auto [idx, count] = row_subset(rows, f.n);
          Buf<double> g(count);
          Buf<double> M({f.C, f.dh});
          double* pg = g.mutable_data();
          double* pm = M.mutable_data();
          {
            py::gil_scoped_release nogil;
            factored_grad_apply(f.A, f.H, f.n, f.C, r, scale, pz, beta, idx, count, pg, pm);
          }
          return py::make_tuple(g, M);
        },
        py::arg("A").noconvert(), py::arg("H").noconvert(), py::arg("R").noconvert(),
        py::arg("scale"), py::arg("z").noconvert(), py::arg("beta"), py::arg("rows") = py::none(),
        py::arg("hrows") = py::none(), py::arg("bias") = false);
}

// One fused Lloyd iteration (X float32 / float64, or float16 / bfloat16 as uint16 with float32
// xsq and centres): labels, squared distances, float64 sums and counts per centre; the GEMM is the
// BLAS function at gemm_address (MKL's or scipy's sgemm / dgemm; sgemm for 16-bit X),
// single-threaded per call through MKL's mkl_set_num_threads_local_ (when given) or the caller;
// partial_limit: the bytes of thread-private sums allowed (-1: lloyd::RowSums' default).
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

template <typename S>
void register_lloyd(py::module_& m, const std::string& tag) {
  using T = Acc<S>;
  m.def(("kmeans_lloyd_step_" + tag).c_str(),
        [](const In<S>& X, const Buf<T>& xsq, const Buf<T>& centres, uintptr_t gemm_address,
           uintptr_t threads_local_address, int64_t partial_limit) {
          const auto [n, d, k] = lloyd_sizes<S>(X, xsq, centres, gemm_address);
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
            py::gil_scoped_release nogil;
            lloyd_step(px, n, d, pq, pc, k, gemm_address, threads_local_address, pl, pd, ps, pk,
                       partial_limit);
          }
          return py::make_tuple(labels, dist2, sums, counts);
        },
        py::arg("X").noconvert(), py::arg("xsq").noconvert(), py::arg("centres").noconvert(),
        py::arg("gemm_address"), py::arg("threads_local_address") = 0,
        py::arg("partial_limit") = -1);
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
            py::gil_scoped_release nogil;
            computed = lloyd_step_bounded(px, n, d, pq, pc, k, ps, pg, n_groups, fresh,
                                          gemm_address, threads_local_address, pl, pu, pgl, plo,
                                          po, psum, pk, partial_limit);
          }
          return py::make_tuple(sums, counts, computed);
        },
        py::arg("X").noconvert(), py::arg("xsq").noconvert(), py::arg("centres").noconvert(),
        py::arg("shift").noconvert(), py::arg("group").noconvert(), py::arg("n_groups"),
        py::arg("fresh"), py::arg("labels").noconvert(), py::arg("upper").noconvert(),
        py::arg("glower").noconvert(), py::arg("lower").noconvert(),
        py::arg("offset").noconvert(), py::arg("gemm_address"),
        py::arg("threads_local_address") = 0, py::arg("partial_limit") = -1);
}

// Batched Gram eigenvalues (CRC): λ⁺_min per group, and the spectra (n_groups x size) when asked,
// by `kernel` (gram_min_eig or the host build of the CUDA small path), called as
// kernel(Z, n, D, labeled, mL, groups, n_groups, G, rtol, min_eig, spectra).
template <typename T>
void require_gram_inputs(const Buf<T>& Z, const Buf<int64_t>& groups, double rtol) {
  FASTAL_REQUIRE(Z.ndim() == 2, "Z must be 2-D (n, D), got ", Z.ndim(), " dimensions");
  FASTAL_REQUIRE(groups.ndim() == 2 && groups.shape(1) >= 1,
                 "groups must be 2-D (n_groups, G) with G >= 1");
  FASTAL_REQUIRE(rtol >= 0 && rtol < 1, "rtol must be in [0, 1), got ", rtol);
}

template <typename T, typename Kernel>
py::object run_gram(const Buf<T>& Z, const Buf<int64_t>& labeled, const Buf<int64_t>& groups,
                    double rtol, bool return_all, Kernel kernel) {
  require_gram_inputs(Z, groups, rtol);
  FASTAL_REQUIRE(labeled.ndim() == 1, "labeled must be 1-D, got ", labeled.ndim(), " dimensions");
  const int64_t n = Z.shape(0), D = Z.shape(1), mL = labeled.shape(0);
  const int64_t n_groups = groups.shape(0), G = groups.shape(1);
  FASTAL_REQUIRE(D >= 1, "Z must have at least one column");
  const int64_t size = std::min(mL + G, D);
  Buf<double> mins(n_groups);
  Buf<double> spectra(std::vector<py::ssize_t>{return_all ? n_groups : 0, size});
  const T* pz = Z.data();
  const int64_t* pl = labeled.data();
  const int64_t* pg = groups.data();
  double* pm = mins.mutable_data();
  double* ps = return_all ? spectra.mutable_data() : nullptr;
  {
    py::gil_scoped_release nogil;
    kernel(pz, n, D, pl, mL, pg, n_groups, G, rtol, pm, ps);
  }
  if (return_all) return py::make_tuple(mins, spectra);
  return std::move(mins);
}

template <typename T>
void register_gram(py::module_& m, const std::string& tag) {
  m.def(("gram_min_eig_" + tag).c_str(),
        [](const Buf<T>& Z, const Buf<int64_t>& labeled, const Buf<int64_t>& groups, double rtol,
           bool return_all) {
          return run_gram(Z, labeled, groups, rtol, return_all, gram_min_eig<T>);
        },
        py::arg("Z").noconvert(), py::arg("labeled").noconvert(), py::arg("groups").noconvert(),
        py::arg("rtol"), py::arg("return_all") = false);
  m.def(("gram_min_eig_small_" + tag).c_str(),
        [](const Buf<T>& Z, const Buf<int64_t>& labeled, const Buf<int64_t>& groups, double rtol,
           bool return_all, int64_t slots) {
          return run_gram(Z, labeled, groups, rtol, return_all,
                          [slots](const T* z, int64_t n, int64_t D, const int64_t* l, int64_t mL,
                                  const int64_t* g, int64_t ng, int64_t G, double r, double* pm,
                                  double* ps) {
                            gram_min_eig_small(z, n, D, l, mL, g, ng, G, r, slots, pm, ps);
                          });
        },
        "The CUDA kernel's per-thread path for orders <= 32 built for the host (tests only).",
        py::arg("Z").noconvert(), py::arg("labeled").noconvert(), py::arg("groups").noconvert(),
        py::arg("rtol"), py::arg("return_all") = false, py::arg("slots") = 64);
  m.def(("gram_min_eig_warp_" + tag).c_str(),
        [](const Buf<T>& Z, const Buf<int64_t>& labeled, const Buf<int64_t>& groups, double rtol,
           bool return_all) {
          return run_gram(Z, labeled, groups, rtol, return_all, gram_min_eig_warp<T>);
        },
        "The CUDA kernel's one-warp path for orders <= 32 on an emulated warp (tests only).",
        py::arg("Z").noconvert(), py::arg("labeled").noconvert(), py::arg("groups").noconvert(),
        py::arg("rtol"), py::arg("return_all") = false);
  m.def(("gram_min_eig_lowrank_" + tag).c_str(),
        [](const Buf<T>& Z, const Buf<int64_t>& groups, const Buf<double>& basis,
           const Buf<double>& lam, bool s_side, double rtol) {
          require_gram_inputs(Z, groups, rtol);
          const int64_t n = Z.shape(0), D = Z.shape(1), m = lam.shape(0);
          const int64_t n_groups = groups.shape(0), G = groups.shape(1);
          FASTAL_REQUIRE(lam.ndim() == 1, "lam must be 1-D");
          FASTAL_REQUIRE(basis.ndim() == 2 && basis.shape(0) == m && basis.shape(1) == D,
                         "basis must be (", m, ", ", D, "), got (", basis.shape(0), ", ",
                         basis.ndim() == 2 ? basis.shape(1) : 0, ")");
          FASTAL_REQUIRE(s_side || m == D, "the D side needs m = D, got m = ", m);
          Buf<double> mins(n_groups);
          const T* pz = Z.data();
          const int64_t* pg = groups.data();
          const double *pb = basis.data(), *pl = lam.data();
          double* pm = mins.mutable_data();
          {
            py::gil_scoped_release nogil;
            gram_min_eig_lowrank(pz, n, D, pg, n_groups, G, pb, pl, m, s_side, rtol, pm);
          }
          return mins;
        },
        py::arg("Z").noconvert(), py::arg("groups").noconvert(), py::arg("basis").noconvert(),
        py::arg("lam").noconvert(), py::arg("s_side"), py::arg("rtol"));
}

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "fastal CPU kernels (C++17, OpenMP)";
  install_fork_guard();
  register_dtype<float>(m, "float32");
  register_dtype<double>(m, "float64");
  register_dtype<Half>(m, "float16");
  register_dtype<BFloat16>(m, "bfloat16");
  register_topb<float>(m, "float32");
  register_topb<double>(m, "float64");
  register_factored_products<float>(m, "float32");
  register_factored_products<double>(m, "float64");
  register_factored_products<Half>(m, "float16");
  register_factored_products<BFloat16>(m, "bfloat16");
  register_lloyd<float>(m, "float32");
  register_lloyd<double>(m, "float64");
  register_lloyd<Half>(m, "float16");
  register_lloyd<BFloat16>(m, "bfloat16");
  register_lloyd_bounded<float>(m, "float32");
  register_lloyd_bounded<double>(m, "float64");
  register_lloyd_bounded<Half>(m, "float16");
  register_lloyd_bounded<BFloat16>(m, "bfloat16");
  m.def(
      "iht_threshold_fused_float32",
      [](const Buf<float>& s, const Buf<float>& sigma, int64_t b, double alpha, bool exact,
         int grid) {
        FASTAL_REQUIRE(s.ndim() == 1, "s must be 1-D, got ", s.ndim(), " dimensions");
        const int64_t n = s.shape(0);
        FASTAL_REQUIRE(sigma.ndim() == 1 && sigma.shape(0) == n, "sigma must have shape (", n,
                       ",)");
        Buf<int64_t> support(b >= 0 ? b : 0);
        Buf<float> w(n);
        int64_t bad[4] = {0, -1, 0, -1};
        const float* ps = s.data();
        const float* pg = sigma.data();
        int64_t* out = support.mutable_data();
        float* pw = w.mutable_data();
        {
          py::gil_scoped_release nogil;
          iht_threshold_fused_host(ps, pg, n, b, alpha, exact, grid, out, pw, bad);
        }
        return py::make_tuple(support, w, py::make_tuple(bad[0], bad[1], bad[2], bad[3]));
      },
      "The CUDA fused top-b kernel on `grid` emulated blocks (tests only): (support, w, (NaN / Inf "
      "in s, first, in sigma, first)).",
      py::arg("s").noconvert(), py::arg("sigma").noconvert(), py::arg("b"), py::arg("alpha"),
      py::arg("exact") = false, py::arg("grid") = 1);
  m.def(
      "gram_groups_valid",
      [](const Buf<int64_t>& groups, int64_t n, const Buf<int64_t>& labeled_sorted) {
        FASTAL_REQUIRE(groups.ndim() == 2, "groups must be 2-D (n_groups, G)");
        FASTAL_REQUIRE(labeled_sorted.ndim() == 1, "labeled_sorted must be 1-D");
        const int64_t n_groups = groups.shape(0), G = groups.shape(1);
        py::array_t<bool> valid(n_groups);
        gram_groups_valid(groups.data(), n_groups, G, n, labeled_sorted.data(),
                          labeled_sorted.shape(0), valid.mutable_data());
        return valid;
      },
      "The CUDA kernel's check of device groups built for the host (tests only): one bool per row.",
      py::arg("groups").noconvert(), py::arg("n"), py::arg("labeled_sorted").noconvert());
  register_gram<float>(m, "float32");
  register_gram<double>(m, "float64");
  m.def(
      "indexed_distances_float64",
      [](const Buf<double>& X, const Buf<int64_t>& rows, const Buf<int64_t>& cols,
         bool nearest_only) {
        int64_t n, d;
        const double* x = rows_of<double>(X, "X", &n, &d);
        FASTAL_REQUIRE(rows.ndim() == 1 && cols.ndim() == 1, "rows and cols must be 1-D");
        const int64_t nr = rows.shape(0), nc = cols.shape(0);
        const int64_t* pr = rows.data();
        const int64_t* pc = cols.data();
        for (int64_t k = 0; k < nr; ++k)
          FASTAL_REQUIRE(pr[k] >= 0 && pr[k] < n, "rows[", k, "] = ", pr[k],
                         " is out of range for X with ", n, " rows");
        for (int64_t k = 0; k < nc; ++k)
          FASTAL_REQUIRE(pc[k] >= 0 && pc[k] < n, "cols[", k, "] = ", pc[k],
                         " is out of range for X with ", n, " rows");
        Buf<double> out = nearest_only ? Buf<double>(nr) : Buf<double>({nr, nc});
        double* po = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          indexed_distances(x, d, pr, nr, pc, nc, nearest_only, po);
        }
        return out;
      },
      "Euclidean distances (float64) of rows X[rows] to X[cols]: (len(rows), len(cols)), or the "
      "nearest one per row with nearest_only (inf without cols)",
      py::arg("X").noconvert(), py::arg("rows").noconvert(), py::arg("cols").noconvert(),
      py::arg("nearest_only") = false);
  m.def("parallel_sum", [](const Buf<float>& x) {
    const float* p = x.data();
    const int64_t n = x.size();
    py::gil_scoped_release nogil;
    return parallel_sum(p, n);
  }, py::arg("x").noconvert());
  m.def("num_threads", [] { return omp_get_max_threads(); });
  m.def("in_forked_child", &in_forked_child,
        "True in a process forked after fastal._cpu was imported: its kernels run on one thread "
        "there (GNU OpenMP's threads do not survive fork)");
  m.attr("kmeanspp_block") = kKMeansPPBlock;
}
