"""The strategy protocol and the registry of strategies by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

#: How a strategy's pool takes logits instead of probabilities (for error messages).
LOGITS_KEY = "pass them under the pool key 'logits'"


class Selection(NamedTuple):
    """What a strategy returns: indices to label (pick order) and a diagnostics dict.

    A NamedTuple: ``indices, diagnostics = strategy.select(...)`` unpacks it.

    Attributes
    ----------
    indices : (budget,) int64 array
        Unique rows to label, in pick order (ascending for strategies that pick a set), in the
        framework and on the device of the pool (numpy for a pool given as a size).
    diagnostics : dict
        Strategy-specific values (each strategy's docstring lists them), e.g. ``"scores"`` of
        every row for the score strategies, ``"n_candidates"`` for :class:`Random`.

    Examples
    --------
    >>> from fastal.strategies import Random
    >>> indices, diagnostics = Random().select(10, 3, labeled=[0, 1], seed=0)
    >>> indices.tolist(), diagnostics
    ([6, 9, 7], {'n_candidates': 8})
    """

    indices: Any
    diagnostics: dict


class Strategy:
    """Base of every selector: ``select(pool, budget, labeled, *, seed) -> Selection``.

    ``requires`` names what the strategy reads from a pool (``"features"``, ``"probs"``, ...), so
    a model adapter computes only that.

    Attributes
    ----------
    name : str
        The registry name (:func:`get`); ``""`` on the base class.
    requires : tuple of str
        Pool keys the strategy reads, e.g. ``("probs",)``; ``()`` for :class:`Random`.
    min_labeled : int
        The fewest labeled rows ``select`` works from (0 on the base class; 2 for :class:`ALLY`,
        whose dual head trains with batch norm); :func:`fastal.loop.run` checks ``initial``
        against it before any training.

    Examples
    --------
    A strategy needs a ``name``, ``requires`` and ``select``; :func:`register` makes it
    reachable by name.

    >>> import numpy as np
    >>> from fastal.strategies import Selection, Strategy
    >>> class First(Strategy):
    ...     name = "first"
    ...     requires = ("features",)
    ...     def select(self, pool, budget, labeled=None, *, seed=None):
    ...         taken = [] if labeled is None else labeled
    ...         rest = np.setdiff1d(np.arange(len(pool["features"])), taken)
    ...         return Selection(rest[:budget], {})
    >>> First().select({"features": np.zeros((4, 2))}, 2, labeled=[0]).indices.tolist()
    [1, 2]
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    min_labeled: ClassVar[int] = 0

    def select(self, pool: Any, budget: int, labeled: Any = None, *, seed: Any = None) -> Selection:
        """Pick ``budget`` rows of ``pool`` outside ``labeled``.

        Parameters
        ----------
        pool : mapping, array or GradientEmbedding
            What the strategy ``requires`` (a mapping of those keys, e.g. ``"features"`` (n, d)
            and ``"probs"`` (n, C)); see each strategy's docstring for the forms it takes.
        budget : int
            How many rows to pick, in ``[0, n - len(labeled)]``.
        labeled : 1-D integer indices, optional
            Rows already labeled: never picked (unique, in ``[0, n)``).
        seed : None, int >= 0 or numpy Generator
            For the strategy's random draws (every strategy takes it, drawing or not).

        Returns
        -------
        Selection
            ``(indices, diagnostics)``: ``budget`` unique indices in pick order (or ascending,
            for strategies that pick a set), int64 in the pool's framework and device (numpy for a
            pool given as a size, ``{"n": n}``), and a dict of diagnostics.
        """
        raise NotImplementedError

    def validate_budget(self, budget: int) -> None:
        """Refuse a budget this strategy can never take, whatever the pool (called before an
        expensive pool pass or training); the range against the pool is checked by ``select``.

        The base class accepts every budget; strategies with a limit of their own (``CRC``)
        override it.

        Parameters
        ----------
        budget : int
            The budget a later ``select`` will get.

        Raises
        ------
        ValueError
            In subclasses, for a budget the strategy can never take.
        """

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


def pool_field(pool: Any, *keys: str) -> Any:
    """The first of ``keys`` present in a mapping pool; a bare array counts as ``"features"``."""
    if isinstance(pool, Mapping):
        for key in keys:
            if key in pool:
                return pool[key]
        raise ValueError(
            f"pool needs one of {', '.join(map(repr, keys))}; it has {', '.join(map(repr, pool))}"
        )
    if "features" in keys:
        return pool
    raise TypeError(
        f"pool must be a mapping with {' or '.join(map(repr, keys))}, got {type(pool).__name__}"
    )


def gradient_pool(pool: Any, *, bias: bool = False) -> Any:
    """A GradientEmbedding: the pool itself, or built from a mapping with probs/logits and features.

    Labels are hypothetical (argmax of the probabilities).
    """
    from ..gradients import GradientEmbedding, _gradient_embedding

    if isinstance(pool, GradientEmbedding):
        if bias:  # the factors are given: a flag here could not change them
            raise ValueError(
                "bias=True builds the bias gradient from probs and features; a GradientEmbedding "
                "pool is used as given: build it with fastal.gradient_embedding(..., bias=True)"
            )
        return pool
    if not isinstance(pool, Mapping):
        raise TypeError(
            "pool must be a GradientEmbedding or a mapping with 'probs' (or 'logits') and "
            f"'features', got {type(pool).__name__}"
        )
    features = pool_field(pool, "features")
    key = "probs" if "probs" in pool else "logits"
    pool_field(pool, "probs", "logits")  # neither: a message naming both
    return _gradient_embedding(
        pool_field(pool, key), features, bias=bias, kind=key, name=key, logits_hint=LOGITS_KEY
    )


def unlabeled_rows(n: int, labeled: Any, like: Any = None) -> tuple[Any, Any]:
    """(labeled indices, the other rows in ascending order), both int64 numpy."""
    import numpy as np

    from .._validate import check_indices

    lab = check_indices(labeled, n, "labeled", like=like)
    mask = np.ones(n, dtype=bool)
    mask[lab] = False
    return lab, np.flatnonzero(mask)


_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` available as ``get(cls.name)``.

    Parameters
    ----------
    cls : type
        A :class:`Strategy` subclass with a non-empty ``name``.

    Returns
    -------
    type
        ``cls`` itself (so it works as a decorator). Registering the same class twice is a no-op.

    Raises
    ------
    ValueError
        If ``cls.name`` is empty or already registered for another class.

    Examples
    --------
    >>> from fastal.strategies import Random, Strategy, get, register
    >>> register(Random) is Random is get("random")  # already registered: a no-op
    True
    >>> register(Strategy)
    Traceback (most recent call last):
    ...
    ValueError: Strategy needs a non-empty `name` to be registered
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a strategy named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[Strategy]:
    """The strategy class registered as ``name``.

    Parameters
    ----------
    name : str
        A registered name (see :func:`available`), e.g. ``"coreset"``; another spelling of it
        or of the class's name (case, ``_``, ``-`` and spaces ignored: ``"BADGE"``,
        ``"LeastConfidence"``) when it names one strategy.

    Returns
    -------
    type
        The :class:`Strategy` subclass (not an instance).

    Raises
    ------
    TypeError
        If ``name`` is not a str.
    ValueError
        If no strategy is registered as ``name`` (the message lists the names).

    Examples
    --------
    >>> from fastal.strategies import get
    >>> get("margin").__name__, get("margin").requires
    ('Margin', ('probs',))
    >>> get("LeastConfidence") is get("least-confidence") is get("least_confidence")
    True
    """
    if not isinstance(name, str):
        raise TypeError(f"a strategy name must be a str, got {type(name).__name__}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    # "BADGE", "least-confidence", "LeastConfidence": the name or class name in another spelling
    matches = {cls for cls in _REGISTRY.values()
               if _spelling(name) in (_spelling(cls.name), _spelling(cls.__name__))}  # fmt: skip
    if len(matches) == 1:
        return matches.pop()
    raise ValueError(f"unknown strategy {name!r}; available: {', '.join(available())}")


def _spelling(name: str) -> str:
    """``name`` with case, ``_``, ``-`` and spaces ignored."""
    return "".join(c for c in name.lower() if c not in "_- ")


def available() -> list[str]:
    """Names of the registered strategies, sorted.

    Returns
    -------
    list of str
        The names :func:`get` accepts: the built-in strategies and any registered since.

    Examples
    --------
    >>> from fastal.strategies import available
    >>> "coreset" in available(), "random" in available()
    (True, True)
    """
    return sorted(_REGISTRY)
