"""k-center greedy: fastal against the implementations users would otherwise run, in the same run.

Every case starts from the same single labeled point (row 0) and picks ``budget`` centres, so every
implementation runs the same algorithm (Sener & Savarese 2018, Alg. 1) on the same data:

``fastal``        ``fastal.kcenter`` on CPU (float32 pruned and unpruned, float16, bfloat16) or on a
                  torch-CUDA tensor.
``sklearn_loop``  google/active-learning's ``kCenterGreedy``: per pick ``pairwise_distances(X, x)``,
                  ``np.minimum`` into the running minimum, ``np.argmax``.
``torch_loop``    a torch mat-vec loop: ``sq + sq[i] - 2 X @ X[i]`` (fused as ``addmv``),
                  ``torch.minimum``, ``torch.argmax``; on the CPU or on CUDA.
``skactiveml``    ``skactiveml.pool.CoreSet.query`` with row 0 labeled.
``bmdal_maxdist`` bmdal-reg's ``MaxDistSelectionMethod`` ("maxdist", TP mode) on identity features
                  with row 0 as the training set.

Groups are ``kcenter/<device>/<data>/n=../d=../b=../<dtype>``. Slow peers are timed over
``Sizes.peer_steps`` picks (the whole budget where cheap); every ``extra_info`` carries
``per_step_s``, the time of a run over the whole budget divided by it, so cases compare per step:
a truncated peer's budget is extrapolated from its timed picks and a one-pick run (its set-up),
:mod:`benchmarks._extrapolate`, so that its set-up is spread over the budget as fastal's is.
fastal entries also carry the rows-read fraction, the bandwidth floor (bytes of X over the read
bandwidth measured in this session) and ``speedup_vs_<peer>`` for each peer measured earlier in
the same session.
``report.py`` turns a ``--benchmark-json`` file into the tables of ``RESULTS.md``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace

import numpy as np
import pytest

import fastal

from ._extrapolate import extrapolate, time_setup, timed, widen

#: The labeled point every implementation starts from.
L0 = 0
PEERS = ("sklearn_loop", "torch_loop", "skactiveml", "bmdal_maxdist")
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}

# peers' own warnings are not ours to fail on
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@dataclass(frozen=True)
class Case:
    impl: str  # "fastal" or one of PEERS
    data: str  # "gauss" | "mixture"
    n: int
    d: int
    budget: int
    dtype: str = "float32"
    prune: bool = False
    device: str = "cpu"

    @property
    def group(self) -> str:
        return (
            f"kcenter/{self.device}/{self.data}/n={self.n}/d={self.d}/b={self.budget}/{self.dtype}"
        )

    @property
    def label(self) -> str:
        return f"{self.impl}{'_pruned' if self.prune else ''}"

    @property
    def id(self) -> str:
        size = f"n{self.n}-d{self.d}-b{self.budget}"
        return f"{self.device}-{self.data}-{size}-{self.dtype}-{self.label}"

    @property
    def key(self) -> tuple:
        return (self.device, self.data, self.n, self.d, self.budget, self.dtype, self.label)

    def steps(self, sizes) -> int:
        """Picks one timed run makes: the budget for fastal, possibly fewer for a peer."""
        if self.impl == "fastal":
            return self.budget
        scale = 100 if self.device == "cuda" else 1
        return min(self.budget, sizes.peer_steps(self.n, self.d, self.budget) * scale)


def cpu_cases(n: int, d: int, b: int) -> list[Case]:
    """Peers first, so that fastal's entries can report ratios to them."""
    g = [Case(p, "gauss", n, d, b) for p in PEERS]
    g += [
        Case("fastal", "gauss", n, d, b, "float32", prune=False),
        Case("fastal", "gauss", n, d, b, "float32", prune=True),
        Case("fastal", "gauss", n, d, b, "float16", prune=False),
        Case("fastal", "gauss", n, d, b, "bfloat16", prune=False),
        Case("fastal", "mixture", n, d, b, "float32", prune=False),
        Case("fastal", "mixture", n, d, b, "float32", prune=True),
    ]
    return g


def cuda_cases(n: int, d: int, b: int, dtypes=("float32", "float16")) -> list[Case]:
    out = []
    for t in dtypes:
        out += [
            Case("torch_loop", "gauss", n, d, b, t, device="cuda"),
            Case("fastal", "gauss", n, d, b, t, prune=False, device="cuda"),
            Case("fastal", "gauss", n, d, b, t, prune=True, device="cuda"),
        ]
    out += [
        Case("fastal", "mixture", n, d, b, "float32", prune=False, device="cuda"),
        Case("fastal", "mixture", n, d, b, "float32", prune=True, device="cuda"),
    ]
    return out


def generate_cases(metafunc, sizes, cuda: bool) -> None:
    if "case" not in metafunc.fixturenames:
        return
    cases = [
        c for n in sizes.ns for d in sizes.ds for b in sizes.budgets for c in cpu_cases(n, d, b)
    ]
    gpu = [
        c for n in sizes.ns for d in sizes.ds for b in sizes.budgets for c in cuda_cases(n, d, b)
    ]
    for n, d, b, t in sizes.gpu_extra:
        gpu += [c for c in cuda_cases(n, d, b, (t,)) if c.data == "gauss"]
    no_gpu = pytest.mark.skipif(
        not cuda, reason="needs a CUDA GPU and fastal built with its CUDA module"
    )
    params = [pytest.param(c, id=c.id) for c in cases]
    params += [pytest.param(c, id=c.id, marks=[pytest.mark.cuda, no_gpu]) for c in gpu]
    metafunc.parametrize("case", params)


# ---------------------------------------------------------------------------------------------
# the implementations: each takes the prepared pool and a number of picks, returns (picks, info)


def run_fastal(X, steps: int, prune: bool):
    res = fastal.kcenter(X, steps, labeled=[L0], prune=prune)
    info = {"rows_read_fraction": res.rows_read / res.rows_unpruned if res.rows_unpruned else 0.0}
    return res.indices, info


def run_sklearn_loop(X: np.ndarray, steps: int):
    """google/active-learning ``kCenterGreedy.select_batch_`` with ``metric="euclidean"``."""
    from sklearn.metrics import pairwise_distances

    mind = pairwise_distances(X, X[[L0]], metric="euclidean").ravel()
    picks = np.empty(steps, dtype=np.int64)
    for t in range(steps):
        i = int(np.argmax(mind))
        picks[t] = i
        if t + 1 < steps:
            mind = np.minimum(mind, pairwise_distances(X, X[[i]], metric="euclidean").ravel())
    return picks, {}


def run_torch_loop(X, steps: int):
    """Squared distances by one mat-vec per pick, ``sq + sq[i] - 2 X @ X[i]``.

    The pick stays a device tensor (``index_select``, never ``.item()``), so on CUDA the loop runs
    without a host round trip per pick, as a careful torch user would write it.
    """
    import torch

    sq = (X * X).sum(1) if X.dtype == torch.float32 else (X.float() * X.float()).sum(1)

    def sqdist(i):  # i: (1,) int64 on X's device
        x = X.index_select(0, i).squeeze(0)
        if X.dtype == torch.float32:
            dist = torch.addmv(sq, X, x, alpha=-2)
        else:
            dist = sq - 2 * (X @ x).float()
        return dist.add_(sq.index_select(0, i))

    mind = sqdist(torch.tensor([L0], device=X.device))
    picks = torch.empty(steps, dtype=torch.int64, device=X.device)
    for t in range(steps):
        i = torch.argmax(mind).view(1)
        picks[t : t + 1] = i
        if t + 1 < steps:
            torch.minimum(mind, sqdist(i), out=mind)
    return picks, {}


def run_skactiveml(X: np.ndarray, steps: int):
    from skactiveml.pool import CoreSet

    y = np.full(X.shape[0], np.nan)
    y[L0] = 0.0
    return CoreSet(random_state=0).query(X, y, batch_size=steps), {}


def run_bmdal(X, steps: int):
    from bmdal_reg.bmdal import selection as sel
    from bmdal_reg.bmdal.feature_data import TensorFeatureData
    from bmdal_reg.bmdal.feature_maps import IdentityFeatureMap
    from bmdal_reg.bmdal.features import Features

    fmap = IdentityFeatureMap(n_features=X.shape[1])
    pool = Features(fmap, TensorFeatureData(X))
    train = Features(fmap, TensorFeatureData(X[L0 : L0 + 1]))
    alg = sel.MaxDistSelectionMethod(pool, train, sel_with_train=True, verbosity=0)
    return alg.select(steps), {}


def _bmdal_numpy_shim() -> None:
    """bmdal-reg 3.0.2 still spells ``np.Inf``, which numpy 2 removed; alias it (same value)."""
    if not hasattr(np, "Inf"):
        setattr(np, "Inf", np.inf)  # noqa: B010  (a plain assignment reads as a use of np.Inf)


def prepare(case: Case, pools, device_cache: dict):
    """The pool in the form ``case.impl`` takes; skips when a peer is not installed."""
    # imports happen here, outside the timed runs
    if case.impl == "sklearn_loop":
        pytest.importorskip("sklearn.metrics")
    elif case.impl == "skactiveml":
        pytest.importorskip("skactiveml.pool")
    elif case.impl == "bmdal_maxdist":
        pytest.importorskip("bmdal_reg.bmdal.selection")
        _bmdal_numpy_shim()
    if case.device == "cuda":
        import torch

        key = (case.data, case.n, case.d, case.dtype)
        if device_cache.get("key") != key:
            device_cache.clear()
            torch.cuda.empty_cache()
            host = pools.get(case.data, case.n, case.d, "float32", "torch")
            device_cache["X"] = host.to("cuda").to(getattr(torch, case.dtype))
            device_cache["key"] = key
            torch.cuda.synchronize()
        return device_cache["X"]
    if case.impl in ("torch_loop", "bmdal_maxdist"):
        pytest.importorskip("torch")
        return pools.get(case.data, case.n, case.d, case.dtype, "torch")
    if case.dtype == "bfloat16":  # numpy has no bfloat16: a torch tensor
        return pools.get(case.data, case.n, case.d, "bfloat16")
    return pools.get(case.data, case.n, case.d, case.dtype)


def runner(case: Case):
    if case.impl == "fastal":
        return lambda X, k: run_fastal(X, k, case.prune)
    return {
        "sklearn_loop": run_sklearn_loop,
        "torch_loop": run_torch_loop,
        "skactiveml": run_skactiveml,
        "bmdal_maxdist": run_bmdal,
    }[case.impl]


def to_numpy(picks) -> np.ndarray:
    if hasattr(picks, "detach"):
        picks = picks.detach().cpu().numpy()
    return np.asarray(picks, dtype=np.int64)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    m = min(len(a), len(b))
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if diff.size else m


# ---------------------------------------------------------------------------------------------
# the benchmark

_DEVICE_CACHE: dict = {}


def plan_rounds(estimate_s: float, target_s: float) -> tuple[int, int]:
    """(rounds, warmup rounds): one round for long runs, up to 5 for short ones."""
    if estimate_s >= target_s:
        return 1, 0
    return int(min(5, max(1, target_s // max(estimate_s, 1e-9)))), 1


def test_kcenter(benchmark, case: Case, request, sizes, pools, results, cuda_sync):
    X = prepare(case, pools, _DEVICE_CACHE)
    if case.device == "cuda":
        bandwidth = near = request.getfixturevalue("cuda_copy_bandwidth")
        session_bw = bandwidth
    else:
        probe = request.getfixturevalue("bandwidth_probe")
        session_bw = probe.first
        near = probe.probe()  # the shared machine drifts: re-measure next to every case
        bandwidth = probe.best  # the best seen so far is the floor's bandwidth
    run = runner(case)
    steps = case.steps(sizes)
    run(X[: min(case.n, 2048)], 2)  # warm imports, thread pools and caches of code, untimed

    x_bytes = case.n * case.d * ITEMSIZE[case.dtype]
    floor_s = x_bytes / (bandwidth * 1e9)
    slow = {"fastal": 1.5, "torch_loop": 4.0}.get(case.impl, 10.0)
    rounds, warmup = plan_rounds(floor_s * steps * slow, sizes.target_seconds)

    times: list[float] = []
    outputs: list = []

    def target():
        t0 = time.perf_counter()
        out = run(X, steps)
        cuda_sync(X)  # a GPU timing covers the kernels, not only their launches
        times.append(time.perf_counter() - t0)
        outputs.append(out)
        return out

    benchmark.group = case.group
    benchmark.pedantic(target, rounds=rounds, warmup_rounds=warmup, iterations=1)
    measured = times[warmup:] or times
    picks, info = outputs[-1]
    picks = to_numpy(picks)
    assert picks.shape == (steps,)
    assert len(np.unique(picks)) == steps
    assert L0 not in picks

    # a truncated peer: its set-up spread over the budget, as fastal's is, not over the few picks
    # it was timed on (the torch loop's set-up is about five steps: +24 % at 20 of 1000 picks)
    setup_s = None
    seconds = min(measured)
    if steps < case.budget:
        setup_s = time_setup(lambda: (run(X, 1), cuda_sync(X)))
        widened = timed(lambda k: (run(X, k), cuda_sync(X)))
        seconds, steps = widen(widened, seconds, setup_s, steps, case.budget)
    ext = extrapolate(seconds, setup_s, steps, case.budget)
    per_step = ext["budget_s"] / case.budget if setup_s is not None else min(measured) / steps
    extra = benchmark.extra_info
    extra.update(
        setup_s=setup_s,
        lower_bound=ext["lower_bound"],
        impl=case.impl,
        label=case.label,
        prune=case.prune,
        data=case.data,
        n=case.n,
        d=case.d,
        budget=case.budget,
        dtype=case.dtype,
        device=case.device,
        preset=sizes.preset,
        steps=steps,
        rounds=len(measured),
        seconds_min=min(measured),
        seconds_median=statistics.median(measured),
        per_step_s=per_step,
        x_bytes_per_step=x_bytes,
        bandwidth_gbs=bandwidth,
        bandwidth_session_gbs=session_bw,
        bandwidth_probe_gbs=near,
        bandwidth_kind="cuda copy (read+write)" if case.device == "cuda" else "cpu read",
        floor_s=floor_s,
        step_over_floor=per_step / floor_s,
        floor_fraction=floor_s / per_step,
        **info,
    )

    # ratios to cases measured earlier in this session
    def earlier(**changes):
        return results.get(replace(case, **changes).key)

    if case.impl == "fastal":
        peers = PEERS if case.device == "cpu" else ("torch_loop",)
        for peer in peers:
            other = earlier(impl=peer, prune=False)
            if other is not None:
                extra[f"speedup_vs_{peer}"] = other["per_step_s"] / per_step
                extra[f"agree_prefix_{peer}"] = common_prefix(picks, other["picks"])
        if case.dtype != "float32":
            other = earlier(dtype="float32", prune=False)
            if other is not None:
                extra["speedup_vs_float32"] = other["per_step_s"] / per_step
        if case.prune:
            other = earlier(prune=False)
            if other is not None:
                extra["speedup_vs_unpruned"] = other["per_step_s"] / per_step
                extra["picks_equal_unpruned"] = bool(np.array_equal(picks, other["picks"]))
                extra["rows_read_reduction"] = 1.0 / max(info["rows_read_fraction"], 1e-12)
    results[case.key] = {"per_step_s": per_step, "picks": picks}
