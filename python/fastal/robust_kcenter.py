"""Robust k-center with outliers (Sener & Savarese, ICLR 2018, §4.3, eq. 6, Alg. 2).

k-center greedy (Alg. 1) gives a covering radius δ₂OPT within twice the optimum. Alg. 2 closes
the gap: a bisection over candidate radii δ, each step deciding with a mixed-integer program
whether ``b`` new centres plus the labeled points cover every point within δ, up to ``Ξ``
outliers. The MIPs are solved by HiGHS through :func:`scipy.optimize.milp`.

Everything here runs on the host in float64, with distance matrices of shape
``(unlabeled, eligible centres)``: the MIP is O(n²) anyway, so pools are limited to a few thousand
points (``max_points``); beyond that use :func:`fastal.kcenter` or ``candidates=``.

This module holds the public :func:`robust_kcenter`, its result and its checks; the bisection's
problem (distances, feasibility MIPs) is :class:`fastal._covering_mip._Problem`, and the
reductions of each MIP are in :mod:`fastal._covering_reductions`.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _interop
from ._covering_mip import _Problem
from ._validate import (
    _number,
    check_bool,
    check_budget,
    check_indices,
    check_matrix,
    real_to_float,
)

#: Default largest pool (unlabeled points, every one a candidate centre) that
#: :func:`robust_kcenter` accepts; measured on a 2-core AMD EPYC (benchmarks/RESULTS.md).
MAX_POINTS = 2000

# Computed distances obey the triangle inequality only up to rounding: lower bounds derived from
# it are relaxed by this relative margin so that they never cut off the optimum.
_SLACK = 1e-9


@dataclass
class RobustKCenterResult:
    """What :func:`robust_kcenter` found, with a certificate and diagnostics.

    Attributes
    ----------
    indices : (budget,) int64 array
        The new centres, ascending, in the framework and on the device of ``X``.
    radius : float
        δ: every unlabeled point but ``outliers`` is within δ of the labeled points and
        ``indices`` (float64 distances).
    outliers : (m,) int64 array, m <= Ξ
        The unlabeled points farther than δ from every centre, ascending, same framework and
        device as ``X``.
    greedy_radius : float
        δ₂OPT: covering radius (no outliers) of the k-center greedy start (with ``candidates``:
        of the restricted greedy).
    optimal : bool
        True when every bisection step was decided; False when ``time_limit`` stopped the search
        or a solve was undecided (its radii in ``diagnostics["undecided"]``).
    seconds : float
        Wall-clock time of the whole call.
    diagnostics : dict
        ``outlier_budget`` (Ξ), ``greedy_robust_radius``, ``lower_bound``, ``candidate_radii``,
        ``mip_solves``, ``path``, ``last_mip``, ``undecided``, ``distance_seconds``,
        ``mip_seconds``, ``n_unlabeled``, ``n_eligible`` and ``seconds`` (see
        :func:`robust_kcenter`, Returns).

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.robust_kcenter import robust_kcenter
    >>> X = np.array([[0.0], [0.5], [10.0], [11.0], [12.0], [50.0]])
    >>> res = robust_kcenter(X, 1, labeled=[0], outliers=1)
    >>> res.optimal, res.diagnostics["outlier_budget"], res.radius <= res.greedy_radius
    (True, 1, True)
    """

    indices: Any  #: (budget,) int64, ascending, input's framework/device: the new centres
    radius: float  #: δ: every point but the outliers is within δ of the labeled points and indices
    outliers: Any  #: (≤ Ξ,) int64, ascending, input's framework/device: points farther than δ
    greedy_radius: float  #: δ₂OPT, covering radius of k-center greedy (no outliers)
    optimal: bool  #: True when every bisection step was decided (no time-out / solver failure)
    seconds: float
    diagnostics: dict = field(default_factory=dict)


def robust_kcenter(
    X: Any,
    budget: int,
    labeled: Any = None,
    *,
    outliers: float = 1e-4,
    candidates: Any = None,
    max_points: int = MAX_POINTS,
    time_limit: float | None = None,
    seed: int | np.random.Generator | None = None,
    progress: bool = False,
) -> RobustKCenterResult:
    """Robust k-center: ``budget`` new centres minimising the covering radius up to Ξ outliers.

    Solves ``min_{s1, |s1| = b} δ`` such that all but at most ``Ξ`` unlabeled points lie within
    δ of ``s0 + s1`` (``s0``: the labeled points, always centres), exactly, by Alg. 2 of Sener &
    Savarese (ICLR 2018, §4.3):

    1. k-center greedy (Alg. 1, :func:`fastal.kcenter` in float64) gives a feasible solution and
       its radius δ₂OPT; it is the starting incumbent, so the result is never worse than greedy.
    2. The optimal radius is one of the point-to-centre distances. The candidates are the distinct
       distances in ``[lb, ub]``: ``ub`` the incumbent's radius with Ξ outliers, ``lb = g / 2``
       where ``g`` is the radius of the greedy after ``b + Ξ`` picks. Its first ``b + Ξ + 1``
       picks are pairwise at least ``g`` apart and at least ``g`` from the labeled set, so below
       ``g / 2`` each would need its own new centre or be an outlier: infeasible. For Ξ = 0,
       ``[δ₂OPT / 2, δ₂OPT]`` is the paper's range; for Ξ > 0 the paper's range can miss the
       optimum (which may lie below δ₂OPT / 2), and this one does not.
    3. Bisection over the sorted candidates; each step solves the feasibility MIP at δ. A
       feasible MIP's centres (completed to ``b``, see below) replace the incumbent and the
       upper end drops to their actual radius.

    The feasibility MIP is eq. 6 in a covering form, built sparsely over pairs within δ::

        Σ_{j ∈ E, d(i, j) ≤ δ} u_j + ξ_i ≥ 1   for every unlabeled i farther than δ from s0
        Σ_j u_j ≤ b,   Σ_i ξ_i ≤ Ξ,   u_j ∈ {0, 1},   0 ≤ ξ_i ≤ 1

    with ``u_j`` the centre indicators of the eligible points ``E`` (``candidates`` outside the
    labeled set) and ``ξ_i`` the outlier indicators. It is equivalent to eq. 6: given centres,
    any centre within δ of ``i`` can serve as its assignment ``ω_ij``, so eq. 6's assignment
    variables add nothing; the labeled ``u_j = 1`` are substituted (their points dropped); for
    integral ``u`` the least Σ ξ is the (integral) number of uncovered points, so ``ξ`` may be
    continuous; and ``Σ u_j ≤ b`` is feasible exactly when ``= b`` is, because extra centres
    never uncover a point. A solution with fewer than ``b`` centres is completed farthest-first:
    each added centre is the eligible non-centre farthest from the centres so far (ties to the
    lowest index), which can only lower the radius.

    Before HiGHS sees it, each MIP is shrunk by exact dominance reductions (a centre covering a
    subset of another's points is dropped; without outliers a point whose centres include
    another point's centres is dropped; equal points are merged, counted with multiplicity
    against Ξ), and split into the connected groups of the pairs within δ (on clustered
    embeddings, about one per cluster). With one group it is solved as above. With several,
    each group's fewest centres with ``o`` outliers, ``f_g(o)``, is a small MIP (capped by
    ``b`` minus the other groups' lower bounds; ``o`` bisected where ``f_g`` changes), and δ
    is feasible iff a knapsack over the outlier split gives ``Σ_g f_g(o_g) <= b``. That turns
    minutes into seconds at a few thousand clustered points, where the one coupled MIP made
    HiGHS branch across independent clusters.

    Parameters
    ----------
    X : array of shape (n, d)
        Pool embeddings: numpy, torch (CPU/CUDA) or cupy; float16, bfloat16, float32 or float64.
        Copied to the host as float64 (all distances are float64, in the direct form).
    budget : int
        Number of new centres, ``0 <= budget <= `` the eligible points outside ``labeled``.
    labeled : 1-D integer indices, optional
        Already-labeled rows: always centres, never picked, never outliers.
    outliers : int or float, default 1e-4
        Ξ, the most unlabeled points left uncovered. An int is a count in ``[0, n)``; a float in
        ``[0, 1)`` a fraction of the unlabeled points, ``Ξ = floor(outliers * n_unlabeled)`` (the
        paper's ``1e-4 * n``, so Ξ = 0 below 10 000 unlabeled points). Alg. 2 honours Ξ here
        (the authors' released code disables it).
    candidates : 1-D integer indices, optional
        Rows allowed as new centres (default: every unlabeled row). Labeled rows in it are
        ignored (they are centres anyway). Shrinks the distance matrix and the MIP to
        ``n_unlabeled * n_candidates``, so larger pools fit the limit. The greedy start is then
        the farthest-first variant for restricted centres: the farthest point gets its nearest
        candidate (a 3-approximation with Ξ = 0).
    max_points : int, default 2000 (``MAX_POINTS``)
        Size limit: ``n_unlabeled * n_eligible <= max_points ** 2``, i.e. at most ``max_points``
        unlabeled points when all are candidates. Larger problems raise ``ValueError``. The
        distance matrix is ``n_unlabeled * n_eligible`` float64 (32 MB at the default). Measured
        on 2 cores (benchmarks/RESULTS.md, "Robust k-center (MIP) timings"): clustered pools
        of 2000 take 2 to 10 s (30 s with Ξ = 5), of 3000 4 to 17 s (2 min with Ξ = 5), of 5000
        20 s to 2 min; an unclustered Gaussian pool is far harder: 30 to 40 s at 1000 points,
        over 15 min at 2000. Raise the limit on purpose, with ``time_limit``.
    time_limit : float, optional
        Seconds for the MIP phase (reductions and solves) together (default: none). Each solve
        gets the time left when it starts, and none starts after it is spent; with a limit
        HiGHS runs without its presolve, which does not stop at the limit. A solve that stops at
        the limit with a feasible point counts as feasible; one without, or
        a solver failure, is *undecided*: the bisection continues above that radius as if it
        were infeasible, and the result has ``optimal=False`` with the undecided radii in
        ``diagnostics["undecided"]``. When time runs out the best solution so far is returned.
        The returned radius is always certified, only its optimality is then unproven.
    seed : int or numpy.random.Generator, optional
        The greedy's first centre when there is no labeled point. HiGHS is deterministic, so
        the same input and seed give the same picks, unless ``time_limit`` stops a solve: where
        it stops depends on the machine's speed and load (``optimal`` is then False).
    progress : bool, default False
        A tqdm bar over the bisection's radii (each one MIP feasibility problem, the slow part),
        showing the incumbent radius and the lowest radius still open.

    Returns
    -------
    RobustKCenterResult
        ``indices`` (budget,) int64, ascending, in ``X``'s framework and device; ``radius`` δ;
        ``outliers`` (int64, ascending, at most Ξ): the unlabeled points farther than δ from
        every centre; ``greedy_radius`` δ₂OPT (with ``candidates``: the restricted greedy's
        radius); ``optimal``; ``seconds``; ``diagnostics``: ``outlier_budget`` (Ξ),
        ``greedy_robust_radius`` (the greedy's radius with Ξ outliers), ``lower_bound``,
        ``candidate_radii`` (how many), ``mip_solves`` (HiGHS calls), ``path`` (one dict per
        bisection step: ``delta``, ``outcome``, ``found_radius``, ``mips``, ``seconds``),
        ``last_mip`` (the last step that built a MIP: ``pairs`` within δ, ``rows``,
        ``reduced_rows``, ``reduced_columns``, ``components``, and for its largest MIP
        ``variables``, ``integer_variables``, ``constraints``, ``nonzeros``), ``undecided``,
        ``distance_seconds``, ``mip_seconds``, ``n_unlabeled``, ``n_eligible``.

    Examples
    --------
    Points on a line, labeled point 0, one centre to place and one outlier allowed: the centre
    goes to 11, the middle of the second cluster, and 50 is left out. Greedy spends its centre on
    the outlier.

    >>> import numpy as np
    >>> from fastal.robust_kcenter import robust_kcenter
    >>> X = np.array([[0.0], [0.5], [10.0], [11.0], [12.0], [50.0]])
    >>> res = robust_kcenter(X, 1, labeled=[0], outliers=1)
    >>> res.indices.tolist(), res.radius, res.outliers.tolist(), res.greedy_radius
    ([3], 1.0, [5], 12.0)
    """
    return _robust_kcenter(
        X, budget, labeled, outliers=outliers, candidates=candidates, max_points=max_points,
        time_limit=time_limit, seed=seed, progress=progress, name="X",
    )  # fmt: skip


def _robust_kcenter(
    X: Any,
    budget: int,
    labeled: Any,
    *,
    outliers: float,
    candidates: Any,
    max_points: int,
    time_limit: float | None,
    seed: int | np.random.Generator | None,
    name: str,
    progress: bool = False,
) -> RobustKCenterResult:
    """:func:`robust_kcenter`, its messages naming the pool ``name`` (a strategy's "features")."""
    start = time.perf_counter()
    check_bool(progress, "progress")
    info = check_matrix(X, name)
    n = info.shape[0]
    lab = check_indices(labeled, n, "labeled", like=info)
    is_lab = np.zeros(n, dtype=bool)
    is_lab[lab] = True
    unl = np.flatnonzero(~is_lab)
    budget = check_budget(budget, unl.size)
    xi = _outlier_count(outliers, n, unl.size)
    if time_limit is not None:
        time_limit = _number(time_limit, "time_limit", positive=True)
    if candidates is None:
        elig = unl
    else:
        cand = check_indices(candidates, n, "candidates", like=info)
        elig = np.unique(cand[~is_lab[cand]])
        if budget > elig.size:
            raise ValueError(
                f"budget = {budget} is larger than the candidates outside the labeled set "
                f"({elig.size} points)"
            )
    check_size(unl.size, elig.size, max_points, candidates is not None, name, budget)

    Xh = _host_float64(X, info)
    bad = ~np.isfinite(Xh).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{name} contains NaN or Inf in {int(bad.sum())} row(s), first at row "
            f"{int(np.argmax(bad))}"
        )

    diag: dict[str, Any] = {"outlier_budget": xi, "n_unlabeled": int(unl.size),
                            "n_eligible": int(elig.size)}  # fmt: skip
    problem = _Problem.build(Xh, unl, elig, lab)
    diag["distance_seconds"] = problem.seconds

    if budget == 0:
        none = np.empty(0, np.int64)
        radius, out = problem.robust_radius(none, xi)
        no_outliers, _ = problem.robust_radius(none, 0)  # δ₂OPT is defined without outliers
        return _result(info, none, radius, out, no_outliers, True, start, diag | {
            "greedy_robust_radius": radius, "lower_bound": radius, "candidate_radii": 0,
            "mip_solves": 0, "path": [], "last_mip": {}, "undecided": [], "mip_seconds": 0.0,
        })  # fmt: skip

    # greedy: the incumbent, δ₂OPT, and (after b + Ξ picks) the lower bound of the search
    from .ops import _kcenter

    picks_needed = min(budget + xi + 1, unl.size)
    greedy = _kcenter(Xh, picks_needed, lab, seed, True, False, name)
    gpicks = np.asarray(greedy.indices)
    if candidates is None:
        inc = problem.columns(gpicks[:budget])
    else:
        inc = problem.restricted_greedy(budget, seed, gpicks[0] if lab.size == 0 else None)
    greedy_radius, _ = problem.robust_radius(inc, 0)
    ub, _ = problem.robust_radius(inc, xi)
    g_radius = np.asarray(greedy.radius, dtype=np.float64)
    lb = 0.0 if budget + xi + 1 > unl.size else float(g_radius[budget + xi - 1]) / 2
    lb *= 1 - _SLACK
    radii = problem.candidate_radii(lb, ub)
    diag |= {"greedy_robust_radius": ub, "lower_bound": lb, "candidate_radii": int(radii.size)}

    # bisection: radii[hi] is the incumbent's radius; everything below radii[lo] is infeasible
    lo, hi = 0, int(np.searchsorted(radii, ub))
    path: list[dict] = []
    undecided: list[float] = []
    last_mip: dict = {}
    mip_start = time.perf_counter()
    deadline = None if time_limit is None else mip_start + time_limit
    bar = _bisection_bar(hi - lo, progress)
    while lo < hi:
        if deadline is not None and time.perf_counter() >= deadline:
            undecided.append(float(radii[(lo + hi) // 2]))
            path.append({"delta": undecided[-1], "outcome": "stopped: time_limit spent",
                         "found_radius": None, "mips": 0, "seconds": 0.0})  # fmt: skip
            break
        mid = (lo + hi) // 2
        delta = float(radii[mid])
        t0 = time.perf_counter()
        outcome, cols, sizes = problem.feasible(delta, budget, xi, deadline)
        if "variables" in sizes:
            last_mip = sizes
        found = None
        if cols is not None:
            cols = problem.complete(cols, budget)
            found, _ = problem.robust_radius(cols, xi)
            if found > delta:  # solver tolerance let an uncovered point through: not a proof
                outcome, cols = f"undecided: solution violates δ ({found:.17g})", None
        if cols is not None:
            inc, ub = cols, found
            hi = min(mid, int(np.searchsorted(radii, found)))
        else:
            if outcome.startswith("undecided"):
                undecided.append(delta)
            lo = mid + 1
        path.append({"delta": delta, "outcome": outcome, "found_radius": found,
                     "mips": sizes["mips"], "seconds": time.perf_counter() - t0})  # fmt: skip
        bar.update(1)
        bar.set_postfix(radius=f"{ub:.5g}", open_from=f"{radii[lo] if lo < hi else ub:.5g}")
    bar.close()
    diag |= {
        "mip_solves": problem.solves,
        "path": path,
        "last_mip": last_mip,
        "undecided": undecided,
        "mip_seconds": time.perf_counter() - mip_start,
    }
    radius, out = problem.robust_radius(inc, xi)
    picks = np.sort(elig[inc])
    return _result(info, picks, radius, out, greedy_radius, not undecided, start, diag)


def _bisection_bar(radii: int, progress: bool) -> Any:
    """A tqdm bar over the bisection's steps: at most ceil(log2(radii + 1)) (fewer when a
    solution's radius lands below the middle one)."""
    from tqdm.auto import tqdm

    steps = int(np.ceil(np.log2(radii + 1))) if radii > 0 else 0
    return tqdm(total=steps, disable=not progress, desc="robust k-center", unit="radius")


def check_size(
    n_unlabeled: int,
    n_eligible: int,
    max_points: int,
    candidates: bool,
    name: str = "X",
    budget: int | None = None,
) -> None:
    """Raise ``ValueError`` when ``n_unlabeled * n_eligible > max_points ** 2``, saying how many
    candidates would fit (and when that is fewer than ``budget``, that candidates cannot help)."""
    if isinstance(max_points, bool) or not isinstance(max_points, numbers.Integral):
        raise TypeError(f"max_points must be a positive integer, got {type(max_points).__name__}")
    if max_points < 1:
        raise ValueError(f"max_points must be a positive integer, got {max_points!r}")
    if n_unlabeled * n_eligible <= max_points**2:
        return
    what = (
        f"{n_unlabeled} unlabeled points x {n_eligible} candidates"
        if candidates
        else f"{n_unlabeled} unlabeled points"
    )
    fit = max_points**2 // max(n_unlabeled, 1)  # candidates that would fit beside these points
    if budget is not None and fit < budget:
        way = (
            f"candidates= cannot help here (at most {fit} candidates fit beside {n_unlabeled} "
            f"unlabeled points, fewer than the budget of {budget}), so raise max_points"
        )
    else:
        way = (
            f"pass candidates= (a subset of at most {fit} rows allowed as new centres), or raise "
            "max_points"
        )
    raise ValueError(
        f"{name} is too large for robust_kcenter: {what}, above max_points = {max_points} "
        f"(at most max_points² = {max_points**2} point-candidate pairs). The MIP has O(n²) "
        f"variables and constraints; use fastal.kcenter (k-center greedy, any size), {way}."
    )


def _result(info, picks, radius, out, greedy_radius, optimal, start, diag) -> RobustKCenterResult:
    seconds = time.perf_counter() - start
    diag["seconds"] = seconds
    return RobustKCenterResult(
        indices=_interop.to_framework(np.asarray(picks, dtype=np.int64), info),
        radius=float(radius),
        outliers=_interop.to_framework(np.asarray(out, dtype=np.int64), info),
        greedy_radius=float(greedy_radius),
        optimal=bool(optimal),
        seconds=seconds,
        diagnostics=diag,
    )


def check_outliers(outliers: Any) -> int | float:
    """``outliers`` as an int count >= 0 or a float fraction in [0, 1), before the pool is known
    (:func:`_outlier_count` then bounds the count by the pool)."""
    if isinstance(outliers, bool) or not isinstance(outliers, numbers.Real):
        raise TypeError(
            f"outliers must be an int count or a float fraction, got {type(outliers).__name__}"
        )
    if isinstance(outliers, numbers.Integral):
        if outliers < 0:
            raise ValueError(f"outliers must be a count >= 0, got {outliers}")
        return int(outliers)
    frac = real_to_float(outliers, "outliers")
    if not 0.0 <= frac < 1.0:
        raise ValueError(
            f"outliers as a float is a fraction in [0, 1) of the unlabeled points, got {frac}; "
            "pass an int for a count"
        )
    return frac


def _outlier_count(outliers: Any, n: int, n_unlabeled: int) -> int:
    """Ξ from an int count or a float fraction of the unlabeled points."""
    integral = isinstance(outliers, numbers.Integral) and not isinstance(outliers, bool)
    if integral and not 0 <= outliers < n:
        raise ValueError(f"outliers must be a count in [0, n) = [0, {n}), got {outliers}")
    checked = check_outliers(outliers)
    if isinstance(checked, int):
        return checked
    frac = checked
    # 0.29 * 100 is 28.999999999999996 in floating point: the user meant 29; and a fraction
    # below 1 leaves a point, however close to 1 it is (0.99999999999 of 10 rounded up to 10)
    count = int(np.floor(round(frac * n_unlabeled, 9)))
    return min(count, n_unlabeled - 1) if frac * n_unlabeled < n_unlabeled else count


def _host_float64(X: Any, info: _interop.ArrayInfo) -> np.ndarray:
    """X as a C-contiguous float64 numpy array on the host (exact: every dtype embeds)."""
    if info.framework == "torch":
        import torch

        return np.ascontiguousarray(X.detach().resolve_neg().to("cpu", torch.float64).numpy())
    return np.ascontiguousarray(_interop.host_numpy(X), dtype=np.float64)
