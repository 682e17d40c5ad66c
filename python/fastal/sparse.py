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
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from . import _ext, _interop
from ._validate import check_budget

# ---------------------------------------------------------------------------------------------
# the top-b kernel


#: scores of the top-b step: the b smallest form the support
IHT_RULES = {
    "paper": "½[-s_j]₊² - α σ_j²  (Shen et al., Appendix E)",
    "exact": "-½[s_j]₊² - α σ_j² [s_j > 0]  (the exact proximal minimiser)",
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
    - ``rule="exact"``: ``-½[s_j]₊² - α σ_j² [s_j > 0]``, whose ``b`` smallest give the exact
      minimiser of ``½|w - s|² - α Σ_{w_j>0} σ_j²`` over ``w ≥ 0`` with at most ``b`` non-zeros
      (selecting row j changes that objective by exactly its score).

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

    if rule not in IHT_RULES:
        raise ValueError(f"rule must be one of {', '.join(map(repr, IHT_RULES))}, got {rule!r}")

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
        float32, float64; float64 on the CPU only); finite. The search runs in float64 in torch
        on the array's device.
    targets : 1-D integer array of shape (n,)
        True classes in ``[0, C)``, any framework (read to the host).

    Returns
    -------
    float
        The temperature ``T`` in ``[0.01, 100]`` (the midpoint of the final search interval).

    Raises
    ------
    ValueError
        If the shapes disagree, a class is out of range, or ``logits`` has NaN or Inf.
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

    from ._validate import check_matrix, host_values
    from .gradients import as_torch

    lname, tname = names
    info = check_matrix(logits, lname)
    z = as_torch(logits, info).to(torch.float64)
    n, C = info.shape
    if _interop.is_array(targets):
        _interop.describe(targets, tname)  # a tensor on an unsupported device: named TypeError
    y = host_values(targets, tname, "integer classes")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{tname} must have shape ({n},), got {y.shape}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"{tname} must be integer classes, got dtype {y.dtype}")
    if n and (int(y.min()) < 0 or int(y.max()) >= C):
        raise ValueError(
            f"{tname} must be classes in [0, {C}), got values in [{int(y.min())}, {int(y.max())}]"
        )
    y = torch.as_tensor(y.astype(np.int64), device=z.device)
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"{lname} contains NaN or Inf")
    picked = z.gather(1, y[:, None])[:, 0]
    zmax = float(z.abs().max())
    if zmax <= 2.0**500:

        def nll(log_t: float) -> float:
            t = float(np.exp(log_t))
            return float((torch.logsumexp(z / t, 1) - picked / t).mean())

    else:
        # Huge logits: z / T past float64 would turn the search's comparisons into inf <= inf.
        # The NLL from each row's max, divided by a power of two s > |z| / 2 (the same order).
        s = math.ldexp(1.0, math.frexp(zmax)[1] - 1)
        top = z.max(1).values
        margin = top / s - picked / s  # (max - target) / s, >= 0
        shifted = z - top[:, None]  # <= 0; -inf past float64 only where exp() gives 0 anyway

        def nll(log_t: float) -> float:
            t = float(np.exp(log_t))
            return float((margin / t + torch.logsumexp(shifted / t, 1) / s).mean())

    lo, hi = np.log(1e-2), np.log(1e2)
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
    return float(np.exp((lo + hi) / 2))


# ---------------------------------------------------------------------------------------------
# the problem: Φ kept factored (eq. 14) or dense (eq. 19, the Bayesian form)


class FactoredPhi:
    """Φ with columns ``φ_j = (1/b) a_j ⊗ h_j`` (never materialised); vectors over j are torch.

    ``apply(u)`` is ``Φu = (1/b) Aᵀ diag(u) H`` (a C × dh matrix, over the non-zeros of ``u`` only
    when they are few); ``adjoint(R)`` is ``(Φᵀ R)_j = (1/b) a_jᵀ R h_j`` for all j (or the given
    rows), computed in row tiles as ``rowsum(A ⊙ (H Rᵀ))``: no n × C·dh or n × dh intermediate.
    ``grad_apply`` fuses the gradient of ``f1`` with ``Φ`` applied to it in one pass over the tiles.

    ``H`` may be the pool's features as they are: ``h_j`` is row ``hrows[j]`` of ``H`` (row j when
    ``hrows`` is None), in A's dtype, followed by a 1 when ``bias`` (the bias gradient's column). On
    the CPU the C++ kernels read those rows in place (float32, float16 or bfloat16 H for a float32
    A; float64 for float64), so the unlabeled rows are never copied, widened or extended; otherwise
    they are gathered into one tensor here.

    Parameters
    ----------
    A : torch.Tensor (n, C)
        The vectors ``a_j``, float32 or float64 (SparseApprox: the expected gradients
        ``p - P``); kept contiguous (copied if it is not).
    H : torch.Tensor (n_H, d)
        The features, on ``A``'s device (else ``ValueError``); detached, never written.
    b : int
        The budget: every column carries the factor ``1/b``.
    hrows : torch.Tensor (n,) of int, optional
        ``h_j`` is row ``hrows[j]`` of ``H``; None: ``H`` has the ``n`` rows (else
        ``ValueError``).
    bias : bool, default False
        Append a 1 to every ``h_j``: ``dh = d + 1``, else ``dh = d``.

    Attributes
    ----------
    n : int
        The number of columns of Φ (candidates).
    dh : int
        The width of ``h_j``; Φu and ``R`` are ``(C, dh)``.
    scale : float
        ``1/b``.

    Examples
    --------
    >>> import torch
    >>> from fastal.sparse import FactoredPhi
    >>> A = torch.tensor([[1.0, -1.0], [0.5, 0.5], [0.0, 2.0]], dtype=torch.float64)
    >>> H = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    >>> phi = FactoredPhi(A, H, 2)
    >>> Phi = torch.stack([torch.kron(A[j], H[j]) for j in range(3)], 1) / 2  # dense (C·dh, n)
    >>> u = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    >>> phi.apply(u).tolist()  # (C, dh)
    [[0.5, 1.0], [9.5, 11.0]]
    >>> torch.equal(phi.apply(u).flatten(), Phi @ u)
    True
    >>> R = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> phi.adjoint(R).tolist(), phi.adjoint(R, torch.tensor([2, 0])).tolist()
    ([-0.5, 1.75, 6.0], [6.0, -0.5])
    >>> FactoredPhi(A, H, 2, hrows=torch.tensor([2, 0, 1]), bias=True).dh
    3
    """

    _TILE = 1 << 14
    _use_kernels = True  # False: the torch tiles everywhere (tests compare the two paths)
    #: (A's dtype, H's dtype) -> the C++ kernels' tag
    _KERNEL_TAGS: ClassVar[dict[tuple[str, str], str]] = {
        ("float32", "float32"): "float32",
        ("float32", "float16"): "float16",
        ("float32", "bfloat16"): "bfloat16",
        ("float64", "float64"): "float64",
    }

    def __init__(self, A: Any, H: Any, b: int, *, hrows: Any = None, bias: bool = False) -> None:
        import torch

        self.A, self.scale = A.contiguous(), 1.0 / b
        self.n = A.shape[0]
        H = H.detach().resolve_neg()  # the kernels read memory, not a lazy negation
        rows_h = H.shape[0] if hrows is None else hrows.numel()
        if rows_h != self.n or A.device != H.device:
            raise ValueError(
                f"H must give {self.n} rows on {A.device} like A, got {rows_h} on {H.device}"
            )
        dtypes = (str(A.dtype).removeprefix("torch."), str(H.dtype).removeprefix("torch."))
        tag = self._KERNEL_TAGS.get(dtypes)
        # on the CPU the row-wise products run in the C++ kernels (one pass, no temporaries)
        self._kernel = None
        if A.device.type == "cpu" and tag is not None and self._use_kernels:
            ops = ("adjoint", "apply", "grad_apply")
            self._kernel = {op: getattr(_ext.cpu, f"factored_{op}_{tag}") for op in ops}
            self.H = H.contiguous()
            self._an = self.A.numpy()
            self._hn = _interop.host_storage(self.H, _interop.describe(self.H, "H"))
            self._rows = {
                "hrows": None if hrows is None else hrows.to(torch.int64).contiguous().numpy(),
                "bias": bool(bias),
            }
        else:
            if hrows is not None:
                H = H[hrows.to(H.device)]
            H = H.to(A.dtype)
            if bias:
                H = torch.cat([H, torch.ones((H.shape[0], 1), dtype=H.dtype, device=H.device)], 1)
            self.H = H.contiguous()
        self.dh = H.shape[1] + (1 if bias and self._kernel is not None else 0)

    def apply(self, u: Any) -> Any:
        """``Φu = (1/b) Σ_j u_j a_j h_jᵀ``; the CPU kernels skip the rows where ``u_j = 0``, the
        torch path does when fewer than a quarter of ``u`` is non-zero.

        Parameters
        ----------
        u : torch.Tensor (n,)
            float64 on ``A``'s device (the CPU kernels take nothing else).

        Returns
        -------
        torch.Tensor (C, dh)
            float64, on ``u``'s device.
        """
        import torch

        if self._kernel is not None:  # skips the zero entries of u itself
            M = self._kernel["apply"](
                self._an, self._hn, u.contiguous().numpy(), self.scale, **self._rows
            )
            return torch.from_numpy(M)
        nz = torch.nonzero(u).flatten()
        if nz.numel() * 4 < self.n:  # sparse: only the selected columns
            a, h, uu = self.A[nz], self.H[nz], u[nz]
            return self.scale * ((a.to(torch.float64) * uu[:, None]).T @ h.to(torch.float64))
        out = torch.zeros((self.A.shape[1], self.dh), dtype=torch.float64, device=u.device)
        for s in range(0, self.n, self._TILE):
            a, h = self.A[s : s + self._TILE], self.H[s : s + self._TILE]
            uu = u[s : s + self._TILE].to(h.dtype)
            out += ((a * uu[:, None]).T @ h).to(torch.float64)  # scale the narrow factor, not H
        return self.scale * out

    def adjoint(self, R: Any, rows: Any = None) -> Any:
        """``Φᵀ R``: ``(1/b) a_jᵀ R h_j`` for every candidate ``j``, or for those of ``rows``.

        Parameters
        ----------
        R : torch.Tensor (C, dh)
            float64 (a residual ``Φw - v``), on ``A``'s device.
        rows : torch.Tensor (k,) of int, optional
            Candidates to compute, in this order; None: all ``n``.

        Returns
        -------
        torch.Tensor (n,) or (k,)
            float64.
        """
        import torch

        if self._kernel is not None:
            rows_np = None if rows is None else rows.to(torch.int64).contiguous().numpy()
            out = self._kernel["adjoint"](
                self._an, self._hn, R.contiguous().numpy(), self.scale, rows_np, **self._rows
            )
            return torch.from_numpy(out)
        Rc = R.to(self.H.dtype)
        if rows is not None:
            a, h = self.A[rows], self.H[rows]
            return self.scale * (a * (h @ Rc.T)).sum(1).to(torch.float64)
        out = torch.empty(self.n, dtype=torch.float64, device=R.device)
        for s in range(0, self.n, self._TILE):
            a, h = self.A[s : s + self._TILE], self.H[s : s + self._TILE]
            out[s : s + self._TILE] = (a * (h @ Rc.T)).sum(1).to(torch.float64)
        return self.scale * out

    def grad_apply(self, R: Any, z: Any, beta: float, rows: Any = None) -> tuple[Any, Any]:
        """``g = 2 Φᵀ R + 2β (z - 1)`` and ``Φ g``, reading every tile of A and H once; with
        ``rows``, ``g`` on those rows only and ``Φ`` of ``g`` scattered there (De-bias's step).

        Parameters
        ----------
        R : torch.Tensor (C, dh)
            float64, the residual ``Φz - v``: ``g`` is then ``∇f1(z)``.
        z : torch.Tensor (n,)
            float64, the point of the ridge term.
        beta : float
            β.
        rows : torch.Tensor (k,) of int, optional
            Compute ``g`` on these candidates only; None: all ``n``.

        Returns
        -------
        g : torch.Tensor (n,) or (k,)
            float64.
        M : torch.Tensor (C, dh)
            float64, ``Φ g`` (with ``rows``: Φ of the n-vector holding ``g`` there, 0 elsewhere).
        """
        import torch

        if self._kernel is not None:
            rows_np = None if rows is None else rows.to(torch.int64).contiguous().numpy()
            g, M = self._kernel["grad_apply"](
                self._an, self._hn, R.contiguous().numpy(), self.scale, z.contiguous().numpy(),
                beta, rows_np, **self._rows,
            )  # fmt: skip
            return torch.from_numpy(g), torch.from_numpy(M)
        if rows is not None:
            a, h = self.A[rows], self.H[rows]
            Rc = R.to(h.dtype)
            adj = (a * (h @ Rc.T)).sum(1).to(torch.float64)
            g = 2 * self.scale * adj + 2 * beta * (z[rows] - 1)
            M = (a.to(torch.float64) * g[:, None]).T @ h.to(torch.float64)
            return g, self.scale * M
        g = torch.empty(self.n, dtype=torch.float64, device=R.device)
        out = torch.zeros((self.A.shape[1], self.dh), dtype=torch.float64, device=R.device)
        Rc = R.to(self.H.dtype)
        for s in range(0, self.n, self._TILE):
            a, h = self.A[s : s + self._TILE], self.H[s : s + self._TILE]
            gt = 2 * self.scale * (a * (h @ Rc.T)).sum(1).to(torch.float64) + 2 * beta * (
                z[s : s + self._TILE] - 1
            )
            g[s : s + self._TILE] = gt
            out += ((a * gt.to(a.dtype)[:, None]).T @ h).to(torch.float64)
        return g, self.scale * out


class DensePhi:
    """Φ as an explicit (m, n) matrix (the Bayesian form, eq. 19 as the module docstring says).

    ``Φ = G / b``; the same interface as :class:`FactoredPhi`, with vectors of length ``m`` in
    place of its ``(C, dh)`` matrices. SparseApprox passes ``G = E``, the expected centred losses
    (module docstring), in float64. Products are plain torch, in ``G``'s dtype and device.

    Parameters
    ----------
    G : torch.Tensor (m, n)
        One column per candidate.
    b : int
        The budget: ``Φ = G / b``.

    Attributes
    ----------
    G : torch.Tensor (m, n)
        ``G`` itself (not copied).
    n : int
        The number of candidates.
    scale : float
        ``1/b``.

    Examples
    --------
    >>> import torch
    >>> from fastal.sparse import DensePhi
    >>> G = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    >>> phi = DensePhi(G, 2)
    >>> phi.apply(torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)).tolist()
    [2.5, -1.0]
    >>> phi.adjoint(torch.tensor([1.0, 1.0], dtype=torch.float64)).tolist()
    [0.5, 0.5, 0.5]
    """

    def __init__(self, G: Any, b: int) -> None:
        self.G, self.scale, self.n = G, 1.0 / b, G.shape[1]

    def apply(self, u: Any) -> Any:
        """``Φu = G u / b``.

        Parameters
        ----------
        u : torch.Tensor (n,)
            Like ``G`` (dtype and device).

        Returns
        -------
        torch.Tensor (m,)
        """
        return self.scale * (self.G @ u)

    def adjoint(self, R: Any, rows: Any = None) -> Any:
        """``Φᵀ R = Gᵀ R / b``, on every candidate or on those of ``rows``.

        Parameters
        ----------
        R : torch.Tensor (m,)
            Like ``G`` (a residual ``Φw - v``).
        rows : torch.Tensor (k,) of int, optional
            Candidates to compute, in this order; None: all ``n``.

        Returns
        -------
        torch.Tensor (n,) or (k,)
        """
        G = self.G if rows is None else self.G[:, rows]
        return self.scale * (G.T @ R)

    def grad_apply(self, R: Any, z: Any, beta: float, rows: Any = None) -> tuple[Any, Any]:
        """``g = 2 Φᵀ R + 2β (z - 1)`` and ``Φ g``; with ``rows``, ``g`` on those candidates only
        and ``Φ`` of ``g`` scattered there (De-bias's step).

        Parameters
        ----------
        R : torch.Tensor (m,)
            The residual ``Φz - v``: ``g`` is then ``∇f1(z)``.
        z : torch.Tensor (n,)
            The point of the ridge term.
        beta : float
            β.
        rows : torch.Tensor (k,) of int, optional
            Compute ``g`` on these candidates only; None: all ``n``.

        Returns
        -------
        g : torch.Tensor (n,) or (k,)
        M : torch.Tensor (m,)
            ``Φ g`` (with ``rows``: Φ of the n-vector holding ``g`` there, 0 elsewhere).
        """
        if rows is None:
            g = 2 * self.adjoint(R) + 2 * beta * (z - 1)
            return g, self.apply(g)
        g = 2 * self.adjoint(R, rows) + 2 * beta * (z[rows] - 1)
        return g, self.scale * (self.G[:, rows] @ g)


@dataclass
class SparseProblem:
    """``f(w) = |v - Φw|² - α Σ_{j∈S} σ_j² + β |w - 1|²`` over n candidates, budget b.

    Residuals ``r = Φw - v`` are passed around so that no product is computed twice.

    Attributes
    ----------
    phi : FactoredPhi or DensePhi
        Φ, with ``n`` columns (one per candidate).
    v : torch.Tensor
        The target ``v``, float64, shaped like the output of ``phi.apply``.
    sigma : torch.Tensor (n,)
        σ_j of every candidate, float64 (the ``α Σ σ_j²`` term rewards large ones).
    b : int
        The budget: ``|S| = b`` candidates selected.
    alpha : float
        α, the weight of the σ term.
    beta : float
        β, the weight of the ridge ``|w - 1|²``.

    Notes
    -----
    ``f1(w) = |v - Φw|² + β |w - 1|²`` is the smooth part of ``f``; ``w`` vectors are float64
    torch tensors (n,) on ``sigma``'s device, and ``S`` an int64 tensor of selected candidates.

    Examples
    --------
    >>> import torch
    >>> from fastal.sparse import DensePhi, SparseProblem
    >>> G = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    >>> sigma = torch.tensor([0.1, 0.1, 0.1, 0.3], dtype=torch.float64)
    >>> p = SparseProblem(DensePhi(G, 1), G.sum(1) / 4, sigma, b=1, alpha=1.0, beta=0.0)
    >>> w = torch.zeros(4, dtype=torch.float64)
    >>> p.residual(w).tolist(), p.f1(w), round(p.objective(w, torch.tensor([3])), 6)
    ([-0.5, -0.5], 0.5, 0.41)
    >>> p.grad_f1(w).tolist()
    [-1.0, -1.0, -2.0, 0.0]
    >>> e = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    >>> p.line_search(e, w)  # f1(w - μ e) is smallest at μ = -0.5
    -0.5
    >>> w_new, r_new = p.debias(0.5 * e, torch.tensor([2]))  # ∇f1 = 0 there: no step
    >>> w_new.tolist(), r_new.tolist()
    ([0.0, 0.0, 0.5, 0.0], [0.0, 0.0])
    """

    phi: Any  # FactoredPhi | DensePhi
    v: Any  # torch float64, shape of phi.apply's output
    sigma: Any  # torch float64 (n,)
    b: int
    alpha: float
    beta: float

    def residual(self, w: Any) -> Any:
        """The residual ``r = Φw - v``.

        Parameters
        ----------
        w : torch.Tensor (n,)
            float64 weights.

        Returns
        -------
        torch.Tensor
            Shaped like ``v``.
        """
        return self.phi.apply(w) - self.v

    def grad_f1(self, w: Any, r: Any = None) -> Any:
        """``∇f1(w)`` (De-bias's gradient on S comes from ``phi.grad_apply(..., rows=S)``).

        Parameters
        ----------
        w : torch.Tensor (n,)
            float64 weights.
        r : torch.Tensor, optional
            ``w``'s residual ``Φw - v``, when known; computed otherwise.

        Returns
        -------
        torch.Tensor (n,)
            ``2 Φᵀ r + 2β (w - 1)``.
        """
        r = self.residual(w) if r is None else r
        return 2 * self.phi.adjoint(r) + 2 * self.beta * (w - 1)

    def f1(self, w: Any, r: Any = None) -> float:
        """The smooth part of the objective, ``f1(w) = |Φw - v|² + β |w - 1|²``.

        Parameters
        ----------
        w : torch.Tensor (n,)
            float64 weights.
        r : torch.Tensor, optional
            ``w``'s residual ``Φw - v``, when known; computed otherwise.

        Returns
        -------
        float
        """
        r = self.residual(w) if r is None else r
        return float((r * r).sum() + self.beta * ((w - 1) ** 2).sum())

    def objective(self, w: Any, S: Any, r: Any = None) -> float:
        """The objective ``f(w) = f1(w) - α Σ_{j∈S} σ_j²`` (eq. 15), ``f2`` counted over ``S``.

        Parameters
        ----------
        w : torch.Tensor (n,)
            float64 weights.
        S : torch.Tensor (b,) of int
            The selected set (its σ counts whatever its weights, zeros included).
        r : torch.Tensor, optional
            ``w``'s residual ``Φw - v``, when known; computed otherwise.

        Returns
        -------
        float
        """
        return self.f1(w, r) - self.alpha * float((self.sigma[S] ** 2).sum())

    def line_search(self, u: Any, w: Any, r: Any = None, phi_u: Any = None) -> float:
        """Alg. 4: the exact minimiser of ``f1(w - μ u)`` over μ (0 for a zero direction).

        ``μ = (rᵀ Φu + β (w - 1)ᵀ u) / (|Φu|² + β |u|²)``. When the numerator is not finite or
        the denominator is not within ``[2^-900, 2^900]``, ``u`` is first scaled by a power of two
        (at most ``2^1000``) that brings the larger of ``max |Φu|`` and ``√β max |u|`` (entrywise)
        to order 1, and μ is scaled back.

        Parameters
        ----------
        u : torch.Tensor (n,)
            The direction.
        w : torch.Tensor (n,)
            The current weights.
        r : torch.Tensor, optional
            ``w``'s residual ``Φw - v``, when known; computed otherwise.
        phi_u : torch.Tensor, optional
            ``Φu``, when known; computed otherwise.

        Returns
        -------
        float
            μ; 0.0 when ``Φu`` and ``√β u`` are both zero (or the rescaled denominator is not
            positive), NaN when a term is not finite even after the rescaling.
        """
        r = self.residual(w) if r is None else r
        pu = self.phi.apply(u) if phi_u is None else phi_u
        num, den = self._line_terms(u, w, r, pu)
        if not (math.isfinite(num) and _SAFE_DEN[0] <= den <= _SAFE_DEN[1]):
            # |Φu|² goes like the features' scale to the sixth power (u = ∇f1): past ~1e51 it
            # overflows, below ~1e-51 it underflows, and μ = num / inf or num / 0 -> 0 would
            # silently skip the step (with β = 0 IHT then returned the first b candidates, weights
            # 0). The minimiser along k u is μ / k: k, a power of two, brings the larger of Φu and
            # √β u to O(1); if even that fails, NaN reaches the caller's finiteness check.
            peak = max(float(pu.abs().max()), math.sqrt(self.beta) * float(u.abs().max()))
            if peak == 0:
                return 0.0  # a zero direction (or one Φ maps to 0 with β = 0): no step
            if not math.isfinite(peak):
                return math.nan
            k = math.ldexp(1.0, min(-math.frexp(peak)[1], 1000))  # a subnormal peak: 2^1000
            num, den = self._line_terms(u * k, w, r, pu * k)
            if not (math.isfinite(num) and math.isfinite(den)):
                return math.nan
            return num / den * k if den > 0 else 0.0
        return num / den

    def _line_terms(self, u: Any, w: Any, r: Any, pu: Any) -> tuple[float, float]:
        """Alg. 4's numerator and denominator: ``f1(w - μ u)`` is smallest at ``μ = num / den``."""
        num = float((r * pu).sum() + self.beta * ((w - 1) * u).sum())
        den = float((pu * pu).sum() + self.beta * (u * u).sum())
        return num, den

    def debias(self, w: Any, S: Any, r: Any = None) -> tuple[Any, Any]:
        """Alg. 5 over the selected set ``S``; returns the new ``w`` and its residual.

        One gradient step restricted to ``S``: ``u = ∇f1(w)`` on ``S`` and 0 elsewhere,
        ``w - μ u`` with μ from :meth:`line_search`. Weights are not clamped here (the solvers
        clamp them at 0 afterwards).

        Parameters
        ----------
        w : torch.Tensor (n,)
            float64 weights.
        S : torch.Tensor (k,) of int
            The selected set.
        r : torch.Tensor, optional
            ``w``'s residual ``Φw - v``, when known; computed otherwise.

        Returns
        -------
        w : torch.Tensor (n,)
            ``w - μ u``.
        r : torch.Tensor
            Its residual, ``r - μ Φu``.
        """
        import torch

        r = self.residual(w) if r is None else r
        u = torch.zeros_like(w)
        # ∇f1 on S and Φ of it in one pass over S's rows (not an adjoint and then an apply)
        u[S], pu = self.phi.grad_apply(r, w, self.beta, rows=S)
        mu = self.line_search(u, w, r, pu)
        return w - mu * u, r - mu * pu


#: Alg. 4's denominator |Φu|² + β|u|² is used as computed inside this range; outside it (or not
#: finite) the direction is rescaled by a power of two first (see line_search).
_SAFE_DEN = (2.0**-900, 2.0**900)


@dataclass
class SolverResult:
    """What :func:`solve_greedy`, :func:`solve_iht` and :func:`safeguard_top_sigma` return.

    Attributes
    ----------
    selected : (b,) int64 ndarray
        The selected candidates: in pick order for greedy, the support of the last top-b
        proximal step for IHT, ``(-σ, index)`` order for the top-b σ fallback.
    weights : (n,) float64 ndarray
        The final weights ``w`` over all candidates (>= 0, zero outside ``selected``).
    objective : list of float, default []
        ``f(w)`` after every step (greedy: pick; IHT: iteration); :func:`safeguard_top_sigma`
        appends the ``f`` of what it returns.
    fallback : bool, default False
        True when the top-b σ set replaced the solver's result (:func:`safeguard_top_sigma`).
    top_sigma_objective : float or None, default None
        ``f`` of the top-b σ candidate, when :func:`safeguard_top_sigma` evaluated it.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.sparse import SolverResult
    >>> res = SolverResult(np.array([2, 0]), np.array([0.5, 0.0, 1.0]), [3.0, 2.5])
    >>> res.selected.tolist(), res.fallback, res.top_sigma_objective
    ([2, 0], False, None)
    """

    selected: np.ndarray  # (b,) int64 candidate indices
    weights: np.ndarray  # (n,) float64
    objective: list = field(default_factory=list)
    fallback: bool = False  # the top-b σ set replaced the solver's result (safeguard_top_sigma)
    top_sigma_objective: float | None = None  # f of the top-b σ candidate, when evaluated


#: the top-b σ set replaces a solver's result only when its f is lower by more than this, relative
#: to the size of the terms of f (rounding must not decide between two equal values)
SAFEGUARD_RTOL = 1e-10


def top_b_sigma(sigma: Any, b: int) -> Any:
    """The ``b`` largest ``sigma`` (torch, finite), ordered by (-σ, index): ties to the lowest
    index. O(n + b log b): ``topk`` finds the b-th largest value, ties at it go in index order.

    Parameters
    ----------
    sigma : torch.Tensor (n,)
        Finite scores on any device.
    b : int
        How many, ``0 <= b <= n``.

    Returns
    -------
    torch.Tensor (b,)
        int64 indices on ``sigma``'s device, largest σ first, ties to the lowest index.

    Examples
    --------
    >>> import torch
    >>> from fastal.sparse import top_b_sigma
    >>> top_b_sigma(torch.tensor([0.5, 2.0, 0.5, 1.0]), 3).tolist()
    [1, 3, 0]
    """
    import torch

    if b == 0:
        return torch.empty(0, dtype=torch.int64, device=sigma.device)
    kth = torch.topk(sigma, b, sorted=False).values.min()
    above = torch.nonzero(sigma > kth).flatten()
    ties = torch.nonzero(sigma == kth).flatten()[: b - above.numel()]
    S = torch.cat([above, ties]).sort().values  # ascending index, so the stable sort breaks ties
    return S[torch.sort(-sigma[S], stable=True).indices]


def _terms(p: SparseProblem, w: Any, S: Any, r: Any) -> tuple[float, float]:
    """``(f, f1 + α Σ_S σ²)``: the objective and the size of its terms (a relative tolerance)."""
    f1 = p.f1(w, r)
    f2 = p.alpha * float((p.sigma[S] ** 2).sum())
    return f1 - f2, f1 + f2


def safeguard_top_sigma(p: SparseProblem, res: SolverResult) -> SolverResult:
    """Keep ``res`` or the top-b σ set, whichever has the lower ``f`` (fastal's addition, not in
    the paper: greedy and IHT are never worse than selecting the top-b σ).

    The candidate is :func:`top_b_sigma` weighted as the solvers weight a fixed support: De-bias
    (Alg. 5) from ``w = 1`` on it, then clamped at 0. It replaces ``res`` only when its ``f`` is
    lower by more than :data:`SAFEGUARD_RTOL` times the size of the terms of ``f`` (so an equal
    value keeps the solver's result). Both values are computed afresh from ``w``. The returned
    trace is ``res.objective`` followed by one entry, the ``f`` of what is returned; ``fallback``
    says which one that is.

    Parameters
    ----------
    p : SparseProblem
        The problem ``res`` was solved on.
    res : SolverResult
        The result of :func:`solve_greedy` or :func:`solve_iht` on ``p``.

    Returns
    -------
    SolverResult
        A new result: ``res``'s ``selected`` and ``weights`` (``fallback=False``) or the top-b σ
        set, in ``(-σ, index)`` order, and its weights (``fallback=True``);
        ``top_sigma_objective`` is the ``f`` of the top-b σ set in both cases.

    Examples
    --------
    >>> import torch
    >>> from fastal.sparse import DensePhi, SparseProblem, safeguard_top_sigma, solve_greedy
    >>> G = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    >>> sigma = torch.tensor([0.1, 0.1, 0.1, 0.3], dtype=torch.float64)
    >>> p = SparseProblem(DensePhi(G, 1), G.sum(1) / 4, sigma, b=1, alpha=10.0, beta=0.0)
    >>> res = solve_greedy(p, 1.0)
    >>> res.selected.tolist(), round(res.objective[-1], 6)
    ([2], -0.1)
    >>> safe = safeguard_top_sigma(p, res)  # the top σ alone has the lower f
    >>> safe.selected.tolist(), safe.weights.tolist(), safe.fallback, round(safe.objective[-1], 6)
    ([3], [0.0, 0.0, 0.0, 1.0], True, -0.4)
    """
    import torch

    dev = p.sigma.device
    S_top = top_b_sigma(p.sigma, p.b)
    w0 = torch.zeros(p.phi.n, dtype=torch.float64, device=dev)
    w0[S_top] = 1.0
    w_top, r_top = p.debias(w0, S_top)
    if bool((w_top < 0).any()):
        w_top = w_top.clamp_min(0)
        r_top = p.residual(w_top)
    f_top, size_top = _terms(p, w_top, S_top, r_top)
    S_res = torch.from_numpy(res.selected).to(dev)
    w_res = torch.from_numpy(res.weights).to(dev)
    f_res, size_res = _terms(p, w_res, S_res, p.residual(w_res))
    fallback = f_top < f_res - SAFEGUARD_RTOL * max(size_top, size_res)
    if not fallback:
        return SolverResult(res.selected, res.weights, [*res.objective, f_res], False, f_top)
    selected = _interop.host_numpy(S_top).astype(np.int64)
    return SolverResult(selected, _interop.host_numpy(w_top), [*res.objective, f_top], True, f_top)


def solve_greedy(p: SparseProblem, tau: float, progress: bool = False) -> SolverResult:
    """Alg. 1: add ``argmin_{j∉S} τ ∇f1(w)_j - α σ_j²``, line search on ``e_j``, De-bias, clamp.

    From ``w = 0``, ``b`` picks; each takes the candidate not yet in ``S`` with the lowest score
    (ties to the lowest index), moves ``w_j`` by the exact line search along ``e_j``
    (:meth:`SparseProblem.line_search`), runs one De-bias over ``S``
    (:meth:`SparseProblem.debias`) and clamps ``w`` at 0. Computed in float64 on ``p.sigma``'s
    device.

    Parameters
    ----------
    p : SparseProblem
        The problem, budget ``p.b``.
    tau : float
        τ, the weight of the gradient in the pick score.
    progress : bool, default False
        A tqdm bar over the picks.

    Returns
    -------
    SolverResult
        ``selected`` (b,) in pick order, ``weights`` (n,) on the host, ``objective`` the ``f``
        after every pick (``b`` values).

    Examples
    --------
    >>> import torch
    >>> from fastal.sparse import DensePhi, SparseProblem, solve_greedy
    >>> G = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    >>> sigma = torch.tensor([0.1, 0.1, 0.1, 0.3], dtype=torch.float64)
    >>> p = SparseProblem(DensePhi(G, 1), G.sum(1) / 4, sigma, b=1, alpha=1.0, beta=0.0)
    >>> res = solve_greedy(p, 1.0)  # scores τ ∇f1(0) - α σ² = [-1.01, -1.01, -2.01, -0.09]
    >>> res.selected.tolist(), res.weights.tolist(), round(res.objective[-1], 6)
    ([2], [0.0, 0.0, 0.5, 0.0], -0.01)
    """
    import torch
    from tqdm.auto import tqdm

    w = torch.zeros(p.phi.n, dtype=torch.float64, device=p.sigma.device)
    r = -p.v.clone()  # residual of w = 0
    taken = torch.zeros(p.phi.n, dtype=torch.bool, device=w.device)
    order, trace = [], []
    var_term = p.alpha * p.sigma**2
    for _ in tqdm(range(p.b), disable=not progress, desc="sparse greedy", unit="pick"):
        score = tau * p.grad_f1(w, r) - var_term
        score[taken] = float("inf")
        j = int(torch.argmin(score))  # first minimum: ties to the lowest index
        taken[j] = True
        order.append(j)
        e = torch.zeros_like(w)
        e[j] = 1
        pe = p.phi.apply(e)
        mu = p.line_search(e, w, r, pe)
        w, r = w - mu * e, r - mu * pe
        S = torch.tensor(order, device=w.device)
        w, r = p.debias(w, S, r)
        if bool((w < 0).any()):
            w = w.clamp_min(0)
            r = p.residual(w)
        trace.append(p.objective(w, S, r))
    return SolverResult(np.asarray(order, dtype=np.int64), _interop.host_numpy(w), trace)


def solve_iht(
    p: SparseProblem, iters: int, progress: bool = False, prox: str = "paper"
) -> SolverResult:
    """Alg. 2: gradient step with exact line search, the top-b proximal step (:func:`iht_threshold`
    with ``rule=prox``), De-bias, clamp, and momentum with a line-searched step. On CUDA the top-b
    step reads ``s`` and ``σ`` rounded to float32 (its kernel's input); the rest is float64.

    From ``w = z = 0``, each iteration: ``s = z - μ ∇f1(z)`` (μ by
    :meth:`SparseProblem.line_search`); ``(S, w) =`` the top-b step of ``s``; one De-bias over
    ``S``; ``w`` clamped at 0; then ``z = w - τ d`` for ``d = w - w_prev``, τ line-searched along
    ``d``.

    Parameters
    ----------
    p : SparseProblem
        The problem, budget ``p.b``.
    iters : int
        The number of iterations (0 returns an empty selection and zero weights).
    progress : bool, default False
        A tqdm bar over the iterations.
    prox : {"paper", "exact"}, default "paper"
        The ``rule`` of :func:`iht_threshold`.

    Returns
    -------
    SolverResult
        ``selected`` the support of the last top-b step (ordered by (score, index)),
        ``weights`` (n,) on the host, ``objective`` the ``f`` after every iteration (``iters``
        values).

    Examples
    --------
    >>> import torch
    >>> from fastal.sparse import DensePhi, SparseProblem, solve_iht
    >>> G = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    >>> sigma = torch.tensor([0.1, 0.1, 0.1, 0.3], dtype=torch.float64)
    >>> p = SparseProblem(DensePhi(G, 1), G.sum(1) / 4, sigma, b=1, alpha=1.0, beta=0.0)
    >>> res = solve_iht(p, 3, prox="exact")
    >>> res.selected.tolist(), res.weights.tolist(), [round(f, 6) for f in res.objective]
    ([2], [0.0, 0.0, 0.5, 0.0], [-0.01, -0.01, -0.01])
    >>> solve_iht(p, 3).selected.tolist()  # the paper's score: -α σ_j² for every s_j >= 0
    [3]
    """
    import torch
    from tqdm.auto import tqdm

    if prox not in IHT_RULES:  # the CPU kernel takes a flag: any other word was "paper"
        raise ValueError(f"prox must be one of {', '.join(map(repr, IHT_RULES))}, got {prox!r}")
    n = p.phi.n
    w = torch.zeros(n, dtype=torch.float64, device=p.sigma.device)
    z, r_w, r_z = w.clone(), -p.v.clone(), -p.v.clone()
    sigma_arg = p.sigma if p.sigma.device.type == "cpu" else p.sigma.to(torch.float32)
    trace, S = [], None
    for _ in tqdm(range(iters), disable=not progress, desc="sparse IHT", unit="iter"):
        w_prev = w
        g, phi_g = p.phi.grad_apply(r_z, z, p.beta)
        s = z - p.line_search(g, z, r_z, phi_g) * g
        s_arg = s if s.device.type == "cpu" else s.to(torch.float32)
        S, w_new = _iht_torch(s_arg, sigma_arg, p.b, p.alpha, prox)
        w = w_new.to(torch.float64)
        w, r_w = p.debias(w, S)
        if bool((w < 0).any()):
            w = w.clamp_min(0)
            r_w = p.residual(w)
        d = w - w_prev
        # Φd directly (d lives on the old and new selection only): r_w - r_w' would cancel
        phi_d = p.phi.apply(d)
        tau = p.line_search(d, w, r_w, phi_d)
        z, r_z = w - tau * d, r_w - tau * phi_d
        trace.append(p.objective(w, S, r_w))
    selected = _interop.host_numpy(S) if S is not None else np.empty(0, np.int64)
    return SolverResult(selected.astype(np.int64), _interop.host_numpy(w), trace)


def _iht_torch(s: Any, sigma: Any, b: int, alpha: float, rule: str) -> tuple[Any, Any]:
    """iht_threshold on torch tensors (CPU: the C++ kernel on zero-copy numpy views; it rejects
    NaN itself)."""
    import torch

    if s.device.type == "cpu":
        support, w = getattr(_ext.cpu, f"iht_threshold_{str(s.dtype).removeprefix('torch.')}")(
            s.contiguous().numpy(), sigma.contiguous().numpy(), b, alpha, exact=rule == "exact"
        )
        return torch.from_numpy(support), torch.from_numpy(w)
    return iht_threshold(s.contiguous(), sigma.contiguous(), b, alpha, rule=rule)
