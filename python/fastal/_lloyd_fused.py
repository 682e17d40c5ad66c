"""The fused CPU Lloyd step of k-means and its Yinyang-bounded variant.

One compiled pass per iteration assigns every row (a BLAS GEMM per chunk of rows, see
:mod:`fastal._blas`, then direct distances where the GEMM's rounding could decide) and returns the
labels, distances, float64 sums and counts (:func:`_fused_lloyd`); :class:`_BoundedLloyd` returns
the same labels, sums and counts without reading the rows whose nearest centre the bounds settle.
They serve CPU rows (float32, float64, float16, bfloat16) from ``_GEMM_MIN_K`` centres on;
:func:`fastal.kmeans._kmeans` chooses them, and :mod:`fastal._lloyd` holds the steps other inputs
take.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from . import _ext, _interop, _lloyd
from ._blas import _gemm_backend
from ._pool import ACC, torch_cpu_info

#: bytes of per-thread float64 sums the fused CPU Lloyd steps may keep before they add the rows
#: in a second pass instead (-1: the kernel's rule, lloyd::RowSums in csrc/cpu/lloyd_tile.h)
_PARTIAL_LIMIT = -1


def _fused_lloyd(info, k: int) -> Any:
    """The fused CPU Lloyd step for this input, or None (CUDA, small k, no BLAS). 16-bit rows are
    widened to float32 (``ACC``) in the kernel: the step is that of the float32 copy, bit for
    bit."""
    if info.device != "cpu" or info.dtype not in ACC or k < _lloyd._GEMM_MIN_K:
        return None
    gemm, threads_local = _gemm_backend(ACC[info.dtype])
    if not gemm:
        return None
    kernel = getattr(_ext.cpu, f"kmeans_lloyd_step_{info.dtype}")

    def step(xt: Any, xsq: Any, centres: Any) -> tuple:
        import torch

        x = _interop.host_storage(xt, torch_cpu_info(xt))
        c = np.ascontiguousarray(centres.numpy())
        labels, dist2, sums, counts = kernel(
            x, xsq.numpy(), c, gemm, threads_local, partial_limit=_PARTIAL_LIMIT
        )
        return (torch.from_numpy(a) for a in (labels, dist2, sums, counts))

    step.limit_blas = not threads_local  # scipy's OpenBLAS: limit its threads around the loop
    return step


#: Yinyang groups: about this many centres per group, at most _MAX_GROUPS groups
_GROUP_SIZE = 10
_MAX_GROUPS = 64
#: A bounded step (not the fresh one) that computes more than this share of the distances did
#: not pay for its bookkeeping: the next steps run plain (1, then 2, 4, ... of them after each
#: such step), then the bounds start afresh. Early iterations on unclustered data are like that.
_BOUNDS_GIVE_UP = 0.9


class _BoundedLloyd:
    """Lloyd iterations through the Yinyang-bounded kernel: the fused step's labels, sums and
    counts bit for bit, without reading the rows whose nearest centre the bounds settle.

    The bounds take 4 (1 + t) bytes per row, t groups of about ten centres (at most 64, and at
    most as many float32 values as a row of X holds, so they never outgrow X). The groups are a
    5-iteration k-means of the starting centres (Ding et al. 2015), seeded apart from the fit.
    """

    def __init__(self, info, centres: Any) -> None:
        from .kmeans import _kmeans  # (fastal.kmeans imports this module)

        k, d = centres.shape
        itemsize = 8 if info.dtype == "float64" else 4 if info.dtype == "float32" else 2
        self.t = max(1, min(k // _GROUP_SIZE, _MAX_GROUPS, d * itemsize // 4))
        # in float64: float32 centres far apart (an init row near 1e20) would overflow here and
        # refuse a fit that prune=False runs
        c64 = centres.numpy().astype(np.float64)
        groups = _kmeans(c64, self.t, seed=0, max_iter=5, prune=False).labels
        self.group = np.ascontiguousarray(groups, dtype=np.int32)
        n = info.shape[0]
        self.labels = np.zeros(n, dtype=np.int64)
        self.upper = np.empty(n, dtype=np.float32)
        self.glower = np.empty(n, dtype=np.float32)
        self.lower = np.empty((n, self.t), dtype=np.float32)
        self.offset = np.zeros(self.t)
        self.previous = None
        self.computed = 0  # distances computed, over all steps
        self.possible = 0  # rows x k per step, over all steps
        self.plain_left = 0  # plain steps to run before the bounds start afresh
        self.backoff = 1
        gemm, threads_local = _gemm_backend(ACC[info.dtype])
        kernel = getattr(_ext.cpu, f"kmeans_lloyd_bounded_step_{info.dtype}")
        self._call = functools.partial(
            kernel, gemm_address=gemm, threads_local_address=threads_local,
            partial_limit=_PARTIAL_LIMIT,
        )  # fmt: skip

    def step(self, xt: Any, xsq: Any, centres: Any) -> tuple:
        """(labels, sums, counts) of the rows for these centres, as the fused step's."""
        import torch

        c = np.ascontiguousarray(centres.numpy())
        fresh = self.previous is None
        if fresh:
            shift = np.zeros(c.shape[0])
        else:  # in numpy (one thread, k x d); pushed up past float64 rounding: bounds only loosen
            moved = c.astype(np.float64) - self.previous.astype(np.float64)
            shift = np.sqrt(np.einsum("ij,ij->i", moved, moved)) * (1 + 1e-9)
        x = _interop.host_storage(xt, torch_cpu_info(xt))
        sums, counts, computed = self._call(
            x, xsq.numpy(), c, shift, self.group, self.t, fresh, self.labels, self.upper,
            self.glower, self.lower, self.offset,
        )  # fmt: skip
        self.previous = c
        self.computed += computed
        self.possible += x.shape[0] * c.shape[0]
        if not fresh and computed > _BOUNDS_GIVE_UP * x.shape[0] * c.shape[0]:
            self.plain_left, self.backoff = self.backoff, 2 * self.backoff
        labels = torch.from_numpy(self.labels.copy())
        return labels, torch.from_numpy(sums), torch.from_numpy(counts)

    def use(self) -> bool:
        """Whether the next step goes through the bounds (else it is a plain fused step, and the
        bounds start afresh after the last of those)."""
        return self.plain_left == 0

    def plain_step(self, n: int, k: int) -> None:
        """Account for a plain step run in place of a bounded one."""
        self.plain_left -= 1
        self.previous = None  # the bounds missed this step's centre shifts: start afresh
        self.computed += n * k
        self.possible += n * k
