"""k-means (Lloyd) and k-means++ seeding: fastal against scikit-learn and faiss, in the same run.

Pools are the conftest's Gaussian pools (N(0, I), float32). Every Lloyd case starts from the same
initial centres, ``k`` distinct rows drawn with a fixed seed, and runs with ``tol = 0``:

``fastal``   ``fastal.kmeans(X, k, init=C0, max_iter=m, tol=0)``: its default Lloyd, with
             Yinyang bounds (``prune=True``; ``extra_info["distance_share"]`` says how many of
             the ``n k`` distances per iteration it computed).
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

GPU cases (marked ``cuda``, ids starting ``cuda-``, so ``-k cuda`` selects them; skipped without a
CUDA device or without fastal's CUDA module), at every (n, d, k) of the CPU grid, on the same pool
moved to the device as a float32 torch tensor (the same initial centres and random stream as the
CPU cases), groups ``kmeans/cuda/<kind>/n=../d=../k=..``:

``pp``     ``fastal.kmeans_pp`` against ``torch``: a D² loop written here that stays on the
           device (``addmv`` distances, ``minimum``, float64 ``cumsum`` + ``searchsorted``; no
           host round trip per pick) and draws from fastal's stream (``default_rng(SEED)``:
           ``integers(n)`` then ``random(k)``), so its picks can be compared
           (``agree_prefix_torch``).
``iter1``  ``fastal.kmeans(..., max_iter=1)`` against ``torch``: one Lloyd iteration written here
           (chunked ``addmm`` arg-min assignment, ``index_add_`` sums; an empty cluster keeps its
           centre) and the final assignment, set-up included like the CPU case.

Timings synchronize the device inside the timed function; ``peak_device_bytes`` is
``torch.cuda.max_memory_allocated()`` over the timed runs after ``reset_peak_memory_stats()``
(the pool included), ``peak_device_extra_bytes`` that minus what was allocated just before.

``k`` comes from the preset's budgets (100 and 1000 at medium; ``FASTAL_BENCH_K`` overrides), ``n``
and ``d`` from the preset. ``report_badge.py`` writes the tables.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import pytest

from ._extrapolate import extrapolate, time_setup, timed, widen
from ._torch_peers import d2_sampling_torch

SEED = 0
LLOYD = ("sklearn", "faiss", "fastal")
PP = ("sklearn_t1", "sklearn_greedy", "fastal")
#: GPU cases: (kind, implementations), the peer first so that fastal's entries report ratios to it
GPU = (("pp", ("torch", "fastal")), ("iter1", ("torch", "fastal")))
NO_GPU = "needs a CUDA GPU and fastal built with its CUDA module"

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
    device: str = "cpu"  # "cpu" or "cuda"

    @property
    def group(self) -> str:
        where = "" if self.device == "cpu" else f"{self.device}/"
        return f"kmeans/{where}{self.kind}/n={self.n}/d={self.d}/k={self.k}"

    @property
    def id(self) -> str:
        where = "" if self.device == "cpu" else f"{self.device}-"
        return f"{where}{self.kind}-n{self.n}-d{self.d}-k{self.k}-{self.impl}"

    @property
    def key(self) -> tuple:
        return (self.device, self.kind, self.n, self.d, self.k, self.impl)


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
    cases, gpu = [], []
    for n in sizes.ns:
        for d in sizes.ds:
            for k in ks:
                if k >= n:
                    continue
                cases += [Case(kind, i, n, d, k) for kind in ("iter1", "fit") for i in LLOYD]
                cases += [Case("pp", i, n, d, k) for i in PP]
                gpu += [Case(kind, i, n, d, k, "cuda") for kind, impls in GPU for i in impls]
    no_gpu = pytest.mark.skipif(not cuda, reason=NO_GPU)
    params = [pytest.param(c, id=c.id) for c in cases]
    params += [pytest.param(c, id=c.id, marks=[pytest.mark.cuda, no_gpu]) for c in gpu]
    metafunc.parametrize("case", params)


# ---------------------------------------------------------------------------------------------
# the implementations


def initial_rows(n: int, k: int) -> np.ndarray:
    return np.sort(np.random.default_rng((SEED, n, k)).choice(n, k, replace=False))


def initial_centres(X, k: int):
    """``k`` distinct rows of X drawn with a fixed seed (a numpy array, or a torch tensor on X's
    device: the same rows either way)."""
    rows = initial_rows(X.shape[0], k)
    if isinstance(X, np.ndarray):
        return np.ascontiguousarray(X[rows])
    import torch

    return X[torch.from_numpy(rows).to(X.device)].contiguous()


def lloyd_fastal(X, C0, iters: int) -> dict:
    import fastal

    r = fastal.kmeans(X, C0.shape[0], init=C0, max_iter=iters, tol=0.0)  # default: prune=True
    return {"inertia": r.inertia, "n_iter": r.n_iter, "labels": r.labels,  # labels: X's framework
            "distance_share": r.distance_share}  # fmt: skip


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


def pp_fastal(X, k: int, k_full: int):
    """The picks in X's framework and device (:func:`to_numpy` after the timing)."""
    import fastal

    return fastal.kmeans_pp(X, k, seed=SEED, first="random")


def _pp_sklearn(X, k: int, trials: int) -> np.ndarray:
    from sklearn.cluster import kmeans_plusplus

    _, idx = kmeans_plusplus(X, k, random_state=SEED, n_local_trials=trials)
    return np.asarray(idx, dtype=np.int64)


def pp_sklearn_t1(X, k: int, k_full: int) -> np.ndarray:
    return _pp_sklearn(X, k, 1)


def pp_sklearn_greedy(X, k: int, k_full: int) -> np.ndarray:
    return _pp_sklearn(X, k, 2 + int(np.log(k_full)))  # scikit-learn's default for k_full


def pp_torch(X, k: int, k_full: int):
    """k-means++ (D² sampling, first pick uniform) in torch on X's device, fastal's random stream.

    Per pick one ``addmv`` distance pass ``|x|² + |c|² - 2 X c``, ``minimum`` into the running
    distances, a float64 ``cumsum`` and ``searchsorted`` for the draw: O(n d) per pick like fastal,
    with the picks kept as device tensors (no host round trip per pick).
    """
    import torch

    n = X.shape[0]
    rng = np.random.default_rng(SEED)  # fastal.kmeans_pp's stream: integers(n), then random(k)
    first = int(rng.integers(n))
    u = torch.from_numpy(rng.random(k)).to(X.device)
    sq = (X * X).sum(1)
    return d2_sampling_torch(X, sq, torch.tensor([first], device=X.device), u, k)


def _assign_torch(X, xsq, centres, chunk: int = 1 << 16):
    """(labels, squared distances) of the rows of X to their nearest centre: chunked addmm."""
    import torch

    csq = (centres * centres).sum(1)
    labels = torch.empty(X.shape[0], dtype=torch.int64, device=X.device)
    dist = torch.empty(X.shape[0], dtype=X.dtype, device=X.device)
    for s in range(0, X.shape[0], chunk):
        d2 = torch.addmm(csq[None, :], X[s : s + chunk], centres.T, alpha=-2)
        best = d2.min(1)
        labels[s : s + chunk] = best.indices
        dist[s : s + chunk] = (best.values + xsq[s : s + chunk]).clamp_min_(0)
    return labels, dist


def lloyd_torch(X, C0, iters: int) -> dict:
    """Lloyd in torch on X's device: assignment by chunked ``addmm`` arg-min, update by
    ``index_add_`` sums over ``bincount`` counts (an empty cluster keeps its centre), then the
    final assignment; the labels stay on the device."""
    import torch

    k = C0.shape[0]
    xsq = (X * X).sum(1)
    centres = C0.clone()
    for _ in range(iters):
        labels, _ = _assign_torch(X, xsq, centres)
        sums = torch.zeros_like(centres).index_add_(0, labels, X)
        counts = torch.bincount(labels, minlength=k).to(X.dtype)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    labels, dist = _assign_torch(X, xsq, centres)
    return {"inertia": float(dist.sum(dtype=torch.float64)), "n_iter": iters, "labels": labels}


LLOYD_RUN = {
    "fastal": lloyd_fastal,
    "sklearn": lloyd_sklearn,
    "faiss": lloyd_faiss,
    "torch": lloyd_torch,
}
PP_RUN = {
    "fastal": pp_fastal,
    "sklearn_t1": pp_sklearn_t1,
    "sklearn_greedy": pp_sklearn_greedy,
    "torch": pp_torch,
}


def to_numpy(x) -> np.ndarray:
    """A numpy copy of picks or labels from any framework and device."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def potential(X, rows) -> float:
    """Sum of squared distances of the rows of X to their nearest seed (torch GEMM, float64 sum).

    X is a numpy array or a torch tensor (computed on its device)."""
    import torch

    x = X if isinstance(X, torch.Tensor) else torch.from_numpy(X)
    c = x[torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(x.device)].double()
    csq = (c * c).sum(1)
    total = 0.0
    for s in range(0, x.shape[0], 8192):
        b = x[s : s + 8192].double()
        d2 = torch.addmm(csq[None, :], b, c.T, alpha=-2) + (b * b).sum(1, keepdim=True)
        total += float(d2.min(1).values.clamp_min(0).sum())
    return total


def import_reason(impl: str) -> str | None:
    mod = {"faiss": "faiss", "fastal": "fastal", "torch": "torch"}.get(impl, "sklearn.cluster")
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


#: one GPU pool at a time: {"key": (device, n, d), "X": tensor}
_DEVICE_POOL: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _free_device_pool():
    """Free this module's GPU pool when its cases are done (the next module's peaks start clean)."""
    yield
    _DEVICE_POOL.clear()
    gc.collect()
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def device_pool(pools, n: int, d: int, device):
    """The float32 Gaussian pool (the CPU cases' numbers) on ``device``, one pool at a time."""
    import torch

    key = (str(device), n, d)
    if _DEVICE_POOL.get("key") != key:
        _DEVICE_POOL.clear()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        _DEVICE_POOL["X"] = pools.get("gauss", n, d, "float32", "torch").to(device).contiguous()
        _DEVICE_POOL["key"] = key
    return _DEVICE_POOL["X"]


class DeviceMemory:
    """Peak device memory over a block (``torch.cuda`` after ``reset_peak_memory_stats``); a no-op
    off a GPU, so the GPU cases' code runs on ``device="cpu"`` too."""

    def __init__(self, device):
        import torch

        self.torch, self.dev = torch, torch.device(device)
        self.on_gpu = self.dev.type == "cuda"
        self.info: dict = {}

    def sync(self) -> None:
        if self.on_gpu:
            self.torch.cuda.synchronize(self.dev)

    def __enter__(self):
        if self.on_gpu:
            self.sync()
            self.baseline = self.torch.cuda.memory_allocated(self.dev)
            self.torch.cuda.reset_peak_memory_stats(self.dev)
        return self

    def __exit__(self, *exc) -> None:
        if self.on_gpu:
            torch_cuda = self.torch.cuda
            peak = torch_cuda.max_memory_allocated(self.dev)
            self.info = {
                "peak_device_bytes": peak,
                "peak_device_extra_bytes": peak - self.baseline,
                "baseline_device_bytes": self.baseline,
                "peak_device_reserved_bytes": torch_cuda.max_memory_reserved(self.dev),
                "device_name": torch_cuda.get_device_name(self.dev),
            }


def test_kmeans(benchmark, case: Case, sizes, pools, results, skip_log):
    info = {"family": "kmeans", **asdict(case), "preset": sizes.preset}
    reason = import_reason(case.impl)
    if reason:
        skip_log.append({**info, "group": case.group, "reason": reason})
        pytest.skip(reason)
    on_device = case.device != "cpu"
    X = (
        device_pool(pools, case.n, case.d, case.device)
        if on_device
        else pools.get("gauss", case.n, case.d)
    )
    mem = DeviceMemory(case.device if on_device else "cpu")
    n, d, k = case.n, case.d, case.k
    flops_iter = 2.0 * n * d * k
    times: list[float] = []
    outputs: list = []

    if case.kind == "pp":
        run_pp = PP_RUN[case.impl]
        steps = k if case.impl in ("fastal", "torch") else min(k, sizes.peer_steps(n, d, k))
        run_pp(X[: min(n, 2048)], 2, k)  # warm imports and thread pools, untimed
        mem.sync()
        setup_s = None
        if steps < k:  # truncated: its set-up, measured next to the timed runs
            setup_s = time_setup(lambda: run_pp(X, 1, k))
        trials = 1 if case.impl != "sklearn_greedy" else 2 + int(np.log(k))
        estimate = steps * trials * n * d * 4 / 2e9
        if on_device:  # a pessimistic 1 TB/s and 50 µs a pick
            estimate = steps * (n * d * 4 / 1e12 + 5e-5)

        def target():
            t0 = time.perf_counter()
            out = run_pp(X, steps, k)
            mem.sync()  # a GPU timing covers the kernels, not only their launches
            times.append(time.perf_counter() - t0)
            outputs.append(out)
            return out

    else:
        C0 = initial_centres(X, k)
        iters = 1 if case.kind == "iter1" else fit_iters(sizes)
        run = LLOYD_RUN[case.impl]
        run(X[: min(n, 4 * k)], initial_centres(X[: min(n, 4 * k)], k), 1)  # warm, untimed
        mem.sync()
        estimate = (iters + 1) * flops_iter / (2e13 if on_device else 2e10)

        def target():
            t0 = time.perf_counter()
            out = run(X, C0, iters)
            mem.sync()
            times.append(time.perf_counter() - t0)
            outputs.append(out)
            return out

    rounds, warmup = plan_rounds(estimate, sizes.target_seconds)
    benchmark.group = case.group
    with mem:
        benchmark.pedantic(target, rounds=rounds, warmup_rounds=warmup, iterations=1)
    measured = times[warmup:] or times
    seconds = min(measured)
    extra = benchmark.extra_info
    extra.update(
        info,
        rounds=len(measured),
        seconds_min=seconds,
        seconds_median=statistics.median(measured),
        **mem.info,
    )

    if case.kind == "pp":
        picks = to_numpy(outputs[-1]).astype(np.int64)
        assert picks.shape == (steps,)
        assert len(np.unique(picks)) == steps
        widened = timed(lambda m: (run_pp(X, m, k), mem.sync()))
        seconds, steps = widen(widened, seconds, setup_s, steps, k)
        ext = extrapolate(seconds, setup_s, steps, k)
        total = ext["budget_s"]
        extra.update(
            steps=steps,
            trials=trials,
            per_step_s=seconds / steps,
            per_pick_s=ext["per_pick_s"],
            lower_bound=ext["lower_bound"],
            setup_s=setup_s,
            total_s=total,
            total_s_estimated=setup_s is not None,
        )
        if len(picks) == k:  # (the picks of the timed run, before any widening)
            extra["potential"] = potential(X, picks)
        if case.impl == "fastal":
            for peer in ("torch",) if on_device else PP[:-1]:
                other = results.get(replace(case, impl=peer).key)
                if other is not None:
                    extra[f"speedup_vs_{peer}"] = other["total_s"] / total
                    if on_device:
                        m = min(len(picks), len(other["picks"]))
                        diff = np.flatnonzero(picks[:m] != other["picks"][:m])
                        extra[f"agree_prefix_{peer}"] = int(diff[0]) if diff.size else m
            if on_device:  # the CPU run of the same size, when this session measured it
                other = results.get(replace(case, device="cpu").key)
                if other is not None:
                    extra["speedup_vs_cpu_fastal"] = other["total_s"] / total
        results[case.key] = {"total_s": total, "picks": picks}
        return

    out = outputs[-1]
    labels = to_numpy(out["labels"]).astype(np.int64)
    outputs.clear()
    assert labels.shape == (n,)
    extra.update(
        inertia=out["inertia"],
        n_iter=out["n_iter"],
        max_iter=iters,
        per_iter_simple_s=seconds / max(out["n_iter"], 1),
        gflops_per_iter=flops_iter / 1e9,
    )
    if out.get("distance_share") is not None:  # fastal's bounded Lloyd: distances over n·k·iters
        extra["distance_share"] = out["distance_share"]
    per_iter = None
    if case.kind == "fit":
        one = results.get(replace(case, kind="iter1").key)
        if one is not None and out["n_iter"] > 1:
            per_iter = max(seconds - one["seconds"], 0.0) / (out["n_iter"] - 1)
            extra["iter1_s"] = one["seconds"]
        extra["per_iter_s"] = per_iter
    for ref_impl in ("sklearn", "torch") if on_device else ("sklearn",):
        # the CPU scikit-learn run of the same case (when this session measured it); on the GPU
        # also the torch peer
        where = "cpu" if ref_impl == "sklearn" else case.device
        ref = results.get(replace(case, impl=ref_impl, device=where).key)
        if ref is not None and case.impl != ref_impl and ref.get("labels") is not None:
            extra[f"inertia_rel_to_{ref_impl}"] = out["inertia"] / ref["inertia"] - 1.0
            extra[f"labels_agree_{ref_impl}"] = float(np.mean(labels == ref["labels"]))
    if case.impl == "fastal":
        for peer in ("torch",) if on_device else LLOYD[:-1]:
            other = results.get(replace(case, impl=peer).key)
            if other is None:
                continue
            extra[f"speedup_vs_{peer}"] = other["seconds"] / seconds
            if per_iter and other.get("per_iter_s"):
                extra[f"per_iter_speedup_vs_{peer}"] = other["per_iter_s"] / per_iter
        if on_device:
            other = results.get(replace(case, device="cpu").key)
            if other is not None:
                extra["speedup_vs_cpu_fastal"] = other["seconds"] / seconds
    results[case.key] = {
        "seconds": seconds,
        "per_iter_s": per_iter,
        "inertia": out["inertia"],
        "labels": labels if case.impl in ("sklearn", "torch") else None,
    }
