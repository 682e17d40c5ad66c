"""The budget estimate of a truncated peer (:mod:`benchmarks._extrapolate`)."""

from __future__ import annotations

import pytest

from ._extrapolate import extrapolate, widen


def test_a_run_whose_picks_dominate_is_extrapolated_linearly():
    est = extrapolate(10.0, 1.0, 10, 100)  # 1 s set-up, 9 picks of 1 s after the first
    assert est == {"per_pick_s": 1.0, "budget_s": pytest.approx(100.0), "lower_bound": False}
    assert extrapolate(3.0, None, 30, 30) == {
        "per_pick_s": 0.1, "budget_s": 3.0, "lower_bound": False
    }  # fmt: skip


@pytest.mark.parametrize("setup_s", [9.0, 12.0, 15.0, 17.0, 18.0])
def test_a_run_whose_picks_are_within_the_noise_is_a_lower_bound(setup_s):
    """5 of 1000 picks beside a 17.5 s run: set-ups of 12–17 s gave 1386 s down to 142 s."""
    est = extrapolate(17.5, setup_s, 5, 1000)
    assert est == {"per_pick_s": None, "budget_s": 17.5, "lower_bound": True}


def test_widen_times_more_picks_until_they_dominate():
    setup, per_pick = 6.0, 0.05  # a set-up of 120 picks' worth
    calls = []

    def run_steps(k):
        calls.append(k)
        return setup + per_pick * (k - 1)

    seconds, steps = widen(run_steps, run_steps(5), setup, 5, 1000)
    assert calls[-1] == steps > 120
    assert extrapolate(seconds, setup, steps, 1000)["budget_s"] == pytest.approx(setup + 999 * 0.05)
    assert widen(run_steps, 20.0, 1.0, 10, 1000) == (20.0, 10)  # already linear: untouched
    assert widen(run_steps, 7.0, 6.9, 5, 8)[1] == 8  # at most the budget


def test_the_pick_share_boundary():
    assert extrapolate(17.5, 8.0, 5, 1000)["lower_bound"] is False  # picks 54 % of the run
    assert extrapolate(10.0, 5.0, 5, 101) == {
        "per_pick_s": 1.25,
        "budget_s": 130.0,
        "lower_bound": False,
    }  # exactly half: linear
    assert extrapolate(5.0, 1.0, 1, 100) == {
        "per_pick_s": None,
        "budget_s": 5.0,
        "lower_bound": True,
    }  # one pick: no per-pick time
    assert extrapolate(10.0, 1.0, 10, 5)["budget_s"] == 10.0  # never below the timed run


def test_widen_sizes_its_runs():
    setup, per_pick = 6.0, 0.05
    calls = []

    def run_steps(k):
        calls.append(k)
        return setup + per_pick * (k - 1)

    assert widen(run_steps, run_steps(5), setup, 5, 1000)[1] == 240  # twice the set-up's worth
    calls.clear()
    assert widen(run_steps, run_steps(5), setup, 5, 1000, max_seconds=10.0) == (10.0, 81)
    assert calls == [5, 80, 81]  # capped near max_seconds, and no rerun of the same size
    # no per-pick time seen (noise): four times as many picks, up to four times
    assert widen(lambda k: 6.0, 5.0, 6.0, 5, 1000) == (6.0, 1000)  # 20, 80, 320, then the budget
