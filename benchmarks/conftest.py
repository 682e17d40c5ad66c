"""Sizes, data, bandwidth and timing helpers shared by the benchmark modules.

Size presets come from the environment variable ``FASTAL_BENCH``:

``tiny`` (default)
    A few thousand rows: what CI runs (``.ci/run``'s plain ``python -m pytest`` collects
    ``benchmarks/`` too; ``--benchmark-disable`` works as well) so that the benchmark code cannot
    rot. Seconds in total.
``medium``
    n in {10k, 100k}, d in {128, 512}, budget in {100, 1000}: minutes.
``full``
    The grid of issue 2: n in {10k, 100k, 1M}, d in {128, 512}, budget in {100, 1000}, plus the GPU
    case n = 1M, d = 512, float16, budget 10,000 when a GPU is present.

``FASTAL_BENCH_N``, ``FASTAL_BENCH_D`` and ``FASTAL_BENCH_BUDGET`` (comma-separated integers)
replace one axis of the chosen preset; ``FASTAL_BENCH_PEER_ELEMS`` sets how many ``steps * n * d``
elements a slow peer may process in one timed run (see :meth:`Sizes.peer_steps`).

``bench_kmeans.py`` uses n and d as they are and the budgets as k (``FASTAL_BENCH_K``);
``bench_badge.py`` uses n and the budgets, and its own axes C (10 / 10, 100 / 10, 100, 1000) and
d (32 / 512 / 512) for tiny / medium / full (``FASTAL_BENCH_C``, ``FASTAL_BENCH_BADGE_D``), with a
per-case memory budget ``FASTAL_BENCH_MEM_GB`` (default 8) for the peers that materialise.
Deliberate skips (a peer not installed, a case over the memory budget) are appended to
:data:`SKIPPED` through the ``skip_log`` fixture and written into the JSON as ``fastal.skipped``.

Benchmark modules are named ``bench_*.py``; :func:`pytest_collect_file` collects them when the
pytest configuration's ``python_files`` does not already match them, so ``pytest benchmarks/`` works
either way. A module that defines ``generate_cases(metafunc, sizes, cuda)`` gets the chosen
:class:`Sizes` (and whether a GPU is usable) to parametrize its tests with.

Nothing here downloads anything: all pools are generated from fixed seeds.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

# ---------------------------------------------------------------------------------------------
# collection of bench_*.py


def pytest_collect_file(file_path, parent):
    """Collect ``bench_*.py`` as test modules unless ``python_files`` already does."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    patterns = parent.config.getini("python_files")
    if any(fnmatch.fnmatch(file_path.name, p) for p in patterns):
        return None  # pytest's own collector takes it
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest collects it anyway
    return pytest.Module.from_parent(parent, path=file_path)


# ---------------------------------------------------------------------------------------------
# sizes


@dataclass(frozen=True)
class Sizes:
    """The grid one benchmark run covers."""

    preset: str
    ns: tuple[int, ...]
    ds: tuple[int, ...]
    budgets: tuple[int, ...]
    #: (n, d, budget, dtype) cases run only on a GPU, beyond the grid
    gpu_extra: tuple[tuple[int, int, int, str], ...]
    #: how many bytes the read-bandwidth probe streams
    bandwidth_bytes: int
    #: a slow peer's timed run processes at most about this many steps * n * d elements
    peer_elems: float
    #: a timed run is repeated until about this many seconds are spent (1 to 5 rounds)
    target_seconds: float

    def peer_steps(self, n: int, d: int, budget: int) -> int:
        """Picks a slow peer is timed over: the whole budget where cheap, else at least 20.

        A truncated run's budget is extrapolated from it and a one-pick run (the peer's set-up:
        norms, distances to the labeled point), :mod:`benchmarks._extrapolate`.
        """
        return int(min(budget, max(20, self.peer_elems // (n * d))))


PRESETS = {
    "tiny": Sizes("tiny", (3000,), (32,), (20,), ((4096, 64, 64, "float16"),), 16 << 20, 2e7, 0.0),
    "medium": Sizes("medium", (10_000, 100_000), (128, 512), (100, 1000), (), 1 << 30, 2e9, 10.0),
    "full": Sizes(
        "full",
        (10_000, 100_000, 1_000_000),
        (128, 512),
        (100, 1000),
        ((1_000_000, 512, 10_000, "float16"),),
        1 << 30,
        2e9,
        10.0,
    ),
}


def _int_list(name: str) -> tuple[int, ...] | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return tuple(int(v) for v in raw.replace(" ", "").split(",") if v)
    except ValueError:
        raise pytest.UsageError(f"{name} must be comma-separated integers, got {raw!r}") from None


def bench_sizes() -> Sizes:
    """The :class:`Sizes` chosen by ``FASTAL_BENCH`` and the per-axis overrides."""
    preset = os.environ.get("FASTAL_BENCH", "tiny").strip().lower() or "tiny"
    if preset not in PRESETS:
        raise pytest.UsageError(f"FASTAL_BENCH must be one of {sorted(PRESETS)}, got {preset!r}")
    s = PRESETS[preset]
    peer = os.environ.get("FASTAL_BENCH_PEER_ELEMS", "").strip()
    return Sizes(
        preset=s.preset,
        ns=_int_list("FASTAL_BENCH_N") or s.ns,
        ds=_int_list("FASTAL_BENCH_D") or s.ds,
        budgets=_int_list("FASTAL_BENCH_BUDGET") or s.budgets,
        gpu_extra=s.gpu_extra,
        bandwidth_bytes=s.bandwidth_bytes,
        peer_elems=float(peer) if peer else s.peer_elems,
        target_seconds=s.target_seconds,
    )


SIZES = bench_sizes()


def pytest_generate_tests(metafunc):
    generate = getattr(metafunc.module, "generate_cases", None)
    if generate is not None:
        generate(metafunc, SIZES, cuda_ready())


def pytest_report_header(config):
    s = SIZES
    return (
        f"fastal benchmarks: FASTAL_BENCH={s.preset} n={list(s.ns)} d={list(s.ds)} "
        f"budget={list(s.budgets)} peer_elems={s.peer_elems:g}"
    )


def _build_info() -> dict:
    """Which fastal was measured: git HEAD and local changes at session start, module mtimes."""
    import subprocess

    import fastal._ext

    info: dict[str, Any] = {}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        git = ["git", "-C", root]
        info["head"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--", "csrc", "python", "CMakeLists.txt"],
            capture_output=True, text=True, timeout=10,
        ).stdout.split("\n")  # fmt: skip
        info["local_changes"] = [ln[3:] for ln in changed if ln.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    for name in ("cpu", "cuda"):
        mod = getattr(fastal._ext, name, None)
        if mod is not None:
            info[f"_{name}_built"] = time.strftime(
                "%Y-%m-%dT%H:%M:%S%z", time.localtime(os.path.getmtime(mod.__file__))
            )
    return info


BUILD_INFO: dict = {}


def pytest_sessionstart(session):
    BUILD_INFO.update(_build_info())


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Record what ``report.py`` needs about the run: command, sizes, machine, threads."""
    import platform
    import sys

    import fastal._ext

    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gb = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    env = {
        k: v for k, v in sorted(os.environ.items()) if k.startswith(("FASTAL_", "OMP_", "GOMP_"))
    }
    output_json["fastal"] = {
        "command": " ".join(["python -m pytest", *sys.argv[1:]]),
        "env": env,
        "sizes": {
            "preset": SIZES.preset,
            "n": list(SIZES.ns),
            "d": list(SIZES.ds),
            "budget": list(SIZES.budgets),
            "peer_elems": SIZES.peer_elems,
            "bandwidth_bytes": SIZES.bandwidth_bytes,
        },
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": mem_gb,
        "fastal_threads": fastal._ext.cpu.num_threads(),
        "cuda": cuda_ready(),
        "build": BUILD_INFO,
        "skipped": SKIPPED,
    }


@pytest.fixture(scope="session")
def sizes() -> Sizes:
    return SIZES


# ---------------------------------------------------------------------------------------------
# data


def gauss_pool(n: int, d: int, seed: int = 0) -> np.ndarray:
    """One isotropic Gaussian blob, N(0, I): unstructured embeddings, where pruning cannot help."""
    return np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)


def mixture_pool(
    n: int, d: int, components: int = 100, spread: float = 0.25, seed: int = 1
) -> np.ndarray:
    """A mixture of ``components`` Gaussians: centres N(0, I), each point centre + N(0, spread² I).

    Inter-centre distances are about sqrt(2 d) and within-component distances about
    spread * sqrt(2 d): clustered embeddings, where triangle-inequality pruning skips most rows.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((components, d), dtype=np.float32)
    label = rng.integers(components, size=n)
    X = rng.standard_normal((n, d), dtype=np.float32)
    chunk = max(1, (1 << 24) // d)
    for s in range(0, n, chunk):  # no (n, d) temporary beside X
        e = min(n, s + chunk)
        X[s:e] *= np.float32(spread)
        X[s:e] += centres[label[s:e]]
    return X


GENERATORS = {"gauss": gauss_pool, "mixture": mixture_pool}


class PoolCache:
    """Pools by (kind, n, d, dtype, framework), generated once, evicted oldest-first past a limit.

    float32 numpy is the master copy; float16 is a numpy cast of it and bfloat16 a torch cast
    (numpy has no bfloat16); ``framework="torch"`` gives a zero-copy torch view of the numpy array.
    """

    def __init__(self, limit_bytes: int):
        self.limit = limit_bytes
        self.items: OrderedDict[tuple, Any] = OrderedDict()

    @staticmethod
    def _nbytes(x) -> int:
        return int(x.nbytes) if hasattr(x, "nbytes") else x.element_size() * x.nelement()

    def get(self, kind: str, n: int, d: int, dtype: str = "float32", framework: str = "numpy"):
        key = (kind, n, d, dtype, framework)
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        if (dtype, framework) == ("float32", "numpy"):
            value = GENERATORS[kind](n, d)
        elif framework == "torch" or dtype == "bfloat16":
            import torch

            base = self.get(kind, n, d, "float32" if dtype == "bfloat16" else dtype)
            value = torch.from_numpy(base)
            if dtype == "bfloat16":
                value = value.to(torch.bfloat16)
        else:
            value = self.get(kind, n, d).astype(dtype)
        self.items[key] = value
        self._evict(keep=key)
        return value

    def _evict(self, keep: tuple) -> None:
        while (
            sum(self._nbytes(v) for v in self.items.values()) > self.limit and len(self.items) > 1
        ):
            oldest = next(iter(self.items))
            if oldest == keep:
                break
            del self.items[oldest]
        gc.collect()


@pytest.fixture(scope="session")
def pools() -> PoolCache:
    """Session cache of generated pools (at most ~9 GB held at once, or FASTAL_BENCH_CACHE_GB)."""
    gb = float(os.environ.get("FASTAL_BENCH_CACHE_GB", "9"))
    return PoolCache(int(gb * 1e9))


# ---------------------------------------------------------------------------------------------
# bandwidth and timing


class ReadBandwidth:
    """Read bandwidth in GB/s (1e9 B/s) of ``fastal._ext.cpu.parallel_sum`` over a float32 array.

    ``parallel_sum`` streams the array with fastal's OpenMP threads: the same threads and the same
    kind of pass as a k-center step, so ``bytes(X) / bandwidth`` is the floor for one step. The
    array (1 GiB at medium and full size) is allocated once and touched before any timing.
    :meth:`probe` re-measures (the bandwidth drifts on a shared machine); :attr:`best` is the
    highest value seen this session, the best estimate of what the memory system can deliver.
    """

    def __init__(self, nbytes: int, repeats: int = 10):
        self.array = np.ones(max(1, nbytes // 4), dtype=np.float32)
        self.nbytes = int(self.array.nbytes)
        self.best = 0.0
        self.first = self.probe(repeats)

    def probe(self, repeats: int = 5) -> float:
        from fastal._ext import cpu

        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            cpu.parallel_sum(self.array)
            best = min(best, time.perf_counter() - t0)
        gbs = self.nbytes / best / 1e9
        self.best = max(self.best, gbs)
        return gbs


def measure_read_bandwidth(nbytes: int, repeats: int = 10) -> float:
    """Best-of-``repeats`` read bandwidth in GB/s over a fresh ``nbytes`` float32 array."""
    return ReadBandwidth(nbytes, repeats).first


@pytest.fixture(scope="session")
def bandwidth_probe(sizes: Sizes) -> ReadBandwidth:
    """The session's :class:`ReadBandwidth` (first measured, best of 10, when first needed)."""
    return ReadBandwidth(sizes.bandwidth_bytes)


@pytest.fixture(scope="session")
def read_bandwidth(bandwidth_probe: ReadBandwidth) -> float:
    """Read bandwidth of this machine in GB/s, measured once per session (>= 1 GiB at full size)."""
    return bandwidth_probe.first


def cuda_ready() -> bool:
    """A CUDA device visible to torch and fastal built with its CUDA module."""
    try:
        import torch

        import fastal
    except ImportError:
        return False
    return bool(torch.cuda.is_available() and fastal.cuda_available())


def sync_cuda(x: Any = None) -> None:
    """Wait for the GPU when ``x`` is a CUDA tensor (or, with no argument, when CUDA is in use).

    Call it inside the timed function, after the work, so that a timing covers the kernels and not
    only their launches.
    """
    try:
        import torch
    except ImportError:
        return
    if x is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return
    if isinstance(x, torch.Tensor) and x.is_cuda:
        torch.cuda.synchronize(x.device)


def measure_cuda_copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        stop.record()
        stop.synchronize()
        best = min(best, start.elapsed_time(stop) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / best / 1e9


@pytest.fixture(scope="session")
def cuda_copy_bandwidth(sizes: Sizes) -> float:
    """Device copy bandwidth in GB/s (read + write), measured once a session; skips without CUDA."""
    if not cuda_ready():
        pytest.skip("needs a CUDA GPU and fastal built with its CUDA module")
    return measure_cuda_copy_bandwidth(min(sizes.bandwidth_bytes, 1 << 30))


@pytest.fixture(scope="session")
def cuda_sync():
    """:func:`sync_cuda` for timed functions: ``cuda_sync(X)`` waits for X's device if CUDA."""
    return sync_cuda


@pytest.fixture(scope="session")
def results() -> dict:
    """Per-session registry of measured cases, so that later cases report ratios to earlier ones."""
    return {}


#: cases a module skipped on purpose (a peer not installed, over the memory budget): the report
#: needs the reasons, and pytest-benchmark's JSON keeps only the cases that ran
SKIPPED: list[dict] = []


@pytest.fixture(scope="session")
def skip_log() -> list[dict]:
    """Session list of deliberate skips, written into the JSON as ``fastal.skipped``.

    Append ``{"group": ..., "impl": ..., "reason": ..., **case fields}`` before ``pytest.skip``.
    """
    return SKIPPED
