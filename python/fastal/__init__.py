"""fastal: fast batch active-learning selectors.

C++ (OpenMP) and CUDA kernels behind a thin Python layer that accepts numpy arrays, torch tensors
(CPU and CUDA) and cupy arrays and returns indices to label in the caller's framework.
"""

from __future__ import annotations

from ._ext import cuda_available
from .ops import KCenterResult, kcenter, kcenter_greedy, min_distance

__version__ = "0.1.0"

__all__ = [
    "KCenterResult",
    "__version__",
    "cuda_available",
    "kcenter",
    "kcenter_greedy",
    "min_distance",
]
