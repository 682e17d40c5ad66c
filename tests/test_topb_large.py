"""``fastal.iht_threshold`` at sizes where the CPU kernel's sampled threshold is in play.

``csrc/cpu/topb.cpp`` does not sort all n scores. It ranks a strided sample of
``m = min(n, 16384)`` scores (row ``j_k = int((k + 0.5) n / m)``), keeps the rows at or below the
sample's ``ceil(frac m)``-th score with ``frac = 1.5 b / n + 4 sqrt(b) / n`` (one parallel pass
once n > 65536), and runs ``nth_element`` + sort on the survivors only. When fewer than ``b`` rows
survive (the sample's scores are better than the rest), it retries with ``frac`` four times larger,
and the third attempt keeps every row. Those paths only differ from a plain sort when n > 16384, so
the small sizes of ``test_iht_threshold.py`` cannot reach them.

Here n is 16385 (one row outside the sample), 70001 (the parallel pass) and 300001, with
adversarial orderings:

- ``ascending`` / ``descending``: sorted ``s`` with ``sigma = 0`` (under the paper's rule every
  ``s_j > 0`` scores 0, so one end of the array is one big tie);
- ``ties``: a handful of distinct ``s`` and ``sigma`` values;
- ``hidden``: the best scores sit between the sample points (every sampled row is mediocre), so the
  threshold is loose and many survivors must still be ranked right;
- ``retry``: the sampled rows hold the best scores, so the first threshold keeps too few rows.
  :func:`kernel_attempts` replays the kernel's threshold arithmetic (a copy of the loop in
  ``select_top_b``) and the test asserts that this case needs a second pass (b = 5000 and
  ``n // 3`` at n >= 70001) and at n = 300001, b = 5000 the third, threshold-free one. There a
  third pass with a threshold would still keep b rows; at n = 2^20 + 1 it would not, so
  :func:`test_third_pass_keeps_every_row` checks there that the kernel's third pass keeps them all.

The result must equal :func:`reference.iht_threshold_ref` exactly, support order (score, then
index) included, for both rules, numpy and torch-CPU inputs, float64 and float32. The kernel forms
every score in float64 from the stored values (without FMA contraction), so float32 inputs are
exact too against the reference computed on the float32 values upcast.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import assert_indices_like, backend_of, dtype_of, to_backend, upcast
from numpy.testing import assert_array_equal
from reference import iht_score_ref

import fastal

SAMPLE = 16384  # csrc/cpu/topb.cpp: m = min(n, 16384)
ALPHA = 0.5
SIZES = (16385, 70001, 300001)
KINDS = ("ascending", "descending", "ties", "hidden", "retry")
#: survivor passes of the "retry" case per b in budgets(n): at n = 300001, b = 5000 the second
#: threshold (rank 1701 of the 16384 sampled scores) still keeps fewer than b rows, so the third
#: pass keeps every row
RETRY_ATTEMPTS = {16385: [1, 1, 1, 1, 1], 70001: [1, 2, 2, 1, 1], 300001: [1, 3, 2, 1, 1]}


def budgets(n: int) -> tuple[int, ...]:
    return (1, 5000, n // 3, n - 1, n)


def sample_rows(n: int) -> np.ndarray:
    """The kernel's strided sample: ``(double(k) + 0.5) * n / m``, truncated."""
    m = min(n, SAMPLE)
    return ((np.arange(m) + 0.5) * n / m).astype(np.int64)


def kernel_attempts(score: np.ndarray, b: int) -> int:
    """How many survivor passes ``select_top_b`` makes for these float64 scores (1, 2 or 3).

    The same arithmetic as the kernel: ``rank = ceil(frac m)`` on the sample, a threshold from the
    first two attempts only (and only when ``b < n`` and ``rank < m``), ``frac *= 4`` per retry."""
    n = score.size
    m = min(n, SAMPLE)
    sample = score[sample_rows(n)]
    frac = 1.5 * b / n + 4.0 * np.sqrt(b) / n
    kept, attempt = 0, 0
    while attempt < 3 and kept < b:
        rank = int(np.ceil(frac * m))
        threshold = np.inf
        if b < n and rank < m and attempt < 2:
            threshold = np.partition(sample, rank)[rank]
        kept = int((score <= threshold).sum())
        attempt += 1
        frac *= 4
    return attempt


@functools.cache
def data(n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(s, sigma) as float64; every value is chosen so that the orderings survive float32."""
    rng = np.random.default_rng(n + KINDS.index(kind))
    inside = np.zeros(n, dtype=bool)
    inside[sample_rows(n)] = True
    if kind in ("ascending", "descending"):
        s = np.sort(rng.normal(size=n))
        return (s if kind == "ascending" else s[::-1].copy()), np.zeros(n)
    if kind == "ties":
        return rng.integers(-2, 3, n) * 0.5, rng.integers(0, 3, n) * 0.5
    if kind == "hidden":
        # sampled rows all tie at a middling score; outside the sample, about half the rows are
        # better than every sampled row (sigma in [1, 2)), the others worse (s < 0, sigma = 0)
        s = np.full(n, 0.5)
        sigma = np.full(n, 0.5)
        out = np.flatnonzero(~inside)
        good = rng.random(out.size) < 0.5
        sigma[out[good]] = 1 + rng.integers(0, 64, good.sum()) / 64  # ties among them too
        s[out[~good]] = -rng.integers(1, 5, (~good).sum()) * 0.25
        sigma[out[~good]] = 0.0
        return s, sigma
    if kind == "retry":
        # sampled rows strictly better than every other row under both rules: the sample's
        # rank-th score keeps about rank rows, fewer than b
        s = np.where(rng.random(n) < 0.5, 0.5, -0.25)
        sigma = rng.integers(0, 3, n) * 0.5  # outside the sample: sigma <= 1, ties
        sigma[inside] = 2 + rng.permutation(inside.sum()) / 1024  # distinct, exact in float32
        s[inside] = 0.5
        return s, sigma
    raise ValueError(kind)


@functools.cache
def reference_order(n: int, kind: str, dtype: str, rule: str) -> np.ndarray:
    """All n indices by (score, index): the reference support of every b is a prefix."""
    s, sigma = (upcast(to_backend(a, "numpy", dtype)) for a in data(n, kind))
    score = iht_score_ref(s, sigma, ALPHA, rule)
    return np.lexsort((np.arange(n), score))


def test_kernel_attempts_replays_the_sampled_threshold():
    """The replay on a case worked by hand: all n rows tie, so the first threshold keeps them all
    (one pass); a threshold-free b = n is one pass too."""
    n = 70001
    assert kernel_attempts(np.zeros(n), 5000) == 1
    assert kernel_attempts(np.arange(n, dtype=np.float64), n) == 1
    # ascending distinct scores: the strided sample is representative, one pass
    assert kernel_attempts(np.arange(n, dtype=np.float64), 5000) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", SIZES)
def test_iht_threshold_large_n_matches_reference_exactly(n, kind):
    s64, g64 = data(n, kind)
    for rule in ("paper", "exact"):
        score = iht_score_ref(s64, g64, ALPHA, rule)
        if kind == "retry":
            # the sampled threshold under-estimates at b = 5000 and n // 3 (n = 16385: the sample
            # is all but one row, nothing to under-estimate); b = n - 1 and n use no threshold
            assert [kernel_attempts(score, b) for b in budgets(n)] == RETRY_ATTEMPTS[n], rule
        for dtype in ("float64", "float32"):
            order = reference_order(n, kind, dtype, rule)
            for backend in ("numpy", "torch-cpu"):
                s, sigma = to_backend(s64, backend, dtype), to_backend(g64, backend, dtype)
                stored = upcast(s)
                for b in budgets(n):
                    support, w = fastal.iht_threshold(s, sigma, b, ALPHA, rule=rule)
                    where = f"{kind} n={n} b={b} {rule} {backend} {dtype}"
                    assert_indices_like(support, s, b)
                    assert backend_of(w) == backend
                    assert dtype_of(w) == dtype
                    got = support.numpy() if isinstance(support, torch.Tensor) else support
                    assert_array_equal(got, order[:b], err_msg=where)
                    expected_w = np.zeros(n)
                    expected_w[order[:b]] = np.maximum(stored[order[:b]], 0.0)
                    assert_array_equal(upcast(w), expected_w, err_msg=where)


def test_third_pass_keeps_every_row():
    """The third survivor pass must keep every row. At n = 300001 (SIZES) a third pass with a
    finite threshold (16x the first rank) still keeps >= b rows of the "retry" pool, so a kernel
    that thresholded all three passes passed test_iht_threshold_large_n_matches_reference_exactly
    (RETRY_ATTEMPTS counts the passes of the Python replay, not of the kernel). At n = 2^20 + 1
    (64 rows per sampled row) a thresholded third pass keeps about 16 * 1.5 b / 64 < b rows."""
    n, b = (1 << 20) + 1, 5000
    s64, g64 = data(n, "retry")
    score = iht_score_ref(s64, g64, ALPHA, "paper")
    assert kernel_attempts(score, b) == 3
    rank = int(np.ceil(16 * (1.5 * b / n + 4.0 * np.sqrt(b) / n) * SAMPLE))
    finite = np.partition(score[sample_rows(n)], rank)[rank]
    assert (score <= finite).sum() < b  # a thresholded third pass would come up short
    order = np.lexsort((np.arange(n), score))
    for dtype in ("float64", "float32"):
        s, sigma = s64.astype(dtype), g64.astype(dtype)
        support, w = fastal.iht_threshold(s, sigma, b, ALPHA, rule="paper")
        assert_array_equal(support, order[:b])
        expected_w = np.zeros(n)
        expected_w[order[:b]] = np.maximum(s64[order[:b]], 0.0)
        assert_array_equal(w.astype(np.float64), expected_w)
