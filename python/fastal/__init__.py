"""fastal: fast batch active-learning selectors.

C++ (OpenMP) and CUDA kernels behind a thin Python layer that accepts numpy arrays, torch tensors
(CPU and CUDA) and cupy arrays and returns indices to label in the caller's framework.
"""

from __future__ import annotations

from ._ext import cuda_available
from .gradients import GradientEmbedding, gradient_embedding
from .kmeans import KMeansResult, kmeans, kmeans_pp
from .ops import KCenterResult, kcenter, kcenter_greedy, min_distance
from .sparse import fit_temperature, iht_threshold

__version__ = "0.1.0"

__all__ = [
    "GradientEmbedding",
    "KCenterResult",
    "KMeansResult",
    "__version__",
    "cuda_available",
    "fit_temperature",
    "gradient_embedding",
    "iht_threshold",
    "kcenter",
    "kcenter_greedy",
    "kmeans",
    "kmeans_pp",
    "min_distance",
]
