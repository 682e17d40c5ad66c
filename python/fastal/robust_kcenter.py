"""Robust k-center with outliers (Sener & Savarese, ICLR 2018, §4.3, eq. 6, Alg. 2).

k-center greedy (Alg. 1) gives a covering radius δ₂OPT within twice the optimum. Alg. 2 closes
the gap: a bisection over candidate radii δ, each step deciding with a mixed-integer program
whether ``b`` new centres plus the labeled points cover every point within δ, up to ``Ξ``
outliers. The MIPs are solved by HiGHS through :func:`scipy.optimize.milp`.

Everything here runs on the host in float64, with distance matrices of shape
``(unlabeled, eligible centres)``: the MIP is O(n²) anyway, so pools are limited to a few thousand
points (``max_points``); beyond that use :func:`fastal.kcenter` or ``candidates=``.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _ext, _interop
from ._validate import _number, check_budget, check_indices, check_matrix

#: Default largest pool (unlabeled points, every one a candidate centre) that
#: :func:`robust_kcenter` accepts; measured on a 2-core AMD EPYC (benchmarks/RESULTS.md).
MAX_POINTS = 2000

# Computed distances obey the triangle inequality only up to rounding: lower bounds derived from
# it are relaxed by this relative margin so that they never cut off the optimum.
_SLACK = 1e-9
#: ``_milp``'s status when its deadline had passed before the solve (HiGHS statuses are >= 0)
_SPENT = -1
# Squared differences per distance-kernel call (about 0.1 s): Ctrl-C is taken between calls.
_DISTANCE_WORK = 1 << 27


@dataclass
class RobustKCenterResult:
    """What :func:`robust_kcenter` found, with a certificate and diagnostics."""

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
    start = time.perf_counter()
    info = check_matrix(X, "X")
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
    check_size(unl.size, elig.size, max_points, candidates is not None)

    Xh = _host_float64(X, info)
    bad = ~np.isfinite(Xh).all(axis=1)
    if bad.any():
        raise ValueError(
            f"X contains NaN or Inf in {int(bad.sum())} row(s), first at row {int(np.argmax(bad))}"
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
    from .ops import kcenter

    picks_needed = min(budget + xi + 1, unl.size)
    greedy = kcenter(Xh, picks_needed, labeled=lab, seed=seed)
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


def check_size(n_unlabeled: int, n_eligible: int, max_points: int, candidates: bool) -> None:
    """Raise ``ValueError`` when ``n_unlabeled * n_eligible > max_points ** 2``."""
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
    raise ValueError(
        f"X is too large for robust_kcenter: {what}, above max_points = {max_points} "
        f"(at most max_points² = {max_points**2} point-candidate pairs). The MIP has O(n²) "
        "variables and constraints; use fastal.kcenter (k-center greedy, any size), pass "
        "candidates= (a subset of rows allowed as new centres), or raise max_points."
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


def _outlier_count(outliers: Any, n: int, n_unlabeled: int) -> int:
    """Ξ from an int count or a float fraction of the unlabeled points."""
    if isinstance(outliers, bool) or not isinstance(outliers, numbers.Real):
        raise TypeError(
            f"outliers must be an int count or a float fraction, got {type(outliers).__name__}"
        )
    if isinstance(outliers, numbers.Integral):
        if not 0 <= outliers < n:
            raise ValueError(f"outliers must be a count in [0, n) = [0, {n}), got {outliers}")
        return int(outliers)
    frac = float(outliers)
    if not 0.0 <= frac < 1.0:
        raise ValueError(
            f"outliers as a float is a fraction in [0, 1) of the unlabeled points, got {frac}; "
            "pass an int for a count"
        )
    # 0.29 * 100 is 28.999999999999996 in floating point: the user meant 29
    return int(np.floor(round(frac * n_unlabeled, 9)))


def _indexed_distances(
    Xh: np.ndarray, rows: np.ndarray, cols: np.ndarray, nearest_only: bool = False
) -> np.ndarray:
    """Distances of the rows ``Xh[rows]`` to ``Xh[cols]`` (``fastal._cpu.indexed_distances``:
    float64 direct differences, all threads, no gathered copies), in calls of at most
    ``_DISTANCE_WORK`` squared differences so that Ctrl-C is taken between them."""
    kernel = _ext.cpu.indexed_distances_float64
    rows, cols = (np.ascontiguousarray(a, dtype=np.int64) for a in (rows, cols))
    per_call = max(1, _DISTANCE_WORK // max(1, cols.size * Xh.shape[1]))
    if per_call >= rows.size:
        return kernel(Xh, rows, cols, nearest_only)
    starts = range(0, rows.size, per_call)
    return np.concatenate([kernel(Xh, rows[s : s + per_call], cols, nearest_only) for s in starts])


def _host_float64(X: Any, info: _interop.ArrayInfo) -> np.ndarray:
    """X as a C-contiguous float64 numpy array on the host (exact: every dtype embeds)."""
    if info.framework == "torch":
        import torch

        return np.ascontiguousarray(X.detach().to("cpu", torch.float64).numpy())
    return np.ascontiguousarray(_interop.host_numpy(X), dtype=np.float64)


class _Problem:
    """Distances of the unlabeled points to the eligible centres and to the labeled set.

    ``D[r, c]``: unlabeled point ``unl[r]`` to eligible point ``elig[c]``; ``dlab[r]``: to its
    nearest labeled point (inf without one). Eligible points are unlabeled: ``row_of[c]`` is the
    row of ``elig[c]``.
    """

    def __init__(self, D: np.ndarray, dlab: np.ndarray, unl: np.ndarray, elig: np.ndarray,
                 seconds: float) -> None:  # fmt: skip
        self.D, self.dlab, self.unl, self.elig, self.seconds = D, dlab, unl, elig, seconds
        self.row_of = np.searchsorted(unl, elig)
        self.solves = 0

    @classmethod
    def build(cls, Xh: np.ndarray, unl: np.ndarray, elig: np.ndarray, lab: np.ndarray) -> _Problem:
        t0 = time.perf_counter()
        D = _indexed_distances(Xh, unl, elig)
        dlab = _indexed_distances(Xh, unl, lab, nearest_only=True)  # inf without labeled rows
        if not (np.isfinite(D).all() and (lab.size == 0 or np.isfinite(dlab).all())):
            raise ValueError("distances between rows of X overflow float64: scale X down")
        return cls(D, dlab, unl, elig, time.perf_counter() - t0)

    def columns(self, points: np.ndarray) -> np.ndarray:
        """Columns of D of the eligible pool rows ``points`` (every one must be eligible)."""
        return np.searchsorted(self.elig, points)

    def nearest(self, cols: np.ndarray) -> np.ndarray:
        """Distance of every unlabeled point to its nearest centre (labeled or ``cols``)."""
        if cols.size == 0:
            return self.dlab.copy()
        return np.minimum(self.dlab, self.D[:, cols].min(axis=1))

    def robust_radius(self, cols: np.ndarray, xi: int) -> tuple[float, np.ndarray]:
        """(radius with ``xi`` outliers: the (xi + 1)-th largest distance to the nearest centre,
        0 when xi covers everything; the pool rows farther than it, ascending)."""
        mind = self.nearest(cols)
        if xi >= mind.size:
            return 0.0, self.unl[mind > 0]
        radius = float(np.partition(mind, mind.size - 1 - xi)[mind.size - 1 - xi])
        return radius, self.unl[mind > radius]

    def candidate_radii(self, lb: float, ub: float) -> np.ndarray:
        """Sorted distinct point-to-centre distances in [lb, ub] (ub included)."""
        dist, dlab = self.D, self.dlab
        vals = [dist[(dist >= lb) & (dist <= ub)], dlab[(dlab >= lb) & (dlab <= ub)], [ub]]
        return np.unique(np.concatenate(vals))

    def restricted_greedy(self, budget: int, seed: Any, first_row: int | None) -> np.ndarray:
        """Farthest point, then its nearest eligible non-centre: ``budget`` columns."""
        mind = self.dlab.copy()
        taken = np.zeros(self.D.shape[1], dtype=bool)
        cols = np.empty(budget, dtype=np.int64)
        for t in range(budget):
            if t == 0 and first_row is not None:  # no labeled point: kcenter's first centre
                far = int(np.searchsorted(self.unl, first_row))
            else:
                far = int(np.argmax(mind))
            c = int(np.argmin(np.where(taken, np.inf, self.D[far])))
            cols[t], taken[c] = c, True
            np.minimum(mind, self.D[:, c], out=mind)
        return cols

    def complete(self, cols: np.ndarray, budget: int) -> np.ndarray:
        """``cols`` plus farthest-first eligible columns up to ``budget`` distinct ones."""
        cols = np.unique(cols)
        if cols.size >= budget:
            return cols[:budget]
        mind = self.nearest(cols)
        taken = np.zeros(self.D.shape[1], dtype=bool)
        taken[cols] = True
        extra = []
        for _ in range(budget - cols.size):
            c = int(np.argmax(np.where(taken, -np.inf, mind[self.row_of])))
            extra.append(c)
            taken[c] = True
            np.minimum(mind, self.D[:, c], out=mind)
        return np.sort(np.concatenate([cols, np.asarray(extra, dtype=np.int64)]))

    def feasible(
        self, delta: float, budget: int, xi: int, deadline: float | None
    ) -> tuple[str, np.ndarray | None, dict]:
        """Decide eq. 6 at ``delta``: (outcome, centre columns or None, MIP sizes).

        ``deadline`` (a ``time.perf_counter()`` value, or None) bounds the MIP solves: each one
        gets the time left when it starts, after the reductions, and none starts past it."""
        from scipy import sparse
        from scipy.sparse.csgraph import connected_components

        solves = self.solves
        rows = np.flatnonzero(self.dlab > delta)  # points the labeled set does not cover
        cover = self.D[rows] <= delta
        coverable = cover.any(axis=1)
        forced = int(rows.size - coverable.sum())  # no eligible point within δ: outliers
        size: dict[str, Any] = {"delta": delta, "rows": int(rows.size), "mips": 0}
        if forced > xi:
            return f"infeasible: {forced} points have no candidate within δ", None, size
        cover = cover[coverable]
        free = xi - forced
        if free >= cover.shape[0]:  # all the rest may be outliers
            return "feasible: no centre needed", np.empty(0, np.int64), size
        used = np.flatnonzero(cover.any(axis=0))  # columns that cover nothing are left out
        r, c = np.nonzero(cover[:, used])
        size["pairs"] = int(r.size)
        A = sparse.csr_array((np.ones(r.size), (r, c)), shape=(cover.shape[0], used.size))
        A, keep, weight = _reduce(A, outliers=free > 0)
        used = used[keep]
        k, m = A.shape
        size |= {"reduced_rows": k, "reduced_columns": m}
        if m <= budget:  # every remaining column fits the budget: all rows covered
            return "feasible: every useful candidate fits the budget", used, size
        # pairs within δ split the points into groups no centre straddles (clusters): each group
        # gets its own small MIP, far easier than one MIP with the budget coupling them all
        graph = sparse.bmat([[None, A], [A.T, None]], format="csr")
        n_comp, label = connected_components(graph, directed=False)
        size["components"] = int(n_comp)
        if n_comp > 1:
            outcome, cols = self._by_component(
                A, weight, label[:k], label[k:], n_comp, free, budget, deadline, size
            )
        else:
            status, cols, _ = self._milp(A, weight, free, budget, deadline, size)
            outcome = {0: "feasible", 1: "feasible", 2: "infeasible"}.get(status, "")
            if status == _SPENT:
                outcome = "undecided: time_limit spent"
            elif cols is None and status != 2:
                outcome = f"undecided: HiGHS status {status}"
        size["mips"] = self.solves - solves
        return outcome, (None if cols is None else used[cols]), size

    def _by_component(
        self, A, weight, row_comp, col_comp, n_comp, free, budget, deadline, size
    ) -> tuple[str, np.ndarray | None]:
        """Feasibility from each group's fewest centres with ``o`` outliers, ``f_g(o)``, for
        ``o = 0 .. free``, combined by a knapsack over the outlier budget: feasible iff the
        least total of centres is at most ``budget``.

        Each group's MIP is capped at ``budget`` minus lower bounds of the other groups; a capped
        MIP that is infeasible records ``cap + 1``, below the true value but already enough to
        put any total using it over the budget.
        """
        rows_of = [np.flatnonzero(row_comp == g) for g in range(n_comp)]
        cols_of = [np.flatnonzero(col_comp == g) for g in range(n_comp)]
        wsum = np.array([weight[r].sum() for r in rows_of])
        lower = (wsum > free).astype(np.int64)  # a group that cannot all be outliers needs one
        tables: list[list[tuple[int, np.ndarray]]] = []
        exact = True
        biggest = max(range(n_comp), key=lambda g: cols_of[g].size)
        for g in range(n_comp):
            R, C = rows_of[g], cols_of[g]
            Ag, wg = A[R][:, C], weight[R]
            cap = budget - int(lower.sum() - lower[g])
            if cap < lower[g]:
                return f"infeasible: groups need more than {budget} centres", None
            # f_g is non-increasing in o: solve at both ends and bisect only where it changes
            top = int(min(free, wsum[g] - 1))  # from wsum[g] outliers on, f_g = 0
            vals: list[Any] = [None] * (top + 1)
            sols: list[Any] = [None] * (top + 1)
            proven = True

            def solve(o: int, g=g, Ag=Ag, wg=wg, C=C, cap=cap, vals=vals, sols=sols) -> str:
                nonlocal proven
                if o == 0 and (hits := np.flatnonzero(Ag.sum(axis=0) == Ag.shape[0])).size:
                    vals[0], sols[0] = 1, C[hits[:1]]  # one column covers the whole group
                    return ""
                sub = size if g == biggest and o == 0 else {}
                status, cols, opt = self._milp(Ag, wg, o, cap, deadline, sub, minimise=True)
                if status == _SPENT:
                    return "undecided: time_limit spent"
                if status == 2:  # more than cap centres
                    vals[o], sols[o] = cap + 1, np.empty(0, np.int64)
                    return ""
                if cols is None:
                    return f"undecided: HiGHS status {status}"
                proven &= opt
                vals[o], sols[o] = int(cols.size), C[cols]
                return ""

            todo = [0] if top == 0 else [0, top]
            intervals = [] if top == 0 else [(0, top)]
            for o in todo:
                if err := solve(o):
                    return err, None
            if vals[0] == 1:  # one centre is the least below wsum[g]
                vals[:], sols[:] = [1] * (top + 1), [sols[0]] * (top + 1)
                intervals = []
            while intervals:
                lo, hi = intervals.pop()
                if vals[lo] == vals[hi] or hi - lo < 2:
                    for o in range(lo + 1, hi):  # a solution with lo outliers fits o > lo
                        vals[o], sols[o] = vals[lo], sols[lo]
                    continue
                mid = (lo + hi) // 2
                if err := solve(mid):
                    return err, None
                intervals += [(lo, mid), (mid, hi)]
            table = list(zip(vals, sols, strict=True))
            if wsum[g] <= free:  # every row of the group may be an outlier
                table.append((0, np.empty(0, np.int64)))
            tables.append(table)
            exact &= proven
            if proven:
                lower[g] = max(lower[g], table[-1][0])
        total, choice = _knapsack([[f for f, _ in t] for t in tables], free)
        if total > budget:
            if not exact:
                return "undecided: a group's MIP stopped at the time limit", None
            return f"infeasible: groups need {total} centres", None
        return "feasible", np.concatenate([tables[g][o][1] for g, o in enumerate(choice)])

    def _milp(
        self,
        A: Any,
        weight: np.ndarray,
        free: int,
        budget: int,
        deadline: float | None,
        size: dict,
        *,
        minimise: bool = False,
    ) -> tuple[int, np.ndarray | None, bool]:
        """Solve the covering MIP under ``Σ u <= budget``: feasibility, or with ``minimise``
        the fewest centres. Returns (HiGHS status, centre columns or None, proven optimal);
        status ``_SPENT`` when ``deadline`` has passed (no solve).

        With a deadline HiGHS runs without presolve: on these dense covering matrices its
        presolve removes nothing (the reductions above did that) and does not stop at the time
        limit (20 s past a 2 s limit on a 1141 × 1414 MIP that solves in 0.6 s without it)."""
        from scipy import sparse
        from scipy.optimize import Bounds, LinearConstraint, milp

        k, m = A.shape
        nvar = m + (k if free else 0)
        cons = []
        if free:  # one continuous ξ per (merged) row, counted with the row's multiplicity
            A = sparse.hstack([A, sparse.eye_array(k)], format="csr")
            xi_row = sparse.csr_array(np.r_[np.zeros(m), weight][None, :])
            cons.append(LinearConstraint(xi_row, -np.inf, free))
        cons.append(LinearConstraint(A, 1.0, np.inf))
        centres = np.r_[np.ones(m), np.zeros(nvar - m)]
        cons.append(LinearConstraint(sparse.csr_array(centres[None, :]), -np.inf, budget))
        size |= {
            "variables": nvar,
            "integer_variables": m,
            "constraints": k + len(cons) - 1,
            "nonzeros": int(A.nnz + m + (k if free else 0)),
        }
        options: dict[str, Any] = {"disp": False, "presolve": True, "mip_rel_gap": 0.0}
        if deadline is not None:
            left = deadline - time.perf_counter()
            if left <= 0:
                return _SPENT, None, False
            options |= {"time_limit": left, "presolve": False}
        self.solves += 1
        res = milp(
            centres if minimise else np.zeros(nvar),
            constraints=cons, integrality=centres, bounds=Bounds(0, 1), options=options,
        )  # fmt: skip
        if res.x is None or res.status not in (0, 1):
            return int(res.status), None, False
        return int(res.status), np.flatnonzero(res.x[:m] > 0.5), res.status == 0


def _knapsack(costs: list[list[int]], free: int) -> tuple[int, list[int]]:
    """Least ``Σ_g costs[g][o_g]`` over ``Σ o_g <= free`` (``costs[g][o]`` is non-increasing in
    ``o`` and constant past its end), and the minimising ``o_g``."""
    best = np.zeros(free + 1, dtype=np.int64)  # best[o]: fewest centres with o outliers so far
    picks = []
    for cost in costs:
        c = np.array([cost[min(o, len(cost) - 1)] for o in range(free + 1)], dtype=np.int64)
        new = np.full(free + 1, np.iinfo(np.int64).max)
        arg = np.zeros(free + 1, dtype=np.int64)
        for o in range(free + 1):
            cand = best[o::-1] + c[: o + 1]  # t outliers here, o - t before
            arg[o] = int(np.argmin(cand))
            new[o] = cand[arg[o]]
        best = new
        picks.append(arg)
    choice, o = [], free
    for arg, cost in zip(reversed(picks), reversed(costs), strict=True):
        t = int(arg[o])
        choice.append(min(t, len(cost) - 1))
        o -= t
    return int(best[free]), choice[::-1]


def _reduce(A: Any, *, outliers: bool) -> tuple[Any, np.ndarray, np.ndarray]:
    """Dominance reductions of the covering matrix ``A`` (rows: points, columns: centres).

    Returns the reduced matrix, the kept columns and each kept row's multiplicity. Both steps
    keep feasibility exactly (and a reduced solution covers every original row):

    - a column whose covered rows are a subset of another column's is dropped: a solution using
      it stays feasible with the other one instead (of equal columns the first is kept);
    - without outliers, a row whose centres are a superset of another row's is dropped: covering
      the other covers it (of equal rows the first is kept). With outliers, only equal rows are
      merged, the merged row counting its multiplicity against Ξ.

    Repeated until nothing changes: either step can enable the other. HiGHS's own presolve does
    not find these on covering matrices, and they shrink the hard MIPs several times over.
    """
    from scipy import sparse

    A = sparse.csr_array(A)
    keep = np.arange(A.shape[1])
    weight = np.ones(A.shape[0])
    while True:
        drop = _dominated(A, strict_too=not outliers)  # rows: those containing another
        if outliers and drop.any():
            # merge each dropped (equal) row into the first of its kind
            first = _first_equal(A)
            np.add.at(weight, first[drop], weight[drop])
        A, weight = A[~drop], weight[~drop]
        At = sparse.csr_array(A.T)
        dropc = _dominated(At, strict_too=True, subset_dropped=True)
        A, keep = sparse.csr_array(sparse.csc_array(A)[:, ~dropc]), keep[~dropc]
        if not drop.any() and not dropc.any():
            return A, keep, weight


#: row pairs _dominated may list (each about 20 bytes through the sparse product)
_OVERLAP_LIMIT = 2e7


def _overlaps(A: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, |S_i ∩ S_j|, |S_i|) for every pair of distinct rows of 0/1 ``A`` that overlap."""
    size = np.asarray(A.sum(axis=1)).ravel()
    ov = (A @ A.T).tocoo()
    off = ov.row != ov.col
    return ov.row[off], ov.col[off], ov.data[off], size


def _dominated(A: Any, *, strict_too: bool, subset_dropped: bool = False) -> np.ndarray:
    """Rows to drop: each has a row ``S_k ⊆ S_i`` (or the reverse with ``subset_dropped``).

    Equal rows: all but the lowest index are dropped. Strict inclusions only with ``strict_too``.
    None are dropped when the row overlaps would be too many to list (``A Aᵀ`` has up to
    Σ_columns count² entries: 10k points over 4 candidates took 4.7 GB): the reductions only
    shrink the MIP, which is exact without them.
    """
    counts = np.bincount(A.indices, minlength=A.shape[1]).astype(np.float64)  # per column
    if float(counts @ counts) > _OVERLAP_LIMIT:
        drop = np.zeros(A.shape[0], dtype=bool)
        if subset_dropped:
            drop |= np.diff(A.indptr) == 0
        return drop
    i, j, inter, size = _overlaps(A)
    sub = inter == size[i]  # S_i ⊆ S_j
    equal = sub & (size[i] == size[j])
    drop = np.zeros(A.shape[0], dtype=bool)
    drop[j[equal & (i < j)]] = True
    if strict_too:
        strict = sub & ~equal
        drop[(i if subset_dropped else j)[strict]] = True
    if subset_dropped:
        drop |= size == 0  # the empty set is a subset of anything
    return drop


def _first_equal(A: Any) -> np.ndarray:
    """For each row the lowest index of the rows equal to it (itself when unique)."""
    i, j, inter, size = _overlaps(A)
    equal = (inter == size[i]) & (size[i] == size[j])
    first = np.arange(A.shape[0])
    np.minimum.at(first, j[equal], i[equal])
    return first
