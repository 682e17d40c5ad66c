"""k-means++ seeding (D² sampling) and k-means (Lloyd, mini-batch) over dense or factored pools.

``kmeans_pp`` runs in the compiled kernels (one fused pass per pick, on CPU or CUDA) over a dense
matrix or a :class:`~fastal.GradientEmbedding`. ``kmeans`` (dense only: the mean of rank-one
gradients is not rank one) assigns rows with fastal's min-distance kernel, or for larger ``k`` by
GEMM (``|x|² - 2 x·c + |c|²``, then arg-min) and updates centres by a float64 segmented sum. On the
CPU one compiled pass per Lloyd iteration does all three (float16 / bfloat16 rows widened to
float32 as they are read, so a 16-bit pool fits exactly as its float32 copy): a BLAS GEMM per
chunk of rows (the MKL that torch links or scipy's OpenBLAS; see ``_gemm_backend``), called from
fastal's OpenMP threads with BLAS limited to one thread (one thread pool, as scikit-learn's Lloyd);
elsewhere GEMM tiles from torch (cuBLAS on CUDA). There, rows whose best centre leads by less than
the GEMM's rounding are settled by direct distance, and with ``prune`` the iterations skip the rows
that Yinyang bounds settle (``_BoundedLloyd``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _ext, _interop
from ._validate import check_budget, check_indices, check_matrix, make_rng
from .gradients import GradientEmbedding, as_torch, from_torch, torch_isfinite_rows
from .ops import (
    _ACC,
    _chunks,
    _torch_cpu_info,
    check_spread,
    check_spread_torch,
    cpu_pool,
    cpu_prunes,
    embedding_spread,
    min_sqdist_cpu,
    pool_info,
    pool_rows,
    pool_work,
)

#: most rows per GEMM tile of the assignment step
_TILE = 8192
#: elements of one (rows, k) distance tile of the GEMM assignment (8 MiB in float32): 8192 rows
#: of k = 10,000 centres would be 328 MB
_TILE_ELEMENTS = 1 << 21
#: from this many centres on, float32/float64 assignment uses GEMM tiles instead of the kernel
_GEMM_MIN_K = 32
#: mini-batch k-means stops after this many batches without a better weighted inertia
_NO_IMPROVEMENT = 10
#: bytes of per-thread float64 sums the fused CPU Lloyd steps may keep before they add the rows
#: in a second pass instead (-1: the kernel's rule, lloyd::RowSums in csrc/cpu/lloyd_tile.h)
_PARTIAL_LIMIT = -1


@functools.cache
def _gemm_backend(dtype: str) -> tuple[int, int]:
    """(address of a Fortran LP64 ``sgemm`` / ``dgemm``, address of MKL's Fortran
    ``mkl_set_num_threads_local_`` or 0) for the fused Lloyd step.

    :func:`_mkl_gemm` where torch links MKL, except on AMD CPUs with AVX-512, where MKL runs its
    AVX2 code and scipy's OpenBLAS (:func:`_openblas_gemm`) does not: on a Zen 5 core OpenBLAS made
    the step 3-12 % faster and a k-means iteration at d = 512 up to 1.3x faster, while on a Zen 1
    core MKL led. A fixed rule rather than a timing, so that the choice, and with it k-means'
    rounding, is the same in every run on one machine. ``FASTAL_GEMM=mkl|openblas`` forces one.
    """
    forced = os.environ.get("FASTAL_GEMM", "").strip().lower()
    if forced not in ("", "mkl", "openblas"):
        raise ValueError(f"FASTAL_GEMM must be 'mkl', 'openblas' or unset, got {forced!r}")
    if forced == "mkl" or (not forced and not _amd_with_avx512()):
        mkl = _mkl_gemm(dtype)
        if mkl[0] or forced == "mkl":
            return mkl
    return _openblas_gemm(dtype), 0


_BLAS_LOCK = threading.Lock()
_blas_users = 0  # k-means calls inside _one_blas_thread, all threads
_blas_limiter: Any = None


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """OpenBLAS limited to one thread (it runs inside fastal's OpenMP threads) from the first of
    overlapping k-means calls to the last. threadpoolctl's limit is process-wide: were each call to
    set and restore its own, one call's restore would hand the others' GEMMs back to OpenBLAS's
    thread pool inside an OpenMP region, or leave numpy's BLAS at one thread for good. While a
    call runs, numpy / scipy BLAS in other threads runs on one thread too."""
    global _blas_users, _blas_limiter
    from threadpoolctl import threadpool_limits

    with _BLAS_LOCK:
        if _blas_users == 0:
            _blas_limiter = threadpool_limits(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def _amd_with_avx512() -> bool:
    """Whether /proc/cpuinfo (Linux) names an AMD CPU with AVX-512F; False where it cannot tell."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            first_cpu = f.read(1 << 16).split("\n\n", 1)[0]
    except OSError:
        return False
    fields = {}
    for line in first_cpu.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = fields.get("flags", "").split()
    return fields.get("vendor_id") == "AuthenticAMD" and "avx512f" in flags


def _mkl_gemm(dtype: str) -> tuple[int, int]:
    """The MKL that torch links, when its CPU library exports the Fortran GEMM and
    ``mkl_set_num_threads_local_`` (x86-64 wheels; a small product checks the GEMM): each of
    fastal's threads sets its own MKL thread count to 1 around its calls. (0, 0) otherwise."""
    import torch

    name = "sgemm_" if dtype == "float32" else "dgemm_"
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    for path in sorted(glob.glob(os.path.join(libdir, "*torch_cpu*"))):
        try:
            lib = ctypes.CDLL(path)  # already loaded by torch: the same handle
        except OSError:  # pragma: no cover
            continue
        gemm = getattr(lib, name, None)
        local = getattr(lib, "mkl_set_num_threads_local_", None)
        if gemm is not None and local is not None and _gemm_works(gemm, dtype):
            address = ctypes.cast(gemm, ctypes.c_void_p).value
            return int(address), int(ctypes.cast(local, ctypes.c_void_p).value)
    return 0, 0


def _openblas_gemm(dtype: str) -> int:
    """scipy's BLAS GEMM through ``scipy.linalg.cython_blas`` (a public C API), or 0. The caller
    limits its threads to one with threadpoolctl."""
    try:
        from scipy.linalg import cython_blas
    except ImportError:  # pragma: no cover - scipy is a dependency
        return 0
    capsule = cython_blas.__pyx_capi__.get("sgemm" if dtype == "float32" else "dgemm")
    if capsule is None:  # pragma: no cover
        return 0
    # Private prototypes: setting restype on ctypes.pythonapi's shared attributes would change
    # them for every other user of ctypes in the process.
    api = ctypes.pythonapi
    get_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(("PyCapsule_GetName", api))
    get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
        ("PyCapsule_GetPointer", api)
    )
    return int(get_pointer(capsule, get_name(capsule)) or 0)


def _gemm_works(fn: Any, dtype: str) -> bool:
    """A column-major 2 x 2 = (2 x 3)(3 x 2) product through ``fn`` equals numpy's."""
    scalar = ctypes.c_float if dtype == "float32" else ctypes.c_double
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.integers(-3, 4, (2, 3)).astype(dtype))
    b = np.asfortranarray(rng.integers(-3, 4, (3, 2)).astype(dtype))
    c = np.zeros((2, 2), dtype=dtype, order="F")
    two, three = ctypes.c_int(2), ctypes.c_int(3)
    ptr, ref = ctypes.c_void_p, ctypes.byref
    fn(b"N", b"N", ref(two), ref(two), ref(three), ref(scalar(1)), ptr(a.ctypes.data), ref(two),
       ptr(b.ctypes.data), ref(three), ref(scalar(0)), ptr(c.ctypes.data), ref(two))  # fmt: skip
    return bool(np.array_equal(c, a @ b))


def _fused_lloyd(info, k: int) -> Any:
    """The fused CPU Lloyd step for this input, or None (CUDA, small k, no BLAS). 16-bit rows are
    widened to float32 (``_ACC``) in the kernel: the step is that of the float32 copy, bit for
    bit."""
    if info.device != "cpu" or info.dtype not in _ACC or k < _GEMM_MIN_K:
        return None
    gemm, threads_local = _gemm_backend(_ACC[info.dtype])
    if not gemm:
        return None
    kernel = getattr(_ext.cpu, f"kmeans_lloyd_step_{info.dtype}")

    def step(xt: Any, xsq: Any, centres: Any) -> tuple:
        import torch

        x = _interop.host_storage(xt, _torch_cpu_info(xt))
        c = np.ascontiguousarray(centres.numpy())
        labels, dist2, sums, counts = kernel(
            x, xsq.numpy(), c, gemm, threads_local, partial_limit=_PARTIAL_LIMIT
        )
        return (torch.from_numpy(a) for a in (labels, dist2, sums, counts))

    step.limit_blas = not threads_local  # scipy's OpenBLAS: limit its threads around the loop
    return step


#: Yinyang groups: about this many centres per group, at most _MAX_GROUPS groups
_GROUP_SIZE = 10
_MAX_GROUPS = 64
#: A bounded step (not the fresh one) that computes more than this share of the distances did
#: not pay for its bookkeeping: the next steps run plain (1, then 2, 4, ... of them after each
#: such step), then the bounds start afresh. Early iterations on unclustered data are like that.
_BOUNDS_GIVE_UP = 0.9


class _BoundedLloyd:
    """Lloyd iterations through the Yinyang-bounded kernel: the fused step's labels, sums and
    counts bit for bit, without reading the rows whose nearest centre the bounds settle.

    The bounds take 4 (1 + t) bytes per row, t groups of about ten centres (at most 64, and at
    most as many float32 values as a row of X holds, so they never outgrow X). The groups are a
    5-iteration k-means of the starting centres (Ding et al. 2015), seeded apart from the fit.
    """

    def __init__(self, info, centres: Any) -> None:
        k, d = centres.shape
        itemsize = 8 if info.dtype == "float64" else 4 if info.dtype == "float32" else 2
        self.t = max(1, min(k // _GROUP_SIZE, _MAX_GROUPS, d * itemsize // 4))
        # in float64: float32 centres far apart (an init row near 1e20) would overflow here and
        # refuse a fit that prune=False runs
        c64 = centres.numpy().astype(np.float64)
        groups = _kmeans(c64, self.t, seed=0, max_iter=5, prune=False).labels
        self.group = np.ascontiguousarray(groups, dtype=np.int32)
        n = info.shape[0]
        self.labels = np.zeros(n, dtype=np.int64)
        self.upper = np.empty(n, dtype=np.float32)
        self.glower = np.empty(n, dtype=np.float32)
        self.lower = np.empty((n, self.t), dtype=np.float32)
        self.offset = np.zeros(self.t)
        self.previous = None
        self.computed = 0  # distances computed, over all steps
        self.possible = 0  # rows x k per step, over all steps
        self.plain_left = 0  # plain steps to run before the bounds start afresh
        self.backoff = 1
        gemm, threads_local = _gemm_backend(_ACC[info.dtype])
        kernel = getattr(_ext.cpu, f"kmeans_lloyd_bounded_step_{info.dtype}")
        self._call = functools.partial(
            kernel, gemm_address=gemm, threads_local_address=threads_local,
            partial_limit=_PARTIAL_LIMIT,
        )  # fmt: skip

    def step(self, xt: Any, xsq: Any, centres: Any) -> tuple:
        """(labels, sums, counts) of the rows for these centres, as the fused step's."""
        import torch

        c = np.ascontiguousarray(centres.numpy())
        fresh = self.previous is None
        if fresh:
            shift = np.zeros(c.shape[0])
        else:  # in numpy (one thread, k x d); pushed up past float64 rounding: bounds only loosen
            moved = c.astype(np.float64) - self.previous.astype(np.float64)
            shift = np.sqrt(np.einsum("ij,ij->i", moved, moved)) * (1 + 1e-9)
        x = _interop.host_storage(xt, _torch_cpu_info(xt))
        sums, counts, computed = self._call(
            x, xsq.numpy(), c, shift, self.group, self.t, fresh, self.labels, self.upper,
            self.glower, self.lower, self.offset,
        )  # fmt: skip
        self.previous = c
        self.computed += computed
        self.possible += x.shape[0] * c.shape[0]
        if not fresh and computed > _BOUNDS_GIVE_UP * x.shape[0] * c.shape[0]:
            self.plain_left, self.backoff = self.backoff, 2 * self.backoff
        labels = torch.from_numpy(self.labels.copy())
        return labels, torch.from_numpy(sums), torch.from_numpy(counts)

    def use(self) -> bool:
        """Whether the next step goes through the bounds (else it is a plain fused step, and the
        bounds start afresh after the last of those)."""
        return self.plain_left == 0

    def plain_step(self, n: int, k: int) -> None:
        """Account for a plain step run in place of a bounded one."""
        self.plain_left -= 1
        self.previous = None  # the bounds missed this step's centre shifts: start afresh
        self.computed += n * k
        self.possible += n * k


def _other_rows(n: int, exclude: np.ndarray) -> np.ndarray:
    """The rows of ``range(n)`` not in ``exclude``, ascending (what ``X[rest]`` holds)."""
    return np.delete(np.arange(n), exclude)


def _first_by_norm(X: Any, info, exclude: Any = None) -> int:
    """Row with the largest squared norm (not one of ``exclude``), ties to the lowest index."""
    if isinstance(X, GradientEmbedding):
        sq = X._sqnorm
    else:
        import torch

        t = as_torch(X, info)
        # in float64: float32 squares of rows near 2e19 overflow to inf, and the first inf won
        sq = t.new_empty(t.shape[0], dtype=torch.float64)
        for s in range(0, t.shape[0], _TILE):
            c = t[s : s + _TILE].to(torch.float64)
            sq[s : s + _TILE] = (c * c).sum(1)
    if exclude is not None and exclude.size:
        import torch

        sq = sq.clone()
        sq[torch.from_numpy(exclude).to(sq.device)] = -float("inf")
    return int(sq.argmax())  # torch.argmax returns the first maximum


def _torch_acc(dtype: str):
    import torch

    return torch.float64 if dtype == "float64" else torch.float32


def kmeans_pp(
    X: Any,
    k: int,
    *,
    seed: int | np.random.Generator | None = None,
    first: str = "random",
    labeled: Any = None,
    progress: bool = False,
    prune: bool = True,
) -> Any:
    """k-means++ seeding: ``k`` rows drawn by D² sampling (Arthur & Vassilvitskii 2007).

    Each pick is drawn with probability proportional to the squared distance to the nearest centre
    chosen so far (labeled rows count as centres). One fused pass per pick updates those distances
    and the sums the next draw needs: O(n d) per pick, or O(n (C + dh)) for a factored embedding.
    On the CPU the pass skips, as k-center greedy does, the rows that the new centre provably
    cannot bring closer (``prune``): the distances, and so the draws, are those of the full pass.

    Parameters
    ----------
    X : array of shape (n, d) or GradientEmbedding
        numpy, torch (CPU/CUDA) or cupy; float32, float16, bfloat16, or float64 on the CPU.
    k : int
        Number of picks, ``0 <= k <= n - len(labeled)``.
    seed : int or numpy.random.Generator, optional
        The random stream: the first pick (``first="random"``) is ``rng.integers(n)``, then
        ``u = rng.random(k)`` and pick ``t`` is the first row whose running sum of weights exceeds
        ``u[t]`` times their total. The same seed gives the same picks on a given backend.
    first : {"random", "norm"}
        First pick without labeled rows: uniform (k-means++), or the row of largest norm (BADGE,
        Ash et al. 2020).
    labeled : 1-D integer indices, optional
        Rows already chosen: they are centres from the start and never picked.
    progress : bool
        tqdm progress bar over the picks.
    prune : bool, default True
        Exact triangle-inequality pruning on the CPU (see :func:`fastal.kcenter_greedy`): a row
        whose nearest centre ``a`` has ``d(c_new, a) >= 2 d(row, a)`` is not read; a block of
        rows whose test keeps at least 35 % of them is read whole. The picks are identical either
        way; it pays once the centres are many and the pool is clustered. Rows shorter than 256
        bytes are read unpruned; CUDA inputs are not pruned.

    Returns
    -------
    (k,) int64 array of row indices in pick order, in the input's framework and device.

    Raises
    ------
    ValueError
        Also when a squared distance between the (finite) rows overflows the accumulation dtype
        (float32 rows ~1e19 apart, float64 ~1e154): D² sampling on infinite weights would be
        meaningless. Detected on the sampler's block sums, not by an extra pass over ``X``.

    Examples
    --------
    >>> import numpy as np, fastal
    >>> X = np.array([[0.0], [0.1], [10.0], [10.1]])
    >>> sorted(fastal.kmeans_pp(X, 2, seed=0, first="norm").tolist())
    [0, 3]
    """
    if not isinstance(prune, (bool, np.bool_)):
        raise TypeError(f"prune must be a bool, got {type(prune).__name__}")
    return _kmeans_pp(
        X, k, seed=seed, first=first, labeled=labeled, progress=progress, name="X",
        prune=bool(prune),
    )  # fmt: skip


def _overflow(name: str, dtype: str) -> ValueError:
    """The error for squared distances between finite rows of ``name`` that overflowed."""
    acc = _ACC[dtype]
    hint = "" if acc == "float64" else " or pass float64"
    return ValueError(f"distances between rows of {name} overflow {acc}: scale {name} down{hint}")


def _kmeans_pp(
    X: Any,
    k: int,
    *,
    seed: Any = None,
    first: str = "random",
    labeled: Any = None,
    progress: bool = False,
    name: str = "X",
    exclude: np.ndarray | None = None,
    prune: bool = True,
    stats: dict | None = None,
) -> Any:
    """:func:`kmeans_pp`, its messages naming ``name``.

    ``exclude`` (unique int64 host indices, CPU only, no ``labeled``): rows that are neither
    picked nor centres, as if the seeding ran on the other rows alone (same draws, the indices of
    the whole ``X``) without gathering them: BADGE leaves the labeled rows out this way.
    ``stats`` (CPU): receives ``rows_read`` (rows whose distance to a new centre was computed,
    the earlier centres of the pruning test included) and ``pruned``.
    """
    info = pool_info(X, name)
    n = info.shape[0]
    lab = check_indices(labeled, n, "labeled", like=info)
    excl = np.empty(0, dtype=np.int64) if exclude is None else exclude
    if excl.size and (lab.size or info.device != "cpu"):
        raise AssertionError("exclude: CPU only, without labeled rows")  # a caller's bug
    k = check_budget(k, n - lab.size - excl.size, "k")
    if first not in ("random", "norm"):
        raise ValueError(f"first must be 'random' or 'norm', got {first!r}")
    rng = make_rng(seed)
    first_pick = None
    if lab.size == 0 and k > 0:
        if first == "norm":
            first_pick = _first_by_norm(X, info, excl)
        else:  # the same draw as on the other rows alone
            first_pick = int(rng.integers(n - excl.size))
            if excl.size:
                first_pick = int(_other_rows(n, excl)[first_pick])
    uniform = rng.random(k)
    if k == 0:
        return _interop.to_framework(np.empty(0, dtype=np.int64), info)
    if info.device != "cpu":
        from ._factored_cuda import kmeans_pp_cuda

        with _interop.device_scope(info, "X"):
            if isinstance(X, GradientEmbedding):
                check_spread(embedding_spread(X), info.dtype, name, cuda=True)
            else:
                check_spread_torch(as_torch(X, info), info.dtype, name)
            return kmeans_pp_cuda(X, k, lab, first_pick, uniform, progress)
    pool = cpu_pool(X, info, name)
    mind = np.empty(n, dtype=_ACC[info.dtype])
    picks = np.empty(k, dtype=np.int64)
    blocks = np.empty(-(-n // _ext.cpu.kmeanspp_block), dtype=np.float64)
    prune = cpu_prunes(pool, prune)
    # pruning state: each row's nearest centre (a position in centres: the labeled rows, then the
    # picks)
    near = np.full(n, -1, dtype=np.int64) if prune else None
    centres = np.concatenate([lab, np.empty(k, dtype=np.int64)]) if prune else None
    if lab.size:  # the distances to the labeled rows, in calls of bounded work (Ctrl-C)
        mind[:], nearest = min_sqdist_cpu(pool, pool_rows(pool, lab), info.dtype)
        if prune:
            near[:] = nearest
    getattr(_ext.cpu, f"kmeanspp_init_{info.dtype}")(
        pool, lab, -1 if first_pick is None else first_pick, mind, picks, blocks
    )
    mind[excl] = -np.inf  # what the kernels mark centres with: never read, weigh nothing
    steps = getattr(_ext.cpu, f"kmeanspp_steps_{info.dtype}")
    has_first = first_pick is not None

    def check_weights() -> None:
        # Finite rows have finite squared distances unless one overflowed (an inf weight), and the
        # weights only shrink: if their float64 total is finite once every row has a centre, the
        # draws never see an overflow. O(n / block), on the block sums the sampler keeps anyway.
        if not np.isfinite(blocks.sum()):
            raise _overflow(name, info.dtype)

    if not has_first:
        check_weights()  # the labeled rows are the centres
    state = (near, centres, lab.size)
    rows_read = 0
    for t0, t1 in _chunks(k, progress, "k-means++", work=pool_work(pool)):
        if t0 == 0 and has_first:  # the distances to the first pick
            rows_read += steps(pool, mind, picks, uniform, blocks, True, 0, 1, *state)
            check_weights()
            t0 = 1
        rows_read += steps(pool, mind, picks, uniform, blocks, has_first, t0, t1, *state)
    if stats is not None:
        stats.update(rows_read=int(rows_read), pruned=bool(prune))
    return _interop.wrap_host(picks, info)


# ---------------------------------------------------------------------------------------------
# k-means


@dataclass
class KMeansResult:
    """Outcome of :func:`kmeans`."""

    centres: Any  #: (k, d), float32 (float64 for float64 X), X's framework and device
    labels: Any  #: (n,) int64 index of each row's centre
    inertia: float  #: sum of squared distances of the rows to their centres
    n_iter: int  #: Lloyd iterations (mini-batch: epochs) run
    converged: bool
    #: distances the Lloyd iterations computed over n x k per iteration (1.0 unpruned, None
    #: mini-batch); slightly above 1 where rows the bounds could not settle were measured alone
    #: and then again by their chunk's GEMM
    distance_share: float | None = None


def _row_sqnorms(xt: Any, dtype: Any) -> Any:
    """``|x|²`` of every row in ``dtype`` (once per fit: it does not change between iterations)."""
    import torch

    out = torch.empty(xt.shape[0], dtype=dtype, device=xt.device)
    for s in range(0, xt.shape[0], _TILE):
        x = xt[s : s + _TILE].to(dtype)
        out[s : s + _TILE] = (x * x).sum(1)
    return out


def _gemm_assign(info, k: int) -> bool:
    """Whether :func:`_assign` takes GEMM tiles: float32 / float64 rows from ``_GEMM_MIN_K``
    centres, and 16-bit rows on CUDA (widened tile by tile; the min-distance kernel there would
    compare them with centres rounded to their storage)."""
    if info.dtype in ("float32", "float64"):
        return k >= _GEMM_MIN_K
    return info.device != "cpu"


def _assign(xt: Any, centres: Any, info, xsq: Any = None, step: Any = None) -> tuple[Any, Any]:
    """(labels int64, squared distances) of every row of ``xt`` to its nearest centre (torch).
    The centres keep their accumulation dtype: 16-bit rows are never compared with centres
    rounded to 16 bits. The distances are direct, ``Σ (x - c)²`` to the label.

    ``step``: the fused CPU Lloyd step (:func:`_fused_lloyd`), whose labels do not depend on the
    GEMM's rounding; ``xsq``: the rows' squared norms when already known (for ``step``)."""
    import torch

    k = centres.shape[0]
    if step is not None:
        if xsq is None:
            xsq = _row_sqnorms(xt, centres.dtype)
        labels, dist2, _, _ = step(xt, xsq, centres)
        return labels, dist2
    if _gemm_assign(info, k):
        labels = torch.empty(xt.shape[0], dtype=torch.int64, device=xt.device)
        dist2 = torch.empty(xt.shape[0], dtype=centres.dtype, device=xt.device)
        # about the centres' mean: |x|² and x·c of rows far from the origin would round away
        # the gaps between centres (float32 rows at 1e4 lost most labels)
        mid = centres.mean(0)
        c0 = centres - mid
        csq = (c0 * c0).sum(1)
        ct = c0.T.contiguous()
        rows = max(64, min(_TILE, _TILE_ELEMENTS // k))  # the (rows, k) tile, not rows alone
        for s in range(0, xt.shape[0], rows):
            x = xt[s : s + rows].to(centres.dtype) - mid
            # |c|² - 2 x·c: |x|² is the same for every centre, so it is left out of the arg-min
            d2 = torch.addmm(csq[None, :], x, ct, alpha=-2)
            arg = d2.argmin(1)  # first minimum on ties
            labels[s : s + rows] = arg
            dist2[s : s + rows] = ((x - c0[arg]) ** 2).sum(1)
        return labels, dist2
    if info.device == "cpu":  # the min-distance kernel, the centres in float32 / float64
        x = _interop.host_storage(xt, _torch_cpu_info(xt))
        c = np.ascontiguousarray(centres.detach().numpy())
        dist2, labels = getattr(_ext.cpu, f"min_sqdist_to_centres_{info.dtype}")(x, c)
        return torch.from_numpy(labels), torch.from_numpy(dist2).to(centres.dtype)
    from .ops import min_sqdist_cuda

    # CUDA float32 rows with few centres: the centres have the rows' dtype already
    dist2, labels = min_sqdist_cuda(xt.contiguous(), centres.to(xt.dtype).contiguous())
    return labels, dist2.to(centres.dtype)


def _segment_means(xt: Any, labels: Any, k: int) -> tuple[Any, Any]:
    """(float64 sums per centre, counts): the update step (the segmented-sum kernel on the CPU;
    torch ``index_add_`` on CUDA, chunked to bound the float64 copy)."""
    import torch

    if xt.device.type == "cpu":
        x = _interop.host_storage(xt, _torch_cpu_info(xt))
        sums, counts = getattr(_ext.cpu, f"segment_sum_{_torch_cpu_info(xt).dtype}")(
            x, labels.contiguous().numpy(), k
        )
        return torch.from_numpy(sums), torch.from_numpy(counts)
    sums = torch.zeros((k, xt.shape[1]), dtype=torch.float64, device=xt.device)
    for s in range(0, xt.shape[0], _TILE):
        sums.index_add_(0, labels[s : s + _TILE], xt[s : s + _TILE].to(torch.float64))
    counts = torch.bincount(labels, minlength=k)
    return sums, counts


def _tol_abs(xt: Any, tol: float, keep: Any = None, name: str = "X") -> float:
    """scikit-learn's tolerance: ``tol * mean(var(X, axis=0))`` (over the ``keep`` rows).

    The variance of ``X - x0`` (``x0`` the first row read; the variance is shift-invariant), by
    per-tile column means and centred sums of squares in float64, merged across tiles by Chan et
    al.'s pairwise update: one pass, no float64 copy of X. The differences are bounded by the
    spread the distance checks allow; float32 squares and column means of X itself overflowed
    for pools ~1e17 wide or a constant column ~1e26 (the tolerance became inf and the fit
    stopped after one iteration, "converged")."""
    import torch

    if tol == 0:
        return 0.0
    work = torch.float64 if xt.dtype == torch.float64 else torch.float32
    count, mean, m2, x0 = 0, None, None, None
    for s in range(0, xt.shape[0], _TILE):
        x = xt[s : s + _TILE] if keep is None else xt[s : s + _TILE][keep[s : s + _TILE]]
        x = x.to(work)
        nb = x.shape[0]
        if nb == 0:
            continue
        if x0 is None:
            x0 = x[0].clone()
        x = (x - x0).to(torch.float64)
        mb = x.mean(0)
        m2b = ((x - mb) ** 2).sum(0)
        if mean is None:
            count, mean, m2 = nb, mb, m2b
            continue
        delta = mb - mean
        total = count + nb
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + delta**2 * (count * nb / total)
        count = total
    out = float(tol * (m2 / count).mean())
    if not math.isfinite(out):  # a column variance past float64: so is some squared distance
        raise _overflow(name, "float64" if xt.dtype == torch.float64 else "float32")
    return out


def kmeans(
    X: Any,
    k: int,
    *,
    seed: int | np.random.Generator | None = None,
    init: Any = "k-means++",
    max_iter: int | None = None,
    tol: float = 1e-4,
    minibatch: int | None = None,
    prune: bool = True,
    progress: bool = False,
) -> KMeansResult:
    """k-means clustering: Lloyd iterations (distance bounds on the CPU), or Sculley's mini-batch
    k-means.

    Parameters
    ----------
    X : array of shape (n, d)
        Dense rows: numpy, torch (CPU/CUDA) or cupy; float32, float16, bfloat16, float64 (CPU).
    k : int
        Number of clusters, ``1 <= k <= n``.
    seed : int or numpy.random.Generator, optional
        Seeds the initialisation and the mini-batches.
    init : {"k-means++", "random"} or array of shape (k, d)
        ``"k-means++"``: :func:`kmeans_pp` with ``first="random"``; ``"random"``: ``k`` distinct
        rows by ``rng.choice(n, k, replace=False)``; an array: those centres.
    max_iter : int, optional
        Lloyd iterations (default 300); with ``minibatch``, epochs (default 100).
    tol : float, default 1e-4
        Stop when the squared centre shift of an iteration (epoch) is at most
        ``tol * mean(var(X, axis=0))`` (scikit-learn's definition), or when no label changes.
    minibatch : int, optional
        Batch size of mini-batch k-means (Sculley 2010): each epoch walks a random permutation of
        the rows in batches; each batch is assigned and moves every centre to the running mean of
        the rows it has seen, ``c <- (v c + sum of its batch rows) / (v + m)``. Stops early like
        scikit-learn's ``MiniBatchKMeans``: 10 batches without a better smoothed batch inertia.
        Not the faster choice on the CPU, large pools included: an epoch computes every row's
        distance to every centre, as an unbounded Lloyd iteration does, plus a gather and an
        update per batch, while the bounded iterations (``prune``) skip most distances (n = 1M,
        d = 512, k = 1000, 2-core Zen 4, by hand: 2 epochs 114 s, 2 full-batch iterations 59 s;
        10 bounded iterations 30 s on a quieter run). Nor does it need less memory than full
        batch with ``prune=False``: both keep a few length-n work vectors beside ``X``. On CUDA,
        where no bounds apply, an epoch and a Lloyd iteration compute the same distances.
    prune : bool, default True
        Lloyd iterations skip the rows whose nearest centre provably stays the same (Yinyang
        bounds, Ding et al. 2015); a row they cannot settle is measured against the centres of the
        groups left open, a chunk with many such rows goes through the GEMM. Either way a label
        is the centre of least direct squared distance (the GEMM only filters), so labels,
        centres and iterations equal those of ``prune=False`` bit for bit. Applies on the CPU
        (float32, float64, float16, bfloat16) with ``k >= 32`` (the GEMM path) without
        ``minibatch``; the bounds take ``4 (1 + t)`` bytes per row, ``t = min(k // 10, 64)``
        groups of centres (at most a row's size). A step whose bounds settled almost nothing
        (early iterations on unclustered data) is followed by plain steps, 1, 2, 4, ... of them,
        then the bounds start afresh. ``distance_share`` reports the share of the distances
        computed.
    progress : bool
        tqdm progress bar over the iterations.

    Returns
    -------
    KMeansResult
        Labels and inertia are those of the final centres over the whole of ``X``. An empty cluster
        takes the row farthest from its centre (the j-th empty one the j-th farthest row).

    Raises
    ------
    ValueError
        Also when squared distances between the (finite) rows overflow the accumulation dtype
        (float32 rows ~1e19 apart, float64 ~1e154), detected on the k-means++ weights and on the
        inertia (each mini-batch's, and the final one) instead of returning an ``inf`` / NaN
        inertia and arbitrary labels.

    Examples
    --------
    >>> import numpy as np, fastal
    >>> X = np.array([[0.0], [0.2], [10.0], [10.2]])
    >>> res = fastal.kmeans(X, 2, seed=0)
    >>> sorted(res.centres.ravel().round(3).tolist()), round(res.inertia, 6)
    ([0.1, 10.1], 0.04)
    """
    return _kmeans(
        X, k, seed=seed, init=init, max_iter=max_iter, tol=tol, minibatch=minibatch,
        prune=prune, progress=progress, name="X",
    )  # fmt: skip


def _kmeans(
    X: Any,
    k: int,
    *,
    seed: Any = None,
    init: Any = "k-means++",
    max_iter: int | None = None,
    tol: float = 1e-4,
    minibatch: int | None = None,
    prune: bool = True,
    progress: bool = False,
    name: str = "X",
    exclude: np.ndarray | None = None,
) -> KMeansResult:
    """:func:`kmeans`, its messages naming ``name``.

    ``exclude`` (unique int64 host indices): the k-means of the other rows, as on ``X[rest]``
    (the same draws; labels, inertia and iterations of those rows alone, up to the rounding of
    float64 sums noted in :class:`_Excluded`), in place where it can, else on the gathered
    ``X[rest]``.
    """
    import torch
    from tqdm.auto import tqdm

    info = check_matrix(X, name)
    if info.device == "cpu":
        X = _contiguous_once(X, info)
    skip = None
    if exclude is not None and exclude.size:
        if not _Excluded.applies(X, info, exclude):
            xt = as_torch(X, info)
            rest = torch.from_numpy(_other_rows(info.shape[0], exclude)).to(xt.device)
            sub = xt[rest].contiguous()
            try:
                return _kmeans(
                    from_torch(sub, info), k, seed=seed, init=init, max_iter=max_iter, tol=tol,
                    minibatch=minibatch, prune=prune, progress=progress, name=name,
                )  # fmt: skip
            except ValueError as err:  # name the row of X, not its position among the rest
                if "contains NaN or Inf" not in str(err):
                    raise
                bad = torch.nonzero(~torch_isfinite_rows(sub)).flatten()
                raise ValueError(
                    f"{name} contains NaN or Inf in {bad.numel()} row(s), first at row "
                    f"{int(rest[bad[0]])}"
                ) from None
        skip = _Excluded(as_torch(X, info), exclude, full_batch=minibatch is None)
    n, d = info.shape
    n_rows = n if skip is None else n - exclude.size
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")  # before check_budget's ">= 0"
    k = check_budget(k, n_rows, "k", f"the rows of {name}")
    if max_iter is None:
        max_iter = 300 if minibatch is None else 100
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not tol >= 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    if minibatch is not None and (
        isinstance(minibatch, bool) or not isinstance(minibatch, (int, np.integer)) or minibatch < 1
    ):
        raise ValueError(f"minibatch must be None or a positive integer, got {minibatch!r}")
    if not isinstance(prune, (bool, np.bool_)):
        raise TypeError(f"prune must be a bool, got {type(prune).__name__}")
    rng = make_rng(seed)
    xt = as_torch(X, info)
    if info.device == "cpu":
        if skip is None:  # (_Excluded.applies has checked every row)
            cpu_pool(X, info, name)  # finiteness, with the row named
    elif not bool(torch.isfinite(xt).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    acc = _torch_acc(info.dtype)
    if info.device != "cpu" or skip is not None:  # cpu_pool above checked the others
        check_spread_torch(xt, info.dtype, name)
    centres = _initial_centres(X, xt, info, k, init, rng, acc, name, exclude=exclude)
    tol_abs = _tol_abs(xt, float(tol), None if skip is None else skip.keep, name)

    converged, it = False, 0
    fused = _fused_lloyd(info, k)  # mini-batches assign through it too
    # |x|² of every row: only the fused steps read it (torch's GEMM tiles leave it out of the
    # arg-min); mini-batches take their batch's, so there it waits for the final pass
    xsq = _row_sqnorms(xt, acc) if fused is not None and minibatch is None else None
    bounded = (
        _BoundedLloyd(info, centres) if fused is not None and prune and minibatch is None else None
    )
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(
            tqdm(total=int(max_iter), disable=not progress, desc="k-means", unit="iter")
        )
        if fused is not None and fused.limit_blas:  # OpenBLAS runs inside fastal's threads
            stack.enter_context(_one_blas_thread())
        if minibatch is None:
            prev = None
            for it in range(1, int(max_iter) + 1):
                use = bounded if bounded is not None and bounded.use() else None
                labels, dist2, sums, counts = _lloyd_pass(xt, xsq, centres, info, fused, use)
                if bounded is not None and use is None:
                    bounded.plain_step(xt.shape[0], k)
                if skip is not None:
                    labels, dist2, sums, counts = skip.drop(labels, dist2, sums, counts, k)
                if dist2 is None and bool((counts == 0).any()):
                    # an empty cluster takes the farthest rows: their distances from the plain
                    # pass, whose labels, sums and counts are the bounded pass's
                    labels, dist2, sums, counts = fused(xt, xsq, centres)
                    if skip is not None:
                        labels, dist2, sums, counts = skip.drop(labels, dist2, sums, counts, k)
                new = _relocate_empty(sums, counts, xt, dist2, acc)
                shift = float(((new - centres) ** 2).sum())
                centres = new
                bar.update()
                if prev is not None and bool(torch.equal(labels, prev)):
                    converged = True
                    break
                if shift <= tol_abs:
                    converged = True
                    break
                prev = labels
        else:
            rows = None if skip is None else torch.nonzero(skip.keep).flatten()
            centres, it, converged = _minibatch(
                xt, centres, info, int(minibatch), int(max_iter), tol_abs, rng, bar, name, rows,
                fused,
            )  # fmt: skip
        if fused is not None:
            if xsq is None:
                xsq = _row_sqnorms(xt, acc)
            labels, dist2, _, _ = fused(xt, xsq, centres)
        else:
            labels, dist2 = _assign(xt, centres, info, xsq)
    if skip is not None:
        labels, dist2 = labels[skip.keep], dist2[skip.keep]
    inertia = float(dist2.to(torch.float64).sum())
    if not np.isfinite(inertia):  # finite rows and centres: a distance (or the sum) overflowed
        raise _overflow(name, info.dtype)
    if minibatch is not None:
        share = None
    elif bounded is not None and bounded.possible:
        share = bounded.computed / bounded.possible
    else:
        share = 1.0
    return KMeansResult(
        centres=from_torch(centres.to(acc), info),
        labels=from_torch(labels, info),
        inertia=inertia,
        n_iter=it,
        converged=converged,
        distance_share=share,
    )


def _lloyd_pass(xt, xsq, centres, info, fused, bounded) -> tuple:
    """(labels, dist2, sums, counts) of one Lloyd assignment; dist2 is None from the bounded
    kernel, which does not compute every row's distance."""
    k = centres.shape[0]
    if bounded is not None:
        labels, sums, counts = bounded.step(xt, xsq, centres)
        return labels, None, sums, counts
    if fused is not None:
        return fused(xt, xsq, centres)
    labels, dist2 = _assign(xt, centres, info, xsq)
    return (labels, dist2, *_segment_means(xt, labels, k))


def _contiguous_once(X: Any, info) -> Any:
    """``X`` itself when the CPU kernels can read it in place, else one C-contiguous native copy
    (in X's framework): the Lloyd steps would otherwise copy a strided or byte-swapped pool at
    every iteration."""
    if info.framework == "torch":
        if X.is_contiguous() and not X.is_neg() and not X.is_conj():
            return X
        return X.detach().resolve_neg().resolve_conj().contiguous()  # a lazy negation too
    if info.framework == "numpy":
        return np.ascontiguousarray(_interop.native_order(X))
    return X


def _initial_centres(X, xt, info, k, init, rng, acc, name="X", exclude=None):
    """The k starting centres; with ``exclude``, drawn from the other rows as on ``X[rest]``."""
    import torch

    if isinstance(init, str):
        excl = np.empty(0, dtype=np.int64) if exclude is None else exclude
        if init == "k-means++":
            picks = _kmeans_pp(X, k, seed=rng, first="random", name=name, exclude=excl)
            rows = _interop.host_numpy(picks)
        elif init == "random":
            rows = rng.choice(info.shape[0] - excl.size, k, replace=False)
            if excl.size:
                rows = _other_rows(info.shape[0], excl)[rows]
        else:
            raise ValueError(f"init must be 'k-means++', 'random' or a (k, d) array, got {init!r}")
        idx = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(xt.device)
        return xt[idx].to(acc)
    cinfo = check_matrix(init, "init")
    if cinfo.shape != (k, info.shape[1]):
        raise ValueError(f"init must have shape ({k}, {info.shape[1]}), got {cinfo.shape}")
    if cinfo.device != info.device:
        raise ValueError(f"init is on {cinfo.where} but X is on {info.where}")
    c = as_torch(init, cinfo).to(device=xt.device, dtype=acc)
    if not bool(torch.isfinite(c).all()):
        raise ValueError("init contains NaN or Inf")
    return c.clone()


class _Excluded:
    """Rows that Lloyd leaves out in place (KMeansSampling's and ALLY's labeled rows).

    A full-batch step still assigns them (a few percent more work when few rows are labeled);
    their contributions are then taken out of the sums and counts, their labels set to -1 (so the
    convergence test compares the other rows only) and their distances to -1 (never the farthest
    row an empty cluster takes). Only their own rows are copied, not the other rows. Mini-batch
    draws its batches from the other rows (``keep``) and needs no copy. The sums less the
    excluded rows equal the other rows' sums where float64 adds them exactly (float32 and 16-bit
    rows of moderate range); for float64 rows they can differ in the last bits, and a row at a
    near-tie then takes the other label.
    """

    #: the excluded rows' copy is at most this share of X; beyond, gathering the rest is smaller
    MAX_SHARE = 0.25

    def __init__(self, xt: Any, exclude: np.ndarray, full_batch: bool = True) -> None:
        import torch

        self.rows = torch.from_numpy(np.ascontiguousarray(exclude)).to(xt.device)
        self.keep = torch.ones(xt.shape[0], dtype=torch.bool, device=xt.device)
        self.keep[self.rows] = False
        self.x = xt[self.rows].contiguous() if full_batch else None

    @classmethod
    def applies(cls, X: Any, info, exclude: np.ndarray) -> bool:
        """CPU, few enough rows (each fit ends with a pass over all of them), and every row
        finite (a non-finite excluded row would reach the sums; the gathered path ignores it, as
        the caller expects)."""
        if info.device != "cpu":
            return False
        if exclude.size > cls.MAX_SHARE * info.shape[0]:
            return False
        x = _interop.host_storage(X, info)
        return int(getattr(_ext.cpu, f"count_nonfinite_rows_{info.dtype}")(x)[0]) == 0

    def drop(self, labels: Any, dist2: Any, sums: Any, counts: Any, k: int) -> tuple:
        ex_sums, ex_counts = _segment_means(self.x, labels[self.rows], k)
        labels = labels.masked_fill(~self.keep, -1)
        if dist2 is not None:
            dist2 = dist2.masked_fill(~self.keep, -1)
        return labels, dist2, sums - ex_sums, counts - ex_counts.to(counts.dtype)


def _relocate_empty(sums, counts, xt, dist2, acc):
    """Means from the sums; an empty cluster takes the j-th farthest row from its centre."""
    import torch

    means = (sums / counts.clamp_min(1)[:, None].to(torch.float64)).to(acc)
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel():
        # stable sort of -dist: equal distances keep the lowest index first
        order = torch.sort(-dist2.to(torch.float64), stable=True).indices[: empty.numel()]
        means[empty] = xt[order].to(acc)
    return means


def _minibatch(
    xt, centres, info, batch, epochs, tol_abs, rng, bar, name="X", rows=None, step=None
):
    """Sculley (2010) mini-batch k-means; returns (centres, epochs run, converged).

    Every epoch draws a permutation of the rows and walks it in batches. It stops early when an
    epoch moves the centres by at most ``tol_abs`` (squared), or when the exponentially weighted
    batch inertia has not improved for ``_NO_IMPROVEMENT`` batches (scikit-learn's rule).
    ``rows`` (int64 tensor, ascending): the rows to cluster, as on ``xt[rows]`` (default all).
    ``step``: the fused CPU Lloyd step that assigns each batch (:func:`_assign`).
    """
    import torch

    n, k = (xt.shape[0] if rows is None else rows.numel()), centres.shape[0]
    batch = min(batch, n)
    seen = torch.zeros(k, dtype=torch.float64, device=xt.device)
    alpha = min(1.0, 2.0 * batch / (n + 1))
    ewa, best, stale = None, float("inf"), 0
    for epoch in range(1, epochs + 1):
        start = centres.clone()
        order = torch.from_numpy(rng.permutation(n)).to(xt.device)
        if rows is not None:
            order = rows[order]
        for s in range(0, n, batch):
            xb = xt[order[s : s + batch]]
            labels, dist2 = _assign(xb, centres, info, step=step)
            sums, counts = _segment_means(xb, labels, k)
            hit = counts > 0
            v = seen[hit]
            c64 = centres[hit].to(torch.float64)
            centres[hit] = ((v[:, None] * c64 + sums[hit]) / (v + counts[hit])[:, None]).to(centres.dtype)
            seen += counts
            mean_inertia = float(dist2.to(torch.float64).mean())
            if not np.isfinite(mean_inertia):  # an overflowed distance: the update is garbage
                raise _overflow(name, info.dtype)
            ewa = mean_inertia if ewa is None else (1 - alpha) * ewa + alpha * mean_inertia
            if ewa < best:
                best, stale = ewa, 0
            else:
                stale += 1
        bar.update()
        if float(((centres - start) ** 2).sum()) <= tol_abs or stale >= _NO_IMPROVEMENT:
            return centres, epoch, True
    return centres, epochs, False
