"""The compiled modules: ``_cpu`` always, ``_cuda`` when fastal was built with CUDA."""

from __future__ import annotations

import os
import sys

from ._isa import check_native_isa

check_native_isa()  # before any of the CPU module's code runs

from . import _cpu as cpu  # noqa: E402, F401 -- re-exported: the other modules read _ext.cpu

try:
    from . import _cuda as cuda
except ImportError:  # built without a CUDA compiler, or the CUDA runtime cannot load
    cuda = None


def _one_torch_thread_in_forked_child() -> None:
    # torch's CPU ops in a child forked after torch used its OpenMP threads wait forever for them
    # (GNU OpenMP; fastal's k-means runs torch ops). Where fastal's kernels share torch's libgomp
    # its fork handler has set this already (cpu/fork_guard.cpp); a clang build's libomp does not.
    # torch is not imported here: the CLI's torch-free strategies start without it
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_one_torch_thread_in_forked_child)

REBUILD_HINT = (
    "fastal was built without its CUDA module. Rebuild it where nvcc is on PATH, forcing CUDA: "
    "FASTAL_CUDA=ON pip install --no-build-isolation --force-reinstall ."
)


def cuda_available() -> bool:
    """True when the CUDA module was built and at least one CUDA device is visible.

    Returns
    -------
    bool
        False when fastal was built without CUDA or the CUDA module sees no device; CUDA inputs
        (torch or cupy arrays on a GPU) then raise ``RuntimeError``, CPU inputs work either way.

    Examples
    --------
    >>> import fastal
    >>> isinstance(fastal.cuda_available(), bool)
    True
    """
    return cuda is not None and cuda.device_count() > 0


def require_cuda(name: str):
    """The CUDA module, or a clear error for a CUDA input ``name``."""
    if cuda is None:
        raise RuntimeError(f"{name} is on a CUDA device. {REBUILD_HINT}")
    return cuda
