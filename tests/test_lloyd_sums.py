"""The float64 sums of the Lloyd kernels (lloyd::RowSums in csrc/cpu/lloyd_tile.h). Past a size,
thread-private k x d sums give way to a second pass in which each thread adds the rows of its own
centres in row order. That pass must give the serial row-order sums bit for bit whatever the
thread count, the same labels and counts as the private sums, and the bounded kernel must still
equal the plain one bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import mixture
from numpy.testing import assert_allclose, assert_array_equal
from test_kmeans_bounded import lloyd_pair

import fastal
from fastal import _blas, _lloyd, _lloyd_fused


def row_order_sums(X: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """float64 sums per label, each row added in turn (np.add.at is unbuffered, in index order)."""
    sums = np.zeros((k, X.shape[1]))
    np.add.at(sums, labels, X.astype(np.float64))
    return sums


def plain_step(X: np.ndarray, centres: np.ndarray):
    info = fastal._validate.check_matrix(X, "X")
    xt = torch.from_numpy(X)
    step = _lloyd_fused._fused_lloyd(info, centres.shape[0])
    xsq = _lloyd._row_sqnorms(xt, xt.dtype)
    with _blas._one_blas_thread():
        return [a.numpy() for a in step(xt, xsq, torch.from_numpy(centres))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 255, 3001])  # one row, under a chunk, many chunks
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_second_pass_gives_the_row_order_sums(monkeypatch, dtype, n, threads):
    rng = np.random.default_rng(n)
    X = (mixture(max(n, 40), 7, 12, seed=n)[:n] * 10).astype(dtype)
    centres = np.ascontiguousarray(rng.normal(scale=10, size=(40, 7)).astype(dtype))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # one libgomp: fastal's team size too
    try:
        monkeypatch.setattr(_lloyd_fused, "_PARTIAL_LIMIT", -1)
        labels, dist2, private_sums, counts = plain_step(X, centres)
        monkeypatch.setattr(_lloyd_fused, "_PARTIAL_LIMIT", 0)
        got = plain_step(X, centres)
    finally:
        torch.set_num_threads(before)
    assert_array_equal(got[0], labels)
    assert_array_equal(got[1], dist2)
    assert_array_equal(got[3], counts)
    assert_array_equal(got[3], np.bincount(labels, minlength=40))
    assert_array_equal(got[2], row_order_sums(X, labels, 40))
    assert_allclose(private_sums, got[2], rtol=1e-12, atol=1e-9)


def test_one_crowded_centre_and_empty_ones(monkeypatch):
    """Most rows on one centre and most centres empty: the centre ranges of the threads are then
    very uneven, and some are empty."""
    rng = np.random.default_rng(7)
    X = np.concatenate([rng.normal(size=(2500, 5)), rng.normal(size=(30, 5)) + 50])
    centres = np.concatenate(
        [np.zeros((1, 5)), 50 + rng.normal(size=(3, 5)), 1e4 + np.zeros((60, 5))]
    )
    monkeypatch.setattr(_lloyd_fused, "_PARTIAL_LIMIT", 0)
    labels, _, sums, counts = plain_step(X, np.ascontiguousarray(centres))
    assert counts[0] == 2500
    assert counts[4:].sum() == 0
    assert_array_equal(sums, row_order_sums(X, labels, centres.shape[0]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bounded_steps_still_equal_the_plain_steps(monkeypatch, dtype):
    monkeypatch.setattr(_lloyd_fused, "_PARTIAL_LIMIT", 0)
    X = mixture(3000, 24, 30, seed=1).astype(dtype)
    for _, want, got, _ in lloyd_pair(X, 64, steps=6):
        assert_array_equal(got[0].numpy(), want[0].numpy())
        assert_array_equal(got[1].numpy(), want[2].numpy())
        assert_array_equal(got[2].numpy(), want[3].numpy())
        assert_array_equal(want[2].numpy(), row_order_sums(X, want[0].numpy(), 64))


def test_kmeans_fit_is_the_same_either_way(monkeypatch):
    X = mixture(4000, 16, 50, seed=3).astype(np.float32)
    want = fastal.kmeans(X, 60, seed=0)
    monkeypatch.setattr(_lloyd_fused, "_PARTIAL_LIMIT", 0)
    got = fastal.kmeans(X, 60, seed=0)
    assert_array_equal(np.asarray(got.labels), np.asarray(want.labels))
    assert got.n_iter == want.n_iter
    assert_allclose(np.asarray(got.centres), np.asarray(want.centres), rtol=1e-6, atol=1e-6)


def test_partial_limit_reaches_both_kernels():
    """The binding takes partial_limit (bytes; -1 the kernel's rule) on both Lloyd kernels."""
    cpu = fastal._ext.cpu
    for name in ("kmeans_lloyd_step_float32", "kmeans_lloyd_bounded_step_float64"):
        assert "partial_limit" in getattr(cpu, name).__doc__


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_segment_sum_adds_every_threads_rows(dtype):
    """segment_sum (the CPU update step of the torch Lloyd path, _lloyd._segment_means): above
    2^15 elements each thread sums its rows into a private float64 buffer, then the buffers are
    added. No test reached that branch (the kmeans pools that use it are small), so a reduction
    that dropped one thread's buffer passed. Against float64 np.add.at."""
    rng = np.random.default_rng(7)
    n, d, k = 5003, 17, 9
    X = torch.from_numpy(rng.normal(size=(n, d))).to(getattr(torch, dtype))
    labels = rng.integers(0, k, n).astype(np.int64)
    x = X.view(torch.int16).numpy().view(np.uint16) if X.element_size() == 2 else X.numpy()
    sums, counts = getattr(fastal._ext.cpu, f"segment_sum_{dtype}")(x, labels, k)
    want = np.zeros((k, d))
    np.add.at(want, labels, X.to(torch.float64).numpy())
    assert_array_equal(counts, np.bincount(labels, minlength=k))
    assert_allclose(sums, want, rtol=1e-12, atol=1e-12)
