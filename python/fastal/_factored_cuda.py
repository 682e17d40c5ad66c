"""CUDA glue for factored pools (:class:`~fastal.GradientEmbedding`) and for k-means++ seeding.

The public functions (``fastal.kcenter``, ``fastal.min_distance``, ``fastal.kmeans_pp``) validate
their arguments and dispatch CUDA inputs here; these functions allocate the device state, queue the
kernels of ``fastal._cuda`` on the caller's stream and return device arrays in the caller's
framework. A GradientEmbedding keeps its factors as torch tensors whatever the input framework, so
its kernels run on torch's current stream and the results are converted back with
:func:`~fastal._torch_arrays.from_torch` (zero-copy DLPack for cupy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _ext, _interop
from ._interop import ArrayInfo
from ._pool import check_spread, embedding_spread
from ._torch_arrays import from_torch
from .gradients import GradientEmbedding
from .ops import _chunks

#: rows per chunk of the overflow check (bounds its float32 temporaries)
_CHUNK = 1 << 15
#: largest sqnorm (and squared factor norm) whose factored distances cannot overflow float32:
#: s_i + s_j <= 2^126 and |2 (A_i . A_j)(H_i . H_j)| <= 2^126 (1 + tiny), so the result < 2^128
_MAX_SQNORM = 2.0**125
_MAX_FACTOR_SQNORM = 2.0**124


def _ptr(a: Any) -> int:
    return int(a.data_ptr()) if hasattr(a, "data_ptr") else int(a.data.ptr)


def _check_finite(
    cuda, ptr: int, dtype: str, shape: tuple[int, int], device: int, stream: int, name: str
) -> None:
    count, first = cuda.count_nonfinite_rows(dtype, ptr, shape[0], shape[1], device, stream)
    if count:
        raise ValueError(f"{name} contains NaN or Inf in {count} row(s), first at row {first}")


def _overflow(name: str) -> ValueError:
    return ValueError(f"distances between rows of {name} overflow float32: scale {name} down")


class _Factored:
    """A GradientEmbedding on a CUDA device as the kernels take it: checked factors and pointers."""

    def __init__(self, emb: GradientEmbedding, name: str, cuda) -> None:
        import torch

        self.a, self.h = emb._a.contiguous(), emb._h_stored()  # the CUDA kernels read dh columns
        self.sq = emb._sqnorm.contiguous()
        self.n, self.C = (int(s) for s in self.a.shape)
        self.dh = int(self.h.shape[1])
        self.dtype = emb.info.dtype
        if self.dtype not in _interop.CUDA_FLOAT_DTYPES or self.sq.dtype != torch.float32:
            raise TypeError(
                f"{name} must have factors of dtype float32, float16 or bfloat16 on a CUDA device, "
                f"got {self.dtype}"
            )
        self.device = int(emb.info.device_index)
        #: torch-flavoured ArrayInfo: state is allocated with torch on torch's current stream
        self.tinfo = ArrayInfo("torch", "cuda", self.device, self.dtype, (self.n, self.C))
        self.stream = _interop.cuda_stream(self.tinfo)
        _check_finite(
            cuda, _ptr(self.a), self.dtype, (self.n, self.C), self.device, self.stream, f"{name}.A"
        )
        _check_finite(
            cuda, _ptr(self.h), self.dtype, (self.n, self.dh), self.device, self.stream, f"{name}.H"
        )
        bounds = torch.stack([_max_row_sq(self.a), _max_row_sq(self.h), self.sq.max()]).cpu()
        a_max, h_max, s_max = (float(v) for v in bounds)
        # written so that NaN fails too
        if not (
            a_max <= _MAX_FACTOR_SQNORM and h_max <= _MAX_FACTOR_SQNORM and s_max <= _MAX_SQNORM
        ):
            raise _overflow(name)

    def pointers(self) -> tuple[int, int, int]:
        return _ptr(self.a), _ptr(self.h), _ptr(self.sq)

    def rows(self, idx: np.ndarray) -> tuple[Any, Any, Any]:
        """Factors and sqnorms of rows ``idx`` (host int64), gathered contiguous on the device."""
        t = _interop.to_framework(np.ascontiguousarray(idx, dtype=np.int64), self.tinfo)
        return self.a[t].contiguous(), self.h[t].contiguous(), self.sq[t].contiguous()


def _max_row_sq(t: Any) -> Any:
    """max_i |t_i|^2 in float32 as a 0-d tensor (NaN or inf if a row overflows), chunked."""
    import torch

    m = torch.zeros((), dtype=torch.float32, device=t.device)
    for s in range(0, t.shape[0], _CHUNK):
        c = t[s : s + _CHUNK].to(torch.float32)
        m = torch.maximum(m, (c * c).sum(1).max())
    return m


# ---------------------------------------------------------------------------------------------
# k-center greedy and min distance on a factored pool


def kcenter_cuda_factored(
    emb: GradientEmbedding,
    info: ArrayInfo,
    lab: np.ndarray,
    budget: int,
    first,
    prune: bool,
    progress: bool,
    name: str = "X",
):
    """k-center greedy on a GradientEmbedding on CUDA; the contract of ``ops._kcenter_cuda``.

    Returns ``(picks (budget,) int64, radius (budget,) float32, r0, rows_read)``: device arrays in
    the embedding's framework, the radius of the labeled set (inf without one) and the rows read.
    """
    cuda = _ext.require_cuda(name)
    pool = _Factored(emb, name, cuda)
    check_spread(embedding_spread(emb, name), pool.dtype, name, cuda=True)
    n, C, dh, tinfo = pool.n, pool.C, pool.dh, pool.tinfo
    dev, stream = pool.device, pool.stream
    mind = _interop.empty(tinfo, (n,), "float32")
    near = _interop.empty(tinfo, (n,), "int64")
    centres = _interop.to_framework(np.concatenate([lab, np.zeros(budget, np.int64)]), tinfo)
    keys = _interop.to_framework(np.zeros(budget + 1, np.int64), tinfo)  # uint64 keys, zeroed
    bound = _interop.empty(tinfo, (2 * max(1, lab.size + budget),), "float32")
    centre_row = _interop.empty(tinfo, (cuda.factored_centre_floats(C, dh),), "float32")
    counter = _interop.to_framework(np.zeros(1, np.int64), tinfo)
    rows = pool.rows(lab) if lab.size else None
    if rows is not None:
        cuda.kcenter_init_labeled_factored(
            pool.dtype, *pool.pointers(), n, C, dh, *(_ptr(r) for r in rows), lab.size,
            _ptr(centres), _ptr(mind), _ptr(near), _ptr(keys), dev, stream,
        )  # fmt: skip
    elif budget:
        cuda.kcenter_init_first(
            pool.dtype, first, n, _ptr(mind), _ptr(near), _ptr(keys), dev, stream
        )
    centre_reads = 0  # rows the pruned steps read for the centre-to-centre bounds
    for t0, t1 in _chunks(budget, progress, "k-center"):
        centre_reads += cuda.kcenter_steps_factored(
            pool.dtype, *pool.pointers(), n, C, dh, _ptr(mind), _ptr(near), _ptr(centres),
            lab.size, budget, _ptr(keys), _ptr(bound), _ptr(centre_row), _ptr(counter), prune,
            t0, t1, dev, stream,
        )  # fmt: skip
        if progress:
            cuda.synchronize(dev, stream)
    picks = _interop.empty(tinfo, (budget,), "int64")
    radius = _interop.empty(tinfo, (budget,), "float32")
    cuda.kcenter_decode(_ptr(keys), budget, _ptr(picks), _ptr(radius), dev, stream)
    host_keys = _interop.host_numpy(keys[:1]).view(np.uint64)
    r0 = _interop.key_radius(cuda, int(host_keys[0])) if lab.size else float("inf")
    rows_read = int(_interop.host_numpy(counter)[0]) + centre_reads
    del rows
    # the kernel prunes only while its float32 error bound holds (kcenter_factored.cu)
    pruned = prune and C + dh + 8 <= (1 << 18)
    return from_torch(picks, emb.info), from_torch(radius, emb.info), r0, rows_read, pruned


def min_distance_cuda_factored(
    emb_x: GradientEmbedding, emb_y: GradientEmbedding
) -> tuple[Any, Any]:
    """For every row of ``emb_x``: distance to the nearest row of ``emb_y`` (float32) and its index
    (int64, ties to the lowest), device arrays in ``emb_x``'s framework."""
    cuda = _ext.require_cuda("X")
    x = _Factored(emb_x, "X", cuda)
    y = _Factored(emb_y, "Y", cuda)
    dist = _interop.empty(x.tinfo, (x.n,), "float32")
    index = _interop.empty(x.tinfo, (x.n,), "int64")
    cuda.min_dist_to_set_factored(
        x.dtype, *x.pointers(), x.n, *y.pointers(), y.n, x.C, x.dh, _ptr(dist), _ptr(index),
        x.device, x.stream,
    )  # fmt: skip
    return from_torch(dist, emb_x.info), from_torch(index, emb_x.info)


# ---------------------------------------------------------------------------------------------
# k-means++ seeding, dense or factored


def kmeans_pp_cuda(
    X: Any, k: int, lab: np.ndarray, first, uniforms: np.ndarray, progress: bool, name: str = "X"
) -> Any:
    """k-means++ picks (k,) int64 on the device, in the framework of ``X``.

    ``X`` is a dense torch-CUDA / cupy matrix or a GradientEmbedding on CUDA; ``lab`` the labeled
    rows (host int64), ``first`` the first pick (an int when ``lab`` is empty, else None) and
    ``uniforms`` the (k,) float64 draws in [0, 1): pick t is drawn with ``uniforms[t]``; ``name``
    the argument errors name.
    """
    cuda = _ext.require_cuda(name)
    factored = isinstance(X, GradientEmbedding)
    if factored:
        pool = _Factored(X, name, cuda)
        like, out_info, n = pool.tinfo, X.info, pool.n
        dtype, dev, stream = pool.dtype, pool.device, pool.stream
        centre_floats = cuda.factored_centre_floats(pool.C, pool.dh)
    else:
        info = _interop.describe(X, name)
        keep, xptr = _interop.cuda_pointer(X, info)
        n, d = info.shape
        dtype, dev, stream = info.dtype, info.device_index, _interop.cuda_stream(info)
        _check_finite(cuda, xptr, dtype, (n, d), dev, stream, name)
        like, out_info, centre_floats = info, info, d
    if k == 0:
        picks = _interop.empty(like, (0,), "int64")
        return from_torch(picks, out_info) if factored else picks
    if lab.size == 0 and first is None:
        raise ValueError("kmeans_pp_cuda needs a first pick when no row is labeled")
    first_given = lab.size == 0

    mind = _interop.empty(like, (n,), "float32")
    picks = _interop.to_framework(np.full(k, -1, np.int64), like)
    u = _interop.to_framework(np.ascontiguousarray(uniforms, dtype=np.float64), like)
    tiles = cuda.kmeanspp_tiles(n)
    tile_sum = _interop.empty(like, (tiles,), "float64")
    tile_count = _interop.empty(like, (tiles,), "int32")
    totals = _interop.to_framework(np.zeros(k, np.float64), like)
    centre_row = _interop.empty(like, (centre_floats,), "float32")
    rows = labeled = None
    if lab.size:
        labeled = _interop.to_framework(np.ascontiguousarray(lab, dtype=np.int64), like)
        if factored:
            rows = pool.rows(lab)
            cuda.kmeanspp_init_labeled_factored(
                dtype, *pool.pointers(), n, pool.C, pool.dh, *(_ptr(r) for r in rows), lab.size,
                _ptr(labeled), _ptr(mind), _ptr(tile_sum), _ptr(tile_count), dev, stream,
            )  # fmt: skip
        else:
            rows = keep[labeled]  # gathered, contiguous
            cuda.kmeanspp_init_labeled(
                dtype, xptr, n, d, _ptr(rows), lab.size, _ptr(labeled), _ptr(mind),
                _ptr(tile_sum), _ptr(tile_count), dev, stream,
            )  # fmt: skip
    else:
        cuda.kmeanspp_init_first(int(first), n, _ptr(mind), _ptr(picks), dev, stream)
    state = (
        _ptr(mind), _ptr(picks), k, _ptr(u), _ptr(tile_sum), _ptr(tile_count), _ptr(totals),
        _ptr(centre_row), first_given,
    )  # fmt: skip
    for t0, t1 in _chunks(k, progress, "k-means++"):
        if factored:
            cuda.kmeanspp_steps_factored(
                dtype, *pool.pointers(), n, pool.C, pool.dh, *state, t0, t1, dev, stream
            )
        else:
            cuda.kmeanspp_steps(dtype, xptr, n, d, *state, t0, t1, dev, stream)
        if progress:
            cuda.synchronize(dev, stream)
    # The draws' totals: non-finite only when a distance overflowed float32.
    sampled = _interop.host_numpy(totals)[1 if first_given else 0 :]
    if not np.isfinite(sampled).all():
        raise _overflow(name)
    if int(_interop.host_numpy(picks).min()) < 0:  # k <= n - len(lab) is the caller's check
        raise RuntimeError(
            f"k-means++ ran out of rows to pick: k = {k}, n = {n}, labeled = {lab.size}"
        )
    del rows, labeled
    return from_torch(picks, out_info) if factored else picks
