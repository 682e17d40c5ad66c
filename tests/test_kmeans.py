"""k-means++ seeding and Lloyd / mini-batch k-means against the float64 references.

k-means++ (spec "fastal.kmeans_pp"): the random stream is documented exactly, so on float64 data the
picks must equal :func:`reference.kmeans_pp_ref` pick for pick. Lower precision rounds the
distances, so float32 picks equal the reference until a draw lands within rounding of a cumulative
boundary (the reference reports that margin). Small-integer data is exact in every dtype and in the
factored form: there the picks must be equal everywhere, zero-total draws on duplicate-heavy pools
included.

Lloyd (spec "fastal.kmeans"): same start -> same labels, centres, inertia, iteration count as
:func:`reference.lloyd_ref` on float64 data.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from conftest import (
    CPU_BACKENDS,
    assert_pp_same_until_near_tie,
    backend_dtype_params,
    backend_of,
    dtype_of,
    gaussian,
    indices_to_backend,
    labeled_subset,
    mixture,
    small_integers,
    to_backend,
    to_numpy,
    upcast,
)
from numpy.testing import assert_allclose, assert_array_equal
from reference import assign_ref, kmeans_pp_ref, lloyd_ref, softmax_ref, sqdist_to_row

import fastal

CPU_PARAMS = backend_dtype_params(backends=CPU_BACKENDS)


def pp(X, k, **kw) -> np.ndarray:
    return to_numpy(fastal.kmeans_pp(X, k, **kw))


def assert_valid_picks(picks, n: int, k: int, labeled) -> None:
    picks = np.asarray(picks)
    assert picks.shape == (k,)
    assert ((picks >= 0) & (picks < n)).all()
    assert np.unique(picks).size == k, "picks are not distinct"
    if labeled is not None:
        assert not np.isin(picks, labeled).any(), "a labeled row was picked"


# ---------------------------------------------------------------------------------------------
# k-means++: hand-worked


def test_hand_worked_kmeans_pp():
    # 1-D points 0, 1, 3, 7, labeled [0]. D^2 = (0, 1, 9, 49), cumsum (0, 1, 10, 59).
    X = np.array([[0.0], [1.0], [3.0], [7.0]])
    u = np.random.default_rng(5).random(2)
    # pick 0 with u[0]: first i with cum[i] > 59 u[0]
    cum = np.array([0.0, 1.0, 10.0, 59.0])
    first = int(np.searchsorted(cum, u[0] * 59, side="right"))
    picks = pp(X, 2, seed=5, labeled=[0])
    assert picks[0] == first
    assert_array_equal(picks, kmeans_pp_ref(X, 2, 5, labeled=[0]))
    # first="norm" without labeled rows: the largest norm, 7 (row 3), whatever the seed
    for seed in range(5):
        assert pp(X, 1, seed=seed, first="norm")[0] == 3
        assert pp(X, 1, seed=seed)[0] == np.random.default_rng(seed).integers(4)


def test_all_zero_distances_pick_by_rank():
    # all rows equal: total D^2 is 0 at every step -> the floor(u r)-th non-centre row
    X = np.zeros((6, 2))
    seed = 11
    rng = np.random.default_rng(seed)
    first = int(rng.integers(6))
    u = rng.random(4)
    free = [i for i in range(6) if i != first]
    expected = [first]
    for t in range(1, 4):
        expected.append(free.pop(int(np.floor(u[t] * len(free)))))
    assert_array_equal(pp(X, 4, seed=seed), expected)
    assert_array_equal(kmeans_pp_ref(X, 4, seed), expected)


class _FixedUniforms(np.random.Generator):
    """A Generator whose ``random(k)`` returns given values (to place a draw on a boundary)."""

    def __init__(self, values):
        super().__init__(np.random.PCG64(0))
        self.values = np.asarray(values, dtype=np.float64)

    def random(self, size=None, dtype=np.float64, out=None):
        return self.values[:size].copy()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_draw_at_a_block_boundary_never_takes_a_zero_weight_row(backend):
    # Weights: row 0 is 1, rows 2048..2051 (the second block of 2048) 2^-54 each, the labeled rows
    # 1 and 4096 weigh nothing. u * total rounds to exactly 1.0: the second block's sum crosses it,
    # but walking that block from 1.0 adds 2^-54 four times and each addition rounds away. The draw
    # is then the block's last positive row, never row 4096 of the next block (a labeled row).
    assert fastal._ext.cpu.kmeanspp_block == 2048
    X = np.zeros((4097, 1))
    X[0] = 1.0
    X[2048:2052] = 2.0**-27
    labeled = [1, 4096]
    rng = _FixedUniforms([1 - 2.0**-52])
    got = pp(to_backend(X, backend), 1, labeled=labeled, seed=rng)
    assert_array_equal(got, [2051])


# ---------------------------------------------------------------------------------------------
# k-means++: random data


PP_CASES = [
    (1, 1, 0, 1),
    (2, 3, 1, 1),
    (5, 2, 0, 5),
    (17, 3, 2, 15),
    (100, 8, 0, 30),
    (300, 16, 5, 295),
    (1000, 32, 20, 64),
]
PP_IDS = [f"n{n}-d{d}-L{L}-k{k}" for n, d, L, k in PP_CASES]


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("first", ["norm", "random"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(("n", "d", "n_labeled", "k"), PP_CASES, ids=PP_IDS)
def test_kmeans_pp_float64_matches_reference(n, d, n_labeled, k, backend, first, seed):
    X = gaussian(n, d, seed=n + d)  # with duplicated rows: exact zeros in D^2
    labeled = labeled_subset(n, n_labeled, seed=seed)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    Xb = to_backend(X, backend)
    picks = fastal.kmeans_pp(Xb, k, seed=seed, first=first, labeled=lab)
    assert backend_of(picks) == backend
    assert dtype_of(picks) == "int64"
    assert_array_equal(to_numpy(picks), kmeans_pp_ref(X, k, seed, first, labeled))
    assert_valid_picks(to_numpy(picks), n, k, labeled)


@pytest.mark.parametrize("first", ["norm", "random"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(("n", "d", "n_labeled", "k"), PP_CASES, ids=PP_IDS)
def test_kmeans_pp_float32_matches_reference_up_to_rounding(n, d, n_labeled, k, backend, first):
    Xb = to_backend(gaussian(n, d, seed=n + d + 1), backend, "float32")
    X = upcast(Xb)  # the stored values
    labeled = labeled_subset(n, n_labeled, seed=3)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    picks = pp(Xb, k, seed=3, first=first, labeled=lab)
    expected, margins = kmeans_pp_ref(X, k, 3, first, labeled, margins=True)
    assert_valid_picks(picks, n, k, labeled)
    assert_pp_same_until_near_tie(picks, expected, margins, rtol=1e-5)


@pytest.mark.parametrize(("backend", "dtype"), CPU_PARAMS)
@pytest.mark.parametrize("n_labeled", [0, 1, 7])
@pytest.mark.parametrize("first", ["norm", "random"])
def test_duplicate_heavy_pool_exact_in_every_dtype(backend, dtype, n_labeled, first):
    """60 rows with coordinates in {-1, 0, 1}^2: at most 9 distinct rows, so D^2 runs out long
    before k does; integer arithmetic is exact everywhere, so the zero-total rule must give the
    reference's picks, distinct and never labeled."""
    n = 60
    X = small_integers(n, 2, seed=n_labeled, high=1)
    labeled = labeled_subset(n, n_labeled, seed=4)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    Xb = to_backend(X, backend, dtype)
    for k in (5, 30, n - n_labeled):
        for seed in (0, 9):
            picks = pp(Xb, k, seed=seed, first=first, labeled=lab)
            assert_valid_picks(picks, n, k, labeled)
            assert_array_equal(picks, kmeans_pp_ref(X, k, seed, first, labeled))


@pytest.mark.parametrize("first", ["norm", "random"])
@pytest.mark.parametrize("labeled", [None, [1, 3]])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_k_zero_returns_empty(backend, labeled, first):
    """k = 0 is within 0 <= k <= n - len(labeled): no pick, like kcenter with budget 0."""
    Xb = to_backend(gaussian(10, 3, seed=0), backend)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    picks = fastal.kmeans_pp(Xb, 0, seed=0, first=first, labeled=lab)
    assert backend_of(picks) == backend
    assert dtype_of(picks) == "int64"
    assert tuple(picks.shape) == (0,)


def test_seed_as_generator_and_determinism():
    X = gaussian(200, 5, seed=1)
    a = pp(X, 20, seed=42)
    assert_array_equal(a, pp(X, 20, seed=42))
    assert_array_equal(a, pp(X, 20, seed=np.random.default_rng(42)))
    assert_array_equal(a, kmeans_pp_ref(X, 20, np.random.default_rng(42)))
    assert not np.array_equal(a, pp(X, 20, seed=43))


def test_progress_does_not_change_picks(capsys):
    X = gaussian(500, 4, seed=2)
    a = pp(X, 100, seed=1, progress=True)
    capsys.readouterr()
    assert_array_equal(a, pp(X, 100, seed=1, progress=False))


def test_progress_covers_the_labeled_set(capsys):
    """The distances to the labeled rows (most of the time with a large labeled set) had no
    bar; they have k-center's now, with the same picks."""
    X = gaussian(3000, 4, seed=5)
    labeled = np.arange(0, 3000, 7)
    a = pp(X, 20, seed=1, labeled=labeled, progress=True)
    assert f"distances to {labeled.size} labeled rows" in capsys.readouterr().err
    assert_array_equal(a, pp(X, 20, seed=1, labeled=labeled))


def _embedding_inputs(n, C, d, seed):
    rng = np.random.default_rng(seed)
    return softmax_ref(rng.normal(size=(n, C)) * 2), rng.normal(size=(n, d))


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("n_labeled", [0, 6])
@pytest.mark.parametrize("first", ["norm", "random"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_kmeans_pp_on_gradient_embedding(backend, first, n_labeled, seed):
    n, k = 400, 40
    probs, feats = _embedding_inputs(n, 6, 9, seed=10)
    emb = fastal.gradient_embedding(to_backend(probs, backend), to_backend(feats, backend))
    labeled = labeled_subset(n, n_labeled, seed=seed)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    picks = fastal.kmeans_pp(emb, k, seed=seed, first=first, labeled=lab)
    assert backend_of(picks) == backend
    assert dtype_of(picks) == "int64"
    dense = upcast(emb.dense())
    expected = kmeans_pp_ref(dense, k, seed, first, labeled)
    assert_array_equal(to_numpy(picks), expected)
    on_dense = fastal.kmeans_pp(emb.dense(), k, seed=seed, first=first, labeled=lab)
    assert_array_equal(to_numpy(on_dense), expected)


@pytest.mark.parametrize("first", ["norm", "random"])
def test_kmeans_pp_on_integer_gradient_embedding_with_duplicates(first):
    """Integer factors with repeated rows: the factored distances are exact (zero between equal
    rows), so even the zero-total draws match the reference on the materialised matrix."""
    rng = np.random.default_rng(12)
    A = rng.integers(-1, 2, size=(4, 3))[rng.integers(4, size=50)].astype(np.float64)
    H = rng.integers(-2, 3, size=(3, 2))[rng.integers(3, size=50)].astype(np.float64)
    emb = fastal.GradientEmbedding(A, H)
    dense = (A[:, :, None] * H[:, None, :]).reshape(50, 6)
    for k, labeled in ((10, None), (50, None), (47, [3, 8, 20])):
        picks = pp(emb, k, seed=k, first=first, labeled=labeled)
        assert_valid_picks(picks, 50, k, labeled)
        assert_array_equal(picks, kmeans_pp_ref(dense, k, k, first, labeled))


@pytest.mark.parametrize("n_labeled", [0, 6])
@pytest.mark.parametrize("first", ["norm", "random"])
@pytest.mark.parametrize(("backend", "dtype"), CPU_PARAMS)
def test_kmeans_pp_on_integer_gradient_embedding_every_dtype(backend, dtype, first, n_labeled):
    """float16 / bfloat16 factored pools on the CPU (and float32 / float64): integer factors make
    every factored distance exact in the float32 (float64) accumulation, so the picks are the
    float64 reference's on the materialised matrix, and fastal's on that matrix, exactly: first on
    a pool of few distinct gradients (the draws after those are all picked have zero total), then
    on one with more distinct rows than picks."""
    n, k = 300, 60  # at most 5 x 4 distinct gradients
    rng = np.random.default_rng(15)
    A = rng.integers(-1, 2, size=(5, 3))[rng.integers(5, size=n)].astype(np.float64)
    H = rng.integers(-1, 2, size=(4, 2))[rng.integers(4, size=n)].astype(np.float64)
    emb = fastal.GradientEmbedding(to_backend(A, backend, dtype), to_backend(H, backend, dtype))
    dense = (A[:, :, None] * H[:, None, :]).reshape(n, -1)
    assert np.unique(dense, axis=0).shape[0] < k  # D^2 runs out before k
    labeled = labeled_subset(n, n_labeled, seed=16)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    picks = fastal.kmeans_pp(emb, k, seed=5, first=first, labeled=lab)
    assert backend_of(picks) == backend
    assert dtype_of(picks) == "int64"
    expected = kmeans_pp_ref(dense, k, 5, first, labeled)
    assert_array_equal(to_numpy(picks), expected)
    assert_array_equal(pp(dense, k, seed=5, first=first, labeled=labeled), expected)
    # and a pool with more distinct rows than picks (factors in [-2, 2])
    A2, H2 = rng.integers(-2, 3, size=(n, 4)), rng.integers(-2, 3, size=(n, 5))
    emb2 = fastal.GradientEmbedding(to_backend(A2, backend, dtype), to_backend(H2, backend, dtype))
    dense2 = (A2[:, :, None] * H2[:, None, :]).reshape(n, -1).astype(np.float64)
    expected2 = kmeans_pp_ref(dense2, k, 7, first, labeled)
    assert np.unique(dense2, axis=0).shape[0] > k
    assert_array_equal(pp(emb2, k, seed=7, first=first, labeled=lab), expected2)


def test_kmeans_pp_on_float32_gradient_embedding():
    probs, feats = _embedding_inputs(300, 5, 8, seed=13)
    emb = fastal.gradient_embedding(probs.astype(np.float32), feats.astype(np.float32))
    A, H = upcast(emb.A), upcast(emb.H)
    dense = (A[:, :, None] * H[:, None, :]).reshape(300, -1)
    picks = pp(emb, 30, seed=2, first="norm")
    expected, margins = kmeans_pp_ref(dense, 30, 2, "norm", margins=True)
    assert_valid_picks(picks, 300, 30, None)
    # factored float32 distances carry cancellation error relative to the norms
    assert_pp_same_until_near_tie(picks, expected, margins, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# k-means++: the D^2 law


def _chi2_sf(stat: float, df: int) -> float:
    """Survival function of chi^2(df): scipy's when available, else Wilson-Hilferty."""
    try:
        from scipy.stats import chi2
    except ImportError:
        z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
        return 0.5 * math.erfc(z / math.sqrt(2))
    return float(chi2.sf(stat, df))


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a row of probability 0 was drawn"
    stat = float(np.sum((counts[keep] - expected[keep]) ** 2 / expected[keep]))
    return _chi2_sf(stat, int(keep.sum()) - 1)


def test_first_sampled_pick_follows_d2_law_with_a_labeled_row():
    """6 points, row 0 labeled: over 2000 seeds the first pick is drawn with probability
    D^2(x) / sum D^2 (1, 4, 9, 4, 2.25 over 20.25; row 0 never)."""
    X = np.array([[0.0], [1.0], [2.0], [3.0], [-2.0], [-1.5]])
    counts = np.zeros(6, dtype=np.int64)
    for seed in range(2000):
        counts[pp(X, 1, seed=seed, labeled=[0])[0]] += 1
    w = sqdist_to_row(X, X[0])
    assert counts[0] == 0
    assert _chi2_pvalue(counts, w / w.sum()) > 1e-3


def test_second_pick_follows_d2_law_after_norm_first():
    X = np.array([[0.5, 0.0], [1.0, 1.0], [-1.0, 0.5], [3.0, -1.0], [0.0, -2.0], [2.0, 2.0]])
    first = int(np.argmax(np.sum(X * X, axis=1)))
    counts = np.zeros(6, dtype=np.int64)
    for seed in range(2000):
        picks = pp(X, 2, seed=seed, first="norm")
        assert picks[0] == first
        counts[picks[1]] += 1
    w = sqdist_to_row(X, X[first])
    assert _chi2_pvalue(counts, w / w.sum()) > 1e-3


# ---------------------------------------------------------------------------------------------
# k-means++: bad input


def test_kmeans_pp_bad_input():
    X = gaussian(10, 3, seed=0)
    with pytest.raises(ValueError, match="k"):
        fastal.kmeans_pp(X, 11)
    with pytest.raises(ValueError, match="k"):
        fastal.kmeans_pp(X, 9, labeled=[0, 1])
    with pytest.raises(ValueError, match="k"):
        fastal.kmeans_pp(X, -1)
    with pytest.raises(ValueError, match="first"):
        fastal.kmeans_pp(X, 2, first="max")
    with pytest.raises(ValueError, match="labeled"):
        fastal.kmeans_pp(X, 2, labeled=[1, 1])
    with pytest.raises(ValueError, match="labeled"):
        fastal.kmeans_pp(X, 2, labeled=[10])
    bad = X.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="X"):
        fastal.kmeans_pp(bad, 2)
    with pytest.raises(ValueError, match="X"):
        fastal.kmeans_pp(X[0], 2)


# ---------------------------------------------------------------------------------------------
# Lloyd


def blobs(n: int, d: int, k: int, seed: int, spread: float = 0.5):
    """Well-separated blobs; row j belongs to blob j % k, so rows 0..k-1 are one per blob."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 10
    return centres[np.arange(n) % k] + rng.normal(size=(n, d)) * spread


def km(X, k, **kw):
    res = fastal.kmeans(X, k, **kw)
    assert isinstance(res, fastal.KMeansResult)
    return res


def assert_matches_lloyd(res, ref, rtol=1e-10) -> None:
    assert_array_equal(to_numpy(res.labels), ref["labels"])
    assert_allclose(upcast(res.centres), ref["centres"], rtol=rtol, atol=rtol)
    assert_allclose(res.inertia, ref["inertia"], rtol=rtol)
    assert res.n_iter == ref["n_iter"]
    assert res.converged == ref["converged"]


LLOYD_CASES = {
    "blobs": (lambda: blobs(600, 4, 5, seed=1), 5),
    "blobs-overlapping": (lambda: blobs(800, 3, 8, seed=2, spread=4.0), 8),
    "gaussian": (lambda: gaussian(500, 3, seed=3, duplicates=False), 10),
    "gaussian-duplicates": (lambda: gaussian(300, 2, seed=4), 6),
}


@pytest.mark.parametrize("tol", [1e-4, 0.0])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", list(LLOYD_CASES))
def test_lloyd_matches_reference(case, backend, tol):
    make, k = LLOYD_CASES[case]
    X = make()
    init = X[kmeans_pp_ref(X, k, 0)]
    res = km(to_backend(X, backend), k, init=to_backend(init, backend), tol=tol)
    assert backend_of(res.centres) == backend
    assert dtype_of(res.centres) == "float64"
    assert backend_of(res.labels) == backend
    assert dtype_of(res.labels) == "int64"
    assert tuple(res.centres.shape) == (k, X.shape[1])
    assert tuple(res.labels.shape) == (X.shape[0],)
    assert isinstance(res.inertia, float)
    assert isinstance(res.n_iter, int)
    assert isinstance(res.converged, bool)
    assert_matches_lloyd(res, lloyd_ref(X, init, 300, tol))


@pytest.mark.parametrize("seed", [0, 3])
def test_init_kmeans_pp_and_random(seed):
    X = blobs(400, 3, 6, seed=5, spread=2.0)
    res = km(X, 6, seed=seed)  # init="k-means++" by default
    init = X[kmeans_pp_ref(X, 6, seed, "random")]
    assert_matches_lloyd(res, lloyd_ref(X, init, 300, 1e-4))
    res = km(X, 6, seed=seed, init="random")
    init = X[np.random.default_rng(seed).choice(400, 6, replace=False)]
    assert_matches_lloyd(res, lloyd_ref(X, init, 300, 1e-4))


#: generic data with k >= 32: the fused CPU Lloyd step (BLAS GEMM + arg-min + float64 sums) that
#: float32 / float64 k-means takes there, and that the benchmarks and ALLY (k = budget) run
FUSED_CASES = {
    "gaussian-k40": (lambda: gaussian(3000, 8, seed=20, duplicates=False), 40),
    "gaussian-k64": (lambda: gaussian(3000, 8, seed=21, duplicates=False), 64),
    "blobs-overlapping-k64": (lambda: blobs(4000, 16, 30, seed=21, spread=4.0), 64),
}
SKLEARN_CASES = [(case, "float64") for case in LLOYD_CASES] + [
    (case, dtype) for case in FUSED_CASES for dtype in ("float64", "float32")
]
#: Same init, same tol definition, same iteration cap: on the same data both run the same Lloyd
#: iterations (their iteration counts agree), so the inertia may only differ by rounding. float64:
#: 1e-6. float32: scikit-learn accumulates its float32 inertia in float32, fastal the float32
#: squared distances in float64; measured within +-3e-6 of each other on these cases: 1e-5.
SKLEARN_RTOL = {"float64": 1e-6, "float32": 1e-5}


@pytest.mark.parametrize(("case", "dtype"), SKLEARN_CASES)
def test_inertia_no_worse_than_sklearn(case, dtype):
    cluster = pytest.importorskip("sklearn.cluster")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    make, k = {**LLOYD_CASES, **FUSED_CASES}[case]
    X = make().astype(dtype)
    if case in FUSED_CASES:  # the path under test is the fused step, not the min-distance kernel
        info = fastal._validate.check_matrix(X, "X")
        assert importlib.import_module("fastal._lloyd_fused")._fused_lloyd(info, k) is not None
    for seed in (0, 1):
        init = X[kmeans_pp_ref(X.astype(np.float64), k, seed)]
        ours = km(X, k, init=init)
        peer = cluster.KMeans(n_clusters=k, init=init, n_init=1, algorithm="lloyd")
        with threadpoolctl.threadpool_limits(1):  # one OpenMP thread: no pool start-up per call
            theirs = peer.fit(X)
        bound = theirs.inertia_ * (1 + SKLEARN_RTOL[dtype])
        assert ours.inertia <= bound, (ours.inertia, theirs.inertia_, ours.n_iter, theirs.n_iter_)


#: mini-batch cases: well-separated blobs (k < 32: the min-distance kernel assigns the batches)
#: and generic data with k = 40 (GEMM tiles)
MINIBATCH_CASES = {
    "blobs": (lambda: blobs(3000, 5, 6, seed=10), 6),
    "gaussian-k40": (lambda: gaussian(3000, 8, seed=20, duplicates=False), 40),
}


@pytest.mark.parametrize("batch", [256, 1024])
@pytest.mark.parametrize("case", list(MINIBATCH_CASES))
def test_minibatch_inertia_close_to_sklearn(case, batch):
    """Against scikit-learn's ``MiniBatchKMeans`` from the same init, with the same batch size and
    epoch cap, both with ``tol=0`` (they then stop after ``max_iter`` epochs or after 10 batches
    without a better smoothed batch inertia, the same rule) and scikit-learn's reassignment of
    small clusters off (fastal has none): the same algorithm (Sculley 2010), fed batches from two
    different random streams. So the runs differ, and only a loose bound holds: per seed the
    final inertias were within [0.98, 1.01] of each other on these data (and 0-5 % above full
    Lloyd from the same init). Asserted: the mean over 4 seeds at most 2 % above
    scikit-learn's (several times that spread), every run within 10 % of full Lloyd."""
    cluster = pytest.importorskip("sklearn.cluster")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    make, k = MINIBATCH_CASES[case]
    X = make()
    ours, theirs = [], []
    for seed in range(4):
        init = X[kmeans_pp_ref(X, k, seed)]
        res = km(X, k, init=init, minibatch=batch, max_iter=20, tol=0.0, seed=seed)
        peer = cluster.MiniBatchKMeans(
            n_clusters=k, init=init, n_init=1, batch_size=batch, max_iter=20, tol=0.0,
            reassignment_ratio=0.0, random_state=seed,
        )  # fmt: skip
        with threadpoolctl.threadpool_limits(1):
            peer.fit(X)
        full = km(X, k, init=init)
        assert res.inertia <= 1.1 * full.inertia, (seed, res.inertia, full.inertia)
        ours.append(res.inertia)
        theirs.append(peer.inertia_)
    assert np.mean(ours) <= 1.02 * np.mean(theirs), (ours, theirs)


def test_lloyd_float32_on_blobs():
    X = blobs(600, 4, 5, seed=6)
    init = X[:5]
    res = km(X.astype(np.float32), 5, init=init.astype(np.float32))
    ref = lloyd_ref(X.astype(np.float32), init.astype(np.float32), 300, 1e-4)
    assert dtype_of(res.centres) == "float32"
    assert_array_equal(to_numpy(res.labels), ref["labels"])
    assert_allclose(to_numpy(res.centres), ref["centres"], rtol=1e-5, atol=1e-5)
    assert_allclose(res.inertia, ref["inertia"], rtol=1e-4)


def test_torch_float32_centres():
    X = torch.from_numpy(blobs(200, 3, 4, seed=7).astype(np.float32))
    res = km(X, 4, seed=0)
    assert backend_of(res.centres) == "torch-cpu"
    assert dtype_of(res.centres) == "float32"
    assert backend_of(res.labels) == "torch-cpu"


def test_empty_cluster_takes_the_farthest_row():
    """1-D rows 0, 1, 2, 10, 11, 13; initial centres 1, 11, 100, 200. Centres 2 and 3 get no rows.
    Distances to the assigned centre: 1, 0, 1, 1, 0, 2 -> the farthest row is 5 (13); then rows
    0, 2, 3 tie at 1 -> row 0. So after one iteration centre 2 = 13 and centre 3 = 0.

    (The spec leaves open whether the donor cluster's mean still counts the row it gave away:
    scikit-learn removes it, the reference keeps it. Only donor-independent facts are asserted
    after one iteration; after convergence both readings reach the same partition.)"""
    X = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [13.0]])
    init = np.array([[1.0], [11.0], [100.0], [200.0]])
    one = km(X, 4, init=init, max_iter=1)
    c = to_numpy(one.centres)
    assert one.n_iter == 1
    assert c[2, 0] == 13.0
    assert c[3, 0] == 0.0
    full = km(X, 4, init=init)
    ref = lloyd_ref(X, init, 300, 1e-4)
    # final partition {0}, {1, 2}, {10, 11}, {13} with centres 0, 1.5, 10.5, 13
    assert_array_equal(ref["labels"], [3, 0, 0, 1, 1, 2])
    assert_array_equal(to_numpy(full.labels), ref["labels"])
    assert_allclose(to_numpy(full.centres), ref["centres"], rtol=1e-15)
    assert_allclose(full.inertia, 1.0, rtol=1e-15)
    assert full.converged


def test_empty_cluster_on_random_data():
    """Three initial centres far outside the data: each iteration relocates the empties."""
    X = gaussian(200, 2, seed=8, duplicates=False)
    init = np.vstack([X[:3], [[100.0, 100.0], [-100.0, 50.0], [0.0, -300.0]]])
    res = km(X, 6, init=init)
    labels = to_numpy(res.labels)
    assert np.unique(labels).size == 6, "a cluster stayed empty"
    assert np.isfinite(to_numpy(res.centres)).all()
    one = km(X, 6, init=init, max_iter=1)
    # the empty clusters 3, 4, 5 took the 1st, 2nd, 3rd farthest rows from their first centres
    _, d2 = assign_ref(X, init[:3])
    far = np.lexsort((np.arange(200), -d2))[:3]
    assert_array_equal(to_numpy(one.centres)[3:], X[far])


@pytest.mark.parametrize("max_iter", [1, 2, 5])
def test_max_iter_respected(max_iter):
    X = gaussian(1000, 2, seed=9, duplicates=False)  # no cluster structure: slow convergence
    init = X[:12]
    res = km(X, 12, init=init, max_iter=max_iter, tol=0.0)
    ref = lloyd_ref(X, init, max_iter, 0.0)
    assert res.n_iter <= max_iter
    assert ref["n_iter"] == max_iter
    assert not ref["converged"]
    assert_matches_lloyd(res, ref)


def test_tol_stops_early():
    X = gaussian(1000, 2, seed=9, duplicates=False)
    init = X[:12]
    exact = km(X, 12, init=init, tol=0.0)
    loose = km(X, 12, init=init, tol=1e-2)
    ref = lloyd_ref(X, init, 300, 1e-2)
    assert loose.n_iter < exact.n_iter
    assert_matches_lloyd(loose, ref)
    assert_matches_lloyd(exact, lloyd_ref(X, init, 300, 0.0))


def test_tol_zero_stops_at_an_init_that_is_a_fixed_point():
    """Centres already at their clusters' means: the first iteration shifts them by exactly 0,
    which is <= tol · mean(var) = 0, so Lloyd stops after one iteration."""
    X = np.array([[0.0], [1.0], [10.0], [11.0]])
    res = km(X, 2, init=np.array([[0.5], [10.5]]), tol=0.0)
    assert (res.n_iter, res.converged) == (1, True)
    assert_matches_lloyd(res, lloyd_ref(X, np.array([[0.5], [10.5]]), 300, 0.0))


def test_default_max_iter_is_300_lloyd_iterations():
    """1-D evenly spaced rows with all 20 centres started in the first fifth: the boundaries
    creep right for 201 iterations, past 100 and within the documented default of 300 (the
    same run as max_iter=300; evenly spaced rows tie, so no float64 reference here)."""
    X = np.linspace(0, 1, 500)[:, None]
    init = np.sort(np.random.default_rng(2).uniform(0, 0.2, size=(20, 1)), 0)
    res = km(X, 20, init=init, tol=0.0)
    assert res.converged
    assert 100 < res.n_iter <= 300
    explicit = km(X, 20, init=init, tol=0.0, max_iter=300)
    assert (explicit.n_iter, explicit.converged) == (res.n_iter, True)
    assert_array_equal(to_numpy(res.labels), to_numpy(explicit.labels))


def test_tol_is_scaled_by_the_population_variance():
    """tol · mean(np.var(X, axis=0)) (ddof 0, scikit-learn's rule): X = [0, 1, 2, 10], init
    [0, 1] shifts the centres by s1 = (13/3 - 1)² in the first iteration; tol puts the
    threshold at 0.9 s1 (1.2 s1 with the sample variance), so Lloyd goes on to iteration 3."""
    X = np.array([[0.0], [1.0], [2.0], [10.0]])
    init = np.array([[0.0], [1.0]])
    s1 = (13 / 3 - 1) ** 2
    tol = 0.9 * s1 / float(np.mean(np.var(X, axis=0)))
    res = km(X, 2, init=init, tol=tol)
    assert res.n_iter == 3
    assert_matches_lloyd(res, lloyd_ref(X, init, 300, tol))


# ---------------------------------------------------------------------------------------------
# mini-batch


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_minibatch_on_blobs(backend):
    X = blobs(3000, 5, 6, seed=10)
    Xb, init = to_backend(X, backend), to_backend(X[:6], backend)  # one row per blob
    full = km(Xb, 6, init=init)
    mb = km(Xb, 6, init=init, minibatch=256, seed=0, max_iter=10)
    again = km(Xb, 6, init=init, minibatch=256, seed=0, max_iter=10)
    labels, centres = to_numpy(mb.labels), upcast(mb.centres)
    assert backend_of(mb.labels) == backend
    assert dtype_of(mb.labels) == "int64"
    assert labels.shape == (3000,)
    assert ((labels >= 0) & (labels < 6)).all()
    assert mb.n_iter <= 10
    # final labels and inertia are for the final centres on the full X
    ref_labels, d2 = assign_ref(X, centres)
    assert_array_equal(labels, ref_labels)
    assert_allclose(mb.inertia, d2.sum(), rtol=1e-9)
    assert mb.inertia <= 1.2 * full.inertia, (mb.inertia, full.inertia)
    # seeded
    assert_array_equal(to_numpy(again.labels), labels)
    assert_array_equal(upcast(again.centres), centres)


def test_minibatch_float32_valid():
    X = blobs(2000, 4, 5, seed=11).astype(np.float32)
    res = km(X, 5, seed=1, minibatch=100, max_iter=5)
    assert res.centres.dtype == np.float32
    labels = to_numpy(res.labels)
    assert ((labels >= 0) & (labels < 5)).all()
    _, d2 = assign_ref(X, res.centres)
    assert_allclose(res.inertia, d2.sum(), rtol=1e-4)


def test_minibatch_centres_that_no_row_reaches_move_to_far_rows():
    """Two starting centres on one spot (duplicate rows, init="random"), or a centre no row is
    nearest to, stayed put for the whole mini-batch fit: a cluster ended empty in 6 of 20 seeds
    (16 distinct rows, k = 8) with an inertia far above Lloyd's, reported as converged. Now such
    a centre takes a far row after an epoch that no row reached it in, as Lloyd's empty clusters
    do."""
    for zeros in (4, 5):  # 9 rows: a last batch of one row, on its centre (no far row there)
        X = np.array([[0.0]] * zeros + [[10.0]] * 2 + [[20.0], [21.0]])
        for seed in range(6):
            init = np.array([[0.0], [0.0], [10.0]])
            res = fastal.kmeans(X, 3, init=init, minibatch=4, seed=seed)
            assert (np.bincount(res.labels, minlength=3) > 0).all()
    # a centre reached during the last epoch can still end with no row (as in scikit-learn's
    # MiniBatchKMeans between its reassignments): 1 seed of 20 here
    rng = np.random.default_rng(1)
    Y = (rng.normal(size=(16, 2)) * 5)[rng.integers(0, 16, 400)]
    ended_empty = 0
    for seed in range(20):
        res = fastal.kmeans(Y, 8, init="random", minibatch=32, seed=seed)
        ended_empty += bool((np.bincount(res.labels, minlength=8) == 0).any())
        _, d2 = assign_ref(Y, res.centres)
        assert_allclose(res.inertia, d2.sum(), rtol=1e-12)
    assert ended_empty <= 2


def test_minibatch_with_more_centres_than_distinct_rows_stops():
    """Every row sits on a centre and the spare ones have nowhere better to go: no endless moves."""
    X = np.repeat(np.array([[0.0], [5.0], [9.0]]), 10, axis=0)
    res = fastal.kmeans(X, 5, init="random", minibatch=8, seed=0, max_iter=50)
    assert res.inertia == 0.0
    assert res.converged
    assert res.n_iter < 50


# ---------------------------------------------------------------------------------------------
# kmeans: bad input


def test_kmeans_bad_input():
    X = gaussian(10, 3, seed=0)
    for k in (11, 0, -1):
        with pytest.raises(ValueError, match="k"):
            fastal.kmeans(X, k)
    for init in (X[:3], X[:2, :2], X[0]):  # k = 2: (3, 3), (2, 2), (3,)
        with pytest.raises(ValueError, match="init"):
            fastal.kmeans(X, 2, init=init)
    with pytest.raises(ValueError, match="init"):
        fastal.kmeans(X, 2, init="kmeans++")
    bad = X.copy()
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="X"):
        fastal.kmeans(bad, 2)
    bad_init = X[:2].copy()
    bad_init[0, 0] = np.nan
    with pytest.raises(ValueError, match="init"):
        fastal.kmeans(X, 2, init=bad_init)


def test_kmeans_rejects_gradient_embedding():
    emb = fastal.GradientEmbedding(np.ones((5, 2)), np.ones((5, 3)))
    with pytest.raises((TypeError, ValueError), match="X"):
        fastal.kmeans(emb, 2)


# ---------------------------------------------------------------------------------------------
# overflow (audit §5): finite rows whose squared distances overflow the accumulation dtype raise
# instead of returning NaN / inf inertia or D² draws on infinite weights

HUGE = {"float32": 1e20, "float64": 1e160}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kmeans_pp_refuses_overflowing_distances(dtype):
    X = (gaussian(100, 2, seed=0) * HUGE[dtype]).astype(dtype)
    for kw in ({}, {"labeled": [0]}, {"first": "norm"}):
        with pytest.raises(ValueError, match=f"distances between rows of X overflow {dtype}"):
            fastal.kmeans_pp(X, 3, seed=0, **kw)
    # one pick and no labeled row draws nothing, but the first pass sees the overflow all the same
    with pytest.raises(ValueError, match="overflow"):
        fastal.kmeans_pp(X, 1, seed=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "kw",
    [
        {"k": 3},
        {"k": 40},
        {"k": 3, "init": "random"},
        {"k": 40, "init": "random"},
        {"k": 3, "init": "random", "minibatch": 10},
    ],
)
def test_kmeans_refuses_overflowing_distances(dtype, kw):
    X = (gaussian(100, 2, seed=0) * HUGE[dtype]).astype(dtype)
    with pytest.raises(ValueError, match=f"distances between rows of X overflow {dtype}"):
        fastal.kmeans(X, seed=0, **kw)


def test_kmeans_pp_names_a_weight_total_past_float64():
    """Every squared distance is finite (kcenter_greedy takes this pool) but their float64 total
    is not: the message said the distances overflowed."""
    X = gaussian(60, 4, seed=0) * 1e153
    assert len(fastal.kcenter_greedy(X, 4, seed=0)) == 4
    with pytest.raises(
        ValueError,
        match=r"^the k-means\+\+ weights of X \(squared distances to "
        r"the nearest centre, up to \d\.\d\de\+307\) sum past float64's range",
    ):
        fastal.kmeans_pp(X, 4, seed=0)


def test_kmeans_tol_must_be_finite_and_a_huge_tol_converges_at_once():
    """tol = inf was taken and then reported as 'distances between rows of X overflow'; a finite
    tol whose product with the variance overflows now stops after the first step."""
    X = gaussian(60, 4, seed=0).astype(np.float32)
    for tol in (np.inf, np.nan, -1.0):
        with pytest.raises(ValueError, match=r"^tol must be a finite non-negative number, got"):
            fastal.kmeans(X, 3, seed=0, tol=tol)
    res = fastal.kmeans(X * np.float32(1e10), 3, seed=0, tol=1e300)
    assert res.n_iter == 1


def test_kmeans_pp_refuses_overflowing_gradient_embedding():
    """Factored distances s_i + s_j - 2 (A_i.A_j)(H_i.H_j) are clamped at 0: an overflow
    (inf - inf) would read as distance 0, so the factor norms are bounded up front."""
    rng = np.random.default_rng(0)
    A = (rng.normal(size=(50, 3)) * 1e-15).astype(np.float32)
    H = (rng.normal(size=(50, 4)) * 1e24).astype(np.float32)  # |H|² overflows, |g|² does not
    emb = fastal.GradientEmbedding(A, H)
    with pytest.raises(ValueError, match="distances between rows of X overflow float32"):
        fastal.kmeans_pp(emb, 3, seed=0)
    with pytest.raises(ValueError, match="overflow float32"):
        fastal.kcenter_greedy(emb, 3, labeled=[0])
    # float64 factors hold the same values without overflow
    picks = fastal.kmeans_pp(fastal.GradientEmbedding(A.astype(float), H.astype(float)), 3, seed=0)
    assert len(set(picks.tolist())) == 3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_but_representable_distances_still_work(dtype):
    """Rows up to ~2e18 apart (float32: squared distances up to ~4e36 < 3.4e38) are no overflow."""
    scale = 1e17 if dtype == "float32" else 1e150
    X = mixture(200, 3, 4, seed=1) * scale
    Xs = X.astype(dtype)
    picks = fastal.kmeans_pp(Xs, 4, seed=0)
    assert_array_equal(picks, fastal.kmeans_pp(X / scale, 4, seed=0))
    res = fastal.kmeans(Xs, 4, seed=0)
    ref = fastal.kmeans(X / scale, 4, seed=0)
    assert np.isfinite(res.inertia)
    assert_allclose(res.inertia / scale**2, ref.inertia, rtol=1e-4)


def test_gemm_assignment_tiles_follow_k(monkeypatch):
    """The GEMM assignment's tile holds about _TILE_ELEMENTS distances whatever k: 64-row tiles
    give the labels and distances of 8192-row ones."""
    import torch

    from fastal import _lloyd

    rng = np.random.default_rng(3)
    X = torch.from_numpy(rng.normal(size=(1000, 8)))
    C = torch.from_numpy(rng.normal(size=(40, 8)))
    info = fastal._interop.describe(X, "X")
    want = _lloyd._assign(X, C, info)
    monkeypatch.setattr(_lloyd, "_TILE_ELEMENTS", 1)  # 64 rows, the floor
    got = _lloyd._assign(X, C, info)
    assert_array_equal(got[0].numpy(), want[0].numpy())
    assert_array_equal(got[1].numpy(), want[1].numpy())


def test_kmeans_small_arguments_given_as_arrays_and_numpy_scalars():
    """k = 0 as a 0-d array or tensor reached the kernel (an error about 'centres'); a numpy
    integer tol was refused; a finite float64 init past float32's range was called NaN or Inf."""
    X = gaussian(20, 3, seed=0).astype(np.float32)
    for k in (np.array(0), torch.tensor(0)):
        with pytest.raises(ValueError, match=r"^k must be >= 1, got 0$"):
            fastal.kmeans(X, k)
    res = fastal.kmeans(X, 2, tol=np.int64(0), seed=0)
    assert res.converged
    with pytest.raises(ValueError, match=r"^init overflows float32, the accumulation dtype of a "
                       r"float32 pool$"):  # fmt: skip
        fastal.kmeans(X, 2, init=np.full((2, 3), 1e300))
    with pytest.raises(ValueError, match=r"^init contains NaN or Inf$"):
        fastal.kmeans(X, 2, init=np.full((2, 3), np.inf))


def test_kmeans_sampling_budget_zero_keeps_the_diagnostics_keys():
    """A loop logging diagnostics["n_iter"] broke at budget 0 only."""
    X = gaussian(20, 3, seed=0).astype(np.float32)
    sel = fastal.strategies.KMeansSampling().select(X, 0)
    assert sel.indices.shape == (0,)
    assert sel.diagnostics == {"inertia": 0.0, "n_iter": 0, "converged": True,
                               "distance_share": None}  # fmt: skip
    assert set(sel.diagnostics) == set(fastal.strategies.KMeansSampling().select(X, 2).diagnostics)
