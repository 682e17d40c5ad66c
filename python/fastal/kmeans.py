"""k-means++ seeding (D² sampling) and k-means (Lloyd, mini-batch) over dense or factored pools.

``kmeans_pp`` runs in the compiled kernels (one fused pass per pick, on CPU or CUDA) over a dense
matrix or a :class:`~fastal.GradientEmbedding`. ``kmeans`` (dense only: the mean of rank-one
gradients is not rank one) assigns rows with fastal's min-distance kernel, or for larger ``k`` by
GEMM (``|x|² - 2 x·c + |c|²``, then arg-min) and updates centres by a float64 segmented sum. On the
CPU one compiled pass per Lloyd iteration does all three (float16 / bfloat16 rows widened to
float32 as they are read, so a 16-bit pool fits exactly as its float32 copy): a BLAS GEMM per
chunk of rows (the MKL that torch links or scipy's OpenBLAS; see ``_blas._gemm_backend``), called
from fastal's OpenMP threads with BLAS limited to one thread (one thread pool, as scikit-learn's
Lloyd); elsewhere GEMM tiles from torch (cuBLAS on CUDA). There, rows whose best centre leads by
less than the GEMM's rounding are settled by direct distance, and with ``prune`` the iterations
skip the rows that Yinyang bounds settle (``_lloyd_fused._BoundedLloyd``).

This module holds the public functions and the k-means driver (:func:`_kmeans`); the parts are
private modules beside it: :mod:`fastal._seeding` (k-means++ and the starting centres),
:mod:`fastal._lloyd` (assignment, update, tolerance, mini-batch), :mod:`fastal._lloyd_fused` (the
fused and bounded CPU steps) and :mod:`fastal._blas` (the BLAS GEMM those call).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _interop
from ._blas import _one_blas_thread
from ._lloyd import (
    _assign,
    _Excluded,
    _lloyd_pass,
    _minibatch,
    _overflow,
    _relocate_empty,
    _row_sqnorms,
    _tol_abs,
)
from ._lloyd_fused import _BoundedLloyd, _fused_lloyd
from ._pool import check_spread_torch, cpu_pool
from ._seeding import _initial_centres, _kmeans_pp, _other_rows
from ._torch_arrays import as_torch, from_torch, torch_isfinite_rows
from ._validate import check_bool, check_budget, check_matrix, make_rng


def _torch_acc(dtype: str):
    import torch

    return torch.float64 if dtype == "float64" else torch.float32


def kmeans_pp(
    X: Any,
    k: int,
    *,
    seed: int | np.random.Generator | None = None,
    first: str = "random",
    labeled: Any = None,
    progress: bool = False,
    prune: bool = True,
) -> Any:
    """k-means++ seeding: ``k`` rows drawn by D² sampling (Arthur & Vassilvitskii 2007).

    Each pick is drawn with probability proportional to the squared distance to the nearest centre
    chosen so far (labeled rows count as centres). One fused pass per pick updates those distances
    and the sums the next draw needs: O(n d) per pick, or O(n (C + dh)) for a factored embedding.
    On the CPU the pass skips, as k-center greedy does, the rows that the new centre provably
    cannot bring closer (``prune``): the distances, and so the draws, are those of the full pass.

    Parameters
    ----------
    X : array of shape (n, d) or GradientEmbedding
        numpy, torch (CPU/CUDA) or cupy; float32, float16, bfloat16, or float64 on the CPU.
    k : int
        Number of picks, ``0 <= k <= n - len(labeled)``.
    seed : int or numpy.random.Generator, optional
        The random stream: the first pick (``first="random"``) is ``rng.integers(n)``, then
        ``u = rng.random(k)`` and pick ``t`` is the first row whose running sum of weights exceeds
        ``u[t]`` times their total. When every remaining row coincides with a centre (all
        weights 0), pick ``t`` is the ``floor(u[t] r)``-th of the ``r`` rows not yet chosen:
        uniform among them. The same seed gives the same picks on a given backend.
    first : {"random", "norm"}
        First pick without labeled rows: uniform (k-means++), or the row of largest norm (BADGE,
        Ash et al. 2020).
    labeled : 1-D integer indices, optional
        Rows already chosen: they are centres from the start and never picked.
    progress : bool
        tqdm progress bar over the picks.
    prune : bool, default True
        Exact triangle-inequality pruning on the CPU (see :func:`fastal.kcenter_greedy`): a row
        whose nearest centre ``a`` has ``d(c_new, a) >= 2 d(row, a)`` is not read; a block of
        rows whose test keeps at least 35 % of them is read whole. The picks are identical either
        way; it pays once the centres are many and the pool is clustered. Rows shorter than 256
        bytes are read unpruned; CUDA inputs are not pruned.

    Returns
    -------
    (k,) int64 array of row indices in pick order, in the input's framework and device.

    Raises
    ------
    ValueError
        Also when a squared distance between the (finite) rows overflows the accumulation dtype
        (float32 rows ~1e19 apart, float64 ~1e154): D² sampling on infinite weights would be
        meaningless. Detected on the sampler's block sums, not by an extra pass over ``X``.

    Examples
    --------
    >>> import numpy as np, fastal
    >>> X = np.array([[0.0], [0.1], [10.0], [10.1]])
    >>> sorted(fastal.kmeans_pp(X, 2, seed=0, first="norm").tolist())
    [0, 3]
    """
    if not isinstance(prune, (bool, np.bool_)):
        raise TypeError(f"prune must be a bool, got {type(prune).__name__}")
    check_bool(progress, "progress")
    return _kmeans_pp(
        X, k, seed=seed, first=first, labeled=labeled, progress=progress, name="X",
        prune=bool(prune),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# k-means


@dataclass
class KMeansResult:
    """Outcome of :func:`kmeans`.

    Attributes
    ----------
    centres : (k, d) float array
        Final centres; float32 (float64 for float64 ``X``), in the framework and on the device of
        ``X``.
    labels : (n,) int64 array
        Index of each row's centre (the centre of least squared distance to the final centres),
        same framework and device as ``X``.
    inertia : float
        Sum of the squared distances of the rows to their centres (summed in float64).
    n_iter : int
        Lloyd iterations run (with ``minibatch``: epochs run).
    converged : bool
        Lloyd: an iteration left every label unchanged or moved the centres by at most the
        tolerance; mini-batch: an epoch moved the centres by at most the tolerance or the smoothed
        batch inertia stopped improving. False when ``max_iter`` ran out first.
    distance_share : float or None, default None
        Share of the ``n x k`` distances per iteration the Lloyd iterations computed (1.0
        unpruned, None for mini-batch); slightly above 1 where rows the bounds could not settle
        were measured alone and then again by their chunk's GEMM.

    Examples
    --------
    >>> import numpy as np, fastal
    >>> res = fastal.kmeans(np.array([[0.0], [0.2], [10.0], [10.2]]), 2, seed=0)
    >>> res.labels.tolist() in ([0, 0, 1, 1], [1, 1, 0, 0]), res.n_iter >= 1, res.converged
    (True, True, True)
    >>> res.centres.shape, res.centres.dtype.name
    ((2, 1), 'float64')
    """

    centres: Any  #: (k, d), float32 (float64 for float64 X), X's framework and device
    labels: Any  #: (n,) int64 index of each row's centre
    inertia: float  #: sum of squared distances of the rows to their centres
    n_iter: int  #: Lloyd iterations (mini-batch: epochs) run
    converged: bool
    #: distances the Lloyd iterations computed over n x k per iteration (1.0 unpruned, None
    #: mini-batch); slightly above 1 where rows the bounds could not settle were measured alone
    #: and then again by their chunk's GEMM
    distance_share: float | None = None


def kmeans(
    X: Any,
    k: int,
    *,
    seed: int | np.random.Generator | None = None,
    init: Any = "k-means++",
    max_iter: int | None = None,
    tol: float = 1e-4,
    minibatch: int | None = None,
    prune: bool = True,
    progress: bool = False,
) -> KMeansResult:
    """k-means clustering: Lloyd iterations (distance bounds on the CPU), or Sculley's mini-batch
    k-means.

    Parameters
    ----------
    X : array of shape (n, d)
        Dense rows: numpy, torch (CPU/CUDA) or cupy; float32, float16, bfloat16, float64 (CPU).
    k : int
        Number of clusters, ``1 <= k <= n``.
    seed : int or numpy.random.Generator, optional
        Seeds the initialisation and the mini-batches.
    init : {"k-means++", "random"} or array of shape (k, d)
        ``"k-means++"``: :func:`kmeans_pp` with ``first="random"``; ``"random"``: ``k`` distinct
        rows by ``rng.choice(n, k, replace=False)``; an array: those centres.
    max_iter : int, optional
        Lloyd iterations (default 300); with ``minibatch``, epochs (default 100).
    tol : float, default 1e-4
        Stop when the squared centre shift of an iteration (epoch) is at most
        ``tol * mean(var(X, axis=0))`` (scikit-learn's definition), or when no label changes.
    minibatch : int, optional
        Batch size of mini-batch k-means (Sculley 2010): each epoch walks a random permutation of
        the rows in batches; each batch is assigned and moves every centre to the running mean of
        the rows it has seen, ``c <- (v c + sum of its batch rows) / (v + m)``; after an epoch
        in which no row reached a centre, it takes one of the rows farthest from their centres
        (as Lloyd's empty clusters do) and starts its count afresh (a centre reached in the last
        epoch may still end with no row in the final labels). Stops early like scikit-learn's
        ``MiniBatchKMeans``: 10 batches without a better smoothed batch inertia.
        Not the faster choice on the CPU, large pools included: an epoch computes every row's
        distance to every centre, as an unbounded Lloyd iteration does, plus a gather and an
        update per batch, while the bounded iterations (``prune``) skip most distances (n = 1M,
        d = 512, k = 1000, 2-core Zen 4, by hand: 2 epochs 114 s, 2 full-batch iterations 59 s;
        10 bounded iterations 30 s on a quieter run). Nor does it need less memory than full
        batch with ``prune=False``: both keep a few length-n work vectors beside ``X``. On CUDA,
        where no bounds apply, an epoch and a Lloyd iteration compute the same distances.
    prune : bool, default True
        Lloyd iterations skip the rows whose nearest centre provably stays the same (Yinyang
        bounds, Ding et al. 2015); a row they cannot settle is measured against the centres of the
        groups left open, a chunk with many such rows goes through the GEMM. Either way a label
        is the centre of least direct squared distance (the GEMM only filters), so labels,
        centres and iterations equal those of ``prune=False`` bit for bit. Applies on the CPU
        (float32, float64, float16, bfloat16) with ``k >= 32`` (the GEMM path) without
        ``minibatch``; the bounds take about ``4 (5 + t)`` bytes per row, ``t = min(k // 10,
        64)`` groups of centres (at most a row's size). A step whose bounds settled almost nothing
        (early iterations on unclustered data) is followed by plain steps, at least 1, 2, 4, ...
        of them, and the bounds start afresh once the last plain step's margins (each row's
        runner-up distance minus its nearest) exceed the centres' latest moves on a quarter of
        the rows. ``distance_share`` reports the share of the distances computed.
    progress : bool
        tqdm progress bar over the iterations.

    Returns
    -------
    KMeansResult
        Labels and inertia are those of the final centres over the whole of ``X``. An empty cluster
        takes the row farthest from its centre (the j-th empty one the j-th farthest row).

    Raises
    ------
    ValueError
        Also when squared distances between the (finite) rows overflow the accumulation dtype
        (float32 rows ~1e19 apart, float64 ~1e154), detected on the k-means++ weights and on the
        inertia (each mini-batch's, and the final one) instead of returning an ``inf`` / NaN
        inertia and arbitrary labels.

    Examples
    --------
    >>> import numpy as np, fastal
    >>> X = np.array([[0.0], [0.2], [10.0], [10.2]])
    >>> res = fastal.kmeans(X, 2, seed=0)
    >>> sorted(res.centres.ravel().round(3).tolist()), round(res.inertia, 6)
    ([0.1, 10.1], 0.04)
    """
    return _kmeans(
        X, k, seed=seed, init=init, max_iter=max_iter, tol=tol, minibatch=minibatch,
        prune=prune, progress=progress, name="X",
    )  # fmt: skip


def _kmeans(
    X: Any,
    k: int,
    *,
    seed: Any = None,
    init: Any = "k-means++",
    max_iter: int | None = None,
    tol: float = 1e-4,
    minibatch: int | None = None,
    prune: bool = True,
    progress: bool = False,
    name: str = "X",
    exclude: np.ndarray | None = None,
) -> KMeansResult:
    """:func:`kmeans`, its messages naming ``name``.

    ``exclude`` (unique int64 host indices): the k-means of the other rows, as on ``X[rest]``
    (the same draws; labels, inertia and iterations of those rows alone, up to the rounding of
    float64 sums noted in :class:`_Excluded`), in place where it can, else on the gathered
    ``X[rest]``.
    """
    import torch
    from tqdm.auto import tqdm

    info = check_matrix(X, name)
    if info.device == "cpu":
        X = _contiguous_once(X, info)
    skip = None
    if exclude is not None and exclude.size:
        if not _Excluded.applies(X, info, exclude):
            xt = as_torch(X, info)
            rest = torch.from_numpy(_other_rows(info.shape[0], exclude)).to(xt.device)
            sub = xt[rest].contiguous()
            try:
                return _kmeans(
                    from_torch(sub, info), k, seed=seed, init=init, max_iter=max_iter, tol=tol,
                    minibatch=minibatch, prune=prune, progress=progress, name=name,
                )  # fmt: skip
            except ValueError as err:  # name the row of X, not its position among the rest
                if "contains NaN or Inf" not in str(err):
                    raise
                bad = torch.nonzero(~torch_isfinite_rows(sub)).flatten()
                raise ValueError(
                    f"{name} contains NaN or Inf in {bad.numel()} row(s), first at row "
                    f"{int(rest[bad[0]])}"
                ) from None
        skip = _Excluded(as_torch(X, info), exclude, full_batch=minibatch is None)
    n = info.shape[0]
    n_rows = n if skip is None else n - exclude.size
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")  # before check_budget's ">= 0"
    k = check_budget(k, n_rows, "k", f"the rows of {name}")
    if k < 1:  # a 0-d array or tensor holding 0, which check_budget takes
        raise ValueError(f"k must be >= 1, got {k}")
    if max_iter is None:
        max_iter = 300 if minibatch is None else 100
    check_max_iter(max_iter)
    if (
        isinstance(tol, bool)
        or not isinstance(tol, (int, float, np.integer, np.floating))
        or not 0 <= tol < np.inf
    ):
        raise ValueError(f"tol must be a finite non-negative number, got {tol!r}")
    check_minibatch(minibatch)
    if not isinstance(prune, (bool, np.bool_)):
        raise TypeError(f"prune must be a bool, got {type(prune).__name__}")
    check_bool(progress, "progress")
    rng = make_rng(seed)
    xt = as_torch(X, info)
    if info.device == "cpu":
        # finiteness, with the row named, and the spread, in one compiled pass (with skip its
        # rows are known finite; torch's spread pass was ~20x slower than this one)
        cpu_pool(X, info, name)
    elif not bool(torch_isfinite_rows(xt).all()):  # in row chunks: torch.isfinite of the whole
        raise ValueError(f"{name} contains NaN or Inf")  # pool held ~1.75x the pool (abs + masks)
    acc = _torch_acc(info.dtype)
    if info.device != "cpu":  # cpu_pool above checked the others
        check_spread_torch(xt, info.dtype, name)
    centres = _initial_centres(X, xt, info, k, init, rng, acc, name, exclude=exclude)
    tol_abs = _tol_abs(xt, float(tol), None if skip is None else skip.keep, name)

    converged, it = False, 0
    fused = _fused_lloyd(info, k)  # mini-batches assign through it too
    # |x|² of every row: only the fused steps read it (torch's GEMM tiles leave it out of the
    # arg-min); mini-batches take their batch's, so there it waits for the final pass
    xsq = _row_sqnorms(xt, acc) if fused is not None and minibatch is None else None
    bounded = (
        _BoundedLloyd(info, centres) if fused is not None and prune and minibatch is None else None
    )
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(
            tqdm(total=int(max_iter), disable=not progress, desc="k-means", unit="iter")
        )
        if fused is not None and fused.limit_blas:  # OpenBLAS runs inside fastal's threads
            stack.enter_context(_one_blas_thread())
        if minibatch is None:
            prev = None
            for it in range(1, int(max_iter) + 1):  # noqa: B007 -- it is n_iter after the loop
                if bounded is not None and not bounded.use(centres):
                    labels, dist2, sums, counts = fused(xt, xsq, centres, margin=bounded.margin)
                    bounded.plain_step(centres, labels)
                else:
                    labels, dist2, sums, counts = _lloyd_pass(
                        xt, xsq, centres, info, fused, bounded
                    )
                if skip is not None:
                    labels, dist2, sums, counts = skip.drop(labels, dist2, sums, counts, k)
                if dist2 is None and bool((counts == 0).any()):
                    # an empty cluster takes the farthest rows: their distances from the plain
                    # pass, whose labels, sums and counts are the bounded pass's
                    labels, dist2, sums, counts = fused(xt, xsq, centres)
                    if skip is not None:
                        labels, dist2, sums, counts = skip.drop(labels, dist2, sums, counts, k)
                new = _relocate_empty(sums, counts, xt, dist2, acc)
                shift = float(((new - centres) ** 2).sum())
                centres = new
                bar.update()
                if prev is not None and bool(torch.equal(labels, prev)):
                    converged = True
                    break
                if shift <= tol_abs:
                    converged = True
                    break
                prev = labels
        else:
            rows = None if skip is None else torch.nonzero(skip.keep).flatten()
            centres, it, converged = _minibatch(
                xt, centres, info, int(minibatch), int(max_iter), tol_abs, rng, bar, name, rows,
                fused,
            )  # fmt: skip
        if fused is not None:
            if xsq is None:
                xsq = _row_sqnorms(xt, acc)
            labels, dist2, _, _ = fused(xt, xsq, centres)
        else:
            labels, dist2 = _assign(xt, centres, info, xsq)
    if skip is not None:
        labels, dist2 = labels[skip.keep], dist2[skip.keep]
    inertia = float(dist2.to(torch.float64).sum())
    if not np.isfinite(inertia):  # finite rows and centres: a distance (or the sum) overflowed
        raise _overflow(name, info.dtype)
    if minibatch is not None:
        share = None
    elif bounded is not None and bounded.possible:
        share = bounded.computed / bounded.possible
    else:
        share = 1.0
    return KMeansResult(
        centres=from_torch(centres.to(acc), info),
        labels=from_torch(labels, info),
        inertia=inertia,
        n_iter=it,
        converged=converged,
        distance_share=share,
    )


def _contiguous_once(X: Any, info) -> Any:
    """``X`` itself when the CPU kernels can read it in place, else one C-contiguous native copy
    (in X's framework): the Lloyd steps would otherwise copy a strided or byte-swapped pool at
    every iteration."""
    if info.framework == "torch":
        if X.is_contiguous() and not X.is_neg() and not X.is_conj():
            return X
        return X.detach().resolve_neg().resolve_conj().contiguous()  # a lazy negation too
    if info.framework == "numpy":
        return np.ascontiguousarray(_interop.native_order(X))
    return X


def check_max_iter(max_iter: Any) -> None:
    """``max_iter`` of :func:`kmeans` (and of the strategies built on it): a positive int."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")


def check_minibatch(minibatch: Any) -> None:
    """``minibatch`` of :func:`kmeans` (and of the strategies built on it): None or a positive
    int."""
    if minibatch is not None and (
        isinstance(minibatch, bool) or not isinstance(minibatch, (int, np.integer)) or minibatch < 1
    ):
        raise ValueError(f"minibatch must be None or a positive integer, got {minibatch!r}")
