"""k-means sampling: the unlabeled points nearest the centres of a k-means with k = budget."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _interop
from .._torch_arrays import as_torch
from .._validate import check_bool, check_budget, check_matrix
from ..kmeans import _kmeans, check_max_iter, check_minibatch
from .base import Selection, Strategy, pool_field, register, unlabeled_rows

#: float64 values per tile of the rows' distances to their centres (8 MiB)
_TILE_VALUES = 1 << 20


@register
class KMeansSampling(Strategy):
    """Cluster the unlabeled embeddings into ``budget`` clusters and label the point nearest each
    centre among the points of its cluster (the k-means baseline of DeepAL and of Ash et al. 2020).

    Parameters
    ----------
    max_iter : int, default 100
        Lloyd iterations (mini-batch: epochs).
    minibatch : int, optional
        Batch size of mini-batch k-means. On the CPU the default full batch with bounds is
        faster, large pools included (see :func:`fastal.kmeans`'s ``minibatch``).
    prune : bool, default True
        Lloyd with distance bounds (:func:`fastal.kmeans`'s ``prune``; the fit does not change).
    progress : bool, default False
        tqdm progress bar over the Lloyd iterations.

    The pool is an ``(n, d)`` array or a mapping with ``"features"``. The clustering is one run of
    :func:`fastal.kmeans` from one k-means++ seeding drawn with ``seed`` (scikit-learn's ``KMeans``
    keeps the best of ``n_init`` runs; call ``select`` with several seeds and compare
    ``diagnostics["inertia"]`` for that). A cluster that ends empty takes the not yet chosen point
    farthest from its own centre. Indices come in centre order. ``diagnostics`` also holds
    ``n_iter``, ``converged`` and ``distance_share`` (see :class:`fastal.KMeansResult`).

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.strategies import KMeansSampling
    >>> X = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [9.0]])
    >>> sorted(KMeansSampling().select(X, 3, seed=0).indices.tolist())
    [1, 3, 5]
    """

    name = "kmeans"
    requires = ("features",)

    def __init__(
        self,
        *,
        max_iter: int = 100,
        minibatch: int | None = None,
        prune: bool = True,
        progress: bool = False,
    ) -> None:
        if max_iter is not None:  # None: kmeans' own default
            check_max_iter(max_iter)  # here, not at the first select (as CoreSet's options)
        check_minibatch(minibatch)
        self.max_iter = max_iter
        self.minibatch = minibatch
        self.prune = check_bool(prune, "prune")
        self.progress = check_bool(progress, "progress")

    def select(self, pool: Any, budget: int, labeled: Any = None, *, seed: Any = None) -> Selection:
        import torch

        from ..gradients import GradientEmbedding

        X = pool_field(pool, "features")
        if isinstance(X, GradientEmbedding):
            raise TypeError(
                "KMeansSampling needs dense features, got a GradientEmbedding: k-means centres of "
                "rank-one gradients are not rank one. Use BADGE (k-means++ seeding over the "
                "embedding) or pass emb.dense() if it fits in memory"
            )
        info = check_matrix(X, "features")
        lab, rest = unlabeled_rows(info.shape[0], labeled, like=info)
        budget = check_budget(budget, rest.size)
        if budget == 0:
            # the keys of every other budget: nothing to fit, so no distances computed
            empty = {"inertia": 0.0, "n_iter": 0, "converged": True, "distance_share": None}
            return Selection(_interop.to_framework(np.empty(0, np.int64), info), empty)
        xt = as_torch(X, info)
        # k-means of the unlabeled rows; on the CPU without copying them (see _lloyd._Excluded)
        res = _kmeans(
            X, budget, seed=seed, max_iter=self.max_iter, minibatch=self.minibatch,
            prune=self.prune, progress=self.progress, name="features", exclude=lab,
        )  # fmt: skip
        labels = _interop.host_numpy(res.labels)
        centres = as_torch(res.centres, _interop.describe(res.centres, "centres")).to(torch.float64)
        rows = torch.from_numpy(rest).to(xt.device)
        dist2 = _dist2_to_own_centre(xt, rows, centres, torch.from_numpy(labels).to(xt.device))
        chosen = _nearest_per_cluster(labels, dist2, budget)
        return Selection(
            _interop.to_framework(rest[chosen], info),
            {
                "inertia": res.inertia,
                "n_iter": res.n_iter,
                "converged": res.converged,
                "distance_share": res.distance_share,
            },
        )


def _dist2_to_own_centre(xt: Any, rows: Any, centres: Any, labels: Any) -> np.ndarray:
    """Float64 squared distance of each of ``rows`` (of ``xt``) to its centre, in row tiles of
    about 2²⁰ values: a whole-pool float64 difference held four n × d arrays at once (8× a float32
    pool), and the rows are gathered one tile at a time."""
    import torch

    out = np.empty(rows.shape[0], dtype=np.float64)
    step = max(1, _TILE_VALUES // max(1, xt.shape[1]))
    # the tile's buffers are reused (fresh temporaries each tile took twice as long); the same
    # operations, so the same bits
    m = min(step, rows.shape[0])
    xbuf = xt.new_empty((m, xt.shape[1]))
    dbuf, cbuf = (centres.new_empty((m, xt.shape[1])) for _ in range(2))
    for s in range(0, rows.shape[0], step):
        k = min(step, rows.shape[0] - s)
        x, diff, c = xbuf[:k], dbuf[:k], cbuf[:k]
        torch.index_select(xt, 0, rows[s : s + step], out=x)
        torch.index_select(centres, 0, labels[s : s + step], out=c)
        diff.copy_(x).sub_(c)
        out[s : s + step] = _interop.host_numpy(diff.mul_(diff).sum(1))
    return out


def _nearest_per_cluster(labels: np.ndarray, dist2: np.ndarray, k: int) -> np.ndarray:
    """Per cluster the row of least ``dist2`` (ties lowest row); empty clusters take the farthest
    rows not yet chosen (largest ``dist2``, ties lowest row), in cluster order."""
    rows = np.arange(labels.size)
    # O(n): each cluster's least distance, then its first row at that distance (a lexsort of
    # (cluster, distance, row) took ~1 s at n = 1M)
    least = np.full(k, np.inf)
    np.minimum.at(least, labels, dist2)
    hit = np.flatnonzero(dist2 == least[labels])  # ascending rows: the first per cluster wins
    clusters, first = np.unique(labels[hit], return_index=True)
    chosen = np.full(k, -1, dtype=np.int64)
    chosen[clusters] = hit[first]
    empty = np.flatnonzero(chosen < 0)
    if empty.size:
        taken = np.zeros(labels.size, dtype=bool)
        taken[chosen[chosen >= 0]] = True
        far = np.lexsort((rows, -dist2))
        chosen[empty] = far[~taken[far]][: empty.size]
    return chosen
