"""k-means++ seeding with the k-center pruning test (CPU): pruned against unpruned, same run.

Pools: the 100-component Gaussian mixture of ``bench_kcenter.py`` (centres N(0, I), points
centre + N(0, 0.25² I)), where the test skips most rows once the centres are many, and a Gaussian
pool N(0, I), where it skips none (what pruning costs there); ``n`` float32 rows of ``d`` features,
``k`` picks from a random first row. BADGE and the k-means init run this seeding.

``unpruned``  ``fastal.kmeans_pp(X, k, seed=0, prune=False)``: one full pass per pick.
``pruned``    ``fastal.kmeans_pp(X, k, seed=0)``: rows that the new centre provably cannot bring
              closer are not read (a block the test keeps for the most part is read whole).

Both are timed through ``fastal._seeding._kmeans_pp``, the function behind ``kmeans_pp`` that also
returns the rows read (``stats``); the public call adds only its argument checks.

The draws are the same (asserted). ``extra_info`` carries the sizes, ``seconds`` (best of the
rounds), ``rows_read_fraction`` (rows read over those of the full passes, the test's centres
included) and, for ``pruned``, ``speedup_vs_unpruned`` measured earlier in the same session.
Sizes by ``FASTAL_BENCH``: tiny (n = 5,000, d = 64, k = 50; CI), medium (n = 100k, d ∈ {128, 512},
k ∈ {100, 1000}), full (medium plus n = 1M at k = 1000).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastal._seeding as seeding

PRESET = os.environ.get("FASTAL_BENCH", "tiny").strip().lower() or "tiny"
#: (n, d, k)
CASES = {
    "tiny": [(5000, 64, 50)],
    "medium": [(100_000, d, k) for d in (128, 512) for k in (100, 1000)],
    "full": [(100_000, d, k) for d in (128, 512) for k in (100, 1000)]
    + [(1_000_000, d, 1000) for d in (128, 512)],
}[PRESET]
_TIMES: dict = {}
_PICKS: dict = {}
_POOLS: dict = {}


def make_pool(kind: str, n: int, d: int, seed: int = 0) -> np.ndarray:
    key = (kind, n, d)
    if key not in _POOLS:
        _POOLS.clear()  # one pool at a time (2 GB at n = 1M, d = 512)
        rng = np.random.default_rng(seed)
        if kind == "mixture":
            centres = rng.standard_normal((100, d), dtype=np.float32)
            X = centres[rng.integers(100, size=n)]
            X += 0.25 * rng.standard_normal((n, d), dtype=np.float32)
        else:
            X = rng.standard_normal((n, d), dtype=np.float32)
        _POOLS[key] = X
    return _POOLS[key]


@pytest.mark.parametrize("impl", ["unpruned", "pruned"])
@pytest.mark.parametrize("kind", ["mixture", "gaussian"])
@pytest.mark.parametrize(("n", "d", "k"), CASES, ids=[f"n{n}-d{d}-k{k}" for n, d, k in CASES])
def test_kmeanspp_prune(benchmark, impl, kind, n, d, k):
    benchmark.group = f"kmeans++ prune/cpu/{kind}/n={n}/d={d}/k={k}"
    X = make_pool(kind, n, d)
    stats: dict = {}

    def run():
        return np.asarray(seeding._kmeans_pp(X, k, seed=0, prune=impl == "pruned", stats=stats))

    picks = benchmark.pedantic(run, rounds=2 if n * d * k <= 1e11 else 1, iterations=1)
    key = (kind, n, d, k)
    _PICKS[(key, impl)] = picks
    if (key, "unpruned") in _PICKS and (key, "pruned") in _PICKS:
        np.testing.assert_array_equal(_PICKS[(key, "pruned")], _PICKS[(key, "unpruned")])
    full_rows = k * n - k * (k + 1) // 2  # a full pass after pick t reads n - t - 1 rows
    seconds = benchmark.stats.stats.min if benchmark.stats else float("nan")
    _TIMES[(key, impl)] = seconds
    benchmark.extra_info.update(
        n=n, d=d, k=k, pool=kind, impl=impl, seconds=seconds, pruned=bool(stats["pruned"]),
        rows_read_fraction=stats["rows_read"] / full_rows,
    )  # fmt: skip
    if impl == "pruned" and (key, "unpruned") in _TIMES:
        benchmark.extra_info["speedup_vs_unpruned"] = _TIMES[(key, "unpruned")] / seconds
