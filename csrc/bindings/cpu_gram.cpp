// fastal._cpu: batched Gram eigenvalues for CRC (direct, small-path host build, warp-path host
// build, low-rank update) and the host build of the CUDA group check (tests).
#include "bindings/cpu_wire.h"

namespace fastal::bindings {

namespace {

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
    auto nogil = kernel_scope();
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
          return run_gram(
              Z, labeled, groups, rtol, return_all,
              [slots](const T* z, int64_t n, int64_t D, const int64_t* l, int64_t mL,
                      const int64_t* g, int64_t ng, int64_t G, double r, double* pm, double* ps) {
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
            auto nogil = kernel_scope();
            gram_min_eig_lowrank(pz, n, D, pg, n_groups, G, pb, pl, m, s_side, rtol, pm);
          }
          return mins;
        },
        py::arg("Z").noconvert(), py::arg("groups").noconvert(), py::arg("basis").noconvert(),
        py::arg("lam").noconvert(), py::arg("s_side"), py::arg("rtol"));
}

}  // namespace

void bind_gram(py::module_& m) {
  register_gram<float>(m, "float32");
  register_gram<double>(m, "float64");
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
}

}  // namespace fastal::bindings
