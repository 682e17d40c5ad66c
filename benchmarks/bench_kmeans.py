"""k-means (Lloyd) and k-means++ seeding: fastal against scikit-learn and faiss, in the same run.

Pools are the conftest's Gaussian pools (N(0, I), float32). Every Lloyd case starts from the same
initial centres, ``k`` distinct rows drawn with a fixed seed, and runs with ``tol = 0``:

``fastal``   ``fastal.kmeans(X, k, init=C0, max_iter=m, tol=0)``.
``sklearn``  ``sklearn.cluster.KMeans(k, init=C0, n_init=1, max_iter=m, tol=0, algorithm="lloyd")``.
``faiss``    ``faiss.Kmeans(d, k, niter=m, max_points_per_centroid=2**30,
             min_points_per_centroid=1)`` trained with ``init_centroids=C0`` (no subsampling of
             the pool), then ``assign(X)`` for the final labels and inertia (fastal and
             scikit-learn also end with an assignment to the final centres). faiss re-seeds an
             empty cluster by splitting a large one; fastal and scikit-learn move the farthest
             row into it.

Kinds (groups ``kmeans/<kind>/n=../d=../k=..``):

``iter1``  one Lloyd iteration (``max_iter = 1``), set-up and final assignment included.
``fit``    ``max_iter = m`` iterations (``FASTAL_BENCH_KMEANS_ITER``; 3 at tiny, 10 otherwise).
           ``per_iter_s = (fit - iter1) / (n_iter - 1)`` is the marginal cost of one iteration
           (set-up and the final assignment cancel); fastal and scikit-learn stop early only when no
           label changes (``n_iter`` records it).
``pp``     k-means++ seeding of ``k`` centres: ``fastal.kmeans_pp(X, k, first="random")`` against
           ``sklearn.cluster.kmeans_plusplus`` with ``n_local_trials=1`` (``sklearn_t1``, plain D²
           sampling like fastal's) and with its default greedy ``2 + log k`` trials
           (``sklearn_greedy``). scikit-learn is timed over ``Sizes.peer_steps(n, d, k)`` centres
           (its trials fixed to the k-centre value) and extrapolated from a one-centre run, like the
           peers of ``bench_badge.py``. ``potential`` is the seeding's inertia (sum over rows of the
           squared distance to the nearest seed) where the whole ``k`` was drawn.

``k`` comes from the preset's budgets (100 and 1000 at medium; ``FASTAL_BENCH_K`` overrides), ``n``
and ``d`` from the preset. ``report_badge.py`` writes the tables.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import pytest

SEED = 0
LLOYD = ("sklearn", "faiss", "fastal")
PP = ("sklearn_t1", "sklearn_greedy", "fastal")

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]


@dataclass(frozen=True)
class Case:
    kind: str  # "iter1" | "fit" | "pp"
    impl: str
    n: int
    d: int
    k: int

    @property
    def group(self) -> str:
        return f"kmeans/{self.kind}/n={self.n}/d={self.d}/k={self.k}"

    @property
    def id(self) -> str:
        return f"{self.kind}-n{self.n}-d{self.d}-k{self.k}-{self.impl}"

    @property
    def key(self) -> tuple:
        return (self.kind, self.n, self.d, self.k, self.impl)


def _ints(name: str) -> tuple[int, ...] | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return tuple(int(v) for v in raw.replace(" ", "").split(",") if v)
    except ValueError:
        raise pytest.UsageError(f"{name} must be comma-separated integers, got {raw!r}") from None


def fit_iters(sizes) -> int:
    v = _ints("FASTAL_BENCH_KMEANS_ITER")
    return v[0] if v else (3 if sizes.preset == "tiny" else 10)


def generate_cases(metafunc, sizes, cuda: bool) -> None:
    if "case" not in metafunc.fixturenames:
        return
    ks = _ints("FASTAL_BENCH_K") or sizes.budgets
    cases = []
    for n in sizes.ns:
        for d in sizes.ds:
            for k in ks:
                if k >= n:
                    continue
                cases += [Case(kind, i, n, d, k) for kind in ("iter1", "fit") for i in LLOYD]
                cases += [Case("pp", i, n, d, k) for i in PP]
    metafunc.parametrize("case", [pytest.param(c, id=c.id) for c in cases])


# ---------------------------------------------------------------------------------------------
# the implementations


def initial_centres(X: np.ndarray, k: int) -> np.ndarray:
    rows = np.random.default_rng((SEED, X.shape[0], k)).choice(X.shape[0], k, replace=False)
    return np.ascontiguousarray(X[np.sort(rows)])


def lloyd_fastal(X, C0, iters: int) -> dict:
    import fastal

    r = fastal.kmeans(X, C0.shape[0], init=C0, max_iter=iters, tol=0.0)
    return {"inertia": r.inertia, "n_iter": r.n_iter, "labels": np.asarray(r.labels)}


def lloyd_sklearn(X, C0, iters: int) -> dict:
    from sklearn.cluster import KMeans

    k = C0.shape[0]
    km = KMeans(k, init=C0, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd", random_state=SEED)
    km.fit(X)
    return {"inertia": float(km.inertia_), "n_iter": int(km.n_iter_), "labels": km.labels_}


def lloyd_faiss(X, C0, iters: int) -> dict:
    import faiss

    k, d = C0.shape
    km = faiss.Kmeans(
        d, k, niter=iters, max_points_per_centroid=1 << 30, min_points_per_centroid=1, seed=SEED
    )
    km.train(X, init_centroids=C0)
    dist, labels = km.assign(X)
    return {
        "inertia": float(dist.sum(dtype=np.float64)),
        "n_iter": len(km.obj),
        "labels": labels.astype(np.int64),
    }


def pp_fastal(X, k: int, k_full: int) -> np.ndarray:
    import fastal

    return np.asarray(fastal.kmeans_pp(X, k, seed=SEED, first="random"))


def _pp_sklearn(X, k: int, trials: int) -> np.ndarray:
    from sklearn.cluster import kmeans_plusplus

    _, idx = kmeans_plusplus(X, k, random_state=SEED, n_local_trials=trials)
    return np.asarray(idx, dtype=np.int64)


def pp_sklearn_t1(X, k: int, k_full: int) -> np.ndarray:
    return _pp_sklearn(X, k, 1)


def pp_sklearn_greedy(X, k: int, k_full: int) -> np.ndarray:
    return _pp_sklearn(X, k, 2 + int(np.log(k_full)))  # scikit-learn's default for k_full


LLOYD_RUN = {"fastal": lloyd_fastal, "sklearn": lloyd_sklearn, "faiss": lloyd_faiss}
PP_RUN = {"fastal": pp_fastal, "sklearn_t1": pp_sklearn_t1, "sklearn_greedy": pp_sklearn_greedy}


def potential(X: np.ndarray, rows: np.ndarray) -> float:
    """Sum of squared distances of the rows of X to their nearest seed (torch GEMM, float64 sum)."""
    import torch

    x = torch.from_numpy(X)
    c = x[torch.from_numpy(np.asarray(rows, dtype=np.int64))].double()
    csq = (c * c).sum(1)
    total = 0.0
    for s in range(0, x.shape[0], 8192):
        b = x[s : s + 8192].double()
        d2 = torch.addmm(csq[None, :], b, c.T, alpha=-2) + (b * b).sum(1, keepdim=True)
        total += float(d2.min(1).values.clamp_min(0).sum())
    return total


def import_reason(impl: str) -> str | None:
    mod = {"faiss": "faiss", "fastal": "fastal"}.get(impl, "sklearn.cluster")
    try:
        __import__(mod)
    except Exception as e:  # an optional peer that fails to import is skipped with the reason
        return f"{impl} not importable: {type(e).__name__}: {e}"
    return None


# ---------------------------------------------------------------------------------------------
# the benchmark


def plan_rounds(estimate_s: float, target_s: float) -> tuple[int, int]:
    if estimate_s >= target_s:
        return 1, 0
    return int(min(5, max(1, target_s // max(estimate_s, 1e-9)))), 1


def time_setup(fn) -> float:
    """Seconds of a one-seed run: the best of two where it is cheap (< 2 s), else one."""
    t0 = time.perf_counter()
    fn()
    best = time.perf_counter() - t0
    if best < 2.0:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def extrapolate(seconds: float, setup_s: float | None, steps: int, k: int) -> dict:
    """As ``bench_badge.extrapolate``: time for ``k`` seeds from ``steps`` seeds and one."""
    if setup_s is None:
        return {"per_pick_s": seconds / steps, "budget_s": seconds, "extrapolation_suspect": False}
    per_pick = max(seconds - setup_s, 0.0) / max(steps - 1, 1)
    return {
        "per_pick_s": per_pick,
        "budget_s": max(seconds, setup_s + per_pick * (k - 1)),
        "extrapolation_suspect": seconds - setup_s < 0.1 * seconds,
    }


def test_kmeans(benchmark, case: Case, sizes, pools, results, skip_log):
    info = {"family": "kmeans", **asdict(case), "preset": sizes.preset}
    reason = import_reason(case.impl)
    if reason:
        skip_log.append({**info, "group": case.group, "reason": reason})
        pytest.skip(reason)
    X = pools.get("gauss", case.n, case.d)
    n, d, k = case.n, case.d, case.k
    flops_iter = 2.0 * n * d * k
    times: list[float] = []
    outputs: list = []

    if case.kind == "pp":
        run_pp = PP_RUN[case.impl]
        steps = k if case.impl == "fastal" else min(k, sizes.peer_steps(n, d, k))
        run_pp(X[: min(n, 2048)], 2, k)  # warm imports and thread pools, untimed
        setup_s = None
        if steps < k:  # truncated: its set-up, measured next to the timed runs
            setup_s = time_setup(lambda: run_pp(X, 1, k))
        trials = 1 if case.impl != "sklearn_greedy" else 2 + int(np.log(k))
        estimate = steps * trials * n * d * 4 / 2e9

        def target():
            t0 = time.perf_counter()
            out = run_pp(X, steps, k)
            times.append(time.perf_counter() - t0)
            outputs.append(out)
            return out

    else:
        C0 = initial_centres(X, k)
        iters = 1 if case.kind == "iter1" else fit_iters(sizes)
        run = LLOYD_RUN[case.impl]
        run(X[: min(n, 4 * k)], initial_centres(X[: min(n, 4 * k)], k), 1)  # warm, untimed
        estimate = (iters + 1) * flops_iter / 2e10

        def target():
            t0 = time.perf_counter()
            out = run(X, C0, iters)
            times.append(time.perf_counter() - t0)
            outputs.append(out)
            return out

    rounds, warmup = plan_rounds(estimate, sizes.target_seconds)
    benchmark.group = case.group
    benchmark.pedantic(target, rounds=rounds, warmup_rounds=warmup, iterations=1)
    measured = times[warmup:] or times
    seconds = min(measured)
    extra = benchmark.extra_info
    extra.update(
        info,
        rounds=len(measured),
        seconds_min=seconds,
        seconds_median=statistics.median(measured),
    )

    if case.kind == "pp":
        picks = outputs[-1]
        assert picks.shape == (steps,)
        assert len(np.unique(picks)) == steps
        ext = extrapolate(seconds, setup_s, steps, k)
        total = ext["budget_s"]
        extra.update(
            steps=steps,
            trials=trials,
            per_step_s=seconds / steps,
            per_pick_s=ext["per_pick_s"],
            extrapolation_suspect=ext["extrapolation_suspect"],
            setup_s=setup_s,
            total_s=total,
            total_s_estimated=setup_s is not None,
        )
        if steps == k:
            extra["potential"] = potential(X, picks)
        if case.impl == "fastal":
            for peer in PP[:-1]:
                other = results.get(replace(case, impl=peer).key)
                if other is not None:
                    extra[f"speedup_vs_{peer}"] = other["total_s"] / total
        results[case.key] = {"total_s": total}
        return

    out = outputs[-1]
    assert out["labels"].shape == (n,)
    extra.update(
        inertia=out["inertia"],
        n_iter=out["n_iter"],
        max_iter=iters,
        per_iter_simple_s=seconds / max(out["n_iter"], 1),
        gflops_per_iter=flops_iter / 1e9,
    )
    per_iter = None
    if case.kind == "fit":
        one = results.get(replace(case, kind="iter1").key)
        if one is not None and out["n_iter"] > 1:
            per_iter = max(seconds - one["seconds"], 0.0) / (out["n_iter"] - 1)
            extra["iter1_s"] = one["seconds"]
        extra["per_iter_s"] = per_iter
    ref = results.get(replace(case, impl="sklearn").key)
    if ref is not None and case.impl != "sklearn":
        extra["inertia_rel_to_sklearn"] = out["inertia"] / ref["inertia"] - 1.0
        extra["labels_agree_sklearn"] = float(np.mean(out["labels"] == ref["labels"]))
    if case.impl == "fastal":
        for peer in LLOYD[:-1]:
            other = results.get(replace(case, impl=peer).key)
            if other is None:
                continue
            extra[f"speedup_vs_{peer}"] = other["seconds"] / seconds
            if per_iter and other.get("per_iter_s"):
                extra[f"per_iter_speedup_vs_{peer}"] = other["per_iter_s"] / per_iter
    results[case.key] = {
        "seconds": seconds,
        "per_iter_s": per_iter,
        "inertia": out["inertia"],
        "labels": out["labels"] if case.impl == "sklearn" else None,
    }
