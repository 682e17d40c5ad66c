"""The steps of k-means' Lloyd and mini-batch iterations, in torch and fastal's kernels.

Assignment (:func:`_assign`: the fused CPU step when given, else GEMM tiles about the centres'
mean or the min-distance kernel), the float64 update (:func:`_segment_means`, with
:func:`_relocate_empty` for empty clusters), the stopping tolerance (:func:`_tol_abs`), rows left
out in place (:class:`_Excluded`) and Sculley's mini-batch k-means (:func:`_minibatch`), plus the
error for overflowing distances (:func:`_overflow`). :func:`fastal.kmeans._kmeans` strings them
together; the fused and bounded CPU steps are in :mod:`fastal._lloyd_fused`.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from . import _ext, _interop
from ._pool import ACC, torch_cpu_info

#: most rows per GEMM tile of the assignment step
_TILE = 8192
#: elements of one (rows, k) distance tile of the GEMM assignment (8 MiB in float32): 8192 rows
#: of k = 10,000 centres would be 328 MB
_TILE_ELEMENTS = 1 << 21
#: from this many centres on, float32/float64 assignment uses GEMM tiles instead of the kernel
_GEMM_MIN_K = 32
#: mini-batch k-means stops after this many batches without a better weighted inertia
_NO_IMPROVEMENT = 10


def _overflow(name: str, dtype: str) -> ValueError:
    """The error for squared distances between finite rows of ``name`` that overflowed."""
    acc = ACC[dtype]
    hint = "" if acc == "float64" else " or pass float64"
    return ValueError(f"distances between rows of {name} overflow {acc}: scale {name} down{hint}")


def _row_sqnorms(xt: Any, dtype: Any) -> Any:
    """``|x|²`` of every row in ``dtype`` (once per fit: it does not change between iterations)."""
    import torch

    out = torch.empty(xt.shape[0], dtype=dtype, device=xt.device)
    for s in range(0, xt.shape[0], _TILE):
        x = xt[s : s + _TILE].to(dtype)
        out[s : s + _TILE] = (x * x).sum(1)
    return out


def _gemm_assign(info, k: int) -> bool:
    """Whether :func:`_assign` takes GEMM tiles: float32 / float64 rows from ``_GEMM_MIN_K``
    centres, and 16-bit rows on CUDA (widened tile by tile; the min-distance kernel there would
    compare them with centres rounded to their storage)."""
    if info.dtype in ("float32", "float64"):
        return k >= _GEMM_MIN_K
    return info.device != "cpu"


def _assign(xt: Any, centres: Any, info, xsq: Any = None, step: Any = None) -> tuple[Any, Any]:
    """(labels int64, squared distances) of every row of ``xt`` to its nearest centre (torch).
    The centres keep their accumulation dtype: 16-bit rows are never compared with centres
    rounded to 16 bits. The distances are direct, ``Σ (x - c)²`` to the label.

    ``step``: the fused CPU Lloyd step (:func:`fastal._lloyd_fused._fused_lloyd`), whose labels do
    not depend on the GEMM's rounding; ``xsq``: the rows' squared norms when already known (for
    ``step``)."""
    import torch

    k = centres.shape[0]
    if step is not None:
        if xsq is None:
            xsq = _row_sqnorms(xt, centres.dtype)
        labels, dist2, _, _ = step(xt, xsq, centres)
        return labels, dist2
    if _gemm_assign(info, k):
        labels = torch.empty(xt.shape[0], dtype=torch.int64, device=xt.device)
        dist2 = torch.empty(xt.shape[0], dtype=centres.dtype, device=xt.device)
        # about the centres' mean: |x|² and x·c of rows far from the origin would round away
        # the gaps between centres (float32 rows at 1e4 lost most labels)
        mid = centres.mean(0)
        c0 = centres - mid
        csq = (c0 * c0).sum(1)
        ct = c0.T.contiguous()
        rows = max(64, min(_TILE, _TILE_ELEMENTS // k))  # the (rows, k) tile, not rows alone
        for s in range(0, xt.shape[0], rows):
            x = xt[s : s + rows].to(centres.dtype) - mid
            # |c|² - 2 x·c: |x|² is the same for every centre, so it is left out of the arg-min
            d2 = torch.addmm(csq[None, :], x, ct, alpha=-2)
            arg = d2.argmin(1)  # first minimum on ties
            labels[s : s + rows] = arg
            dist2[s : s + rows] = ((x - c0[arg]) ** 2).sum(1)
        return labels, dist2
    if info.device == "cpu":  # the min-distance kernel, the centres in float32 / float64
        x = _interop.host_storage(xt, torch_cpu_info(xt))
        c = np.ascontiguousarray(centres.detach().numpy())
        dist2, labels = getattr(_ext.cpu, f"min_sqdist_to_centres_{info.dtype}")(x, c)
        return torch.from_numpy(labels), torch.from_numpy(dist2).to(centres.dtype)
    from .ops import min_sqdist_cuda

    # CUDA float32 rows with few centres: the centres have the rows' dtype already
    dist2, labels = min_sqdist_cuda(xt.contiguous(), centres.to(xt.dtype).contiguous())
    return labels, dist2.to(centres.dtype)


def _segment_means(xt: Any, labels: Any, k: int) -> tuple[Any, Any]:
    """(float64 sums per centre, counts): the update step (the segmented-sum kernel on the CPU;
    torch ``index_add_`` on CUDA, chunked to bound the float64 copy)."""
    import torch

    if xt.device.type == "cpu":
        x = _interop.host_storage(xt, torch_cpu_info(xt))
        sums, counts = getattr(_ext.cpu, f"segment_sum_{torch_cpu_info(xt).dtype}")(
            x, labels.contiguous().numpy(), k
        )
        return torch.from_numpy(sums), torch.from_numpy(counts)
    sums = torch.zeros((k, xt.shape[1]), dtype=torch.float64, device=xt.device)
    for s in range(0, xt.shape[0], _TILE):
        sums.index_add_(0, labels[s : s + _TILE], xt[s : s + _TILE].to(torch.float64))
    counts = torch.bincount(labels, minlength=k)
    return sums, counts


def _tol_abs(xt: Any, tol: float, keep: Any = None, name: str = "X") -> float:
    """scikit-learn's tolerance: ``tol * mean(var(X, axis=0))`` (over the ``keep`` rows).

    The variance of ``X - x0`` (``x0`` the first row read; the variance is shift-invariant), by
    per-tile column means and centred sums of squares in float64, merged across tiles by Chan et
    al.'s pairwise update: one pass, no float64 copy of X. The differences are bounded by the
    spread the distance checks allow; float32 squares and column means of X itself overflowed
    for pools ~1e17 wide or a constant column ~1e26 (the tolerance became inf and the fit
    stopped after one iteration, "converged")."""
    import torch

    if tol == 0:
        return 0.0
    work = torch.float64 if xt.dtype == torch.float64 else torch.float32
    count, mean, m2, x0 = 0, None, None, None
    # one tile's difference (in ``work``) and its float64 copy, reused: a fresh pair of
    # tile-sized temporaries per tile (and ``** 2``'s) cost more than the arithmetic
    shape = (min(_TILE, xt.shape[0]),) + tuple(xt.shape[1:])
    diff = torch.empty(shape, dtype=work, device=xt.device)
    wide = (
        diff if work == torch.float64 else torch.empty(shape, dtype=torch.float64, device=xt.device)
    )
    for s in range(0, xt.shape[0], _TILE):
        x = xt[s : s + _TILE] if keep is None else xt[s : s + _TILE][keep[s : s + _TILE]]
        x = x.to(work)
        nb = x.shape[0]
        if nb == 0:
            continue
        if x0 is None:
            x0 = x[0].clone()
        torch.sub(x, x0, out=diff[:nb])
        x = wide[:nb]
        if work != torch.float64:
            x.copy_(diff[:nb])
        mb = x.mean(0)
        m2b = x.sub_(mb).mul_(x).sum(0)
        if mean is None:
            count, mean, m2 = nb, mb, m2b
            continue
        delta = mb - mean
        total = count + nb
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + delta**2 * (count * nb / total)
        count = total
    variance = float((m2 / count).mean())
    if not math.isfinite(variance):  # a column variance past float64: so is some squared distance
        raise _overflow(name, "float64" if xt.dtype == torch.float64 else "float32")
    return min(tol * variance, sys.float_info.max)  # a huge tol: any finite shift converges


def _lloyd_pass(xt, xsq, centres, info, fused, bounded) -> tuple:
    """(labels, dist2, sums, counts) of one Lloyd assignment; dist2 is None from the bounded
    kernel, which does not compute every row's distance."""
    k = centres.shape[0]
    if bounded is not None:
        labels, sums, counts = bounded.step(xt, xsq, centres)
        return labels, None, sums, counts
    if fused is not None:
        return fused(xt, xsq, centres)
    labels, dist2 = _assign(xt, centres, info, xsq)
    return (labels, dist2, *_segment_means(xt, labels, k))


class _Excluded:
    """Rows that Lloyd leaves out in place (KMeansSampling's and ALLY's labeled rows).

    A full-batch step still assigns them (a few percent more work when few rows are labeled);
    their contributions are then taken out of the sums and counts, their labels set to -1 (so the
    convergence test compares the other rows only) and their distances to -1 (never the farthest
    row an empty cluster takes). Only their own rows are copied, not the other rows. Mini-batch
    draws its batches from the other rows (``keep``) and needs no copy. The sums less the
    excluded rows equal the other rows' sums where float64 adds them exactly (float32 and 16-bit
    rows of moderate range); for float64 rows they can differ in the last bits, and a row at a
    near-tie then takes the other label.
    """

    #: the excluded rows' copy is at most this share of X; beyond, gathering the rest is smaller
    MAX_SHARE = 0.25

    def __init__(self, xt: Any, exclude: np.ndarray, full_batch: bool = True) -> None:
        import torch

        self.rows = torch.from_numpy(np.ascontiguousarray(exclude)).to(xt.device)
        self.keep = torch.ones(xt.shape[0], dtype=torch.bool, device=xt.device)
        self.keep[self.rows] = False
        self.x = xt[self.rows].contiguous() if full_batch else None

    @classmethod
    def applies(cls, X: Any, info, exclude: np.ndarray) -> bool:
        """CPU, few enough rows (each fit ends with a pass over all of them), and every row
        finite (a non-finite excluded row would reach the sums; the gathered path ignores it, as
        the caller expects)."""
        if info.device != "cpu":
            return False
        if exclude.size > cls.MAX_SHARE * info.shape[0]:
            return False
        x = _interop.host_storage(X, info)
        return int(getattr(_ext.cpu, f"count_nonfinite_rows_{info.dtype}")(x)[0]) == 0

    def drop(self, labels: Any, dist2: Any, sums: Any, counts: Any, k: int) -> tuple:
        ex_sums, ex_counts = _segment_means(self.x, labels[self.rows], k)
        labels = labels.masked_fill(~self.keep, -1)
        if dist2 is not None:
            dist2 = dist2.masked_fill(~self.keep, -1)
        return labels, dist2, sums - ex_sums, counts - ex_counts.to(counts.dtype)


def _relocate_empty(sums, counts, xt, dist2, acc):
    """Means from the sums; an empty cluster takes the j-th farthest row from its centre."""
    import torch

    means = (sums / counts.clamp_min(1)[:, None].to(torch.float64)).to(acc)
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel():
        # stable sort of -dist: equal distances keep the lowest index first
        order = torch.sort(-dist2.to(torch.float64), stable=True).indices[: empty.numel()]
        means[empty] = xt[order].to(acc)
    return means


def _take_far_rows(centres, which, seen, xb, dist2) -> int:
    """As Lloyd's empty clusters: the j-th centre of the mask ``which`` takes the j-th row of
    ``xb`` farthest from its own centre (``dist2``; ties to the lowest position) and restarts its
    count; rows at distance 0 (or marked -1) are no better than where the centre is. Returns how
    many centres moved."""
    import torch

    dead = torch.nonzero(which).flatten()
    if not dead.numel():
        return 0
    d64 = dist2.to(torch.float64)
    far = torch.sort(-d64, stable=True).indices[: dead.numel()]
    far = far[d64[far] > 0]
    dead = dead[: far.numel()]
    centres[dead] = xb[far].to(centres.dtype)
    seen[dead] = 0
    return int(dead.numel())


def _minibatch(xt, centres, info, batch, epochs, tol_abs, rng, bar, name="X", rows=None, step=None):
    """Sculley (2010) mini-batch k-means; returns (centres, epochs run, converged).

    Every epoch draws a permutation of the rows and walks it in batches. A centre that no row
    reached in a whole epoch then takes one of the rows farthest from their centres
    (:func:`_take_far_rows`, as an empty cluster does in Lloyd's steps). It stops early when an
    epoch moves the centres by at most ``tol_abs`` (squared), or when the exponentially weighted
    batch inertia has not improved for ``_NO_IMPROVEMENT`` batches (scikit-learn's rule).
    ``rows`` (int64 tensor, ascending): the rows to cluster, as on ``xt[rows]`` (default all).
    ``step``: the fused CPU Lloyd step that assigns each batch (:func:`_assign`).
    """
    import torch

    n, k = (xt.shape[0] if rows is None else rows.numel()), centres.shape[0]
    batch = min(batch, n)
    seen = torch.zeros(k, dtype=torch.float64, device=xt.device)
    alpha = min(1.0, 2.0 * batch / (n + 1))
    ewa, best, stale = None, float("inf"), 0
    for epoch in range(1, epochs + 1):
        start = centres.clone()
        reached = torch.zeros_like(seen)
        order = torch.from_numpy(rng.permutation(n)).to(xt.device)
        if rows is not None:
            order = rows[order]
        for s in range(0, n, batch):
            xb = xt[order[s : s + batch]]
            labels, dist2 = _assign(xb, centres, info, step=step)
            sums, counts = _segment_means(xb, labels, k)
            hit = counts > 0
            v = seen[hit]
            c64 = centres[hit].to(torch.float64)
            centres[hit] = ((v[:, None] * c64 + sums[hit]) / (v + counts[hit])[:, None]).to(
                centres.dtype
            )
            seen += counts
            reached += counts
            mean_inertia = float(dist2.to(torch.float64).mean())
            if not np.isfinite(mean_inertia):  # an overflowed distance: the update is garbage
                raise _overflow(name, info.dtype)
            ewa = mean_inertia if ewa is None else (1 - alpha) * ewa + alpha * mean_inertia
            if ewa < best:
                best, stale = ewa, 0
            else:
                stale += 1
        # a centre that no row reached in a whole epoch (a copy of another, or beyond every row)
        # would stay put for the whole fit: it starts afresh, and its move keeps the epoch from
        # counting as converged. Not after each batch: with k near the batch size most centres
        # get no row from one batch, and would lose their seeding.
        moved = 0
        if bool((reached == 0).any()):  # rare: one more assignment pass over the epoch's rows
            _, far = _assign(xt, centres, info, step=step)
            if rows is not None:  # rows left out are never taken
                far = torch.full_like(far, -1).index_copy_(0, rows, far[rows])
            moved = _take_far_rows(centres, reached == 0, seen, xt, far)
        bar.update()
        if moved:
            stale = 0
        elif float(((centres - start) ** 2).sum()) <= tol_abs or stale >= _NO_IMPROVEMENT:
            return centres, epoch, True
    return centres, epochs, False
