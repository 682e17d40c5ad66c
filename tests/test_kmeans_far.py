"""k-means on rows far from the origin, on tiny rows and from far initial centres. The GEMM form
|x|² - 2 x·c + |c|² rounds away the gaps between centres when |x| is large: labels, the reported
inertia, the row an empty cluster takes and KMeansSampling's picks must all come from direct
distances Σ (x - c)² instead (a float64 reference checks them). Rows that differ by less than the
square root of the smallest normal number are refused, as overflowing ones are.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_argmin_valid

import fastal
from fastal import _lloyd
from fastal.strategies import KMeansSampling

kmeans_module = importlib.import_module("fastal.kmeans")


def offset_pool(n: int, d: int, k: int, offset: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    return (centres[rng.integers(k, size=n)] + rng.normal(size=(n, d)) * 0.3 + offset).astype(
        np.float32
    )


def assert_true_fit(X: np.ndarray, fit) -> None:
    """Labels nearest their returned centre and the reported inertia theirs, in float64."""
    X64, C64 = X.astype(np.float64), np.asarray(fit.centres, dtype=np.float64)
    labels = np.asarray(fit.labels)
    d2 = ((X64[:, None, :] - C64[None]) ** 2).sum(-1)
    dist = np.sqrt(d2[np.arange(X64.shape[0]), labels])
    assert_argmin_valid(X64, C64, dist, labels, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fit.inertia, (dist**2).sum(), rtol=1e-4)


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e4])
@pytest.mark.parametrize("minibatch", [None, 1024])
@pytest.mark.parametrize("path", ["fused", "torch_gemm"])
def test_labels_and_inertia_far_from_the_origin(monkeypatch, offset, minibatch, path):
    """Before: mini-batches at offset 1e4 mislabelled 19,293 of 20,000 rows, and full-batch
    inertia was 44,000x the true one. "torch_gemm" is the path CUDA takes (the fused CPU kernel
    switched off): it assigns about the centres' mean."""
    if path == "torch_gemm":
        monkeypatch.setattr(kmeans_module, "_fused_lloyd", lambda info, k: None)
    X = offset_pool(4000, 8, 40, offset, seed=1)
    assert_true_fit(X, fastal.kmeans(X, 40, seed=0, minibatch=minibatch, max_iter=30))


def test_an_empty_cluster_takes_the_truly_farthest_row():
    """31 tight clusters near 1e4, one at 0 with an outlier at distance 3, and a second copy of
    the first centre, which gets no rows: it must take the outlier."""
    rng = np.random.default_rng(0)
    far = 1e4 + rng.normal(size=(31, 8)) * 100
    X = np.repeat(far, 20, axis=0) + rng.normal(size=(620, 8)) * 0.01
    X = np.vstack([X, np.zeros((20, 8)), [[3.0] + [0.0] * 7]]).astype(np.float32)
    init = np.vstack([far, np.zeros((1, 8)), far[:1]]).astype(np.float32)
    fit = fastal.kmeans(X, 33, init=init, max_iter=1)
    assert np.array_equal(np.asarray(fit.centres)[-1], X[-1])


def test_kmeans_sampling_reports_the_true_inertia():
    """Its diagnostics' inertia is the fit's, which users compare across seeds (before: the
    GEMM form's, thousands of times the true one at 1e4)."""
    X = offset_pool(3000, 8, 40, 1e4, seed=2)
    sel = KMeansSampling().select(X, 40, seed=0)
    fit = fastal.kmeans(X, 40, seed=0)
    assert sel.diagnostics["inertia"] == fit.inertia
    assert_true_fit(X, fit)


def test_a_far_initial_centre_fits_pruned_as_unpruned():
    """Before: prune=True grouped the centres with a float32 k-means, which overflowed on a
    centre near 1e20, and blamed X."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 4)).astype(np.float32)
    init = np.vstack([X[:39], rng.normal(size=(1, 4)) * 1e20]).astype(np.float32)
    a = fastal.kmeans(X, 40, init=init, prune=False)
    b = fastal.kmeans(X, 40, init=init, prune=True)
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
    np.testing.assert_array_equal(np.asarray(a.centres), np.asarray(b.centres))


@pytest.mark.parametrize(("dtype", "scale"), [("float32", 1e-30), ("float16", 2.0**-24)])
def test_rows_too_close_for_squared_distances_are_refused(dtype, scale):
    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(size=(50, 3)), rng.normal(size=(50, 3)) + 5]) * scale
    X = X.astype(dtype)
    if dtype == "float16":
        X[:] = X[0]  # float16's subnormals: rows equal (distances 0 for real), nothing to refuse
        assert fastal.kmeans(X, 2, seed=0).inertia == 0.0
        return
    with pytest.raises(ValueError, match="underflow float32; scale X up or pass float64"):
        fastal.kmeans(X, 2, seed=0)
    fit = fastal.kmeans(X.astype(np.float64), 2, seed=0)  # float64 has the range
    assert len(set(np.asarray(fit.labels).tolist())) == 2


def test_k_below_one():
    X = offset_pool(200, 4, 5, 0.0, seed=4)
    with pytest.raises(ValueError, match="k must be >= 1, got -1"):
        fastal.kmeans(X, -1)


def test_read_only_arrays_raise_no_torch_warning():
    """Under Python's default warning filters (this suite turns warnings into errors, so in a
    subprocess): torch warns about every non-writable numpy array it wraps; fastal only reads."""
    code = (
        "import numpy as np, fastal\n"
        "X = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)\n"
        "X.setflags(write=False)\n"
        "fastal.kmeans(X, 3, seed=0); fastal.kcenter_greedy(X, 3, seed=0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "not writable" not in out.stderr


def test_the_largest_norm_first_past_float32_squares():
    """Rows near 2e19: their float32 squares overflow (the first inf won, row 0); the distances
    between them still fit, so nothing was refused."""
    X = np.array([[2e19], [3e19], [2.5e19]], dtype=np.float32)
    np.testing.assert_array_equal(fastal.kmeans_pp(X, 3, first="norm", seed=0), [1, 0, 2])


def test_ntk_features_refuses_an_astronomical_class_count():
    with pytest.raises(ValueError, match="n_classes is too large"):
        fastal.ntk_features(np.ones((3, 2), np.float32), 10**400)


@pytest.mark.parametrize("case", ["wide", "constant column"])
@pytest.mark.parametrize("minibatch", [None, 64])
def test_the_tolerance_does_not_overflow(case, minibatch):
    """scikit-learn's tolerance (tol · mean column variance) was summed in float32 from X itself:
    a pool 4e17 wide, or a constant column of 1e30 (whose float32 mean is an ulp off, squared),
    made it inf, and the fit stopped after one iteration as 'converged'. The variance of X - x0
    in float64: the iterations of the same pool scaled to O(1)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 4)) * 10
    unit = centres[rng.integers(4, size=400)] + rng.normal(size=(400, 4))
    if case == "wide":
        X, Y = (unit * 4e17).astype(np.float32), unit.astype(np.float32)
    else:
        X, Y = np.c_[unit, np.full(400, 1e30)].astype(np.float32), np.c_[unit, np.zeros(400)]
        Y = Y.astype(np.float32)
    kw = {"seed": 1, "minibatch": minibatch, "max_iter": 50}
    tol = _lloyd._tol_abs(__import__("torch").from_numpy(X), 1e-4)
    assert np.isfinite(tol)
    got, want = fastal.kmeans(X, 8, **kw), fastal.kmeans(Y, 8, **kw)
    assert got.n_iter == want.n_iter
    np.testing.assert_array_equal(got.labels, want.labels)


@pytest.mark.parametrize("prune", [False, True])
def test_a_gemm_product_that_overflows_is_checked_directly(prune):
    """The fused step's GEMM filter takes |c|² - 2 x·c in float32: with |x|, |c| ~ 1.8e19 the
    product overflowed to -inf while every squared distance fits, that centre 'led' by inf and
    took the row unchecked (label 0 at 2.97e38 instead of centre 1 at 7.4e37)."""
    x = np.array([1.8e19, 0.0])
    near, far = np.array([9.4e18, 0.0]), np.array([9.5e18, 1.5e19])  # 2 x·far > FLT_MAX
    fill = [np.array([0.0, -1e18 * (i + 1) / 40]) for i in range(30)]
    C = np.array([far, near, *fill]).astype(np.float32)  # k = 32: the fused GEMM path
    X = np.vstack([x[None], C]).astype(np.float32)
    D = ((X.astype(np.float64)[:, None] - C.astype(np.float64)[None]) ** 2).sum(-1)
    pairs = ((X[:, None].astype(np.float64) - X[None]) ** 2).sum(-1)
    assert pairs.max() < np.finfo(np.float32).max  # every squared distance fits float32
    got = fastal.kmeans(X, 32, init=C, max_iter=1, prune=prune, tol=0)
    assert got.labels[0] == 1
    np.testing.assert_array_equal(got.labels, D.argmin(1))
