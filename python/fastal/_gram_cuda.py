"""``gram_min_eig`` for CUDA arrays (torch or cupy), float32 or float64.

The kernel is ``fastal._cuda.gram_min_eig`` (csrc/cuda/gram_eig.cu): the shared part of the Gram
matrices once per call, then, for matrices of order up to 18 and thousands of groups, one thread
per group forms its matrix, reduces it to tridiagonal form (Householder) and locates λ_max and
λ⁺_min as the CPU kernel does (Laguerre's iteration checked by Sturm counts;
csrc/common/gram_small.h); larger matrices get one thread block each and Sturm-count
multisection. A third path, one warp per matrix for orders up to 32 (csrc/cuda/gram_warp.cu), is
taken only when forced (``warp_max``) until it has been timed on a GPU. Float64 throughout, the
same definition and threshold rule as the CPU kernel. It runs on the framework's current stream;
the outputs are allocated in the caller's framework on Z's device.

Z stays on the device: one pass there (``fastal._cuda.gram_scan``) finds NaN / Inf rows (the same
``ValueError`` as the CPU path) and the peak magnitude for the exact power-of-two rescaling of
extreme inputs (gram.py's rule, applied on the device), and checks int64 device groups that gram.py
left unchecked (range, overlap with ``labeled``, duplicates: csrc/common/group_check.h), all in one
synchronisation; groups that fail are checked again on the host for gram.py's message. Other
indices come checked from gram.py and are copied over. A ``fastal._cuda`` without the kernel (a
build older than it) raises ``RuntimeError`` saying how to rebuild: there is no slower fallback.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from . import _ext, _interop
from ._interop import ArrayInfo
from .gram import (
    _BIG,
    _SMALL,
    StoredRows,
    _check_groups_host,
    _rescale_factor,
    _unscale,
    _used_rows_peak,
)

# The default of gram_min_eig_cuda's warp_max (benchmarks set it to time the one-warp path through
# fastal.gram_min_eig): -1 leaves the choice of path to the kernel.
WARP_MAX = -1


def _ptr(a: Any) -> int:
    return int(a.data_ptr()) if hasattr(a, "data_ptr") else int(a.data.ptr)


def gram_min_eig_cuda(
    Z: Any,
    info: ArrayInfo,
    labeled: np.ndarray,
    groups: np.ndarray,
    rtol: float,
    return_all: bool,
    *,
    smem_limit: int = -1,
    small_max: int = -1,
    warp_max: int | None = None,
    checked: bool = True,
    method: str = "tridiagonal",
) -> Any:
    """The CUDA branch of :func:`fastal.gram_min_eig` after its validation.

    ``labeled`` (int64, 1-D) is the host array gram.py has checked, ``groups`` (int64,
    (n_groups, G)) a checked host array or the caller's device array, which ``checked=False``
    says to check here; ``rtol`` is resolved. ``method`` is ``"tridiagonal"`` (the CUDA kernel)
    or ``"lowrank"`` (_gram_lowrank_torch.py, on the same device, after the same checks).
    ``smem_limit`` (bytes, tests only) caps the shared memory the block path may use for each
    matrix, forcing its global-memory paths; -1 is the device's limit.
    ``small_max`` (tests and benchmarks) is the largest order given one thread per matrix
    whatever the number of groups (at most 32; 0 sends every order to the block path); -1 lets
    the kernel choose by order and number of groups. ``warp_max`` (likewise; None: the module's
    ``WARP_MAX``) is the largest order given one warp per matrix (csrc/cuda/gram_warp.cu) among
    those ``small_max`` leaves; either one >= 0 makes the choice forced.
    """
    cuda = _ext.require_cuda("Z")
    if not hasattr(cuda, "gram_min_eig"):
        raise RuntimeError(
            "Z is on a CUDA device, but this build of fastal._cuda predates the gram_min_eig "
            "kernel. " + _ext.REBUILD_HINT
        )
    n, D = info.shape
    n_groups, G = groups.shape
    size = min(labeled.size + G, D)
    zkeep, zptr = _interop.cuda_pointer(Z, info)
    device, stream = int(info.device_index), _interop.cuda_stream(info)
    mL = int(labeled.size)
    # labeled for the kernel, then sorted for the group check: one copy to the device
    lab_dev = (
        _interop.to_framework(np.concatenate([labeled, np.sort(labeled)]), info) if mL else None
    )
    lab_ptr = 0 if lab_dev is None else _ptr(lab_dev)
    if isinstance(groups, np.ndarray):
        grp_dev = _interop.to_framework(np.ascontiguousarray(groups, dtype=np.int64), info)
    else:  # int64, C-contiguous, on Z's device and in its framework (gram.py)
        grp_dev = groups
    check = 0 if checked else n_groups
    peak, count, first, bad_groups, _ = cuda.gram_scan(
        info.dtype, zptr, n, D, device, stream, _ptr(grp_dev), check, G,
        lab_ptr + 8 * mL if mL else 0, mL,
    )  # fmt: skip
    if bad_groups:  # gram.py's message, from a host copy
        _check_groups_host(_interop.host_numpy(groups), n, labeled)
        raise RuntimeError("the device check of groups failed where the host check passes")
    if count:
        raise ValueError(f"Z contains NaN or Inf in {count} row(s), first in row {first}")
    # exact power-of-two rescaling for extreme magnitudes (λ scales by the square), as on the CPU:
    # the peak of the rows read sets it (a host copy of those rows, on this rare path only)
    scale = 1.0
    if peak > _BIG or 0.0 < peak < _SMALL:
        grp_host = _interop.host_numpy(groups) if not isinstance(groups, np.ndarray) else groups
        rows = np.unique(np.concatenate([labeled, np.asarray(grp_host).reshape(-1)]))
        used = _interop.host_numpy(zkeep[_interop.to_framework(rows, info)])
        peak = _used_rows_peak(StoredRows(used), np.arange(rows.size), np.empty((0, 1), np.int64))
    if peak > _BIG or 0.0 < peak < _SMALL:
        scale = _rescale_factor(peak)
        # only the rows read, rescaled (exact: float64 only, no float32 has such a peak) into a
        # (rows, D) copy as on the CPU, not all of Z; the indices then point into that copy
        zkeep = zkeep[_interop.to_framework(rows, info)] * scale
        zptr, n = _ptr(zkeep), int(rows.size)
        labeled = np.searchsorted(rows, labeled)
        grp_dev = _interop.to_framework(np.searchsorted(rows, np.asarray(grp_host)), info)
        if mL:
            lab_dev = _interop.to_framework(np.concatenate([labeled, np.sort(labeled)]), info)
            lab_ptr = _ptr(lab_dev)
    if method == "lowrank":
        import torch

        from ._gram_lowrank_torch import gram_min_eig_lowrank_torch
        from ._torch_arrays import as_torch, from_torch

        # torch works on the caller's stream: its current one, or cupy's current one
        on_stream = (
            torch.cuda.stream(torch.cuda.ExternalStream(stream, device=device))
            if info.framework == "cupy"
            else contextlib.nullcontext()
        )
        with on_stream:
            mins = gram_min_eig_lowrank_torch(
                as_torch(zkeep, info), labeled, as_torch(grp_dev, info), rtol
            )
            if scale != 1.0:
                mins = _unscale(mins, scale, peak)
        del zkeep, lab_dev, grp_dev
        return from_torch(mins, info)
    mins = _interop.empty(info, (n_groups,), "float64")
    spectra = _interop.empty(info, (n_groups, size), "float64") if return_all else None
    cuda.gram_min_eig(
        info.dtype,
        zptr,
        n,
        D,
        lab_ptr,
        mL,
        _ptr(grp_dev),
        n_groups,
        G,
        float(rtol),
        _ptr(mins),
        0 if spectra is None else _ptr(spectra),
        device,
        stream,
        int(smem_limit),
        int(small_max),
        int(WARP_MAX if warp_max is None else warp_max),
    )
    # the inputs' memory returns to the framework's stream-ordered pool: safe after the launch
    del zkeep, lab_dev, grp_dev
    if scale != 1.0:
        mins = _unscale(mins, scale, peak)
        spectra = None if spectra is None else _unscale(spectra, scale, peak, spectra=True)
    if return_all:
        return mins, spectra
    return mins
