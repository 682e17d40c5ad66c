"""The greedy driver (Alg. 1): checks, the forward selection loop, and its diagnostics."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from .. import _interop
from .._threads import one_thread_if_small
from .._validate import (
    _number,
    check_bool,
    check_budget,
    check_choice,
    check_indices,
    check_positive_int,
    make_rng,
)
from . import _common
from ._common import (
    _all_finite,
    _check_probs,
    _tensor,
    _torch,
)
from .inner import CGBreakdown, _adam, _loss_grad, _newton
from .outer import _inverse_hvp_reduced, _Span, _upper_pass, candidate_scores


class BilevelResult(NamedTuple):
    """Picks in selection order (int64 numpy) and a diagnostics dict.

    Returned by :func:`bilevel_select`; a NamedTuple (``indices, diagnostics = res``).

    Attributes
    ----------
    indices : (budget,) int64 ndarray
        The picks in selection order: the random ones first (``random_fraction``), then the
        greedy ones. Always numpy, whatever the framework of ``Z``.
    diagnostics : dict
        ``solver``, ``rank``, ``random`` and ``greedy`` (the two parts of ``indices``), per outer
        step ``inner_loss``, ``inner_iters``, ``inner_grad_norm``, ``upper_loss``,
        ``cg_residual``, ``cg_iters``; ``pick_scores``, ``first_scores``, ``seconds`` (dict of
        ``inner``, ``pool_pass``, ``cg``, ``scores``, ``total``) and ``n_steps`` (see
        :func:`empty_diagnostics`).

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.bilevel import bilevel_select
    >>> rng = np.random.default_rng(0)
    >>> Z, soft = rng.normal(size=(50, 4)), rng.dirichlet(np.ones(2), 50)
    >>> indices, diagnostics = bilevel_select(Z, [0, 1], soft, [0, 1], 4, seed=0)
    >>> indices.dtype.name, len(indices), len(diagnostics["random"]), diagnostics["n_steps"]
    ('int64', 4, 0, 4)
    """

    indices: np.ndarray
    diagnostics: dict


def one_hot(labels: Any, n_classes: int) -> np.ndarray:
    """Integer classes (k,) as float64 one-hot rows (k, C).

    Parameters
    ----------
    labels : 1-D integer array of shape (k,)
        Classes in ``[0, n_classes)``, any framework (read to the host).
    n_classes : int
        C, the number of columns.

    Returns
    -------
    (k, C) float64 ndarray
        Row ``i`` is 1 at column ``labels[i]`` and 0 elsewhere (numpy, whatever the input).

    Raises
    ------
    TypeError
        If ``labels`` is not 1-D integer.
    ValueError
        If a class is outside ``[0, n_classes)``.

    Examples
    --------
    >>> from fastal.bilevel import one_hot
    >>> one_hot([2, 0], 3).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    lab = np.asarray(_interop.host_numpy(labels))
    if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(
            f"labels must be 1-D integer classes, got dtype {lab.dtype} and shape {lab.shape}"
        )
    if lab.size and (lab.min() < 0 or lab.max() >= n_classes):
        raise ValueError(
            f"labels must be classes in [0, {n_classes}), got values in [{lab.min()}, {lab.max()}]"
        )
    out = np.zeros((lab.size, n_classes))
    out[np.arange(lab.size), lab] = 1.0
    return out


class _CheckedProbs(NamedTuple):
    """Pseudo-label rows already checked and normalised by
    :func:`~fastal.bilevel._common._check_probs` (or a softmax), in a float64 buffer that the
    caller hands over: :func:`bilevel_select` renormalises them in place, as ``_check_probs`` would
    in a copy, and writes the labeled rows' targets into them."""

    probs: Any


def _best_first(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest of the finite ``scores``, highest first, ties to the lowest
    position: ``np.lexsort((np.arange(n), -scores))[:k]`` in O(n + k log k) (a partition, then a
    sort of the k) instead of an O(n log n) sort of every candidate."""
    n = scores.size
    if k == 1:
        return np.array([int(np.argmax(scores))], dtype=np.int64)  # argmax: the first maximum
    if k >= n:
        return np.lexsort((np.arange(n), -scores)).astype(np.int64)
    kth = np.partition(scores, n - k)[n - k]  # the k-th highest value
    above = np.flatnonzero(scores > kth)
    pos = np.concatenate([above, np.flatnonzero(scores == kth)[: k - above.size]])
    return pos[np.lexsort((pos, -scores[pos]))].astype(np.int64)


def _random_count(random_fraction: float, budget: int) -> int:
    return math.floor(random_fraction * budget + 1e-9)


def resolve_solver(solver: str, augment: Any) -> str:
    """The inner solver ``solver`` ("auto", "newton" or "adam") names: "auto" is Adam with
    augmentation (its batches are augmented), Newton-CG without.

    Parameters
    ----------
    solver : {"auto", "newton", "adam"}
        The requested inner solver (not validated here: any other value gives ``"newton"``).
    augment : callable or None
        The augmentation, if any (only whether it is None matters).

    Returns
    -------
    {"newton", "adam"}
        ``"adam"`` for ``solver="adam"``, or ``"auto"`` with ``augment``; else ``"newton"``.

    Examples
    --------
    >>> from fastal.bilevel import resolve_solver
    >>> resolve_solver("auto", None), resolve_solver("auto", lambda x, rng: x)
    ('newton', 'adam')
    """
    return "adam" if solver == "adam" or (solver == "auto" and augment is not None) else "newton"


def empty_diagnostics(solver: str, rank: int) -> dict[str, Any]:
    """:func:`bilevel_select`'s diagnostics before its first step (what a budget of 0 returns).

    Parameters
    ----------
    solver : str
        The resolved inner solver (:func:`resolve_solver`), stored under ``"solver"``.
    rank : int
        m, the number of features, stored under ``"rank"``.

    Returns
    -------
    dict
        ``solver``, ``rank``; empty lists ``inner_loss``, ``inner_iters``, ``inner_grad_norm``,
        ``upper_loss``, ``cg_residual``, ``cg_iters``, ``pick_scores``; ``first_scores`` None;
        empty int64 arrays ``random`` and ``greedy``; ``seconds`` (``inner``, ``pool_pass``,
        ``cg``, ``scores``, ``total``, all 0.0) and ``n_steps`` 0. A new dict on every call.

    Examples
    --------
    >>> from fastal.bilevel import empty_diagnostics
    >>> d = empty_diagnostics("newton", 8)
    >>> d["solver"], d["rank"], d["n_steps"], d["inner_loss"], d["random"].dtype.name
    ('newton', 8, 0, [], 'int64')
    """
    return {
        "solver": solver,
        "rank": rank,
        "inner_loss": [],
        "inner_iters": [],
        "inner_grad_norm": [],
        "upper_loss": [],
        "cg_residual": [],
        "cg_iters": [],
        "pick_scores": [],
        "first_scores": None,
        "random": np.empty(0, np.int64),
        "greedy": np.empty(0, np.int64),
        "seconds": {"inner": 0.0, "pool_pass": 0.0, "cg": 0.0, "scores": 0.0, "total": 0.0},
        "n_steps": 0,
    }


@contextlib.contextmanager
def _solvable(zt: Any, reg: float) -> Iterator[None]:
    """Conjugate gradients that broke down on the inner Hessian, as a message naming the scale of
    the features and reg (float64 features near 1e16 with reg = 1e-4: iterates grew 100x a step
    to Inf, and the message named no argument)."""
    try:
        yield
    except CGBreakdown:
        hint = "" if zt.dtype == _torch().float64 else ", or pass float64 features"
        peak = float(zt.abs().max())
        raise ValueError(
            f"conjugate gradients on the inner problem's Hessian broke down in {zt.dtype} (NaN "
            f"or Inf): the features (up to {peak:.3g} in Z) are too large or reg = {reg:.3g} "
            f"too small for it (scale Z down or raise reg{hint})"
        ) from None


def bilevel_select(
    Z: Any,
    targets_labeled: Any,
    soft_pool: Any,
    labeled: Any,
    budget: int,
    *,
    reg: float = 1e-4,
    cg_steps: int = 30,
    cg_tol: float = 1e-10,
    precondition: bool = True,
    random_fraction: float = 0.1,
    per_step: int = 1,
    solver: str = "auto",
    inner_tol: float = 1e-6,
    inner_iters: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-2,
    augment: Callable[[Any, np.random.Generator], Any] | None = None,
    raw: Any = None,
    featurize: Callable[[Any], Any] | None = None,
    seed: Any = None,
    progress: bool = False,
) -> BilevelResult:
    """Greedy bilevel coreset selection (Borsos et al. 2021, eq. 2–3, Alg. 1) on features ``Z``.

    Inner points ``S = labeled ∪ B`` (labels for labeled rows, pseudo-labels for ``B``); upper
    objective ``G`` = summed cross-entropy over *all* ``n`` rows (labels on labeled rows,
    pseudo-labels elsewhere, eq. 3). Each outer step: solve the inner problem (warm-started),
    compute ``A = softmax(Z Wᵀ) - T`` and ``∇G = Aᵀ Z`` in one pass over the pool, ``V = H⁻¹ ∇G``
    by ``cg_steps`` CG steps (:func:`.inverse_hvp`), score every remaining candidate by
    ``a_xᵀ V z_x`` (:func:`.candidate_scores`) and add the best (ties to the lowest index).

    Random fill (the paper's practice, §3: "90% by Alg. 1, 10% uniformly at random"):
    ``⌊random_fraction · budget⌋`` points are drawn uniformly (seeded) from the unlabeled pool
    *first*; they enter the inner problem with their pseudo-labels, like greedy picks, since they
    will be labeled too, so the greedy part summarises the pool *given* them (it does not spend
    picks on what the random points already cover). They come first in ``indices``.

    ``per_step > 1`` (a departure from the paper, for large budgets): each outer step adds the
    ``per_step`` best-scoring candidates at once (the last step fewer), dividing the number of
    inner solves and pool passes by ``per_step``; the points of one step do not see each other,
    so batches are less diverse than with the paper's one-at-a-time greedy.

    Cost, and large pools: there are ``⌈(budget - ⌊random_fraction · budget⌋) / per_step⌉`` outer
    steps, and each makes two passes over ``Z`` (``∇G`` and the scores, about ``2 n m C``
    multiply-adds, linear in ``n``) plus an inner solve and a CG solve whose cost grows with
    ``|labeled|`` + picks and ``m``, not with ``n``. Nothing bounds the total time. On a 2-core
    CPU the two passes took 0.12 s per step at ``n = 10⁵`` and 1.2 s at ``n = 10⁶`` (``m = 513``,
    ``C = 10``), and the Newton solve 0.13 s per step with 100 labeled rows but 2.7–8 s with 1000:
    the paper's budget of 1000 with ``per_step=1`` at ``n = 10⁶`` is 20–60 minutes, and
    ``per_step=10`` cuts that tenfold. For pools of 10⁵ rows and more, pass ``per_step`` of about
    ``budget / 100``. The Newton solve is capped at 100 Newton iterations of at most 250 CG steps
    each and stops at ``inner_tol``; a looser ``inner_tol`` (1e-4) shortens it on near-separable
    data. The Adam solver costs ``inner_iters`` minibatch steps per outer step.

    Memory: besides ``Z``, the pass keeps ``A`` (n, C) in ``Z``'s dtype, the targets (n, C) float64
    (a new tensor, or with :class:`fastal.strategies.BilevelCoreset` the strategy's own buffer)
    and a few float64 vectors of length ``n``; finiteness and probabilities are checked in row
    chunks.

    Parameters
    ----------
    Z : array (n, m)
        Features of every row (labeled and pool), e.g. :func:`.nystrom_features`. float32 or
        float64; the pool passes run in this dtype, the inner problem and CG in float64.
    targets_labeled : array (|L|,) int or (|L|, C) float, or None
        Labels of the ``labeled`` rows in the order of ``labeled``; None uses their pseudo-labels.
    soft_pool : array (n, C)
        Pseudo-label distributions ỹ of every row (the labeled rows' are used only when
        ``targets_labeled`` is None).
    labeled : array of int, or None
    budget : int
    reg : float > 0, default 1e-4
        λ of eq. 3.
    cg_steps, cg_tol : CG iterations (paper: 30) and relative-residual early stop.
    precondition : bool, default True
        Block-Jacobi preconditioned CG (see :func:`.inverse_hvp`); False: plain CG, the paper's.
    random_fraction : float in [0, 1], default 0.1
    per_step : int >= 1, default 1
        Picks per outer step (see above; 1 is the paper's algorithm).
    solver : {"auto", "newton", "adam"}
        Inner solver. ``"auto"``: Newton-CG (:func:`.solve_inner`) without ``augment``, Adam with
        it.
        ``"adam"`` is the paper's: ``inner_iters`` steps (paper: 10³) of batch ``batch_size``
        (paper: 64) at learning rate ``lr`` (not given in the paper), warm-started; the first
        solve starts from zero weights where Alg. 1 draws them at random (seeded runs then do not
        depend on an initialisation draw; the problem is strictly convex).
    inner_tol : float, default 1e-6
        Newton stops when ``|∇F| ≤ inner_tol · 2λ |W|``: F is 2λ-strongly convex, so W is then
        within ``inner_tol · |W|`` of the optimum (or at the rounding floor ``|∇F| ≤ 1e-14 ·
        |∇F(0)|``). A test relative to ``|∇F(0)|`` alone stopped with W a few percent off on
        near-separable data and skipped the re-solve after most picks.
    inner_iters : int >= 1, default 1000
        Adam steps per inner solve (``solver="adam"``).
    batch_size : int >= 1, default 64
        Adam's minibatch size.
    lr : float > 0, default 1e-2
        Adam's learning rate.
    augment : callable ``augment(raw_rows, rng) -> raw_rows``, optional
        Data augmentation on raw rows (torch tensors, the rows of ``raw``) for the inner minibatches
        (the paper's keyword-spotting augmentations); features are recomputed with ``featurize``
        for every minibatch. The Hessian of eq. 2 is taken on the un-augmented features. It must
        return a finite torch tensor with one row per row given (``ValueError`` naming it).
    raw : array (n, ...), optional
        Raw rows (e.g. the kernel's inputs); required with ``augment``.
    featurize : callable ``featurize(raw_rows) -> (k, m) tensor``, optional
        Features of raw rows, e.g. ``Nystrom.transform_torch``; required with ``augment``.
    seed : int or numpy Generator
        Random fill and minibatches.
    progress : bool
        tqdm bar over the picks.

    Returns
    -------
    BilevelResult
        ``indices`` (budget,) int64, in selection order; ``diagnostics``: ``random`` and
        ``greedy`` picks, per outer step ``inner_loss``, ``inner_iters``, ``inner_grad_norm``,
        ``upper_loss``, ``cg_residual``, ``cg_iters``, ``pick_scores``; ``first_scores`` (n,)
        float64 (NaN for non-candidates) of the first greedy step; ``rank`` (m); ``seconds``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.bilevel import bilevel_select
    >>> rng = np.random.default_rng(0)
    >>> Z, soft = rng.normal(size=(100, 6)), rng.dirichlet(np.ones(3), 100)
    >>> res = bilevel_select(Z, [0, 1, 2], soft, [0, 1, 2], 10, seed=0)
    >>> len(set(res.indices.tolist())), len(res.diagnostics["random"])
    (10, 1)
    """
    from tqdm.auto import tqdm

    torch = _torch()
    t_start = time.perf_counter()
    zt, zinfo = _tensor(Z, "Z")
    if zt.ndim != 2 or zt.shape[0] == 0 or zt.shape[1] == 0:
        raise ValueError(f"Z must be 2-D (n, m) and non-empty, got shape {tuple(zt.shape)}")
    if not zt.is_floating_point():
        raise TypeError(f"Z must be floating point, got {zt.dtype}")
    if zt.dtype not in (torch.float32, torch.float64):
        zt = zt.float()
    if not _all_finite(zt):
        raise ValueError("Z contains NaN or Inf")
    zt = zt.contiguous()
    n, m = zt.shape
    dev = zt.device
    checked = isinstance(soft_pool, _CheckedProbs)
    st = soft_pool.probs if checked else _tensor(soft_pool, "soft_pool")[0]
    if st.ndim != 2 or st.shape[0] != n:
        raise ValueError(
            f"soft_pool must be (n, C) with n = {n} rows like Z, got shape {tuple(st.shape)}"
        )
    if checked:  # what _check_probs returns, in the buffer handed over (no n × C copy)
        T = st.to(dev)
        T.div_(T.sum(1, keepdim=True))
    else:  # a new tensor: the labeled rows are written into it below
        T = _check_probs(st.to(dev), "soft_pool")
    C = int(T.shape[1])
    lab = check_indices(labeled, n, "labeled", like=zinfo)
    if targets_labeled is not None:
        tl = targets_labeled if _interop.is_array(targets_labeled) else np.asarray(targets_labeled)
        scalar = len(_interop.describe(tl, "targets_labeled").shape) == 0  # as_torch makes it (1,)
        tl_t = _tensor(tl, "targets_labeled")[0]
        if scalar or tl_t.ndim == 0:
            raise ValueError(
                "targets_labeled must be 1-D classes or 2-D probabilities, got a scalar"
            )
        if tl_t.shape[0] != lab.size:
            raise ValueError(
                f"targets_labeled must have one entry per labeled row ({lab.size}), "
                f"got {tl_t.shape[0]}"
            )
        if tl_t.ndim == 1:
            T[torch.from_numpy(lab).to(dev)] = torch.from_numpy(
                one_hot(_interop.host_numpy(tl_t), C)
            ).to(dev)
        elif tl_t.ndim == 2 and tl_t.shape[1] == C and tl_t.is_floating_point():
            T[torch.from_numpy(lab).to(dev)] = _check_probs(tl_t.to(dev), "targets_labeled")
        else:
            raise ValueError(
                f"targets_labeled must be (|L|,) integer classes or (|L|, {C}) probabilities, got "
                f"shape {tuple(tl_t.shape)} and dtype {tl_t.dtype}"
            )
    is_lab = np.zeros(n, dtype=bool)
    is_lab[lab] = True
    rest = np.flatnonzero(~is_lab)
    b = check_budget(budget, rest.size)
    reg = _number(reg, "reg", positive=True)
    random_fraction = _number(random_fraction, "random_fraction", minimum=0.0)
    if random_fraction > 1:
        raise ValueError(f"random_fraction must be in [0, 1], got {random_fraction}")
    for name, v in (
        ("per_step", per_step),
        ("cg_steps", cg_steps),
        ("inner_iters", inner_iters),
        ("batch_size", batch_size),
    ):
        check_positive_int(v, name)
    solver = check_choice(solver, "solver", ("auto", "newton", "adam"))
    lr = _number(lr, "lr", positive=True)
    inner_tol = _number(inner_tol, "inner_tol", minimum=0.0)
    cg_tol = _number(cg_tol, "cg_tol", minimum=0.0)
    precondition = check_bool(precondition, "precondition")
    check_bool(progress, "progress")
    if featurize is not None and not callable(featurize):
        raise TypeError(f"featurize must be callable, got {type(featurize).__name__}")
    if augment is not None:
        if not callable(augment):
            raise TypeError(f"augment must be callable, got {type(augment).__name__}")
        if raw is None or featurize is None:
            raise ValueError(
                "augment needs raw (the rows it transforms) and featurize (their features)"
            )
        if solver == "newton":
            raise ValueError(
                "solver='newton' is full-batch and cannot use augment; use 'adam' or 'auto'"
            )
    use_adam = resolve_solver(solver, augment) == "adam"
    rng = make_rng(seed)
    raw_t = None
    if augment is not None:
        raw_t = _tensor(raw, "raw")[0]
        if raw_t.shape[0] != n:
            raise ValueError(f"raw must have n = {n} rows like Z, got shape {tuple(raw_t.shape)}")

    diag = empty_diagnostics("adam" if use_adam else "newton", int(m))
    seconds = diag["seconds"]
    n_random = _random_count(random_fraction, b)
    random_picks = (
        rng.choice(rest, size=n_random, replace=False) if n_random else np.empty(0, np.int64)
    )
    random_picks = random_picks.astype(np.int64)
    available = ~is_lab
    available[random_picks] = False
    S = np.concatenate([lab, random_picks]).astype(np.int64)

    span = _Span(m, dev)
    span.add(zt[torch.from_numpy(S).to(dev)])
    U = torch.zeros((C, span.Q.shape[1]), dtype=torch.float64, device=dev)  # W = U Qᵀ (Newton)
    W_full = torch.zeros((C, m), dtype=torch.float64, device=dev)  # Adam's W
    greedy: list[int] = []
    n_greedy = b - n_random

    def inner_batch(r: np.random.Generator, S_t: Any) -> tuple[Any, Any, Any]:
        k = torch.from_numpy(r.integers(S_t.shape[0], size=int(batch_size))).to(dev)
        rows = S_t[k]
        if augment is None:
            zb = zt[rows].to(torch.float64)
        else:
            batch = raw_t[rows]
            out = augment(batch, r)
            # featurize's errors would name its input (X) or fail on numpy: name augment here
            if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != batch.shape[0]:
                got = tuple(out.shape) if hasattr(out, "shape") else ""
                raise ValueError(
                    f"augment must return a torch tensor of {batch.shape[0]} rows (it was given "
                    f"{tuple(batch.shape)}), got {type(out).__name__} {got}"
                )
            if out.is_floating_point() and not bool(torch.isfinite(out).all()):
                raise ValueError("augment returned NaN or Inf values")
            zb = torch.as_tensor(featurize(out), device=dev).to(torch.float64)
            if tuple(zb.shape) != (rows.shape[0], m):
                raise ValueError(
                    f"featurize must return ({rows.shape[0]}, {m}) features, got {tuple(zb.shape)}"
                )
        return zb, T[rows], torch.ones(rows.shape[0], dtype=torch.float64, device=dev)

    with tqdm(total=n_greedy, disable=not progress, desc="bilevel greedy", unit="pick") as bar:
        while len(greedy) < n_greedy:
            # inner problem on S = labeled ∪ random ∪ greedy (eq. 3, lower level)
            t0 = time.perf_counter()
            S_t = torch.from_numpy(S).to(dev)
            T_S = T[S_t]
            w_S = torch.ones(S.size, dtype=torch.float64, device=dev)
            if use_adam:
                if S.size:
                    with one_thread_if_small(dev, batch_size * m * max(C, m), _common._SMALL_WORK):
                        W_full = _adam(
                            W_full, lambda r, S_t=S_t: inner_batch(r, S_t), S.size, reg,
                            iters=inner_iters, lr=lr, rng=rng,
                        )  # fmt: skip
                f, g, P_S = _loss_grad(W_full, span.Zs, T_S, w_S, reg)
                diag["inner_loss"].append(float(f))
                diag["inner_iters"].append(int(inner_iters) if S.size else 0)
                diag["inner_grad_norm"].append(float(g.norm()))
                W = W_full
                Minv_S = None
            else:
                with (
                    one_thread_if_small(dev, S.size * span.Q.shape[1] * C, _common._SMALL_WORK),
                    _solvable(zt, reg),
                ):
                    U, info = _newton(
                        span.X, T_S, w_S, reg, U, tol=_common._NEWTON_FLOOR, max_iter=100,
                        cg_max=250, w_rtol=inner_tol,
                    )  # fmt: skip
                P_S, Minv_S = info["P"], info["precond"]
                diag["inner_loss"].append(info["loss"])
                diag["inner_iters"].append(info["iters"])
                diag["inner_grad_norm"].append(info["grad_norm"])
                W = U @ span.Q.T
            t1 = time.perf_counter()
            # upper gradient over labeled ∪ pool, one pass
            with one_thread_if_small(dev, n * m * C, _common._SMALL_WORK):
                A, G, upper = _upper_pass(zt, W, T)
            diag["upper_loss"].append(upper)
            t2 = time.perf_counter()
            with (
                one_thread_if_small(dev, S.size * span.Q.shape[1] * C, _common._SMALL_WORK),
                _solvable(zt, reg),
            ):
                V, res, it = _inverse_hvp_reduced(
                    span, P_S, w_S, G, reg, int(cg_steps), cg_tol, precondition, Minv_S
                )
            diag["cg_residual"].append(res)
            diag["cg_iters"].append(it)
            t3 = time.perf_counter()
            with one_thread_if_small(dev, n * m * C, _common._SMALL_WORK):
                scores = candidate_scores(zt, A, V)
            scores_np = _interop.host_numpy(scores).astype(np.float64)
            del A, scores  # else they live on while the next step's pass allocates new ones
            cand = np.flatnonzero(available)
            if diag["first_scores"] is None:
                first = np.full(n, np.nan)
                first[cand] = scores_np[cand]
                diag["first_scores"] = first
            k = min(int(per_step), n_greedy - len(greedy))
            sc = scores_np[cand]
            if not np.isfinite(sc).all():  # NaN would sort last and inf first: picks by overflow
                hint = "" if zt.dtype == torch.float64 else ", or pass float64 features"
                raise ValueError(  # H⁻¹ ∇G grows as 1 / reg: reg = 1e-300 blamed the features
                    f"the eq.-2 scores of the pool are not finite in {zt.dtype}: the features are "
                    f"too large or reg = {reg:.3g} too small (scale Z down or raise reg{hint})"
                )
            order = _best_first(sc, k)  # highest score, ties to the lowest index (cand ascends)
            picks = cand[order]
            t4 = time.perf_counter()
            seconds["inner"] += t1 - t0
            seconds["pool_pass"] += t2 - t1
            seconds["cg"] += t3 - t2
            seconds["scores"] += t4 - t3
            greedy.extend(int(p) for p in picks)
            diag["pick_scores"].extend(float(v) for v in sc[order])
            available[picks] = False
            S = np.concatenate([S, picks])
            added = span.add(zt[torch.from_numpy(picks).to(dev)])
            if not use_adam:  # new basis directions are orthogonal to W: extend U by zeros
                U = torch.cat([U, U.new_zeros((C, added))], 1)
            bar.update(len(picks))

    indices = np.concatenate([random_picks, np.asarray(greedy, dtype=np.int64)]).astype(np.int64)
    seconds["total"] = time.perf_counter() - t_start
    diag.update(random=random_picks, greedy=np.asarray(greedy, dtype=np.int64), seconds=seconds,
                n_steps=len(diag["inner_loss"]))  # fmt: skip
    return BilevelResult(indices, diag)
