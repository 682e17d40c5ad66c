// fastal._cpu: min distance to a set, k-center greedy and k-means++ steps, over dense or factored
// pools, per storage dtype; and float64 distances between indexed rows (robust k-center).
#include "bindings/cpu_wire.h"

namespace fastal::bindings {

namespace {

// The state of earlier calls of a resumed k-center / k-means++ selection, read back as indices
// (O(n), against O(n d) a step): centres[first, placed) are rows of the pool, and near (when
// given) holds -1 or a centre position below placed.
void require_resumed_state(const int64_t* centres, int64_t first, int64_t placed,
                           const int64_t* near, int64_t n) {
  for (int64_t j = first; j < placed; ++j)
    FASTAL_REQUIRE(centres[j] >= 0 && centres[j] < n, "centres[", j, "] = ", centres[j],
                   " is out of range for ", n, " rows");
  if (near == nullptr) return;
  for (int64_t i = 0; i < n; ++i)
    FASTAL_REQUIRE(near[i] >= -1 && near[i] < placed, "near[", i, "] = ", near[i],
                   " is not -1 or a centre position in [0, ", placed, ")");
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
              FASTAL_REQUIRE(y.d == rows.d, "Y must have as many columns as X (", rows.d, "), got ",
                             y.d);
            } else {
              FASTAL_REQUIRE(set.size() == 4, "Y must be factored like X");
              y = factored_rows<T>(set);
              FASTAL_REQUIRE(y.C == rows.C && y.dh == rows.dh,
                             "Y must have the factor shapes of X");
            }
            FASTAL_REQUIRE(y.n >= 1, "Y must have at least one row");
            Buf<A> dist2(rows.n);
            Buf<int64_t> index(rows.n);
            A* pd = dist2.mutable_data();
            int64_t* pi = index.mutable_data();
            {
              auto nogil = kernel_scope();
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
            auto nogil = kernel_scope();
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
            auto nogil = kernel_scope();
            count = count_nonfinite_rows(x, n, d, &first, &spread);
          }
          return py::make_tuple(count, first, spread);
        },
        py::arg("X").noconvert());

  m.def(("segment_sum_" + tag).c_str(),
        [](const In<T>& X, const Buf<int64_t>& labels, int64_t k) {
          int64_t n, d;
          const T* x = rows_of<T>(X, "X", &n, &d);
          FASTAL_REQUIRE(labels.ndim() == 1 && labels.shape(0) == n, "labels must have shape (", n,
                         ",)");
          FASTAL_REQUIRE(k >= 1, "k must be >= 1, got ", k);
          const int64_t* lab = labels.data();
          for (int64_t i = 0; i < n; ++i)
            FASTAL_REQUIRE(lab[i] >= 0 && lab[i] < k, "labels[", i, "] = ", lab[i],
                           " is not in [0, ", k, ")");
          Buf<double> sums({k, d});
          Buf<int64_t> counts(k);
          double* ps = sums.mutable_data();
          int64_t* pc = counts.mutable_data();
          {
            auto nogil = kernel_scope();
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
            FASTAL_REQUIRE(first >= 0 && first < rows.n, "first must be in [0, ", rows.n, "), got ",
                           first);
            auto nogil = kernel_scope();
            kcenter_init_first(s, first);
          });
        },
        py::arg("pool"), py::arg("first"), py::arg("mind").noconvert(), py::arg("near").noconvert(),
        py::arg("centres").noconvert(), py::arg("picks").noconvert(),
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
              FASTAL_REQUIRE(s.picks[t_begin] >= 0 && s.picks[t_begin] < rows.n, "picks[", t_begin,
                             "] = ", s.picks[t_begin], " is out of range");
            require_resumed_state(s.centres, n_labeled, n_labeled + t_begin,
                                  prune ? s.near : nullptr, rows.n);
            auto nogil = kernel_scope();
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
            s.block_sums =
                vec_of(block_sums, "block_sums", (rows.n + kKMeansPPBlock - 1) / kKMeansPPBlock);
            const int64_t n_labeled = labeled.ndim() == 1 ? labeled.shape(0) : -1;
            FASTAL_REQUIRE(n_labeled >= 0, "labeled must be 1-D");
            const int64_t* lab = labeled.data();
            for (int64_t j = 0; j < n_labeled; ++j)
              FASTAL_REQUIRE(lab[j] >= 0 && lab[j] < rows.n, "labeled[", j, "] = ", lab[j],
                             " is out of range for ", rows.n, " rows");
            if (n_labeled == 0 && s.k > 0)
              FASTAL_REQUIRE(first >= 0 && first < rows.n, "first must be in [0, ", rows.n,
                             "), got ", first);
            auto nogil = kernel_scope();
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
  m.def(
      ("kmeanspp_steps_" + tag).c_str(),
      [](const py::tuple& pool, Buf<A>& mind, Buf<int64_t>& picks, const Buf<double>& uniform,
         Buf<double>& block_sums, bool has_first, int64_t t_begin, int64_t t_end,
         std::optional<Buf<int64_t>> near, std::optional<Buf<int64_t>> centres, int64_t n_labeled) {
        return with_rows<T>(pool, [&](auto rows) {
          using R = decltype(rows);
          KMeansPPState<R> s{};
          s.rows = rows;
          s.mind = vec_of(mind, "mind", rows.n);
          s.k = picks.ndim() == 1 ? picks.shape(0) : -1;
          FASTAL_REQUIRE(s.k >= 0 && s.k <= rows.n, "picks must be 1-D with at most n entries");
          s.picks = picks.mutable_data();
          FASTAL_REQUIRE(uniform.ndim() == 1 && uniform.shape(0) == s.k,
                         "uniform must have shape (", s.k, ",)");
          s.uniform = uniform.data();
          s.block_sums =
              vec_of(block_sums, "block_sums", (rows.n + kKMeansPPBlock - 1) / kKMeansPPBlock);
          s.has_first = has_first;
          FASTAL_REQUIRE(0 <= t_begin && t_begin <= t_end && t_end <= s.k, "steps [", t_begin, ", ",
                         t_end, ") out of range for k ", s.k);
          if (has_first && t_begin == 0 && t_end > 0)
            FASTAL_REQUIRE(s.picks[0] >= 0 && s.picks[0] < rows.n, "picks[0] is out of range");
          FASTAL_REQUIRE(near.has_value() == centres.has_value(),
                         "near and centres are given together or not at all");
          if (near) {
            FASTAL_REQUIRE(n_labeled >= 0, "n_labeled must be >= 0");
            s.near = vec_of(*near, "near", rows.n);
            s.centres = vec_of(*centres, "centres", n_labeled + s.k);
            s.n_labeled = n_labeled;
            require_resumed_state(s.centres, 0, n_labeled + t_begin, s.near, rows.n);
          }
          auto nogil = kernel_scope();
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

void bind_distances(py::module_& m) {
  for_each_storage([&](auto storage, const char* tag) {
    register_dtype<typename decltype(storage)::type>(m, tag);
  });
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
          auto nogil = kernel_scope();
          indexed_distances(x, d, pr, nr, pc, nc, nearest_only, po);
        }
        return out;
      },
      "Euclidean distances (float64) of rows X[rows] to X[cols]: (len(rows), len(cols)), or the "
      "nearest one per row with nearest_only (inf without cols)",
      py::arg("X").noconvert(), py::arg("rows").noconvert(), py::arg("cols").noconvert(),
      py::arg("nearest_only") = false);
}

}  // namespace fastal::bindings
