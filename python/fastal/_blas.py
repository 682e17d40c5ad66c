"""Which BLAS GEMM the fused CPU Lloyd steps of k-means call, and their one-thread limit.

The fused and bounded Lloyd steps (:mod:`fastal._lloyd_fused`) call a Fortran ``sgemm`` /
``dgemm`` by address, per chunk of rows, from fastal's OpenMP threads: the MKL that torch links or
scipy's OpenBLAS, chosen once per process by a fixed rule (:func:`_gemm_backend`) and checked on a
small product (:func:`_gemm_works`), with OpenBLAS held to one thread while k-means runs
(:func:`_one_blas_thread`). Apart from k-means because it is about the platform (the CPU's vendor,
the libraries torch and scipy ship), not the algorithm.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np


@functools.cache
def _gemm_backend(dtype: str) -> tuple[int, int]:
    """(address of a Fortran LP64 ``sgemm`` / ``dgemm``, address of MKL's Fortran
    ``mkl_set_num_threads_local_`` or 0) for the fused Lloyd step.

    :func:`_mkl_gemm` where torch links MKL, except on AMD CPUs with AVX-512, where MKL runs its
    AVX2 code and scipy's OpenBLAS (:func:`_openblas_gemm`) does not: on a Zen 5 core OpenBLAS made
    the step 3-12 % faster and a k-means iteration at d = 512 up to 1.3x faster, while on a Zen 1
    core MKL led. A fixed rule rather than a timing, so that the choice, and with it k-means'
    rounding, is the same in every run on one machine. ``FASTAL_GEMM=mkl|openblas`` forces one.
    """
    forced = os.environ.get("FASTAL_GEMM", "").strip().lower()
    if forced not in ("", "mkl", "openblas"):
        raise ValueError(f"FASTAL_GEMM must be 'mkl', 'openblas' or unset, got {forced!r}")
    if forced == "mkl" or (not forced and not _amd_with_avx512()):
        mkl = _mkl_gemm(dtype)
        if mkl[0] or forced == "mkl":
            return mkl
    return _openblas_gemm(dtype), 0


_BLAS_LOCK = threading.Lock()
_blas_users = 0  # k-means calls inside _one_blas_thread, all threads
_blas_limiter: Any = None


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """OpenBLAS limited to one thread (it runs inside fastal's OpenMP threads) from the first of
    overlapping k-means calls to the last. threadpoolctl's limit is process-wide: were each call to
    set and restore its own, one call's restore would hand the others' GEMMs back to OpenBLAS's
    thread pool inside an OpenMP region, or leave numpy's BLAS at one thread for good. While a
    call runs, numpy / scipy BLAS in other threads runs on one thread too."""
    global _blas_users, _blas_limiter
    from threadpoolctl import threadpool_limits

    with _BLAS_LOCK:
        if _blas_users == 0:
            _release_openblas_control()
            _blas_limiter = threadpool_limits(limits=1, user_api="blas")
            _release_openblas_control()
        _blas_users += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _blas_users -= 1
            if _blas_users == 0:  # perhaps in another thread than the one that set the limit
                _release_openblas_control()
                _blas_limiter.restore_original_limits()
                _release_openblas_control()
                _blas_limiter = None


def _release_openblas_control() -> None:
    """Let the next thread set OpenBLAS's limit. threadpoolctl >= 3.8 hands a pthreads OpenBLAS
    to the first thread that sets its limit and silently ignores every other thread's, until that
    thread clears it (its ``with`` blocks do, ``restore_original_limits`` does not): after one
    k-means in the main thread, a k-means in a worker thread ran OpenBLAS's own thread pool inside
    fastal's OpenMP threads, and a restore from another thread left numpy at one thread."""
    import threadpoolctl

    controller = getattr(threadpoolctl, "OpenBLASController", None)
    clear = getattr(controller, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


def _amd_with_avx512() -> bool:
    """Whether /proc/cpuinfo (Linux) names an AMD CPU with AVX-512F; False where it cannot tell."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            first_cpu = f.read(1 << 16).split("\n\n", 1)[0]
    except OSError:
        return False
    fields = {}
    for line in first_cpu.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = fields.get("flags", "").split()
    return fields.get("vendor_id") == "AuthenticAMD" and "avx512f" in flags


def _mkl_gemm(dtype: str) -> tuple[int, int]:
    """The MKL that torch links, when its CPU library exports the Fortran GEMM and
    ``mkl_set_num_threads_local_`` (x86-64 wheels; a small product checks the GEMM): each of
    fastal's threads sets its own MKL thread count to 1 around its calls. (0, 0) otherwise."""
    name = "sgemm_" if dtype == "float32" else "dgemm_"
    for lib in torch_cpu_libraries():
        gemm = getattr(lib, name, None)
        local = getattr(lib, "mkl_set_num_threads_local_", None)
        if gemm is not None and local is not None and _gemm_works(gemm, dtype):
            address = ctypes.cast(gemm, ctypes.c_void_p).value
            return int(address), int(ctypes.cast(local, ctypes.c_void_p).value)
    return 0, 0


def torch_cpu_libraries() -> Iterator[ctypes.CDLL]:
    """torch's CPU library (``libtorch_cpu``) as ctypes handles, through which the OpenMP runtime
    and the MKL it links resolve; none where it cannot be opened."""
    import torch

    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    for path in sorted(glob.glob(os.path.join(libdir, "*torch_cpu*"))):
        try:
            yield ctypes.CDLL(path)  # already loaded by torch: the same handle
        except OSError:  # pragma: no cover
            continue


def _openblas_gemm(dtype: str) -> int:
    """scipy's BLAS GEMM through ``scipy.linalg.cython_blas`` (a public C API), or 0. The caller
    limits its threads to one with threadpoolctl."""
    try:
        from scipy.linalg import cython_blas
    except ImportError:  # pragma: no cover - scipy is a dependency
        return 0
    capsule = cython_blas.__pyx_capi__.get("sgemm" if dtype == "float32" else "dgemm")
    if capsule is None:  # pragma: no cover
        return 0
    # Private prototypes: setting restype on ctypes.pythonapi's shared attributes would change
    # them for every other user of ctypes in the process.
    api = ctypes.pythonapi
    get_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(("PyCapsule_GetName", api))
    get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
        ("PyCapsule_GetPointer", api)
    )
    return int(get_pointer(capsule, get_name(capsule)) or 0)


def _gemm_works(fn: Any, dtype: str) -> bool:
    """A column-major 2 x 2 = (2 x 3)(3 x 2) product through ``fn`` equals numpy's."""
    scalar = ctypes.c_float if dtype == "float32" else ctypes.c_double
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.integers(-3, 4, (2, 3)).astype(dtype))
    b = np.asfortranarray(rng.integers(-3, 4, (3, 2)).astype(dtype))
    c = np.zeros((2, 2), dtype=dtype, order="F")
    two, three = ctypes.c_int(2), ctypes.c_int(3)
    ptr, ref = ctypes.c_void_p, ctypes.byref
    fn(b"N", b"N", ref(two), ref(two), ref(three), ref(scalar(1)), ptr(a.ctypes.data), ref(two),
       ptr(b.ctypes.data), ref(three), ref(scalar(0)), ptr(c.ctypes.data), ref(two))  # fmt: skip
    return bool(np.array_equal(c, a @ b))
