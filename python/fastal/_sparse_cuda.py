"""The IHT top-b step for CUDA arrays (torch or cupy).

``fastal._cuda.iht_threshold`` (csrc/cuda/topb.cu: a radix select on the device that also counts
NaN / Inf in its first pass, one synchronisation at the end) runs on the framework's current
stream and writes outputs allocated in the caller's framework (a build without the CUDA module
refuses CUDA arrays before, in :func:`fastal.sparse.iht_threshold`). The scores are formed in
float64 exactly as on the CPU (the paper's ``0.5 * (neg * neg) - alpha * (sigma * sigma)`` or the
exact rule's ``-(0.5 * (pos * pos)) - alpha * (sigma * sigma)``, with float32 inputs widened
first, no fused multiply-adds) and the support is ordered by (score, index), so every backend
selects the same indices in the same order.
"""

from __future__ import annotations

from typing import Any

from . import _ext, _interop
from ._interop import ArrayInfo

# The kernel's implementation (tests and benchmarks): 0 the launch sequence (csrc/cuda/topb.cu),
# 1 one cooperative kernel and a sort (topb_fused.cu), -1 the kernel's default.
TOPB_IMPL = -1


def _nonfinite_error(name: str, count: int, first: int) -> ValueError:
    return ValueError(f"{name} contains NaN or Inf at {count} position(s), first at {first}")


def _ptr(a: Any) -> int:
    return int(a.data_ptr()) if hasattr(a, "data_ptr") else int(a.data.ptr)


def iht_threshold_cuda(
    s: Any, sigma: Any, b: int, alpha: float, info: ArrayInfo, exact: bool = False
) -> tuple[Any, Any]:
    cuda = _ext.require_cuda("s")  # (the caller's device_scope has checked it)
    n = info.shape[0]
    skeep, sptr = _interop.cuda_pointer(s, info)
    gkeep, gptr = _interop.cuda_pointer(sigma, info)
    device, stream = int(info.device_index), _interop.cuda_stream(info)
    support = _interop.empty(info, (b,), "int64")
    w = _interop.empty(info, (n,), "float32")
    # the kernel counts NaN / Inf on its first pass and returns them after its one synchronisation
    bad_s, first_s, bad_sigma, first_sigma = cuda.iht_threshold(
        sptr, gptr, n, b, float(alpha), _ptr(support), _ptr(w), device, stream, exact=exact,
        impl=TOPB_IMPL,
    )  # fmt: skip
    del skeep, gkeep
    if bad_s:
        raise _nonfinite_error("s", bad_s, first_s)
    if bad_sigma:
        raise _nonfinite_error("sigma", bad_sigma, first_sigma)
    return support, w
