"""Plain float64 numpy references for the kernels: slow, short and obviously correct.

Distances are computed in the direct form ``sqrt(sum((x - c) ** 2))`` (never the expanded
``|x|^2 + |c|^2 - 2 x.c``, which cancels badly). Comparisons are made on the squared sums, so the
square root cannot merge two distinct values into a tie. Every arg-max / arg-min breaks ties to
the lowest index, the documented rule of every fastal backend.
"""

from __future__ import annotations

import numpy as np


def sqdist_to_row(X: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of every row of ``X`` (n, d) to the row ``c`` (d,), float64."""
    diff = np.asarray(X, dtype=np.float64) - np.asarray(c, dtype=np.float64)
    return np.sum(diff * diff, axis=1)


def min_distance_ref(X, Y) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``X`` (n, d): distance to the nearest row of ``Y`` (m, d) and its index.

    Returns ``(distances (n,) float64, index (n,) int64)``; ties go to the lowest index of ``Y``.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    n, m = X.shape[0], Y.shape[0]
    best = np.full(n, np.inf)
    index = np.full(n, -1, dtype=np.int64)
    for j in range(m):  # increasing j with a strict test: the lowest index wins a tie
        d2 = sqdist_to_row(X, Y[j])
        better = d2 < best
        best[better] = d2[better]
        index[better] = j
    return np.sqrt(best), index


def kcenter_greedy_ref(X, budget: int, labeled=None, first: int | None = None):
    """k-center greedy (Sener & Savarese, Alg. 1) in float64.

    Parameters
    ----------
    X : (n, d) array
    budget : number of picks
    labeled : indices of the initial centres (never picked), or None
    first : the first pick when there is no labeled point (required then, if budget > 0)

    Returns
    -------
    picks : (budget,) int64, in pick order
    radius : (budget,) float64, covering radius ``max_i min_c ||x_i - c||`` after each pick
        (0 once every point is a centre)
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    labeled = [] if labeled is None else [int(i) for i in np.asarray(labeled).ravel()]
    is_centre = np.zeros(n, dtype=bool)
    mind2 = np.full(n, np.inf)  # squared distance to the nearest centre
    for j in labeled:
        is_centre[j] = True
        mind2 = np.minimum(mind2, sqdist_to_row(X, X[j]))

    picks: list[int] = []
    radius: list[float] = []
    for t in range(budget):
        if t == 0 and not labeled:
            assert first is not None, "no labeled point: pass the first centre"
            c = int(first)
        else:
            # the farthest non-centre point; np.argmax returns the first (lowest) maximum
            c = int(np.argmax(np.where(is_centre, -np.inf, mind2)))
        assert not is_centre[c]
        picks.append(c)
        is_centre[c] = True
        mind2 = np.minimum(mind2, sqdist_to_row(X, X[c]))
        rest = mind2[~is_centre]
        radius.append(float(np.sqrt(rest.max())) if rest.size else 0.0)
    return np.array(picks, dtype=np.int64), np.array(radius, dtype=np.float64)


def covering_radius_ref(X, centres) -> float:
    """``max_i min_c ||x_i - c||`` over the rows that are not centres (0 if there are none)."""
    X = np.asarray(X, dtype=np.float64)
    centres = np.asarray(centres, dtype=np.int64)
    if centres.size == 0:
        return float("inf")
    mask = np.ones(X.shape[0], dtype=bool)
    mask[centres] = False
    if not mask.any():
        return 0.0
    dist, _ = min_distance_ref(X[mask], X[centres])
    return float(dist.max())
