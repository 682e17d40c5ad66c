// fastal._cpu: IHT top-b thresholding (and the host build of the CUDA fused kernel, for tests)
// and the factored products of the Sparse Approximation solvers.
#include "bindings/cpu_wire.h"

namespace fastal::bindings {

namespace {

template <typename T>
void register_topb(py::module_& m, const std::string& tag) {
  m.def(("iht_threshold_" + tag).c_str(),
        [](const Buf<T>& s, const Buf<T>& sigma, int64_t b, double alpha, bool exact) {
          FASTAL_REQUIRE(s.ndim() == 1, "s must be 1-D, got ", s.ndim(), " dimensions");
          const int64_t n = s.shape(0);
          FASTAL_REQUIRE(sigma.ndim() == 1 && sigma.shape(0) == n, "sigma must have shape (", n,
                         ",)");
          FASTAL_REQUIRE(b >= 0 && b <= n, "b must be in [0, ", n, "], got ", b);
          Buf<int64_t> support(b);
          Buf<T> w(n);
          const T* ps = s.data();
          const T* pg = sigma.data();
          int64_t* out = support.mutable_data();
          T* pw = w.mutable_data();
          {
            auto nogil = kernel_scope();
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
            auto nogil = kernel_scope();
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
            auto nogil = kernel_scope();
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
            auto nogil = kernel_scope();
            factored_grad_apply(f.A, f.H, f.n, f.C, r, scale, pz, beta, idx, count, pg, pm);
          }
          return py::make_tuple(g, M);
        },
        py::arg("A").noconvert(), py::arg("H").noconvert(), py::arg("R").noconvert(),
        py::arg("scale"), py::arg("z").noconvert(), py::arg("beta"), py::arg("rows") = py::none(),
        py::arg("hrows") = py::none(), py::arg("bias") = false);
}

}  // namespace

void bind_sparse(py::module_& m) {
  register_topb<float>(m, "float32");
  register_topb<double>(m, "float64");
  for_each_storage([&](auto storage, const char* tag) {
    register_factored_products<typename decltype(storage)::type>(m, tag);
  });
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
          auto nogil = kernel_scope();
          iht_threshold_fused_host(ps, pg, n, b, alpha, exact, grid, out, pw, bad);
        }
        return py::make_tuple(support, w, py::make_tuple(bad[0], bad[1], bad[2], bad[3]));
      },
      "The CUDA fused top-b kernel on `grid` emulated blocks (tests only): (support, w, (NaN / Inf "
      "in s, first, in sigma, first)).",
      py::arg("s").noconvert(), py::arg("sigma").noconvert(), py::arg("b"), py::arg("alpha"),
      py::arg("exact") = false, py::arg("grid") = 1);
}

}  // namespace fastal::bindings
