"""``gradient_embedding(bias=True)`` keeps the features as they are and the bias gradient's column
implicit (the CPU kernels read a trailing 1 that is not stored): no copy of the largest array.
What it computes is what the same embedding with the column stored
(``GradientEmbedding(A, [h, 1])``) computes: the factors and dense rows exactly, the norms and
distances to rounding (the 1 is added after the dot product rather than inside it, so exact ties
may break differently), and the k-center, k-means++ and min-distance picks on these data, in every
storage dtype and mixed with stored-column embeddings; the kernels refuse a malformed pool
tuple."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

import fastal
import fastal.strategies
from fastal import _ext
from fastal._pool import cpu_pool, pool_info

DTYPES = ["float64", "float32", "float16", "bfloat16"]
RTOL = {"float64": 1e-12, "float32": 2e-6, "float16": 2e-6, "bfloat16": 2e-6}


def _data(dtype, n=300, d=9, C=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3, size=(6, d))
    h = centres[rng.integers(0, 6, n)] + rng.normal(size=(n, d))
    h[n // 2] = h[10]  # a duplicate row
    p = rng.dirichlet(np.ones(C) * 0.7, size=n)
    t = getattr(torch, dtype)
    return torch.from_numpy(p).to(t), torch.from_numpy(h).to(t)


def _pair(dtype, **kw):
    """(implicit, stored): the same embedding with the bias column implicit and stored."""
    p, h = _data(dtype, **kw)
    implicit = fastal.gradient_embedding(p, h, bias=True)
    stored = fastal.GradientEmbedding(implicit.A, implicit.H)
    return implicit, stored, h


@pytest.mark.parametrize("dtype", DTYPES)
def test_factors_norms_and_dense_rows(dtype):
    implicit, stored, h = _pair(dtype)
    assert implicit._bias
    assert not stored._bias
    assert implicit._h.data_ptr() == h.data_ptr()  # the features themselves: no copy
    H = implicit.H
    assert H.shape == (h.shape[0], h.shape[1] + 1) == (implicit.n, implicit.dh)
    assert torch.equal(H[:, :-1], h)
    assert bool((H[:, -1] == 1).all())
    assert implicit.dim == stored.dim
    assert implicit.shape == stored.shape
    assert_allclose(implicit.sqnorm.double(), stored.sqnorm.double(), rtol=RTOL[dtype])
    assert torch.equal(implicit.dense(), stored.dense())
    assert torch.equal(implicit.dense([3, 0, 3]), stored.dense([3, 0, 3]))
    for (s1, a), (s2, b) in zip(implicit.iter_dense(64), stored.iter_dense(64), strict=True):
        assert s1 == s2
        assert torch.equal(a, b)
    sub = implicit.subset([5, 2, 7])
    assert sub._bias
    assert torch.equal(sub.dense(), stored.subset([5, 2, 7]).dense())
    assert implicit._largest_entry() == stored._largest_entry()


def test_numpy_features_are_not_copied_and_H_is_read_only():
    p, h = (t.numpy() for t in _data("float32"))
    emb = fastal.gradient_embedding(p, h, bias=True)
    assert np.shares_memory(emb._h.numpy(), h)
    H = emb.H
    assert isinstance(H, np.ndarray)
    assert not H.flags.writeable
    assert_array_equal(H, np.c_[h, np.ones(len(h), np.float32)])


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kcenter_and_kmeanspp_equal_the_stored_column(dtype, prune):
    implicit, stored, _ = _pair(dtype, n=400)
    labeled = np.arange(0, 400, 37)
    a = fastal.kcenter(implicit, 25, labeled=labeled, prune=prune)
    b = fastal.kcenter(stored, 25, labeled=labeled, prune=prune)
    assert_array_equal(a.indices, b.indices)
    assert_allclose(a.radius, b.radius, rtol=1e-5)
    assert_array_equal(fastal.kcenter_greedy(implicit, 30, seed=1, prune=prune),
                       fastal.kcenter_greedy(stored, 30, seed=1, prune=prune))  # fmt: skip
    assert_array_equal(fastal.kmeans_pp(implicit, 20, seed=2, prune=prune),
                       fastal.kmeans_pp(stored, 20, seed=2, prune=prune))  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
def test_min_distance_any_mix_of_implicit_and_stored(dtype):
    implicit, stored, _ = _pair(dtype, n=500)
    want_d, want_i = fastal.min_distance(stored, stored.subset(np.arange(0, 500, 9)))
    # the expansion |g|² + |g'|² - 2 (a·a')(h·h') rounds to ~sqrt(eps s) near 0 (rows of Y)
    eps = np.finfo(np.float64 if dtype == "float64" else np.float32).eps
    atol = 4 * np.sqrt(eps * float(stored.sqnorm.max()))
    for X in (implicit, stored):
        for Y in (implicit.subset(np.arange(0, 500, 9)), stored.subset(np.arange(0, 500, 9))):
            d, i = fastal.min_distance(X, Y)
            far = want_d.double() > 10 * atol
            assert_array_equal(i[far], want_i[far])
            assert_allclose(d.double(), want_d.double(), rtol=1e-5, atol=atol)


def test_distances_against_a_float64_reference():
    implicit, _, _ = _pair("float64", n=120)
    G = implicit.dense().numpy()
    Y = np.arange(0, 120, 11)
    d, i = fastal.min_distance(implicit, implicit.subset(Y))
    ref = ((G[:, None, :] - G[None, Y, :]) ** 2).sum(-1)
    assert_array_equal(i, ref.argmin(1))
    atol = 4 * np.sqrt(np.finfo(np.float64).eps * float(implicit.sqnorm.max()))  # rows of Y: 0
    assert_allclose(d.numpy(), np.sqrt(ref.min(1)), rtol=1e-9, atol=atol)


def test_strategies_with_bias_equal_the_stored_column():
    p, h = _data("float32", n=400)
    pool = {"probs": p, "features": h}
    hb = torch.cat([h, torch.ones(len(h), 1)], 1)
    for cls in (fastal.strategies.BADGE, fastal.strategies.CoreSetGradients):
        a = cls(bias=True).select(pool, 12, np.arange(10), seed=3)
        b = cls(bias=False).select({"probs": p, "features": hb}, 12, np.arange(10), seed=3)
        assert_array_equal(a.indices, b.indices)


def test_kernels_refuse_a_malformed_factored_pool():
    implicit, _, _ = _pair("float32", n=50)
    pool = cpu_pool(implicit, pool_info(implicit))
    assert len(pool) == 4
    assert pool[3] is True
    kernel = _ext.cpu.min_sqdist_to_set_float32
    with pytest.raises(ValueError, match=r"pool must be \(X,\) or \(A, H, sqnorm, bias\)"):
        kernel(pool[:3], pool)
    with pytest.raises(ValueError, match=r"bias \(pool\[3\]\) must be a bool"):
        kernel((*pool[:3], 1), pool)
    with pytest.raises(ValueError, match="Y must be factored like X"):
        kernel(pool, pool[:1])
