"""k-means on float16 / bfloat16 pools through the fused and bounded CPU Lloyd kernels: the rows
are widened to float32 inside the kernels (exactly), so a fit on a 16-bit pool must equal the fit
on its float32 copy bit for bit (labels, centres, iterations, inertia), whatever the BLAS, the
pruning, the init or the way the sums are added. Where the min-distance kernel assigns (few
centres, mini-batches), 16-bit rows meet the float32 centres themselves, never centres rounded to
16 bits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_argmin_valid, mixture
from numpy.testing import assert_array_equal
from test_kmeans_fused import use_blas

import fastal
from fastal import _blas, _ext, _lloyd_fused
from fastal.strategies import KMeansSampling

STORAGE = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def pool16(n: int, d: int, dtype: str, seed: int) -> torch.Tensor:
    return torch.from_numpy(mixture(n, d, 25, seed=seed).astype(np.float32)).to(STORAGE[dtype])


def assert_same_fit(got, want):
    assert_array_equal(np.asarray(got.labels), np.asarray(want.labels))
    assert_array_equal(np.asarray(got.centres), np.asarray(want.centres))
    assert (got.n_iter, got.converged, got.inertia) == (want.n_iter, want.converged, want.inertia)


@pytest.mark.parametrize("dtype", sorted(STORAGE))
@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("init", ["k-means++", "random"])
@pytest.mark.parametrize("blas", ["mkl", "openblas"])
def test_fit_equals_the_float32_copy(monkeypatch, dtype, prune, init, blas):
    use_blas(monkeypatch, blas)
    X = pool16(3000, 20, dtype, seed=1)
    got = fastal.kmeans(X, 40, seed=3, init=init, prune=prune)
    want = fastal.kmeans(X.to(torch.float32), 40, seed=3, init=init, prune=prune)
    assert_same_fit(got, want)
    assert got.centres.dtype == torch.float32
    if prune:
        assert got.distance_share < 1.0  # the bounded kernel ran


def test_numpy_float16_and_the_second_sums_pass(monkeypatch):
    monkeypatch.setattr(_lloyd_fused, "_PARTIAL_LIMIT", 0)
    X = pool16(2500, 33, "float16", seed=2).numpy()
    got = fastal.kmeans(X, 50, seed=0)
    assert_same_fit(got, fastal.kmeans(X.astype(np.float32), 50, seed=0))
    assert isinstance(got.labels, np.ndarray)


@pytest.mark.parametrize("dtype", sorted(STORAGE))
def test_the_step_kernels_equal_the_float32_ones(dtype):
    """One plain and one bounded step, straight through the bindings, on rows whose count and
    width leave partial SIMD blocks and chunks."""
    X = pool16(1037, 19, dtype, seed=4)
    wire = X.view(torch.int16).numpy().view(np.uint16)
    X32 = X.to(torch.float32).numpy()
    xsq = (X32 * X32).sum(1, dtype=np.float32)
    centres = np.ascontiguousarray(X32[::29][:36])
    gemm, local = _blas._gemm_backend("float32")
    cpu = _ext.cpu
    with _blas._one_blas_thread():
        want = cpu.kmeans_lloyd_step_float32(X32, xsq, centres, gemm, local)
        got = getattr(cpu, f"kmeans_lloyd_step_{dtype}")(wire, xsq, centres, gemm, local)
        for a, b in zip(got, want, strict=True):
            assert_array_equal(a, b)
        state = []
        bounded16 = getattr(cpu, f"kmeans_lloyd_bounded_step_{dtype}")
        for kernel, rows in ((cpu.kmeans_lloyd_bounded_step_float32, X32), (bounded16, wire)):
            labels = np.zeros(1037, np.int64)
            upper, glower = np.empty(1037, np.float32), np.empty(1037, np.float32)
            lower, offset = np.empty((1037, 4), np.float32), np.zeros(4)
            group = (np.arange(36) % 4).astype(np.int32)
            out = kernel(rows, xsq, centres, np.zeros(36), group, 4, True, labels, upper, glower,
                         lower, offset, gemm, local)  # fmt: skip
            state.append((labels, upper, glower, lower, *out))
    for a, b in zip(*state, strict=True):
        assert_array_equal(a, b)
    assert_array_equal(state[0][0], want[0])


def test_kmeans_sampling_on_a_float16_pool_picks_as_on_float32():
    X = pool16(2000, 24, "float16", seed=5)
    labeled = np.arange(0, 2000, 37)
    a = KMeansSampling().select(X, 60, labeled=labeled, seed=0)
    b = KMeansSampling().select(X.to(torch.float32), 60, labeled=labeled, seed=0)
    assert_array_equal(np.asarray(a.indices), np.asarray(b.indices))


def test_the_16bit_kernels_take_only_their_wire_type():
    cpu = _ext.cpu
    gemm, _ = _blas._gemm_backend("float32")
    X = np.zeros((4, 3), np.float16)  # numpy float16, not its uint16 bits
    with pytest.raises(TypeError):
        cpu.kmeans_lloyd_step_float16(
            X, np.zeros(4, np.float32), np.zeros((1, 3), np.float32), gemm
        )
    with pytest.raises(TypeError):  # the centres are float32 for 16-bit rows
        cpu.kmeans_lloyd_step_bfloat16(
            X.view(np.uint16), np.zeros(4, np.float32), np.zeros((1, 3), np.float16), gemm
        )


@pytest.mark.parametrize("dtype", sorted(STORAGE))
@pytest.mark.parametrize(("k", "minibatch"), [(5, None), (40, 512)])
def test_labels_are_nearest_to_the_float32_centres(dtype, k, minibatch):
    """Rows near 100, where bfloat16 values are 0.5 apart: centres rounded to the storage (as
    before) mislabelled 230 of 20,000 rows at k = 5 and 948 with mini-batches at k = 40."""
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.normal(size=(4000, 3)).astype(np.float32) * 3 + 100).to(STORAGE[dtype])
    fit = fastal.kmeans(X, k, seed=0, minibatch=minibatch)
    X64 = X.to(torch.float64).numpy()
    C64 = np.asarray(fit.centres, dtype=np.float64)
    d2 = ((X64[:, None, :] - C64[None]) ** 2).sum(-1)
    dist = np.sqrt(d2[np.arange(X64.shape[0]), np.asarray(fit.labels)])
    assert_argmin_valid(X64, C64, dist, np.asarray(fit.labels), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64", *sorted(STORAGE)])
def test_min_sqdist_to_centres_against_float64(dtype):
    """The binding behind those assignments: rows as stored, centres in the accumulation type;
    a repeated centre loses to its first copy."""
    rng = np.random.default_rng(1)
    X = torch.from_numpy(rng.normal(size=(301, 37))).to(getattr(torch, dtype))
    acc = np.float64 if dtype == "float64" else np.float32
    C = rng.normal(size=(9, 37)).astype(acc)
    C = np.ascontiguousarray(np.concatenate([C, C[:3]]))
    wire = X.view(torch.int16).numpy().view(np.uint16) if dtype in STORAGE else X.numpy()
    dist2, index = getattr(_ext.cpu, f"min_sqdist_to_centres_{dtype}")(wire, C)
    assert dist2.dtype == acc
    assert index.max() < 9
    X64 = X.to(torch.float64).numpy()
    assert_argmin_valid(X64, C.astype(np.float64), np.sqrt(dist2), index, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="centres must have shape"):
        getattr(_ext.cpu, f"min_sqdist_to_centres_{dtype}")(wire, np.ascontiguousarray(C[:, :5]))
