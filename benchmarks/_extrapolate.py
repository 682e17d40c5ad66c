"""Time for a whole budget from a peer timed over fewer picks (k-center, BADGE, k-means++).

A slow peer runs ``steps < budget`` picks; a one-pick run next to it gives its set-up. Its
per-pick time is the difference over ``steps - 1`` picks, and the budget's time the set-up plus
``budget - 1`` such picks: each pick of these peers is one pass over the same matrix, so linear.

That difference is multiplied by ``(budget - 1) / (steps - 1)`` (about 250 for 5 of 1000 picks):
where the picks took under half of the timed run beside the set-up, the noise of either run on a
shared machine would be most of the estimate (it gave 13 s for 1000 picks beside 31 s for 100).
:func:`widen` then times more picks; where they still take under half (the budget or the time
cap reached first), the result is the timed run itself, a lower bound (more picks never take
less), flagged ``lower_bound``; reports print it as "≥".
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: the least share of the timed run its picks must take for a linear estimate
MIN_PICK_SHARE = 0.5


def seconds_of(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn`` (which synchronises a device itself)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed(run: Callable[[int], object]) -> Callable[[int], float]:
    """``run(k)`` (a run over ``k`` picks) as ``k -> its seconds``, what :func:`widen` calls."""
    return lambda k: seconds_of(lambda: run(k))


def time_setup(fn: Callable[[], object]) -> float:
    """Seconds of a one-pick run: the best of two where it is cheap (< 2 s), else one."""
    best = seconds_of(fn)
    return min(best, seconds_of(fn)) if best < 2.0 else best


def _picks_dominate(seconds: float, setup_s: float) -> bool:
    """Whether a run's picks took at least :data:`MIN_PICK_SHARE` of it beside the set-up."""
    return seconds - setup_s >= MIN_PICK_SHARE * seconds


def extrapolate(seconds: float, setup_s: float | None, steps: int, budget: int) -> dict:
    """``budget_s`` for ``budget`` picks from a run of ``steps`` picks taking ``seconds`` and a
    one-pick run taking ``setup_s`` (None: the run was the whole budget); ``per_pick_s`` (None for
    a lower bound) and ``lower_bound`` (see the module docstring)."""
    if setup_s is None:
        return {"per_pick_s": seconds / steps, "budget_s": seconds, "lower_bound": False}
    if steps < 2 or not _picks_dominate(seconds, setup_s):
        return {"per_pick_s": None, "budget_s": seconds, "lower_bound": True}
    per_pick = (seconds - setup_s) / (steps - 1)
    return {
        "per_pick_s": per_pick,
        "budget_s": max(seconds, setup_s + per_pick * (budget - 1)),
        "lower_bound": False,
    }


def widen(
    run_steps: Callable[[int], float],
    seconds: float,
    setup_s: float | None,
    steps: int,
    budget: int,
    max_seconds: float = 600.0,
) -> tuple[float, int]:
    """``(seconds, steps)`` of a run over enough picks for a linear estimate.

    Where a truncated run's picks took under :data:`MIN_PICK_SHARE` of it, ``run_steps(k)`` (the
    seconds of one run over ``k`` picks) is called again with more picks: about twice the
    set-up's worth at the per-pick time seen so far (at least four times as many), at most the
    budget and about ``max_seconds``; up to four times.
    """
    for _ in range(4):
        if setup_s is None or steps >= budget or _picks_dominate(seconds, setup_s):
            break
        per_pick = max(seconds - setup_s, 0.0) / max(steps - 1, 1)
        want = 4 * steps
        if per_pick > 0:
            want = max(want, int(1 + 2 * setup_s / per_pick))
            want = min(want, int(1 + max(max_seconds - setup_s, 0.0) / per_pick))
        want = min(budget, want)
        if want <= steps:
            break
        seconds, steps = run_steps(want), want
    return seconds, steps
