"""The outer step of the greedy: ∇G, the inverse-Hessian product H⁻¹ ∇G and the candidates'
scores of eq. 2, kept rank one per sample."""

from __future__ import annotations

from typing import Any

from .._threads import one_thread_if_small
from .._torch_arrays import from_torch
from .._validate import (
    _number,
    check_bool,
    check_positive_int,
)
from . import _common
from ._common import (
    _rows_per_chunk,
    _tensor,
    _torch,
)
from .inner import (
    _class_block_preconditioner,
    _float64_inputs,
    _matrix64,
    _solve_hessian,
    _weights64,
)


class _Span:
    """An orthonormal basis Q (m, r) of span{z_i : i ∈ S}, grown by Gram–Schmidt, and X = Z_S Q.

    The inner Hessian ``H = 2λ I + Σ_i D_i ⊗ z_i z_iᵀ`` maps ``span(Q)`` (row space of ``V``) into
    itself and is ``2λ I`` on its complement. So ``H⁻¹ G = G_⊥ / 2λ + (H_r⁻¹ G Q) Qᵀ`` with
    ``H_r`` the restriction to C × r coordinates: CG runs on C·r unknowns instead of C·m, and the
    complement (where the paper's 30 CG steps on the full space would spend one step) is exact.
    """

    def __init__(self, m: int, device: Any) -> None:
        torch = _torch()
        self.Q = torch.zeros((m, 0), dtype=torch.float64, device=device)
        self.X = torch.zeros((0, 0), dtype=torch.float64, device=device)
        self.Zs = torch.zeros((0, m), dtype=torch.float64, device=device)

    def add(self, Znew: Any) -> int:
        """Add rows (k, m) to S; returns how many basis vectors were added."""
        torch = _torch()
        Znew = Znew.to(torch.float64)
        fresh = []
        Q = self.Q
        for z in Znew:
            q = z.clone()
            for _ in range(2):  # twice is enough (Kahan–Parlett)
                q -= Q @ (Q.T @ q)
                for f in fresh:
                    q -= f * (f @ q)
            nz = float(q.norm())
            if nz > 1e-10 * max(float(z.norm()), 1e-300):
                fresh.append(q / nz)
        if fresh:
            Qn = torch.stack(fresh, 1)
            self.X = torch.cat([self.X, self.Zs @ Qn], 1)
            self.Q = torch.cat([Q, Qn], 1)
        self.X = torch.cat([self.X, Znew @ self.Q], 0)
        self.Zs = torch.cat([self.Zs, Znew], 0)
        return len(fresh)


def _inverse_hvp_reduced(
    span: _Span,
    P: Any,
    w: Any,
    G: Any,
    reg: float,
    steps: int,
    tol: float,
    precondition: bool,
    Minv_at_P: Any = None,
) -> tuple[Any, float, int]:
    """``V = H⁻¹ G`` through the invariant subspace ``span(Q)`` (see :class:`_Span`)."""
    Q, X = span.Q, span.X
    Gr = G @ Q
    V = (G - Gr @ Q.T) / (2 * reg)
    if Q.shape[1] == 0:
        return V, 0.0, 0
    Minv = None
    if precondition:
        Minv = _class_block_preconditioner(P, X, w, reg) if Minv_at_P is None else Minv_at_P
    Vr, res, it = _solve_hessian(P, X, w, reg, Gr, steps=steps, tol=tol, Minv=Minv)
    return V + Vr @ Q.T, res, it


def inverse_hvp(
    Z: Any,
    W: Any,
    G: Any,
    *,
    reg: float = 1e-4,
    sample_weight: Any = None,
    cg_steps: int = 30,
    tol: float = 1e-10,
    precondition: bool = True,
) -> tuple[Any, dict]:
    """``V = H⁻¹ G`` for the inner Hessian at ``W`` by conjugate gradients (eq. 2; Pedregosa 2016).

    ``H = Σ_i w_i (diag p_i - p_i p_iᵀ) ⊗ z_i z_iᵀ + 2λ I`` over the inner points ``Z``. The row
    space of ``Z`` is invariant under ``H`` and ``H = 2λ I`` on its orthogonal complement, so the
    component of ``G`` outside ``span(Z)`` is divided by 2λ exactly and ``cg_steps`` CG iterations
    (Hessian-vector products of the inner objective, :func:`.inner_hvp`) run on the rest, in an
    orthonormal basis of ``span(Z)`` (C · rank(Z) unknowns).

    With ``precondition=True`` (the default; an addition to the paper) CG is preconditioned by the
    class-diagonal blocks of ``H`` (``Σ_i w_i p_ic (1 - p_ic) x_i x_iᵀ + 2λ I``, Cholesky-factored):
    ``H`` has condition numbers up to ``|z|² s / 2λ`` (10⁷ and more at λ = 10⁻⁴), where 30 plain
    CG steps can leave a relative residual above 1; preconditioned, 30 steps typically reach
    10⁻² to 10⁻³. ``precondition=False`` is the paper's plain CG.

    Parameters
    ----------
    Z : array (s, m)
    W, G : arrays (C, m)
    reg : float
    sample_weight : array (s,), optional
    cg_steps : int, default 30 (the paper's)
    tol : float
        Early stop at relative residual ``tol``.
    precondition : bool, default True

    Returns
    -------
    V : (C, m) float64 in ``Z``'s framework
    info : dict with ``residual`` (relative, in the subspace) and ``iters``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.bilevel import inverse_hvp
    >>> V, info = inverse_hvp(np.eye(2), np.zeros((2, 2)), np.ones((2, 2)), reg=0.5)
    >>> V.tolist(), info
    ([[1.0, 1.0], [1.0, 1.0]], {'residual': 0.0, 'iters': 0})
    """
    torch = _torch()
    reg = _number(reg, "reg", positive=True)
    cg_steps = check_positive_int(cg_steps, "cg_steps")
    tol = _number(tol, "tol", minimum=0.0)
    precondition = check_bool(precondition, "precondition")
    zt, _, wt, info = _float64_inputs(Z, None, sample_weight)
    Wt = _weights64(W, zt)
    Gt = _matrix64(G, "G", tuple(Wt.shape), zt.device)
    span = _Span(zt.shape[1], zt.device)
    span.add(zt)
    P = torch.softmax(zt @ Wt.T, dim=1)
    work = zt.shape[0] * zt.shape[1] * Gt.shape[0]
    with one_thread_if_small(zt.device, work, _common._SMALL_WORK):
        V, res, it = _inverse_hvp_reduced(span, P, wt, Gt, reg, cg_steps, tol, precondition)
    return from_torch(V, info), {"residual": res, "iters": it}


def _upper_pass(Z: Any, W: Any, T: Any) -> tuple[Any, Any, float]:
    """One chunked pass over the pool: ``A = softmax(Z Wᵀ) - T`` (n, C) in Z's dtype,
    ``∇G = Aᵀ Z`` (C, m) float64 and ``G`` (the summed cross-entropy)."""
    torch = _torch()
    n, m = Z.shape
    A = torch.empty((n, T.shape[1]), dtype=Z.dtype, device=Z.device)
    grad = torch.zeros((T.shape[1], m), dtype=torch.float64, device=Z.device)
    Wc = W.to(Z.dtype)
    loss = 0.0
    step = _rows_per_chunk(m)
    for s in range(0, n, step):
        zc = Z[s : s + step]
        logp = torch.log_softmax((zc @ Wc.T).to(torch.float64), dim=1)
        tc = T[s : s + step]
        loss -= float((tc * logp).sum())
        a = (torch.exp(logp) - tc).to(Z.dtype)
        A[s : s + step] = a
        grad += (a.T @ zc).to(torch.float64)
    return A, grad, loss


def candidate_scores(Z: Any, A: Any, V: Any) -> Any:
    """Scores of eq. 2, ``∇_W ℓ_xᵀ V = a_xᵀ V z_x`` for every row (``a_x = p_x - ỹ_x``).

    The per-sample gradient ``a_x ⊗ z_x`` is rank one, so this is a row-wise product: on the CPU
    the C++ factored kernel (:meth:`fastal.sparse.FactoredPhi.adjoint`, one pass, no
    temporaries), elsewhere row tiles of ``rowsum(A ⊙ (Z Vᵀ))``. Never an ``n × C·m`` matrix.

    Parameters
    ----------
    Z : array (n, m)
    A : array (n, C)
        Moved to ``Z``'s device and cast to ``Z``'s dtype.
    V : array (C, m)
        ``H⁻¹ ∇G``.

    Returns
    -------
    (n,) float64 in ``Z``'s framework.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.bilevel import candidate_scores
    >>> Z = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> A = np.array([[0.5, -0.5], [-0.25, 0.25]])
    >>> V = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> candidate_scores(Z, A, V).tolist()   # a_xᵀ V z_x
    [0.5, 0.5]
    """
    from ..sparse import FactoredPhi

    torch = _torch()
    zt, info = _tensor(Z, "Z")
    at = _tensor(A, "A")[0].to(zt.device, zt.dtype)
    vt = _tensor(V, "V")[0].to(zt.device, torch.float64)
    if at.shape[0] != zt.shape[0] or tuple(vt.shape) != (at.shape[1], zt.shape[1]):
        raise ValueError(
            f"need Z (n, m), A (n, C), V (C, m); got {tuple(zt.shape)}, {tuple(at.shape)}, "
            f"{tuple(vt.shape)}"
        )
    return from_torch(FactoredPhi(at, zt, 1).adjoint(vt), info)
