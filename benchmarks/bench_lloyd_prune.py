"""k-means (Lloyd) with Yinyang bounds (CPU): pruned against unpruned and scikit-learn, same run.

Pools as ``bench_kmeanspp_prune.py``: the 100-component Gaussian mixture (centres N(0, I), points
centre + N(0, 0.25² I)), where most rows keep their centre after a few iterations, and a Gaussian
pool N(0, I), where rows keep changing for longer; ``n`` float32 rows of ``d`` features. Every case
starts from the same ``k`` rows drawn with a fixed seed and runs Lloyd to convergence with the
defaults (``tol = 1e-4``, at most 300 iterations): what ``KMeansSampling`` and ALLY run.

``unpruned``      ``fastal.kmeans(X, k, init=C0, prune=False)``: one GEMM pass per iteration.
``pruned``        ``fastal.kmeans(X, k, init=C0)``: rows whose bounds settle their centre are not
                  read; the labels are the unpruned fit's (asserted; ``n_iter`` and ``inertia``
                  are in ``extra_info`` for both).
``sklearn_elkan`` ``sklearn.cluster.KMeans(k, init=C0, n_init=1, algorithm="elkan")``: the
                  bounded Lloyd users have today (Elkan's k bounds per row), same tolerance.
``pruned_f16``    ``pruned`` on the pool stored as float16 (half the memory; rows widened to
                  float32 in the kernels, so the fit is that of the float16 pool's float32 copy,
                  asserted on the labels).

``extra_info``: sizes, ``seconds`` (best of the rounds), ``n_iter``, ``inertia``,
``distance_share`` (fastal: distances computed over ``n k`` per iteration) and, for ``pruned``,
``speedup_vs_unpruned``. Sizes by ``FASTAL_BENCH``: tiny (n = 5,000, d = 32, k = 64; CI), medium
(n = 100k, d = 128, k ∈ {100, 1000}), full (medium plus d = 512 and n = 1M at k = 1000).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastal

from .bench_kmeanspp_prune import make_pool

PRESET = os.environ.get("FASTAL_BENCH", "tiny").strip().lower() or "tiny"
#: (n, d, k)
CASES = {
    "tiny": [(5000, 32, 64)],
    "medium": [(100_000, 128, k) for k in (100, 1000)],
    "full": [(100_000, d, k) for d in (128, 512) for k in (100, 1000)] + [(1_000_000, 128, 1000)],
}[PRESET]
IMPLS = ("unpruned", "pruned", "sklearn_elkan", "pruned_f16")
_TIMES: dict = {}
_LABELS: dict = {}


def initial_centres(X: np.ndarray, k: int) -> np.ndarray:
    rows = np.sort(np.random.default_rng((0, X.shape[0], k)).choice(X.shape[0], k, replace=False))
    return X[rows].copy()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["mixture", "gaussian"])
@pytest.mark.parametrize(("n", "d", "k"), CASES, ids=[f"n{n}-d{d}-k{k}" for n, d, k in CASES])
def test_lloyd_prune(benchmark, impl, kind, n, d, k):
    benchmark.group = f"lloyd prune/cpu/{kind}/n={n}/d={d}/k={k}"
    X = make_pool(kind, n, d)
    C0 = initial_centres(X, k)
    if impl == "sklearn_elkan":
        cluster = pytest.importorskip("sklearn.cluster")

        def run():
            km = cluster.KMeans(k, init=C0, n_init=1, algorithm="elkan", tol=1e-4)
            km.fit(X)
            return km.labels_, km.n_iter_, float(km.inertia_), None

    elif impl == "pruned_f16":
        X16 = X.astype(np.float16)

        def run():
            res = fastal.kmeans(X16, k, init=C0)
            return np.asarray(res.labels), res.n_iter, res.inertia, res.distance_share

    else:

        def run():
            res = fastal.kmeans(X, k, init=C0, prune=impl != "unpruned")
            return np.asarray(res.labels), res.n_iter, res.inertia, res.distance_share

    rounds = 2 if n * d * k <= 2e10 else 1
    labels, n_iter, inertia, share = benchmark.pedantic(run, rounds=rounds, iterations=1)
    key = (kind, n, d, k)
    _LABELS[(key, impl)] = labels
    if impl == "pruned" and (key, "unpruned") in _LABELS:
        np.testing.assert_array_equal(labels, _LABELS[(key, "unpruned")])
    if impl == "pruned_f16" and n * d * k <= 1e9:  # the float32 copy's fit, checked where cheap
        copy = fastal.kmeans(X.astype(np.float16).astype(np.float32), k, init=C0)
        np.testing.assert_array_equal(labels, np.asarray(copy.labels))
    seconds = benchmark.stats.stats.min if benchmark.stats else float("nan")
    _TIMES[(key, impl)] = seconds
    benchmark.extra_info.update(
        n=n, d=d, k=k, pool=kind, impl=impl, seconds=seconds, n_iter=int(n_iter),
        inertia=inertia, distance_share=share,
    )  # fmt: skip
    if impl == "pruned" and (key, "unpruned") in _TIMES:
        benchmark.extra_info["speedup_vs_unpruned"] = _TIMES[(key, "unpruned")] / seconds
