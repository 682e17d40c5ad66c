"""Selection strategies: ``get(name)`` for a class by name, ``available()`` for the names."""

from __future__ import annotations

from .ally import ALLY
from .badge import BADGE
from .base import Selection, Strategy, available, get, register
from .bilevel import BilevelCoreset
from .coreset import CoreSet, CoreSetGradients
from .crc import CRC
from .egl import EGL
from .kmeans_sampling import KMeansSampling
from .robust_kcenter import RobustKCenter
from .sparse_approx import SparseApprox
from .sparse_settings import PAPER_SETTINGS, PaperSetting
from .uncertainty import BALD, Entropy, LeastConfidence, Margin, Random

__all__ = [
    "ALLY",
    "BADGE",
    "BALD",
    "CRC",
    "EGL",
    "PAPER_SETTINGS",
    "BilevelCoreset",
    "CoreSet",
    "CoreSetGradients",
    "Entropy",
    "KMeansSampling",
    "LeastConfidence",
    "Margin",
    "PaperSetting",
    "Random",
    "RobustKCenter",
    "Selection",
    "SparseApprox",
    "Strategy",
    "available",
    "get",
    "register",
]
