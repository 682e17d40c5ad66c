"""Sparse Approximation for batch active learning (Shen et al.): the top-b kernel, the problem
(eq. 15) in factored and Bayesian form, and the Greedy (Alg. 1) and proximal IHT (Alg. 2) solvers.

Problem 2 (eq. 15): minimise ``f(w) = |v - Φw|² - α Σ_{j∈S} σ_j² + β |w - 1|²`` over ``w ≥ 0`` with
a selected set ``S`` of exactly ``b`` indices (``w`` is zero outside ``S``).

Interpretation (documented departure): the paper selects ``{j : w_j > 0}``; a weight can be clamped
to 0 (Alg. 1 line 7, Alg. 2 line 8), which would leave fewer than ``b`` points. fastal tracks ``S``
explicitly: a selected index keeps its place even at weight 0, De-bias (Alg. 5) runs over ``S``, and
the selection is always exactly ``b`` points. The objective trace counts ``f2`` over ``S``.

fastal's addition (not in the paper): :func:`safeguard_top_sigma` compares a solver's
result with the top-b σ set (weighted by one De-bias from ``w = 1``, then clamped at 0) and keeps
whichever has the lower ``f``, so that neither solver returns a selection worse than top-b σ.

Interpretation (Bayesian form): ``Φ`` follows eq. 19 (Problem 2), the centred losses
``g_j = [ℓ(θ_i) - ℓ̄]_i`` *without* the ``1/√m`` of eq. 13. That factor would scale
``|v - Φw|²`` and ``σ²`` by ``1/m`` against ``β |w - 1|²``: eq. 13 with ``(α, β)`` is eq. 19 with
``(α, mβ)`` for the objective and greedy, and with ``(α/m, mβ)`` in IHT's top-b step (whose
``½|w - s|²`` does not scale), so the Table 4 α, β carry over only under the scaling they were
tuned for, and fastal applies them to eq. 19.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _ext, _interop
from ._sparse_phi import DensePhi, FactoredPhi
from ._sparse_solve import (
    SAFEGUARD_RTOL,
    SolverResult,
    SparseProblem,
    safeguard_top_sigma,
    solve_greedy,
    solve_iht,
    top_b_sigma,
)
from ._validate import check_budget, check_choice

# The problem and its solvers live in _sparse_phi.py (Φ kept factored, eq. 14, or dense, eq. 19)
# and _sparse_solve.py (SparseProblem, Alg. 1 and 2, the top-b σ safeguard); this module is
# their public face, with the top-b step and temperature scaling.
__all__ = [
    "IHT_RULES",
    "SAFEGUARD_RTOL",
    "DensePhi",
    "FactoredPhi",
    "SolverResult",
    "SparseProblem",
    "fit_temperature",
    "iht_threshold",
    "safeguard_top_sigma",
    "solve_greedy",
    "solve_iht",
    "top_b_sigma",
]

# ---------------------------------------------------------------------------------------------
# the top-b kernel


#: scores of the top-b step: the b smallest form the support
IHT_RULES = {
    "paper": "½[-s_j]₊² - α σ_j²  (Shen et al., Appendix E)",
    "exact": "-½[s_j]₊² - α σ_j²  (the exact proximal minimiser)",
}


def iht_threshold(
    s: Any, sigma: Any, b: int, alpha: float, *, rule: str = "paper"
) -> tuple[Any, Any]:
    """Proximal step of IHT (Shen et al., Alg. 2 line 6, Appendix E), fused and O(n).

    Selects the ``b`` indices with the smallest score (computed in float64; ties to the lowest
    index) and sets ``w = [s]₊`` on them, 0 elsewhere. Two scores:

    - ``rule="paper"`` (default): ``½[-s_j]₊² - α σ_j²``, as Appendix E derives it. That derivation
      sums the proximal objective over the selected rows only and leaves out the ``½ s_j²`` that
      every row *not* selected contributes (its ``w_j = 0``), so it is not the minimiser: all rows
      with ``s_j > 0`` score ``-α σ_j²`` whatever the size of ``s_j``.
    - ``rule="exact"``: ``-½[s_j]₊² - α σ_j²``, whose ``b`` smallest give the exact minimiser of
      ``½|w - s|² - α Σ_{j∈S} σ_j²`` over sets ``S`` of ``b`` rows and ``w ≥ 0`` zero outside
      ``S`` (selecting row j changes that objective by exactly its score). As the objective
      fastal's solvers report, it counts σ over the selected set ``S``, not where ``w_j > 0``:
      a selected row with ``s_j ≤ 0`` (weight 0) earns its ``α σ_j²`` too, so such rows are
      ranked by σ, not by index.

    Parameters
    ----------
    s, sigma : 1-D arrays of length n
        Same framework and device: numpy / torch-CPU float32 or float64, torch-CUDA / cupy float32.
    b : int, 0 <= b <= n
    alpha : float >= 0
    rule : {"paper", "exact"}

    Returns
    -------
    support : (b,) int64, ordered by (score, index)
    w : (n,) like ``s``

    Raises ``ValueError`` for NaN / Inf in ``s`` or ``sigma``, and for float64 inputs so large that
    the paper's score is ``inf - inf``.

    Examples
    --------
    >>> import numpy as np, fastal
    >>> s = np.array([3.0, -1.0, 0.5, 2.0])
    >>> support, w = fastal.iht_threshold(s, np.zeros(4), 2, 0.0)
    >>> support.tolist(), w.tolist()  # every s_j > 0 scores 0: ties to the lowest index
    ([0, 2], [3.0, 0.0, 0.5, 0.0])
    >>> support, w = fastal.iht_threshold(s, np.zeros(4), 2, 0.0, rule="exact")
    >>> support.tolist(), w.tolist()  # ½|w - s|² = 0.625, against 2.5 for the paper's pick
    ([0, 3], [3.0, 0.0, 0.0, 2.0])
    """
    from ._validate import _number

    rule = check_choice(rule, "rule", IHT_RULES)

    sinfo = _interop.describe(s, "s")
    ginfo = _interop.describe(sigma, "sigma")
    if len(sinfo.shape) != 1:
        raise ValueError(f"s must be 1-D, got shape {sinfo.shape}")
    if ginfo.shape != sinfo.shape:
        raise ValueError(f"sigma must have the shape of s {sinfo.shape}, got {ginfo.shape}")
    if (ginfo.framework, ginfo.device, ginfo.device_index) != (
        sinfo.framework,
        sinfo.device,
        sinfo.device_index,
    ):
        raise ValueError(f"sigma is a {ginfo.where} array but s is {sinfo.where}; pass both alike")
    allowed = ("float32",) if sinfo.device == "cuda" else ("float32", "float64")
    for info, name in ((sinfo, "s"), (ginfo, "sigma")):
        if info.dtype not in allowed:
            raise TypeError(
                f"{name} must have dtype {' or '.join(allowed)} on {info.device}, got {info.dtype}"
            )
    if ginfo.dtype != sinfo.dtype:
        raise TypeError(
            f"sigma has dtype {ginfo.dtype} but s has {sinfo.dtype}; cast one on purpose"
        )
    n = sinfo.shape[0]
    b = check_budget(b, n, "b", "the length of s")
    alpha = _number(alpha, "alpha", minimum=0.0)
    if sinfo.device == "cuda":
        from ._sparse_cuda import iht_threshold_cuda

        with _interop.device_scope(sinfo, "s"):
            return iht_threshold_cuda(s, sigma, b, alpha, sinfo, exact=rule == "exact")
    sh = _interop.host_storage(s, sinfo)
    gh = _interop.host_storage(sigma, ginfo)
    for arr, name in ((sh, "s"), (gh, "sigma")):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ValueError(
                f"{name} contains NaN or Inf at {int(bad.sum())} position(s), first at "
                f"{int(np.argmax(bad))}"
            )
    support, w = getattr(_ext.cpu, f"iht_threshold_{sinfo.dtype}")(
        sh, gh, b, alpha, exact=rule == "exact"
    )
    return _interop.wrap_host(support, sinfo), _interop.wrap_host(w, sinfo)


# ---------------------------------------------------------------------------------------------
# temperature scaling


def fit_temperature(logits: Any, targets: Any) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    Golden-section search on ``log T`` over ``[1e-2, 1e2]`` in float64 (the NLL is convex in
    ``1/T``, so unimodal in ``log T``). Logits that rank every target first (a model on its own
    training set) have their NLL falling all the way to ``T → 0``: the result is then the bound,
    ``0.01``; held-out logits are what Guo et al. calibrate on.

    Parameters
    ----------
    logits : array of shape (n, C)
        Pre-softmax outputs: numpy, torch (CPU/CUDA) or cupy, floating (float16, bfloat16,
        float32, float64; float64 on the CPU only); finite, or -inf for a masked class (probability
        0; never a row's target). The search runs in float64 in torch
        on the array's device.
    targets : 1-D integer array of shape (n,)
        True classes in ``[0, C)``, any framework (read to the host); bool, or floats holding
        whole numbers (``1.0``, never ``0.5``), are taken as classes too.

    Returns
    -------
    float
        The temperature ``T`` in ``[0.01, 100]``: the midpoint of the final search interval, or
        the bound itself where the search never left it.

    Raises
    ------
    ValueError
        If the shapes disagree, a class is out of range, or ``logits`` has NaN or +Inf, or -inf at
        a row's target.
    TypeError
        If ``targets`` is not integer.

    Examples
    --------
    >>> import numpy as np, fastal
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(20000, 5)) * 3
    >>> p = np.exp(z / 2) / np.exp(z / 2).sum(1, keepdims=True)
    >>> y = (p.cumsum(1) > rng.random((20000, 1))).argmax(1)
    >>> round(fastal.fit_temperature(z, y), 1)
    2.0
    """
    return _fit_temperature(logits, targets)


def _fit_temperature(
    logits: Any, targets: Any, names: tuple[str, str] = ("logits", "targets")
) -> float:
    """:func:`fit_temperature` with the arguments' names for messages (the caller's names)."""
    import torch

    from ._torch_arrays import as_torch, row_chunks
    from ._validate import check_matrix, host_values

    lname, tname = names
    info = check_matrix(logits, lname)
    z = as_torch(logits, info)  # as stored: float64 row chunks below, never a whole copy
    n, C = info.shape
    if _interop.is_array(targets):
        _interop.describe(targets, tname)  # a tensor on an unsupported device: named TypeError
    stored = str(getattr(targets, "dtype", "")).removeprefix("torch.")  # bfloat16 reads as f32
    y = host_values(targets, tname, "integer classes")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{tname} must have shape ({n},), got {y.shape}")
    if y.dtype.kind == "f":  # whole numbers only, as fastal.loop takes labels: never 0.5 -> 0
        bad = ~(np.isfinite(y) & (y == np.round(y)))
        if bad.any():
            raise TypeError(
                f"{tname} must be integer classes, got {stored or y.dtype} values that are not "
                f"whole numbers: e.g. {float(y[bad][0])!r}"
            )
    if n and (int(y.min()) < 0 or int(y.max()) >= C):  # before the cast: 1e20 would wrap
        raise ValueError(
            f"{tname} must be classes in [0, {C}), got values in [{int(y.min())}, {int(y.max())}]"
        )
    y = torch.as_tensor(y.astype(np.int64), device=z.device)
    chunks = row_chunks(n, C)

    def rows(s: int, e: int) -> Any:
        return z[s:e].to(torch.float64)

    picked = torch.empty(n, dtype=torch.float64, device=z.device)
    top = torch.empty(n, dtype=torch.float64, device=z.device)
    # reduced on the device, read once: a read per chunk is a synchronisation on a GPU
    zmax_t = torch.zeros((), dtype=torch.float64, device=z.device)
    refused_t = torch.zeros((), dtype=torch.bool, device=z.device)
    for s, e in chunks:
        c = rows(s, e)
        refused_t |= torch.isnan(c).any() | (c == math.inf).any()
        picked[s:e] = c.gather(1, y[s:e, None])[:, 0]
        top[s:e] = c.amax(1)
        # -inf (a masked class) adds exp(-inf) = 0 to a row's sum: the scale is the finite ones'
        zmax_t = torch.maximum(zmax_t, c.masked_fill(torch.isneginf(c), 0.0).abs().max())
    zmax = float(zmax_t)
    if bool(refused_t):
        raise ValueError(f"{lname} contains NaN or Inf (-inf, a masked class, is taken)")
    if not bool(torch.isfinite(picked).all()):
        row = int(torch.nonzero(~torch.isfinite(picked))[0, 0])
        raise ValueError(
            f"{lname} is -inf at the target class of row {row}: a masked class cannot be a "
            f"target ({tname})"
        )
    if zmax <= 2.0**500:
        # a row's NLL is logsumexp((z - z_y) / T): a shared offset of the row (logits near 1e15)
        # cancels before the division (it moved T by 1 % after it)

        largest = max(e - s for s, e in chunks)  # the last chunk may hold one row more
        buf = torch.empty((largest, C), dtype=torch.float64, device=z.device)

        def nll(log_t: float) -> float:
            t = float(np.exp(log_t))
            total = torch.zeros((), dtype=torch.float64, device=z.device)
            for s, e in chunks:  # in one float64 buffer: the gaps, then divided by T
                gap = torch.sub(z[s:e], picked[s:e, None], out=buf[: e - s]).div_(t)
                total += torch.logsumexp(gap, 1).sum()
            return float(total) / n

    else:
        # Huge logits: z / T past float64 would turn the search's comparisons into inf <= inf.
        # The NLL from each row's max, divided by a power of two s > |z| / 2 (the same order).
        scale = math.ldexp(1.0, math.frexp(zmax)[1] - 1)
        margin = top / scale - picked / scale  # (max - target) / s, >= 0

        def nll(log_t: float) -> float:
            t = float(np.exp(log_t))
            total = torch.zeros((), dtype=torch.float64, device=z.device)
            for s, e in chunks:  # z - max <= 0; -inf past float64 only where exp() gives 0
                lse = torch.logsumexp((rows(s, e) - top[s:e, None]) / t, 1)
                total += (margin[s:e] / t + lse / scale).sum()
            return float(total) / n

    lo0, hi0 = np.log(1e-2), np.log(1e2)
    lo, hi = lo0, hi0
    g = (np.sqrt(5) - 1) / 2
    a, bb = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(bb)
    for _ in range(80):
        if fa <= fb:
            hi, bb, fb = bb, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, bb, fb
            bb = lo + g * (hi - lo)
            fb = nll(bb)
    if lo == lo0 or hi == hi0:  # the NLL falls towards a bound: that bound, exactly
        return 1e-2 if lo == lo0 else 1e2
    return float(np.exp((lo + hi) / 2))
