"""One torch thread for small CPU work.

Tiny matrix products and small-network training steps gain nothing from a second intra-op thread,
and on a busy machine waking it costs more than the work: on the shared 2-core development machine
a 10 × 20 × 4 product took 5 ms with two threads and 8 µs with one, and a 128-wide MLP step was
ten times slower. The previous setting is restored afterwards.

Where torch links GNU OpenMP and MKL (the x86-64 Linux wheels), the limit is the calling thread's
own: its OpenMP thread count (``omp_set_num_threads`` sets the calling thread's) and MKL's
thread-local count, in any thread. ``torch.set_num_threads`` would also change a process-wide
default that every thread takes at its first torch operation: a thread whose first operation fell
inside the block kept one thread for good, and worker threads lowering and restoring it could save
one another's lowered value. Elsewhere only the main thread lowers it, with
``torch.set_num_threads``, and blocks in other threads run unchanged.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def one_thread_if_small(device: Any, work: float = 0.0, below: float = math.inf) -> Iterator[None]:
    """Run the block with one torch thread when ``device`` is the CPU and ``work < below``: in
    the calling thread only where :func:`_thread_local_limits` finds the runtimes' calls, else
    only when this is the main thread."""
    import torch

    if getattr(device, "type", "cpu") != "cpu" or work >= below:
        yield
        return
    limits = _thread_local_limits()
    if limits is not None:
        omp_set, omp_get, mkl_local = limits
        torch.get_num_threads()  # this thread's first torch call sets its count: before ours
        before = omp_get()
        omp_set(1)
        # MKL's Fortran call (by reference; the C-named symbol torch exports crashed): it returns
        # the previous thread-local count, 0 for MKL's global one
        mkl_before = mkl_local(ctypes.byref(ctypes.c_int(1)))
        try:
            yield
        finally:
            mkl_local(ctypes.byref(ctypes.c_int(mkl_before)))
            omp_set(before)
        return
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def _thread_local_limits() -> tuple[Any, Any, Any] | None:
    """(``omp_set_num_threads``, ``omp_get_max_threads``, ``mkl_set_num_threads_local_``) as torch's
    CPU library resolves them (its GNU OpenMP runtime, its MKL), or None where one is missing
    (macOS, ARM, other builds). ``FASTAL_THREAD_LIMIT=global`` forces None (the main-thread
    ``torch.set_num_threads`` of other platforms); ``local`` or unset: whatever is found."""
    forced = os.environ.get("FASTAL_THREAD_LIMIT", "").strip().lower()
    if forced not in ("", "local", "global"):
        raise ValueError(f"FASTAL_THREAD_LIMIT must be 'local', 'global' or unset, got {forced!r}")
    if forced == "global":
        return None
    from ._blas import torch_cpu_libraries

    for lib in torch_cpu_libraries():
        calls = [getattr(lib, name, None) for name in _LIMIT_CALLS]
        if all(c is not None for c in calls):
            for c in calls:
                c.restype = ctypes.c_int
            calls[0].restype = None
            calls[0].argtypes = [ctypes.c_int]
            calls[1].argtypes = []
            calls[2].argtypes = [ctypes.POINTER(ctypes.c_int)]
            return calls[0], calls[1], calls[2]
    return None


_LIMIT_CALLS = ("omp_set_num_threads", "omp_get_max_threads", "mkl_set_num_threads_local_")
