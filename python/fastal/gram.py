"""Batched Gram eigenvalues: the scoring kernel of CRC (Kong et al., eq. 9 and Alg. 1)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from . import _ext, _interop
from ._validate import check_indices, check_matrix

#: float64 machine epsilon: the eigenvalues are computed in float64 for every storage dtype
EPS = float(np.finfo(np.float64).eps)

# Entries of Z are rescaled by a power of two (exactly) when their magnitude could make the Gram
# entries or their squares overflow or underflow float64; the eigenvalues are scaled back.
_BIG, _SMALL = 2.0**240, 2.0**-240


def gram_min_eig(
    Z: Any,
    labeled: Any,
    groups: Any,
    *,
    rtol: float | None = None,
    return_all: bool = False,
) -> Any:
    """Smallest positive eigenvalue of the Gram matrix of ``labeled + group``, for many groups.

    For every row ``g`` of ``groups`` the Gram matrix ``K = Z_S Z_Sᵀ`` of ``S = labeled + g`` is
    formed on its smaller side — the ``|S| x |S|`` matrix ``Z_S Z_Sᵀ`` when ``|S| <= D``, else the
    ``D x D`` matrix ``Z_Lᵀ Z_L + Z_gᵀ Z_g``; their non-zero eigenvalues are the same — with the
    labeled part (``Z_L Z_Lᵀ`` or ``Z_Lᵀ Z_L``) computed once per call. Each matrix is reduced to
    tridiagonal form by Householder reflections and only the two wanted eigenvalues are located on
    the tridiagonal, O(size) per evaluation: ``λ_max``, then ``λ⁺_min``, the smallest eigenvalue
    above ``rtol · λ_max``, each bracketed by Sturm-sequence (LDLᵀ inertia) counts and converged
    by Laguerre's iteration (monotone for real-rooted polynomials), with bisection as the fallback
    whenever an iterate leaves its bracket. This is the CRC score ``s(X_u) = λ⁺_min(X_L + X_u)``
    of Alg. 1 (Kong et al., eq. 9, "considering only the positive eigenvalues"); with ``Z`` the
    trace-NTK features of :func:`fastal.ntk_features`, ``K`` is the trace-over-classes empirical
    NTK of §3.1.

    Everything is computed in float64 whatever the dtype of ``Z`` (products of float32 values are
    exact in float64), one matrix per thread (OpenMP), the GIL released. Memory: one
    ``size x size`` float64 matrix per thread plus the shared part, ``size = min(|S|, D)``.

    Parameters
    ----------
    Z : (n, D) array
        numpy or torch-CPU, float32 or float64, finite. CUDA input raises ``NotImplementedError``
        (the CUDA kernel is not built yet).
    labeled : 1-D int array-like or None
        The shared set ``L`` (distinct row indices of ``Z``; may be empty).
    groups : (n_groups, G) int array-like
        ``n_groups >= 1`` groups of ``G >= 1`` row indices: distinct within a group, none in
        ``labeled``; different groups may share indices.
    rtol : float in [0, 1), optional
        Eigenvalues ``<= rtol · λ_max`` count as zero. Default ``max(|S|, D) · eps(float64)``
        (``numpy.linalg.matrix_rank``'s rule; the computation is float64 for every dtype).
    return_all : bool, default False
        Also return every group's whole spectrum (implicit QL on the same tridiagonal matrix).

    Returns
    -------
    lambda_min : (n_groups,) float64, in ``Z``'s framework (numpy or torch)
        ``λ⁺_min`` of each group, ``0.0`` when the matrix has no eigenvalue above the threshold
        (e.g. all rows of ``Z_S`` zero). float64 even for float32 ``Z``: the scores of
        near-singular sets differ by less than float32 resolution, and rounding them would create
        ties in CRC's ranking.
    spectra : (n_groups, min(|S|, D)) float64, only with ``return_all=True``
        Ascending eigenvalues of each group's matrix (the non-zero spectrum of ``K`` plus zeros);
        rounding-level negative values are clamped to 0. They agree with ``lambda_min`` to
        rounding (``~eps · λ_max``), being computed by a different method.

    Notes
    -----
    Interpretation: the paper takes λ⁺_min of the trace-NTK Gram over ``X_L + X_u`` without a
    numerical zero rule; fastal uses the relative threshold above. Duplicated rows of ``Z``
    (Proposition 2) give an exact zero eigenvalue, which ``λ⁺_min`` skips once ``Z_S`` has
    more rows than its rank. Cost per group ``O(m³)`` with ``m = min(|S|, D)``, plus the
    formation, ``O(m G D)`` on the ``|S|`` side or ``O(D² G)`` on the ``D`` side.

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
    info = check_matrix(Z, "Z", dtypes=("float32", "float64"))
    if info.device == "cuda":
        raise NotImplementedError(
            f"Z is a {info.where} array, but the CUDA kernel of gram_min_eig is not built yet; "
            "pass a CPU array (e.g. Z.cpu()) or use the CPU build"
        )
    n, D = info.shape
    lab = check_indices(labeled, n, "labeled", like=info)
    grp = _check_groups(groups, n, lab, info)
    G = grp.shape[1]
    if not isinstance(return_all, (bool, np.bool_)):
        raise TypeError(f"return_all must be a bool, got {type(return_all).__name__}")
    size_s = lab.size + G
    if rtol is None:
        rtol = max(size_s, D) * EPS
    else:
        if isinstance(rtol, bool) or not isinstance(rtol, numbers.Real):
            raise TypeError(f"rtol must be a real number in [0, 1), got {type(rtol).__name__}")
        rtol = float(rtol)
        if not (0.0 <= rtol < 1.0):
            raise ValueError(f"rtol must be in [0, 1), got {rtol}")

    Zh = _interop.host_storage(Z, info)
    peak = float(np.max(np.abs(Zh))) if Zh.size else 0.0
    if not np.isfinite(peak):
        bad = ~np.isfinite(Zh).all(axis=1)
        raise ValueError(
            f"Z contains NaN or Inf in {int(bad.sum())} row(s), first in row {int(np.argmax(bad))}"
        )
    # exact power-of-two rescaling for extreme magnitudes (λ scales by the square)
    scale = 1.0
    if peak > _BIG or 0.0 < peak < _SMALL:
        scale = float(2.0 ** -np.frexp(peak)[1])
        Zh = Zh * Zh.dtype.type(scale)
    out = getattr(_ext.cpu, f"gram_min_eig_{info.dtype}")(Zh, lab, grp, rtol, bool(return_all))
    mins, spectra = out if return_all else (out, None)
    if scale != 1.0:
        mins = mins / (scale * scale)
        spectra = None if spectra is None else spectra / (scale * scale)
    if return_all:
        return _interop.wrap_host(mins, info), _interop.wrap_host(spectra, info)
    return _interop.wrap_host(mins, info)


def _check_groups(groups: Any, n: int, labeled: np.ndarray, info: Any) -> np.ndarray:
    """(n_groups, G) int64 host array: in range, distinct within a row, disjoint from labeled."""
    if groups is None:
        raise ValueError("groups must be a 2-D (n_groups, G) integer array, got None")
    if _interop.is_array(groups):
        ginfo = _interop.describe(groups, "groups")
        if ginfo.device != info.device:
            raise ValueError(f"groups is on {ginfo.where} but Z is on {info.where}")
    arr = _interop.host_numpy(groups)
    if arr.dtype == np.bool_:
        raise TypeError("groups must hold integer indices, got a boolean array")
    if arr.ndim != 2:
        raise ValueError(f"groups must be 2-D (n_groups, G), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"groups is empty: shape {arr.shape}, need n_groups >= 1 and G >= 1")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"groups must hold integer indices, got dtype {arr.dtype}")
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
