"""k-means++ with excluded rows (BADGE's labeled rows) runs on the whole pool in place: the same
picks as the seeding of the other rows alone, without gathering them.

- ``_kmeans_pp(X, exclude=L)`` equals ``rest[_kmeans_pp(X[rest])]`` for dense float64 / float32 rows
  and gradient embeddings, both first-pick rules, many seeds, excluded rows with the largest norm
  (the norm rule must skip them) and a budget that takes every other row.
- BADGE on the CPU never calls ``GradientEmbedding.subset`` and its picks are unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastal
from fastal import _seeding
from fastal.gradients import GradientEmbedding
from fastal.strategies import BADGE


def _pool(n, d, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, size=(n, 1))
    return x.astype(dtype)


def _excluded(x, n_excl, seed):
    """``n_excl`` rows in random order, the largest-norm row among them."""
    rng = np.random.default_rng(seed + 100)
    top = int(np.argmax((x.astype(np.float64) ** 2).sum(1)))
    others = rng.permutation(np.delete(np.arange(x.shape[0]), top))[: n_excl - 1]
    return rng.permutation(np.r_[top, others]).astype(np.int64)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("first", ["norm", "random"])
@pytest.mark.parametrize("seed", range(4))
def test_exclude_equals_the_seeding_of_the_other_rows(dtype, first, seed):
    n, n_excl = 500, 37
    x = _pool(n, 6, dtype, seed)
    excl = _excluded(x, n_excl, seed)
    rest = np.delete(np.arange(n), np.sort(excl))
    for k in (1, 25, n - n_excl):
        got = _seeding._kmeans_pp(x, k, seed=seed, first=first, exclude=excl)
        want = rest[_seeding._kmeans_pp(x[rest], k, seed=seed, first=first)]
        np.testing.assert_array_equal(got, want)
        assert not np.isin(got, excl).any()
    with pytest.raises(ValueError, match="k"):
        _seeding._kmeans_pp(x, n - n_excl + 1, seed=seed, first=first, exclude=excl)


@pytest.mark.parametrize("seed", range(3))
def test_exclude_on_a_gradient_embedding(seed):
    rng = np.random.default_rng(seed)
    n, C, d = 400, 5, 8
    probs = rng.dirichlet(np.ones(C), n).astype(np.float32)
    emb = fastal.gradient_embedding(probs, rng.normal(size=(n, d)).astype(np.float32))
    excl = rng.choice(n, 40, replace=False).astype(np.int64)
    rest = np.delete(np.arange(n), np.sort(excl))
    got = _seeding._kmeans_pp(emb, 30, seed=seed, first="norm", exclude=excl)
    want = rest[_seeding._kmeans_pp(emb.subset(rest), 30, seed=seed, first="norm")]
    np.testing.assert_array_equal(got, want)


def test_badge_on_the_cpu_gathers_no_rows(monkeypatch):
    rng = np.random.default_rng(7)
    n, C, d = 600, 4, 10
    pool = {"probs": rng.dirichlet(np.ones(C), n), "features": rng.normal(size=(n, d))}
    labeled = rng.choice(n, 50, replace=False)
    before = BADGE().select(pool, 40, labeled, seed=3).indices
    emb = fastal.gradient_embedding(pool["probs"], pool["features"])
    rest = np.delete(np.arange(n), np.sort(labeled))
    on_subset = rest[_seeding._kmeans_pp(emb.subset(rest), 40, seed=3, first="norm")]
    np.testing.assert_array_equal(before, on_subset)

    def no_gather(self, rows):
        raise AssertionError("BADGE gathered the unlabeled rows")

    monkeypatch.setattr(GradientEmbedding, "subset", no_gather)
    np.testing.assert_array_equal(BADGE().select(pool, 40, labeled, seed=3).indices, before)
