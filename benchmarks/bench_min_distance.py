"""Min-distance to a set: the nearest of ``m`` rows of ``Y`` for each of ``n`` rows of ``X``.

This is what starting k-center or k-means++ from a labeled set costs (``Y`` = the labeled rows).
Pools are the conftest's Gaussian pools (N(0, I), float32); ``Y`` is ``m`` rows of
N(0, 1.5² I) drawn apart from the pool. Implementations, timed in the same run (groups
``min_distance/n=../m=../d=..``):

``fastal``       ``fastal.min_distance(X, Y)``: sums of squared differences, float32.
``fastal_f16``   the same on float16 storage of the same values (float32 accumulation).
``torch_cdist``  ``torch.cdist(X[s], Y).min(1)`` over chunks of 8192 rows (its matrix-product
                 path: not exact near ties).
``torch_mm``     ``|y|² - 2 X[s] Yᵀ`` by ``addmm`` and ``min(1)`` over the same chunks, then
                 ``+ |x|²``: what a user writes by hand.
``sklearn``      ``sklearn.metrics.pairwise_distances_argmin_min(X, Y)`` (chunked, matrix product).
``faiss``        ``faiss.IndexFlatL2(d)`` holding ``Y``, ``search(X, 1)`` (matrix product).

Every case records ``seconds`` (the best round); fastal's records ``speedup_vs_<peer>`` (peer
seconds over fastal's), and every peer's ``index_agreement`` with fastal's arg-min (1.0 means
equal on every row; a peer computing by matrix products may differ where two rows of ``Y`` are
nearly tied). ``m`` comes from the preset's budgets (``FASTAL_BENCH_M`` overrides), ``n`` and
``d`` from the preset.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import pytest

from .conftest import _int_list, gauss_pool

IMPLS = ("torch_cdist", "torch_mm", "sklearn", "faiss", "fastal_f16", "fastal")
CHUNK = 8192

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@dataclass(frozen=True)
class Case:
    impl: str
    n: int
    m: int
    d: int

    @property
    def group(self) -> str:
        return f"min_distance/n={self.n}/m={self.m}/d={self.d}"

    @property
    def key(self) -> tuple:
        return (self.n, self.m, self.d, self.impl)


def generate_cases(metafunc, sizes, cuda: bool) -> None:
    if "case" not in metafunc.fixturenames:
        return
    ms = _int_list("FASTAL_BENCH_M") or sizes.budgets
    cases = [Case(i, n, m, d) for n in sizes.ns for m in ms for d in sizes.ds for i in IMPLS]
    cases = [c for c in cases if c.m <= c.n]
    metafunc.parametrize("case", [pytest.param(c, id=f"{c.group}-{c.impl}") for c in cases])


# ---------------------------------------------------------------------------------------------
# the implementations: (X, Y) -> (distances, indices) as numpy


def run_fastal(X, Y):
    import fastal

    dist, index = fastal.min_distance(X, Y)
    return np.asarray(dist), np.asarray(index)


def run_fastal_f16(X, Y):
    return run_fastal(X, Y)  # given float16 torch tensors (see test_min_distance)


def run_torch_cdist(X, Y):
    import torch

    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    parts = [torch.cdist(x[s : s + CHUNK], y).min(1) for s in range(0, x.shape[0], CHUNK)]
    return (
        torch.cat([p.values for p in parts]).numpy(),
        torch.cat([p.indices for p in parts]).numpy(),
    )


def run_torch_mm(X, Y):
    import torch

    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    ysq = (y * y).sum(1)
    dist, index = [], []
    for s in range(0, x.shape[0], CHUNK):
        b = x[s : s + CHUNK]
        best = torch.addmm(ysq[None, :], b, y.T, alpha=-2).min(1)
        dist.append((best.values + (b * b).sum(1)).clamp_min_(0).sqrt_())
        index.append(best.indices)
    return torch.cat(dist).numpy(), torch.cat(index).numpy()


def run_sklearn(X, Y):
    from sklearn.metrics import pairwise_distances_argmin_min

    index, dist = pairwise_distances_argmin_min(X, Y)
    return dist, index


def run_faiss(X, Y):
    import faiss

    index = faiss.IndexFlatL2(Y.shape[1])
    index.add(Y)
    dist2, nearest = index.search(X, 1)
    return np.sqrt(np.maximum(dist2[:, 0], 0)), nearest[:, 0].astype(np.int64)


RUN = {
    "fastal": run_fastal,
    "fastal_f16": run_fastal_f16,
    "torch_cdist": run_torch_cdist,
    "torch_mm": run_torch_mm,
    "sklearn": run_sklearn,
    "faiss": run_faiss,
}
MODULE = {"sklearn": "sklearn.metrics", "faiss": "faiss"}


@functools.lru_cache(maxsize=4)
def labeled_rows(m: int, d: int) -> np.ndarray:
    """Y: m rows of N(0, 1.5² I), independent of the pool."""
    return gauss_pool(m, d, seed=1) * np.float32(1.5)


def test_min_distance(benchmark, case: Case, sizes, pools, results, skip_log):
    info = {"family": "min_distance", **asdict(case), "preset": sizes.preset}
    try:
        __import__(MODULE.get(case.impl, "torch"))
    except Exception as e:  # an optional peer that fails to import is skipped with the reason
        reason = f"{case.impl} not importable: {type(e).__name__}: {e}"
        skip_log.append({**info, "group": case.group, "reason": reason})
        pytest.skip(reason)
    X, Y = pools.get("gauss", case.n, case.d), labeled_rows(case.m, case.d)
    if case.impl == "fastal_f16":
        import torch

        X, Y = pools.get("gauss", case.n, case.d, "float16", "torch"), torch.from_numpy(Y).half()
    run = RUN[case.impl]
    run(X[:256], Y)  # warm imports and thread pools, untimed
    times: list[float] = []
    outputs: list = []

    def target():
        t0 = time.perf_counter()
        outputs.append(run(X, Y))
        times.append(time.perf_counter() - t0)

    estimate = case.n * case.m * case.d / 5e10  # seconds at 50 G squared differences a second
    rounds = int(min(5, max(1, sizes.target_seconds // max(estimate, 1e-9))))
    benchmark.group = case.group
    benchmark.pedantic(target, rounds=rounds, iterations=1)
    seconds = min(times)
    dist, index = outputs[-1]
    assert dist.shape == index.shape == (case.n,)
    assert np.all((index >= 0) & (index < case.m))
    extra = benchmark.extra_info
    extra.update(info, seconds=seconds, rounds=len(times))
    if case.impl == "fastal":
        for peer in IMPLS[:-1]:
            other = results.get(replace(case, impl=peer).key)
            if other is not None:
                extra[f"speedup_vs_{peer}"] = other["seconds"] / seconds
                extra[f"index_agreement_{peer}"] = float(np.mean(other["index"] == index))
    results[case.key] = {"seconds": seconds, "index": np.asarray(index)}
