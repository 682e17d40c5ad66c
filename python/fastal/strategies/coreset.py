"""Core-Set selection (Sener & Savarese, ICLR 2018): k-center greedy over embeddings."""

from __future__ import annotations

from typing import Any

from .. import ops
from .base import Selection, Strategy, pool_field, register


@register
class CoreSet(Strategy):
    """k-center greedy over pool embeddings (``coreset-kcenter.txt``, Alg. 1).

    Picks ``budget`` points, each the farthest from the labeled points and the earlier picks, which
    greedily minimises the covering radius (a 2-approximation of the k-center problem).

    Parameters
    ----------
    prune : bool, default True
        Exact triangle-inequality pruning; picks are identical either way.
    progress : bool, default False
        tqdm progress bar over the picks.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.strategies import CoreSet
    >>> X = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
    >>> sel = CoreSet().select(X, 5, labeled=[0, 1])
    >>> len(sel.indices), sel.diagnostics["final_radius"] < sel.diagnostics["initial_radius"]
    (5, True)
    """

    name = "coreset"
    requires = ("features",)

    def __init__(self, *, prune: bool = True, progress: bool = False) -> None:
        self.prune = prune
        self.progress = progress

    def select(self, pool: Any, budget: int, labeled: Any = None, *, seed: Any = None) -> Selection:
        """Select from ``pool``: an (n, d) embedding array (numpy, torch or cupy), a mapping with
        ``"features"``, or a :class:`~fastal.GradientEmbedding` (k-center over gradients)."""
        from ..gradients import GradientEmbedding

        X = pool if isinstance(pool, GradientEmbedding) else pool_field(pool, "features")
        res = ops.kcenter(
            X, budget, labeled=labeled, seed=seed, prune=self.prune, progress=self.progress
        )
        diagnostics = dict(res.diagnostics, radius=res.radius)
        return Selection(res.indices, diagnostics)
