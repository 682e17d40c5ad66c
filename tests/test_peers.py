"""Agreement with peers' implementations of the same algorithm."""

from __future__ import annotations

import fastal
import numpy as np
import pytest
from numpy.testing import assert_array_equal

skactiveml_pool = pytest.importorskip("skactiveml.pool")


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize(
    ("n", "d", "n_labeled", "budget"),
    [(50, 2, 1, 10), (200, 5, 3, 30), (600, 16, 20, 40), (1000, 64, 1, 25)],
)
def test_skactiveml_coreset_picks(n, d, n_labeled, budget, prune):
    """scikit-activeml's CoreSet (k-center greedy with sklearn's Euclidean distances) on the same
    float64 data and labeled set. The labeled set is non-empty, so its random tie-breaking never
    acts, and continuous random data has no near-ties at its (expanded-form) precision."""
    rng = np.random.default_rng(n + d)
    X = rng.normal(size=(n, d))
    labeled = rng.choice(n, size=n_labeled, replace=False)
    y = np.full(n, np.nan)
    y[labeled] = rng.integers(0, 3, size=n_labeled)

    peer = skactiveml_pool.CoreSet(missing_label=np.nan, random_state=0)
    expected = peer.query(X, y, batch_size=budget)
    got = fastal.kcenter_greedy(X, budget, labeled=labeled, prune=prune)
    assert_array_equal(got, expected)
