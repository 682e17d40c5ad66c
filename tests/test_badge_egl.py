"""The BADGE, EGL and KMeansSampling strategies against the float64 references, their invariants,
the pool forms they accept, and scikit-activeml's BADGE where the two definitions coincide.

Exact agreement is demanded on float64 pools: BADGE is k-means++ with the documented random stream
(:func:`reference.badge_ref`), EGL a sort with a documented tie rule (:func:`reference.egl_ref`),
k-means sampling Lloyd from a k-means++ start (:func:`reference.kmeans_sampling_ref`).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    CPU_BACKENDS,
    assert_indices_like,
    backend_of,
    copies_pool,
    gaussian,
    indices_to_backend,
    labeled_subset,
    to_backend,
    to_numpy,
    upcast,
)
from numpy.testing import assert_allclose, assert_array_equal
from reference import (
    badge_ref,
    egl_ref,
    gradient_embedding_ref,
    kcenter_greedy_ref,
    kmeans_pp_ref,
    kmeans_sampling_ref,
    softmax_ref,
    sqdist_to_row,
    top_scores_ref,
    unlabeled_rows,
)

import fastal
from fastal import strategies


def outputs(n: int, C: int, d: int, seed: int):
    """(logits, probs, features) float64, generic (no ties)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, C)) * 2.0
    return logits, softmax_ref(logits), rng.normal(size=(n, d))


def make_pool(kind: str, backend: str, n=300, C=5, d=8, seed=0, dtype="float64"):
    logits, probs, feats = outputs(n, C, d, seed)
    z = probs if kind == "probs" else logits
    pool = {kind: to_backend(z, backend, dtype), "features": to_backend(feats, backend, dtype)}
    return pool, upcast(pool[kind]), upcast(pool["features"])


def assert_valid_selection(sel, like, n: int, budget: int, labeled) -> np.ndarray:
    assert isinstance(sel, strategies.Selection)
    assert_indices_like(sel.indices, like, budget)
    idx = to_numpy(sel.indices)
    assert ((idx >= 0) & (idx < n)).all()
    assert np.unique(idx).size == budget, "indices are not distinct"
    if labeled is not None:
        assert not np.isin(idx, labeled).any(), "a labeled row was selected"
    return idx


def test_registry():
    for name in ("badge", "egl", "kmeans"):
        cls = strategies.get(name)
        assert issubclass(cls, strategies.Strategy)
        assert cls.name == name
        assert name in strategies.available()


BADGE = strategies.get("badge") if "badge" in strategies.available() else None
EGL = strategies.get("egl") if "egl" in strategies.available() else None
KMEANS = strategies.get("kmeans") if "kmeans" in strategies.available() else None


# ---------------------------------------------------------------------------------------------
# BADGE


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("n_labeled", [0, 10])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kind", ["probs", "logits"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_badge_matches_reference(backend, kind, bias, n_labeled, seed):
    n, budget = 300, 30
    pool, z, feats = make_pool(kind, backend, n=n)
    labeled = labeled_subset(n, n_labeled, seed=seed)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    sel = BADGE(bias=bias).select(pool, budget, lab, seed=seed)
    idx = assert_valid_selection(sel, pool["features"], n, budget, labeled)
    expected = badge_ref(z, feats, budget, labeled, seed, bias=bias, logits=kind == "logits")
    assert_array_equal(idx, expected)


@pytest.mark.parametrize("n_labeled", [0, 10])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_badge_on_gradient_embedding_pool(backend, n_labeled):
    n, budget = 300, 25
    pool, z, feats = make_pool("probs", backend, n=n, seed=1)
    emb = fastal.gradient_embedding(pool["probs"], pool["features"])
    labeled = labeled_subset(n, n_labeled, seed=1)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    sel = BADGE().select(emb, budget, lab, seed=4)
    idx = assert_valid_selection(sel, pool["features"], n, budget, labeled)
    assert_array_equal(idx, badge_ref(z, feats, budget, labeled, 4))
    assert_array_equal(idx, to_numpy(BADGE().select(pool, budget, lab, seed=4).indices))


def test_badge_first_pick_is_the_largest_gradient_norm():
    n = 200
    _, probs, feats = outputs(n, 4, 6, seed=2)
    labeled = labeled_subset(n, 15, seed=2)
    _, _, dense = gradient_embedding_ref(probs, feats)
    rows = unlabeled_rows(n, labeled)
    best = rows[np.argmax(np.sum(dense[rows] ** 2, axis=1))]
    for seed in range(5):
        sel = BADGE().select({"probs": probs, "features": feats}, 5, labeled, seed=seed)
        idx = to_numpy(sel.indices)
        assert idx[0] == best


def test_badge_budget_edges():
    n = 40
    _, probs, feats = outputs(n, 3, 4, seed=3)
    pool = {"probs": probs, "features": feats}
    labeled = np.array([1, 5, 30])
    assert to_numpy(BADGE().select(pool, 0, labeled, seed=0).indices).shape == (0,)
    sel = BADGE().select(pool, n - 3, labeled, seed=0)
    idx = assert_valid_selection(sel, feats, n, n - 3, labeled)
    assert_array_equal(np.sort(idx), unlabeled_rows(n, labeled))
    assert_array_equal(idx, badge_ref(probs, feats, n - 3, labeled, 0))
    with pytest.raises(ValueError, match="budget"):
        BADGE().select(pool, n - 2, labeled, seed=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_badge_float32_pool(backend):
    """float32: rounding of the distances may change a draw that lands within rounding of a
    cumulative boundary; until such a step the picks equal the reference's."""
    n, budget = 300, 30
    pool, _, _ = make_pool("logits", backend, n=n, seed=5, dtype="float32")
    labeled = labeled_subset(n, 7, seed=5)
    lab = indices_to_backend(labeled, backend)
    idx = assert_valid_selection(
        BADGE().select(pool, budget, lab, seed=1), pool["features"], n, budget, labeled
    )
    rows = unlabeled_rows(n, labeled)
    emb = fastal.gradient_embedding(pool["logits"], pool["features"]).subset(
        indices_to_backend(rows, backend)
    )
    A, H = upcast(emb.A), upcast(emb.H)
    dense = (A[:, :, None] * H[:, None, :]).reshape(rows.size, -1)  # the stored factors, exactly
    expected, margins = kmeans_pp_ref(dense, budget, 1, "norm", margins=True)
    expected = rows[expected]
    diff = np.flatnonzero(idx != expected)
    if diff.size:
        t = int(diff[0])
        assert margins[t] <= 1e-4, f"step {t}: {idx[t]} vs {expected[t]}, margin {margins[t]}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_badge_never_picks_a_copy_of_a_chosen_row(dtype):
    """The factored distance |g_i|^2 + |g_c|^2 - 2 (a_i.a_c)(h_i.h_c) left an exact copy of a chosen
    row at rounding noise (~1e-7 |g|^2 in float32) instead of 0: next to rows of tiny gradient,
    copies of one uncertain row filled the batch (9 of 10 picks)."""
    rng = np.random.default_rng(0)
    C, d, copies, others = 10, 64, 500, 300
    logits = rng.normal(size=(others, C))
    logits[:, 0] += 16  # confident rows: gradients of norm ~1e-4
    probs = np.vstack([np.repeat(rng.dirichlet(np.ones(C))[None], copies, 0),
                       np.exp(logits) / np.exp(logits).sum(1, keepdims=True)])  # fmt: skip
    feats = np.vstack([np.repeat(30 * rng.normal(size=(1, d)), copies, 0),
                       rng.normal(size=(others, d))])  # fmt: skip
    emb = fastal.gradient_embedding(probs.astype(dtype), feats.astype(dtype))
    dist, _ = fastal.min_distance(emb, emb.subset([0]))
    assert not np.asarray(dist)[:copies].any()
    pool = {"probs": probs.astype(dtype), "features": feats.astype(dtype)}
    for seed in range(10):
        picks = to_numpy(BADGE().select(pool, 10, seed=seed).indices)
        assert (picks < copies).sum() == 1


@pytest.mark.parametrize("strategy", [BADGE, strategies.CoreSetGradients])
def test_bias_flag_with_a_ready_embedding_is_refused(strategy):
    """BADGE(bias=True) on a GradientEmbedding ignored the flag and reported bias: True; so did
    CoreSetGradients, silently."""
    _, probs, feats = outputs(20, 3, 4, seed=3)
    emb = fastal.gradient_embedding(probs, feats)
    with pytest.raises(ValueError, match="GradientEmbedding pool is used as given"):
        strategy(bias=True).select(emb, 3, seed=0)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n_labeled", [7, 8, 12])
def test_copies_of_many_labeled_rows_are_at_zero(n_labeled, bias):
    """From 8 centres on the distances run in AVX-512 register blocks, which kept the factored
    expansion's rounding noise for exact copies (no near-copy recompute): k-center picked 3-6
    copies of labeled rows in 30 picks, k-means++ drew them, CoreSet(gradients) picked them."""
    copies = 40
    probs, feats, n_big = copies_pool(10, 64, n_labeled, copies, seed=3)
    labeled = np.arange(0, n_big, copies + 1)
    emb = fastal.gradient_embedding(probs, feats, bias=bias)
    dist, _ = fastal.min_distance(emb, emb.subset(labeled))
    assert not np.asarray(dist)[:n_big].any()
    is_copy = lambda picks: (np.asarray(to_numpy(picks)) < n_big).sum()  # noqa: E731
    assert is_copy(fastal.kcenter(emb, 30, labeled=labeled).indices) == 0
    assert is_copy(fastal.kmeans_pp(emb, 100, labeled=labeled, seed=1)) == 0
    pool = {"probs": probs, "features": feats}
    assert is_copy(strategies.CoreSetGradients(bias=bias).select(pool, 30, labeled).indices) == 0


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("prune", [True, False])
def test_copies_of_picked_rows_are_not_picked(prune, bias):
    """Within one selection too: once a row is a centre its copies are at 0 (the streaming
    distances of the k-center step and of k-means++), so no two picks are copies."""
    copies, distinct = 30, 12
    probs, feats, n_big = copies_pool(10, 64, distinct, copies, seed=4)
    emb = fastal.gradient_embedding(probs, feats, bias=bias)
    source = lambda picks: picks[picks < n_big] // (copies + 1)  # noqa: E731
    picks = np.asarray(to_numpy(fastal.kcenter(emb, 40, seed=0, prune=prune).indices))
    assert_array_equal(np.sort(source(picks)), np.arange(distinct))
    drawn = source(np.asarray(to_numpy(fastal.kmeans_pp(emb, 200, seed=2))))
    assert np.unique(drawn).size == drawn.size, drawn


@pytest.mark.parametrize("n_labeled", [0, 7])
def test_badge_unpruned_reads_every_non_centre_row(n_labeled):
    pool = make_pool("probs", "numpy", n=120, C=4, d=6, seed=1)[0]
    labeled = np.arange(n_labeled)
    sel = strategies.BADGE(prune=False).select(pool, 6, labeled=labeled, seed=0)
    rest = 120 - n_labeled
    dg = sel.diagnostics
    assert dg["n_candidates"] == rest
    assert dg["pruned"] is False
    assert dg["rows_read"] == sum(rest - t for t in range(1, 7))
    assert dg["rows_read_fraction"] == 1.0


# ---------------------------------------------------------------------------------------------
# EGL


@pytest.mark.parametrize("bias", [False, True])
def test_egl_expected_length_matches_dense_gradients(bias):
    """squared=False: Settles et al.'s E_y ||grad||, against the dense gradients in float64."""
    rng = np.random.default_rng(4)
    n, C, d = 60, 4, 6
    probs, feats = rng.dirichlet(np.ones(C) / 2, size=n), rng.normal(size=(n, d))
    probs[0] = [1 - 3e-9, 1e-9, 1e-9, 1e-9]  # confident: its score must not cancel to 0
    h = np.hstack([feats, np.ones((n, 1))]) if bias else feats
    eye = np.eye(C)
    dense = np.array([sum(probs[i, y] * np.linalg.norm(np.outer(probs[i] - eye[y], h[i]))
                          for y in range(C)) for i in range(n)])  # fmt: skip
    sel = strategies.EGL(bias=bias, squared=False).select({"probs": probs, "features": feats}, 5)
    scores = np.asarray(sel.diagnostics["scores"])
    assert_allclose(scores[1:], dense[1:], rtol=1e-12)
    assert_allclose(scores[0], dense[0], rtol=1e-7)  # the reference's 1 - p_top rounds to 1e-8
    assert_array_equal(to_numpy(sel.indices), np.argsort(-dense, kind="stable")[:5])


def test_egl_hand_worked():
    # p = (0.5, 0.5), |h|^2 = 2: sum_y p_y |p - e_y|^2 = 0.5 * 0.5 + 0.5 * 0.5 = 0.5 -> 1.0
    # p = (1, 0), |h|^2 = 9: 0 -> 0.0 (a certain prediction has no expected gradient)
    # p = (0.75, 0.25), |h|^2 = 4: 0.75 * 0.125 + 0.25 * 1.125 = 0.375 -> 1.5
    # with bias |h|^2 + 1: 1.5, 0, 1.875
    probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.75, 0.25]])
    feats = np.array([[1.0, 1.0], [3.0, 0.0], [0.0, 2.0]])
    assert_allclose(egl_ref(probs, feats), [1.0, 0.0, 1.5], rtol=1e-15)
    sel = EGL().select({"probs": probs, "features": feats}, 3)
    assert_array_equal(sel.indices, [2, 0, 1])
    assert_allclose(to_numpy(sel.diagnostics["scores"]), [1.0, 0.0, 1.5], rtol=1e-15)
    sel = EGL(bias=True).select({"probs": probs, "features": feats}, 2, [2])
    assert_array_equal(sel.indices, [0, 1])
    assert_allclose(to_numpy(sel.diagnostics["scores"]), [1.5, 0.0, 1.875], rtol=1e-15)


def test_egl_ties_go_to_the_lowest_index():
    # dyadic values: every score is exact in float32 too, so equal rows tie exactly
    p = np.array([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5], [1.0, 0.0, 0.0]])
    h = np.array([[1.0, 1.0], [2.0, 0.0], [1.0, 0.0]])
    order = np.array([2, 0, 1, 0, 1, 0, 2, 1, 0, 1])
    probs, feats = p[order], h[order]
    scores = egl_ref(probs, feats)
    for dtype in ("float64", "float32"):
        pool = {"probs": probs.astype(dtype), "features": feats.astype(dtype)}
        sel = EGL().select(pool, 6, [3])
        assert_array_equal(to_numpy(sel.indices), top_scores_ref(scores, 6, [3]))
        assert_array_equal(to_numpy(sel.indices), [2, 4, 7, 9, 1, 5])


@pytest.mark.parametrize("n_labeled", [0, 20])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kind", ["probs", "logits"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_egl_matches_reference(backend, kind, bias, n_labeled):
    n, budget = 300, 40
    pool, z, feats = make_pool(kind, backend, n=n, seed=6)
    labeled = labeled_subset(n, n_labeled, seed=6)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    sel = EGL(bias=bias).select(pool, budget, lab, seed=0)
    idx = assert_valid_selection(sel, pool["features"], n, budget, labeled)
    p = softmax_ref(z) if kind == "logits" else z
    scores = egl_ref(p, feats, bias)
    got = upcast(sel.diagnostics["scores"])
    assert got.shape == (n,)
    assert_allclose(got, scores, rtol=1e-12)
    assert_array_equal(idx, top_scores_ref(scores, budget, labeled))
    assert (np.diff(scores[idx]) <= 0).all()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_egl_low_precision(dtype):
    n, budget = 400, 50
    pool, z, feats = make_pool("logits", "torch-cpu", n=n, seed=7, dtype=dtype)
    labeled = labeled_subset(n, 9, seed=7)
    sel = EGL().select(pool, budget, labeled)
    idx = assert_valid_selection(sel, pool["features"], n, budget, labeled)
    got = upcast(sel.diagnostics["scores"])
    assert_allclose(got, egl_ref(softmax_ref(z), feats), rtol=1e-5, atol=1e-6)
    # the selection is the top of the scores it reports, ties to the lowest index
    assert_array_equal(idx, top_scores_ref(got, budget, labeled))


# ---------------------------------------------------------------------------------------------
# KMeansSampling


@pytest.mark.parametrize("seed", [0, 2])
@pytest.mark.parametrize("n_labeled", [0, 12])
@pytest.mark.parametrize("form", ["array", "mapping"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_kmeans_sampling_matches_reference(backend, form, n_labeled, seed):
    n, budget = 400, 12
    X = gaussian(n, 5, seed=8)
    Xb = to_backend(X, backend)
    pool = Xb if form == "array" else {"features": Xb}
    labeled = labeled_subset(n, n_labeled, seed=seed)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    sel = KMEANS().select(pool, budget, lab, seed=seed)
    idx = assert_valid_selection(sel, Xb, n, budget, labeled)
    assert_array_equal(idx, kmeans_sampling_ref(X, budget, labeled, seed, max_iter=100))


#: one Lloyd iteration from seed 2256 leaves cluster 6 of 8 empty
EMPTY_CLUSTER_X = np.array([0.26, 4.54, -0.15, -0.71, 0.53, 0.29, -1.45, -0.05, 1.77, 0.23, 1.21])
EMPTY_CLUSTER_X = EMPTY_CLUSTER_X[:, None]


def test_an_empty_cluster_takes_the_farthest_unchosen_row():
    """k-means with the same seed and max_iter: each non-empty cluster gives its row nearest the
    centre (ties lowest row); an empty cluster takes the row farthest from its own centre among
    those not yet chosen (ties lowest row), in cluster order."""
    k, seed = 8, 2256
    sel = KMEANS(max_iter=1).select(EMPTY_CLUSTER_X, k, seed=seed)
    res = fastal.kmeans(EMPTY_CLUSTER_X, k, seed=seed, max_iter=1)
    labels, centres = np.asarray(res.labels), np.asarray(res.centres, dtype=np.float64)
    dist2 = ((EMPTY_CLUSTER_X - centres[labels]) ** 2).sum(1)
    want = np.full(k, -1)
    for c in range(k):
        rows = np.flatnonzero(labels == c)
        if rows.size:
            want[c] = rows[np.lexsort((rows, dist2[rows]))[0]]
    empty = np.flatnonzero(want < 0)
    assert empty.size  # the case this test is about
    for c in empty:
        free = np.setdiff1d(np.arange(EMPTY_CLUSTER_X.shape[0]), want[want >= 0])
        want[c] = free[np.lexsort((free, -dist2[free]))[0]]
    assert_array_equal(sel.indices, want)


def test_kmeans_sampling_picks_a_member_nearest_each_centre():
    n, budget = 500, 8
    X = gaussian(n, 3, seed=9, duplicates=False)
    labeled = labeled_subset(n, 30, seed=9)
    for max_iter in (1, 3, 100):
        idx = to_numpy(KMEANS(max_iter=max_iter).select(X, budget, labeled, seed=1).indices)
        assert_array_equal(idx, kmeans_sampling_ref(X, budget, labeled, 1, max_iter=max_iter))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kmeans_sampling_minibatch_valid(dtype):
    n, budget = 2000, 10
    X = gaussian(n, 4, seed=10).astype(dtype)
    labeled = labeled_subset(n, 50, seed=10)
    sel = KMEANS(minibatch=128).select(X, budget, labeled, seed=3)
    assert_valid_selection(sel, X, n, budget, labeled)
    again = KMEANS(minibatch=128).select(X, budget, labeled, seed=3)
    assert_array_equal(sel.indices, again.indices)


def test_kmeans_sampling_budget_equal_to_the_unlabeled_pool():
    X = gaussian(30, 2, seed=11, duplicates=False)
    labeled = np.array([0, 29])
    sel = KMEANS().select(X, 28, labeled, seed=0)
    idx = assert_valid_selection(sel, X, 30, 28, labeled)
    assert_array_equal(np.sort(idx), np.arange(1, 29))


# ---------------------------------------------------------------------------------------------
# CoreSet over gradient embeddings


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_coreset_accepts_gradient_embedding_and_mapping(backend):
    n, budget = 300, 20
    pool, z, feats = make_pool("probs", backend, n=n, seed=12)
    emb = fastal.gradient_embedding(pool["probs"], pool["features"])
    labeled = labeled_subset(n, 5, seed=12)
    lab = indices_to_backend(labeled, backend)
    CoreSet = strategies.get("coreset")
    sel = CoreSet().select(emb, budget, lab, seed=2)
    assert backend_of(sel.indices) == backend
    _, _, dense = gradient_embedding_ref(z, feats)
    assert_array_equal(to_numpy(sel.indices), kcenter_greedy_ref(dense, budget, labeled)[0])
    on_mapping = CoreSet().select({"features": pool["features"]}, budget, lab, seed=2)
    assert_array_equal(to_numpy(on_mapping.indices), kcenter_greedy_ref(feats, budget, labeled)[0])


# ---------------------------------------------------------------------------------------------
# scikit-activeml's BADGE


def _skactiveml_badge():
    """``skactiveml.pool.Badge`` and a classifier that returns fixed outputs: column 0 of ``X`` is
    the row index into ``probs`` / ``features``."""
    pool_mod = pytest.importorskip("skactiveml.pool")
    base = pytest.importorskip("skactiveml.base")
    threadpoolctl = pytest.importorskip("threadpoolctl")

    class Fixed(base.SkactivemlClassifier):
        def __init__(self, probs=None, features=None, classes=None, missing_label=np.nan):
            super().__init__(classes=classes, missing_label=missing_label)
            self.probs = probs
            self.features = features

        def fit(self, X, y, sample_weight=None):
            return self

        def predict_proba(self, X, return_embeddings=False):
            rows = np.asarray(X)[:, 0].astype(np.int64)
            p = self.probs[rows]
            return (p, self.features[rows]) if return_embeddings else p

    def query(probs, feats, labeled, batch_size, seed, utilities=False):
        n = probs.shape[0]
        X = np.column_stack([np.arange(n, dtype=np.float64), feats])
        y = np.full(n, np.nan)
        y[labeled] = 0
        clf = Fixed(probs, feats, classes=np.arange(probs.shape[1]))
        peer = pool_mod.Badge(clf_embedding_flag_name="return_embeddings", random_state=seed)
        # scikit-learn's pairwise reductions start an OpenMP pool per call: 1 thread is ~15x faster
        with threadpoolctl.threadpool_limits(1):
            out = peer.query(
                X, y, clf, fit_clf=False, batch_size=batch_size, return_utilities=utilities
            )
        if utilities:
            return np.asarray(out[0], dtype=np.int64), out[1]
        return np.asarray(out, dtype=np.int64)

    return query


def _d2_law(dense, rows, centres, origin: bool = False) -> np.ndarray:
    """D^2 law over ``rows``: squared distance to the nearest centre (pool indices), plus the
    origin as one more centre with ``origin=True``; float64, direct form, normalised."""
    w = np.sum(dense[rows] ** 2, axis=1) if origin else np.full(rows.size, np.inf)
    for c in centres:
        w = np.minimum(w, sqdist_to_row(dense[rows], dense[c]))
    return w / w.sum()


def _assert_utilities(util, rows, picks, labeled, law) -> None:
    """skactiveml utilities: nan at the labeled rows and the earlier picks, ``law`` elsewhere."""
    picked = np.isin(rows, picks)
    assert np.isnan(util[labeled]).all()
    assert np.isnan(util[rows[picked]]).all()
    assert_allclose(util[rows[~picked]], law[~picked], rtol=1e-7, atol=1e-12)


def test_skactiveml_badge_definitions():
    """Where fastal's BADGE and scikit-activeml's ``Badge`` (1.0.x) coincide, and where they differ.

    Same: both embed the unlabeled rows only, as ``(p - onehot(argmax p)) ⊗ h`` (skactiveml:
    ``probas - eye[y_pred]`` times the returned embeddings, flattened class-major like fastal; no
    bias term, so fastal runs with ``bias=False``); labeled rows are never candidates, and never
    centres; the first pick is ``argmax |g|^2`` (``np.argmax``: ties to the lowest index); later
    picks are drawn with probability ``D^2 / sum D^2``, and both fall back to a uniform draw over
    the unpicked rows when every D^2 is 0 (fastal's floor(u r) rule has that law).

    Different: (1) skactiveml's D^2 keeps the squared norms of its first step as the running
    minimum (``_d_2(g_x, [c], d_2_s[i - 1])`` with ``d_2_s[0] = |g|^2``), so its D^2 is the
    distance to the nearest of {origin} + picks; fastal (like Ash et al.'s ``init_centers`` and
    the spec) uses the picks only. (2) The random streams differ (``RandomState.choice(p=...)``
    against fastal's cut of ``cumsum(D^2)`` at ``u * total``), so only the first pick can agree
    pick for pick. (3) skactiveml computes D with scikit-learn's expanded form (rounding at
    ~1e-16 of the norms).

    Hence: the first picks are equal for every seed, and skactiveml's reported sampling
    probabilities (``return_utilities``) equal the origin-anchored D^2 law of the reference
    embedding given its own earlier picks (pinning down difference (1)); the law of fastal's later
    picks is the picks-only one (chi-square in ``test_second_pick_follows_d2_law_after_norm_first``
    of test_kmeans.py, and below on a pool where the two laws coincide)."""
    query = _skactiveml_badge()
    n, labeled = 9, np.array([2])
    _, probs, feats = outputs(n, 3, 2, seed=13)
    _, _, dense = gradient_embedding_ref(probs, feats)
    rows = unlabeled_rows(n, labeled)
    pool = {"probs": probs, "features": feats}
    best = rows[np.argmax(np.sum(dense[rows] ** 2, 1))]
    for seed in range(4):
        theirs, util = query(probs, feats, labeled, 3, seed=seed, utilities=True)
        ours = to_numpy(BADGE().select(pool, 3, labeled, seed=seed).indices)
        assert ours[0] == theirs[0] == best
        for i in (1, 2):
            law = _d2_law(dense, rows, theirs[:i], origin=True)
            _assert_utilities(util[i], rows, theirs[:i], labeled, law)


def clustered_outputs(n: int, seed: int):
    """Model outputs whose gradient embeddings sit in a tight cluster far from the origin:
    every |g_i|^2 exceeds every |g_i - g_j|^2, so the origin is never the nearest centre and
    skactiveml's origin-anchored D^2 equals the picks-only D^2."""
    rng = np.random.default_rng(seed)
    base = np.zeros(4)
    base[0] = 1.5
    probs = softmax_ref(base + 0.15 * rng.normal(size=(n, 4)))
    feats = 3.0 + 0.15 * rng.normal(size=(n, 5))
    return probs, feats


@pytest.mark.slow
def test_skactiveml_badge_same_law_where_definitions_coincide():
    """On a pool where the origin is never the nearest centre (asserted), the two BADGEs have
    the same law (see ``test_skactiveml_badge_definitions``): skactiveml's sampling probabilities
    equal the reference's picks-only D^2 law; fastal's second pick over 1500 seeds follows that law
    (chi-square, p > 1e-3); the k-means cost ``sum_i min_c |g_i - g_c|^2`` of a batch of 8 over 40
    seeds each is not separated by a Welch t-test (p > 1e-3) and the means agree within 25%.
    The seeds are fixed, so the test is deterministic."""
    query = _skactiveml_badge()
    stats = pytest.importorskip("scipy.stats")
    n = 40
    probs, feats = clustered_outputs(n, seed=0)
    labeled = np.array([3, 17, 25])
    _, _, dense = gradient_embedding_ref(probs, feats)
    rows = unlabeled_rows(n, labeled)
    g = dense[rows]
    pair = np.max([np.max(sqdist_to_row(g, x)) for x in g])
    assert np.min(np.sum(g**2, axis=1)) > pair, "precondition: the origin is never nearest"
    pool = {"probs": probs, "features": feats}

    theirs, util = query(probs, feats, labeled, 3, seed=0, utilities=True)
    for i in (1, 2):
        _assert_utilities(util[i], rows, theirs[:i], labeled, _d2_law(dense, rows, theirs[:i]))

    counts = np.zeros(n, dtype=np.int64)
    for seed in range(1500):
        picks = to_numpy(BADGE().select(pool, 2, labeled, seed=seed).indices)
        assert picks[0] == theirs[0]
        counts[picks[1]] += 1
    law = _d2_law(dense, rows, theirs[:1])
    keep = law > 0
    assert counts[labeled].sum() == 0
    assert counts[rows[~keep]].sum() == 0
    _, p = stats.chisquare(counts[rows[keep]], law[keep] / law[keep].sum() * counts.sum())
    assert p > 1e-3, counts

    def cost(picks):
        w = np.full(rows.size, np.inf)
        for c in picks:
            w = np.minimum(w, sqdist_to_row(g, dense[c]))
        return float(w.sum())

    ours, peer = [], []
    for seed in range(40):
        a = to_numpy(BADGE().select(pool, 8, labeled, seed=seed).indices)
        b = query(probs, feats, labeled, 8, seed=seed)
        assert a[0] == b[0]
        assert not np.isin(b, labeled).any()
        ours.append(cost(a))
        peer.append(cost(b))
    _, p = stats.ttest_ind(ours, peer, equal_var=False)
    assert p > 1e-3, (np.mean(ours), np.mean(peer))
    assert 0.8 <= np.mean(ours) / np.mean(peer) <= 1.25


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("budget", "labeled"), [(8, None), (12, [0, 6])])
def test_kmeans_sampling_clusters_that_end_empty(budget, labeled, seed):
    """5 distinct rows, each 4 times: k-means++ must repeat rows once D^2 is exhausted, the
    duplicate centres tie (the lowest centre wins every row), so clusters end empty and take the
    unpicked rows farthest from their own centre (here all at distance 0: lowest rows first)."""
    base = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [10.0, 10.0], [-5.0, 2.0]])
    X = base[np.arange(20) % 5]
    sel = KMEANS().select(X, budget, labeled, seed=seed)
    idx = assert_valid_selection(sel, X, 20, budget, labeled)
    assert_array_equal(idx, kmeans_sampling_ref(X, budget, labeled, seed))
    # one row of every distinct value comes first (the non-empty clusters)
    assert np.unique(X[idx[:5]], axis=0).shape[0] == 5


# ---------------------------------------------------------------------------------------------
# low-precision probabilities (audit §4), overflow (§5) and argument checks (§9)


def _softmax_torch(n: int, C: int, dtype: str, seed: int):
    import torch

    z = torch.randn(n, C, generator=torch.Generator().manual_seed(seed)) * 2
    return torch.softmax(z, 1).to(getattr(torch, dtype))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_badge_and_egl_accept_low_precision_probs(dtype):
    """Softmax outputs cast to float16 / bfloat16 sum to 1 only to that dtype's rounding. They
    are accepted: BADGE picks as on the embedding built by hand from the same stored values, EGL
    scores them by the expectation over the row with its top entry read as 1 minus the others."""
    import torch

    n, labeled = 120, [0, 5]
    p = _softmax_torch(n, 4, dtype, seed=1)
    h = torch.randn(n, 6, generator=torch.Generator().manual_seed(2)).to(p.dtype)
    for features in (h, h.float()):
        pool = {"probs": p, "features": features}
        A = p.float()
        A[torch.arange(n), A.argmax(1)] -= 1  # hypothetical labels, as gradient_embedding
        emb = fastal.GradientEmbedding(A.to(features.dtype), features)
        a, b = BADGE().select(pool, 6, labeled, seed=0), BADGE().select(emb, 6, labeled, seed=0)
        assert_array_equal(to_numpy(a.indices), to_numpy(b.indices))
        sel = EGL().select(pool, 6, labeled)
        got = upcast(sel.diagnostics["scores"])
        p64 = upcast(p)
        top = p64.argmax(1)
        p64[np.arange(n), top] = 0
        p64[np.arange(n), top] = 1 - p64.sum(1)
        assert_allclose(got, egl_ref(p64, upcast(features)), rtol=1e-6)  # |h|² summed in float32
        assert_array_equal(to_numpy(sel.indices), top_scores_ref(got, 6, labeled))
    bad = (p.double() * 0.97).to(p.dtype)  # rows summing to ~0.97: wrong in any dtype
    with pytest.raises(ValueError, match="sum to 1"):
        BADGE().select({"probs": bad, "features": h}, 3)
    with pytest.raises(ValueError, match="sum to 1"):
        EGL().select({"probs": bad, "features": h}, 3)


def test_egl_large_float32_features_rank_as_in_float64():
    """|h|² of float32 rows of norm ~1e20 overflows float32; the scores are float64 and exact."""
    rng = np.random.default_rng(0)
    n = 40
    probs = rng.dirichlet(np.ones(3), n)
    feats = rng.normal(size=(n, 4)) * 10.0 ** rng.uniform(17, 21, size=(n, 1))
    pool = {"probs": probs.astype(np.float32), "features": feats.astype(np.float32)}
    sel = EGL().select(pool, 10, [1])
    ref = egl_ref(upcast(pool["probs"]), upcast(pool["features"]))
    got = upcast(sel.diagnostics["scores"])
    assert np.isfinite(got).all()
    assert_allclose(got, ref, rtol=1e-5)
    assert_array_equal(to_numpy(sel.indices), top_scores_ref(got, 10, [1]))
    assert_array_equal(to_numpy(sel.indices), top_scores_ref(ref, 10, [1]))
    with pytest.raises(ValueError, match=r"features .*overflows float64"):
        EGL().select({"probs": probs, "features": feats * 1e140}, 2)


def test_egl_refuses_float64_features_whose_squares_underflow():
    """float64 rows near 1e-165 have |h|² = 0: every score 0 and the lowest indices taken. Exactly
    zero rows are fine, and with the bias column the score is 1 · spread whatever h is."""
    rng = np.random.default_rng(0)
    probs, feats = rng.dirichlet(np.ones(3), 30), rng.normal(size=(30, 5))
    want = EGL().select({"probs": probs, "features": feats}, 4).indices
    assert_array_equal(EGL().select({"probs": probs, "features": feats * 1e-150}, 4).indices, want)
    with pytest.raises(ValueError, match=r"squared norm underflows float64, and no unlabeled "
                       r"row's does not \(row 1\)"):  # fmt: skip
        EGL().select({"probs": probs, "features": feats * 1e-165}, 4, [0])
    zero_row = feats.copy()
    zero_row[7] = 0
    EGL().select({"probs": probs, "features": zero_row}, 4)
    tiny_rows = feats.copy()
    tiny_rows[[0, 5]] *= 1e-170  # a labeled and an unlabeled one beside normal rows: they rank last
    got = EGL().select({"probs": probs, "features": tiny_rows}, 4, [0]).indices
    assert_array_equal(got, EGL().select({"probs": probs, "features": feats}, 4, [0, 5]).indices)
    tiny = EGL(bias=True).select({"probs": probs, "features": feats * 1e-165}, 4)
    zero = EGL(bias=True).select({"probs": probs, "features": 0 * feats}, 4)
    assert_array_equal(tiny.indices, zero.indices)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_badge_and_kmeans_sampling_refuse_overflowing_features(dtype):
    rng = np.random.default_rng(0)
    scale = 1e20 if dtype == "float32" else 1e160
    feats = (rng.normal(size=(60, 3)) * scale).astype(dtype)
    probs = rng.dirichlet(np.ones(3), 60).astype(dtype)
    with pytest.raises(ValueError, match=f"rows of features overflow {dtype}"):
        BADGE().select({"probs": probs, "features": feats}, 4, seed=0)
    with pytest.raises(ValueError, match=f"rows of features overflow {dtype}"):
        KMEANS().select({"features": feats}, 4, [0, 1], seed=0)
    emb = fastal.gradient_embedding(probs, feats)
    with pytest.raises(ValueError, match=f"rows of pool overflow {dtype}"):
        BADGE().select(emb, 4, seed=0)


def test_strategy_argument_checks():
    import torch

    rng = np.random.default_rng(0)
    p, h = rng.dirichlet(np.ones(3), 20), rng.normal(size=(20, 4))
    for bad in (torch.ones(3, 2), None, 5):
        with pytest.raises(TypeError, match="pool must be a mapping with 'probs'"):
            EGL().select(bad, 1)
    for cls in (EGL, BADGE):
        with pytest.raises(TypeError, match="bias must be a bool"):
            cls(bias="no")
    emb = fastal.gradient_embedding(p, h)
    for pool in (emb, {"features": emb}):
        with pytest.raises(TypeError, match="KMeansSampling needs dense features"):
            KMEANS().select(pool, 2)


def test_kmeans_sampling_distances_in_row_tiles(monkeypatch):
    """The rows' distances to their centres come in tiles (memory): tiles of 3 rows agree with the
    reference, which forms them all at once."""
    from fastal.strategies import kmeans_sampling

    monkeypatch.setattr(kmeans_sampling, "_TILE_VALUES", 15)  # 3 rows of d = 5
    X = gaussian(400, 5, seed=8)
    labeled = labeled_subset(400, 12, seed=2)
    idx = to_numpy(KMEANS().select(X, 12, labeled, seed=2).indices)
    assert_array_equal(idx, kmeans_sampling_ref(X, 12, labeled, 2, max_iter=100))


@pytest.mark.parametrize("key", ["probs", "logits"])
def test_egl_keeps_the_scores_of_confident_float32_rows(key):
    """Confident rows (top-logit gap 14..20): 1 - |p|² in float32 cancelled to 0 for every row,
    so the picks fell to the lowest indices (0, 1, 2, ... where the float64 truth ranks 8, 9, 7).
    The float32 softmax outputs that fastal.torch hands EGL round p_max to 1.0 from a gap of ~17;
    the scores now come from the small probabilities, as in float64."""
    import torch

    n, C = 10, 10
    z = torch.zeros(n, C)
    z[:, 0] = torch.linspace(14, 20, n)
    h = torch.ones(n, 8) * torch.arange(1, n + 1)[:, None].float() ** 3
    truth = egl_ref(softmax_ref(z.numpy().astype(np.float64)), h.numpy())
    pool = {key: torch.softmax(z, 1) if key == "probs" else z, "features": h}
    sel = EGL().select(pool, n)
    assert_allclose(upcast(sel.diagnostics["scores"]), truth, rtol=1e-5)
    assert_array_equal(to_numpy(sel.indices), top_scores_ref(truth, n))


@pytest.mark.parametrize("squared", [True, False])
def test_egl_float32_logits_past_the_softmax_underflow(squared):
    """Gaps of 105..130 between float32 logits: float32's softmax gave the small probabilities as
    0 (from a gap of ~88 on), every such row scored 0 and the picks fell to the lowest indices.
    Those rows are computed again in float64: the float64 picks and scores."""
    import torch

    gaps = torch.tensor([130.0, 120.0, 110.0, 105.0, 100.0, 95.0])
    z = torch.zeros(6, 3)
    z[:, 0] = gaps
    h = torch.ones(6, 4)
    got = EGL(squared=squared).select({"logits": z, "features": h}, 3)
    want = EGL(squared=squared).select({"logits": z.double(), "features": h.double()}, 3)
    assert_array_equal(to_numpy(got.indices), [5, 4, 3])
    assert_array_equal(to_numpy(got.indices), to_numpy(want.indices))
    assert_allclose(upcast(got.diagnostics["scores"]), upcast(want.diagnostics["scores"]),
                    rtol=1e-6)  # fmt: skip
    assert (upcast(got.diagnostics["scores"]) > 0).all()


def test_egl_tiny_float32_features_and_float64_logits_past_float32():
    """|h|² below float32's normal range (|h| ~ 1e-25) is summed again in float64 rather than
    scoring 0; finite float64 logits past float32's range are accepted with float32 features."""
    import torch

    h = torch.tensor([[1e-30], [1e-25], [3e-23], [1e-24]], dtype=torch.float32)
    p = torch.full((4, 2), 0.5)
    got = EGL().select({"probs": p, "features": h}, 2)
    assert_array_equal(to_numpy(got.indices), [2, 3])
    scores = upcast(got.diagnostics["scores"])
    assert_allclose(scores, 0.5 * h.double().square().sum(1).numpy(), rtol=1e-6)
    logits = torch.tensor([[1e39, 0.0], [0.0, 0.0]], dtype=torch.float64)
    sel = EGL().select({"logits": logits, "features": torch.ones(2, 3)}, 1)
    assert_array_equal(to_numpy(sel.indices), [1])


def test_rows_whose_sqnorms_underflow_are_not_at_a_negative_distance():
    """With |g|² rounding to 0 in float32 but the product (a_i·a_c)(h_i·h_c) not, the expansion
    is negative; zero rows stopped being near-copy suspects (6879b92) and the scalar path returned
    it unclamped: min_distance gave NaN (session 28 review)."""
    rng = np.random.default_rng(0)
    n = 2000
    A = rng.normal(size=(n, 2)).astype(np.float32)
    target = 7.006492321624085e-46 * (1 + rng.uniform(-3e-7, 3e-7, size=n))
    H = np.sqrt(target / (A**2).sum(1))[:, None].astype(np.float32)
    A[0], H[0] = 1, 1  # one ordinary row, so that the pool is not refused as underflowing
    emb = fastal.GradientEmbedding(A, H)
    rows = np.flatnonzero(np.asarray(emb.sqnorm) == 0)[:5]
    assert rows.size == 5
    dist, _ = fastal.min_distance(emb, emb.subset(rows))  # 5 centres: the scalar path
    dist = np.asarray(dist)
    assert (dist >= 0).all()
    assert not np.isnan(dist).any()


def _nearest_per_cluster_ref(labels, dist2, k):
    """Per cluster its row of least distance (ties: lowest row); an empty cluster takes the
    farthest row not yet chosen (ties: lowest row), clusters in order."""
    chosen = []
    for c in range(k):
        members = [i for i in range(labels.size) if labels[i] == c]
        chosen.append(min(members, key=lambda i: (dist2[i], i)) if members else -1)
    for c in range(k):
        if chosen[c] < 0:
            free = [i for i in range(labels.size) if i not in chosen]
            chosen[c] = min(free, key=lambda i: (-dist2[i], i))
    return chosen


@pytest.mark.parametrize("case", range(40))
def test_nearest_per_cluster_matches_the_reference(case):
    """KMeansSampling's pick per cluster (an O(n) scan since a lexsort of the pool took ~1 s at
    n = 1M): ties in distance, and clusters left empty, as the reference says."""
    from fastal.strategies.kmeans_sampling import _nearest_per_cluster

    rng = np.random.default_rng(case)
    n = int(rng.integers(1, 60))
    k = int(rng.integers(1, n + 1))
    labels = rng.integers(0, k, n)
    dist2 = rng.integers(0, 4, n).astype(np.float64) if case % 2 else rng.random(n)
    got = _nearest_per_cluster(labels, dist2, k)
    assert got.tolist() == _nearest_per_cluster_ref(labels, dist2, k)


@pytest.mark.parametrize(
    ("option", "value"), [("max_iter", 0), ("max_iter", 2.5), ("minibatch", 0), ("minibatch", True)]
)
def test_kmeans_sampling_checks_its_options_when_built(option, value):
    """As CoreSet does: a bad option is refused at construction, not at the first select (and
    not never, as with budget 0)."""
    with pytest.raises(ValueError, match=f"^{option} must be"):
        strategies.KMeansSampling(**{option: value})


def test_kmeans_sampling_max_iter_none_is_kmeans_default():
    X = np.random.default_rng(0).normal(size=(50, 3))
    want = strategies.KMeansSampling().select(X, 3, seed=0).indices
    got = strategies.KMeansSampling(max_iter=None).select(X, 3, seed=0).indices
    assert len(got) == len(want) == 3
