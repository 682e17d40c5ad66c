"""``fastal.iht_threshold``, the top-b kernel of Sparse Approximation's proximal step (Appendix E):
exact against :func:`reference.iht_threshold_ref` (ties to the lowest index) for every backend
and dtype, both score rules, and errors that name the argument."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import (
    CPU_BACKENDS,
    assert_indices_like,
    backend_dtype_params,
    backend_of,
    dtype_of,
    to_backend,
    to_numpy,
    upcast,
)
from numpy.testing import assert_array_equal
from reference import iht_score_ref, iht_threshold_ref

import fastal
import fastal.strategies

THRESHOLD_PARAMS = backend_dtype_params(dtypes=("float64", "float32"))


# ---------------------------------------------------------------------------------------------
# iht_threshold: the top-b kernel


def threshold(s, sigma, b, alpha, rule="paper"):
    support, w = fastal.iht_threshold(s, sigma, b, alpha, rule=rule)
    return support, w


def test_iht_threshold_hand_worked():
    # score = ½[-s]₊² - alpha sigma²; with alpha = 0: (0, ½, 0, 0) -> ties among 0, 2, 3 go to
    # the lowest index
    s = np.array([3.0, -1.0, 0.5, 2.0])
    support, w = threshold(s, np.zeros(4), 2, 0.0)
    assert_array_equal(support, [0, 2])
    assert_array_equal(w, [3.0, 0.0, 0.5, 0.0])
    # alpha = 1, sigma = (0, 2, 1, 0): scores (0, ½ - 4, -1, 0) = (0, -3.5, -1, 0) -> 1, 2, 0
    support, w = threshold(s, np.array([0.0, 2.0, 1.0, 0.0]), 3, 1.0)
    assert_array_equal(support, [1, 2, 0])
    assert_array_equal(w, [3.0, 0.0, 0.5, 0.0])  # the selected negative entry gets [s]₊ = 0


def test_iht_threshold_exact_rule_hand_worked():
    # exact scores -½[s]₊²: (-4.5, 0, -0.125, -2) -> 0, 3; ½|w - s|² = ½ (1 + 0.25) = 0.625, where
    # the paper's pick {0, 2} leaves ½ (1 + 4) = 2.5
    s = np.array([3.0, -1.0, 0.5, 2.0])
    support, w = threshold(s, np.zeros(4), 2, 0.0, "exact")
    assert_array_equal(support, [0, 3])
    assert_array_equal(w, [3.0, 0.0, 0.0, 2.0])
    # sigma counts over the selected set, as in fastal's objective: row 1 (s < 0, weight 0)
    # earns its alpha sigma² too (it scored 0 whatever its sigma, and rows with s <= 0 went by
    # index)
    support, _ = threshold(s, np.array([0.0, 5.0, 2.0, 0.0]), 2, 1.0, "exact")
    assert_array_equal(support, [1, 0])  # scores (-4.5, -25, -0.125 - 4, -2)
    # the audit's case: rows with s <= 0 fill the support by sigma, not by index
    s, sigma = np.array([0.5, -1.0, -1.0]), np.array([0.0, 0.0, 1.0])
    support, _ = threshold(s, sigma, 2, 0.1, "exact")
    assert_array_equal(support, [0, 2])  # scores (-0.125, 0, -0.1); were (-0.125, 0, 0): [0, 1]


def prox_objective(w, S, s, sigma, alpha):
    """½|w - s|² - α Σ_{j∈S} σ_j²: what the proximal step minimises (w zero outside S)."""
    return 0.5 * float(((w - s) ** 2).sum()) - alpha * float((sigma[list(S)] ** 2).sum())


@pytest.mark.parametrize("seed", range(40))
def test_iht_threshold_exact_rule_is_the_proximal_minimiser(seed):
    """Against every support of size b with w = [s]₊ on it (the best w for that support): the
    exact rule reaches the minimum; the paper's rule is never below it."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    b = int(rng.integers(1, n + 1))
    s = rng.normal(size=n) * rng.choice([0.1, 1.0, 3.0])
    sigma = np.abs(rng.normal(size=n))
    alpha = float(rng.choice([0.0, 0.05, 0.5, 2.0]))
    best = min(
        prox_objective(_w_of(list(S), s), S, s, sigma, alpha)
        for S in itertools.combinations(range(n), b)
    )
    S, w = threshold(s, sigma, b, alpha, "exact")
    assert prox_objective(w, S, s, sigma, alpha) == pytest.approx(best, rel=1e-12, abs=1e-12)
    S_paper, w_paper = threshold(s, sigma, b, alpha, "paper")
    assert prox_objective(w_paper, S_paper, s, sigma, alpha) >= best - 1e-12


def test_iht_threshold_paper_rule_can_miss_the_minimiser():
    """Why the exact rule exists: with every s_j > 0 the paper's scores all equal -α σ_j²."""
    s, sigma = np.array([0.1, 0.2, 5.0]), np.zeros(3)
    support, w = threshold(s, sigma, 1, 0.0)
    assert_array_equal(support, [0])
    exact, w_exact = threshold(s, sigma, 1, 0.0, "exact")
    assert prox_objective(w, support, s, sigma, 0.0) > prox_objective(w_exact, exact, s, sigma, 0.0)


def test_iht_threshold_nan_scores_are_an_error_not_a_crash():
    """Finite float64 inputs whose paper score is inf - inf: a ValueError, and the kernel called
    directly (as the solvers do) rejects NaN inputs rather than reading out of bounds."""
    with pytest.raises(ValueError, match="NaN at index 0"):
        fastal.iht_threshold(np.full(4, -1e200), np.full(4, 1e200), 2, 1.0)
    s, sigma = np.linspace(-1, 1, 100_001), np.ones(100_001)
    s[70_000] = np.nan
    for exact in (False, True):
        with pytest.raises(ValueError, match="NaN at index 70000"):
            fastal._ext.cpu.iht_threshold_float64(s, sigma, 5, 0.5, exact=exact)
    # the exact rule subtracts both terms: no inf - inf
    support, _ = fastal.iht_threshold(np.full(4, 1e200), np.full(4, 1e200), 2, 1.0, rule="exact")
    assert_array_equal(support, [0, 1])


@pytest.mark.parametrize("rule", ["paper", "exact"])
def test_iht_threshold_alpha_zero_ignores_sigma_past_float64_squares(rule):
    """alpha = 0 drops the sigma term, so a finite sigma whose square overflows float64 changes
    nothing (0 * inf would be NaN); a NaN sigma passed to the kernel directly is still refused."""
    s = np.array([-1.0, 2.0, -3.0, 0.5])
    support, w = fastal.iht_threshold(s, np.array([1e200, 0.0, 1.0, 1e300]), 2, 0.0, rule=rule)
    ref_support, ref_w = iht_threshold_ref(s, np.array([1e200, 0.0, 1.0, 1e300]), 2, 0.0, rule)
    assert_array_equal(support, ref_support)
    assert_array_equal(w, ref_w)
    sigma = np.zeros(4)
    sigma[1] = np.nan
    with pytest.raises(ValueError, match="NaN at index 1"):
        fastal._ext.cpu.iht_threshold_float64(s, sigma, 2, 0.0, exact=rule == "exact")


THRESHOLD_SIZES = [
    (1, 0),
    (1, 1),
    (2, 1),
    (7, 0),
    (7, 3),
    (7, 7),
    (50, 10),
    (333, 1),
    (1000, 999),
    (4096, 100),
]


@pytest.mark.parametrize("rule", ["paper", "exact"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 10.0])
@pytest.mark.parametrize(("backend", "dtype"), THRESHOLD_PARAMS)
@pytest.mark.parametrize(
    ("n", "b"), THRESHOLD_SIZES, ids=[f"n{n}-b{b}" for n, b in THRESHOLD_SIZES]
)
def test_iht_threshold_matches_reference(n, b, backend, dtype, alpha, rule):
    """Random s of both signs: exact in float64; in float32 the reference sees the stored values
    and the selection may part from it only at a float32 near-tie of the scores."""
    rng = np.random.default_rng(n * 7 + b)
    s = to_backend(rng.normal(size=n), backend, dtype)
    sigma = to_backend(np.abs(rng.normal(size=n)) * 0.5, backend, dtype)
    support, w = threshold(s, sigma, b, alpha, rule)
    assert_indices_like(support, s, b)
    assert backend_of(w) == backend_of(s)
    assert dtype_of(w) == dtype
    assert tuple(w.shape) == (n,)
    s64, g64 = upcast(s), upcast(sigma)
    ref_support, ref_w = iht_threshold_ref(s64, g64, b, alpha, rule)
    got = to_numpy(support)
    if dtype == "float64":
        assert_array_equal(got, ref_support)
    else:
        assert_topb_valid(got, s64, g64, b, alpha, rtol=1e-6, rule=rule)
    assert_array_equal(upcast(w), _w_of(got, s64))
    if dtype == "float64":
        assert_array_equal(upcast(w), ref_w)


def _score(s, sigma, alpha, rule="paper"):
    return iht_score_ref(s, sigma, alpha, rule)


def _w_of(support, s64):
    w = np.zeros_like(s64)
    w[support] = np.maximum(s64[support], 0.0)
    return w


def assert_topb_valid(support, s64, g64, b, alpha, rtol, rule="paper"):
    """``support`` is b distinct indices holding the b smallest scores, in ascending score order,
    up to ``rtol`` of the score scale; where the float64 boundary is clear it is the reference's."""
    score = _score(s64, g64, alpha, rule)
    scale = max(1.0, float(np.abs(score).max()))
    assert np.unique(support).size == b
    if b == 0:
        return
    chosen = score[support]
    assert (np.diff(chosen) >= -rtol * scale).all(), "support not in ascending score order"
    rest = np.delete(score, support)
    if rest.size:
        assert chosen.max() <= rest.min() + rtol * scale
    ref, _ = iht_threshold_ref(s64, g64, b, alpha, rule)
    srt = np.sort(score)
    if b < srt.size and srt[b] - srt[b - 1] > 2 * rtol * scale:
        assert set(support.tolist()) == set(ref.tolist())


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize(("backend", "dtype"), THRESHOLD_PARAMS)
def test_iht_threshold_ties_to_the_lowest_index(backend, dtype, alpha):
    """Small integers: scores exact in every dtype, with many real ties (repeated s and sigma);
    the order is (score, index) for every b, in float32 as in float64."""
    rng = np.random.default_rng(int(alpha * 10))
    n = 64
    s = rng.integers(-3, 4, size=n).astype(np.float64)
    sigma = rng.integers(0, 3, size=n).astype(np.float64)
    sb, gb = to_backend(s, backend, dtype), to_backend(sigma, backend, dtype)
    for b in (0, 1, 5, 17, 40, 63, 64):
        support, w = threshold(sb, gb, b, alpha)
        ref_support, ref_w = iht_threshold_ref(s, sigma, b, alpha)
        assert_array_equal(to_numpy(support), ref_support)
        assert_array_equal(upcast(w), ref_w)


def test_iht_threshold_all_equal_scores_take_the_first_b():
    s = np.full(10, 2.0)  # every score -alpha sigma² = -1
    support, w = threshold(s, np.ones(10), 4, 1.0)
    assert_array_equal(support, [0, 1, 2, 3])
    assert_array_equal(w, [2.0] * 4 + [0.0] * 6)


def test_iht_threshold_torch_inputs_give_torch_outputs():
    rng = np.random.default_rng(3)
    s, sigma = rng.normal(size=30), rng.random(30)
    support, w = threshold(torch.from_numpy(s), torch.from_numpy(sigma), 6, 0.2)
    assert isinstance(support, torch.Tensor)
    assert isinstance(w, torch.Tensor)
    assert support.dtype == torch.int64
    assert w.dtype == torch.float64
    ref_support, ref_w = iht_threshold_ref(s, sigma, 6, 0.2)
    assert_array_equal(support.numpy(), ref_support)
    assert_array_equal(w.numpy(), ref_w)
    # numpy and torch agree bit for bit
    np_support, np_w = threshold(s, sigma, 6, 0.2)
    assert_array_equal(np_support, support.numpy())
    assert_array_equal(np_w, w.numpy())


def tied_or_normal_float32(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Half the rows from a few values (ties), half Gaussian; float32."""
    rng = np.random.default_rng(n)
    s = np.where(rng.random(n) < 0.5, rng.integers(-4, 5, n) * 0.25, rng.normal(size=n))
    sigma = np.where(rng.random(n) < 0.5, rng.integers(0, 3, n) * 0.5, np.abs(rng.normal(size=n)))
    return s.astype(np.float32), sigma.astype(np.float32)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_iht_threshold_rejects_non_finite(backend, bad):
    s, sigma = np.linspace(-1, 1, 8), np.ones(8)
    s_bad, sigma_bad = s.copy(), sigma.copy()
    s_bad[3] = bad
    sigma_bad[5] = bad
    with pytest.raises(ValueError, match=r"^s\b"):
        fastal.iht_threshold(to_backend(s_bad, backend), to_backend(sigma, backend), 2, 0.1)
    with pytest.raises(ValueError, match=r"^sigma\b"):
        fastal.iht_threshold(to_backend(s, backend), to_backend(sigma_bad, backend), 2, 0.1)


def test_iht_threshold_rejects_bad_arguments():
    s, sigma = np.linspace(-1, 1, 8), np.ones(8)
    with pytest.raises(ValueError, match="rule"):
        fastal.iht_threshold(s, sigma, 2, 0.1, rule="Exact")
    for b in (-1, 9):
        with pytest.raises(ValueError, match=r"\bb\b"):
            fastal.iht_threshold(s, sigma, b, 0.1)
    for b in (2.5, "3", None, True):
        with pytest.raises(TypeError, match=r"\bb\b"):
            fastal.iht_threshold(s, sigma, b, 0.1)
    for alpha in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="alpha"):
            fastal.iht_threshold(s, sigma, 2, alpha)
    with pytest.raises(ValueError, match="sigma"):  # shape mismatch
        fastal.iht_threshold(s, np.ones(7), 2, 0.1)
    with pytest.raises(ValueError, match=r"\bs\b"):  # not 1-D
        fastal.iht_threshold(s.reshape(2, 4), sigma.reshape(2, 4), 2, 0.1)
    with pytest.raises(TypeError, match=r"^s\b"):  # integer dtype
        fastal.iht_threshold(np.arange(8), sigma, 2, 0.1)
    with pytest.raises(TypeError, match=r"^s\b"):  # float16 is not a supported dtype here
        fastal.iht_threshold(s.astype(np.float16), sigma.astype(np.float16), 2, 0.1)
    with pytest.raises(TypeError, match="sigma"):  # dtypes differ
        fastal.iht_threshold(s.astype(np.float32), sigma, 2, 0.1)
    with pytest.raises(ValueError, match="sigma"):  # frameworks differ
        fastal.iht_threshold(s, torch.from_numpy(sigma), 2, 0.1)
