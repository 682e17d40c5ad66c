"""Batched Gram eigenvalues: the scoring kernel of CRC (Kong et al., eq. 9 and Alg. 1)."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _ext, _interop
from ._validate import (
    check_bool,
    check_choice,
    check_indices,
    check_matrix,
    host_values,
    real_to_float,
)

#: float64 machine epsilon: the eigenvalues are computed in float64 for every storage dtype
EPS = float(np.finfo(np.float64).eps)
_TINY = float(np.finfo(np.float64).tiny)  # the smallest normal float64
_DTYPES = ("float16", "bfloat16", "float32", "float64")

# Entries of Z are rescaled by a power of two (exactly) when their magnitude could make the Gram
# entries or their squares overflow or underflow float64; the eigenvalues are scaled back.
_BIG, _SMALL = 2.0**240, 2.0**-240
_METHODS = ("auto", "tridiagonal", "lowrank")
# The host path scans Z for its peak and for NaN / Inf in row blocks of about this many values,
# with no whole-pool temporary (tests make it tiny)
_CHUNK_VALUES = 1 << 22
#: On CUDA, "auto" takes "lowrank" (when its operation count is lower) from this order on, and for
#: groups of at most CUDA_LOWRANK_MAX_G rows (torch's batched eigvalsh is a batched Jacobi solver
#: up to order 32, one call per matrix above). On an H200: 0.16 s against the kernel's 1.15 s at
#: order 1024 (200 groups), 0.25-0.26 s against 0.27 at order 512 (500 groups).
CUDA_LOWRANK_MIN_ORDER = 512
CUDA_LOWRANK_MAX_G = 32


def gram_min_eig(
    Z: Any,
    labeled: Any,
    groups: Any,
    *,
    rtol: float | None = None,
    return_all: bool = False,
    method: str = "auto",
    progress: bool = False,
) -> Any:
    """Smallest positive eigenvalue of the Gram matrix of ``labeled + group``, for many groups.

    For every row ``g`` of ``groups`` the Gram matrix ``K = Z_S Z_Sᵀ`` of ``S = labeled + g`` is
    formed on its smaller side — the ``|S| x |S|`` matrix ``Z_S Z_Sᵀ`` when ``|S| <= D``, else the
    ``D x D`` matrix ``Z_Lᵀ Z_L + Z_gᵀ Z_g``; their non-zero eigenvalues are the same — with the
    labeled part (``Z_L Z_Lᵀ`` or ``Z_Lᵀ Z_L``) computed once per call. Each matrix is reduced to
    tridiagonal form by Householder reflections (or, for large matrices, the labeled part is
    diagonalised once and each group handled as a low-rank change of it: ``method``) and only the
    two wanted eigenvalues are located, O(size) per evaluation on the tridiagonal: ``λ_max``, then
    ``λ⁺_min``, the smallest eigenvalue
    above ``rtol · λ_max``, each bracketed by Sturm-sequence (LDLᵀ inertia) counts and converged
    by Laguerre's iteration (monotone for real-rooted polynomials), with bisection as the fallback
    whenever an iterate leaves its bracket. This is the CRC score ``s(X_u) = λ⁺_min(X_L + X_u)``
    of Alg. 1 (Kong et al., eq. 9, "considering only the positive eigenvalues"); with ``Z`` the
    trace-NTK features of :func:`fastal.ntk_features`, ``K`` is the trace-over-classes empirical
    NTK of §3.1.

    Everything is computed in float64 whatever the dtype of ``Z`` (products of float32 values are
    exact in float64), one matrix per thread (OpenMP), the GIL released; on the CPU the groups go
    in calls of bounded work (about 2³¹ multiply-adds, and at least eight times the labeled part's
    cost, which each call forms again) so that Ctrl-C is seen between them. Memory: one
    ``size x size`` float64 matrix per thread plus the shared part, ``size = min(|S|, D)``; host
    ``Z`` is read in place (scanned for NaN / Inf and its peak in row blocks; when that needs the
    rescaling, the peak of the rows of ``labeled`` and ``groups``, the only rows read, sets the
    scale, and each call gets a scaled copy of the rows it reads only: the labeled rows and about
    16M values of group rows, more only where forming the labeled part again in each call would
    cost more than an eighth of it). float64 rows far smaller than the rest of ``Z`` get their
    own scale: a group scoring below 2^-400 is computed again on its rows (and the labeled
    ones) alone, rescaled by their peak.
    CUDA input runs on its device (see Notes): same definition and threshold rule, results equal
    to the CPU ones to rounding.

    Parameters
    ----------
    Z : (n, D) array
        numpy, torch (CPU or CUDA) or cupy, float32 or float64, finite; float16 / bfloat16 rows
        are widened to float32 as they are read (the Gram is float64). With CUDA ``Z``,
        ``labeled`` and ``groups`` are Python lists or CUDA arrays (numpy arrays are refused).
    labeled : 1-D int array-like or None
        The shared set ``L`` (distinct row indices of ``Z``; may be empty).
    groups : (n_groups, G) int array-like
        ``n_groups >= 1`` groups of ``G >= 1`` row indices: distinct within a group, none in
        ``labeled``; different groups may share indices.
    rtol : float in [0, 1), optional
        Eigenvalues ``<= rtol · λ_max`` count as zero. Default ``max(|S|, D) · eps(float64)``
        (``numpy.linalg.matrix_rank``'s rule; the computation is float64 for every dtype).
    return_all : bool, default False
        Also return every group's whole spectrum (implicit QL on the same tridiagonal matrix; on
        CUDA's one-block-per-matrix path, bisection of every eigenvalue).
    method : {"auto", "tridiagonal", "lowrank"}, default "auto"
        ``"tridiagonal"``: each group's matrix is formed and reduced as above, O(m³) per
        group. ``"lowrank"``: the labeled part is diagonalised once per call (float64
        ``torch.linalg.eigh``: ``Z_Lᵀ Z_L = Q Λ Qᵀ`` on the D side, ``Z_L Z_Lᵀ`` on the ``|S|``
        side), after which a group adds a rank-G term (D side) or G bordering rows (|S| side) to
        the diagonal ``Λ``; the inertia of ``K - xI`` then comes from a ``G x G`` matrix
        (Haynsworth), ``O(m G²)`` per evaluation after ``O(m G D)`` per group, with the same
        Laguerre search. Much faster for large matrices and small groups (at ``D = 1024``,
        ``G = 20``: ~20x per group). Not with ``return_all``. On CUDA it runs in batched torch
        on the device (every group at once, multisection on the same counts: see Notes).
        ``"auto"`` picks the cheaper by an operation count (``"tridiagonal"`` for
        ``return_all``; on CUDA ``"lowrank"`` only from order 512 on, where the tridiagonal
        kernel's one thread block per matrix is slowest, and for ``G <= 32``).
    progress : bool, default False
        A tqdm bar over the groups, updated after each CPU call (CUDA input: none, one call).

    Returns
    -------
    lambda_min : (n_groups,) float64, in ``Z``'s framework (numpy, torch or cupy) and on its device
        ``λ⁺_min`` of each group, ``0.0`` when the matrix has no eigenvalue above the threshold
        (e.g. all rows of ``Z_S`` zero), or when its eigenvalues are below float64's normal range
        (rows of ``S`` below about 2^-511) beside ordinary rows elsewhere in ``Z`` (a ``Z`` of
        such rows alone raises ``ValueError``: they do not fit float64). float64 even
        for float32 ``Z``: the scores of near-singular sets differ by less than float32 resolution,
        and rounding them would create ties in CRC's ranking.
    spectra : (n_groups, min(|S|, D)) float64, only with ``return_all=True``
        Ascending eigenvalues of each group's matrix (the non-zero spectrum of ``K`` plus zeros);
        rounding-level negative values are clamped to 0 (all 0.0 for a group whose eigenvalues
        do not fit float64, as above). They agree with ``lambda_min`` to rounding
        (``~eps · λ_max``), being computed by a different method.

    Notes
    -----
    Interpretation: the paper takes λ⁺_min of the trace-NTK Gram over ``X_L + X_u`` without a
    numerical zero rule; fastal uses the relative threshold above. On the CPU ``λ_max``, which
    only sets that threshold, is located to 1e-6 of the spectrum's scale (λ⁺_min to rounding).
    Duplicated rows of ``Z`` (Proposition 2) give an exact zero eigenvalue, which ``λ⁺_min``
    skips once ``Z_S`` has more rows than its rank. Cost per group, tridiagonal method:
    ``O(m³)`` with ``m = min(|S|, D)``, plus the formation, ``O(m G D)`` on the ``|S|`` side or
    ``O(D² G)`` on the ``D`` side; low-rank method: ``O(m G D)`` plus ``O(m G² + G³)`` per
    evaluation (about a dozen), after ``O(m³)`` once per call.

    CUDA (``fastal._cuda``, csrc/cuda/gram_eig.cu): the shared part once per call. Matrices of order
    up to 18, when there are thousands of groups, then get one thread each, which runs the CPU's
    serial algorithm (Householder, then Laguerre checked by Sturm counts, QL for ``return_all``;
    csrc/common/gram_small.h) on a workspace of at most 1 GiB. Larger ones get one thread block
    each, which forms the matrix, reduces it by Householder reflections (the rank-2 update fused
    with the next matrix-vector product, as on the CPU) and finds ``λ_max`` and ``λ⁺_min`` by
    multisection on Sturm counts, one shift per thread; ``return_all`` bisects every eigenvalue (one
    thread per index) instead of running QL. Float64 throughout. The matrix lives in shared memory
    when it fits (order up to 166 on an H100), else in a global workspace of at most 1 GiB (or one
    matrix's 8 · order² bytes, when that alone is larger: order > 11,585). NaN / Inf and the peak
    magnitude are found on the device (one pass over ``Z``, one synchronisation); ``groups`` given
    as an int64 C-contiguous CUDA array in ``Z``'s framework are checked there too, in the same
    synchronisation, and used in place (a failing array is checked again on the host, for the
    message). Other index inputs, and ``labeled`` always, are checked on the host and copied over. A
    CUDA module built before this kernel raises ``RuntimeError`` (rebuild); there is no fallback.

    CUDA ``method="lowrank"`` (after the same checks): the shared eigendecomposition by
    ``torch.linalg.eigh`` on the device, each group's ``V`` and ``Z_g Z_gᵀ`` by batched matrix
    products, then every group's bracket is narrowed at once, 15 shifts per round, the count at
    each shift from a batched ``eigvalsh`` of the ``G x G`` matrices (their inertia), to the
    CPU's tolerances (fastal/_gram_lowrank_torch.py). Memory: ``16 · 15 · G · m`` bytes per
    group in chunks of at most 256 MiB.

    Examples
    --------
    >>> import numpy as np, fastal
    >>> Z = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 0.0]])
    >>> lam, spectra = fastal.gram_min_eig(Z, [0], [[1], [3]], return_all=True)
    >>> spectra.round(6).tolist()  # S = {0, 1}; S = {0, 3}, whose rows are parallel: rank 1
    [[1.0, 4.0], [0.0, 10.0]]
    >>> lam.round(6).tolist()  # the zero eigenvalue of the rank-deficient set is skipped
    [1.0, 10.0]
    """
    info = check_matrix(Z, "Z", dtypes=_DTYPES, cuda_dtypes=_DTYPES)
    n, D = info.shape
    lab = check_indices(labeled, n, "labeled", like=info)
    grp, checked = _check_groups(groups, n, lab, info)
    G = grp.shape[1]
    rtol, return_all = _check_options(rtol, return_all, method, lab.size + G, D)
    progress = check_bool(progress, "progress")
    if method == "auto":
        method = _cheaper_method(lab.size, G, D, grp.shape[0], return_all)
        if info.device == "cuda" and (
            min(lab.size + G, D) < CUDA_LOWRANK_MIN_ORDER or G > CUDA_LOWRANK_MAX_G
        ):
            method = "tridiagonal"
    out = _min_eig_dispatch(Z, info, lab, grp, checked, rtol, return_all, method, progress)
    if info.dtype == "float64":  # only float64 holds rows small enough to need the rescaling

        def take(rows: np.ndarray) -> Any:
            return Z[_interop.to_framework(rows, info)]

        def on_rows(rows: np.ndarray, sub_lab: np.ndarray, sub_grp: np.ndarray) -> Any:
            sub = take(rows)
            sub_info = check_matrix(sub, "Z", dtypes=_DTYPES, cuda_dtypes=_DTYPES)
            return _min_eig_dispatch(
                sub, sub_info, sub_lab, sub_grp, True, rtol, return_all, method, False
            )

        out = _redo_underflowing_groups(out, return_all, lab, grp, info, take, on_rows)
    return out


def _min_eig_dispatch(
    Z: Any,
    info: Any,
    lab: np.ndarray,
    grp: Any,
    checked: bool,
    rtol: float,
    return_all: bool,
    method: str,
    progress: bool,
) -> Any:
    """:func:`gram_min_eig` on checked arguments, ``method`` resolved: the CUDA or the host
    path."""
    low = info.dtype in ("float16", "bfloat16")  # read as float32: the Gram is float64 anyway
    if info.device == "cuda":  # Z stays on its device (finite check and rescaling there too)
        from ._gram_cuda import gram_min_eig_cuda
        from ._torch_arrays import as_torch, from_torch

        with _interop.device_scope(info, "Z"):
            if not low:
                return gram_min_eig_cuda(
                    Z, info, lab, grp, rtol, return_all, checked=checked, method=method
                )
            wide = as_torch(Z, info).float()
            # device groups follow Z into torch (cupy's would meet torch's info and stream)
            grp = grp if isinstance(grp, np.ndarray) else as_torch(grp, info)
            out = gram_min_eig_cuda(wide, check_matrix(wide, "Z"), lab, grp, rtol, return_all,
                                    checked=checked, method=method)  # fmt: skip
            return tuple(from_torch(o, info) for o in out) if return_all else from_torch(out, info)

    rows = _widening_rows(Z, info) if low else StoredRows(_interop.host_storage(Z, info))
    mins, spectra = _host_min_eig(rows, lab, grp, rtol, return_all, method, progress)
    if return_all:
        return _interop.wrap_host(mins, info), _interop.wrap_host(spectra, info)
    return _interop.wrap_host(mins, info)


# A group whose λ⁺_min is below this may have rows that needed a scale of their own (rows below
# 2^-240, once scaled, give λ_max below about 2^-400): the call's scale came from the peak of all
# of Z, ordinary elsewhere, or of all rows read, huge elsewhere
_SUSPECT_LAMBDA = 2.0**-400


def _redo_underflowing_groups(
    out: Any,
    return_all: bool,
    lab: np.ndarray,
    grp: Any,
    like: Any,
    take: Callable[[np.ndarray], Any],
    on_rows: Callable[[np.ndarray, np.ndarray, np.ndarray], Any],
) -> Any:
    """Groups scoring below ``_SUSPECT_LAMBDA`` (usually none), computed again on their rows
    alone (their own and the labeled ones), whose peak then sets the rescaling.

    The rescaling is decided from the peak of all of ``Z`` (or of all rows read): rows near
    1e-155 beside ordinary rows elsewhere were read unscaled, and rows near 2^-230 in a call
    rescaled for rows near 2^300, scaled into subnormals; their Gram entries subnormal, they
    scored 0 or lost precision silently. Groups of zero rows only are left as they are. A group
    whose eigenvalues do not fit float64 even so scores 0.0 (its spectrum too), as
    :func:`gram_min_eig` says; a ``Z`` made of such rows alone is refused before this.

    ``out``: the results (``(mins, spectra)`` with ``return_all``) in ``like``'s framework and
    device, updated in place; ``take(rows)``: those rows of ``Z`` (any framework);
    ``on_rows(rows, lab, grp)``: the results on ``Z[rows]``, ``lab`` and ``grp`` indexing it.
    """
    mins = out[0] if return_all else out
    suspect = np.flatnonzero(_interop.host_numpy(mins) < _SUSPECT_LAMBDA)
    if suspect.size == 0:
        return out
    grp_host = grp if isinstance(grp, np.ndarray) else _interop.host_numpy(grp)
    rows = np.unique(np.concatenate([lab, grp_host[suspect].reshape(-1)]))
    row_peak = np.abs(_interop.host_numpy(take(rows))).max(1, initial=0.0)
    lab_peak = row_peak[np.searchsorted(rows, lab)].max() if lab.size else 0.0
    peak = np.maximum(row_peak[np.searchsorted(rows, grp_host[suspect])].max(axis=1), lab_peak)
    # every suspect group with a row that is not zero, not only those below _SMALL: a call that
    # was rescaled for huge rows elsewhere pushed rows near 2^-230 into subnormal Gram entries
    tiny = suspect[peak > 0.0]
    if tiny.size == 0:
        return out

    def redo(groups: np.ndarray) -> Any:
        sub_rows = np.unique(np.concatenate([lab, groups.reshape(-1)]))
        return on_rows(sub_rows, np.searchsorted(sub_rows, lab), np.searchsorted(sub_rows, groups))

    try:  # all of them in one call: usually they fit one scale
        redone = [(tiny, redo(grp_host[tiny]))]
    except _DoesNotFit:  # one at a time; one that still does not fit scores 0
        redone = []
        for g in tiny:
            try:
                redone.append((g, redo(grp_host[g : g + 1])))
            except _DoesNotFit:
                zeros = tuple(
                    _interop.to_framework(np.zeros((1, *o.shape[1:])), like)
                    for o in (out if return_all else (out,))
                )
                redone.append((g, zeros if return_all else zeros[0]))
    for at, res in redone:
        at = _interop.to_framework(np.atleast_1d(at), like)
        if return_all:
            out[0][at], out[1][at] = res[0], res[1]
        else:
            out[at] = res
    return out


def _widening_rows(Z: Any, info: Any) -> Any:
    """float16 / bfloat16 host ``Z`` as a row reader that widens the rows each call reads to
    float32 (:class:`fastal.ntk.NtkRows`, as CRC reads them): no float32 copy of the whole."""
    import torch

    from ._torch_arrays import as_torch, torch_isfinite_rows
    from .ntk import NtkRows

    h = as_torch(Z, info)
    bad = ~torch_isfinite_rows(h)
    if bool(bad.any()):
        raise ValueError(
            f"Z contains NaN or Inf in {int(bad.sum())} row(s), first in row "
            f"{int(bad.nonzero()[0, 0])}"
        )
    return NtkRows(h, None, False, torch.float32)


def min_eig_of_rows(
    rows: Any,
    labeled: np.ndarray,
    groups: np.ndarray,
    *,
    rtol: float | None = None,
    progress: bool = False,
) -> np.ndarray:
    """:func:`gram_min_eig` (λ⁺_min only, ``method="auto"``) on the CPU for a ``Z`` that is
    never whole in memory: ``rows`` reads it (the protocol of :class:`StoredRows`; CRC's
    ``√C [h, 1]`` is :class:`fastal.ntk.NtkRows`). ``labeled`` and ``groups`` are valid int64
    host indices (checked by the caller). Same values, bit for bit, as ``gram_min_eig`` of the
    whole ``Z``: every kernel call gets the rows it reads, in the same order.

    Parameters
    ----------
    rows : row reader
        ``Z`` (n, D) through the protocol of :class:`StoredRows`: ``shape``, ``dtype`` (the name
        ``"float32"`` or ``"float64"``), ``peak()`` (``max |Z|``), ``take(idx)`` (a new,
        writable array of those rows) and ``whole`` (``Z`` to read in place, or ``None``: each
        call's rows are then gathered). ``Z`` must be finite, and only ``peak()`` can refuse it
        (:class:`StoredRows`' raises on NaN / Inf; :func:`fastal.ntk.ntk_rows` checks its
        reader when it builds it).
    labeled : ndarray (m,) of int64
        The shared set ``L`` (may be empty), not checked here.
    groups : ndarray (n_groups, G) of int64, C-contiguous
        As in :func:`gram_min_eig`, not checked here.
    rtol : float in [0, 1), optional
        As in :func:`gram_min_eig` (checked); default ``max(|S|, D) · eps(float64)``.
    progress : bool, default False
        A tqdm bar over the groups, updated after each call.

    Returns
    -------
    ndarray (n_groups,) float64
        ``λ⁺_min`` of each group, a numpy array whatever reads ``Z``.

    Examples
    --------
    >>> import numpy as np, fastal
    >>> from fastal.gram import StoredRows, min_eig_of_rows
    >>> from fastal.ntk import ntk_rows
    >>> Z = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 0.0]])
    >>> lab, groups = np.array([0], dtype=np.int64), np.array([[1], [3]], dtype=np.int64)
    >>> min_eig_of_rows(StoredRows(Z), lab, groups).round(6).tolist()
    [1.0, 10.0]
    >>> mins = min_eig_of_rows(ntk_rows(Z, 3), lab, groups)  # √3 [Z, 1], made group by group
    >>> np.array_equal(mins, fastal.gram_min_eig(fastal.ntk_features(Z, 3), lab, groups))
    True
    """
    D = rows.shape[1]
    G = groups.shape[1]
    rtol, _ = _check_options(rtol, False, "auto", labeled.size + G, D)
    method = _cheaper_method(labeled.size, G, D, groups.shape[0], False)
    mins = _host_min_eig(rows, labeled, groups, rtol, False, method, progress)[0]
    if rows.dtype == "float64":  # as gram_min_eig does, for the same values

        def on_rows(sub: np.ndarray, sub_lab: np.ndarray, sub_grp: np.ndarray) -> np.ndarray:
            taken = StoredRows(np.ascontiguousarray(rows.take(sub)))
            return _host_min_eig(taken, sub_lab, sub_grp, rtol, False, method)[0]

        like = _interop.describe(mins, "lambda_min")
        mins = _redo_underflowing_groups(mins, False, labeled, groups, like, rows.take, on_rows)
    return mins


class StoredRows:
    """Host ``Z`` (numpy, C-contiguous float32 / float64) as the row reader of
    :func:`_host_min_eig`: ``shape``, ``dtype``, ``peak()`` (``max |Z|``; NaN / Inf raise),
    ``take(rows)`` (a new array of those rows) and ``whole`` (``Z`` to read in place, or
    ``None`` for a reader that only makes rows on demand).

    Parameters
    ----------
    Zh : ndarray (n, D)
        C-contiguous float32 or float64, kept by reference (not copied, not checked here).

    Attributes
    ----------
    whole : ndarray (n, D)
        ``Zh`` itself.
    shape : (int, int)
        ``Zh.shape``.
    dtype : str
        ``Zh.dtype.name``, ``"float32"`` or ``"float64"``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.gram import StoredRows
    >>> rows = StoredRows(np.array([[1.0, -3.0], [2.0, 0.5]]))
    >>> rows.shape, rows.dtype, rows.peak()
    ((2, 2), 'float64', 3.0)
    >>> rows.take(np.array([1])).tolist()
    [[2.0, 0.5]]
    """

    def __init__(self, Zh: np.ndarray) -> None:
        self.whole = Zh
        self.shape = Zh.shape
        self.dtype = Zh.dtype.name

    def peak(self) -> float:
        """``max |Z|`` over the whole of ``Z``, read in row blocks with no whole-array temporary.

        Returns
        -------
        float
            The largest magnitude (0.0 for an empty ``Z``), computed afresh on every call.

        Raises
        ------
        ValueError
            If ``Z`` holds NaN or Inf (how many rows, and the first).
        """
        return _host_peak(self.whole)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Those rows of ``Z``, copied.

        Parameters
        ----------
        rows : ndarray (k,) of int
            Row indices (numpy fancy indexing).

        Returns
        -------
        ndarray (k, D)
            ``Z[rows]``, a new array in ``Z``'s dtype.
        """
        return self.whole[rows]


def check_rtol(rtol: Any) -> float | None:
    """``rtol`` as a float in [0, 1) (None stays None: the default depends on the sizes)."""
    if rtol is None:
        return None
    if isinstance(rtol, bool) or not isinstance(rtol, numbers.Real):
        raise TypeError(f"rtol must be a real number in [0, 1), got {type(rtol).__name__}")
    rtol = real_to_float(rtol, "rtol")
    if not (0.0 <= rtol < 1.0):
        raise ValueError(f"rtol must be in [0, 1), got {rtol}")
    return rtol


def _check_options(rtol: Any, return_all: Any, method: str, size_s: int, D: int) -> tuple:
    """(rtol, return_all) checked, rtol defaulted; ``method`` checked against ``return_all``."""
    if not isinstance(return_all, (bool, np.bool_)):
        raise TypeError(f"return_all must be a bool, got {type(return_all).__name__}")
    rtol = check_rtol(rtol)
    if rtol is None:
        rtol = max(size_s, D) * EPS
    method = check_choice(method, "method", _METHODS)
    if method == "lowrank" and return_all:
        raise ValueError(
            "return_all=True needs method='tridiagonal' (or 'auto'): 'lowrank' "
            "computes λ_max and λ⁺_min only"
        )
    return rtol, bool(return_all)


def _host_min_eig(
    src: Any,
    lab: np.ndarray,
    grp: np.ndarray,
    rtol: float,
    return_all: bool,
    method: str,
    progress: bool = False,
) -> tuple:
    """(λ⁺_min, spectra or None) as float64 numpy, on the CPU kernels, ``Z`` read by ``src``;
    ``progress``: a tqdm bar over the groups, one update per call."""
    from tqdm.auto import tqdm

    D = src.shape[1]
    G = grp.shape[1]
    peak = src.peak()  # NaN / Inf anywhere in Z is refused
    # exact power-of-two rescaling for extreme magnitudes (λ scales by the square)
    scale = 1.0
    if peak > _BIG or 0.0 < peak < _SMALL:
        peak = _used_rows_peak(src, lab, grp)
    if peak > _BIG or 0.0 < peak < _SMALL:
        scale = _rescale_factor(peak)
    in_place = src.whole is not None and scale == 1.0
    parts = []
    bar = tqdm(total=grp.shape[0], disable=not progress, desc="λ⁺_min", unit="group")
    with bar:
        if method == "lowrank":
            lam, basis, s_side = _shared_eigenbasis(_rows_read(src, scale, lab), G)
            kernel = getattr(_ext.cpu, f"gram_min_eig_lowrank_{src.dtype}")
            for g in _group_chunks(grp, lab, D, True, in_place):
                Zc, _, gc = _call_rows(src, scale, lab[:0], g, in_place)  # V needs no labeled row
                parts.append(kernel(Zc, gc, basis, lam, s_side, rtol))
                bar.update(g.shape[0])
        else:
            kernel = getattr(_ext.cpu, f"gram_min_eig_{src.dtype}")
            for g in _group_chunks(grp, lab, D, False, in_place):
                parts.append(kernel(*_call_rows(src, scale, lab, g, in_place), rtol, return_all))
                bar.update(g.shape[0])
    if return_all:
        mins = np.concatenate([p[0] for p in parts])
        spectra = np.concatenate([p[1] for p in parts])
    else:
        mins, spectra = np.concatenate(parts), None
    if scale != 1.0:
        mins = _unscale(mins, scale, peak)
        spectra = None if spectra is None else _unscale(spectra, scale, peak, spectra=True)
    return mins, spectra


def _rows_read(src: Any, scale: float, rows: np.ndarray) -> np.ndarray:
    """``scale · Z[rows]`` as a new array (the product elementwise: the bits of scaling all Z)."""
    out = src.take(rows)
    if scale != 1.0:
        out *= out.dtype.type(scale)
    return out


def _call_rows(src: Any, scale: float, lab: np.ndarray, grp: np.ndarray, in_place: bool) -> tuple:
    """(Z, labeled, groups) for one kernel call: ``Z`` itself when it is stored and unscaled,
    else only the rows the call reads (``lab``, then every group's rows in order), scaled, with
    the indices renumbered into them. The kernels' arithmetic sees the same values in the same
    order either way."""
    if in_place:
        return src.whole, lab, grp
    m = lab.size
    Zc = _rows_read(src, scale, np.concatenate([lab, grp.reshape(-1)]))
    return (Zc, np.arange(m, dtype=np.int64),
            np.arange(m, m + grp.size, dtype=np.int64).reshape(grp.shape))  # fmt: skip


def _host_peak(Zh: np.ndarray) -> float:
    """``max |Z|`` over the whole of ``Zh`` (0.0 when empty), read in row blocks of about
    ``_CHUNK_VALUES`` values with no temporary (``max(|max|, |min|)``, the same value as
    ``np.max(np.abs(Zh))``); NaN or Inf anywhere raises, naming the rows."""
    step = max(1, _CHUNK_VALUES // max(Zh.shape[1], 1))
    peak = 0.0
    for s in range(0, Zh.shape[0], step):
        block = Zh[s : s + step]
        hi, lo = float(np.max(block)), float(np.min(block))  # NaN propagates
        if not (np.isfinite(hi) and np.isfinite(lo)):
            _raise_non_finite(Zh, step)
        peak = max(peak, abs(hi), abs(lo))
    return peak


def _used_rows_peak(src: Any, lab: np.ndarray, grp: np.ndarray) -> float:
    """``max |Z|`` over the rows of ``lab`` and ``grp``, the only rows the kernels read: it sets
    the rescaling, so that one huge row no group reads cannot push the rows read into underflow.
    Gathered in blocks of about ``_CHUNK_VALUES`` values."""
    rows = np.unique(np.concatenate([lab, grp.reshape(-1)]))
    step = max(1, _CHUNK_VALUES // max(src.shape[1], 1))
    peak = 0.0
    for s in range(0, rows.size, step):
        block = src.take(rows[s : s + step])
        peak = max(peak, abs(float(np.max(block))), abs(float(np.min(block))))
    return peak


def _raise_non_finite(Zh: np.ndarray, step: int) -> None:
    """The error for NaN / Inf in ``Zh``: how many rows hold one and the first of them."""
    count, first = 0, -1
    for s in range(0, Zh.shape[0], step):
        bad = ~np.isfinite(Zh[s : s + step]).all(axis=1)
        if first < 0 and bad.any():
            first = s + int(np.argmax(bad))
        count += int(bad.sum())
    raise ValueError(f"Z contains NaN or Inf in {count} row(s), first in row {first}")


def _rescale_factor(peak: float) -> float:
    """The power of two that brings ``peak`` into [0.5, 1). A subnormal peak (below 2^-1022)
    would need a factor past float64's range, and its eigenvalues (the square) underflow: refused
    with :func:`_unscale`'s message."""
    exponent = -int(np.frexp(peak)[1])
    if exponent > 1023:
        raise _does_not_fit(peak)
    return float(2.0**exponent)


class _DoesNotFit(ValueError):
    """The eigenvalues of the rows read are past float64's normal range, scaled or not."""


def _does_not_fit(peak: float) -> ValueError:
    return _DoesNotFit(
        f"the eigenvalues of Z Zᵀ do not fit float64: |Z| reaches {peak:.3g} and they scale "
        "as its square; rescale Z (λ⁺_min scales by the square of the factor)"
    )


def _unscale(values: Any, scale: float, peak: float, *, spectra: bool = False) -> Any:
    """Eigenvalues of the rescaled ``scale · Z`` back to those of ``Z`` (numpy, torch or cupy).

    Dividing by ``scale`` twice keeps ``scale²`` from under- or overflowing on its own; a value that
    does not fit float64 once unscaled is refused rather than returned as inf, as a false 0 or as
    a subnormal that kept a few bits (Z near 1e-160: errors of 1e-3) (in spectra only inf: entries
    below the tolerance may flush to 0, they count as zero anyway)."""
    with np.errstate(over="ignore", under="ignore"):  # numpy's warning; the check below raises
        out = values / scale / scale
    lost = abs(out) == float("inf")
    if not spectra:
        lost = lost | ((abs(out) < _TINY) & (values != 0))
    if bool(lost.any()):
        raise _does_not_fit(peak)
    return out


# The CPU kernels run without the GIL, so Ctrl-C is only seen between calls: the groups go in
# calls of about this many multiply-adds (~0.1-0.5 s on the 2-core development machine), and at
# least eight times the work a call repeats for the labeled part.
_INTERRUPT_WORK = 2.0**31
# A call that gets its rows gathered (Z rescaled, or made on demand) gets about this many values of
# group rows (64 MiB of float32), however cheap its groups: the gathered rows are the memory the
# call needs beyond the kernel's workspaces. Unless the labeled part, which every call forms again,
# would then cost more than an eighth of the call: the calls are then those of Z read in place.
_GATHER_VALUES = 1 << 24


def _group_chunks(grp: np.ndarray, lab: np.ndarray, D: int, lowrank: bool, in_place: bool = True):
    """Row blocks of ``grp`` for one CPU call each, by _cheaper_method's work counts (and, when
    the call's rows are gathered, ``_GATHER_VALUES``: see there)."""
    m_lab, (n_groups, G) = lab.size, grp.shape
    s_side = m_lab + G <= D
    size, m = (m_lab + G, m_lab) if s_side else (D, D)
    if lowrank:
        per_group, shared = m * G * D + 12 * (1.5 * G * G * m + 4 * G**3), 0.0  # basis: host
    else:
        per_group, shared = (2 / 3) * size**3, float(m_lab) * m_lab * D if s_side else D * D * m_lab
    step = max(1, int(max(_INTERRUPT_WORK, 8 * shared) // max(per_group, 1.0)))
    if not in_place:
        labeled_step = int(8 * shared // max(per_group, 1.0))  # the labeled part <= 1/8 of a call
        step = min(step, max(1, _GATHER_VALUES // max(G * D, 1), labeled_step))
    for g0 in range(0, max(n_groups, 1), step):
        yield grp[g0 : g0 + step]


def _cheaper_method(m_lab: int, G: int, D: int, n_groups: int, return_all: bool) -> str:
    """'tridiagonal' or 'lowrank' for these sizes, by a rough count of floating-point work.

    Per group, the Householder reduction is ~(2/3) s³ multiply-adds (s = min(|S|, D)); the
    low-rank method forms V (m G D) and evaluates ~12 shifts at ~(1.5 G² m + 4 G³) each, and
    diagonalises the labeled part once per call (~2 m³, m = D or |L|). The two run at similar
    rates on the machines measured (benchmarks/RESULTS.md), so the counts are compared directly.
    """
    if return_all or m_lab == 0:
        return "tridiagonal"
    s_side = m_lab + G <= D
    size = m_lab + G if s_side else D
    m = m_lab if s_side else D
    tridiagonal = n_groups * (2 / 3) * size**3
    lowrank = n_groups * (m * G * D + 12 * (1.5 * G * G * m + 4 * G**3)) + 2 * m**3
    return "lowrank" if lowrank < tridiagonal else "tridiagonal"


def _shared_eigenbasis(ZL: np.ndarray, G: int) -> tuple:
    """Λ (ascending), the basis P (m x D) and the side, for the low-rank kernel.

    D side: ``Z_Lᵀ Z_L = Q Λ Qᵀ``, ``P = Qᵀ``; |S| side: ``Z_L Z_Lᵀ = Q Λ Qᵀ``, ``P = Qᵀ Z_L``,
    so that a group's ``V = P Z_gᵀ``. float64, with torch (its LAPACK runs in torch's thread pool;
    numpy's OpenBLAS threads, still spinning after the call, slowed the OpenMP kernel by ~50 %).
    """
    import torch

    from ._gram_lowrank_torch import shared_eigenbasis

    s_side = ZL.shape[0] + G <= ZL.shape[1]
    lam, basis = shared_eigenbasis(torch.from_numpy(ZL.astype(np.float64)), s_side)
    return lam.contiguous().numpy(), basis.contiguous().numpy(), s_side


def _check_groups(groups: Any, n: int, labeled: np.ndarray, info: Any) -> tuple[Any, bool]:
    """(groups, checked): (n_groups, G) int64 indices, in range, distinct within a row and
    disjoint from labeled once checked.

    A checked host array, except that int64 C-contiguous CUDA groups in Z's framework and on its
    device are returned as they are, unchecked (``checked`` False): copying them to the host and
    back cost more than the kernel for small matrices, so the CUDA branch checks them on the
    device in the synchronisation it needs anyway for the NaN scan of Z, and calls
    :func:`_check_groups_host` on a host copy for the message when they fail.
    """
    if groups is None:
        raise ValueError("groups must be a 2-D (n_groups, G) integer array, got None")
    if _interop.is_array(groups):
        ginfo = _interop.describe(groups, "groups")
        if ginfo.device != info.device:
            raise ValueError(f"groups is on {ginfo.where} but Z is on {info.where}")
        if (
            ginfo.device == "cuda"
            and (ginfo.framework, ginfo.device_index) == (info.framework, info.device_index)
            and ginfo.dtype == "int64"
            and len(ginfo.shape) == 2
            and min(ginfo.shape) > 0
            and _is_c_contiguous(groups)
        ):
            return groups, False
    return _check_groups_host(host_values(groups, "groups", "integer indices"), n, labeled), True


def _check_groups_host(arr: np.ndarray, n: int, labeled: np.ndarray) -> np.ndarray:
    """The host check of :func:`_check_groups` on a numpy array: int64, C-contiguous."""
    if arr.dtype == np.bool_:
        raise TypeError("groups must hold integer indices, got a boolean array")
    if arr.ndim != 2:
        raise ValueError(f"groups must be 2-D (n_groups, G), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"groups is empty: shape {arr.shape}, need n_groups >= 1 and G >= 1")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"groups must hold integer indices, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and int(arr.max()) >= n:  # before int64 could wrap it
        g, a = np.unravel_index(int(np.argmax(arr)), arr.shape)
        raise ValueError(
            f"groups has indices out of range [0, {n}): groups[{g}, {a}] = {int(arr[g, a])}"
        )
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    bad = (arr < 0) | (arr >= n)
    if bad.any():
        g, a = np.unravel_index(int(np.argmax(bad)), arr.shape)
        raise ValueError(
            f"groups has indices out of range [0, {n}): groups[{g}, {a}] = {int(arr[g, a])}"
        )
    if labeled.size:
        mask = np.zeros(n, dtype=bool)
        mask[labeled] = True
        hit = mask[arr]
        if hit.any():
            g, a = np.unravel_index(int(np.argmax(hit)), arr.shape)
            raise ValueError(
                f"groups overlaps labeled: groups[{g}, {a}] = {int(arr[g, a])} is labeled; "
                "a group must hold unlabeled points only"
            )
    if arr.shape[1] > 1:
        srt = np.sort(arr, axis=1)
        dup = srt[:, 1:] == srt[:, :-1]
        if dup.any():
            g, a = np.unravel_index(int(np.argmax(dup)), dup.shape)
            raise ValueError(
                f"groups[{g}] holds index {int(srt[g, a])} twice: "
                "indices within a group must be distinct"
            )
    return arr


def _is_c_contiguous(a: Any) -> bool:
    return bool(a.is_contiguous()) if hasattr(a, "is_contiguous") else bool(a.flags.c_contiguous)
