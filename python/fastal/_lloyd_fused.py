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

    def step(xt: Any, xsq: Any, centres: Any, margin: Any = None) -> tuple:
        import torch

        x = _interop.host_storage(xt, torch_cpu_info(xt))
        c = np.ascontiguousarray(centres.numpy())
        labels, dist2, sums, counts = kernel(
            x, xsq.numpy(), c, gemm, threads_local, partial_limit=_PARTIAL_LIMIT, margin=margin
        )
        return (torch.from_numpy(a) for a in (labels, dist2, sums, counts))

    step.limit_blas = not threads_local  # scipy's OpenBLAS: limit its threads around the loop
    return step


#: Yinyang groups: about this many centres per group, at most _MAX_GROUPS groups
_GROUP_SIZE = 10
_MAX_GROUPS = 64
#: A bounded step (not the fresh one) that computes more than this share of the distances did
#: not pay for its bookkeeping: the next steps run plain (1, then 2, 4, ... of them after each
#: such step). Early iterations on unclustered data are like that.
_BOUNDS_GIVE_UP = 0.9
#: After plain steps, the bounds start afresh only when the last one's margins (each row's
#: runner-up distance minus its nearest) exceed the centres' latest moves on this share of the
#: rows: a fresh bounded step costs up to ~1.5 plain ones (k = 100), and retrying on a schedule
#: alone (1, 2, 4, ... plain steps) made a 10-iteration fit on Gaussian noise ~1.4x slower than
#: a plain one (~1.2x now). A row's margin predicts Yinyang's global test only: the group tests
#: settle more, so this share is a low bar, but the bounded kernel's float32 slack is left out
#: (far from the origin the prediction can say go where the bounds then settle nothing).
_BOUNDS_START = 0.25


class _BoundedLloyd:
    """Lloyd iterations through the Yinyang-bounded kernel: the fused step's labels, sums and
    counts bit for bit, without reading the rows whose nearest centre the bounds settle.

    The state takes 4 (5 + t) bytes per row (4 more with float64 rows): float32 upper and lower
    bounds for t groups of about ten centres (at most 64, and at most as many float32 values as
    a row of X holds, so they never outgrow X), int64 labels and the plain steps' margins (and
    the last one's labels, kept alive). The groups are a 5-iteration k-means of the starting
    centres (Ding et al. 2015), seeded apart from the fit.
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
        self.plain_left = 0  # plain steps to run before the bounds may start afresh
        self.backoff = 1
        # the last plain step's margins, the centres and labels they were measured at
        acc = np.float64 if info.dtype == "float64" else np.float32
        self.margin = np.empty(n, dtype=acc)
        self.measured = None
        self.measured_labels = None
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
            # a plain step measures again before the bounds may restart (a give-up sets
            # plain_left >= 1): the old labels need not stay alive meanwhile
            self.measured = self.measured_labels = None
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

    def use(self, centres: Any) -> bool:
        """Whether the step at these centres goes through the bounds: at the first step, while
        they are live (the last step was bounded), and after plain steps (at least ``backoff``
        of them after a step that gave up) when the last one's margins say that fresh bounds
        would settle at least ``_BOUNDS_START`` of the rows after moves like the centres' latest
        ones (Yinyang's global test: margin > the shift of the row's centre + the largest)."""
        if self.plain_left > 0:
            return False
        if self.previous is not None or self.measured is None:
            return True
        moved = centres.numpy().astype(np.float64) - self.measured
        shift = np.sqrt(np.einsum("ij,ij->i", moved, moved))
        settled = self.margin > shift[self.measured_labels] + shift.max()
        return float(settled.mean()) >= _BOUNDS_START

    def plain_step(self, centres: Any, labels: Any) -> None:
        """Account for a plain step at these centres that wrote ``self.margin``."""
        self.plain_left = max(self.plain_left - 1, 0)
        self.previous = None  # the bounds missed this step's centre shifts: start afresh
        self.measured = centres.numpy().astype(np.float64)
        self.measured_labels = labels.numpy()
        n, k = self.margin.shape[0], centres.shape[0]
        self.computed += n * k
        self.possible += n * k
