"""Robust k-center selection (Sener & Savarese, ICLR 2018, §4.3): Alg. 2 over embeddings."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._interop import host_numpy
from .._validate import _number, check_bool, check_index_values
from ..robust_kcenter import MAX_POINTS, _robust_kcenter, check_outliers, check_size
from .base import Selection, Strategy, pool_field, register

#: Largest materialised GradientEmbedding (elements) the strategy accepts: 1 GiB as float32.
_MAX_DENSE = 1 << 28


@register
class RobustKCenter(Strategy):
    """Robust k-center with outliers (Sener & Savarese, ICLR 2018, §4.3, eq. 6, Alg. 2).

    Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set Approach",
    ICLR 2018. Starts from k-center greedy (Alg. 1, the :class:`~fastal.strategies.CoreSet`
    picks) and bisects over candidate radii, deciding each with the feasibility MIP of eq. 6
    (HiGHS via scipy): the ``budget`` picks minimise the covering radius of the labeled points
    and the picks, exactly, leaving at most ``Ξ`` points uncovered. See
    :func:`fastal.robust_kcenter.robust_kcenter`.

    The MIP is O(n²): pools are limited to ``max_points`` unlabeled points (2000 by default:
    seconds on clustered embeddings, minutes or more on unclustered data, on 2 cores); above it
    use ``CoreSet`` or ``candidates=``, and bound the time with ``time_limit``.

    Parameters
    ----------
    outliers : int or float, default 1e-4
        Ξ: an int count, or a float fraction of the unlabeled points (the paper's ``1e-4``, which
        allows no outlier below 10 000 points).
    candidates : 1-D integer indices, optional
        Rows allowed as new centres (default: all unlabeled rows).
    max_points : int, default 2000
        Size limit, ``n_unlabeled * n_candidates <= max_points ** 2``.
    time_limit : float, optional
        Seconds for all MIP solves; on time-out the best certified solution so far is returned
        and ``diagnostics["optimal"]`` is False.
    progress : bool, default False
        A tqdm bar over the bisection's MIP radii.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.strategies.robust_kcenter import RobustKCenter
    >>> X = np.random.default_rng(0).normal(size=(60, 4))
    >>> sel = RobustKCenter(outliers=1).select(X, 3, labeled=[0, 1])
    >>> len(sel.indices), sel.diagnostics["radius"] <= sel.diagnostics["greedy_radius"]
    (3, True)
    """

    name = "robust_coreset"
    requires = ("features",)

    def __init__(
        self,
        *,
        outliers: float = 1e-4,
        candidates: Any = None,
        max_points: int = MAX_POINTS,
        time_limit: float | None = None,
        progress: bool = False,
    ) -> None:
        # checked here, not at the first select (after a round of training in a loop)
        check_outliers(outliers)
        check_size(0, 0, max_points, False)  # max_points: a positive integer
        if time_limit is not None:
            _number(time_limit, "time_limit", positive=True)
        if candidates is not None:
            check_index_values(candidates, "candidates")
        self.outliers = outliers
        self.candidates = candidates
        self.max_points = max_points
        self.time_limit = time_limit
        self.progress = check_bool(progress, "progress")

    def select(self, pool: Any, budget: int, labeled: Any = None, *, seed: Any = None) -> Selection:
        """Select from ``pool``: an (n, d) embedding array (numpy, torch or cupy), a mapping with
        ``"features"``, or a small :class:`~fastal.GradientEmbedding` (materialised).

        Diagnostics: those of :func:`~fastal.robust_kcenter.robust_kcenter` plus ``radius``,
        ``outliers``, ``greedy_radius`` and ``optimal``.

        Parameters
        ----------
        pool : array of shape (n, d), mapping or GradientEmbedding
            The embeddings (see above), copied to the host as float64.
        budget : int
            Number of new centres.
        labeled : 1-D integer indices, optional
            Already-labeled rows: always centres, never picked, never outliers.
        seed : None, int >= 0 or numpy Generator
            The greedy start's first centre when there is no labeled row.

        Returns
        -------
        Selection
            ``indices``: (budget,) int64, ascending, in the pool's framework and device;
            ``diagnostics`` as above.

        Raises
        ------
        ValueError
            If the problem is larger than ``max_points`` allows (see
            :func:`~fastal.robust_kcenter.robust_kcenter`).
        """
        from ..gradients import GradientEmbedding

        if isinstance(pool, GradientEmbedding):
            X, name = self._dense(pool, labeled), "X"
        else:
            X, name = pool_field(pool, "features"), "features"
        res = _robust_kcenter(
            X, budget, labeled, outliers=self.outliers, candidates=self.candidates,
            max_points=self.max_points, time_limit=self.time_limit, seed=seed, name=name,
            progress=self.progress,
        )  # fmt: skip
        diagnostics = dict(
            res.diagnostics,
            radius=res.radius,
            outliers=res.outliers,
            greedy_radius=res.greedy_radius,
            optimal=res.optimal,
        )
        return Selection(res.indices, diagnostics)

    def _dense(self, emb: Any, labeled: Any) -> Any:
        """The gradient matrix, after checking that the problem fits (before materialising)."""
        from .base import unlabeled_rows

        n, dim = emb.shape
        _, unl = unlabeled_rows(n, labeled)
        if self.candidates is None:
            eligible = unl.size
        else:  # as robust_kcenter counts them: the distinct candidates outside the labeled set
            eligible = np.intersect1d(host_numpy(self.candidates).ravel(), unl).size
        try:
            check_size(unl.size, eligible, self.max_points, self.candidates is not None)
        except ValueError as err:
            raise ValueError(f"GradientEmbedding pool: {err}") from None
        if n * dim > _MAX_DENSE:
            raise ValueError(
                f"GradientEmbedding pool of shape ({n}, {dim}) is too large to materialise for "
                f"robust k-center (more than {_MAX_DENSE} elements); pass features instead"
            )
        return emb.dense()
