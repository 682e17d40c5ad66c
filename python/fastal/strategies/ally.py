"""ALLY (Elenter et al., NeurIPS 2022): active learning via Lagrangian duality."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _interop
from .._validate import _number, check_bool, check_budget, check_positive_int, host_values, make_rng
from .._warnings import warn_user
from .base import Selection, Strategy, pool_field, register, unlabeled_rows


@register
class ALLY(Strategy):
    """Active Learning via Lagrangian dualitY (Elenter et al., NeurIPS 2022, Alg. 2, §4.2, §5.1).

    The model is trained by primal-dual constrained learning
    (:class:`fastal.pdcl.PrimalDualTrainer`, Alg. 1): one constraint ``ℓ(f(x_i), y_i) <= ε`` per
    labeled sample, whose dual variable λ*_i measures how much the optimal loss would move if that
    constraint were loosened. A dual regression head learns λ* from the labeled samples' embeddings
    and predicts it on the pool; the unlabeled rows' embeddings are clustered by k-means (fastal's
    :func:`~fastal.kmeans`, ``k = budget`` by default, as in all the paper's experiments) and the
    points with the highest predicted λ are taken from each cluster, an equal number per cluster
    (:func:`fastal.ally.pick_per_cluster`). When every predicted λ is the same (every dual 0:
    ε above every labeled loss, which also warns) each cluster gives a seeded random member, the
    paper's "similar to random sampling" (§5.4). Works for classification (cross-entropy) and
    regression (MSE).

    The pool is a mapping with ``"features"`` (n, d) — the embeddings of every pool row, labeled
    ones included — and one of

    - ``"duals"`` (m,): λ* of the labeled rows, in the order of ``labeled`` (the head is trained);
    - ``"dual_predictions"`` (n,): λ̂ for every row, head already applied (used as they are).

    With a torch model, :func:`fastal.torch.select` fills ``"duals"`` from the model a
    :class:`~fastal.pdcl.PrimalDualTrainer` trained, and :func:`fastal.loop.run` trains with
    :attr:`train_fn` (this strategy's trainer) unless given another ``train_fn``.

    Parameters
    ----------
    n_clusters : int, optional
        k; default the budget (one pick per cluster). With ``k < budget`` each cluster gives
        ``budget // k`` or one more; a k above the budget is lowered to it (one pick per cluster;
        ``diagnostics["n_clusters"]`` says which k ran).
    trainer : PrimalDualTrainer, optional
        The primal-dual trainer :func:`fastal.loop.run` uses; default ``PrimalDualTrainer()`` (the
        paper's ε: 0.2 for cross-entropy, 0.1 for MSE).
    head_hidden, head_layers, head_steps, head_lr : int, int, int, float, default 128, 5, 500, 1e-3
        The dual regression head (§5.1: 5 hidden layers, ReLU, batch norm; non-negative output):
        width, hidden layers, Adam steps and learning rate (:func:`fastal.ally.fit_dual_head`;
        the integers >= 1).
    kmeans_iter : int, default 100
        Lloyd iterations.
    kmeans_minibatch : int, optional
        Mini-batch k-means with this batch size. On the CPU the default full batch with bounds
        is faster, million-point pools included (at 1M x 512, k = 1000: 52 s against 31 s for the
        whole selection; see :func:`fastal.kmeans`'s ``minibatch``).
    prune : bool, default True
        Lloyd with distance bounds (:func:`fastal.kmeans`'s ``prune``; the clusters do not change).
    progress : bool, default False
        A tqdm bar over the k-means iterations (the long part on a large pool).

    Diagnostics include ``clusters``: the k-means cluster of every unlabeled row (ascending pool
    index order), ``kmeans_distance_share`` (see :class:`fastal.KMeansResult`), and the predicted
    λ's mean and max.

    Attributes
    ----------
    head_ : DualRegressor or None
        The head of the last selection (for :func:`fastal.ally.maximize_dual`); set by
        ``select`` (None when it fitted no head), absent before the first one.

    Examples
    --------
    From arrays (embeddings and the labeled rows' dual variables):

    >>> import numpy as np
    >>> from fastal.strategies import ALLY
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 8)).astype(np.float32)
    >>> labeled = np.arange(40)
    >>> duals = np.abs(X[labeled, 0])  # pretend λ* grows with |x_0|
    >>> sel = ALLY(head_steps=100).select({"features": X, "duals": duals}, 10, labeled, seed=0)
    >>> len(set(sel.indices.tolist())), bool(np.isin(sel.indices, labeled).any())
    (10, False)
    """

    name = "ally"
    requires = ("features", "duals")
    min_labeled = 2  # the dual regression head trains with batch norm

    def __init__(
        self,
        *,
        n_clusters: int | None = None,
        trainer: Any = None,
        head_hidden: int = 128,
        head_layers: int = 5,
        head_steps: int = 500,
        head_lr: float = 1e-3,
        kmeans_iter: int = 100,
        kmeans_minibatch: int | None = None,
        prune: bool = True,
        progress: bool = False,
    ) -> None:
        from ..pdcl import PrimalDualTrainer

        self.n_clusters = (
            None if n_clusters is None else check_positive_int(n_clusters, "n_clusters")
        )
        if trainer is not None and not callable(trainer):
            raise TypeError(
                "trainer must be a PrimalDualTrainer (or a train_fn(model, dataset, *, task, seed, "
                f"device)), got {type(trainer).__name__}"
            )
        self.trainer = PrimalDualTrainer() if trainer is None else trainer
        self.head_hidden = check_positive_int(head_hidden, "head_hidden")
        self.head_layers = check_positive_int(head_layers, "head_layers")
        self.head_steps = check_positive_int(head_steps, "head_steps")
        self.head_lr = _number(head_lr, "head_lr", positive=True)
        self.kmeans_iter = check_positive_int(kmeans_iter, "kmeans_iter")
        self.prune = check_bool(prune, "prune")
        self.progress = check_bool(progress, "progress")
        self.kmeans_minibatch = (
            None
            if kmeans_minibatch is None
            else check_positive_int(kmeans_minibatch, "kmeans_minibatch")
        )

    @property
    def train_fn(self) -> Any:
        """The primal-dual trainer (``train_fn(model, dataset, *, task, seed, device)``)."""
        return self.trainer

    def select(self, pool: Any, budget: int, labeled: Any = None, *, seed: Any = None) -> Selection:
        from .._torch_arrays import as_torch
        from .._validate import check_matrix
        from ..ally import fit_dual_head, pick_per_cluster
        from ..kmeans import _kmeans

        X = pool_field(pool, "features")
        info = check_matrix(X, "features")
        n = info.shape[0]
        lab, rest = unlabeled_rows(n, labeled, like=info)
        budget = check_budget(budget, rest.size)
        rng = make_rng(seed)
        head_seed, km_seed = (int(s) for s in rng.integers(0, 2**31 - 1, size=2))
        diagnostics: dict[str, Any] = {"n_candidates": int(rest.size)}
        if budget == 0:
            return Selection(_interop.to_framework(np.empty(0, np.int64), info), diagnostics)

        import torch

        Xt = as_torch(X, info)  # zero-copy for numpy and torch, dlpack for cupy
        lab_t, rest_t = (torch.from_numpy(a).to(Xt.device) for a in (lab, rest))
        if isinstance(pool, Mapping) and "dual_predictions" in pool:
            scores = _host_vector(pool["dual_predictions"], n, "dual_predictions")[rest]
            self.head_ = None
        else:
            if not isinstance(pool, Mapping) or "duals" not in pool:
                raise ValueError(
                    "ALLY needs the labeled rows' dual variables: pool['duals'] (train the model "
                    "with fastal.pdcl.PrimalDualTrainer, e.g. ALLY().train_fn) or "
                    "pool['dual_predictions']"
                )
            duals = _host_vector(pool["duals"], lab.size, "duals", what="labeled row")
            if lab.size == 0:
                raise ValueError("ALLY trains its dual head on the labeled rows: labeled is empty")
            # the head trains in the features' precision (float64 for float64, else float32) and
            # reports its MSE in units of λ²; 1e3 leaves room for λ̂ above max λ*
            head_dtype = "float64" if info.dtype == "float64" else "float32"
            limit = min(float(np.finfo(head_dtype).max), np.sqrt(np.finfo(np.float64).max)) / 1e3
            if duals.size and np.abs(duals).max() > limit:
                raise ValueError(
                    f"duals reach {np.abs(duals).max():.3g}, beyond what the dual head computes "
                    f"in {head_dtype} (up to {limit:.3g}); rescale them"
                )
            _check_rows_finite(Xt, lab)  # the head trains on them
            head = fit_dual_head(
                Xt[lab_t], duals, hidden=self.head_hidden, layers=self.head_layers,
                steps=self.head_steps, lr=self.head_lr, seed=head_seed,
            )  # fmt: skip
            # in the head's own batches, gathered one at a time: the same forward passes as on
            # Xt[rest_t] without its copy of the unlabeled rows
            batch = 8192
            scores = np.concatenate([
                head.predict(Xt[rest_t[s : s + batch]], batch_size=batch)
                for s in range(0, rest.size, batch)
            ])  # fmt: skip
            if not np.isfinite(scores).all():
                _check_rows_finite(Xt, rest[~np.isfinite(scores)])  # a NaN row, not the duals
                raise ValueError(
                    f"the dual head's predictions overflow for duals up to {duals.max():.3g}; "
                    "rescale duals"
                )
            self.head_ = head
            diagnostics.update(
                head_train_mse=head.train_loss,
                all_duals_zero=head.net is None,
                mean_dual=float(duals.mean()),
                max_dual=float(duals.max()),
            )

        # the predictions, before a tie among them all is broken at random
        predicted = {"predicted_dual_mean": float(scores.mean()) if scores.size else 0.0,
                     "predicted_dual_max": float(scores.max()) if scores.size else 0.0}  # fmt: skip
        if scores.size and bool(np.all(scores == scores[0])):
            # no dual information (every λ = 0 when ε is above every labeled loss): the paper's
            # method then "performs similarly to random sampling" (§5.4), so a seeded random
            # member of each cluster rather than always its lowest index
            if diagnostics.get("all_duals_zero"):
                warn_user(
                    "ALLY: every dual variable is 0 (each labeled loss is below its ε), so they "
                    "say nothing: the picks are a random member of each cluster; a smaller "
                    "epsilon makes them informative",
                )
            scores = rng.random(scores.size)
            diagnostics["random_within_clusters"] = True
        k = budget if self.n_clusters is None else min(self.n_clusters, budget)
        km = _kmeans(
            X, k, seed=km_seed, max_iter=self.kmeans_iter, minibatch=self.kmeans_minibatch,
            prune=self.prune, name="features", exclude=lab, progress=self.progress,
        )  # fmt: skip
        clusters = _interop.host_numpy(km.labels)
        picks = rest[pick_per_cluster(clusters, scores, budget)]
        diagnostics.update(
            n_clusters=k, clusters=clusters, kmeans_inertia=km.inertia, kmeans_iter=km.n_iter,
            kmeans_distance_share=km.distance_share, **predicted,
        )  # fmt: skip
        return Selection(_interop.to_framework(picks, info), diagnostics)


def _host_vector(v: Any, size: int, name: str, what: str = "pool row") -> np.ndarray:
    """A finite float64 host vector of one real number per ``what``; strings, complex numbers and
    booleans are a ``TypeError`` naming ``name``."""
    arr = host_values(v, name, "real numbers", kinds="iuf")
    if arr.shape != (size,):
        raise ValueError(f"{name} must hold one value per {what} ({size}), got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def _check_rows_finite(Xt: Any, rows: np.ndarray) -> None:
    """Refuse NaN / Inf in ``features`` rows ``rows`` (pool indices), naming the first."""
    import torch

    from .._torch_arrays import torch_isfinite_rows

    ok = torch_isfinite_rows(Xt[torch.from_numpy(rows).to(Xt.device)]).cpu().numpy()
    if not ok.all():
        raise ValueError(
            f"features contains NaN or Inf in {int((~ok).sum())} row(s), first at row "
            f"{int(rows[~ok].min())}"
        )
