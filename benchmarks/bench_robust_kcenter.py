"""Robust k-center (Sener & Savarese 2018, Alg. 2; issue 8): fastal against the plain MIP, same run.

Pool: a 20-component Gaussian mixture (centres N(0, 100 I), spread 0.5) of ``n`` float32 rows of
``d`` features, 1 % of them labeled (the first rows), no outliers (Ξ = 0, the paper's
``1e-4 · n`` below 10,000 points), ``b`` new centres.

``fastal``     ``fastal.robust_kcenter.robust_kcenter(X, b, labeled, outliers=0)``: greedy, then
               bisection over the candidate radii with one HiGHS MIP per step, shrunk by exact
               dominance reductions and split into the connected groups of the pairs within δ.
``plain_mip``  written here, Alg. 2 as a user would write it with ``scipy.optimize.milp`` (the
               same HiGHS): float64 distances by ``scipy.spatial.distance.cdist``, k-center greedy
               for δ₂OPT, bisection over the distinct point-to-centre distances (to a candidate,
               or to the nearest labeled point) in ``[δ₂OPT / 2, δ₂OPT]``, each step the
               feasibility MIP of eq. 6 in its covering form
               (``Σ_{j: d(i, j) <= δ} u_j >= 1`` for every unlabeled point not within δ of the
               labeled set, ``Σ u_j <= b``, binary ``u``) on the whole pool. Eq. 6 written
               literally, with the ``n²`` assignment variables, is far larger still.
               ``FASTAL_BENCH_MIP_S`` (default 600) bounds each of its solves; a solve that stops
               there ends the case as not proven optimal (``extra_info["optimal"]``).

Both are exact, so their radii must agree (checked to 1e-9 relative when both are proven optimal;
distinct centre sets with the same radius are fine). Sizes by ``FASTAL_BENCH``: tiny (n = 300,
d = 8, b = 10; CI), medium (n ∈ {1000, 2000}, d = 32, b = n / 50), full (medium plus n = 3000).
``extra_info`` carries the sizes, ``seconds``, ``radius``, ``greedy_radius``, ``mip_solves`` and,
for fastal, ``speedup_vs_plain_mip`` measured earlier in the same session.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from fastal.robust_kcenter import robust_kcenter

PRESET = os.environ.get("FASTAL_BENCH", "tiny").strip().lower() or "tiny"
#: (n, d, budget)
CASES = {
    "tiny": [(300, 8, 10)],
    "medium": [(1000, 32, 20), (2000, 32, 40)],
    "full": [(1000, 32, 20), (2000, 32, 40), (3000, 32, 60)],
}[PRESET]
MIP_SECONDS = float(os.environ.get("FASTAL_BENCH_MIP_S", "600"))
_RESULTS: dict = {}


def make_pool(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(20, d))
    X = centres[rng.integers(20, size=n)] + rng.normal(scale=0.5, size=(n, d))
    return X.astype(np.float32), np.arange(max(1, n // 100))


def plain_mip(X: np.ndarray, budget: int, labeled: np.ndarray) -> dict:
    """Alg. 2 with the covering MIP on the whole pool: see the module docstring."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix, vstack
    from scipy.spatial.distance import cdist

    X = X.astype(np.float64)
    n = X.shape[0]
    unl = np.setdiff1d(np.arange(n), labeled)
    D = cdist(X[unl], X[unl])  # unlabeled points × candidate centres (every unlabeled point)
    to_lab = cdist(X[unl], X[labeled]).min(1)
    # k-center greedy (Alg. 1): δ₂OPT
    mind, centres = to_lab.copy(), []
    for _ in range(budget):
        j = int(np.argmax(mind))
        centres.append(j)
        mind = np.minimum(mind, D[:, j])
    greedy_radius = float(mind.max())
    # the optimum is a point's distance to a new centre or to its nearest labeled point
    radii = np.unique(np.r_[D.ravel(), to_lab])
    radii = radii[(radii >= greedy_radius / 2) & (radii <= greedy_radius)]
    solves, optimal = 0, True

    def feasible(delta: float) -> bool:
        nonlocal solves, optimal
        rows = to_lab > delta  # points the labeled set does not cover
        if not rows.any():
            return True
        cover = csr_matrix(D[rows] <= delta, dtype=np.float64)
        A = vstack([cover, csr_matrix(np.ones((1, unl.size)))])
        lower = np.r_[np.ones(cover.shape[0]), 0.0]
        upper = np.r_[np.full(cover.shape[0], np.inf), budget]
        solves += 1
        res = milp(np.zeros(unl.size), constraints=LinearConstraint(A, lower, upper),
                   integrality=np.ones(unl.size), bounds=Bounds(0, 1),
                   options={"time_limit": MIP_SECONDS})  # fmt: skip
        if res.status not in (0, 2):  # 0 optimal (feasible), 2 infeasible; else undecided
            optimal = False
        return res.status == 0 or res.x is not None

    lo, hi = 0, int(np.searchsorted(radii, greedy_radius))  # radii[hi]: feasible (greedy)
    while lo < hi and optimal:
        mid = (lo + hi) // 2
        if feasible(float(radii[mid])):
            hi = mid
        else:
            lo = mid + 1
    radius = float(radii[hi]) if radii.size else greedy_radius
    return {"radius": radius, "greedy_radius": greedy_radius, "mip_solves": solves,
            "optimal": optimal}  # fmt: skip


@pytest.mark.parametrize("impl", ["plain_mip", "fastal"])
@pytest.mark.parametrize(("n", "d", "budget"), CASES, ids=[f"n{n}-d{d}-b{b}" for n, d, b in CASES])
def test_robust_kcenter(benchmark, impl, n, d, budget):
    benchmark.group = f"robust_kcenter/cpu/n={n}/d={d}/b={budget}"
    X, labeled = make_pool(n, d)
    key = (n, d, budget)
    # both sides once on a tiny pool first, outside the timing (scipy's imports, first calls)
    tiny, tiny_lab = make_pool(60, d, seed=1)
    plain_mip(tiny, 3, tiny_lab) if impl == "plain_mip" else robust_kcenter(tiny, 3, tiny_lab)
    start = time.perf_counter()
    if impl == "plain_mip":
        out = benchmark.pedantic(lambda: plain_mip(X, budget, labeled), rounds=1, iterations=1)
    else:
        res = benchmark.pedantic(
            lambda: robust_kcenter(X, budget, labeled, outliers=0), rounds=1, iterations=1
        )
        assert len(set(res.indices.tolist())) == budget
        out = {"radius": res.radius, "greedy_radius": res.greedy_radius,
               "mip_solves": res.diagnostics["mip_solves"], "optimal": res.optimal}  # fmt: skip
    # benchmark.stats is None with --benchmark-disable: the wall clock of the one round then
    seconds = benchmark.stats.stats.min if benchmark.stats else time.perf_counter() - start
    _RESULTS[(key, impl)] = dict(out, seconds=seconds)
    info = dict(out, n=n, d=d, budget=budget, impl=impl, seconds=seconds)
    peer = _RESULTS.get((key, "plain_mip"))
    if impl == "fastal" and peer is not None:
        info["speedup_vs_plain_mip"] = peer["seconds"] / seconds
        if peer["optimal"] and out["optimal"]:
            np.testing.assert_allclose(out["radius"], peer["radius"], rtol=1e-9)
    benchmark.extra_info.update(info)
