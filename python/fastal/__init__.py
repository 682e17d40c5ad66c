"""fastal: fast batch active-learning selectors.

C++ (OpenMP) and CUDA kernels behind a thin Python layer that accepts numpy arrays, torch tensors
(CPU and CUDA) and cupy arrays and returns indices to label in the caller's framework.
"""

from __future__ import annotations

from ._ext import cuda_available
from .gradients import GradientEmbedding, gradient_embedding
from .gram import gram_min_eig
from .kmeans import KMeansResult, kmeans, kmeans_pp
from .ntk import ntk_features, ntk_features_jacobian
from .ops import KCenterResult, kcenter, kcenter_greedy, min_distance
from .robust_kcenter import RobustKCenterResult, robust_kcenter
from .sparse import fit_temperature, iht_threshold

__version__ = "0.1.0"

__all__ = [
    "GradientEmbedding",
    "KCenterResult",
    "KMeansResult",
    "RobustKCenterResult",
    "__version__",
    "cuda_available",
    "fit_temperature",
    "gradient_embedding",
    "gram_min_eig",
    "iht_threshold",
    "kcenter",
    "kcenter_greedy",
    "kmeans",
    "kmeans_pp",
    "min_distance",
    "ntk_features",
    "ntk_features_jacobian",
    "robust_kcenter",
]


def __getattr__(name: str):
    """``fastal.torch`` (model adapter), ``fastal.loop``, ``fastal.demo``, ``fastal.pdcl``,
    ``fastal.ally`` and ``fastal.bilevel`` load on first use: they use torch, which
    ``import fastal`` does not import; ``fastal.strategies`` too, as ``import fastal`` does not
    need it."""
    if name in ("strategies", "torch", "loop", "demo", "pdcl", "ally", "bilevel"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
