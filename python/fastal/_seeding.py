"""k-means++ seeding (D² sampling) and the starting centres of k-means.

:func:`_kmeans_pp` is what :func:`fastal.kmeans_pp` and BADGE run: the checks, the first pick, then
the compiled passes (one per pick, CPU or CUDA, pruned on the CPU). :func:`_initial_centres` turns
``kmeans``'s ``init`` into centres. Both can leave rows out without gathering the others
(``exclude``), drawing as on the other rows alone; :func:`_other_rows` maps such draws back to rows
of the whole pool.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _ext, _interop, _lloyd
from ._lloyd import _overflow
from ._pool import ACC, check_spread, check_spread_torch, cpu_pool, embedding_spread, pool_info
from ._torch_arrays import as_torch
from ._validate import check_budget, check_choice, check_indices, check_matrix, make_rng
from .gradients import GradientEmbedding
from .ops import _chunks, cpu_prunes, min_sqdist_cpu, pool_rows, pool_work


def _other_rows(n: int, exclude: np.ndarray) -> np.ndarray:
    """The rows of ``range(n)`` not in ``exclude``, ascending (what ``X[rest]`` holds)."""
    return np.delete(np.arange(n), exclude)


def _first_by_norm(X: Any, info, exclude: Any = None) -> int:
    """Row with the largest squared norm (not one of ``exclude``), ties to the lowest index."""
    if isinstance(X, GradientEmbedding):
        sq = X._sqnorm
    else:
        import torch

        t = as_torch(X, info)
        # in float64: float32 squares of rows near 2e19 overflow to inf, and the first inf won
        sq = t.new_empty(t.shape[0], dtype=torch.float64)
        tile = _lloyd._TILE
        for s in range(0, t.shape[0], tile):
            c = t[s : s + tile].to(torch.float64)
            sq[s : s + tile] = (c * c).sum(1)
    if exclude is not None and exclude.size:
        import torch

        sq = sq.clone()
        sq[torch.from_numpy(exclude).to(sq.device)] = -float("inf")
    return int(sq.argmax())  # torch.argmax returns the first maximum


def _kmeans_pp(
    X: Any,
    k: int,
    *,
    seed: Any = None,
    first: str = "random",
    labeled: Any = None,
    progress: bool = False,
    name: str = "X",
    exclude: np.ndarray | None = None,
    prune: bool = True,
    stats: dict | None = None,
) -> Any:
    """:func:`fastal.kmeans_pp`, its messages naming ``name``.

    ``exclude`` (unique int64 host indices, CPU only, no ``labeled``): rows that are neither
    picked nor centres, as if the seeding ran on the other rows alone (same draws, the indices of
    the whole ``X``) without gathering them: BADGE leaves the labeled rows out this way.
    ``stats`` (CPU): receives ``rows_read`` (rows whose distance to a new centre was computed,
    the earlier centres of the pruning test included) and ``pruned``.
    """
    info = pool_info(X, name)
    n = info.shape[0]
    lab = check_indices(labeled, n, "labeled", like=info)
    excl = np.empty(0, dtype=np.int64) if exclude is None else exclude
    if excl.size and (lab.size or info.device != "cpu"):
        raise AssertionError("exclude: CPU only, without labeled rows")  # a caller's bug
    k = check_budget(k, n - lab.size - excl.size, "k")
    first = check_choice(first, "first", ("random", "norm"))
    rng = make_rng(seed)
    first_pick = None
    if lab.size == 0 and k > 0:
        if first == "norm":
            first_pick = _first_by_norm(X, info, excl)
        else:  # the same draw as on the other rows alone
            first_pick = int(rng.integers(n - excl.size))
            if excl.size:
                first_pick = int(_other_rows(n, excl)[first_pick])
    uniform = rng.random(k)
    if k == 0:
        return _interop.to_framework(np.empty(0, dtype=np.int64), info)
    if info.device != "cpu":
        from ._factored_cuda import kmeans_pp_cuda

        with _interop.device_scope(info, "X"):
            if isinstance(X, GradientEmbedding):
                check_spread(embedding_spread(X, name), info.dtype, name, cuda=True)
            else:
                check_spread_torch(as_torch(X, info), info.dtype, name)
            return kmeans_pp_cuda(X, k, lab, first_pick, uniform, progress, name)
    pool = cpu_pool(X, info, name)
    mind = np.empty(n, dtype=ACC[info.dtype])
    picks = np.empty(k, dtype=np.int64)
    blocks = np.empty(-(-n // _ext.cpu.kmeanspp_block), dtype=np.float64)
    prune = cpu_prunes(pool, prune)
    # pruning state: each row's nearest centre (a position in centres: the labeled rows, then the
    # picks)
    near = np.full(n, -1, dtype=np.int64) if prune else None
    centres = np.concatenate([lab, np.empty(k, dtype=np.int64)]) if prune else None
    if lab.size:  # the distances to the labeled rows, in calls of bounded work (Ctrl-C)
        desc = f"distances to {lab.size} labeled rows" if progress else None
        mind[:], nearest = min_sqdist_cpu(pool, pool_rows(pool, lab), info.dtype, progress=desc)
        if prune:
            near[:] = nearest
    getattr(_ext.cpu, f"kmeanspp_init_{info.dtype}")(
        pool, lab, -1 if first_pick is None else first_pick, mind, picks, blocks
    )
    mind[excl] = -np.inf  # what the kernels mark centres with: never read, weigh nothing
    steps = getattr(_ext.cpu, f"kmeanspp_steps_{info.dtype}")
    has_first = first_pick is not None

    def check_weights() -> None:
        # Finite rows have finite squared distances unless one overflowed (an inf weight), and the
        # weights only shrink: if their float64 total is finite once every row has a centre, the
        # draws never see an overflow. O(n / block), on the block sums the sampler keeps anyway.
        if not np.isfinite(blocks.sum()):
            if np.isposinf(mind).any():
                raise _overflow(name, info.dtype)
            raise ValueError(  # finite float64 distances whose total is not
                f"the k-means++ weights of {name} (squared distances to the nearest centre, up "
                f"to {float(mind.max()):.3g}) sum past float64's range: scale {name} down"
            )

    if not has_first:
        check_weights()  # the labeled rows are the centres
    state = (near, centres, lab.size)
    rows_read = 0
    for t0, t1 in _chunks(k, progress, "k-means++", work=pool_work(pool)):
        if t0 == 0 and has_first:  # the distances to the first pick
            rows_read += steps(pool, mind, picks, uniform, blocks, True, 0, 1, *state)
            check_weights()
            t0 = 1
        rows_read += steps(pool, mind, picks, uniform, blocks, has_first, t0, t1, *state)
    if stats is not None:
        stats.update(rows_read=int(rows_read), pruned=bool(prune))
    return _interop.wrap_host(picks, info)


def _initial_centres(X, xt, info, k, init, rng, acc, name="X", exclude=None):
    """The k starting centres; with ``exclude``, drawn from the other rows as on ``X[rest]``."""
    import torch

    if isinstance(init, str):
        excl = np.empty(0, dtype=np.int64) if exclude is None else exclude
        if init == "k-means++":
            picks = _kmeans_pp(X, k, seed=rng, first="random", name=name, exclude=excl)
            rows = _interop.host_numpy(picks)
        elif init == "random":
            rows = rng.choice(info.shape[0] - excl.size, k, replace=False)
            if excl.size:
                rows = _other_rows(info.shape[0], excl)[rows]
        else:
            raise ValueError(f"init must be 'k-means++', 'random' or a (k, d) array, got {init!r}")
        idx = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(xt.device)
        return xt[idx].to(acc)
    cinfo = check_matrix(init, "init")
    if cinfo.shape != (k, info.shape[1]):
        raise ValueError(f"init must have shape ({k}, {info.shape[1]}), got {cinfo.shape}")
    if cinfo.device != info.device:
        raise ValueError(f"init is on {cinfo.where} but X is on {info.where}")
    given = as_torch(init, cinfo)
    if not bool(torch.isfinite(given).all()):
        raise ValueError("init contains NaN or Inf")
    c = given.to(device=xt.device, dtype=acc)
    if not bool(torch.isfinite(c).all()):  # finite float64 centres beyond float32's range
        raise ValueError(
            f"init overflows {str(acc).removeprefix('torch.')}, the accumulation dtype of a "
            f"{info.dtype} pool"
        )
    return c.clone()
