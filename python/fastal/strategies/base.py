"""The strategy protocol and the registry of strategies by name."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple


class Selection(NamedTuple):
    """What a strategy returns: indices to label (pick order) and a diagnostics dict."""

    indices: Any
    diagnostics: dict


class Strategy:
    """Base of every selector: ``select(pool, budget, labeled, *, seed) -> Selection``.

    ``requires`` names what the strategy reads from a pool (``"features"``, ``"probs"``, ...), so
    a model adapter computes only that.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()

    def select(self, pool: Any, budget: int, labeled: Any = None, *, seed: Any = None) -> Selection:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` available as ``get(cls.name)``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a strategy named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[Strategy]:
    """The strategy class registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; available: {', '.join(available())}"
        ) from None


def available() -> list[str]:
    """Names of the registered strategies, sorted."""
    return sorted(_REGISTRY)
