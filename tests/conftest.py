"""The backend matrix and array helpers shared by every test module.

Backends: ``numpy`` and ``torch-cpu`` always; ``torch-cuda`` and ``cupy`` only when fastal was built
with its CUDA module, a GPU is visible and the framework imports. CUDA parameters carry
``pytest.mark.cuda``, and a collection hook skips every ``cuda``-marked test on machines without a
GPU or without ``fastal._cuda``.

Arrays are written once as float64 numpy and converted with :func:`to_backend`; :func:`upcast`
gives back the exact stored values as float64 numpy (what the references must see for low-precision
storage), :func:`to_numpy` a result as numpy.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from reference import kcenter_greedy_ref, min_distance_ref, softmax_ref, sqdist_to_row

import fastal

CUDA = fastal.cuda_available()

#: Storage dtypes, in order of decreasing precision.
DTYPES = ("float64", "float32", "float16", "bfloat16")
CPU_BACKENDS = ("numpy", "torch-cpu")
CUDA_BACKENDS = ("torch-cuda", "cupy")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda_backends() -> list[str]:
    if not CUDA:
        return []
    out = []
    if _has("torch"):
        import torch

        if torch.cuda.is_available():
            out.append("torch-cuda")
    if _has("cupy"):
        out.append("cupy")
    return out


AVAILABLE_CUDA_BACKENDS = tuple(_cuda_backends())


def supports(backend: str, dtype: str) -> bool:
    """Whether ``backend`` can hold ``dtype`` and fastal accepts it there."""
    if backend == "numpy":
        return dtype != "bfloat16"  # numpy has no bfloat16
    if backend in CUDA_BACKENDS:
        if dtype == "float64":
            return False  # float64 is CPU-only in fastal
        if backend == "cupy" and dtype == "bfloat16":
            return False  # cupy has no bfloat16
    return True


#: (backend, dtype) pairs of the CUDA tests: every GPU backend with every storage dtype it holds
GPU_PARAMS = [
    (b, t) for b in CUDA_BACKENDS for t in ("float32", "float16", "bfloat16") if supports(b, t)
]


def _param(*values, backend: str):
    marks = [pytest.mark.cuda] if backend in CUDA_BACKENDS else []
    return pytest.param(*values, marks=marks, id="-".join(str(v) for v in values))


def backend_params(backends=None) -> list:
    """``pytest.param``s of the available backends (CUDA ones marked ``cuda``)."""
    backends = backends or (*CPU_BACKENDS, *AVAILABLE_CUDA_BACKENDS)
    return [_param(b, backend=b) for b in backends]


def backend_dtype_params(dtypes=DTYPES, backends=None) -> list:
    """``pytest.param((backend, dtype))`` for every supported pair."""
    backends = backends or (*CPU_BACKENDS, *AVAILABLE_CUDA_BACKENDS)
    return [_param(b, t, backend=b) for b in backends for t in dtypes if supports(b, t)]


@pytest.fixture(params=backend_params())
def backend(request) -> str:
    """Every available backend: numpy, torch-cpu, and torch-cuda / cupy on a GPU machine."""
    return request.param


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    reason = (
        "needs a CUDA GPU and fastal built with its CUDA module"
        if fastal._ext.cuda is not None
        else "fastal was built without its CUDA module"
    )
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------------------------------------
# conversions


def to_backend(a, backend: str, dtype: str = "float64"):
    """A numpy array (any dtype) as ``backend`` storage of ``dtype`` (rounded once, to nearest)."""
    a = np.asarray(a)
    if not supports(backend, dtype):
        pytest.skip(f"{backend} cannot hold {dtype}")
    if backend == "numpy":
        return np.ascontiguousarray(a.astype(dtype))
    if backend in ("torch-cpu", "torch-cuda"):
        import torch

        t = torch.from_numpy(np.ascontiguousarray(a.astype(np.float64)))
        t = t.to(getattr(torch, dtype))
        return t.to("cuda") if backend == "torch-cuda" else t
    if backend == "cupy":
        cupy = pytest.importorskip("cupy")
        return cupy.asarray(a.astype(dtype))
    raise ValueError(f"unknown backend {backend!r}")


def indices_to_backend(idx, backend: str):
    """Integer indices as an int64 array of ``backend`` (on its device)."""
    idx = np.asarray(idx, dtype=np.int64)
    if backend == "numpy":
        return idx
    if backend in ("torch-cpu", "torch-cuda"):
        import torch

        t = torch.from_numpy(idx)
        return t.to("cuda") if backend == "torch-cuda" else t
    cupy = pytest.importorskip("cupy")
    return cupy.asarray(idx)


def to_numpy(x) -> np.ndarray:
    """Any result (numpy, torch on any device, cupy) as numpy; bfloat16 becomes float32."""
    if isinstance(x, np.ndarray):
        return x
    mod = type(x).__module__
    if mod.startswith("torch"):
        import torch

        t = x.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    if mod.startswith("cupy"):
        return x.get()
    return np.asarray(x)


def upcast(x) -> np.ndarray:
    """The exact stored values of ``x`` as float64 numpy (every storage dtype embeds in float64)."""
    return to_numpy(x).astype(np.float64)


def stored(a, dtype: str) -> np.ndarray:
    """``a`` rounded to ``dtype`` storage, back as float64 numpy (the values a kernel reads)."""
    return upcast(to_backend(a, "torch-cpu", dtype))


def backend_of(x) -> str:
    """The backend name of an array: numpy, torch-cpu, torch-cuda or cupy."""
    if isinstance(x, np.ndarray):
        return "numpy"
    mod = type(x).__module__
    if mod.startswith("torch"):
        return f"torch-{x.device.type}"
    if mod.startswith("cupy"):
        return "cupy"
    raise TypeError(f"not an array: {type(x).__name__}")


def dtype_of(x) -> str:
    """Canonical dtype name: float32, int64, bfloat16, ..."""
    if backend_of(x).startswith("torch"):
        return str(x.dtype).removeprefix("torch.")
    return x.dtype.name


def assert_indices_like(idx, X, length: int) -> None:
    """``idx`` is a 1-D int64 array of ``length`` in the framework and on the device of ``X``."""
    assert backend_of(idx) == backend_of(X), (backend_of(idx), backend_of(X))
    assert dtype_of(idx) == "int64"
    assert tuple(idx.shape) == (length,)
    if backend_of(X) == "torch-cuda":
        assert idx.device == X.device
    if backend_of(X) == "cupy":
        assert idx.device.id == X.device.id


#: the CPU's default: k-center pruning steps aside for rows shorter than this many bytes
DEFAULT_PRUNE_MIN_ROW_BYTES = fastal.ops._PRUNE_MIN_ROW_BYTES


@pytest.fixture(autouse=True)
def prune_rows_of_every_width(monkeypatch):
    """Runs the pruned k-center kernel at every row width. By default the CPU reads rows under
    DEFAULT_PRUNE_MIN_ROW_BYTES unpruned, which would leave most small test pools unpruned and the
    pruned kernel untested on them; test_kcenter restores the default where it checks that rule."""
    monkeypatch.setattr(fastal.ops, "_PRUNE_MIN_ROW_BYTES", 0)


#: assert_allclose tolerances for distances computed from storage of each dtype, compared with the
#: float64 reference on the *stored* values: the kernels accumulate float64 input in float64 and
#: everything else in float32, so only the accumulation rounds (relative error ~ d * eps).
RTOL = {"float64": 1e-12, "float32": 2e-5, "float16": 2e-5, "bfloat16": 2e-5}
ATOL = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-5, "bfloat16": 1e-5}


# ---------------------------------------------------------------------------------------------
# data and checks


def with_duplicates(X: np.ndarray, rng: np.random.Generator, fraction: float = 0.1) -> np.ndarray:
    """``X`` with about ``fraction`` of its rows overwritten by copies of other rows."""
    X = X.copy()
    n = X.shape[0]
    k = int(fraction * n)
    if n >= 2 and k:
        dst = rng.choice(n, size=k, replace=False)
        X[dst] = X[rng.integers(n, size=k)]
    return X


def gaussian(n: int, d: int, seed: int, duplicates: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return with_duplicates(X, rng) if duplicates else X


def mixture(n: int, d: int, k: int, seed: int, spread: float = 0.5) -> np.ndarray:
    """A k-component Gaussian mixture: well separated clusters, where pruning pays."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 10
    return centres[rng.integers(k, size=n)] + rng.normal(size=(n, d)) * spread


def copies_pool(C: int, d: int, distinct: int, copies: int, seed: int):
    """(probs, features, n_big): ``distinct`` rows of large gradient, each followed by ``copies``
    exact copies (rows [0, n_big)), then 2000 rows of small gradient (confident predictions),
    float32. A factored distance computed by its expansion leaves rounding noise of about
    e |g|^2 for a copy, far above the small rows' true distances: the near-copy tests."""
    rng = np.random.default_rng(seed)
    probs_big = rng.dirichlet(np.ones(C), size=distinct)
    feats_big = 30 * rng.normal(size=(distinct, d))
    logits = rng.normal(size=(2000, C))
    logits[:, 0] += 12
    probs = np.vstack([np.repeat(probs_big, copies + 1, 0), softmax_ref(logits)])
    feats = np.vstack([np.repeat(feats_big, copies + 1, 0), rng.normal(size=(2000, d))])
    return probs.astype(np.float32), feats.astype(np.float32), distinct * (copies + 1)


def half_pruned_pool(per_cluster: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(X, labeled): 10 tight clusters of ``per_cluster`` rows far apart, with one labeled row each
    (the pruning test drops them at every step), and as many rows of a Gaussian blob that holds
    the picks (always kept), shuffled: every block of rows keeps about half of them. float32,
    d = 64 (256-byte rows)."""
    rng = np.random.default_rng(seed)
    m = 10 * per_cluster
    far = rng.normal(size=(10, 64)) * 1000
    X = np.r_[np.repeat(far, per_cluster, axis=0) + rng.normal(size=(m, 64)) * 0.01,
              rng.normal(size=(m, 64))].astype(np.float32)  # fmt: skip
    order = rng.permutation(2 * m)
    labeled = np.argsort(order)[np.arange(0, m, per_cluster)]  # one row of each far cluster
    return X[order], labeled


def small_integers(n: int, d: int, seed: int, high: int = 3) -> np.ndarray:
    """Integer coordinates in [-high, high]: exact in every storage dtype and in float32
    accumulation (sums of squares stay far below 2**24), so ties are real ties everywhere."""
    return np.random.default_rng(seed).integers(-high, high + 1, size=(n, d)).astype(np.float64)


def labeled_subset(n: int, size: int, seed: int) -> np.ndarray | None:
    if size == 0:
        return None
    return np.sort(np.random.default_rng(seed + 1000).choice(n, size=size, replace=False))


def run(X, budget, *, labeled=None, seed=None, prune=True):
    """fastal.kcenter_greedy -> (picks, radius) as numpy."""
    picks, radius = fastal.kcenter_greedy(
        X, budget, labeled=labeled, seed=seed, prune=prune, return_radius=True
    )
    return to_numpy(picks), to_numpy(radius)


def first_centre(n: int, seed) -> int:
    """The documented first centre without a labeled set: ``default_rng(seed).integers(n)``."""
    return int(np.random.default_rng(seed).integers(n))


def reference(X64: np.ndarray, budget: int, labeled, seed):
    first = first_centre(X64.shape[0], seed) if labeled is None else None
    return kcenter_greedy_ref(X64, budget, labeled=labeled, first=first)


def greedy_gaps(X64: np.ndarray, picks: np.ndarray, labeled) -> list[tuple[float, float, float]]:
    """For each pick after the first: (float64 distance of the pick to the current centres,
    the largest such distance over non-centres, the second largest), centres being the labeled
    points and the earlier picks of *this* run."""
    n = X64.shape[0]
    centres = [] if labeled is None else list(labeled)
    is_centre = np.zeros(n, dtype=bool)
    mind2 = np.full(n, np.inf)
    for c in centres:
        is_centre[c] = True
        mind2 = np.minimum(mind2, sqdist_to_row(X64, X64[c]))
    out = []
    for t, p in enumerate(picks):
        if t > 0 or centres:
            free = np.sort(np.sqrt(mind2[~is_centre]))
            second = free[-2] if free.size >= 2 else -np.inf
            out.append((float(np.sqrt(mind2[p])), float(free[-1]), float(second)))
        is_centre[p] = True
        mind2 = np.minimum(mind2, sqdist_to_row(X64, X64[p]))
    return out


def assert_valid_greedy(X64, picks, labeled, rtol: float) -> None:
    """Each pick is a farthest point within ``rtol`` (relative to the current radius)."""
    for t, (mine, best, _) in enumerate(greedy_gaps(X64, picks, labeled)):
        assert mine >= best - rtol * best, f"pick {t}: distance {mine} < max {best} - tol"


def first_parting(picks, expected) -> int | None:
    """The first step where two pick sequences of one shape differ; None when they are equal."""
    picks, expected = np.asarray(picks), np.asarray(expected)
    assert picks.shape == expected.shape
    diff = np.flatnonzero(picks != expected)
    return int(diff[0]) if diff.size else None


def assert_same_until_near_tie(X64, picks, expected, labeled, rtol: float) -> None:
    """``picks == expected`` except that, from the first step where the two runs part, they may
    differ if that step was a near-tie (top two float64 distances within ``rtol``)."""
    t = first_parting(picks, expected)
    if t is None:
        return
    assert t > 0 or labeled is not None, f"first centres differ: {picks[0]} vs {expected[0]}"
    _, best, second = greedy_gaps(X64, expected[: t + 1], labeled)[-1]
    assert best - second <= rtol * best, (
        f"picks differ at step {t} ({picks[t]} vs {expected[t]}) although the float64 gap there "
        f"is {best - second:.3g} at radius {best:.6g}: not a near-tie"
    )


def assert_pp_same_until_near_tie(picks, expected, margins, rtol: float) -> None:
    """``picks == expected``, except that from the first step where they part the runs may differ
    if the reference's draw there was within ``rtol`` (relative to the total D^2 mass) of another
    row's cumulative boundary (or a "norm" first pick within ``rtol`` of the runner-up)."""
    t = first_parting(picks, expected)
    if t is None:
        return
    assert margins[t] <= rtol, (
        f"picks differ at step {t} ({picks[t]} vs {expected[t]}) although the reference's draw "
        f"there is {margins[t]:.3g} of the total away from any boundary: not a near-tie"
    )


def assert_argmin_valid(X64, Y64, dist, index, rtol: float, atol: float) -> None:
    """Each index is a nearest row within tolerance; where the nearest row is clear (the second
    nearest is farther than the tolerance) it must be exactly the reference's."""
    ref_dist, ref_index = min_distance_ref(X64, Y64)
    assert_allclose(dist, ref_dist, rtol=rtol, atol=atol)
    chosen = np.sqrt(
        np.array([sqdist_to_row(Y64[j : j + 1], x)[0] for x, j in zip(X64, index, strict=True)])
    )
    assert (chosen <= ref_dist * (1 + rtol) + atol).all()
    if Y64.shape[0] >= 2:
        all_d = np.sqrt(np.stack([sqdist_to_row(Y64, x) for x in X64]))
        second = np.sort(all_d, axis=1)[:, 1]
        clear = second - ref_dist > 2 * (rtol * second + atol)
        assert_array_equal(index[clear], ref_index[clear])
    else:
        assert_array_equal(index, ref_index)
