// fastal._cuda: pybind11 wrappers of the CUDA kernels (csrc/cuda/kernels.h). Device arrays cross as
// raw pointers (Python ints) that the Python layer takes from torch / cupy, with the framework's
// current stream as an int handle (0: the default stream) and the storage dtype as a string. The
// GIL is released around every call that touches the device.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/key.h"
#include "cuda/cuda_check.h"
#include "cuda/kernels.h"

namespace py = pybind11;
namespace fc = fastal::cuda;

namespace {

template <typename P>
P* ptr(uintptr_t p) {
  return reinterpret_cast<P*>(p);
}
cudaStream_t stream_of(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

fc::Factored factored(uintptr_t a, uintptr_t h, uintptr_t sqnorm, int64_t n, int64_t C,
                      int64_t dh) {
  return fc::Factored{ptr<const void>(a), ptr<const void>(h), ptr<const float>(sqnorm), n, C, dh};
}

fc::KMeansPPState kmeanspp_state(uintptr_t mind, uintptr_t picks, int64_t k, uintptr_t uniforms,
                                 uintptr_t tile_sum, uintptr_t tile_count, uintptr_t totals,
                                 uintptr_t centre_row, bool first_given, int64_t t_begin,
                                 int64_t t_end, int device, uintptr_t stream) {
  fc::KMeansPPState s{};
  s.mind = ptr<float>(mind);
  s.picks = ptr<int64_t>(picks);
  s.k = k;
  s.uniforms = ptr<const double>(uniforms);
  s.tile_sum = ptr<double>(tile_sum);
  s.tile_count = ptr<int32_t>(tile_count);
  s.totals = ptr<double>(totals);
  s.centre_row = ptr<float>(centre_row);
  s.first_given = first_given;
  s.t_begin = t_begin;
  s.t_end = t_end;
  s.device = device;
  s.stream = stream_of(stream);
  return s;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fastal CUDA kernels (pointers, sizes and streams in; see csrc/cuda/kernels.h)";

  m.def("device_count", &fc::device_count,
        "Number of visible CUDA devices; 0 without a driver or device (never raises).");

  m.def(
      "synchronize",
      [](int device, uintptr_t stream) {
        py::gil_scoped_release nogil;
        fc::synchronize(device, stream_of(stream));
      },
      py::arg("device"), py::arg("stream"));

  m.def(
      "key_value", [](uint64_t key) { return fastal::key_value(key); }, py::arg("key"),
      "The float value packed in a 64-bit (value, index) key.");

  m.def(
      "count_nonfinite_rows",
      [](const std::string& dtype, uintptr_t x, int64_t n, int64_t d, int device,
         uintptr_t stream) {
        const fc::DType dt = fc::parse_dtype(dtype);
        int64_t first = -1, count = 0;
        {
          py::gil_scoped_release nogil;
          count = fc::count_nonfinite_rows(dt, ptr<const void>(x), n, d, &first, device,
                                           stream_of(stream));
        }
        return py::make_tuple(count, first);
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("n"), py::arg("d"), py::arg("device"),
      py::arg("stream"));

  m.def(
      "min_dist_to_set",
      [](const std::string& dtype, uintptr_t x, int64_t n, uintptr_t y, int64_t m_rows, int64_t d,
         uintptr_t dist, uintptr_t index, int device, uintptr_t stream, bool squared) {
        const fc::DType dt = fc::parse_dtype(dtype);
        py::gil_scoped_release nogil;
        fc::min_dist_to_set(dt, ptr<const void>(x), n, ptr<const void>(y), m_rows, d,
                            ptr<float>(dist), ptr<int64_t>(index), device, stream_of(stream),
                            squared);
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("n"), py::arg("y_ptr"), py::arg("m"),
      py::arg("d"), py::arg("dist_ptr"), py::arg("index_ptr"), py::arg("device"), py::arg("stream"),
      py::arg("squared") = false);

  m.def(
      "kcenter_init_labeled",
      [](const std::string& dtype, uintptr_t x, int64_t n, int64_t d, uintptr_t rows,
         int64_t n_labeled, uintptr_t centres, uintptr_t mind, uintptr_t near, uintptr_t keys,
         int device, uintptr_t stream) {
        const fc::DType dt = fc::parse_dtype(dtype);
        py::gil_scoped_release nogil;
        fc::kcenter_init_labeled(dt, ptr<const void>(x), n, d, ptr<const void>(rows), n_labeled,
                                 ptr<const int64_t>(centres), ptr<float>(mind), ptr<int64_t>(near),
                                 ptr<uint64_t>(keys), device, stream_of(stream));
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("n"), py::arg("d"), py::arg("rows_ptr"),
      py::arg("n_labeled"), py::arg("centres_ptr"), py::arg("mind_ptr"), py::arg("near_ptr"),
      py::arg("keys_ptr"), py::arg("device"), py::arg("stream"));

  m.def(
      "kcenter_init_first",
      [](const std::string& dtype, int64_t first, int64_t n, uintptr_t mind, uintptr_t near,
         uintptr_t keys, int device, uintptr_t stream) {
        const fc::DType dt = fc::parse_dtype(dtype);
        py::gil_scoped_release nogil;
        fc::kcenter_init_first(dt, first, n, ptr<float>(mind), ptr<int64_t>(near),
                               ptr<uint64_t>(keys), device, stream_of(stream));
      },
      py::arg("dtype"), py::arg("first"), py::arg("n"), py::arg("mind_ptr"), py::arg("near_ptr"),
      py::arg("keys_ptr"), py::arg("device"), py::arg("stream"));

  m.def(
      "kcenter_steps",
      [](const std::string& dtype, uintptr_t x, int64_t n, int64_t d, uintptr_t mind,
         uintptr_t near, uintptr_t centres, int64_t n_labeled, int64_t budget, uintptr_t keys,
         uintptr_t centre_dist2, uintptr_t centre_row, uintptr_t counter, bool prune,
         int64_t t_begin, int64_t t_end, int device, uintptr_t stream) {
        fc::KCenterSteps s{};
        s.dtype = fc::parse_dtype(dtype);
        s.X = ptr<const void>(x);
        s.n = n;
        s.d = d;
        s.mind = ptr<float>(mind);
        s.near = ptr<int64_t>(near);
        s.centres = ptr<int64_t>(centres);
        s.n_labeled = n_labeled;
        s.budget = budget;
        s.keys = ptr<uint64_t>(keys);
        s.centre_dist2 = ptr<float>(centre_dist2);
        s.centre_row = ptr<float>(centre_row);
        s.counter = ptr<uint64_t>(counter);
        s.prune = prune;
        s.t_begin = t_begin;
        s.t_end = t_end;
        s.device = device;
        s.stream = stream_of(stream);
        py::gil_scoped_release nogil;
        return fc::kcenter_steps(s);  // the centre-to-centre rows the pruned steps read
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("n"), py::arg("d"), py::arg("mind_ptr"),
      py::arg("near_ptr"), py::arg("centres_ptr"), py::arg("n_labeled"), py::arg("budget"),
      py::arg("keys_ptr"), py::arg("centre_dist2_ptr"), py::arg("centre_row_ptr"),
      py::arg("counter_ptr"), py::arg("prune"), py::arg("t_begin"), py::arg("t_end"),
      py::arg("device"), py::arg("stream"));

  m.def(
      "kcenter_decode",
      [](uintptr_t keys, int64_t budget, uintptr_t picks, uintptr_t radius, int device,
         uintptr_t stream) {
        py::gil_scoped_release nogil;
        fc::kcenter_decode(ptr<const uint64_t>(keys), budget, ptr<int64_t>(picks),
                           ptr<float>(radius), device, stream_of(stream));
      },
      py::arg("keys_ptr"), py::arg("budget"), py::arg("picks_ptr"), py::arg("radius_ptr"),
      py::arg("device"), py::arg("stream"));

  // ---- factored pools (A: n x C, H: n x dh, sqnorm: n float32) --------------------------------

  m.def("factored_centre_floats", &fc::factored_centre_floats, py::arg("C"), py::arg("dh"),
        "Floats of the centre buffer of a factored step (A_c, padding to a multiple of 4, H_c).");

  m.def(
      "min_dist_to_set_factored",
      [](const std::string& dtype, uintptr_t xa, uintptr_t xh, uintptr_t xsq, int64_t n,
         uintptr_t ya, uintptr_t yh, uintptr_t ysq, int64_t m_rows, int64_t C, int64_t dh,
         uintptr_t dist, uintptr_t index, int device, uintptr_t stream) {
        const fc::DType dt = fc::parse_dtype(dtype);
        py::gil_scoped_release nogil;
        fc::min_dist_to_set_factored(dt, factored(xa, xh, xsq, n, C, dh),
                                     factored(ya, yh, ysq, m_rows, C, dh), ptr<float>(dist),
                                     ptr<int64_t>(index), device, stream_of(stream));
      },
      py::arg("dtype"), py::arg("x_a_ptr"), py::arg("x_h_ptr"), py::arg("x_sqnorm_ptr"),
      py::arg("n"), py::arg("y_a_ptr"), py::arg("y_h_ptr"), py::arg("y_sqnorm_ptr"), py::arg("m"),
      py::arg("C"), py::arg("dh"), py::arg("dist_ptr"), py::arg("index_ptr"), py::arg("device"),
      py::arg("stream"));

  m.def(
      "kcenter_init_labeled_factored",
      [](const std::string& dtype, uintptr_t a, uintptr_t h, uintptr_t sq, int64_t n, int64_t C,
         int64_t dh, uintptr_t rows_a, uintptr_t rows_h, uintptr_t rows_sq, int64_t n_labeled,
         uintptr_t centres, uintptr_t mind, uintptr_t near, uintptr_t keys, int device,
         uintptr_t stream) {
        const fc::DType dt = fc::parse_dtype(dtype);
        py::gil_scoped_release nogil;
        fc::kcenter_init_labeled_factored(
            dt, factored(a, h, sq, n, C, dh), factored(rows_a, rows_h, rows_sq, n_labeled, C, dh),
            ptr<const int64_t>(centres), ptr<float>(mind), ptr<int64_t>(near), ptr<uint64_t>(keys),
            device, stream_of(stream));
      },
      py::arg("dtype"), py::arg("a_ptr"), py::arg("h_ptr"), py::arg("sqnorm_ptr"), py::arg("n"),
      py::arg("C"), py::arg("dh"), py::arg("rows_a_ptr"), py::arg("rows_h_ptr"),
      py::arg("rows_sqnorm_ptr"), py::arg("n_labeled"), py::arg("centres_ptr"), py::arg("mind_ptr"),
      py::arg("near_ptr"), py::arg("keys_ptr"), py::arg("device"), py::arg("stream"));

  m.def(
      "kcenter_steps_factored",
      [](const std::string& dtype, uintptr_t a, uintptr_t h, uintptr_t sq, int64_t n, int64_t C,
         int64_t dh, uintptr_t mind, uintptr_t near, uintptr_t centres, int64_t n_labeled,
         int64_t budget, uintptr_t keys, uintptr_t centre_bound, uintptr_t centre_row,
         uintptr_t counter, bool prune, int64_t t_begin, int64_t t_end, int device,
         uintptr_t stream) {
        fc::KCenterStepsFactored s{};
        s.dtype = fc::parse_dtype(dtype);
        s.X = factored(a, h, sq, n, C, dh);
        s.mind = ptr<float>(mind);
        s.near = ptr<int64_t>(near);
        s.centres = ptr<int64_t>(centres);
        s.n_labeled = n_labeled;
        s.budget = budget;
        s.keys = ptr<uint64_t>(keys);
        s.centre_bound = ptr<float>(centre_bound);
        s.centre_row = ptr<float>(centre_row);
        s.counter = ptr<uint64_t>(counter);
        s.prune = prune;
        s.t_begin = t_begin;
        s.t_end = t_end;
        s.device = device;
        s.stream = stream_of(stream);
        py::gil_scoped_release nogil;
        return fc::kcenter_steps_factored(s);  // the centre-to-centre rows the pruned steps read
      },
      py::arg("dtype"), py::arg("a_ptr"), py::arg("h_ptr"), py::arg("sqnorm_ptr"), py::arg("n"),
      py::arg("C"), py::arg("dh"), py::arg("mind_ptr"), py::arg("near_ptr"), py::arg("centres_ptr"),
      py::arg("n_labeled"), py::arg("budget"), py::arg("keys_ptr"), py::arg("centre_bound_ptr"),
      py::arg("centre_row_ptr"), py::arg("counter_ptr"), py::arg("prune"), py::arg("t_begin"),
      py::arg("t_end"), py::arg("device"), py::arg("stream"));

  // ---- k-means++ seeding ------------------------------------------------------------------------

  m.def("kmeanspp_tiles", &fc::kmeanspp_tiles, py::arg("n"),
        "Length of the tile_sum / tile_count buffers of k-means++ over n rows.");

  m.def(
      "kmeanspp_init_labeled",
      [](const std::string& dtype, uintptr_t x, int64_t n, int64_t d, uintptr_t rows,
         int64_t n_labeled, uintptr_t labeled, uintptr_t mind, uintptr_t tile_sum,
         uintptr_t tile_count, int device, uintptr_t stream) {
        const fc::DType dt = fc::parse_dtype(dtype);
        py::gil_scoped_release nogil;
        fc::kmeanspp_init_labeled(dt, ptr<const void>(x), n, d, ptr<const void>(rows), n_labeled,
                                  ptr<const int64_t>(labeled), ptr<float>(mind),
                                  ptr<double>(tile_sum), ptr<int32_t>(tile_count), device,
                                  stream_of(stream));
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("n"), py::arg("d"), py::arg("rows_ptr"),
      py::arg("n_labeled"), py::arg("labeled_ptr"), py::arg("mind_ptr"), py::arg("tile_sum_ptr"),
      py::arg("tile_count_ptr"), py::arg("device"), py::arg("stream"));

  m.def(
      "kmeanspp_init_labeled_factored",
      [](const std::string& dtype, uintptr_t a, uintptr_t h, uintptr_t sq, int64_t n, int64_t C,
         int64_t dh, uintptr_t rows_a, uintptr_t rows_h, uintptr_t rows_sq, int64_t n_labeled,
         uintptr_t labeled, uintptr_t mind, uintptr_t tile_sum, uintptr_t tile_count, int device,
         uintptr_t stream) {
        const fc::DType dt = fc::parse_dtype(dtype);
        py::gil_scoped_release nogil;
        fc::kmeanspp_init_labeled_factored(
            dt, factored(a, h, sq, n, C, dh), factored(rows_a, rows_h, rows_sq, n_labeled, C, dh),
            ptr<const int64_t>(labeled), ptr<float>(mind), ptr<double>(tile_sum),
            ptr<int32_t>(tile_count), device, stream_of(stream));
      },
      py::arg("dtype"), py::arg("a_ptr"), py::arg("h_ptr"), py::arg("sqnorm_ptr"), py::arg("n"),
      py::arg("C"), py::arg("dh"), py::arg("rows_a_ptr"), py::arg("rows_h_ptr"),
      py::arg("rows_sqnorm_ptr"), py::arg("n_labeled"), py::arg("labeled_ptr"), py::arg("mind_ptr"),
      py::arg("tile_sum_ptr"), py::arg("tile_count_ptr"), py::arg("device"), py::arg("stream"));

  m.def(
      "kmeanspp_init_first",
      [](int64_t first, int64_t n, uintptr_t mind, uintptr_t picks, int device, uintptr_t stream) {
        py::gil_scoped_release nogil;
        fc::kmeanspp_init_first(first, n, ptr<float>(mind), ptr<int64_t>(picks), device,
                                stream_of(stream));
      },
      py::arg("first"), py::arg("n"), py::arg("mind_ptr"), py::arg("picks_ptr"), py::arg("device"),
      py::arg("stream"));

  m.def(
      "kmeanspp_steps",
      [](const std::string& dtype, uintptr_t x, int64_t n, int64_t d, uintptr_t mind,
         uintptr_t picks, int64_t k, uintptr_t uniforms, uintptr_t tile_sum, uintptr_t tile_count,
         uintptr_t totals, uintptr_t centre_row, bool first_given, int64_t t_begin, int64_t t_end,
         int device, uintptr_t stream) {
        const fc::DType dt = fc::parse_dtype(dtype);
        const fc::KMeansPPState s =
            kmeanspp_state(mind, picks, k, uniforms, tile_sum, tile_count, totals, centre_row,
                           first_given, t_begin, t_end, device, stream);
        py::gil_scoped_release nogil;
        fc::kmeanspp_steps(dt, ptr<const void>(x), n, d, s);
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("n"), py::arg("d"), py::arg("mind_ptr"),
      py::arg("picks_ptr"), py::arg("k"), py::arg("uniforms_ptr"), py::arg("tile_sum_ptr"),
      py::arg("tile_count_ptr"), py::arg("totals_ptr"), py::arg("centre_row_ptr"),
      py::arg("first_given"), py::arg("t_begin"), py::arg("t_end"), py::arg("device"),
      py::arg("stream"));

  m.def(
      "kmeanspp_steps_factored",
      [](const std::string& dtype, uintptr_t a, uintptr_t h, uintptr_t sq, int64_t n, int64_t C,
         int64_t dh, uintptr_t mind, uintptr_t picks, int64_t k, uintptr_t uniforms,
         uintptr_t tile_sum, uintptr_t tile_count, uintptr_t totals, uintptr_t centre_row,
         bool first_given, int64_t t_begin, int64_t t_end, int device, uintptr_t stream) {
        const fc::DType dt = fc::parse_dtype(dtype);
        const fc::KMeansPPState s =
            kmeanspp_state(mind, picks, k, uniforms, tile_sum, tile_count, totals, centre_row,
                           first_given, t_begin, t_end, device, stream);
        py::gil_scoped_release nogil;
        fc::kmeanspp_steps_factored(dt, factored(a, h, sq, n, C, dh), s);
      },
      py::arg("dtype"), py::arg("a_ptr"), py::arg("h_ptr"), py::arg("sqnorm_ptr"), py::arg("n"),
      py::arg("C"), py::arg("dh"), py::arg("mind_ptr"), py::arg("picks_ptr"), py::arg("k"),
      py::arg("uniforms_ptr"), py::arg("tile_sum_ptr"), py::arg("tile_count_ptr"),
      py::arg("totals_ptr"), py::arg("centre_row_ptr"), py::arg("first_given"), py::arg("t_begin"),
      py::arg("t_end"), py::arg("device"), py::arg("stream"));

  // ---- batched Gram eigenvalues -----------------------------------------------------------------

  m.def(
      "gram_scan",
      [](const std::string& dtype, uintptr_t z, int64_t n, int64_t d, int device, uintptr_t stream,
         uintptr_t groups, int64_t n_groups, int64_t G, uintptr_t labeled_sorted,
         int64_t n_labeled) {
        const fc::GramDType dt = fc::parse_gram_dtype(dtype);
        fc::GroupCheck check;
        check.groups = ptr<const int64_t>(groups);
        check.n_groups = n_groups;
        check.G = G;
        check.lab_sorted = ptr<const int64_t>(labeled_sorted);
        check.n_labeled = n_labeled;
        fc::GramScan r;
        {
          py::gil_scoped_release nogil;
          r = fc::gram_scan(dt, ptr<const void>(z), n, d, check, device, stream_of(stream));
        }
        return py::make_tuple(r.peak, r.nonfinite_rows, r.first_row, r.bad_groups, r.first_group);
      },
      py::arg("dtype"), py::arg("z_ptr"), py::arg("n"), py::arg("d"), py::arg("device"),
      py::arg("stream"), py::arg("groups_ptr") = 0, py::arg("n_groups") = 0, py::arg("G") = 0,
      py::arg("labeled_sorted_ptr") = 0, py::arg("n_labeled") = 0,
      "(peak, count, first, bad_groups, first_group): max |z| over the finite entries of Z (n, d), "
      "float32 or float64, and the rows holding NaN or Inf (count, first row or -1); with "
      "n_groups > 0, also the groups (n_groups, G) int64 with an index out of range, in the "
      "ascending labeled_sorted (n_labeled) or twice (count, first group or -1). Synchronises the "
      "stream.");

  m.def(
      "gram_min_eig",
      [](const std::string& dtype, uintptr_t z, int64_t n, int64_t d, uintptr_t labeled,
         int64_t n_labeled, uintptr_t groups, int64_t n_groups, int64_t G, double rtol,
         uintptr_t min_eig, uintptr_t spectra, int device, uintptr_t stream, int64_t smem_limit,
         int64_t small_max, int64_t warp_max) {
        const fc::GramDType dt = fc::parse_gram_dtype(dtype);
        py::gil_scoped_release nogil;
        fc::gram_min_eig(dt, ptr<const void>(z), n, d, ptr<const int64_t>(labeled), n_labeled,
                         ptr<const int64_t>(groups), n_groups, G, rtol, ptr<double>(min_eig),
                         ptr<double>(spectra), smem_limit, small_max, warp_max, device,
                         stream_of(stream));
      },
      py::arg("dtype"), py::arg("z_ptr"), py::arg("n"), py::arg("d"), py::arg("labeled_ptr"),
      py::arg("n_labeled"), py::arg("groups_ptr"), py::arg("n_groups"), py::arg("G"),
      py::arg("rtol"), py::arg("min_eig_ptr"), py::arg("spectra_ptr"), py::arg("device"),
      py::arg("stream"), py::arg("smem_limit") = -1, py::arg("small_max") = -1,
      py::arg("warp_max") = -1,
      "min_eig (n_groups, float64) = λ⁺_min of the Gram matrix of labeled ∪ each group, and the "
      "ascending spectra (n_groups, min(|S|, d)) when spectra_ptr is not 0 (see gram_eig.cu).");

  // ---- IHT top-b thresholding -------------------------------------------------------------------

  m.def(
      "iht_threshold",
      [](uintptr_t s, uintptr_t sigma, int64_t n, int64_t b, double alpha, uintptr_t support,
         uintptr_t w, int device, uintptr_t stream, bool exact, int impl) {
        fc::NonfiniteCounts bad;
        {
          py::gil_scoped_release nogil;
          bad = fc::iht_threshold(ptr<const float>(s), ptr<const float>(sigma), n, b, alpha, exact,
                                  ptr<int64_t>(support), ptr<float>(w), device, stream_of(stream),
                                  impl);
        }
        return py::make_tuple(bad.s, bad.first_s, bad.sigma, bad.first_sigma);
      },
      py::arg("s_ptr"), py::arg("sigma_ptr"), py::arg("n"), py::arg("b"), py::arg("alpha"),
      py::arg("support_ptr"), py::arg("w_ptr"), py::arg("device"), py::arg("stream"),
      py::arg("exact") = false, py::arg("impl") = -1,
      "support (b, int64) and w (n, float32) of the IHT top-b step for float32 s and sigma (n); "
      "returns (NaN / Inf in s, first, in sigma, first), after which the outputs mean nothing. "
      "impl: 0 the launch sequence, 1 the fused cooperative kernel, -1 the default. "
      "Synchronises the stream.");
}
