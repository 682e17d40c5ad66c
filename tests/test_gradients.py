"""Factored gradient embeddings: factors, norms and exports against the float64 reference; factored
distances and k-center against the materialised matrix; validation of model outputs and labels.

``g_i = a_i ⊗ h_i`` with ``a_i = p_i - t_i`` (spec "Math"). The factors are stored in the dtype of
``features``; ``A`` is computed in float32 (float64 for float64 input) and rounded once to
storage, ``H`` is a copy of the features (exact), ``sqnorm`` is ``|A_i|^2 |H_i|^2`` of the *stored*
factors in float32 (float64). The references see the stored input values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    CPU_BACKENDS,
    assert_same_until_near_tie,
    backend_dtype_params,
    backend_of,
    dtype_of,
    indices_to_backend,
    labeled_subset,
    to_backend,
    to_numpy,
    upcast,
)
from numpy.testing import assert_allclose, assert_array_equal
from reference import gradient_embedding_ref, kcenter_greedy_ref, min_distance_ref, softmax_ref

import fastal

ALL_PARAMS = backend_dtype_params()
CPU_PARAMS = backend_dtype_params(backends=CPU_BACKENDS)
WIDE_CPU_PARAMS = backend_dtype_params(("float64", "float32"), CPU_BACKENDS)

#: A = p - t, computed in float32 (float64) then rounded once to storage: half an ulp of the
#: storage dtype plus a few float32 ulps of the softmax.
A_RTOL = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-3, "bfloat16": 8e-3}
A_ATOL = {"float64": 1e-14, "float32": 1e-6, "float16": 1e-6, "bfloat16": 1e-6}
#: one rounding of a product of two stored values to storage (dense export)
STORE_RTOL = {"float64": 1e-15, "float32": 1.2e-7, "float16": 1e-3, "bfloat16": 8e-3}
STORE_ATOL = {"float64": 0.0, "float32": 0.0, "float16": 1e-7, "bfloat16": 0.0}
#: sums of squares accumulated in float32 (float64)
SUM_RTOL = {"float64": 1e-13, "float32": 1e-5, "float16": 1e-5, "bfloat16": 1e-5}
#: squared distances in the factored form |g_i|^2 + |g_j|^2 - 2 (a_i.a_j)(h_i.h_j): the error is
#: relative to the norms, not to the distance (cancellation), so it is an absolute tolerance in
#: units of the largest squared norm
FACTORED_ATOL = {"float64": 1e-12, "float32": 2e-5}


def model_outputs(n: int, C: int, d: int, seed: int):
    """(logits, probs, features) float64: generic, no ties in argmax p."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, C)) * 2.0
    return logits, softmax_ref(logits), rng.normal(size=(n, d))


def probs_dtype(dtype: str) -> str:
    """Probabilities stored in float16 / bfloat16 no longer sum to 1 within 1e-3 (C rounding
    errors of up to 2^-9 each), so low-precision features get float32 probabilities: the spec asks
    only for the same framework and device, not the same dtype."""
    return dtype if dtype in ("float64", "float32") else "float32"


def build(kind: str, backend: str, dtype: str, n=40, C=5, d=7, seed=0, **kw):
    """fastal.gradient_embedding on ``backend`` storage, and the float64 reference (A, H, dense)
    on the stored input values."""
    logits, probs, feats = model_outputs(n, C, d, seed)
    fb = to_backend(feats, backend, dtype)
    if kind == "probs":
        pb = to_backend(probs, backend, probs_dtype(dtype))
    else:
        pb = to_backend(logits, backend, dtype)
    emb = fastal.gradient_embedding(pb, fb, kind=kind, **kw)
    ref = gradient_embedding_ref(upcast(pb), upcast(fb), logits=kind == "logits", **kw)
    return emb, ref, fb


# ---------------------------------------------------------------------------------------------
# hand-worked


def test_hand_worked_embedding():
    # p = (0.7, 0.2, 0.1): hypothetical label 0, a = (-0.3, 0.2, 0.1); h = (1, 2) (+1 with bias)
    p = np.array([[0.7, 0.2, 0.1]])
    h = np.array([[1.0, 2.0]])
    emb = fastal.gradient_embedding(p, h)
    assert_allclose(emb.A, [[-0.3, 0.2, 0.1]], rtol=1e-15, atol=1e-16)
    assert_array_equal(emb.H, h)
    assert_allclose(emb.dense(), [[-0.3, -0.6, 0.2, 0.4, 0.1, 0.2]], rtol=1e-15, atol=1e-16)
    assert_allclose(emb.sqnorm, [0.14 * 5.0], rtol=1e-15)
    with_bias = fastal.gradient_embedding(p, h, bias=True, labels=np.array([2]))
    # given label 2: a = (0.7, 0.2, -0.9); h = (1, 2, 1)
    assert_allclose(with_bias.A, [[0.7, 0.2, -0.9]], rtol=1e-15)
    assert_array_equal(with_bias.H, [[1.0, 2.0, 1.0]])
    assert_allclose(
        with_bias.dense(), [[0.7, 1.4, 0.7, 0.2, 0.4, 0.2, -0.9, -1.8, -0.9]], rtol=1e-15
    )
    assert (with_bias.n, with_bias.n_classes, with_bias.dim) == (1, 3, 9)
    assert with_bias.shape == (1, 9)
    assert len(with_bias) == 1
    assert with_bias.dtype == "float64"


def test_argmax_ties_go_to_the_lowest_class():
    p = np.array([[0.4, 0.4, 0.2], [0.25, 0.375, 0.375], [0.5, 0.0, 0.5]])
    emb = fastal.gradient_embedding(p, np.ones((3, 1)))
    expected = p - np.eye(3)[[0, 1, 0]]
    assert_allclose(emb.A, expected, rtol=0, atol=1e-16)


# ---------------------------------------------------------------------------------------------
# factors, norms, exports against the reference


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kind", ["probs", "logits"])
@pytest.mark.parametrize(("backend", "dtype"), ALL_PARAMS)
def test_factors_match_reference(backend, dtype, kind, bias):
    emb, (A, H, dense), fb = build(kind, backend, dtype, bias=bias)
    n, C = A.shape
    dh = H.shape[1]
    assert isinstance(emb, fastal.GradientEmbedding)
    assert (emb.n, emb.n_classes, emb.dim, emb.shape, len(emb)) == (n, C, C * dh, (n, C * dh), n)
    assert emb.dtype == dtype
    for x, shape in ((emb.A, (n, C)), (emb.H, (n, dh))):
        assert backend_of(x) == backend_of(fb)
        assert dtype_of(x) == dtype
        assert tuple(x.shape) == shape
    assert_allclose(upcast(emb.A), A, rtol=A_RTOL[dtype], atol=A_ATOL[dtype])
    assert_array_equal(upcast(emb.H), H)  # a copy of the stored features (and exact ones)

    sq = emb.sqnorm
    assert backend_of(sq) == backend_of(fb)
    assert dtype_of(sq) == ("float64" if dtype == "float64" else "float32")
    As, Hs = upcast(emb.A), upcast(emb.H)
    assert_allclose(upcast(sq), np.sum(As**2, 1) * np.sum(Hs**2, 1), rtol=SUM_RTOL[dtype])
    assert_allclose(upcast(sq), np.sum(dense**2, 1), rtol=2 * A_RTOL[dtype] + SUM_RTOL[dtype])

    D = emb.dense()
    assert backend_of(D) == backend_of(fb)
    assert dtype_of(D) == dtype
    assert tuple(D.shape) == (n, C * dh)
    exact = (As[:, :, None] * Hs[:, None, :]).reshape(n, C * dh)  # flattened c * dh + k
    assert_allclose(upcast(D), exact, rtol=STORE_RTOL[dtype], atol=STORE_ATOL[dtype])
    assert_allclose(upcast(D), dense, rtol=A_RTOL[dtype] + STORE_RTOL[dtype], atol=A_ATOL[dtype])


@pytest.mark.parametrize(("backend", "dtype"), CPU_PARAMS)
def test_subset_dense_rows_and_iter_dense(backend, dtype):
    emb, _, _ = build("logits", backend, dtype, n=37, bias=True)
    full = upcast(emb.dense())
    rows = [5, 0, 36, 5, 12]  # any order, repeats allowed
    sub = emb.subset(indices_to_backend(rows, backend))
    assert isinstance(sub, fastal.GradientEmbedding)
    assert (sub.n, sub.n_classes, sub.dim, sub.dtype) == (5, emb.n_classes, emb.dim, dtype)
    assert_array_equal(upcast(sub.A), upcast(emb.A)[rows])
    assert_array_equal(upcast(sub.H), upcast(emb.H)[rows])
    assert_array_equal(upcast(sub.sqnorm), upcast(emb.sqnorm)[rows])
    assert_array_equal(upcast(sub.dense()), full[rows])
    assert_array_equal(upcast(emb.dense(indices_to_backend(rows, backend))), full[rows])

    for chunk in (1, 8, 37, 100):
        blocks = list(emb.iter_dense(chunk))
        assert [s for s, _ in blocks] == list(range(0, 37, chunk))
        for _, b in blocks:
            assert backend_of(b) == backend
            assert dtype_of(b) == dtype
        assert_array_equal(np.concatenate([upcast(b) for _, b in blocks]), full)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_auto_kind(backend):
    logits, probs, feats = model_outputs(30, 4, 3, seed=1)
    fb = to_backend(feats, backend)
    as_probs = fastal.gradient_embedding(to_backend(probs, backend), fb, kind="probs")
    auto_p = fastal.gradient_embedding(to_backend(probs, backend), fb)
    assert_array_equal(to_numpy(auto_p.A), to_numpy(as_probs.A))
    as_logits = fastal.gradient_embedding(to_backend(logits, backend), fb, kind="logits")
    auto_l = fastal.gradient_embedding(to_backend(logits, backend), fb)
    assert_array_equal(to_numpy(auto_l.A), to_numpy(as_logits.A))
    # softmax(logits) as probabilities gives the same embedding as the logits
    assert_allclose(to_numpy(as_logits.A), to_numpy(as_probs.A), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("backend", "dtype"), CPU_PARAMS)
def test_given_labels_and_label_distributions(backend, dtype):
    n, C = 40, 5
    _, probs, feats = model_outputs(n, C, 6, seed=2)
    rng = np.random.default_rng(2)
    labels = rng.integers(C, size=n)
    P = rng.dirichlet(np.ones(C), size=n)
    fb = to_backend(feats, backend, dtype)
    pb = to_backend(probs, backend, probs_dtype(dtype))
    p64 = upcast(pb)

    emb = fastal.gradient_embedding(pb, fb, labels=indices_to_backend(labels, backend))
    A, _, _ = gradient_embedding_ref(p64, upcast(fb), labels=labels)
    assert_allclose(upcast(emb.A), A, rtol=A_RTOL[dtype], atol=A_ATOL[dtype])
    assert_allclose(A, p64 - np.eye(C)[labels], rtol=0, atol=0)

    # a label distribution: A = p - P (the expected gradient over y ~ P)
    Pb = to_backend(P, backend, probs_dtype(dtype))
    emb = fastal.gradient_embedding(pb, fb, labels=Pb)
    A, _, _ = gradient_embedding_ref(p64, upcast(fb), labels=upcast(Pb))
    assert_allclose(upcast(emb.A), A, rtol=A_RTOL[dtype], atol=A_ATOL[dtype])

    # one-hot distributions are the given labels
    onehot = to_backend(np.eye(C)[labels], backend, probs_dtype(dtype))
    a1 = upcast(fastal.gradient_embedding(pb, fb, labels=onehot).A)
    a2 = upcast(fastal.gradient_embedding(pb, fb, labels=indices_to_backend(labels, backend)).A)
    assert_array_equal(a1, a2)
    # labels = argmax p: the hypothetical labels
    a3 = upcast(fastal.gradient_embedding(pb, fb).A)
    hyp = indices_to_backend(np.argmax(p64, axis=1), backend)
    assert_array_equal(a3, upcast(fastal.gradient_embedding(pb, fb, labels=hyp).A))


def test_user_factors():
    rng = np.random.default_rng(3)
    A, H = rng.normal(size=(9, 3)), rng.normal(size=(9, 4))
    emb = fastal.GradientEmbedding(A, H)
    assert_array_equal(emb.A, A)
    assert_array_equal(emb.H, H)
    assert_allclose(emb.dense(), (A[:, :, None] * H[:, None, :]).reshape(9, 12), rtol=1e-15)
    assert_allclose(emb.sqnorm, np.sum(A**2, 1) * np.sum(H**2, 1), rtol=1e-13)
    At = torch.from_numpy(A.astype(np.float32))
    Ht = torch.from_numpy(H.astype(np.float32))
    embt = fastal.GradientEmbedding(At, Ht)
    assert backend_of(embt.dense()) == "torch-cpu"
    assert dtype_of(embt.sqnorm) == "float32"


# ---------------------------------------------------------------------------------------------
# factored kernels


def factored_pool(n, C, d, seed, dtype, backend="numpy", bias=False):
    logits, _, feats = model_outputs(n, C, d, seed)
    return fastal.gradient_embedding(
        to_backend(logits, backend, dtype), to_backend(feats, backend, dtype), bias=bias
    )


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    ("backend", "dtype"), backend_dtype_params(("float64", "float32"), CPU_BACKENDS)
)
def test_factored_min_distance(backend, dtype, bias):
    emb = factored_pool(300, 6, 9, seed=4, dtype=dtype, backend=backend, bias=bias)
    rows = np.random.default_rng(4).choice(300, size=25, replace=False)
    Y = emb.subset(indices_to_backend(rows, backend))
    dist, index = fastal.min_distance(emb, Y)
    assert backend_of(dist) == backend
    assert dtype_of(dist) == ("float64" if dtype == "float64" else "float32")
    assert dtype_of(index) == "int64"
    dist, index = upcast(dist), to_numpy(index)

    G = upcast(emb.dense()) if dtype == "float64" else _exact_dense(emb)
    d2 = np.stack([np.sum((G - G[r]) ** 2, axis=1) for r in rows], axis=1)  # (n, m), direct form
    best = d2.min(axis=1)
    atol = FACTORED_ATOL[dtype] * float(np.max(np.sum(G**2, 1)))
    assert_allclose(dist**2, best, rtol=0, atol=atol)
    assert (d2[np.arange(300), index] <= best + atol).all()
    # rows of Y are at distance (about) 0 from themselves
    assert (dist[rows] ** 2 <= atol).all()
    clear = np.sort(d2, axis=1)[:, 1] - best > 2 * atol
    assert_array_equal(index[clear], np.argmin(d2, axis=1)[clear])


def _exact_dense(emb) -> np.ndarray:
    """The materialised matrix of the stored factors, in float64 (no rounding of the products)."""
    A, H = upcast(emb.A), upcast(emb.H)
    return (A[:, :, None] * H[:, None, :]).reshape(A.shape[0], -1)


def integer_embedding(n, C, dh, seed, backend="numpy", dtype="float64", high=2):
    """A GradientEmbedding of integer factors in [-high, high] stored as ``dtype``: exact in every
    storage dtype, and every factored distance |g_i|^2 + |g_j|^2 - 2 (a_i.a_j)(h_i.h_j) is a sum
    of integers far below 2^24, exact in the float32 accumulation of the 16-bit kernels (float64
    for float64). So the kernels must match the references on the materialised float64 matrix
    exactly, ties included (integers tie often)."""
    rng = np.random.default_rng(seed)
    A = rng.integers(-high, high + 1, size=(n, C)).astype(np.float64)
    H = rng.integers(-high, high + 1, size=(n, dh)).astype(np.float64)
    return fastal.GradientEmbedding(to_backend(A, backend, dtype), to_backend(H, backend, dtype))


#: a float32 square root of an exact squared distance rounds once
SQRT_RTOL = {"float64": 1e-15, "float32": 1e-7, "float16": 1e-7, "bfloat16": 1e-7}


@pytest.mark.parametrize(("backend", "dtype"), CPU_PARAMS)
def test_factored_min_distance_integer_factors_every_dtype(backend, dtype):
    """float16 / bfloat16 factored pools (FactoredRows<Half>, <BFloat16>) on the CPU, with
    float32 / float64 alongside, against the materialised float64 reference."""
    n, m = 500, 70
    emb = integer_embedding(n + m, 4, 6, seed=13, backend=backend, dtype=dtype)
    X = emb.subset(indices_to_backend(np.arange(n), backend))
    Y = emb.subset(indices_to_backend(np.arange(n, n + m), backend))
    dist, index = fastal.min_distance(X, Y)
    assert backend_of(dist) == backend
    assert dtype_of(dist) == ("float64" if dtype == "float64" else "float32")
    assert dtype_of(index) == "int64"
    ref_dist, ref_index = min_distance_ref(_exact_dense(X), _exact_dense(Y))
    assert_array_equal(to_numpy(index), ref_index)
    assert_allclose(upcast(dist), ref_dist, rtol=SQRT_RTOL[dtype], atol=0)
    # ties are in play: many rows have two nearest rows of Y at the same distance
    d2 = np.stack([np.sum((_exact_dense(Y) - g) ** 2, axis=1) for g in _exact_dense(X)])
    assert (np.sort(d2, axis=1)[:, 1] == d2.min(axis=1)).sum() > 10


@pytest.mark.parametrize(("backend", "dtype"), CPU_PARAMS)
@pytest.mark.parametrize(
    ("n", "m", "C", "dh"),
    # the CPU's register blocks (6 rows x 4 centres, m >= 8) zero-pad A and H to whole vectors of
    # 16 (float64: 8) lanes: widths around those, rows and centres not multiples of the block;
    # m = 7 takes the one-pair loop
    [(101, 9, 17, 33), (97, 30, 10, 64), (50, 7, 3, 130), (13, 8, 8, 8)],
)
def test_factored_min_distance_blocks_exact(n, m, C, dh, backend, dtype):
    emb = integer_embedding(n + m, C, dh, seed=n + C, backend=backend, dtype=dtype)
    X = emb.subset(indices_to_backend(np.arange(n), backend))
    Y = emb.subset(indices_to_backend(np.arange(n, n + m), backend))
    dist, index = fastal.min_distance(X, Y)
    ref_dist, ref_index = min_distance_ref(_exact_dense(X), _exact_dense(Y))
    assert_array_equal(to_numpy(index), ref_index)
    assert_allclose(upcast(dist), ref_dist, rtol=SQRT_RTOL[dtype], atol=0)


def test_factored_min_distance_rejects_mixed_inputs():
    emb = factored_pool(20, 3, 4, seed=5, dtype="float64")
    other = factored_pool(20, 4, 4, seed=5, dtype="float64")  # C = 4, same dh
    with pytest.raises((TypeError, ValueError), match="Y"):
        fastal.min_distance(emb, emb.dense())
    with pytest.raises((TypeError, ValueError), match="Y"):
        fastal.min_distance(emb, other)


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("n_labeled", [0, 4])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_kcenter_on_embedding_matches_dense_and_reference(backend, n_labeled, prune):
    n, budget = 400, 40
    emb = factored_pool(n, 5, 8, seed=6, dtype="float64", backend=backend, bias=True)
    labeled = labeled_subset(n, n_labeled, seed=6)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    res = fastal.kcenter(emb, budget, labeled=lab, seed=7, prune=prune)
    dense = fastal.kcenter(emb.dense(), budget, labeled=lab, seed=7, prune=prune)
    first = int(np.random.default_rng(7).integers(n)) if labeled is None else None
    ref_picks, ref_radius = kcenter_greedy_ref(upcast(emb.dense()), budget, labeled, first)
    assert backend_of(res.indices) == backend
    assert_array_equal(to_numpy(res.indices), ref_picks)
    assert_array_equal(to_numpy(res.indices), to_numpy(dense.indices))
    assert_allclose(to_numpy(res.radius), ref_radius, rtol=1e-8)
    picks = fastal.kcenter_greedy(emb, budget, labeled=lab, seed=7, prune=prune)
    assert_array_equal(to_numpy(picks), ref_picks)


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("n_labeled", [0, 4])
@pytest.mark.parametrize(("backend", "dtype"), CPU_PARAMS)
def test_kcenter_on_integer_embedding_every_dtype(backend, dtype, n_labeled, prune):
    """float16 / bfloat16 (and float32 / float64) factored k-center on the CPU: the picks of the
    float64 reference on the materialised matrix, and of fastal on that matrix, exactly."""
    n, budget = 400, 60
    emb = integer_embedding(n, 3, 5, seed=14, backend=backend, dtype=dtype)
    G = _exact_dense(emb)
    labeled = labeled_subset(n, n_labeled, seed=14)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    res = fastal.kcenter(emb, budget, labeled=lab, seed=3, prune=prune)
    assert backend_of(res.indices) == backend
    first = int(np.random.default_rng(3).integers(n)) if labeled is None else None
    ref_picks, ref_radius = kcenter_greedy_ref(G, budget, labeled, first)
    assert_array_equal(to_numpy(res.indices), ref_picks)
    assert_allclose(upcast(res.radius), ref_radius, rtol=SQRT_RTOL[dtype], atol=0)
    dense = fastal.kcenter(G, budget, labeled=labeled, seed=3, prune=prune)
    assert_array_equal(to_numpy(res.indices), dense.indices)
    assert ref_radius[-1] > 0  # the picks did not run out of distinct rows


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kcenter_on_embedding_pruned_equals_unpruned(dtype):
    emb = factored_pool(1500, 10, 16, seed=8, dtype=dtype)
    a = fastal.kcenter(emb, 120, seed=1, prune=True)
    b = fastal.kcenter(emb, 120, seed=1, prune=False)
    assert_array_equal(a.indices, b.indices)
    assert_array_equal(a.radius, b.radius)


def test_kcenter_on_float32_embedding_agrees_with_dense_up_to_near_ties():
    emb = factored_pool(500, 6, 10, seed=9, dtype="float32")
    G = _exact_dense(emb)
    picks = to_numpy(fastal.kcenter_greedy(emb, 50, seed=2))
    ref_picks, _ = kcenter_greedy_ref(G, 50, None, int(np.random.default_rng(2).integers(500)))
    assert_same_until_near_tie(G, picks, ref_picks, None, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# bad input: error type, and a message that names the argument


def _pf(n=6, C=3, d=2, seed=0):
    logits, probs, feats = model_outputs(n, C, d, seed)
    return logits, probs, feats


def test_probs_not_summing_to_one():
    _, probs, feats = _pf()
    bad = probs * 0.9
    with pytest.raises(ValueError, match="probs_or_logits"):
        fastal.gradient_embedding(bad, feats, kind="probs")
    # auto: all values in [0, 1] but rows not summing to 1 -> error suggesting kind="logits"
    with pytest.raises(ValueError, match=r"probs_or_logits(.|\n)*kind=[\"']logits[\"']"):
        fastal.gradient_embedding(bad, feats)
    # within 1e-3 is accepted
    fastal.gradient_embedding(probs * (1 + 5e-4), feats, kind="probs")


def test_probs_out_of_range():
    logits, probs, feats = _pf()
    with pytest.raises(ValueError, match="probs_or_logits"):
        fastal.gradient_embedding(logits, feats, kind="probs")
    bad = probs.copy()
    bad[0] = [1.25, -0.25, 0.0]  # sums to 1 but leaves [0, 1]
    with pytest.raises(ValueError, match="probs_or_logits"):
        fastal.gradient_embedding(bad, feats, kind="probs")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["auto", "probs", "logits"])
def test_non_finite(bad, kind):
    logits, probs, feats = _pf()
    p = (logits if kind == "logits" else probs).copy()
    p[2, 1] = bad
    if bad == -np.inf and kind != "probs":  # logits: a masked class, taken (test_masked_classes)
        p[2, :] = bad  # but not a row of masked classes only
    with pytest.raises(ValueError, match="probs_or_logits"):
        fastal.gradient_embedding(p, feats, kind=kind)
    f = feats.copy()
    f[3, 0] = bad
    with pytest.raises(ValueError, match="features"):
        fastal.gradient_embedding(probs if kind != "logits" else logits, f, kind=kind)


def test_label_distribution_bad():
    _, probs, feats = _pf(C=3)
    P = np.full((6, 4), 0.25)  # C = 4 against C = 3
    with pytest.raises(ValueError, match="labels"):
        fastal.gradient_embedding(probs, feats, labels=P)
    with pytest.raises(ValueError, match="labels"):
        fastal.gradient_embedding(probs, feats, labels=np.full((6, 3), 0.5))  # rows sum to 1.5
    neg = np.tile([1.5, -0.5, 0.0], (6, 1))  # sums to 1, out of [0, 1]
    with pytest.raises(ValueError, match="labels"):
        fastal.gradient_embedding(probs, feats, labels=neg)
    nan = np.full((6, 3), 1 / 3)
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="labels"):
        fastal.gradient_embedding(probs, feats, labels=nan)
    with pytest.raises(ValueError, match="labels"):
        fastal.gradient_embedding(probs, feats, labels=np.full((5, 3), 1 / 3))  # wrong n


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 0, 1], [0, -1, 2, 0, 1, 2]])
def test_labels_out_of_range(labels):
    _, probs, feats = _pf(C=3)
    with pytest.raises(ValueError, match="labels"):
        fastal.gradient_embedding(probs, feats, labels=np.array(labels))


def test_labels_wrong_length():
    _, probs, feats = _pf()
    with pytest.raises(ValueError, match="labels"):
        fastal.gradient_embedding(probs, feats, labels=np.array([0, 1, 2]))


def test_wrong_n():
    _, probs, feats = _pf(n=6)
    with pytest.raises(ValueError, match="features"):
        fastal.gradient_embedding(probs, feats[:5])


def test_mixed_frameworks():
    """torch probabilities from a model beside cached numpy features (or the other way): the
    embedding is the features' framework's, the same numbers. They were refused."""
    _, probs, feats = _pf()
    want = fastal.gradient_embedding(probs, feats)
    a = fastal.gradient_embedding(probs, torch.from_numpy(feats))
    b = fastal.gradient_embedding(torch.from_numpy(probs), feats)
    assert isinstance(a.A, torch.Tensor)
    assert isinstance(b.A, np.ndarray)
    assert_array_equal(a.A.numpy(), want.A)
    assert_array_equal(b.A, want.A)
    with pytest.raises(ValueError, match=r"^H is a torch \(cpu\) array but A is numpy"):
        fastal.GradientEmbedding(want.A, torch.from_numpy(feats))  # the factors stay alike


def test_mixed_framework_pools_pick_as_alike_ones():
    """BADGE, EGL, coreset_gradients, bilevel refused {"probs": tensor, "features": ndarray}
    while CRC and SparseApprox took it; every strategy takes it now, indices in the features'
    framework."""
    from fastal import strategies

    _, probs, feats = _pf()
    logits = np.log(probs)
    cases = [("badge", {}, "probs"), ("egl", {}, "probs"), ("coreset_gradients", {}, "probs"),
             ("bilevel", {"landmarks": 4}, "logits"),
             ("sparse_approx", {"temperature": 2.0}, "logits")]  # fmt: skip
    for name, kw, key in cases:
        values = logits if key == "logits" else probs
        want = strategies.get(name)(**kw).select({key: values, "features": feats}, 3, [0], seed=0)
        mixed = {key: torch.from_numpy(values), "features": feats}
        got = strategies.get(name)(**kw).select(mixed, 3, [0], seed=0)
        assert isinstance(got.indices, np.ndarray), name
        assert_array_equal(got.indices, want.indices)
        mixed = {key: values, "features": torch.from_numpy(feats)}
        got = strategies.get(name)(**kw).select(mixed, 3, [0], seed=0)
        assert isinstance(got.indices, torch.Tensor), name
        assert_array_equal(got.indices.numpy(), want.indices)


@pytest.mark.parametrize("kind", ["prob", "softmax", "", "LOGITS"])
def test_bad_kind(kind):
    _, probs, feats = _pf()
    with pytest.raises(ValueError, match="kind"):
        fastal.gradient_embedding(probs, feats, kind=kind)


def test_bad_shapes():
    _, probs, feats = _pf()
    with pytest.raises(ValueError, match="probs_or_logits"):
        fastal.gradient_embedding(probs[0], feats)
    with pytest.raises(ValueError, match="features"):
        fastal.gradient_embedding(probs, feats[:, 0])


def test_user_factors_validated():
    rng = np.random.default_rng(0)
    A, H = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    with pytest.raises(ValueError, match="A"):
        fastal.GradientEmbedding(A[0], H)
    with pytest.raises(ValueError, match="H"):
        fastal.GradientEmbedding(A, H[:4])
    with pytest.raises(TypeError, match="H"):
        fastal.GradientEmbedding(A, H.astype(np.float32))
    with pytest.raises(ValueError, match="H"):
        fastal.GradientEmbedding(A, torch.from_numpy(H))
    bad = A.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="A"):
        fastal.GradientEmbedding(bad, H)
    bad = H.copy()
    bad[4, 0] = np.inf
    with pytest.raises(ValueError, match="H"):
        fastal.GradientEmbedding(A, bad)


def test_features_are_not_copied_without_the_bias_column():
    """At n = 1M, d = 512 a copy of H is 2 GB: without the bias column the embedding keeps the
    (contiguous) features themselves; with it, or from a strided view, H is a new array."""
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), 50).astype(np.float32)
    h = rng.normal(size=(50, 4)).astype(np.float32)
    emb = fastal.gradient_embedding(p, h)
    assert np.shares_memory(emb.H, h)
    np.testing.assert_array_equal(emb.dense(), fastal.gradient_embedding(p, h.copy()).dense())
    assert not np.shares_memory(fastal.gradient_embedding(p, h, bias=True).H, h)
    wide = rng.normal(size=(50, 8)).astype(np.float32)
    strided = fastal.gradient_embedding(p, wide[:, ::2])
    assert not np.shares_memory(strided.H, wide)
    np.testing.assert_array_equal(strided.H, wide[:, ::2])


def test_float_1d_labels_message_names_the_numpy_dtype():
    P = np.full((4, 3), 1 / 3, np.float32)
    with pytest.raises(TypeError, match=r"classes, got dtype float64 \(a label distribution"):
        fastal.gradient_embedding(P, np.ones((4, 2), np.float32), labels=np.zeros(4))


@pytest.mark.parametrize("bias", [False, True])
def test_dense_of_no_rows_is_an_empty_matrix(bias):
    """reshape(0, -1) cannot infer the width: dense([]) raised torch's RuntimeError."""
    emb = fastal.GradientEmbedding(np.ones((3, 2)), np.ones((3, 4)))
    if bias:
        emb = fastal.gradient_embedding(np.full((3, 2), 0.5), np.ones((3, 4)), bias=True)
    width = 2 * (5 if bias else 4)
    assert emb.dense([]).shape == (0, width)
    assert emb.subset([]).dense().shape == (0, width)


@pytest.mark.parametrize("call", ["kcenter", "min_distance", "kmeans_pp"])
def test_factors_whose_squares_underflow_are_refused(call):
    """A ~ 1e-24 beside features ~ 1e14 in float32: |g| ~ 1e-10 is fine but |A|² underflows to 0,
    and the factored kernels, which read |A|², |H|² and their dot products, gave every distance
    0 and the lowest indices as picks, silently. In float64 the picks are the reference's."""
    rng = np.random.default_rng(0)
    A = (rng.normal(size=(8, 3)) * 1e-24).astype(np.float32)
    H = (rng.normal(size=(8, 5)) * 1e14).astype(np.float32)
    emb = fastal.GradientEmbedding(A, H)
    run = {
        "kcenter": lambda e: fastal.kcenter_greedy(e, 4, labeled=[0]),
        "min_distance": lambda e: fastal.min_distance(e, e.subset([0])),
        "kmeans_pp": lambda e: fastal.kmeans_pp(e, 4, seed=0),
    }[call]
    with pytest.raises(ValueError, match="too unbalanced for float32"):
        run(emb)
    wide = fastal.GradientEmbedding(A.astype(np.float64), H.astype(np.float64))
    if call == "kcenter":
        dense = wide.dense()
        want = fastal.kcenter_greedy(dense, 4, labeled=[0])
        np.testing.assert_array_equal(run(wide), want)
    else:
        run(wide)
