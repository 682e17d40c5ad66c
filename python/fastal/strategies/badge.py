"""BADGE (Ash et al., ICLR 2020): k-means++ seeding over last-layer gradient embeddings."""

from __future__ import annotations

from typing import Any

from .. import _interop
from .._seeding import _kmeans_pp
from .._validate import check_bool, check_budget
from ..gradients import GradientEmbedding
from .base import Selection, Strategy, gradient_pool, register, unlabeled_rows


@register
class BADGE(Strategy):
    """Batch Active learning by Diverse Gradient Embeddings (Ash et al. 2020, Alg. 1).

    Each unlabeled point gets the gradient of the cross-entropy loss with respect to the last layer,
    taken at its hypothetical label ``argmax p``: ``g = (p - e_ŷ) ⊗ h``. Its norm measures
    uncertainty (a confident prediction has a small gradient), its direction what the point would
    teach. k-means++ seeding over these embeddings picks points that are both: the first is the
    largest norm, every next one is drawn with probability proportional to its squared distance to
    the picks so far. The embedding is kept factored (never ``n × C·d``).

    Parameters
    ----------
    bias : bool, default False
        Include the bias gradient (``h`` extended by a 1). The paper uses the weights only.
        On the CPU the 1 is implicit and the features are read in place either way; on CUDA
        ``bias=True`` costs a copy of the features with that column.
    prune : bool, default True
        Skip the rows a new centre provably cannot bring closer (CPU; the draws do not change).
    progress : bool, default False
        tqdm progress bar over the picks.

    The pool is a :class:`~fastal.GradientEmbedding` of the whole pool, or a mapping with
    ``"probs"`` (or ``"logits"``) and ``"features"`` arrays. Labeled rows are left out of the
    seeding, as in the paper (it runs over the unlabeled pool only). On the CPU the seeding skips
    the rows that a new centre provably cannot bring closer (:func:`fastal.kmeans_pp`'s
    ``prune``; the draws do not change): ``diagnostics["rows_read_fraction"]`` is the share of a
    full pass per pick that was read, with the centres the test reads (``pruned`` says whether
    the test ran).

    Against scikit-activeml's ``Badge`` (1.0): the same embedding and the same first pick (the
    largest norm), but its D² after the first step keeps the squared norms as a running minimum,
    i.e. the distance to the nearest of {origin} + picks, where fastal (like Ash et al.'s code)
    uses the picks only; its random stream differs too, so only the first pick agrees pick for
    pick (tests/test_badge_egl.py pins both laws down).

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.strategies import BADGE
    >>> rng = np.random.default_rng(0)
    >>> pool = {"probs": rng.dirichlet(np.ones(3), 50), "features": rng.normal(size=(50, 4))}
    >>> sel = BADGE().select(pool, 5, labeled=[0, 1], seed=0)
    >>> len(set(sel.indices.tolist())), 0 in sel.indices
    (5, False)
    """

    name = "badge"
    requires = ("probs", "features")

    def __init__(self, *, bias: bool = False, prune: bool = True, progress: bool = False) -> None:
        self.bias = check_bool(bias, "bias")
        self.prune = check_bool(prune, "prune")
        self.progress = check_bool(progress, "progress")

    def select(self, pool: Any, budget: int, labeled: Any = None, *, seed: Any = None) -> Selection:
        emb = gradient_pool(pool, bias=self.bias)
        lab, rest = unlabeled_rows(emb.n, labeled, like=emb.info)
        budget = check_budget(budget, rest.size)
        name = "pool" if isinstance(pool, GradientEmbedding) else "features"
        stats: dict = {}
        if emb.info.device == "cpu" or lab.size == 0:
            # the seeding skips the labeled rows in place: no copy of the unlabeled rows' factors
            # (2 GB at n = 1M, d = 512)
            picks = _kmeans_pp(
                emb, budget, seed=seed, first="norm", progress=self.progress, name=name,
                exclude=lab, prune=self.prune, stats=stats,
            )  # fmt: skip
            indices = _interop.host_numpy(picks)
        else:  # the row indices go where the embedding lives
            candidates = emb.subset(_interop.to_framework(rest, emb.info))
            picks = _kmeans_pp(
                candidates, budget, seed=seed, first="norm", progress=self.progress, name=name,
                prune=self.prune,
            )  # fmt: skip
            indices = rest[_interop.host_numpy(picks)]
        # a full pass reads every row that is not yet a centre: rest.size - t after pick t
        unpruned = budget * rest.size - budget * (budget + 1) // 2
        rows_read = stats.get("rows_read", unpruned)  # (CUDA: the full passes)
        return Selection(
            _interop.to_framework(indices, emb.info),
            {
                "n_candidates": int(rest.size),
                "embedding_dim": emb.dim,
                "bias": bool(self.bias),
                "pruned": bool(stats.get("pruned", False)),
                "rows_read": int(rows_read),
                "rows_read_fraction": rows_read / unpruned if unpruned else 0.0,
            },
        )
