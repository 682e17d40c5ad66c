"""Core-Set selection (Sener & Savarese, ICLR 2018): k-center greedy over embeddings."""

from __future__ import annotations

from typing import Any

from .. import ops
from .._validate import check_bool, check_choice
from .base import Selection, Strategy, gradient_pool, pool_field, register


@register
class CoreSet(Strategy):
    """k-center greedy over pool embeddings (Sener & Savarese, ICLR 2018, Alg. 1).

    Picks ``budget`` points, each the farthest from the labeled points and the earlier picks, which
    greedily minimises the covering radius (a 2-approximation of the k-center problem).

    Parameters
    ----------
    embedding : {"features", "gradients"}, default "features"
        What the distances are taken over: the pool's ``"features"`` (Sener & Savarese), or the
        last-layer gradient embedding of BADGE (``(p - e_ŷ) ⊗ h`` at the hypothetical label, from
        ``"probs"`` or ``"logits"`` and ``"features"``), kept factored: O(C + d) per distance,
        never ``n × C·d``. The registered name ``"coreset_gradients"`` is the latter.
    bias : bool, default False
        With ``embedding="gradients"``: include the bias gradient.
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

    def __init__(
        self,
        *,
        embedding: str = "features",
        bias: bool = False,
        prune: bool = True,
        progress: bool = False,
    ) -> None:
        embedding = check_choice(embedding, "embedding", ("features", "gradients"))
        self.embedding = embedding
        self.bias = check_bool(bias, "bias")
        self.prune = check_bool(prune, "prune")
        self.progress = check_bool(progress, "progress")
        if embedding == "gradients":
            self.requires = ("probs", "features")

    def select(self, pool: Any, budget: int, labeled: Any = None, *, seed: Any = None) -> Selection:
        """Select from ``pool``: an (n, d) embedding array (numpy, torch or cupy), a mapping with
        ``"features"`` (and ``"probs"`` or ``"logits"`` for ``embedding="gradients"``), or a
        :class:`~fastal.GradientEmbedding` (k-center over gradients).

        Parameters
        ----------
        pool : array of shape (n, d), mapping or GradientEmbedding
            The embeddings (see above); dtypes as :func:`fastal.kcenter_greedy`.
        budget : int
            Number of picks, ``0 <= budget <= n - len(labeled)``.
        labeled : 1-D integer indices, optional
            Already-labeled rows: the initial centres, never picked.
        seed : None, int >= 0 or numpy Generator
            Draws the first centre when there is no labeled row.

        Returns
        -------
        Selection
            ``indices``: (budget,) int64 in pick order, in the pool's framework and device;
            ``diagnostics``: those of :attr:`fastal.KCenterResult.diagnostics` plus ``radius``, the
            (budget,) covering radius after each pick.
        """
        from ..gradients import GradientEmbedding

        name = "X"
        if isinstance(pool, GradientEmbedding) or self.embedding == "gradients":
            X = gradient_pool(pool, bias=self.bias)  # refuses bias=True for a built embedding
            # as BADGE names them: the features, whose scale the user can change
            name = "pool" if isinstance(pool, GradientEmbedding) else "features"
        else:
            X, name = pool_field(pool, "features"), "features"
        res = ops._kcenter(X, budget, labeled, seed, self.prune, self.progress, name)
        diagnostics = dict(res.diagnostics, radius=res.radius)
        return Selection(res.indices, diagnostics)


@register
class CoreSetGradients(CoreSet):
    """k-center greedy over last-layer gradient embeddings: :class:`CoreSet` with
    ``embedding="gradients"`` (needs ``"probs"`` or ``"logits"`` and ``"features"``).

    Parameters
    ----------
    bias, prune, progress
        As in :class:`CoreSet`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.strategies import CoreSetGradients
    >>> rng = np.random.default_rng(0)
    >>> probs = rng.dirichlet(np.ones(3), size=50)
    >>> pool = {"probs": probs, "features": rng.normal(size=(50, 4))}
    >>> sel = CoreSetGradients().select(pool, 4, labeled=[0])
    >>> len(sel.indices), 0 in sel.indices.tolist()
    (4, False)
    """

    name = "coreset_gradients"
    requires = ("probs", "features")

    def __init__(self, *, bias: bool = False, prune: bool = True, progress: bool = False) -> None:
        super().__init__(embedding="gradients", bias=bias, prune=prune, progress=progress)
