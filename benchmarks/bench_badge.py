"""BADGE selection: fastal against the implementations users would otherwise run, in the same run.

Every case selects ``budget`` rows from an unlabeled pool of ``n`` rows with ``C`` classes and
``d``-dimensional penultimate features (float32): probabilities are the softmax of
``LOGIT_SCALE * N(0, 1)`` logits and features are N(0, I), both from fixed seeds. The BADGE
embedding of row i is ``(p_i - e_argmax(p_i)) ⊗ h_i``, an ``n x C·d`` matrix when materialised.

``fastal``       ``fastal.strategies.BADGE().select({"probs": P, "features": H}, budget)``:
                 builds the factored embedding (A = P - onehot, H copied) and runs k-means++
                 over it, first pick the largest norm (Ash et al. 2020).
``fastal_emb``   the same selection from a prebuilt ``fastal.GradientEmbedding(A, H)`` (built
                 outside the timing): the memory-lean path, which holds only A and H (6 GB at
                 n = 1M, C = 1000, d = 512, where the dict pool needs P and H beside copies).
``skactiveml``   ``skactiveml.pool.Badge.query`` with a classifier that returns the precomputed P
                 (``fit_clf=False``) and H as the samples, so H is the embedding it expands.
                 Materialises the gradients in float64; first pick the largest norm.
``small_text``   small-text 1.4.1's BADGE, called through its own two functions (its ``sample``
                 otherwise needs a small-text PyTorch classifier and dataset):
                 ``BADGE(C).get_badge_embeddings(H, P)`` then ``init_kmeans_plusplus_safe`` with
                 the arguments ``BADGE.sample`` passes, i.e. scikit-learn's greedy
                 ``kmeans_plusplus`` with ``2 + log(budget)`` local trials; float64, first pick
                 random. Its embedding is ``-p ⊗ h`` (no one-hot term: ``scale[argmax] = ...``
                 indexes rows, not classes), so it is not the same selection rule.
``distil``       decile-distil 0.2.0: its ``get_grad_embedding`` arithmetic (``repeat_interleave`` /
                 ``repeat`` in torch float32, 1024-row batches, the model outputs replaced by P and
                 H) and then its ``init_centers``, the k-means++ loop with a Python loop over the
                 rows per pick. Loaded without the package ``__init__`` (which imports numba and
                 apricot, seconds of import) but otherwise unchanged.
``torch_dense``  written here: the dense ``n x C·d`` gradients in torch, squared norms, first pick
                 the largest norm, then per pick ``addmv`` distances, ``minimum``, and a float64
                 ``cumsum`` + ``searchsorted`` D² draw.

Peers that materialise are skipped (reason recorded in the JSON) when their estimated memory
(:func:`estimate_bytes`) exceeds ``FASTAL_BENCH_MEM_GB`` (default 8). Slow peers are timed over
fewer picks (:meth:`Case.steps`, ``steps`` in ``extra_info``); then a one-pick run gives their
set-up time and ``budget_s`` extrapolates linearly, ``setup + (budget - 1) * per-pick``
(``budget_s_estimated`` true): each of their picks is one pass over the same matrix. Where the
picks took under half of the timed run, more picks are timed (``steps`` grows), and where they
still do, ``budget_s`` is that run, a lower bound (``lower_bound``; :mod:`benchmarks._extrapolate`).
fastal always runs the whole budget.

Peak memory: each case also runs once in a fresh ``python bench_badge.py --child`` process, which
generates the data, resets its peak RSS (``/proc/self/clear_refs``), runs the selection and reads
``VmHWM``: ``peak_rss_bytes`` is the process's peak during the selection, ``peak_extra_bytes`` that
minus the resident size before it (inputs and imported code). A peer's memory run makes
``min(steps, MEMORY_PICKS)`` picks: its peak is the materialised embedding, before any pick, but
for what grows with the picks (scikit-activeml's ``(batch, n)`` float64 utilities, allocated up
front: 8·budget·n bytes over the whole budget, 0.8 GB at n = 100k, budget 1000, not measured).
``FASTAL_BENCH_MEMORY`` is ``all`` (default at medium and full), ``fastal`` (default at tiny: only
the ``fastal`` case, so that CI runs this path without paying an interpreter start per case) or
``none``; timings always come from this process.

GPU cases (marked ``cuda``, ids starting ``cuda-``, so ``-k cuda`` selects them; skipped without
a CUDA device or without fastal's CUDA module): the pools are generated on the device with a
``torch.Generator`` (chunked; never a host copy, never the n x C·d matrix) from the same
distributions as the CPU pools (not the same numbers), and the selection runs there:

``fastal_emb``   ``BADGE().select(GradientEmbedding(A, H), budget)`` with A and H torch-CUDA tensors
                 stored as float32 or float16 (the embedding built outside the timing).
``torch_dense``  the dense ``n x C·d`` float32 gradients on the device, then a D² loop that stays
                 on the device (no host round trip per pick) and draws from fastal's random stream
                 (``numpy.random.default_rng(seed).random(budget)``), so its picks can be compared.

Sizes per preset in :data:`GPU_GRID` (the issue-3 target, n = 1M, C = 1000, d = 512, budget 1000,
at ``full`` only, this module's first GPU case, so that a time limit on the module cannot cut it;
select it alone with ``-k "cuda and n1000000-C1000"``); every GPU case runs the whole budget.
A case whose estimated device memory (:func:`estimate_device_bytes`) exceeds
``FASTAL_BENCH_GPU_MEM_GB`` (default 85% of the device's memory) is skipped with the estimate in its
reason. Timings synchronize the device inside the timed function; ``peak_device_bytes`` is
``torch.cuda.max_memory_allocated()`` over the timed runs after ``reset_peak_memory_stats()``
(inputs included), ``peak_device_extra_bytes`` that minus what was allocated just before.
Groups are ``badge/cuda/n=../C=../d=../b=..``.

Axes: ``n`` and ``budget`` from the preset (``FASTAL_BENCH_N``, ``FASTAL_BENCH_BUDGET``), ``C``
from :data:`GRID` or ``FASTAL_BENCH_C``, ``d`` from :data:`GRID` or ``FASTAL_BENCH_BADGE_D``.
Groups are ``badge/cpu/n=../C=../d=../b=..``; ``report_badge.py`` writes the tables.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np
import pytest

try:
    from ._extrapolate import extrapolate, time_setup, timed, widen
    from ._torch_peers import d2_sampling_torch
except ImportError:  # run as a script: the peak-memory child (python bench_badge.py --child)
    from _extrapolate import extrapolate, time_setup, timed, widen
    from _torch_peers import d2_sampling_torch

LOGIT_SCALE = 2.0
SEED = 0
PEERS = ("skactiveml", "small_text", "distil", "torch_dense")
IMPLS = (*PEERS, "fastal", "fastal_emb")
FASTAL = ("fastal", "fastal_emb")
#: (cost of one dense element relative to a float32 pass, least picks timed) per peer: float64
#: passes for skactiveml; small-text's greedy trials; distil's torch.pairwise_distance (a
#: broadcast x - mu, about 10x a plain pass)
PEER_COST = {"torch_dense": (1, 20), "skactiveml": (2, 20), "small_text": (8, 5), "distil": (10, 5)}
#: picks of a peer's peak-memory run (its peak comes from materialising, before the picks)
MEMORY_PICKS = 5

#: axes per preset (n and budget also come from conftest's Sizes, which apply the overrides)
GRID = {
    "tiny": {"C": (10,), "d": (32,)},
    "medium": {"C": (10, 100), "d": (512,)},
    "full": {"C": (10, 100, 1000), "d": (512,)},
}
#: GPU cases (n, C, d, budget) per preset: issue 3's target (n = 1M, C = 1000, budget 1000) first;
#: at n = 1M, C = 10 the dense peer (20 GB of gradients) fits on a large GPU and runs beside it
GPU_GRID = {
    "tiny": ((3000, 10, 32, 20),),
    "medium": ((100_000, 10, 512, 1000),),
    "full": ((1_000_000, 1000, 512, 1000), (1_000_000, 10, 512, 1000)),
}
#: GPU implementations and storage dtypes, peer first (fastal's entries report ratios to it)
GPU_IMPLS = (("torch_dense", "float32"), ("fastal_emb", "float32"), ("fastal_emb", "float16"))
ITEMSIZE = {"float32": 4, "float16": 2}
NO_GPU = "needs a CUDA GPU and fastal built with its CUDA module"

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]


@dataclass(frozen=True)
class Case:
    impl: str
    n: int
    C: int
    d: int
    budget: int
    dtype: str = "float32"  # storage of the factors (GPU cases: float32 or float16)
    device: str = "cpu"  # "cpu" or "cuda"

    @property
    def group(self) -> str:
        return f"badge/{self.device}/n={self.n}/C={self.C}/d={self.d}/b={self.budget}"

    @property
    def id(self) -> str:
        size = f"n{self.n}-C{self.C}-d{self.d}-b{self.budget}"
        if self.device == "cpu":
            return f"{size}-{self.impl}"
        return f"{self.device}-{size}-{self.dtype}-{self.impl}"

    @property
    def key(self) -> tuple:
        return (self.device, self.n, self.C, self.d, self.budget, self.dtype, self.impl)

    @property
    def dense_elems(self) -> int:
        return self.n * self.C * self.d

    def steps(self, sizes) -> int:
        """Picks one timed run makes: the budget for fastal, maybe fewer for a peer.

        A peer processes at most about ``sizes.peer_elems`` elements of the dense embedding per
        timed run, each weighted by its relative cost (:data:`PEER_COST`), and makes at least the
        floor of picks (20 for cheap picks, 5 for picks that take seconds at medium size).
        """
        if self.impl in FASTAL or self.device != "cpu":
            return self.budget
        weight, floor = PEER_COST[self.impl]
        cap = sizes.peer_elems // (self.dense_elems * weight)
        return int(min(self.budget, max(floor, cap)))


def _axis(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return tuple(int(v) for v in raw.replace(" ", "").split(",") if v)
    except ValueError:
        raise pytest.UsageError(f"{name} must be comma-separated integers, got {raw!r}") from None


def grid(sizes) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(ns, Cs, ds, budgets) of this run."""
    g = GRID[sizes.preset]
    cs, ds = _axis("FASTAL_BENCH_C", g["C"]), _axis("FASTAL_BENCH_BADGE_D", g["d"])
    return sizes.ns, cs, ds, sizes.budgets


def generate_cases(metafunc, sizes, cuda: bool) -> None:
    if "case" not in metafunc.fixturenames:
        return
    ns, cs, ds, bs = grid(sizes)
    cases = [Case(i, n, c, d, b) for n in ns for c in cs for d in ds for b in bs for i in IMPLS]
    gpu = [
        Case(i, n, c, d, b, t, "cuda")
        for n, c, d, b in GPU_GRID[sizes.preset]
        for i, t in GPU_IMPLS
    ]
    no_gpu = pytest.mark.skipif(not cuda, reason=NO_GPU)
    params = [pytest.param(c, id=c.id) for c in cases]
    params += [pytest.param(c, id=c.id, marks=[pytest.mark.cuda, no_gpu]) for c in gpu]
    metafunc.parametrize("case", params)


# ---------------------------------------------------------------------------------------------
# memory


def mem_budget_bytes() -> float:
    return float(os.environ.get("FASTAL_BENCH_MEM_GB", "8")) * 1e9


def estimate_bytes(impl: str, n: int, C: int, d: int, steps: int, budget: int) -> int:
    """Peak resident bytes a case needs: the inputs plus the implementation's own arrays.

    ``N = n·C·d`` is the size of the materialised embedding. Checked against the child-process
    peaks at the sizes that run (see RESULTS.md); the big terms:

    - fastal: the dict pool copies P into A and H into the factors, plus per-chunk temporaries
      (measured 1.15-1.3 x the inputs beside them); with a prebuilt GradientEmbedding only O(n)
      vectors beside A and H.
    - torch_dense: the float32 gradients, N·4.
    - skactiveml: the float64 gradients and the float64 ``g**2`` of its first D², 2·N·8, plus the
      (batch, n) float64 utilities.
    - small_text: the float64 embedding plus ``np.linalg.norm``'s ``x * x`` temporary, 2·N·8.
    - distil: the float32 embedding plus the temporaries of ``torch.pairwise_distance``
      (``x - mu + eps``), 3·N·4.
    """
    N = n * C * d
    inputs = 4 * n * (C + d)
    small = 64 * n
    if impl == "fastal":
        return inputs + 5 * inputs // 4 + small
    if impl == "fastal_emb":
        return inputs + small
    if impl == "torch_dense":
        return inputs + 4 * N + 4 * n * C + small
    if impl == "skactiveml":
        return inputs + 16 * N + 8 * steps * n + 8 * n * C + 4 * n * d + small
    if impl == "small_text":
        trials = 2 + int(np.log(budget))
        return inputs + 16 * N + 8 * n * trials + 8 * n * d + small
    if impl == "distil":
        return inputs + 12 * N + 4 * n * C + 128 * n + small
    raise ValueError(impl)


def _proc_status(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# data


def _features(n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng((SEED, 1, n, d))
    H = np.empty((n, d), dtype=np.float32)
    chunk = max(1, (1 << 22) // d)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        H[s:e] = rng.standard_normal((e - s, d), dtype=np.float32)
    return H


def _probs_or_factor(n: int, C: int, factor: bool) -> np.ndarray:
    """Softmax of ``LOGIT_SCALE * N(0, 1)`` logits; with ``factor``, ``p - onehot(argmax p)``."""
    rng = np.random.default_rng((SEED, 2, n, C))
    out = np.empty((n, C), dtype=np.float32)
    chunk = max(1, (1 << 22) // C)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        z = rng.standard_normal((e - s, C), dtype=np.float32)
        z *= np.float32(LOGIT_SCALE)
        z -= z.max(1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(1, keepdims=True)
        if factor:
            z[np.arange(e - s), z.argmax(1)] -= 1
        out[s:e] = z
    return out


class DataCache:
    """Arrays by ("H", n, d) / ("P", n, C) / ("A", n, C), oldest evicted past a byte limit."""

    def __init__(self, limit_bytes: float):
        self.limit = limit_bytes
        self.items: dict[tuple, np.ndarray] = {}

    def get(self, kind: str, n: int, m: int) -> np.ndarray:
        key = (kind, n, m)
        if key not in self.items:
            need = 4 * n * m
            while self.items and sum(v.nbytes for v in self.items.values()) + need > self.limit:
                del self.items[next(iter(self.items))]
            gc.collect()
            if kind == "H":
                self.items[key] = _features(n, m)
            else:
                self.items[key] = _probs_or_factor(n, m, factor=kind == "A")
        value = self.items.pop(key)
        self.items[key] = value  # most recent last
        return value

    def clear(self) -> None:
        self.items.clear()
        gc.collect()


# ---------------------------------------------------------------------------------------------
# peers: imports (outside the timed runs)


def _load_distil_badge():
    """distil's ``active_learning_strategies/badge.py``, without the package ``__init__``.

    That ``__init__`` imports every strategy, apricot and numba (about 6 s); ``badge.py`` needs only
    ``strategy.py``. A stand-in package object gives the relative import its parent; it is removed
    again afterwards, so a later ``import distil.active_learning_strategies`` is the real one.
    """
    import types

    spec = importlib.util.find_spec("distil")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("decile-distil is not installed")
    pkg = "distil.active_learning_strategies"
    if pkg in sys.modules and not getattr(sys.modules[pkg], "_fastal_stub", False):
        return importlib.import_module(pkg + ".badge")
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "active_learning_strategies")
    stub = types.ModuleType(pkg)
    stub.__path__ = [folder]
    stub._fastal_stub = True
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.startswith(pkg)}
    sys.modules[pkg] = stub
    try:
        return importlib.import_module(pkg + ".badge")
    finally:
        for k in [k for k in sys.modules if k.startswith(pkg)]:
            del sys.modules[k]
        sys.modules.update(saved)


_MODULES: dict[str, object] = {}


def import_peer(impl: str) -> str | None:
    """Import what ``impl`` needs; the reason it cannot run, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if impl in FASTAL or impl == "torch_dense":
                import torch

                import fastal  # noqa: F401
            elif impl == "skactiveml":
                import skactiveml.pool  # noqa: F401
                from skactiveml.base import SkactivemlClassifier  # noqa: F401
            elif impl == "small_text":
                from small_text.integrations.pytorch.query_strategies import BADGE  # noqa: F401
                from small_text.utils.clustering import init_kmeans_plusplus_safe  # noqa: F401
            elif impl == "distil":
                import torch  # noqa: F401

                _MODULES["distil"] = _MODULES.get("distil") or _load_distil_badge()
    except Exception as e:  # an optional peer that fails to import is skipped with the reason
        return f"{impl} not importable: {type(e).__name__}: {e}"
    return None


# ---------------------------------------------------------------------------------------------
# the implementations: prepare(case, data) -> pool (untimed); run(pool, steps, budget) -> picks


def prepare(case: Case, data: DataCache):
    n, C, d = case.n, case.C, case.d
    H = data.get("H", n, d)
    if case.impl == "fastal_emb":
        import fastal

        return fastal.GradientEmbedding(data.get("A", n, C), H)
    P = data.get("P", n, C)
    if case.impl in ("torch_dense", "distil"):
        import torch

        return torch.from_numpy(P), torch.from_numpy(H)
    if case.impl == "fastal":
        return {"probs": P, "features": H}
    return P, H


def run_fastal(pool, steps: int, budget: int):
    from fastal.strategies import BADGE

    return np.asarray(BADGE().select(pool, steps, seed=SEED).indices)


def run_torch_dense(pool, steps: int, budget: int):
    """Materialised BADGE in torch: what a user without a factored kernel would write."""
    import torch

    P, H = pool
    n, C = P.shape
    A = P.clone()
    A[torch.arange(n), P.argmax(1)] -= 1
    G = (A[:, :, None] * H[:, None, :]).reshape(n, C * H.shape[1])  # the n x C*d gradients
    del A
    sq = torch.linalg.vector_norm(G, dim=1).square_()
    picks = torch.empty(steps, dtype=torch.int64)
    first = int(torch.argmax(sq))
    picks[0] = first
    if steps == 1:
        return picks.numpy()
    gen = torch.Generator().manual_seed(SEED)
    u = torch.rand(steps, generator=gen, dtype=torch.float64)

    def sqdist(i: int):
        return torch.addmv(sq + sq[i], G, G[i], alpha=-2).clamp_min_(0)

    mind = sqdist(first)
    mind[first] = 0
    for t in range(1, steps):
        cum = torch.cumsum(mind, 0, dtype=torch.float64)
        i = int(torch.searchsorted(cum, u[t] * cum[-1], right=True).clamp_(max=n - 1))
        picks[t] = i
        if t + 1 < steps:
            torch.minimum(mind, sqdist(i), out=mind)
        mind[i] = 0
    return picks.numpy()


def _skactiveml_classifier(P: np.ndarray):
    from skactiveml.base import SkactivemlClassifier

    class PrecomputedProba(SkactivemlClassifier):
        """Returns the pool's precomputed probabilities; X is its own embedding."""

        def __init__(self, proba=None, classes=None, missing_label=np.nan):
            super().__init__(classes=classes, missing_label=missing_label)
            self.proba = proba

        def fit(self, X, y, sample_weight=None):
            return self

        def predict_proba(self, X):
            if X.shape[0] != self.proba.shape[0]:
                raise ValueError("the pool must be entirely unlabeled")
            return self.proba

    return PrecomputedProba(P, classes=np.arange(P.shape[1]))


def run_skactiveml(pool, steps: int, budget: int):
    from skactiveml.pool import Badge

    P, H = pool
    y = np.full(H.shape[0], np.nan)
    clf = _skactiveml_classifier(P)
    picks = Badge(random_state=SEED).query(H, y, clf, fit_clf=False, batch_size=steps)
    return np.asarray(picks, dtype=np.int64)


def run_small_text(pool, steps: int, budget: int):
    """small-text's ``BADGE.sample`` body, with the local trials its ``budget``-sized call uses."""
    from small_text.integrations.pytorch.query_strategies import BADGE
    from small_text.utils.clustering import init_kmeans_plusplus_safe

    P, H = pool
    qs = BADGE(num_classes=P.shape[1])
    emb = qs.get_badge_embeddings(H, P)
    _, picks = init_kmeans_plusplus_safe(
        emb,
        steps,
        x_squared_norms=np.linalg.norm(emb, axis=1),  # sic: small-text passes norms
        random_state=np.random.RandomState(SEED),
        n_local_trials=2 + int(np.log(budget)),  # scikit-learn's default for `budget` clusters
        suppress_warning=True,
    )
    return np.asarray(picks, dtype=np.int64)


def run_distil(pool, steps: int, budget: int):
    """distil's ``get_grad_embedding`` arithmetic (no bias, Y=None), then its ``init_centers``."""
    import torch

    P, H = pool
    n, C = P.shape
    d = H.shape[1]
    emb = torch.zeros([n, d * C])
    for s in range(0, n, 1024):
        data = P[s : s + 1024]
        outputs = torch.zeros(data.shape[0], C)
        outputs.scatter_(1, data.argmax(1).view(-1, 1), 1)
        l0_grads = data - outputs
        l0_expand = torch.repeat_interleave(l0_grads, d, dim=1)
        emb[s : s + 1024] = l0_expand * H[s : s + 1024].repeat(1, C)
    picks = _MODULES["distil"].init_centers(emb.numpy(), steps, "cpu")
    return np.asarray(picks, dtype=np.int64)


RUNNERS = {
    "fastal": run_fastal,
    "fastal_emb": run_fastal,
    "torch_dense": run_torch_dense,
    "skactiveml": run_skactiveml,
    "small_text": run_small_text,
    "distil": run_distil,
}


def warm_up(case: Case) -> None:
    """One tiny run: imports inside the functions, thread pools, caches of code."""
    small = replace(case, n=min(case.n, 512), d=min(case.d, 16))
    cache = DataCache(float("inf"))
    RUNNERS[case.impl](prepare(small, cache), 3, 3)


# ---------------------------------------------------------------------------------------------
# GPU cases: data generated on the device, device-resident peer, device memory


def estimate_device_bytes(impl: str, n: int, C: int, d: int, dtype: str) -> int:
    """Peak device bytes of a GPU case: its inputs plus the implementation's own arrays.

    - fastal_emb: A and H in ``dtype`` and O(n) vectors (squared norms, distances, tile sums).
    - torch_dense: P and H in float32, A = P - onehot (float32, n·C) while the float32 gradients
      (N = n·C·d elements) are formed, then O(n) vectors (norms, distances, a float64 cumsum).
    """
    small = 64 * n
    if impl == "fastal_emb":
        return ITEMSIZE[dtype] * n * (C + d) + small
    if impl == "torch_dense":
        return 4 * n * (C + d) + 4 * n * C * d + 4 * n * C + small
    raise ValueError(impl)


def gpu_mem_budget_bytes(device: str = "cuda") -> float:
    """``FASTAL_BENCH_GPU_MEM_GB``, else 85% of the device's memory (no limit off a GPU)."""
    raw = os.environ.get("FASTAL_BENCH_GPU_MEM_GB", "").strip()
    if raw:
        return float(raw) * 1e9
    import torch

    if torch.device(device).type != "cuda":
        return float("inf")
    return 0.85 * torch.cuda.get_device_properties(torch.device(device)).total_memory


def _generator(device, seed: int):
    import torch

    return torch.Generator(device=device).manual_seed(seed)


def device_features(n: int, d: int, dtype: str, device) -> object:
    """N(0, I) features (n, d) in ``dtype``, drawn on ``device`` in chunks of float32."""
    import torch

    gen = _generator(device, SEED * 1000 + 1)
    H = torch.empty((n, d), dtype=getattr(torch, dtype), device=device)
    chunk = max(1, (1 << 24) // d)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        H[s:e] = torch.randn((e - s, d), generator=gen, device=device, dtype=torch.float32)
    return H


def device_probs_or_factor(n: int, C: int, factor: bool, dtype: str, device) -> object:
    """As :func:`_probs_or_factor`, drawn on ``device``: softmax of ``LOGIT_SCALE * N(0, 1)``
    logits, with ``factor`` minus the one-hot of the argmax, stored as ``dtype``.

    The probabilities and the factor come from the same stream, so ``A = P - onehot`` exactly (in
    float32): the dense peer and fastal see the same embedding.
    """
    import torch

    gen = _generator(device, SEED * 1000 + 2)
    out = torch.empty((n, C), dtype=getattr(torch, dtype), device=device)
    chunk = max(1, (1 << 24) // C)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        z = torch.randn((e - s, C), generator=gen, device=device, dtype=torch.float32)
        z = torch.softmax(z.mul_(LOGIT_SCALE), dim=1)
        if factor:
            rows = torch.arange(e - s, device=device)
            z[rows, z.argmax(1)] -= 1
        out[s:e] = z
    return out


#: one GPU pool at a time: {"key": ..., "value": ...}
_DEVICE_DATA: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _free_device_pool():
    """Free this module's GPU pool when its cases are done (the next module's peaks start clean)."""
    yield
    _DEVICE_DATA.clear()
    gc.collect()
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def prepare_device(case: Case, cache: dict | None = None):
    """The pool of a GPU case on ``case.device``: a ``GradientEmbedding`` of A and H in
    ``case.dtype`` for fastal, the float32 (P, H) for the dense peer. With ``cache``, the arrays
    are kept for the next case of the same size (one size at a time: the previous one is freed)."""
    import torch

    kind = "A" if case.impl == "fastal_emb" else "P"
    dtype = case.dtype if case.impl == "fastal_emb" else "float32"
    key = (case.device, case.n, case.C, case.d, dtype, kind)
    if cache is not None and cache.get("key") == key:
        first, H = cache["value"]
    else:
        if cache is not None:
            cache.clear()
            gc.collect()
            if torch.device(case.device).type == "cuda":
                torch.cuda.empty_cache()
        first = device_probs_or_factor(case.n, case.C, kind == "A", dtype, case.device)
        H = device_features(case.n, case.d, dtype, case.device)
        if cache is not None:
            cache.update(key=key, value=(first, H))
    if case.impl == "fastal_emb":
        import fastal

        return fastal.GradientEmbedding(first, H)
    return first, H


def run_fastal_device(pool, steps: int, budget: int):
    """fastal's BADGE on a device ``GradientEmbedding``; the picks stay on the device."""
    from fastal.strategies import BADGE

    return BADGE().select(pool, steps, seed=SEED).indices


def run_torch_dense_device(pool, steps: int, budget: int):
    """Materialised BADGE in torch on the pool's device, as a careful GPU user would write it.

    The dense gradients ``G`` (n x C·d, float32), their squared norms, the first pick the largest
    norm; per pick an ``addmv`` distance pass, ``minimum``, and a float64 ``cumsum`` +
    ``searchsorted`` D² draw. Picks stay device tensors (``index_select``, never ``.item()``): no
    host round trip per pick. The uniforms are fastal's stream (``default_rng(SEED).random``).
    """
    import torch

    P, H = pool
    n, C = P.shape
    dev = P.device
    A = P.clone()
    A[torch.arange(n, device=dev), P.argmax(1)] -= 1
    G = (A[:, :, None] * H[:, None, :]).reshape(n, C * H.shape[1])  # the n x C*d gradients
    del A
    sq = torch.linalg.vector_norm(G, dim=1).square_()
    u = torch.from_numpy(np.random.default_rng(SEED).random(steps)).to(dev)
    return d2_sampling_torch(G, sq, torch.argmax(sq).view(1), u, steps)


DEVICE_RUNNERS = {"fastal_emb": run_fastal_device, "torch_dense": run_torch_dense_device}


def sync_device(device) -> None:
    """Wait for ``device`` when it is a GPU (inside timed functions, after the work)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def rough_device_seconds(case: Case) -> float:
    """A pessimistic guess (1 TB/s, 50 µs a pick) of one GPU run, to choose the rounds."""
    if case.impl == "torch_dense":
        per_pick = 4 * case.dense_elems
        return (case.budget + 3) * per_pick / 1e12 + 5e-5 * case.budget
    per_pick = ITEMSIZE[case.dtype] * case.n * (case.C + case.d)
    return case.budget * per_pick / 1e12 + 5e-5 * case.budget


def bench_device(benchmark, case: Case, sizes, results, skip_log) -> None:
    """A GPU case (``case.device``): timing with a device synchronize, peak device memory.

    Every ``torch.cuda`` call is guarded by the device's type, so the same code runs on
    ``device="cpu"`` (how it is checked without a GPU).
    """
    import torch

    import fastal

    dev = torch.device(case.device)
    on_gpu = dev.type == "cuda"
    steps = case.budget  # every GPU case runs the whole budget
    est = estimate_device_bytes(case.impl, case.n, case.C, case.d, case.dtype)
    limit = gpu_mem_budget_bytes(case.device)
    info = {"family": "badge", **asdict(case), "preset": sizes.preset, "steps": steps}

    def skip(reason: str):
        skip_log.append(
            {**info, "group": case.group, "reason": reason, "estimate_device_bytes": est}
        )
        pytest.skip(reason)

    if est > limit:
        skip(
            f"estimated {est / 1e9:.1f} GB of device memory > device memory budget "
            f"{limit / 1e9:.0f} GB (FASTAL_BENCH_GPU_MEM_GB; default 85% of the device's memory)"
        )
    if on_gpu and not fastal.cuda_available():
        skip(NO_GPU)

    run = DEVICE_RUNNERS[case.impl]
    # warm-up on the device: kernels loaded, cuBLAS handle, the caching allocator
    small = replace(case, n=min(case.n, 512), d=min(case.d, 16))
    run(prepare_device(small), 3, 3)
    sync_device(dev)

    t0 = time.perf_counter()
    pool = prepare_device(case, _DEVICE_DATA)
    sync_device(dev)
    prepare_s = time.perf_counter() - t0

    rounds, warmup = plan_rounds(rough_device_seconds(case), sizes.target_seconds)
    times: list[float] = []
    outputs: list = []

    def target():
        t0 = time.perf_counter()
        out = run(pool, steps, case.budget)
        sync_device(dev)  # the timing covers the kernels, not only their launches
        times.append(time.perf_counter() - t0)
        outputs.append(out)
        return out

    baseline = None
    if on_gpu:
        gc.collect()
        torch.cuda.synchronize(dev)
        baseline = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    benchmark.group = case.group
    benchmark.pedantic(target, rounds=rounds, warmup_rounds=warmup, iterations=1)
    memory: dict = {}
    if on_gpu:
        peak = torch.cuda.max_memory_allocated(dev)
        memory = {
            "peak_device_bytes": peak,
            "peak_device_extra_bytes": peak - baseline,
            "baseline_device_bytes": baseline,
            "peak_device_reserved_bytes": torch.cuda.max_memory_reserved(dev),
            "device_name": torch.cuda.get_device_name(dev),
            "device_memory_bytes": torch.cuda.get_device_properties(dev).total_memory,
        }
    measured = times[warmup:] or times
    picks = outputs[-1].cpu().numpy().astype(np.int64)
    outputs.clear()
    assert picks.shape == (steps,)
    assert len(np.unique(picks)) == steps
    assert picks.min() >= 0
    assert picks.max() < case.n

    seconds = min(measured)
    extra = benchmark.extra_info
    extra.update(
        info,
        per_pick_s=seconds / steps,
        budget_s=seconds,
        lower_bound=False,
        rounds=len(measured),
        seconds_min=seconds,
        seconds_median=statistics.median(measured),
        per_step_s=seconds / steps,
        setup_s=None,
        budget_s_estimated=False,
        prepare_s=prepare_s,
        first_pick=int(picks[0]),
        estimate_device_bytes=est,
        dense_bytes_float32=4 * case.dense_elems,
        inputs_bytes=ITEMSIZE[case.dtype] * case.n * (case.C + case.d),
        device_memory_budget_bytes=limit if limit != float("inf") else None,
        **memory,
    )
    if case.impl in FASTAL:
        other = results.get(replace(case, impl="torch_dense", dtype="float32").key)
        if other is not None:
            extra["speedup_vs_torch_dense"] = other["budget_s"] / seconds
            extra["first_pick_agrees_torch_dense"] = other["first_pick"] == int(picks[0])
            m = min(len(picks), len(other["picks"]))
            diff = np.flatnonzero(picks[:m] != other["picks"][:m])
            extra["agree_prefix_torch_dense"] = int(diff[0]) if diff.size else m
        if case.dtype != "float32":
            other = results.get(replace(case, dtype="float32").key)
            if other is not None:
                extra["speedup_vs_float32"] = other["budget_s"] / seconds
        for impl in FASTAL if case.device != "cpu" else ():  # the CPU run, when this session had it
            other = results.get(replace(case, impl=impl, dtype="float32", device="cpu").key)
            if other is not None:
                extra[f"speedup_vs_cpu_{impl}"] = other["budget_s"] / seconds
    results[case.key] = {"budget_s": seconds, "first_pick": int(picks[0]), "picks": picks}


# ---------------------------------------------------------------------------------------------
# the peak-memory child


def child_main(payload: dict) -> dict:
    case = Case(**{k: payload[k] for k in ("impl", "n", "C", "d", "budget")})
    steps = int(payload["steps"])
    reason = import_peer(case.impl)
    if reason:
        return {"error": reason}
    warm_up(case)
    data = DataCache(float("inf"))
    pool = prepare(case, data)
    gc.collect()
    baseline = _proc_status("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    picks = RUNNERS[case.impl](pool, steps, case.budget)
    seconds = time.perf_counter() - t0
    peak = _proc_status("VmHWM")
    if peak is None:  # not Linux: the whole process's peak, inputs' generation included
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        reset = False
    return {
        "peak_rss_bytes": peak,
        "baseline_rss_bytes": baseline,
        "peak_extra_bytes": peak - baseline if baseline is not None else None,
        "hwm_reset": reset,
        "seconds": seconds,
        "picks": len(picks),
    }


def measure_memory(case: Case, steps: int, timeout: float) -> dict:
    """Run ``case`` once in a fresh interpreter; its peak memory (see :func:`child_main`)."""
    payload = json.dumps({**asdict(case), "steps": steps})
    cmd = [sys.executable, os.path.abspath(__file__), "--child", payload]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"memory child timed out after {timeout:.0f} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return {"error": f"memory child failed (rc {out.returncode}): {' | '.join(tail)}"}
    return json.loads(lines[-1])


def memory_mode(sizes) -> str:
    mode = os.environ.get("FASTAL_BENCH_MEMORY", "").strip().lower()
    mode = mode or ("fastal" if sizes.preset == "tiny" else "all")
    if mode not in ("all", "fastal", "none"):
        raise pytest.UsageError(f"FASTAL_BENCH_MEMORY must be all, fastal or none, got {mode!r}")
    return mode


# ---------------------------------------------------------------------------------------------
# the benchmark

_DATA = DataCache(float(os.environ.get("FASTAL_BENCH_CACHE_GB", "9")) * 1e9)
#: per (impl, n, C, d, steps): child-process memory
_MEMORY: dict[tuple, dict] = {}


def plan_rounds(estimate_s: float, target_s: float) -> tuple[int, int]:
    """(rounds, warmup rounds): one round for long runs, up to 5 for short ones."""
    if estimate_s >= target_s:
        return 1, 0
    return int(min(5, max(1, target_s // max(estimate_s, 1e-9)))), 1


def rough_seconds(case: Case, steps: int) -> float:
    """A pessimistic guess (5 GB/s) of one run, to choose the number of rounds."""
    if case.impl in FASTAL:
        return steps * case.n * (case.C + case.d) * 4 / 5e9
    item = 8 if case.impl in ("skactiveml", "small_text") else 4
    per_pick = case.dense_elems * item * (3 if case.impl == "small_text" else 1)
    return (steps + 3) * per_pick / 5e9 + (0.05 * steps if case.impl == "distil" else 0.0)


def test_badge(benchmark, case: Case, sizes, results, skip_log):
    if case.device != "cpu":
        bench_device(benchmark, case, sizes, results, skip_log)
        return
    steps = case.steps(sizes)
    est = estimate_bytes(case.impl, case.n, case.C, case.d, steps, case.budget)
    info = {"family": "badge", **asdict(case), "preset": sizes.preset, "steps": steps}

    def skip(reason: str):
        skip_log.append({**info, "group": case.group, "reason": reason, "estimate_bytes": est})
        pytest.skip(reason)

    if est > mem_budget_bytes():
        skip(
            f"estimated {est / 1e9:.1f} GB > memory budget {mem_budget_bytes() / 1e9:.0f} GB "
            "(FASTAL_BENCH_MEM_GB)"
        )
    reason = import_peer(case.impl)
    if reason:
        skip(reason)

    memory: dict = {}
    mode = memory_mode(sizes)
    if mode == "all" or (mode == "fastal" and case.impl == "fastal"):
        picks = steps if case.impl in FASTAL else min(steps, MEMORY_PICKS)
        mkey = (case.impl, case.n, case.C, case.d, picks)
        if mkey not in _MEMORY:
            if est > 2e9:
                _DATA.clear()  # the child needs the room more than this process needs its cache
            timeout = float(os.environ.get("FASTAL_BENCH_CHILD_TIMEOUT", "1800"))
            _MEMORY[mkey] = measure_memory(case, picks, timeout)
        memory = _MEMORY[mkey]

    run = RUNNERS[case.impl]
    warm_up(case)
    t0 = time.perf_counter()
    pool = prepare(case, _DATA)
    prepare_s = time.perf_counter() - t0

    setup_s = None
    if steps < case.budget:  # a truncated peer: its set-up, measured next to the timed runs
        setup_s = time_setup(lambda: run(pool, 1, case.budget))

    rounds, warmup = plan_rounds(rough_seconds(case, steps), sizes.target_seconds)
    times: list[float] = []
    outputs: list = []

    def target():
        t0 = time.perf_counter()
        out = run(pool, steps, case.budget)
        times.append(time.perf_counter() - t0)
        outputs.append(out)
        return out

    benchmark.group = case.group
    benchmark.pedantic(target, rounds=rounds, warmup_rounds=warmup, iterations=1)
    measured = times[warmup:] or times
    picks = np.asarray(outputs[-1], dtype=np.int64)
    assert picks.shape == (steps,)
    assert len(np.unique(picks)) == steps
    assert picks.min() >= 0
    assert picks.max() < case.n

    seconds = min(measured)
    if setup_s is not None and setup_s >= seconds:
        # one pick cannot cost more than `steps` picks: the set-up run paid something else (first
        # touch of fresh memory, the VM); measure it again, now next to warm allocations
        setup_s = min(setup_s, time_setup(lambda: run(pool, 1, case.budget)))
    widened = timed(lambda k: run(pool, k, case.budget))
    seconds, steps = widen(widened, seconds, setup_s, steps, case.budget)
    info["steps"] = steps
    ext = extrapolate(seconds, setup_s, steps, case.budget)
    budget_s = ext["budget_s"]
    extra = benchmark.extra_info
    extra.update(
        info,
        **ext,
        rounds=len(measured),
        seconds_min=seconds,
        seconds_median=statistics.median(measured),
        per_step_s=seconds / steps,
        setup_s=setup_s,
        budget_s_estimated=setup_s is not None,
        prepare_s=prepare_s,
        first_pick=int(picks[0]),
        estimate_bytes=est,
        dense_bytes_float32=4 * case.dense_elems,
        inputs_bytes=4 * case.n * (case.C + case.d),
        memory_budget_bytes=mem_budget_bytes(),
    )
    if memory:
        if "error" in memory:
            extra["memory_error"] = memory["error"]
            # a child that crashes is a bug of this file (e.g. an import that only works in
            # pytest), not a measurement: fail, as CI's tiny run then says
            assert "failed (rc" not in memory["error"], memory["error"]
        else:
            extra.update(
                peak_rss_bytes=memory["peak_rss_bytes"],
                peak_extra_bytes=memory["peak_extra_bytes"],
                baseline_rss_bytes=memory["baseline_rss_bytes"],
                peak_hwm_reset=memory["hwm_reset"],
                memory_steps=memory["picks"],
                child_seconds=memory["seconds"],
            )
    if case.impl in FASTAL:
        for peer in PEERS:
            other = results.get(replace(case, impl=peer).key)
            if other is not None:
                extra[f"speedup_vs_{peer}"] = other["budget_s"] / budget_s
                extra[f"first_pick_agrees_{peer}"] = other["first_pick"] == int(picks[0])
    results[case.key] = {"budget_s": budget_s, "first_pick": int(picks[0])}


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    with contextlib.redirect_stdout(sys.stderr):  # peers' prints must not hide the result line
        result = child_main(json.loads(sys.argv[2]))
    print(json.dumps(result))
