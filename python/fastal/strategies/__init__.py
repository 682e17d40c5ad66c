"""Selection strategies: ``get(name)`` for a class by name, ``available()`` for the names."""

from __future__ import annotations

from .base import Selection, Strategy, available, get, register
from .coreset import CoreSet

__all__ = ["CoreSet", "Selection", "Strategy", "available", "get", "register"]
