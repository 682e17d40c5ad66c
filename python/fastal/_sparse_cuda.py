"""The IHT top-b step for CUDA arrays (torch or cupy), in torch on the array's device.

Scores are formed in float64 exactly as on the CPU (``0.5 * (neg * neg) - alpha * (sigma * sigma)``
with float32 inputs widened first), then a stable sort orders them by (score, index).
"""

from __future__ import annotations

from typing import Any

from ._interop import ArrayInfo
from .gradients import as_torch, from_torch


def iht_threshold_cuda(s: Any, sigma: Any, b: int, alpha: float, info: ArrayInfo) -> tuple[Any, Any]:
    import torch

    st = as_torch(s, info)
    gt = as_torch(sigma, info)
    for t, name in ((st, "s"), (gt, "sigma")):
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            raise ValueError(f"{name} contains NaN or Inf at {int(bad.sum())} position(s), first at {int(bad.nonzero()[0, 0])}")
    s64, g64 = st.to(torch.float64), gt.to(torch.float64)
    neg = (-s64).clamp_min(0)
    score = 0.5 * (neg * neg) - alpha * (g64 * g64)
    support = torch.sort(score, stable=True).indices[:b]
    w = torch.zeros_like(st)
    w[support] = st[support].clamp_min(0)
    return from_torch(support, info), from_torch(w, info)
