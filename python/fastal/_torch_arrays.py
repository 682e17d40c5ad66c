"""Torch views of the caller's arrays and the row-chunked checks every module runs on them.

fastal computes in torch whatever the caller's framework: numpy arrays cross zero-copy through
:func:`numpy_view`, cupy arrays through DLPack, and results go back with :func:`from_torch`. The
elementwise passes over a pool (finiteness, norms) run in row chunks of about ``_CHUNK_VALUES``
values, so their temporaries stay small for a pool of millions of rows, whatever its width.
"""

from __future__ import annotations

import itertools
import math
import threading
import warnings
from typing import Any

import numpy as np

from . import _interop
from ._interop import ArrayInfo

#: values per row chunk of the elementwise passes (8 MiB widened to float64): their temporaries
#: are a few chunks, whatever the width (32768-row chunks were 1.1 GB of ``isfinite``
#: temporaries at d = 4096)
_CHUNK_VALUES = 1 << 20


# fastal only reads through its torch views of the caller's numpy arrays, yet torch warns about
# every read-only one (a memory-mapped pool, a frozen array); those warnings are fastal's to drop
warnings.filterwarnings(
    "ignore", message="The given NumPy array is not writable", category=UserWarning,
    module=r"fastal\b",
)  # fmt: skip


_READ_ONLY_LOCK = threading.Lock()


def numpy_view(arr: np.ndarray) -> Any:
    """``torch.from_numpy(arr)``; for a read-only array (a memory-mapped pool, a frozen array),
    which fastal only reads, without torch's warning: the filter above does not hold where a
    filter set after it comes first (``warnings.simplefilter("error")`` raised it, once per
    process)."""
    torch = import_torch()
    if arr.flags.writeable:
        return torch.from_numpy(arr)
    # catch_warnings swaps the process's filters: one such block at a time
    with _READ_ONLY_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def row_chunks(n: int, width: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive row chunks covering ``range(n)``, each of about
    ``_CHUNK_VALUES`` values of rows ``width`` wide and at least one row. A one-row last chunk
    joins the one before (unless n is 1): torch's CPU sum of a single row of tens of thousands of
    values splits it between threads, so its bits could differ from the same row's in a larger
    chunk."""
    rows = max(1, _CHUNK_VALUES // max(int(width), 1))
    bounds = [*range(0, n, rows), n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2:
        del bounds[-2]
    return list(itertools.pairwise(bounds))


def import_torch():
    import torch

    return torch


def as_torch(x: Any, info: ArrayInfo):
    """A torch view of a numpy / torch / cupy array (zero-copy where the framework allows)."""
    torch = import_torch()
    if info.framework == "torch":
        return x.detach()
    if info.framework == "numpy":
        return numpy_view(np.ascontiguousarray(_interop.native_order(x)))
    import cupy

    with cupy.cuda.Device(info.device_index):
        # torch aborts the process on negative DLPack strides (cp.flip, X[::-1]): copy first
        return torch.from_dlpack(cupy.ascontiguousarray(x))


def from_torch(t: Any, like: ArrayInfo) -> Any:
    """A torch result back in the framework of ``like`` (same device)."""
    if like.framework == "torch":
        return t
    if like.framework == "numpy":
        return t.numpy()
    import cupy

    return cupy.from_dlpack(t)


def acc_dtype(dtype: str):
    torch = import_torch()
    return torch.float64 if dtype == "float64" else torch.float32


def torch_row_norms_if_finite(t: Any) -> Any:
    """Row norms of a floating (n, k) tensor in float64, or None when an entry is NaN or ±Inf.

    One reduction in t's own dtype (a float64 reduction of float32 data is ~20× slower in torch):
    a NaN or ±Inf makes its row's norm non-finite. Only rows whose norm is not finite are checked
    element by element, since a float32 norm of finite entries above ~1e19 overflows. Rows whose
    norm overflowed, or is so small that squares of their entries underflow (below
    ``sqrt(tiny / eps)`` of t's dtype: a float32 row of entries near 1e-23 had norm 0), are
    recomputed in float64 divided by the row's largest magnitude, exact to float64's rounding
    at any scale.
    """
    torch = import_torch()
    norms = torch.linalg.vector_norm(t, dim=1).to(torch.float64)
    over = ~torch.isfinite(norms)
    if bool(over.any()) and not bool(torch_isfinite_rows(t[over]).all()):
        return None
    info = torch.finfo(t.dtype)
    redo = over | (norms < math.sqrt(info.tiny / info.eps))
    if bool(redo.any()):
        norms[redo] = _scaled_row_norms(t[redo].to(torch.float64))
    return norms


def _scaled_row_norms(rows: Any) -> Any:
    """float64 norms of float64 rows, each divided by its largest magnitude first (an all-zero
    row: norm 0), so that no square overflows or underflows."""
    torch = import_torch()
    big = rows.abs().amax(1, keepdim=True)
    scale = torch.where(big > 0, big, torch.ones_like(big))
    return torch.linalg.vector_norm(rows / scale, dim=1) * scale.squeeze(1)


def torch_isfinite_rows(t: Any) -> Any:
    """Boolean (n,) tensor: row holds only finite values (in chunks of ``_CHUNK_VALUES``)."""
    torch = import_torch()
    out = torch.empty(t.shape[0], dtype=torch.bool, device=t.device)
    # on the CPU numpy's isfinite is one pass; torch's is four (==, abs, !=, &): ~10x slower
    host = t.device.type == "cpu" and t.dtype in (torch.float16, torch.float32, torch.float64)
    for s, e in row_chunks(t.shape[0], t.shape[1]):
        if host:
            out[s:e] = torch.from_numpy(np.isfinite(t[s:e].detach().resolve_neg().numpy()).all(1))
        else:
            out[s:e] = torch.isfinite(t[s:e]).all(1)
    return out


def torch_logit_rows_ok(t: Any) -> Any:
    """Boolean (n,) tensor: a row of logits a softmax takes: no NaN or +Inf and a finite maximum
    (-inf is a masked class, probability 0, as :func:`fastal.torch.pool_outputs` passes it)."""
    torch = import_torch()
    out = torch.empty(t.shape[0], dtype=torch.bool, device=t.device)
    for s, e in row_chunks(t.shape[0], t.shape[1]):
        out[s:e] = torch.isfinite(t[s:e].amax(1))  # amax propagates NaN
    return out


#: What a refusal of logits adds: -inf is taken.
MASKED_LOGITS = "(-inf, a masked class, is taken where a row keeps a finite logit)"
