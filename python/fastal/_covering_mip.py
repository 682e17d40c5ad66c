"""The problem robust k-center bisects over: distances, radii and the covering MIPs.

:class:`_Problem` holds the float64 distances of the unlabeled points to the eligible centres and
to the labeled set (computed by :func:`_indexed_distances` in calls small enough for Ctrl-C), the
radii and greedy solutions read from them, and the decision at a radius: the covering form of
eq. 6 solved by HiGHS through :func:`scipy.optimize.milp`, whole, or per connected group of points
with :func:`_knapsack` over the outlier split. :func:`fastal.robust_kcenter.robust_kcenter` builds
one per call and asks it at each bisection step.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from . import _ext
from ._covering_reductions import _reduce

#: ``_milp``'s status when its deadline had passed before the solve (HiGHS statuses are >= 0)
_SPENT = -1
# Squared differences per distance-kernel call (about 0.1 s): Ctrl-C is taken between calls.
_DISTANCE_WORK = 1 << 27


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
