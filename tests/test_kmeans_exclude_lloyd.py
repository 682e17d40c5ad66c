"""k-means with excluded rows (KMeansSampling's and ALLY's labeled rows): full-batch Lloyd on the
CPU runs over the whole pool and takes the excluded rows out of each step, without copying the
other rows. It must give the k-means of ``X[rest]``:

- labels and iteration counts exactly, centres and inertia up to rounding, for float64 / float32
  rows, the GEMM-fused step (k >= 32) and the min-distance one (small k), both inits, an empty
  cluster that takes the farthest (non-excluded) row (exact where the float64 sums are: float32
  rows, and the float64 rows here; other float64 rows can round the sums less the excluded rows
  apart from the sums of the other rows, and a near-tie can then go the other way);
- mini-batch draws its batches from the other rows in place: the same batches, centres, labels
  and epochs as on ``X[rest]``;
- the cases it does not take (more than a quarter excluded, a non-finite excluded row) gather
  ``X[rest]`` and give exactly its result, NaN rows outside ``rest`` ignored as before;
- KMeansSampling and ALLY go through it and pick what they picked on the gathered rows.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from fastal import _lloyd, _seeding
from fastal.strategies import KMeansSampling

km = importlib.import_module("fastal.kmeans")  # the module (fastal.kmeans is the function)


def _pool(n, d, dtype, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(12, d))
    return (centres[rng.integers(12, size=n)] + rng.normal(size=(n, d))).astype(dtype)


def _spy(monkeypatch):
    """Count the fits that took the in-place path."""
    used = []
    init = _lloyd._Excluded.__init__

    def counting(self, xt, exclude, **kwargs):
        used.append(exclude.size)
        init(self, xt, exclude, **kwargs)

    monkeypatch.setattr(_lloyd._Excluded, "__init__", counting)
    return used


def _same_fit(got, want, rtol):
    np.testing.assert_array_equal(np.asarray(got.labels), np.asarray(want.labels))
    np.testing.assert_allclose(
        np.asarray(got.centres), np.asarray(want.centres), rtol=rtol, atol=rtol
    )
    np.testing.assert_allclose(got.inertia, want.inertia, rtol=rtol)
    assert (got.n_iter, got.converged) == (want.n_iter, want.converged)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("k", [5, 40])  # min-distance step, GEMM-fused step
@pytest.mark.parametrize("init", ["k-means++", "random"])
@pytest.mark.parametrize("seed", range(3))
def test_in_place_equals_the_gathered_rows(monkeypatch, dtype, k, init, seed):
    n = 1500
    x = _pool(n, 8, dtype, seed)
    excl = np.random.default_rng(seed).choice(n, 200, replace=False).astype(np.int64)
    rest = np.delete(np.arange(n), np.sort(excl))
    used = _spy(monkeypatch)
    got = km._kmeans(x, k, seed=seed, init=init, exclude=excl)
    assert used == [200]
    want = km._kmeans(np.ascontiguousarray(x[rest]), k, seed=seed, init=init)
    _same_fit(got, want, 1e-12 if dtype == "float64" else 1e-5)


def test_an_empty_cluster_takes_the_farthest_row_that_is_not_excluded(monkeypatch):
    # far outliers among the excluded rows: were they candidates, an emptied cluster would take one
    rng = np.random.default_rng(3)
    x = np.r_[rng.normal(size=(300, 2)), [[1e3, 1e3], [-1e3, 1e3]], rng.normal(size=(5, 2))]
    init = x[[0, 0, 1, 2]] + [[0, 0], [5e2, 5e2], [0, 1e-3], [1e-3, 0]]  # an emptied centre
    excl = np.array([300, 301], dtype=np.int64)
    rest = np.delete(np.arange(x.shape[0]), excl)
    used = _spy(monkeypatch)
    got = km._kmeans(x, 4, init=init, exclude=excl, max_iter=20)
    assert used == [2]
    _same_fit(got, km._kmeans(x[rest], 4, init=init, max_iter=20), 1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("k", [5, 40])
@pytest.mark.parametrize("seed", range(2))
def test_minibatch_in_place_equals_the_gathered_rows(monkeypatch, dtype, k, seed):
    n = 2000
    x = _pool(n, 8, dtype, seed)
    excl = np.random.default_rng(seed).choice(n, 300, replace=False).astype(np.int64)
    rest = np.delete(np.arange(n), np.sort(excl))
    used = _spy(monkeypatch)
    gathers = []
    other_rows = _seeding._other_rows

    def recording(n_all, exclude):
        gathers.append(n_all)
        return other_rows(n_all, exclude)

    # looked up by k-means++ (fastal._seeding) and by the gathered path of fastal.kmeans._kmeans
    monkeypatch.setattr(_seeding, "_other_rows", recording)
    monkeypatch.setattr(km, "_other_rows", recording)
    got = km._kmeans(x, k, seed=seed, exclude=excl, minibatch=128, max_iter=15)
    assert used == [300]
    assert gathers == [n]  # k-means++'s first draw only: the batches index the pool itself
    want = km._kmeans(np.ascontiguousarray(x[rest]), k, seed=seed, minibatch=128, max_iter=15)
    _same_fit(got, want, 1e-12 if dtype == "float64" else 1e-5)


@pytest.mark.parametrize("case", ["share", "nan"])
def test_the_cases_it_leaves_to_the_gathered_rows(monkeypatch, case):
    n = 800
    x = _pool(n, 6, "float64", 1)
    n_excl = 300 if case == "share" else 40
    excl = np.random.default_rng(1).choice(n, n_excl, replace=False).astype(np.int64)
    if case == "nan":
        x[excl[0], 2] = np.nan  # outside rest: ignored, as on x[rest]
    rest = np.delete(np.arange(n), np.sort(excl))
    for kwargs in ({}, {"minibatch": 64}):
        used = _spy(monkeypatch)
        got = km._kmeans(x, 7, seed=2, exclude=excl, **kwargs)
        assert used == []
        want = km._kmeans(np.ascontiguousarray(x[rest]), 7, seed=2, **kwargs)
        _same_fit(got, want, 0)


def test_kmeans_sampling_takes_the_in_place_path(monkeypatch):
    n = 1200
    x = _pool(n, 8, "float32", 4)
    labeled = np.random.default_rng(4).choice(n, 100, replace=False)
    rest = np.delete(np.arange(n), np.sort(labeled))
    used = _spy(monkeypatch)
    got = KMeansSampling().select({"features": x}, 40, labeled, seed=5).indices
    assert used == [100]
    res = km._kmeans(np.ascontiguousarray(x[rest]), 40, seed=5, name="features")
    labels = np.asarray(res.labels)
    d2 = ((x[rest].astype(np.float64) - np.asarray(res.centres, np.float64)[labels]) ** 2).sum(1)
    order = np.lexsort((np.arange(rest.size), d2, labels))
    first = np.r_[True, labels[order][1:] != labels[order][:-1]]
    nearest = np.full(40, -1)
    nearest[labels[order][first]] = order[first]
    assert (nearest >= 0).all()  # no empty cluster in this pool
    np.testing.assert_array_equal(np.asarray(got), rest[nearest])


def test_ally_picks_as_on_the_gathered_rows(monkeypatch):
    from fastal.strategies import ALLY

    n = 1000
    x = _pool(n, 6, "float32", 6)
    rng = np.random.default_rng(6)
    labeled = rng.choice(n, 80, replace=False)
    pool = {"features": x, "dual_predictions": rng.random(n)}
    used = _spy(monkeypatch)
    in_place = ALLY().select(pool, 30, labeled, seed=7)
    assert used == [80]
    monkeypatch.setattr(_lloyd._Excluded, "applies", classmethod(lambda *a: False))
    gathered = ALLY().select(pool, 30, labeled, seed=7)
    assert used == [80]
    np.testing.assert_array_equal(np.asarray(in_place.indices), np.asarray(gathered.indices))
    np.testing.assert_array_equal(
        in_place.diagnostics["clusters"], gathered.diagnostics["clusters"]
    )


@pytest.mark.parametrize("layout", ["fortran", "byteswapped", "torch_strided"])
def test_a_pool_the_kernels_cannot_read_in_place_is_copied_once(monkeypatch, layout):
    """Strided or byte-swapped rows are made C-contiguous once per fit, not at every Lloyd step
    (each step hands the rows to the kernels), with the labels of the contiguous pool."""
    import torch

    import fastal._interop as interop

    x = _pool(3000, 8, "float32", 8)
    X = {
        "fortran": np.asfortranarray(x),
        "byteswapped": x.astype(">f4"),
        "torch_strided": torch.from_numpy(x).T.contiguous().T,
    }[layout]
    buffers = []
    storage = interop.host_storage

    def recording(arr, info):
        out = storage(arr, info)
        if out.shape == x.shape:
            buffers.append(out)
        return out

    monkeypatch.setattr(interop, "host_storage", recording)
    got = km._kmeans(X, 40, seed=0, max_iter=5, tol=0)
    assert got.n_iter == 5
    assert len(buffers) > 5
    assert all(np.shares_memory(b, buffers[0]) for b in buffers)
    want = km._kmeans(x, 40, seed=0, max_iter=5, tol=0)
    np.testing.assert_array_equal(np.asarray(got.labels), np.asarray(want.labels))


@pytest.mark.parametrize("labeled", [[0, 1, 2, 3, 4], list(range(10, 40))])
def test_a_non_finite_row_is_named_by_its_row_of_the_pool(labeled):
    """The gathered path reported the NaN's position among the unlabeled rows (row 12 for pool
    row 17 with rows 0..4 labeled). A NaN in a labeled row is not read, and not an error."""
    X = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    X[50, 2] = np.nan if 50 not in labeled else 0.0
    X[45, 0] = np.inf
    message = r"^features contains NaN or Inf in 2 row\(s\), first at row 45$"
    with pytest.raises(ValueError, match=message):
        KMeansSampling().select({"features": X}, 3, labeled, seed=0)
    X[[45, 50]] = 0.0
    X[labeled[0], 1] = np.nan
    assert len(KMeansSampling().select({"features": X}, 3, labeled, seed=0).indices) == 3
