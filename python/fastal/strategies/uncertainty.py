"""Baselines: random sampling and the uncertainty scores entropy, margin, least confidence, BALD.

Every score strategy computes one score per pool row in float64 and selects the ``budget``
unlabeled rows with the highest score, ties to the lowest index (the order a stable sort of
``-score`` over the unlabeled rows in ascending order gives; found in O(n + budget log budget),
without sorting the pool). Sums over classes run in class order, the same for every
memory layout; so rows that are permutations of one another can differ in the last bit and then
do not tie (sorting every row's terms first would cost 3-8x the entropy pass).
``diagnostics["scores"]`` holds the scores of every row (float64, in the pool's framework and
device). Probabilities (``"probs"``, ``"mc_probs"``) must
lie in [0, 1] with rows summing to 1 within ``max(1e-3, 2 eps)`` of their storage dtype (1e-3 for
float32 / float64, about 0.002 for float16 and 0.016 for bfloat16), so softmax outputs stored in
low precision are accepted.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _interop
from .._validate import check_budget, check_classes, check_matrix, make_rng, prob_sum_tol
from .._warnings import warn_user
from ..gradients import GradientEmbedding
from .base import LOGITS_KEY, Selection, Strategy, register, unlabeled_rows

#: float64 values per row tile (2 MiB) of the score strategies: whole-pool float64 copies and
#: their temporaries were 4.5x the float32 probabilities (entropy, margin, least confidence) and
#: 5x the float32 ``mc_probs`` (BALD). 8 MiB tiles ran entropy 2-4x slower: each temporary was
#: mapped afresh by the allocator and page-faulted in (2 MiB ones are reused from its heap).
_TILE_VALUES = 1 << 18


def _row_tiles(n: int, rows: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive row tiles covering ``range(n)``, of about ``rows`` rows
    rounded up to a multiple of 64, so that reductions along a row give the bits they give on all
    n rows at once.

    Tiles start on multiples of 64 rows: on a column-major tensor (a transposed torch tensor)
    torch's CPU sum over a row vectorises across rows in blocks of up to 64 from the start, and
    sums the rows past the last whole block in another order. No tile has one row unless n is 1:
    torch's CPU sum of a single row of >= 32768 values splits it between threads.
    """
    rows = -(-max(rows, 1) // 64) * 64
    bounds = [*range(0, n, rows), n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2:
        del bounds[-2]  # a one-row last tile joins the one before
    return list(itertools.pairwise(bounds))


def _probs(pool: Any) -> tuple[Any, str, Any]:
    """(torch view of ``pool["probs"]`` or ``pool["logits"]`` as stored, its key, ArrayInfo),
    the logits checked (no NaN, no +Inf, a finite maximum per row). Probabilities are checked by
    :func:`_row_scores` on the tiles it scores (:func:`_check_probs` names the fault)."""
    from .._torch_arrays import MASKED_LOGITS, as_torch, torch_logit_rows_ok

    if not isinstance(pool, Mapping):
        raise TypeError(
            f"pool must be a mapping with 'probs' or 'logits', got {type(pool).__name__}"
        )
    if "probs" in pool:
        key = "probs"
    elif "logits" in pool:
        key = "logits"
    else:
        raise ValueError(
            f"pool needs 'probs' or 'logits'; it has {', '.join(map(repr, pool)) or 'nothing'}"
        )
    info = check_matrix(pool[key], key)
    stored = as_torch(pool[key], info)
    if key == "logits" and not bool(torch_logit_rows_ok(stored).all()):
        raise ValueError(f"logits contains NaN or Inf {MASKED_LOGITS}")
    try:
        check_classes(info.shape[1], key, info.shape)
    except ValueError:
        if key == "probs":  # NaN or Inf is named first, whatever else is wrong
            _check_finite(stored)
        raise
    return stored, key, info


def _check_finite(stored: Any) -> None:
    from .._torch_arrays import torch_isfinite_rows

    if not bool(torch_isfinite_rows(stored).all()):
        raise ValueError("probs contains NaN or Inf")


def _check_probs(stored: Any) -> None:
    """Raise the error that names what is wrong with the probabilities ``stored``: NaN or Inf,
    values outside [0, 1], or rows that do not sum to 1 (in float64 row chunks)."""
    import torch

    from ..gradients import _probabilities

    _check_finite(stored)
    _probabilities(stored, "probs", torch.float64, "probs", stored.dtype, LOGITS_KEY)


def _row_scores(stored: Any, key: str, score: Any) -> Any:
    """``score(p)`` (float64, one per row) of the float64 probabilities ``p`` of each row tile of
    ``stored`` (softmax taken in float64 for ``"logits"``): the same bits as on all rows at once,
    with float64 temporaries of one tile only. ``"probs"`` are checked on the same tiles (in
    [0, 1], NaN failing that, rows summing to 1) rather than in passes of their own."""
    import torch

    n, C = stored.shape
    out = torch.empty(n, dtype=torch.float64, device=stored.device)
    tol = prob_sum_tol(stored.dtype)
    valid = torch.ones((), dtype=torch.bool, device=stored.device)  # one sync, at the end
    for s, e in _row_tiles(n, _TILE_VALUES // C):
        # row-major whatever the input's strides: each row then sums in one order (a
        # column-major tensor picked differently from the same values row-major)
        p = stored[s:e].to(torch.float64).contiguous()
        if key == "logits":
            p = torch.softmax(p, dim=1)
        else:
            lo, hi = torch.aminmax(p)  # NaN propagates and fails both
            valid &= (lo >= 0) & (hi <= 1) & ((p.sum(1) - 1).abs() <= tol).all()
        out[s:e] = score(p)
    if key == "probs" and not bool(valid):
        _check_probs(stored)
    return out


def _entropy(p: Any) -> Any:
    """``-Σ_c p_c log p_c`` per row (``0 log 0 = 0``: the -inf of log 0 is taken as 0)."""
    import torch

    return -(p * torch.log(p).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)).sum(-1)


#: values per ``topk`` call of :func:`_kth_largest` (at least 4 budgets): torch's CPU ``topk``
#: keeps every value of its input with its index (16 bytes a value), 16 MB at n = 1M in one call
_TOPK_VALUES = 1 << 18


def _kth_largest(key: Any, b: int) -> Any:
    """The ``b``-th largest value of the 1-D ``key`` (no NaN; ``1 <= b <= key.numel()``), a 0-d
    tensor: the b-th largest of the chunks' ``b`` largest (a chunk's values outside its top b are
    outside the top b of all), so no ``topk`` sees more than ``max(_TOPK_VALUES, 4 b)`` values
    but the last, over the candidates."""
    import torch

    n = key.numel()
    step = max(_TOPK_VALUES, 4 * b)
    if n > step:
        key = torch.cat(
            [torch.topk(key[s : s + step], min(b, n - s), sorted=False).values
             for s in range(0, n, step)]
        )  # fmt: skip
    return torch.topk(key, b, sorted=False).values.min()


def _top_rows(scores: Any, rest: np.ndarray, budget: int) -> Any:
    """The ``budget`` rows of ``rest`` (ascending int64 host indices) with the highest ``scores``
    (torch float, one per pool row), as int64 indices on the scores' device, in the order of a
    stable sort of ``-scores[rest]``: highest first, ties to the lowest index, NaN after every
    number (as torch sorts it).

    O(n + b log b), instead of the sort of n values: ``topk`` finds the b-th largest value
    ``kth`` (NaN read as -inf; :func:`_kth_largest`), every row above it is taken and the first
    rows equal to it (then the first NaN rows) fill the rest, as in
    :func:`fastal.sparse.top_b_sigma`; only those b rows are sorted. Besides O(b) values, the
    temporaries are one-byte masks of the candidates and, with labeled rows, their scores.
    """
    import torch

    dev = scores.device
    if budget == 0:
        return torch.empty(0, dtype=torch.int64, device=dev)
    whole = rest.size == scores.shape[0]  # no labeled row: rest is range(n), nothing to gather
    cand = None if whole else torch.from_numpy(rest).to(dev)
    v = scores if whole else scores[cand]
    nan = torch.isnan(v)
    has_nan = bool(nan.any())
    key = v.masked_fill(nan, -torch.inf) if has_nan else v
    del nan  # a NaN row is found again below only when one is needed
    kth = _kth_largest(key, budget)
    above = torch.nonzero(key > kth).flatten()
    del key
    need = budget - above.numel()
    parts = [above, torch.nonzero(v == kth).flatten()[:need]]  # ties at kth: lowest index first
    if has_nan and parts[1].numel() < need:  # kth is -inf with too few -inf rows: NaN rows next
        parts.append(torch.nonzero(torch.isnan(v)).flatten()[: need - parts[1].numel()])
    S = torch.cat(parts).sort().values  # ascending index, so the stable sort breaks ties by it
    S = S[torch.sort(-v[S], stable=True).indices]
    return S if whole else cand[S]


def _top(scores: Any, labeled: Any, budget: int, info: Any) -> tuple[Any, Any]:
    """The ``budget`` unlabeled rows of highest score, ties to the lowest index; scores back."""
    from .._torch_arrays import from_torch

    n = scores.shape[0]
    _, rest = unlabeled_rows(n, labeled, like=info)
    budget = check_budget(budget, rest.size)
    picks = _top_rows(scores, rest, budget)
    indices = _interop.host_numpy(picks).astype(np.int64)
    # + 0.0 turns -0.0 (Σ p log p of a one-hot row) into 0.0 in the reported scores (in place:
    # the scores are this selection's own)
    return _interop.to_framework(indices, info), from_torch(scores.add_(0.0), info)


class _ScoreStrategy(Strategy):
    """Select the highest scores; subclasses define ``scores(pool)``: (float64 (n,), info)."""

    def scores(self, pool: Any) -> tuple[Any, Any]:
        """The score of every row of the pool (higher is picked first).

        Parameters
        ----------
        pool : mapping
            With ``"probs"`` (n, C) or ``"logits"`` (n, C) (softmax taken in float64); BALD:
            ``"mc_probs"`` (T, n, C).

        Returns
        -------
        scores : torch.Tensor of shape (n,)
            float64 scores, on the device of the pool's array.
        info : ArrayInfo
            Framework, device, dtype and shape of the pool's array (``(n, C)`` for ``mc_probs``),
            for returning results in its framework.
        """
        raise NotImplementedError

    def select(self, pool: Any, budget: int, labeled: Any = None, *, seed: Any = None) -> Selection:
        make_rng(seed)  # deterministic scores use no seed; a bad one is still an error
        scores, info = self.scores(pool)
        indices, all_scores = _top(scores, labeled, budget, info)
        return Selection(indices, {"scores": all_scores})


@register
class Random(Strategy):
    """Uniform random sampling of the unlabeled rows (the baseline every paper reports).

    The picks are ``numpy.random.default_rng(seed).choice(unlabeled, budget, replace=False)`` with
    ``unlabeled`` the unlabeled rows in ascending order. The pool is an int (its size), an array
    or a :class:`~fastal.GradientEmbedding` (rows), or a mapping with ``"n"`` or any of
    ``"features"``, ``"probs"``, ``"logits"``, ``"outputs"`` (rows) or ``"mc_probs"`` (axis 1);
    the row counts of all those it holds must agree. Indices come back in the framework of the
    first of those arrays (numpy for an int or with ``"n"``).

    Examples
    --------
    >>> from fastal.strategies import Random
    >>> Random().select(10, 3, labeled=[0, 1], seed=0).indices.tolist()
    [6, 9, 7]
    >>> len(Random().select({"n": 100}, 5, seed=1).indices)
    5
    """

    name = "random"
    requires = ()

    def select(self, pool: Any, budget: int, labeled: Any = None, *, seed: Any = None) -> Selection:
        n, info = _pool_rows(pool)
        _, rest = unlabeled_rows(n, labeled, like=info)
        budget = check_budget(budget, rest.size)
        picks = make_rng(seed).choice(rest, size=budget, replace=False).astype(np.int64)
        out = picks if info is None else _interop.to_framework(picks, info)
        return Selection(out, {"n_candidates": int(rest.size)})


#: the pool entries Random counts rows in, and their row axis
_ROW_AXES = (("features", 0), ("probs", 0), ("logits", 0), ("outputs", 0), ("mc_probs", 1))


def _pool_rows(pool: Any) -> tuple[int, Any]:
    """(number of rows, ArrayInfo of the array they were counted from or None)."""
    if isinstance(pool, bool):
        raise TypeError("pool must be a pool size, an array or a mapping, got bool")
    if isinstance(pool, (int, np.integer)):
        if pool < 0:
            raise ValueError(f"pool size must be >= 0, got {pool}")
        return int(pool), None
    if isinstance(pool, GradientEmbedding):  # what CoreSet and BADGE take: its rows count
        return pool.n, pool.info
    if _interop.is_array(pool):
        info = _interop.describe(pool, "pool")
        if not info.shape:
            raise ValueError(
                "pool must be a pool size, or an array with a row axis, got a 0-d array"
            )
        return info.shape[0], info
    if isinstance(pool, Mapping):
        counts: dict[str, int] = {}  # every row count the pool states: they must agree
        first = None
        if "n" in pool:
            n = pool["n"]
            if isinstance(n, bool) or not isinstance(n, numbers.Integral):
                raise TypeError(f"pool['n'] must be an integer pool size, got {n!r}")
            counts["n"] = _pool_rows(int(n))[0]
        for key, axis in _ROW_AXES:
            if key in pool and isinstance(pool[key], GradientEmbedding):
                counts[key] = pool[key].n
                first = pool[key].info if first is None else first
            elif key in pool:
                info = _interop.describe(pool[key], key)
                if len(info.shape) <= axis:
                    raise ValueError(f"{key} has shape {info.shape}: no row axis")
                counts[key] = info.shape[axis]
                if first is None:
                    first = info
        if not counts:
            raise ValueError(
                "pool needs 'n' or an array ('features', 'probs', 'logits', 'outputs', 'mc_probs')"
            )
        if len(set(counts.values())) > 1:
            stated = ", ".join(f"{key} {rows}" for key, rows in counts.items())
            raise ValueError(f"pool's entries disagree on the number of rows: {stated}")
        n_rows = next(iter(counts.values()))
        return n_rows, (None if "n" in counts else first)
    raise TypeError(f"pool must be a pool size, an array or a mapping, got {type(pool).__name__}")


@register
class Entropy(_ScoreStrategy):
    """Maximum entropy of the predictive distribution, ``H[p] = -Σ_c p_c log p_c``.

    The classic uncertainty-sampling score (Settles 2009, §3.1; Shannon entropy as in Wang & Shang
    2014). The pool is a mapping with ``"probs"`` (n, C) or ``"logits"`` (softmax taken in float64).

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.strategies import Entropy
    >>> probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]])
    >>> Entropy().select({"probs": probs}, 2).indices.tolist()
    [1, 2]
    """

    name = "entropy"
    requires = ("probs",)

    def scores(self, pool: Any) -> tuple[Any, Any]:
        """Entropy ``-Σ_c p_c log p_c`` of every row (``0 log 0 = 0``).


        ``pool`` and the returned ``(scores, info)`` as in :meth:`_ScoreStrategy.scores`.
        """
        stored, key, info = _probs(pool)
        return _row_scores(stored, key, _entropy), info


@register
class Margin(_ScoreStrategy):
    """Smallest margin between the two most probable classes, score ``-(p_(1) - p_(2))``
    (Scheffer, Decomain & Wrobel 2001). Needs at least two classes.

    The score is taken in float64: rows whose second probability is below about 1e-16 of the first
    (a logit gap past about 37) all score -1 and tie, ties going to the lowest index. Such rows are
    the most confident of the pool, picked last.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.strategies import Margin
    >>> probs = np.array([[0.5, 0.3, 0.2], [0.4, 0.35, 0.25], [0.8, 0.1, 0.1]])
    >>> Margin().select({"probs": probs}, 1).indices.tolist()
    [1]
    """

    name = "margin"
    requires = ("probs",)

    def scores(self, pool: Any) -> tuple[Any, Any]:
        """Margin score ``-(p_(1) - p_(2))`` of every row.


        ``pool`` and the returned ``(scores, info)`` as in :meth:`_ScoreStrategy.scores`.
        """
        import torch

        stored, key, info = _probs(pool)

        def margin(p: Any) -> Any:
            # the largest, and the largest with one of its places taken out: topk's two values
            # (equal where the maximum repeats), in about half of topk's time
            first, at = p.max(dim=1, keepdim=True)
            second = p.scatter(1, at, -torch.inf).amax(dim=1)
            return -(first[:, 0] - second)

        return _row_scores(stored, key, margin), info


@register
class LeastConfidence(_ScoreStrategy):
    """Least confidence: smallest probability of the predicted class, score ``1 - max_c p_c``
    (Lewis & Gale 1994).

    The score is taken from the probabilities as given: float32 probabilities whose top value
    rounds to 1 (the other classes summing below about 6e-8, a logit gap of about 17) all score 0
    and tie, ties going to the lowest index. Pass ``"logits"`` instead to rank such confident rows
    (the softmax is then taken in float64, resolving ``1 - p`` down to about 1e-16).

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.strategies import LeastConfidence
    >>> probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]])
    >>> LeastConfidence().select({"probs": probs}, 2).indices.tolist()
    [1, 2]
    """

    name = "least_confidence"
    requires = ("probs",)

    def scores(self, pool: Any) -> tuple[Any, Any]:
        """Least-confidence score ``1 - max_c p_c`` of every row.


        ``pool`` and the returned ``(scores, info)`` as in :meth:`_ScoreStrategy.scores`.
        """
        stored, key, info = _probs(pool)
        return _row_scores(stored, key, lambda p: 1 - p.amax(dim=1)), info


#: More Monte-Carlo passes than this, and 8x the pool rows, look like an (n, T, C) array: a pool
#: of hundreds of rows read with its tens of passes first. (T, n, C), as fastal.torch stacks them,
#: with mc_samples = 100 over a pool of 30 rows is left alone.
_MANY_PASSES = 256


@register
class BALD(_ScoreStrategy):
    """BALD: mutual information between the label and the model parameters (Houlsby et al. 2011),
    estimated from ``T`` Monte-Carlo dropout passes (Gal, Islam & Ghahramani 2017):
    ``H[mean_t p_t] - mean_t H[p_t]``.

    The pool is a mapping with ``"mc_probs"`` of shape (T, n, C) (see
    :func:`fastal.torch.pool_outputs`). Top-``budget`` scores, not the joint BatchBALD.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.strategies import BALD
    >>> mc = np.array([[[0.5, 0.5], [1.0, 0.0]], [[0.5, 0.5], [0.0, 1.0]]])  # T=2, n=2, C=2
    >>> BALD().select({"mc_probs": mc}, 1).indices.tolist()   # row 1: the passes disagree
    [1]
    """

    name = "bald"
    requires = ("mc_probs",)

    def scores(self, pool: Any) -> tuple[Any, Any]:
        """BALD score ``H[mean_t p_t] - mean_t H[p_t]`` of every row: >= 0, 0 where passes agree.


        ``pool`` (``"mc_probs"`` of shape (T, n, C): T Monte-Carlo dropout passes) and the returned
        ``(scores, info)`` as in :meth:`_ScoreStrategy.scores`.
        """
        import torch

        from .._torch_arrays import as_torch

        if not isinstance(pool, Mapping) or "mc_probs" not in pool:
            raise ValueError("bald needs a pool mapping with 'mc_probs' of shape (T, n, C)")
        info = _interop.describe(pool["mc_probs"], "mc_probs")
        if len(info.shape) != 3 or 0 in info.shape:
            raise ValueError(
                f"mc_probs must be 3-D (T samples, n, C) and non-empty, got shape {info.shape}"
            )
        if info.shape[0] < 2:
            raise ValueError(
                f"mc_probs must hold T >= 2 Monte-Carlo passes (shape (T, n, C)), got shape "
                f"{info.shape}: with one pass every BALD score is 0"
            )
        check_classes(info.shape[2], "mc_probs", info.shape)
        if info.shape[0] > max(8 * info.shape[1], _MANY_PASSES):
            warn_user(
                f"mc_probs of shape {info.shape} is read as T = {info.shape[0]} Monte-Carlo passes "
                f"over a pool of n = {info.shape[1]} rows: if the rows come first (torch.stack("
                "passes, dim=1)), pass mc_probs.transpose(0, 1), or the indices picked are passes"
            )
        if info.dtype not in _interop.FLOAT_DTYPES:
            raise TypeError(f"mc_probs must have a floating dtype, got {info.dtype}")
        stored = as_torch(pool["mc_probs"], info)
        tol = prob_sum_tol(info.dtype)  # 1e-3, wider for float16 / bfloat16 storage
        T, n, C = info.shape
        scores = torch.empty(n, dtype=torch.float64, device=stored.device)
        step = max(1, _TILE_VALUES // (T * C))  # no (T, n, C) float64 copy
        for s in range(0, n, step):
            mc = stored[:, s : s + step].to(torch.float64).contiguous()  # one summation order
            lo, hi = torch.aminmax(mc)  # NaN propagates; ±Inf is out of [0, 1]
            if not (bool(lo >= 0) and bool(hi <= 1)):
                raise ValueError("mc_probs must hold finite probabilities in [0, 1]")
            if not bool(((mc.sum(-1) - 1).abs() <= tol).all()):
                raise ValueError(
                    f"mc_probs rows must sum to 1 over the classes, its last axis (within "
                    f"{tol:.3g} for {info.dtype}): the shape is (T passes, n, C); from baal's "
                    "(n, C, T) pass mc_probs.transpose(2, 0, 1) (torch: permute)"
                )
            h_mean = _entropy(mc.mean(0))
            mi = (h_mean - _entropy(mc).mean(0)).clamp_min_(0)
            # exactly 0 where every pass agrees (the mean of T equal values need not round back
            # to them: such rows scored ±4e-16 and outranked one another by noise). Such rows
            # score below T eps (1 + H) ~ 1e-9 even at T = 1e6; only rows below 1e-6 (1 + H)
            # are compared pass by pass, not the whole tile
            near = torch.nonzero(mi <= 1e-6 * (1 + h_mean)).flatten()
            if near.numel():
                agree = (mc[:, near] == mc[:1, near]).all(-1).all(0)
                mi[near[agree]] = 0.0
            scores[s : s + step] = mi
        if not bool(scores.any()):
            warn_user(
                f"every BALD score is 0: the T = {T} passes of mc_probs agree on every row (to "
                "rounding), so the picks are the lowest indices; were the passes made with "
                "dropout active (fastal.torch.pool_outputs(..., mc_samples=T) turns it on)?"
            )
        row_info = _interop.ArrayInfo(
            info.framework, info.device, info.device_index, info.dtype, info.shape[1:]
        )
        return scores, row_info
