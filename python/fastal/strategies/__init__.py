"""Selection strategies: ``get(name)`` for a class by name, ``available()`` for the names."""

from __future__ import annotations

from .badge import BADGE
from .base import Selection, Strategy, available, get, register
from .coreset import CoreSet
from .egl import EGL
from .kmeans_sampling import KMeansSampling
from .sparse_approx import SparseApprox

__all__ = [
    "BADGE",
    "EGL",
    "CoreSet",
    "KMeansSampling",
    "Selection",
    "SparseApprox",
    "Strategy",
    "available",
    "get",
    "register",
]
