"""The IHT top-b step for CUDA arrays (torch or cupy).

With the CUDA module, ``fastal._cuda.iht_threshold`` (csrc/cuda/topb.cu: a radix select on the
device that also counts NaN / Inf in its first pass, one synchronisation at the end) runs on the
framework's current stream and writes outputs allocated in the caller's framework. A build without
that kernel falls back to torch on the array's device. Either way the scores are formed in float64
exactly as on the CPU (the paper's ``0.5 * (neg * neg) - alpha * (sigma * sigma)`` or the exact
rule's ``-(0.5 * (pos * pos)) - alpha * (sigma * sigma)``, with float32 inputs widened first, no
fused multiply-adds) and the support is ordered by (score, index), so every backend selects the
same indices in the same order.
"""

from __future__ import annotations

from typing import Any

from . import _ext, _interop
from ._interop import ArrayInfo
from ._torch_arrays import as_torch, from_torch

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
    cuda = _ext.cuda
    if cuda is None or not hasattr(cuda, "iht_threshold"):
        return _iht_threshold_torch(s, sigma, b, alpha, info, exact)
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


def _iht_threshold_torch(
    s: Any, sigma: Any, b: int, alpha: float, info: ArrayInfo, exact: bool = False
) -> tuple[Any, Any]:
    """Fallback for a build without the kernel: float64 scores and a stable sort, in torch."""
    import torch

    st = as_torch(s, info)
    gt = as_torch(sigma, info)
    for t, name in ((st, "s"), (gt, "sigma")):
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            raise _nonfinite_error(name, int(bad.sum()), int(bad.nonzero()[0, 0]))
    s64, g64 = st.to(torch.float64), gt.to(torch.float64)
    if exact:
        pos = s64.clamp_min(0)
        score = torch.where(s64 > 0, -(0.5 * (pos * pos)) - alpha * (g64 * g64), 0.0)
    else:
        neg = (-s64).clamp_min(0)
        score = 0.5 * (neg * neg) - alpha * (g64 * g64)
    support = torch.sort(score, stable=True).indices[:b]
    w = torch.zeros_like(st)
    w[support] = st[support].clamp_min(0)
    return from_torch(support, info), from_torch(w, info)
