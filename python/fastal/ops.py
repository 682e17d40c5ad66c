"""Validated, typed wrappers of the compiled kernels, with CPU / CUDA dispatch.

Every function takes numpy arrays, torch tensors (CPU or CUDA) or cupy arrays and returns results in
the same framework and on the same device. Distances are Euclidean; storage may be float32, float16,
bfloat16 (and float64 on the CPU); arithmetic accumulates in float32 (float64 for float64 input).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import _ext, _interop
from ._interop import ArrayInfo
from ._pool import (
    ACC,
    check_finite_cuda,
    check_spread,
    check_spread_torch,
    cpu_pool,
    embedding_spread,
    pool_info,
    spread_torch,
)
from ._torch_arrays import as_torch
from ._validate import (
    check_bool,
    check_budget,
    check_indices,
    check_same_place,
    make_rng,
)
from .gradients import GradientEmbedding

# ---------------------------------------------------------------------------------------------
# min distance to a set


def min_distance(X: Any, Y: Any) -> tuple[Any, Any]:
    """Distance from every row of ``X`` to its nearest row of ``Y``, and that row's index.

    Computed in tiles: no ``(n, m)`` matrix is ever held in memory. For dense arrays the
    distances are sums of squared differences, not ``|x|² + |y|² - 2 x·y``, so they carry no
    cancellation error and near-ties go to the lowest index (a
    :class:`~fastal.GradientEmbedding`'s are ``|g_i|² + |g_j|² - 2 (a_i·a_j)(h_i·h_j)``, recomputed
    without the cancellation where that is within its rounding error, so that a copy is at 0). On a
    CPU with AVX-512, ``m >= 8`` runs in register blocks of 6 rows x 4 centres (a gradient
    embedding's two dot products too).

    Parameters
    ----------
    X : array of shape (n, d), or GradientEmbedding
        numpy, torch (CPU/CUDA) or cupy; float32, float16, bfloat16, or float64 on the CPU. A
        :class:`~fastal.GradientEmbedding` is compared in O(C + dh) per pair, never materialised.
    Y : array of shape (m, d), m >= 1, or GradientEmbedding
        Same kind, framework, device and dtype as ``X`` (and the same factor shapes).

    Returns
    -------
    distances : array of shape (n,)
        Euclidean distances, float32 (float64 for float64 input), in the input's framework/device.
    index : array of shape (n,), int64
        Row of ``Y`` nearest to each row of ``X``; ties go to the lowest index.

    Raises
    ------
    ValueError
        Also when a nearest distance overflows the accumulation dtype (float32 rows ~1e19 apart,
        float64 ~1e154), detected on the result: the distances would be ``inf`` and the indices
        arbitrary.

    Examples
    --------
    >>> import numpy as np, fastal
    >>> dist, idx = fastal.min_distance(np.array([[0.0], [3.0]]), np.array([[1.0], [4.0]]))
    >>> dist.tolist(), idx.tolist()
    ([1.0, 1.0], [0, 1])
    """
    info = pool_info(X, "X")
    yinfo = pool_info(Y, "Y")
    factored = isinstance(X, GradientEmbedding)
    if factored != isinstance(Y, GradientEmbedding):
        raise TypeError("X and Y must both be dense arrays or both be GradientEmbedding")
    check_same_place(yinfo, "Y", info, "X")
    if yinfo.dtype != info.dtype:
        raise TypeError(f"Y has dtype {yinfo.dtype} but X has {info.dtype}; cast one on purpose")
    if factored and (Y.n_classes, Y.dh) != (X.n_classes, X.dh):
        raise ValueError(
            f"Y must have the factor shapes of X (C={X.n_classes}, dh={X.dh}), "
            f"got C={Y.n_classes}, dh={Y.dh}"
        )
    if yinfo.shape[1] != info.shape[1]:
        raise ValueError(f"Y must have {info.shape[1]} columns like X, got shape {yinfo.shape}")
    if info.device == "cpu":
        spreads: list = []
        pool, ypool = cpu_pool(X, info, "X", spreads), cpu_pool(Y, yinfo, "Y", spreads)
        if not factored:  # X and Y together: their rows about X[0], within twice the spreads
            spreads.append(float(np.abs(_first_row64(X, info) - _first_row64(Y, yinfo)).max()))
        check_spread(max(spreads), info.dtype, "X and Y")
        dist2, index = min_sqdist_cpu(pool, ypool, info.dtype)
        if not np.isfinite(dist2).all():  # finite input: an overflow made the nearest one inf
            raise _distance_overflow(info)
        return _interop.wrap_host(np.sqrt(dist2), info), _interop.wrap_host(index, info)
    import torch

    with _interop.device_scope(info, "X"):
        if not factored:  # as on the CPU: X and Y together
            xt, yt = as_torch(X, info), as_torch(Y, yinfo)
            gap = float((xt[0].to(torch.float64) - yt[0].to(torch.float64)).abs().max())
            spread = max(spread_torch(xt, info.dtype), spread_torch(yt, info.dtype), gap)
        else:
            spread = max(embedding_spread(X, "X"), embedding_spread(Y, "Y"))
        check_spread(spread, info.dtype, "X and Y", cuda=True)
        dist, index = _min_distance_cuda(X, info, Y, yinfo, factored)

    if not bool(torch.isfinite(as_torch(dist, _interop.describe(dist, "distances"))).all()):
        raise _distance_overflow(info)
    return dist, index


def _first_row64(X: Any, info: ArrayInfo) -> np.ndarray:
    """Row 0 of a CPU array in float64 (numpy: no torch view, which warns on read-only arrays)."""
    if info.framework == "numpy":
        return np.asarray(X[0], dtype=np.float64)
    import torch

    return X[0].detach().resolve_neg().to(torch.float64).numpy()  # a lazy negation is not data


def _distance_overflow(info: ArrayInfo) -> ValueError:
    """The error of a distance between finite rows of X and Y that overflowed its dtype."""
    hint = "" if ACC[info.dtype] == "float64" else " or pass float64"
    return ValueError(
        f"distances between rows of X and Y overflow {ACC[info.dtype]}: scale them down{hint}"
    )


def _min_distance_cuda(
    X: Any, info: ArrayInfo, Y: Any, yinfo: ArrayInfo, factored: bool, squared: bool = False
):
    """Distances (squared: their squares, and no finiteness scans: k-means checks its rows
    once per fit and its centres are their means) on the device."""
    if factored:
        from . import _factored_cuda

        return _factored_cuda.min_distance_cuda_factored(X, Y)
    n = info.shape[0]
    cuda = _ext.require_cuda("X")
    xkeep, xptr = _interop.cuda_pointer(X, info)
    ykeep, yptr = _interop.cuda_pointer(Y, yinfo)
    if not squared:
        check_finite_cuda(xptr, info, "X")
        check_finite_cuda(yptr, yinfo, "Y")
    dist = _interop.empty(info, (n,), ACC[info.dtype])
    index = _interop.empty(info, (n,), "int64")
    cuda.min_dist_to_set(
        info.dtype, xptr, n, yptr, yinfo.shape[0], info.shape[1],
        _ptr(dist), _ptr(index), info.device_index, _interop.cuda_stream(info), squared=squared,
    )  # fmt: skip
    del xkeep, ykeep
    return dist, index


def min_sqdist_cuda(X: Any, Y: Any) -> tuple[Any, Any]:
    """Squared distance from every row of the CUDA array ``X`` to its nearest row of ``Y`` (same
    framework, device and dtype; finite, unchecked) and that row's index: k-means' assignment."""
    info, yinfo = pool_info(X, "X"), pool_info(Y, "Y")
    with _interop.device_scope(info, "X"):
        return _min_distance_cuda(X, info, Y, yinfo, False, squared=True)


def _ptr(a: Any) -> int:
    return int(a.data_ptr()) if hasattr(a, "data_ptr") else int(a.data.ptr)


# ---------------------------------------------------------------------------------------------
# k-center greedy


@dataclass
class KCenterResult:
    """Everything a k-center run knows; :func:`kcenter_greedy` returns the first fields.

    Returned by :func:`kcenter`. Fields are read with attribute access (a dataclass, not a tuple).

    Attributes
    ----------
    indices : (budget,) int64 array
        The picked rows in pick order, in the framework and on the device of ``X``.
    radius : (budget,) float array
        Covering radius ``max_i min_j ||x_i - c_j||`` of the labeled rows plus the picks so far,
        after each pick; float32 (float64 for float64 ``X``), same framework and device as ``X``.
    initial_radius : float
        Covering radius of the labeled set alone; ``inf`` without labeled rows.
    rows_read : int
        Rows whose distance to a new centre was computed, the earlier centres each pruned step
        reads for its test included: a little above ``rows_unpruned`` where pruning saves
        little (unclustered data).
    rows_unpruned : int
        Rows the same run reads without pruning: ``sum_t (n - len(labeled) - t)``, t = 1..budget.
    seconds : float
        Wall-clock time of the selection.
    diagnostics : dict
        ``initial_radius``, ``final_radius``, ``rows_read``, ``rows_unpruned``,
        ``rows_read_fraction`` (``rows_read / rows_unpruned``, 0.0 when that is 0), ``pruned``
        (False where pruning was off or stepped aside for rows shorter than 256 bytes on the CPU)
        and ``seconds``.

    Examples
    --------
    >>> import numpy as np, fastal
    >>> res = fastal.kcenter(np.array([[0.0], [1.0], [2.0], [10.0]]), 2, labeled=[0])
    >>> res.indices.tolist(), res.radius.tolist(), res.initial_radius
    ([3, 2], [2.0, 1.0], 10.0)
    >>> res.rows_unpruned  # (4 - 1 - 1) + (4 - 1 - 2): the rows not yet picked, per step
    3
    """

    indices: Any  #: (budget,) int64, pick order, input's framework/device
    radius: Any  #: (budget,) covering radius of labeled + picks after each pick
    initial_radius: float  #: radius of the labeled set alone (inf without one)
    rows_read: int  #: rows whose distance to a new centre was computed (earlier centres included)
    rows_unpruned: int  #: rows the same run reads without pruning
    seconds: float
    diagnostics: dict = field(default_factory=dict)


def kcenter_greedy(
    X: Any,
    budget: int,
    *,
    labeled: Any = None,
    seed: int | np.random.Generator | None = None,
    prune: bool = True,
    progress: bool = False,
    return_radius: bool = False,
) -> Any:
    """k-center greedy selection (Sener & Savarese 2018, Alg. 1).

    Repeatedly picks the point farthest from its nearest centre, ``argmax_i min_j ||x_i - c_j||``,
    starting from the labeled points as centres. Each pick is one fused pass over ``X``: distances
    to the new centre, ``mind = min(mind, d)`` and the arg-max (ties to the lowest index).

    Parameters
    ----------
    X : array of shape (n, d), or GradientEmbedding
        Pool embeddings: numpy, torch (CPU/CUDA) or cupy; float32, float16, bfloat16, or float64 on
        the CPU. Accumulation is float32 (float64 for float64). A :class:`~fastal.GradientEmbedding`
        gives k-center over per-sample gradients at O(C + dh) per distance; its pruning test adds
        the absolute rounding margin of the factored distance, so picks stay exact.
    budget : int
        Number of new centres, ``0 <= budget <= n - len(labeled)``.
    labeled : 1-D integer indices, optional
        Already-labeled rows: the initial centres, never picked.
    seed : int or numpy.random.Generator, optional
        Draws the first centre when there is no labeled point (uniform over the pool).
    prune : bool, default True
        Exact triangle-inequality pruning: a row whose nearest centre ``a`` has
        ``d(c_new, a) >= 2 mind`` is not read. The picks are identical either way. On the CPU,
        rows shorter than 256 bytes are read unpruned (they cost less than the test), and a chunk
        of rows (up to 4096) whose test keeps at least 35 % of them is read whole, in order:
        skipping the others saved no time there.
    progress : bool, default False
        Show a tqdm progress bar over the picks.
    return_radius : bool, default False
        Also return the covering radius ``max_i min_j ||x_i - c_j||`` after each pick.

    Returns
    -------
    indices : (budget,) int64 array in pick order, same framework and device as ``X``
    radius : (budget,) float array, only with ``return_radius=True``

    Examples
    --------
    >>> import numpy as np, fastal
    >>> X = np.array([[0.0], [1.0], [2.0], [10.0]])
    >>> fastal.kcenter_greedy(X, 2, labeled=[0]).tolist()
    [3, 2]
    """
    if not isinstance(return_radius, (bool, np.bool_)):
        raise TypeError(f"return_radius must be a bool, got {type(return_radius).__name__}")
    res = kcenter(X, budget, labeled=labeled, seed=seed, prune=prune, progress=progress)
    return (res.indices, res.radius) if return_radius else res.indices


def kcenter(
    X: Any,
    budget: int,
    *,
    labeled: Any = None,
    seed: int | np.random.Generator | None = None,
    prune: bool = True,
    progress: bool = False,
) -> KCenterResult:
    """:func:`kcenter_greedy` returning a :class:`KCenterResult` with diagnostics.

    The same selection as :func:`kcenter_greedy` (Sener & Savarese 2018, Alg. 1): the picks are
    identical for the same arguments.

    Parameters
    ----------
    X, budget, labeled, seed, prune, progress
        As in :func:`kcenter_greedy`; ``rows_read`` tells how many rows pruning left to read.

    Returns
    -------
    KCenterResult
        ``indices`` and ``radius`` (as :func:`kcenter_greedy` with ``return_radius=True``) plus
        the radius of the labeled set, rows read and time.

    Raises
    ------
    ValueError
        If a distance overflows the accumulation dtype (scale ``X`` down or pass float64).

    Examples
    --------
    >>> import numpy as np, fastal
    >>> res = fastal.kcenter(np.array([[0.0], [1.0], [2.0], [10.0]]), 2, labeled=[0])
    >>> res.indices.tolist(), float(res.diagnostics["final_radius"])
    ([3, 2], 1.0)
    """
    return _kcenter(X, budget, labeled, seed, prune, progress, "X")


def _kcenter(X: Any, budget: int, labeled, seed, prune, progress, name: str) -> KCenterResult:
    """:func:`kcenter`, its messages naming the pool ``name`` (a strategy's "features")."""
    info = pool_info(X, name)
    n = info.shape[0]
    lab = check_indices(labeled, n, "labeled", like=info)
    budget = check_budget(budget, n - lab.size)
    if not isinstance(prune, (bool, np.bool_)):
        raise TypeError(f"prune must be a bool, got {type(prune).__name__}")
    check_bool(progress, "progress")
    rng = make_rng(seed)
    first = int(rng.integers(n)) if lab.size == 0 and budget > 0 else None
    start = time.perf_counter()
    if info.device == "cpu":
        run = _kcenter_cpu
    elif isinstance(X, GradientEmbedding):
        from ._factored_cuda import kcenter_cuda_factored as run
    else:
        run = _kcenter_cuda
    with _interop.device_scope(info, name):
        indices, radius, r0, rows_read, pruned = run(
            X, info, lab, budget, first, bool(prune), progress, name
        )
        # read back on the pool's device (cupy reduces on the current one)
        largest = float(radius.max()) if budget > 0 else 0.0
        final = float(radius[-1]) if budget > 0 else r0
    seconds = time.perf_counter() - start
    # finite input with at least one centre has finite distances, unless float32 overflowed
    overflow = (lab.size > 0 and np.isinf(r0)) or not np.isfinite(largest)
    if overflow:
        raise ValueError(
            f"distances between rows of {name} overflow {ACC[info.dtype]}: scale {name} down"
            + ("" if ACC[info.dtype] == "float64" else " or pass float64")
        )
    # without pruning, step t reads every row that is not yet a centre
    n_centres = lab.size + np.arange(1, budget + 1)
    rows_unpruned = int(np.sum(n - n_centres))
    return KCenterResult(
        indices=indices,
        radius=radius,
        initial_radius=r0,
        rows_read=int(rows_read),
        rows_unpruned=rows_unpruned,
        seconds=seconds,
        diagnostics={
            "initial_radius": r0,
            "final_radius": final,
            "rows_read": int(rows_read),
            "rows_unpruned": rows_unpruned,
            "rows_read_fraction": rows_read / rows_unpruned if rows_unpruned else 0.0,
            "pruned": pruned,  # False where pruning stepped aside for short rows
            "seconds": seconds,
        },
    )


# The CPU kernels run without the GIL, so Ctrl-C is only seen between calls: their steps run in
# calls of at most about this many elements read (~0.1 s at this machine's bandwidth), not in one
# call that could take minutes (n = 1M, d = 512, budget 10,000).
_INTERRUPT_WORK = 1 << 30
# The min-distance kernel is bound by arithmetic: its calls hold at most about this many squared
# differences (~0.1 s at the ~170 G a second of the 2-core development VM), and 1024 rows.
_INTERRUPT_PAIRS = 1 << 34


def min_sqdist_cpu(
    pool: tuple, ypool: tuple, dtype: str, progress: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Squared distance of every row of a CPU pool (cpu_pool's tuple) to its nearest row of
    ``ypool`` and that row's index, in calls over row ranges of bounded work; ``progress``: the
    description of a progress bar over the rows (none when None)."""
    n, m = pool[0].shape[0], ypool[0].shape[0]
    rows = max(1024, _INTERRUPT_PAIRS // max(1, m * (pool_work(pool) // max(n, 1))))
    if progress is not None:  # about a hundred updates
        rows = min(rows, max(1024, -(-n // 100)))
    kernel = getattr(_ext.cpu, f"min_sqdist_to_set_{dtype}")
    if rows >= n:
        return kernel(pool, ypool)
    parts = []
    with tqdm(total=n, disable=progress is None, desc=progress, unit="row") as bar:
        for s in range(0, n, rows):
            parts.append(kernel(pool_rows(pool, slice(s, s + rows)), ypool))
            bar.update(min(rows, n - s))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def pool_rows(pool: tuple, rows) -> tuple:
    """Rows ``rows`` (an index array or a slice) of a CPU pool (cpu_pool's tuple), as a pool."""
    return tuple(a[rows] if isinstance(a, np.ndarray) else a for a in pool)


def pool_work(pool: tuple) -> int:
    """Elements of a CPU pool (cpu_pool's tuple) that one step reads."""
    return sum(int(a.size) for a in pool if isinstance(a, np.ndarray) and a.ndim == 2)


def _chunks(budget: int, progress: bool, desc: str = "k-center", work: int = 0):
    """Step ranges: a hundredth of the budget for a progress bar, and no more than
    ``_INTERRUPT_WORK`` elements per call for steps that each read ``work`` (0: one call)."""
    step = max(1, budget // 100) if progress else max(1, budget)
    if work > 0:
        step = min(step, max(1, _INTERRUPT_WORK // work))
    bar = tqdm(total=budget, disable=not progress, desc=desc, unit="pick")
    with bar:
        for t0 in range(0, budget, step):
            t1 = min(budget, t0 + step)
            yield t0, t1
            bar.update(t1 - t0)


# Pruning's test reads a row's nearest centre and its mind (12-16 bytes), and the rows it leaves
# break the sequential stream; on the 2-core development VM it paid only for rows of 256 bytes or
# more (benchmarks/RESULTS.md). Shorter rows are read, as unpruned, with the same picks.
_PRUNE_MIN_ROW_BYTES = 256


def cpu_row_bytes(pool: tuple) -> int:
    """Bytes of one row of a CPU pool (cpu_pool's tuple) that a distance reads."""
    arrays = (a for a in pool if isinstance(a, np.ndarray) and a.ndim == 2)
    return sum(a.shape[1] * a.itemsize for a in arrays)


def cpu_prunes(pool: tuple, prune: bool) -> bool:
    """Whether a CPU k-center or k-means++ pass over ``pool`` prunes: asked to, and rows of at
    least ``_PRUNE_MIN_ROW_BYTES`` (shorter ones cost less to read than the test)."""
    return prune and cpu_row_bytes(pool) >= _PRUNE_MIN_ROW_BYTES


def _kcenter_cpu(
    X, info: ArrayInfo, lab, budget: int, first, prune: bool, progress: bool, name: str
):
    pool = cpu_pool(X, info, name)
    prune = cpu_prunes(pool, prune)
    n, acc, kern = info.shape[0], ACC[info.dtype], info.dtype
    mind = np.empty(n, dtype=acc)
    near = np.empty(n, dtype=np.int64)
    centres = np.empty(lab.size + budget, dtype=np.int64)
    picks = np.empty(budget, dtype=np.int64)
    radius2 = np.empty(budget, dtype=acc)
    if lab.size:  # the labeled rows are the first centres; the farthest other row is picks[0]
        centres[: lab.size] = lab
        # the labeled set's distances can take most of the time: a bar of their own
        desc = f"distances to {lab.size} labeled rows" if progress else None
        mind[:], near[:] = min_sqdist_cpu(pool, pool_rows(pool, lab), kern, progress=desc)
        mind[lab] = -np.inf
        far = int(np.argmax(mind))  # the lowest index on ties
        r0 = float(np.sqrt(max(mind[far], 0)))
        if budget:
            picks[0] = far
    else:
        r0 = float("inf")
        if budget:
            getattr(_ext.cpu, f"kcenter_init_first_{kern}")(
                pool, first, mind, near, centres, picks, radius2
            )
    steps = getattr(_ext.cpu, f"kcenter_steps_{kern}")
    rows_read = 0
    for t0, t1 in _chunks(budget, progress, work=pool_work(pool)):
        rows_read += steps(pool, mind, near, centres, lab.size, picks, radius2, prune, t0, t1)
    radius = np.sqrt(radius2)
    return _interop.wrap_host(picks, info), _interop.wrap_host(radius, info), r0, rows_read, prune


def _kcenter_cuda(
    X, info: ArrayInfo, lab, budget: int, first, prune: bool, progress: bool, name: str
):
    cuda = _ext.require_cuda(name)
    keep, xptr = _interop.cuda_pointer(X, info)
    check_finite_cuda(xptr, info, name)
    check_spread_torch(as_torch(X, info), info.dtype, name)
    n, d = info.shape
    dev, stream, acc = info.device_index, _interop.cuda_stream(info), ACC[info.dtype]
    mind = _interop.empty(info, (n,), acc)
    near = _interop.empty(info, (n,), "int64")
    centres = _interop.to_framework(np.concatenate([lab, np.zeros(budget, np.int64)]), info)
    keys = _interop.to_framework(np.zeros(budget + 1, np.int64), info)  # uint64 keys, zeroed
    centre_dist2 = _interop.empty(info, (max(1, lab.size + budget),), "float32")
    centre_row = _interop.empty(info, (d,), "float32")
    counter = _interop.to_framework(np.zeros(1, np.int64), info)
    rows = keep[_interop.to_framework(lab, info)] if lab.size else None
    if rows is not None:
        cuda.kcenter_init_labeled(
            info.dtype, xptr, n, d, _ptr(rows), lab.size, _ptr(centres),
            _ptr(mind), _ptr(near), _ptr(keys), dev, stream,
        )  # fmt: skip
    elif budget:
        cuda.kcenter_init_first(
            info.dtype, first, n, _ptr(mind), _ptr(near), _ptr(keys), dev, stream
        )
    centre_reads = 0  # rows the pruned steps read for the centre-to-centre distances
    for t0, t1 in _chunks(budget, progress):
        centre_reads += cuda.kcenter_steps(
            info.dtype, xptr, n, d, _ptr(mind), _ptr(near), _ptr(centres), lab.size, budget,
            _ptr(keys), _ptr(centre_dist2), _ptr(centre_row), _ptr(counter), prune, t0, t1,
            dev, stream,
        )  # fmt: skip
        if progress:
            cuda.synchronize(dev, stream)
    picks = _interop.empty(info, (budget,), "int64")
    radius = _interop.empty(info, (budget,), "float32")
    cuda.kcenter_decode(_ptr(keys), budget, _ptr(picks), _ptr(radius), dev, stream)
    host_keys = _interop.host_numpy(keys[:1]).view(np.uint64)
    r0 = _interop.key_radius(cuda, int(host_keys[0])) if lab.size else float("inf")
    rows_read = int(_interop.host_numpy(counter)[0]) + centre_reads
    del keep, rows
    return picks, radius, r0, rows_read, prune
