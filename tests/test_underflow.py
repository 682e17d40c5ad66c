"""Rows that differ by less than the square root of the smallest normal number (2^-63 in float32,
2^-511 in float64) have squared distances that round to 0: every distance would be 0 and the
picks arbitrary (k-center took rows 1, 2 of [0, 1, 2, 10] x 1e-25 where float64 takes 3, 2).
The pools' finiteness scan measures their spread S = max |x_ij - x_0j| in the same pass, and a
pool is refused with a ValueError, as overflowing ones are, when distances at the accumulation
dtype's resolution of S (S·2^-24 float32, S·2^-53 float64) would have subnormal squares:
S < 2^-39 in float32, 2^-458 in float64. Pools whose distances fit are not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastal
from fastal.strategies import BADGE, CoreSetGradients

TINY = np.array([[0.0], [1.0], [2.0], [10.0]]) * 1e-25


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    "call",
    [
        lambda X: fastal.kcenter_greedy(X, 2, labeled=[0]),
        lambda X: fastal.kmeans_pp(X, 1, labeled=[0], seed=0),
        lambda X: fastal.kmeans(X, 2, seed=0),
        lambda X: fastal.min_distance(X, X[[0, 3]]),
    ],
    ids=["kcenter", "kmeans_pp", "kmeans", "min_distance"],
)
def test_rows_too_close_for_float32_are_refused(dtype, call):
    X = torch.from_numpy(TINY).to(getattr(torch, dtype))
    with pytest.raises(ValueError, match=r"underflow float32; scale .* up or pass float64"):
        call(X)


def test_float64_has_the_range_and_gives_the_reference_picks():
    np.testing.assert_array_equal(fastal.kcenter_greedy(TINY, 2, labeled=[0]), [3, 2])
    dist, index = fastal.min_distance(TINY, TINY[[0, 3]])
    np.testing.assert_allclose(dist, [0, 1e-25, 2e-25, 0], rtol=1e-12)
    np.testing.assert_array_equal(index, [0, 0, 0, 1])
    with pytest.raises(ValueError, match=r"underflow float64; scale X up$"):
        fastal.kcenter_greedy(TINY * 1e-160, 2, labeled=[0])


def _cluster_and_a_far_row(scale: float, dtype) -> np.ndarray:
    """Rows 1 and 2 at 2^-21 and 2^-20 from row 0, row 3 at 1: all times ``scale``."""
    P = np.zeros((4, 8))
    P[1, 0], P[2, 0], P[3, 0] = 2.0**-21, 2.0**-20, 1.0
    return (P * scale).astype(dtype)


@pytest.mark.parametrize(("dtype", "exponent"), [("float32", -55), ("float64", -495)])
def test_a_close_cluster_in_a_tiny_pool_is_refused(dtype, exponent):
    """The spread (the far row) passed the old bound, 2^-60 / 2^-500, while the cluster's squared
    distances underflowed: k-center read it as one point (picks [0, 1], radius 0, for [0, 2])
    and min_distance reported 0 between distinct rows (a scale audit)."""
    P = _cluster_and_a_far_row(2.0**exponent, dtype)
    with pytest.raises(ValueError, match=r"differ by at most .* underflow"):
        fastal.kcenter_greedy(P, 2, labeled=[3])
    with pytest.raises(ValueError, match=r"differ by at most .* underflow"):
        fastal.min_distance(P[[2]], P[[0, 3]])


@pytest.mark.parametrize(("dtype", "exponent"), [("float32", -38), ("float64", -457)])
def test_pools_just_inside_the_bound_keep_their_picks_and_distances(dtype, exponent):
    s = 2.0**exponent
    want, want_r = fastal.kcenter_greedy(_cluster_and_a_far_row(1.0, dtype), 2, labeled=[3],
                                         return_radius=True)  # fmt: skip
    got, got_r = fastal.kcenter_greedy(_cluster_and_a_far_row(s, dtype), 2, labeled=[3],
                                       return_radius=True)  # fmt: skip
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(np.asarray(got_r, np.float64) / s, want_r, rtol=1e-6)
    dist, _ = fastal.min_distance(_cluster_and_a_far_row(s, dtype)[[2]],
                                  _cluster_and_a_far_row(s, dtype)[[0, 3]])  # fmt: skip
    np.testing.assert_allclose(np.asarray(dist, np.float64) / s, [2.0**-20], rtol=1e-6)


def test_close_rows_far_from_the_set_are_fine():
    """min_distance judges X and Y together: X's rows are 1e-25 apart, but Y is 1 away."""
    X = TINY.astype(np.float32)
    dist, index = fastal.min_distance(X, np.ones((1, 1), np.float32))
    np.testing.assert_allclose(dist, 1.0, rtol=1e-6)
    np.testing.assert_array_equal(index, [0, 0, 0, 0])


def test_equal_rows_are_fine():
    """No spread at all: the distances really are 0."""
    X = np.full((5, 3), 1e-30, np.float32)
    assert fastal.kcenter(X, 2, labeled=[0]).radius.tolist() == [0.0, 0.0]
    assert fastal.kmeans(X, 2, seed=0).inertia == 0.0


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_the_scan_reports_the_spread(dtype):
    X = torch.from_numpy(np.array([[1.0, 2.0], [1.5, -2.0], [1.0, 2.0]])).to(getattr(torch, dtype))
    wire = X.view(torch.int16).numpy().view(np.uint16) if X.element_size() == 2 else X.numpy()
    count, first, spread = getattr(fastal._ext.cpu, f"count_nonfinite_rows_{dtype}")(wire)
    assert (count, first, spread) == (0, -1, 4.0)


# -- GradientEmbedding: |g_i|² = |A_i|²|H_i|² underflows where the factors are small ------------

_RNG = np.random.default_rng(0)
_A, _H = _RNG.normal(size=(30, 3)), _RNG.normal(size=(30, 4))


def _embedding(scale: float, dtype=np.float32) -> fastal.GradientEmbedding:
    return fastal.GradientEmbedding((_A * scale).astype(dtype), (_H * scale).astype(dtype))


@pytest.mark.parametrize(
    "call",
    [
        lambda E: fastal.kcenter_greedy(E, 6, labeled=[0]),
        lambda E: fastal.kmeans_pp(E, 3, first="norm", seed=0),
        lambda E: fastal.min_distance(E, E.subset([0, 3])),
    ],
    ids=["kcenter", "kmeans_pp", "min_distance"],
)
def test_embeddings_too_small_for_float32_are_refused(call):
    """Factors at 1e-12 give |g|² near 1e-48: every factored distance was 0 and k-center took
    rows 1, 2, 3, ... in index order where float64 takes 4, 29, 25, ..."""
    with pytest.raises(ValueError, match=r"underflow float32; scale .* up or pass float64"):
        call(_embedding(1e-12))


def test_small_embeddings_in_float64_give_the_float32_picks_of_the_unscaled_ones():
    expected = fastal.kcenter_greedy(_embedding(1.0), 6, labeled=[0]).tolist()
    assert fastal.kcenter_greedy(_embedding(1e-12, np.float64), 6, labeled=[0]).tolist() == expected
    assert fastal.kcenter_greedy(_embedding(1e-6), 6, labeled=[0]).tolist() == expected


def test_an_all_zero_embedding_is_fine():
    """No spread at all: every distance really is 0 (the labeled row is as far as any)."""
    E = fastal.GradientEmbedding(np.zeros((5, 3), np.float32), np.ones((5, 4), np.float32))
    assert fastal.kcenter(E, 2, labeled=[0]).radius.tolist() == [0.0, 0.0]


def test_badge_names_its_features_when_their_gradients_underflow():
    probs = _RNG.dirichlet(np.ones(3), 30).astype(np.float32)
    features = (_H * 1e-25).astype(np.float32)
    for strategy in (BADGE(), CoreSetGradients()):  # CoreSetGradients said "scale X up"
        with pytest.raises(ValueError, match=r"underflow float32; scale features up"):
            strategy.select({"probs": probs, "features": features}, 4, seed=0)
    picks = BADGE().select({"probs": probs, "features": _H.astype(np.float32)}, 4, seed=0)
    assert len(set(picks.indices.tolist())) == 4
