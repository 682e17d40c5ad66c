"""``fastal._cpu.indexed_distances_float64``: robust k-center's distance matrix and its distances
to the labeled set, read by row index from the pool (no gathered copies), all threads.

Checked against a float64 numpy reference (direct differences, as scipy's cdist): within a few
ulps of the pair's scale, exactly 0 between identical rows, the nearest-only form equal to the
matrix's row minimum, empty index sets, and out-of-range indices refused."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import fastal

mip = importlib.import_module("fastal._covering_mip")  # robust k-center's distance matrix
kernel = fastal._ext.cpu.indexed_distances_float64


def reference(X, rows, cols):
    diff = X[rows][:, None, :] - X[cols][None, :, :]
    return np.sqrt(np.sum(diff * diff, axis=2))


@pytest.mark.parametrize(("n", "d"), [(1, 1), (40, 3), (300, 17), (257, 130), (90, 1000)])
def test_distances_equal_the_float64_reference(n, d):
    rng = np.random.default_rng(d)
    X = rng.normal(size=(n, d)) * 10.0 ** rng.integers(-3, 4, size=(n, 1))
    X[n // 2] = X[0]  # a duplicate pair (row 0 with itself when n = 1)
    rows = rng.permutation(n)[: max(1, n // 2 + 1)]
    cols = rng.integers(0, n, size=max(1, n // 3 + 2))  # repeats allowed
    rows = np.append(rows, 0) if n > 1 else rows
    cols = np.append(cols, n // 2)
    got = kernel(X, rows, cols)
    ref = reference(X, rows, cols)
    scale = np.sqrt(np.sum(X[rows] ** 2, 1))[:, None] + np.sqrt(np.sum(X[cols] ** 2, 1))[None, :]
    assert got.shape == ref.shape
    assert got.dtype == np.float64
    assert np.all(np.abs(got - ref) <= 1e-14 * scale * np.sqrt(d))
    same = X[rows][:, None, :] == X[cols][None, :, :]
    assert_array_equal(got[same.all(axis=2)], 0.0)  # identical rows: exactly 0
    nearest = kernel(X, rows, cols, True)
    assert_array_equal(nearest, got.min(axis=1))


def test_empty_index_sets():
    X = np.ones((5, 3))
    none, some = np.empty(0, np.int64), np.array([1, 2], np.int64)
    assert kernel(X, none, some).shape == (0, 2)
    assert kernel(X, some, none).shape == (2, 0)
    assert_array_equal(kernel(X, some, none, True), [np.inf, np.inf])


def test_out_of_range_indices_are_refused():
    X = np.zeros((4, 2))
    ok = np.array([0, 3], np.int64)
    for bad in (4, -1):
        idx = np.array([1, bad], np.int64)
        with pytest.raises(
            ValueError, match=rf"^rows\[1\] = {bad} is out of range for X with 4 rows"
        ):
            kernel(X, idx, ok)
        with pytest.raises(
            ValueError, match=rf"^cols\[1\] = {bad} is out of range for X with 4 rows"
        ):
            kernel(X, ok, idx, True)


def test_calls_are_split_for_interrupts_and_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 20))
    rows, cols = np.arange(0, 500, 2), np.arange(1, 500, 3)
    whole = mip._indexed_distances(X, rows, cols)
    near = mip._indexed_distances(X, rows, cols, nearest_only=True)
    calls = []
    real = fastal._ext.cpu.indexed_distances_float64

    def counting(*args):
        calls.append(len(args[1]))
        return real(*args)

    monkeypatch.setattr(mip, "_DISTANCE_WORK", 7 * cols.size * 20)
    monkeypatch.setattr(fastal._ext.cpu, "indexed_distances_float64", counting)
    assert_array_equal(mip._indexed_distances(X, rows, cols), whole)
    assert_array_equal(mip._indexed_distances(X, rows, cols, nearest_only=True), near)
    assert max(calls) == 7
    assert sum(calls) == 2 * rows.size
    assert_allclose(whole, reference(X, rows, cols), rtol=1e-13)
