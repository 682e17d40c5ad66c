"""Robust k-center (Sener & Savarese 2018, §4.3, eq. 6, Alg. 2): exact optimum on tiny pools
against a brute force over every centre set, certificates on random pools, frameworks, input
errors, and the strategy through the registry and the torch adapter."""

from __future__ import annotations

import doctest
import importlib
import itertools

import numpy as np
import pytest
from conftest import (
    assert_indices_like,
    backend_dtype_params,
    backend_of,
    gaussian,
    indices_to_backend,
    mixture,
    small_integers,
    to_backend,
    to_numpy,
)
from numpy.testing import assert_array_equal

import fastal
from fastal._covering_mip import _Problem
from fastal.robust_kcenter import RobustKCenterResult, robust_kcenter
from fastal.strategies import base
from fastal.strategies import robust_kcenter as strategy_module
from fastal.strategies.robust_kcenter import RobustKCenter

# the module (``fastal.robust_kcenter`` the attribute is the function of the same name)
rk_module = importlib.import_module("fastal.robust_kcenter")

# ---------------------------------------------------------------------------------------------
# brute force


def pairwise(X: np.ndarray) -> np.ndarray:
    diff = X[:, None, :] - X[None, :, :]
    return np.sqrt(np.sum(diff * diff, axis=2))


def robust_radius_ref(D: np.ndarray, centres, xi: int) -> float:
    """Radius of ``centres`` with ``xi`` outliers: the (xi + 1)-th largest distance of a
    non-centre point to its nearest centre (centres, labeled ones included, are at 0)."""
    centres = list(centres)
    rest = np.setdiff1d(np.arange(D.shape[0]), centres)
    if rest.size <= xi:
        return 0.0
    near = np.sort(D[np.ix_(rest, centres)].min(axis=1))[::-1]
    return float(near[xi])


def brute_force(X: np.ndarray, budget: int, labeled, xi: int) -> float:
    """The optimal radius over every set of ``budget`` new centres outside ``labeled``."""
    D = pairwise(X)
    lab = [] if labeled is None else list(labeled)
    free = [i for i in range(X.shape[0]) if i not in lab]
    return min(
        robust_radius_ref(D, lab + list(new), xi) for new in itertools.combinations(free, budget)
    )


def check_certificate(X, res: RobustKCenterResult, budget: int, labeled, xi: int) -> None:
    """Exactly ``budget`` distinct new centres outside ``labeled``; every non-outlier within δ of a
    centre; at most Ξ outliers, all farther than δ; never worse than greedy."""
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    picks, out = to_numpy(res.indices), to_numpy(res.outliers)
    lab = np.empty(0, np.int64) if labeled is None else np.asarray(labeled)
    assert picks.shape == (budget,)
    assert np.unique(picks).size == budget
    assert_array_equal(picks, np.sort(picks))  # documented: ascending
    assert not np.isin(picks, lab).any()
    assert out.size <= xi
    assert not np.isin(out, lab).any()
    centres = np.concatenate([lab, picks])
    if centres.size == 0:
        return
    near = pairwise(X)[:, centres].min(axis=1)
    covered = np.setdiff1d(np.arange(n), out)
    assert (near[covered] <= res.radius * (1 + 1e-12) + 1e-12).all()
    assert (near[out] > res.radius).all()
    assert res.radius <= res.diagnostics["greedy_robust_radius"] <= res.greedy_radius
    assert res.diagnostics["outlier_budget"] == xi


# ---------------------------------------------------------------------------------------------
# (a) exact optimum on tiny pools

TINY = [
    # (n, d, budget, labeled, data)
    (6, 1, 1, None, "gauss"),
    (7, 2, 2, None, "gauss"),
    (8, 2, 3, None, "gauss"),
    (9, 3, 2, [4], "gauss"),
    (9, 2, 3, [0, 5], "gauss"),
    (8, 2, 2, [1, 2, 7], "ints"),
    (9, 2, 3, None, "ints"),
    (9, 1, 1, [3], "ints"),
    (7, 3, 3, [6], "mixture"),
    (9, 4, 2, None, "mixture"),
]


def tiny_data(n, d, kind, seed):
    if kind == "ints":
        return small_integers(n, d, seed=seed, high=2)  # many ties and duplicate rows
    if kind == "mixture":
        return mixture(n, d, 3, seed=seed, spread=1.0)
    return gaussian(n, d, seed=seed, duplicates=False)


@pytest.mark.parametrize("xi", [0, 1, 2])
@pytest.mark.parametrize(("n", "d", "budget", "labeled", "kind"), TINY)
@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_pools_match_brute_force(n, d, budget, labeled, kind, xi, seed):
    X = tiny_data(n, d, kind, seed + 10 * n + d)
    res = robust_kcenter(X, budget, labeled, outliers=xi, seed=seed)
    assert res.radius == pytest.approx(brute_force(X, budget, labeled, xi), rel=1e-12, abs=1e-12)
    assert res.optimal
    check_certificate(X, res, budget, labeled, xi)


def test_outliers_may_put_the_optimum_below_half_the_greedy_radius():
    """Two far outliers, one centre: greedy spends it on an outlier (δ₂OPT = 100); with Ξ = 2 the
    optimum is 1, far below δ₂OPT / 2 = 50, outside the paper's bisection range."""
    X = np.array([[0.0], [1.0], [2.0], [100.0], [-100.0]])
    res = robust_kcenter(X, 1, outliers=2, seed=0)
    assert res.greedy_radius >= 98
    assert res.radius == 1.0
    assert_array_equal(res.indices, [1])
    assert_array_equal(res.outliers, [3, 4])
    assert res.radius == brute_force(X, 1, None, 2)


def test_paper_example_from_the_docstring():
    X = np.array([[0.0], [0.5], [10.0], [11.0], [12.0], [50.0]])
    res = robust_kcenter(X, 1, labeled=[0], outliers=1)
    assert (res.indices.tolist(), res.radius, res.outliers.tolist()) == ([3], 1.0, [5])
    assert res.greedy_radius == 12.0
    # without the outlier the one centre has to cover 50 as well
    res0 = robust_kcenter(X, 1, labeled=[0], outliers=0)
    assert res0.radius == brute_force(X, 1, [0], 0)


# ---------------------------------------------------------------------------------------------
# (b) certificates on random pools


@pytest.mark.parametrize(
    ("n", "d", "budget", "n_labeled", "xi"),
    [
        (60, 2, 4, 0, 0),
        (80, 3, 5, 3, 2),
        (150, 8, 6, 10, 0),
        (160, 8, 6, 5, 3),
        (240, 4, 10, 0, 1),
    ],
)
def test_certificate_on_random_pools(n, d, budget, n_labeled, xi):
    X = mixture(n, d, 6, seed=n + d)
    labeled = None
    if n_labeled:
        labeled = np.sort(np.random.default_rng(n).choice(n, n_labeled, replace=False))
    res = robust_kcenter(X, budget, labeled, outliers=xi, seed=1)
    check_certificate(X, res, budget, labeled, xi)
    assert res.optimal
    diag = res.diagnostics
    assert diag["mip_solves"] == sum(p["mips"] for p in diag["path"])
    # the bisection only ever looked inside [lower bound, greedy radius]
    for step in diag["path"]:
        assert diag["lower_bound"] <= step["delta"] <= diag["greedy_robust_radius"]
    # the greedy's radius is the radius of fastal.kcenter's picks, in float64
    greedy = fastal.kcenter(X, budget, labeled=labeled, seed=1)
    assert res.greedy_radius == pytest.approx(greedy.diagnostics["final_radius"], rel=1e-12)


def test_fraction_of_outliers_counts_unlabeled_points():
    X = mixture(120, 3, 4, seed=3)
    res = robust_kcenter(X, 3, labeled=list(range(20)), outliers=0.05)
    assert res.diagnostics["outlier_budget"] == 5  # floor(0.05 * 100)
    check_certificate(X, res, 3, list(range(20)), 5)
    # the paper's default, 1e-4, is no outlier at all below 10 000 points
    assert robust_kcenter(X, 3).diagnostics["outlier_budget"] == 0


def test_candidates_restrict_the_new_centres():
    X = mixture(200, 4, 5, seed=4)
    labeled = [0, 1]
    candidates = np.arange(0, 200, 3)  # includes the labeled 0: ignored
    res = robust_kcenter(X, 5, labeled, candidates=candidates, outliers=1)
    picks = to_numpy(res.indices)
    assert np.isin(picks, candidates).all()
    check_certificate(X, res, 5, labeled, 1)
    assert res.diagnostics["n_eligible"] == candidates.size - 1
    # all points as candidates can only do better
    assert robust_kcenter(X, 5, labeled, outliers=1).radius <= res.radius


def test_candidates_match_brute_force_on_a_tiny_pool():
    X = gaussian(9, 2, seed=5, duplicates=False)
    cand = [1, 2, 4, 6, 8]
    res = robust_kcenter(X, 2, [0], candidates=cand, outliers=1)
    D = pairwise(X)
    best = min(robust_radius_ref(D, [0, *c], 1) for c in itertools.combinations(cand, 2))
    assert res.radius == pytest.approx(best, rel=1e-12)


def restricted_greedy_radius(X, budget, candidates, first):
    D = pairwise(np.asarray(X, dtype=np.float64))
    mind = np.full(X.shape[0], np.inf)
    taken: list[int] = []
    for t in range(budget):
        far = first if t == 0 else int(np.argmax(mind))
        c = min((j for j in candidates if j not in taken), key=lambda j: (D[far, j], j))
        taken.append(c)
        mind = np.minimum(mind, D[:, c])
    return float(mind.max())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_restricted_greedy_starts_at_the_seeded_first_centre(seed):
    X = np.array([[0.0], [1.0], [2.0], [4.0], [7.0], [11.0], [16.0], [22.0]])
    candidates = [1, 3, 5, 6]
    first = int(np.asarray(fastal.kcenter(X, 1, seed=seed).indices)[0])
    res = robust_kcenter(X, 1, candidates=candidates, outliers=0, seed=seed)
    assert res.greedy_radius == restricted_greedy_radius(X, 1, candidates, first)


def test_the_seed_moves_the_restricted_greedy():
    X = np.array([[0.0], [1.0], [2.0], [4.0], [7.0], [11.0], [16.0], [22.0]])
    radii = {robust_kcenter(X, 1, candidates=[1, 3, 5, 6], outliers=0, seed=s).greedy_radius
             for s in range(8)}  # fmt: skip
    assert len(radii) > 1  # the first centre is drawn, not row 0 every time


def test_restricted_greedy_never_reuses_a_candidate():
    """Row 4 (at 12) is the farthest twice and candidate 1 (at 10) its nearest both times: the
    second centre must be the nearest *other* candidate. The greedy is the answer here (radius 2
    is optimal), so a reused candidate would come back as a duplicate pick."""
    X = np.array([[0.0], [10.0], [0.1], [11.0], [12.0]])
    res = robust_kcenter(X, 2, [0], candidates=[1, 2], outliers=0)
    assert res.indices.tolist() == [1, 2]
    assert res.radius == res.greedy_radius == 2.0


def brute_force_candidates(X, budget, labeled, candidates, xi):
    D = pairwise(np.asarray(X, dtype=np.float64))
    elig = [c for c in candidates if c not in labeled]
    sets = itertools.combinations(elig, budget)
    return min(robust_radius_ref(D, [*labeled, *c], xi) for c in sets)


def test_a_far_non_candidate_is_the_outlier():
    # 50 has no candidate near it: with Ξ = 1 it is the outlier and the centre serves 10..12
    X = np.array([[0.0], [10.0], [11.0], [12.0], [50.0], [0.5]])
    res = robust_kcenter(X, 1, [0], candidates=[1, 2, 3], outliers=1)
    assert res.radius == 1.0
    assert res.indices.tolist() == [2]
    assert res.outliers.tolist() == [4]


@pytest.mark.parametrize("xi", [1, 2])
@pytest.mark.parametrize("seed", range(6))
def test_candidates_with_outliers_match_brute_force(seed, xi):
    X = gaussian(10, 2, seed=40 + seed, duplicates=False)
    cand = [1, 3, 4, 7, 8]
    res = robust_kcenter(X, 2, [0], candidates=cand, outliers=xi, seed=seed)
    assert res.radius == pytest.approx(brute_force_candidates(X, 2, [0], cand, xi), rel=1e-12)
    assert res.optimal
    check_certificate(X, res, 2, [0], xi)


def test_candidates_let_a_larger_pool_fit_the_limit():
    X = mixture(400, 3, 5, seed=6)
    with pytest.raises(ValueError, match="max_points"):
        robust_kcenter(X, 3, max_points=100)
    res = robust_kcenter(X, 3, candidates=np.arange(20), max_points=100)  # 400 * 20 <= 100²
    check_certificate(X, res, 3, None, 0)


def test_budget_zero_and_everything_picked():
    X = gaussian(12, 2, seed=7)
    res = robust_kcenter(X, 0, [3, 5], outliers=1)
    assert_indices_like(res.indices, X, 0)
    lab_near = pairwise(X)[:, [3, 5]].min(axis=1)
    assert res.radius == np.sort(lab_near)[-2]
    assert res.diagnostics["mip_solves"] == 0
    res = robust_kcenter(X, 0)
    assert res.radius == np.inf
    res = robust_kcenter(X, 10, [3, 5])
    assert res.radius == 0.0
    assert_array_equal(res.indices, np.setdiff1d(np.arange(12), [3, 5]))


def test_duplicate_rows_and_fewer_centres_than_budget():
    """Three distinct points, duplicated: the MIP needs 2 centres, the budget is 4; the other
    picks are filled farthest-first and the radius is 0."""
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 7.0]]), 3, axis=0)
    res = robust_kcenter(X, 4, labeled=[0])
    check_certificate(X, res, 4, [0], 0)
    assert res.radius == 0.0


def problem(X, labeled):
    X = np.ascontiguousarray(X, dtype=np.float64)
    lab = np.asarray(labeled, dtype=np.int64)
    unl = np.setdiff1d(np.arange(X.shape[0]), lab)
    return _Problem.build(X, unl, unl, lab), unl


def test_complete_adds_the_farthest_eligible_points():
    X = np.array([[0.0], [1.0], [3.0], [9.0], [10.0], [30.0]])
    p, unl = problem(X, [0])
    cols = p.complete(np.empty(0, np.int64), 2)
    assert_array_equal(unl[cols], [4, 5])  # 30 first, then 10 (10 from {0, 30}; 9 is 9)
    cols = p.complete(p.columns(np.array([5])), 3)
    assert_array_equal(unl[cols], [2, 4, 5])  # given 30: 10, then 3 (3 from {0, 10, 30})


def test_complete_breaks_ties_to_the_lowest_index():
    X = np.array([[0.0], [-4.0], [4.0], [1.0]])
    p, unl = problem(X, [0])
    assert_array_equal(unl[p.complete(np.empty(0, np.int64), 1)], [1])  # -4 and 4 tie: row 1


def test_time_limit_returns_a_certified_solution():
    X = mixture(400, 8, 10, seed=8)
    res = robust_kcenter(X, 12, outliers=2, time_limit=1e-9)
    check_certificate(X, res, 12, None, 2)
    assert not res.optimal
    assert res.diagnostics["undecided"]
    assert "time_limit" in res.diagnostics["path"][-1]["outcome"]


def test_time_limit_counts_the_reductions_and_starts_no_solve_past_it(monkeypatch):
    """The deadline covers fastal's own reductions: once they have spent it, HiGHS is not called
    (it used to get the time left as measured before them). Solves under a limit run without
    HiGHS's presolve, which overran a 2 s limit by 20 s on dense covering MIPs."""
    import time

    import scipy.optimize

    mip = importlib.import_module("fastal._covering_mip")  # where _Problem looks _reduce up
    reduce, milp = mip._reduce, scipy.optimize.milp
    options = []

    def slow_reduce(A, *, outliers):
        time.sleep(0.3)
        return reduce(A, outliers=outliers)

    def recording_milp(*args, **kwargs):
        options.append(kwargs["options"])
        return milp(*args, **kwargs)

    monkeypatch.setattr(scipy.optimize, "milp", recording_milp)
    X = np.random.default_rng(0).normal(size=(200, 4))
    free = robust_kcenter(X, 8, outliers=0, seed=0)  # no limit: presolve on
    assert options
    assert all(o["presolve"] for o in options)
    assert free.optimal

    options.clear()
    limited = robust_kcenter(X, 8, outliers=0, seed=0, time_limit=60.0)
    assert options
    assert all(not o["presolve"] and 0 < o["time_limit"] <= 60 for o in options)
    assert limited.radius == free.radius

    options.clear()
    monkeypatch.setattr(mip, "_reduce", slow_reduce)
    res = robust_kcenter(X, 8, outliers=0, seed=0, time_limit=0.2)
    assert options == []
    check_certificate(X, res, 8, None, 0)
    assert not res.optimal
    assert res.diagnostics["path"][0]["outcome"] == "undecided: time_limit spent"


def test_max_points_is_inclusive():
    X = np.arange(12, dtype=np.float64)[:, None]
    res = robust_kcenter(X, 2, labeled=[0, 11], outliers=0, max_points=10)  # 10 x 10 pairs
    check_certificate(X, res, 2, [0, 11], 0)
    with pytest.raises(ValueError, match="too large for robust_kcenter"):
        robust_kcenter(X, 2, labeled=[0], outliers=0, max_points=10)  # 11 x 11 pairs
    assert rk_module.check_size(10, 10, 10, False) is None


def test_a_solution_that_violates_delta_is_undecided(monkeypatch):
    mip = importlib.import_module("fastal._covering_mip")
    feasible = mip._Problem.feasible
    calls = []

    def sloppy(self, delta, budget, xi, deadline):
        calls.append(delta)
        if len(calls) == 1:  # the first step "finds" centres that do not cover within δ
            return "feasible", np.zeros(budget, np.int64)[:1], {"mips": 1}
        return feasible(self, delta, budget, xi, deadline)

    monkeypatch.setattr(mip._Problem, "feasible", sloppy)
    X = mixture(60, 2, 4, seed=3)
    res = robust_kcenter(X, 4, outliers=0, seed=0)
    first = res.diagnostics["path"][0]
    assert first["outcome"].startswith("undecided: solution violates δ")
    assert first["found_radius"] > first["delta"]
    assert not res.optimal
    assert res.diagnostics["undecided"][0] == first["delta"]
    check_certificate(X, res, 4, None, 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bisection_drops_to_the_found_radius(seed):
    X = mixture(150, 3, 6, seed=seed)
    res = robust_kcenter(X, 6, outliers=1, seed=0)
    best = np.inf
    for step in res.diagnostics["path"]:
        assert step["delta"] < best  # radii at or above one already reached are not tested
        if step["found_radius"] is not None and step["outcome"].startswith("feasible"):
            best = min(best, step["found_radius"])
    check_certificate(X, res, 6, None, 1)


def test_budget_zero_reports_the_greedy_radius_without_outliers():
    X = np.array([[0.0], [1.0], [2.0], [10.0]])
    res = robust_kcenter(X, 0, labeled=[0], outliers=1)
    assert res.radius == 2.0  # row 3 is the outlier
    assert res.greedy_radius == 10.0  # δ₂OPT: no outliers, as for budget >= 1


@pytest.mark.parametrize(("fraction", "count"), [
    (0.29, 29), (0.57, 57), (0.58, 58), (0.005, 0),
    (0.99999999999, 99),  # below 1: a point is left (the rounding above made it 100)
])  # fmt: skip
def test_fractional_outliers_are_not_lost_to_rounding(fraction, count):
    X = np.arange(101, dtype=np.float64)[:, None]
    res = robust_kcenter(X, 1, labeled=[0], outliers=fraction)  # 100 unlabeled points
    assert res.diagnostics["outlier_budget"] == count


# ---------------------------------------------------------------------------------------------
# (c) frameworks and dtypes


@pytest.mark.parametrize(("backend", "dtype"), backend_dtype_params())
def test_frameworks_and_dtypes_agree(backend, dtype):
    X = small_integers(80, 3, seed=9)  # exact in every dtype: the same problem everywhere
    ref = robust_kcenter(X, 4, [2, 7], outliers=1, seed=0)
    Xb = to_backend(X, backend, dtype)
    res = robust_kcenter(Xb, 4, indices_to_backend([2, 7], backend), outliers=1, seed=0)
    assert_indices_like(res.indices, Xb, 4)
    assert backend_of(res.outliers) == backend_of(Xb)
    assert_array_equal(to_numpy(res.indices), to_numpy(ref.indices))
    assert_array_equal(to_numpy(res.outliers), to_numpy(ref.outliers))
    assert res.radius == ref.radius


# ---------------------------------------------------------------------------------------------
# (d) bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"X": np.zeros(5)}, ValueError, r"X must be 2-D \(n, d\), got shape \(5,\)"),
        ({"X": np.zeros((5, 2), dtype=np.int64)}, TypeError, "X must have dtype"),
        ({"X": [[0.0, 1.0]]}, TypeError, "X must be a numpy array"),
        ({"budget": 9}, ValueError, r"budget = 9 is larger than the unlabeled pool \(8 points\)"),
        ({"budget": -1}, ValueError, "budget must be >= 0"),
        ({"budget": 1.5}, TypeError, "budget must be an integer"),
        ({"labeled": [1, 1]}, ValueError, "labeled has duplicate indices"),
        ({"labeled": [10]}, ValueError, r"labeled has indices out of range \[0, 10\)"),
        ({"outliers": -1}, ValueError, r"outliers must be a count in \[0, n\)"),
        ({"outliers": 10}, ValueError, r"outliers must be a count in \[0, n\)"),
        ({"outliers": 1.0}, ValueError, r"outliers as a float is a fraction in \[0, 1\)"),
        ({"outliers": -0.1}, ValueError, "outliers as a float"),
        ({"outliers": True}, TypeError, "outliers must be an int count or a float fraction"),
        ({"candidates": [0, 11]}, ValueError, "candidates has indices out of range"),
        ({"candidates": [0, 1], "budget": 2}, ValueError, "larger than the candidates outside"),
        ({"max_points": 7}, ValueError, r"too large.*max_points = 7.*fastal.kcenter.*candidates="),
        ({"max_points": 0}, ValueError, "max_points must be a positive integer"),
        ({"max_points": 2.5}, TypeError, "max_points must be a positive integer, got float"),
        ({"time_limit": 0}, ValueError, "time_limit must be > 0"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = {"X": gaussian(10, 2, seed=0), "budget": 2, "labeled": [0, 1]} | kwargs
    with pytest.raises(error, match=match):
        robust_kcenter(args.pop("X"), args.pop("budget"), args.pop("labeled"), **args)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"outliers": -3}, ValueError, "outliers must be a count >= 0, got -3"),
        ({"outliers": 1.5}, ValueError, r"outliers as a float is a fraction in \[0, 1\)"),
        ({"outliers": "1"}, TypeError, "outliers must be an int count or a float fraction"),
        ({"max_points": 0}, ValueError, "max_points must be a positive integer"),
        ({"max_points": 2.0}, TypeError, "max_points must be a positive integer, got float"),
        ({"time_limit": 0}, ValueError, "time_limit must be > 0"),
        ({"time_limit": "10"}, TypeError, "time_limit must be a real number"),
        ({"candidates": "abc"}, TypeError, "candidates must hold integer indices"),
        ({"candidates": [[1, 2]]}, ValueError, "candidates must be 1-D"),
        ({"candidates": [-1, 2]}, ValueError, "candidates has negative indices: e.g. -1"),
        ({"candidates": [0.5]}, TypeError, "candidates must hold integer indices, got dtype float"),
        ({"candidates": np.array([True, False])}, TypeError, "boolean mask"),
    ],
)
def test_strategy_options_are_checked_at_construction(kwargs, error, match):
    # before the first select, which a loop reaches only after a round of training
    with pytest.raises(error, match=match):
        RobustKCenter(**kwargs)


def test_the_size_refusal_says_how_many_candidates_fit():
    """It advised candidates= also where no candidate set can fit: 300k unlabeled points leave
    room for 13 candidates at max_points = 2000, fewer than a budget of 100 (a scale trial)."""
    X = gaussian(40, 2, seed=0)
    with pytest.raises(ValueError, match=r"pass candidates= \(a subset of at most 3 rows"):
        robust_kcenter(X, 2, max_points=11)  # 121 // 40 = 3 candidates fit, budget 2
    message = (
        r"candidates= cannot help here \(at most 3 candidates fit beside 40 unlabeled points, "
        r"fewer than the budget of 5\), so raise max_points"
    )
    with pytest.raises(ValueError, match=message):
        robust_kcenter(X, 5, max_points=11)


def test_progress_shows_the_bisection(capsys):
    X = mixture(150, 4, 5, seed=10)
    quiet = robust_kcenter(X, 5, [0, 3], outliers=2, seed=1)
    assert "robust k-center" not in capsys.readouterr().err
    res = robust_kcenter(X, 5, [0, 3], outliers=2, seed=1, progress=True)
    err = capsys.readouterr().err
    assert "robust k-center" in err
    assert f"radius={res.radius:.5g}" in err  # the incumbent, last shown
    assert_array_equal(res.indices, quiet.indices)
    sel = RobustKCenter(outliers=2, progress=True).select(X, 5, [0, 3], seed=1)
    assert_array_equal(sel.indices, quiet.indices)
    assert "robust k-center" in capsys.readouterr().err
    with pytest.raises(TypeError, match="progress must be a bool"):
        RobustKCenter(progress=1)
    with pytest.raises(TypeError, match="progress must be a bool"):
        robust_kcenter(X, 5, progress="yes")


def test_strategy_candidates_bounded_at_select():
    X = gaussian(10, 2, seed=0)
    strategy = RobustKCenter(candidates=[2, 3, 11])  # the pool's size is known only at select
    with pytest.raises(ValueError, match=r"candidates has indices out of range \[0, 10\)"):
        strategy.select(X, 1, [0])


def test_nan_and_inf_are_refused():
    X = gaussian(10, 2, seed=0)
    X[4, 1] = np.nan
    X[6, 0] = np.inf
    with pytest.raises(ValueError, match=r"X contains NaN or Inf in 2 row\(s\), first at row 4"):
        robust_kcenter(X, 2)
    with pytest.raises(ValueError, match="overflow float64"):
        robust_kcenter(np.array([[1e300], [-1e300], [0.0]]), 1)


# ---------------------------------------------------------------------------------------------
# (e) the strategy


def test_strategy_registered_and_equal_to_the_function():
    assert base.get("robust_coreset") is RobustKCenter
    assert "robust_coreset" in base.available()
    assert RobustKCenter.requires == ("features",)
    assert repr(RobustKCenter(outliers=2)) == (
        "RobustKCenter(outliers=2, candidates=None, max_points=2000, time_limit=None, "
        "progress=False)"
    )
    X = mixture(150, 4, 5, seed=10)
    sel = RobustKCenter(outliers=2).select({"features": X}, 5, [0, 3], seed=1)
    res = robust_kcenter(X, 5, [0, 3], outliers=2, seed=1)
    assert_array_equal(sel.indices, res.indices)
    assert sel.diagnostics["radius"] == res.radius
    assert_array_equal(sel.diagnostics["outliers"], res.outliers)
    assert sel.diagnostics["greedy_radius"] == res.greedy_radius


def test_strategy_follows_the_seed_without_labeled_rows():
    X = mixture(60, 2, 5, seed=11)
    greedy = set()
    for seed in range(5):
        want = robust_kcenter(X, 4, outliers=1, seed=seed)
        sel = RobustKCenter(outliers=1).select(X, 4, seed=seed)
        assert_array_equal(sel.indices, want.indices)
        assert sel.diagnostics["greedy_radius"] == want.greedy_radius
        assert sel.diagnostics["greedy_robust_radius"] == want.diagnostics["greedy_robust_radius"]
        greedy.add(want.greedy_radius)
    assert len(greedy) > 1  # the seed matters here


def test_strategy_on_a_gradient_embedding():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(40, 3, generator=g), dim=1)
    feats = torch.randn(40, 5, generator=g)
    emb = fastal.gradient_embedding(probs, feats)
    sel = RobustKCenter().select(emb, 3, [0])
    ref = robust_kcenter(emb.dense(), 3, [0])
    assert_array_equal(sel.indices, ref.indices)
    with pytest.raises(ValueError, match="GradientEmbedding"):
        RobustKCenter(max_points=10).select(emb, 3, [0])
    # the size check counts the candidates robust_kcenter uses: 5 unlabeled of these 10 rows
    # (35 x 5 <= 14², while 35 x 10 is not)
    labeled, cand = np.arange(5), np.arange(10)
    sel = RobustKCenter(candidates=cand, max_points=14).select(emb, 2, labeled)
    ref = robust_kcenter(emb.dense(), 2, labeled, candidates=cand, max_points=14)
    assert_array_equal(sel.indices, ref.indices)


def test_strategy_through_the_torch_adapter():
    torch = pytest.importorskip("torch")
    import fastal.torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    data = torch.randn(120, 4)
    sel = fastal.torch.select(RobustKCenter(outliers=1), model, data, 6, [0, 1], progress=False)
    idx = to_numpy(sel.indices)
    assert idx.shape == (6,)
    assert np.unique(idx).size == 6
    assert not np.isin(idx, [0, 1]).any()
    assert sel.diagnostics["radius"] <= sel.diagnostics["greedy_radius"]
    assert "pool_seconds" in sel.diagnostics


@pytest.mark.parametrize("module", [rk_module, strategy_module])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("outliers", [0, 5])
def test_reductions_are_skipped_when_their_overlaps_are_too_many(monkeypatch, outliers):
    """Row dominance lists the overlapping row pairs (A Aᵀ): 10k points over 4 candidates took
    4.7 GB. Past a limit the reductions are skipped, and the exact answer is the same."""
    reductions = importlib.import_module("fastal._covering_reductions")
    X = np.random.default_rng(3).normal(size=(300, 3))
    kwargs = dict(candidates=np.arange(0, 300, 10), outliers=outliers, seed=0)
    reduced = robust_kcenter(X, 3, **kwargs)
    monkeypatch.setattr(reductions, "_OVERLAP_LIMIT", 0.0)
    unreduced = robust_kcenter(X, 3, **kwargs)
    assert reduced.optimal
    assert unreduced.optimal
    assert unreduced.radius == reduced.radius
    # the limit took effect: the MIP kept more rows without the dominance reductions
    last = "last_mip"
    assert unreduced.diagnostics[last]["reduced_rows"] > reduced.diagnostics[last]["reduced_rows"]
