"""The inner problem: multinomial logistic regression on the Nyström features with weight
decay, its Hessian-vector products, conjugate gradients and the Newton / Adam solvers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .._threads import one_thread_if_small
from .._torch_arrays import from_torch
from .._validate import (
    _number,
    check_positive_int,
)
from . import _common
from ._common import (
    _check_probs,
    _tensor,
    _torch,
)

#: Newton's CG iterations above which its preconditioner is rebuilt at the current W.
_STALE_CG = 8
_EPS64 = float(np.finfo(np.float64).eps)


def _loss_grad(W: Any, Z: Any, T: Any, w: Any, reg: float) -> tuple[Any, Any, Any]:
    """F(W), ∇F(W) (C, m) and the probabilities P (s, C); float64 tensors."""
    torch = _torch()
    logp = torch.log_softmax(Z @ W.T, dim=1)
    P = torch.exp(logp)
    f = -(w * (T * logp).sum(1)).sum() + reg * (W * W).sum()
    g = (w[:, None] * (P - T)).T @ Z + 2 * reg * W
    return f, g, P


def _hvp(P: Any, Z: Any, w: Any, reg: float, D: Any) -> Any:
    """``H D`` with ``H = Σ_i w_i (diag p_i - p_i p_iᵀ) ⊗ z_i z_iᵀ + 2λ I`` (closed form)."""
    M = Z @ D.T  # (s, C): D z_i
    J = P * (M - (P * M).sum(1, keepdim=True))  # (diag p - p pᵀ) D z_i
    return (w[:, None] * J).T @ Z + 2 * reg * D


def _float64_inputs(
    Z: Any, T: Any, sample_weight: Any, name: str = "Z"
) -> tuple[Any, Any, Any, Any]:
    torch = _torch()
    zt, info = _tensor(Z, name)
    if zt.ndim != 2:
        raise ValueError(f"{name} must be 2-D (s, m), got shape {tuple(zt.shape)}")
    zt = zt.to(torch.float64)
    if not bool(torch.isfinite(zt).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    tt = None
    if T is not None:
        tt = _tensor(T, "targets")[0].to(zt.device)
        if tt.ndim != 2 or tt.shape[0] != zt.shape[0]:
            raise ValueError(
                f"targets must be ({zt.shape[0]}, C) probability rows (one_hot() for classes), "
                f"got shape {tuple(tt.shape)}"
            )
        tt = _check_probs(tt, "targets")
    if sample_weight is None:
        wt = torch.ones(zt.shape[0], dtype=torch.float64, device=zt.device)
    else:
        wt = _tensor(sample_weight, "sample_weight")[0].to(zt.device, torch.float64)
        if (
            tuple(wt.shape) != (zt.shape[0],)
            or bool((wt < 0).any())
            or not bool(torch.isfinite(wt).all())
        ):
            raise ValueError(f"sample_weight must be ({zt.shape[0]},) finite and >= 0")
    return zt, tt, wt, info


def _matrix64(x: Any, name: str, shape: tuple[int, ...], device: Any) -> Any:
    """``x`` as a finite float64 tensor of ``shape`` on ``device``; errors name ``name``."""
    torch = _torch()
    t = _tensor(x, name)[0].to(device, torch.float64)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def _weights64(W: Any, zt: Any) -> Any:
    """The weights ``W`` (C, m) for features ``zt`` (s, m): a finite float64 tensor on their
    device; errors name ``W``."""
    Wt = _tensor(W, "W")[0]
    if Wt.ndim != 2 or Wt.shape[1] != zt.shape[1]:
        raise ValueError(f"W must have shape (C, {zt.shape[1]}), got {tuple(Wt.shape)}")
    return _matrix64(Wt, "W", tuple(Wt.shape), zt.device)


def inner_objective(
    Z: Any, targets: Any, W: Any, *, reg: float = 1e-4, sample_weight: Any = None
) -> float:
    """``F(W) = Σ_i w_i CE(softmax(W z_i), t_i) + λ |W|²_F`` (eq. 3, inner problem), float64.

    ``CE(p, t) = -Σ_c t_c log p_c``; targets are probability rows (one-hot for known labels).

    Parameters
    ----------
    Z : array (s, m)
        Features of the inner problem's points (numpy, torch or cupy; taken in float64), finite.
    targets : array (s, C)
        Probability rows (:func:`one_hot` for classes); required.
    W : array (C, m)
        The weights at which ``F`` is evaluated, finite.
    reg : float > 0, default 1e-4
        λ.
    sample_weight : array (s,), optional
        ``w_i``, finite and >= 0 (default all 1).

    Returns
    -------
    float
        ``F(W)``, computed in float64.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.bilevel import inner_objective, one_hot
    >>> Z, T = np.eye(2), one_hot([0, 1], 2)
    >>> round(inner_objective(Z, T, np.zeros((2, 2))), 6)   # 2 log 2: uniform predictions
    1.386294
    """
    reg = _number(reg, "reg", positive=True)
    zt, tt, wt, _ = _float64_inputs(Z, targets, sample_weight)
    if tt is None:
        raise ValueError("targets are required")
    Wt = _matrix64(W, "W", (tt.shape[1], zt.shape[1]), zt.device)
    return float(_loss_grad(Wt, zt, tt, wt, reg)[0])


def inner_hvp(Z: Any, W: Any, V: Any, *, reg: float = 1e-4, sample_weight: Any = None) -> Any:
    """Hessian-vector product of the inner objective at ``W``, exact and in closed form.

    ``H V = Σ_i w_i ((diag p_i - p_i p_iᵀ) V z_i) z_iᵀ + 2λ V`` with ``p_i = softmax(W z_i)``: the
    Hessian of softmax cross-entropy does not depend on the targets.

    Parameters
    ----------
    Z : array (s, m)
        Features of the inner problem's points.
    W, V : arrays (C, m)
    reg : float
        λ (the penalty is ``λ |W|²``, whose Hessian is ``2λ I``).
    sample_weight : array (s,), optional

    Returns
    -------
    (C, m) float64, in ``Z``'s framework.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.bilevel import inner_hvp
    >>> inner_hvp(np.eye(2), np.zeros((2, 2)), np.eye(2), reg=0.5).tolist()
    [[1.25, -0.25], [-0.25, 1.25]]
    """
    torch = _torch()
    reg = _number(reg, "reg", positive=True)
    zt, _, wt, info = _float64_inputs(Z, None, sample_weight)
    Wt = _weights64(W, zt)
    Vt = _matrix64(V, "V", tuple(Wt.shape), zt.device)
    P = torch.softmax(zt @ Wt.T, dim=1)
    return from_torch(_hvp(P, zt, wt, reg, Vt), info)


def conjugate_gradient(
    hvp: Callable[[Any], Any],
    b: Any,
    *,
    steps: int = 30,
    tol: float = 1e-10,
    precond: Callable[[Any], Any] | None = None,
) -> tuple[Any, float, int]:
    """Solve ``H x = b`` for a symmetric positive definite operator given as ``hvp(x) = H x``.

    CG from ``x = 0`` (Hestenes–Stiefel; preconditioned when ``precond(r) ≈ H⁻¹ r`` is given,
    itself symmetric positive definite) on tensors of any shape (the inner product is the sum over
    all entries), at most ``steps`` iterations, stopping early when ``|b - H x| ≤ tol |b|``.
    It also stops, without the step, when a curvature ``pᵀ H p`` or ``rᵀ z`` is not positive.

    Parameters
    ----------
    hvp : callable
        ``hvp(x) -> H x``, a tensor of ``b``'s shape.
    b : torch.Tensor
        The right-hand side, finite (any shape; float64 for accurate solves).
    steps : int >= 0, default 30
        Most CG iterations.
    tol : float, default 1e-10
        Relative residual at which to stop.
    precond : callable, optional
        ``precond(r) ≈ H⁻¹ r``, symmetric positive definite; plain CG without it.

    Returns
    -------
    x : tensor like ``b``
    residual : float
        ``|b - H x| / |b|`` (the recursively updated residual; 0 when ``b = 0``).
    iterations : int
        CG iterations taken (0 when ``b = 0``).

    Raises
    ------
    ValueError
        If ``steps`` is not a non-negative integer, ``b`` has NaN or Inf, or ``hvp`` /
        ``precond`` return NaN or Inf (then :class:`CGBreakdown`, a ``ValueError``).

    Examples
    --------
    >>> import torch
    >>> from fastal.bilevel import conjugate_gradient
    >>> H = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    >>> b = torch.tensor([2.0, 4.0], dtype=torch.float64)
    >>> x, residual, iterations = conjugate_gradient(lambda v: H @ v, b)
    >>> x.tolist(), residual < 1e-10, iterations
    ([1.0, 1.0], True, 2)
    """
    torch = _torch()
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    x = torch.zeros_like(b)
    r = b.clone()
    bnorm = float(r.norm())
    if not math.isfinite(bnorm):
        raise ValueError("b contains NaN or Inf (or its norm overflows)")
    if bnorm == 0:
        return x, 0.0, 0
    z = r if precond is None else precond(r)
    p = z.clone()
    rz = float((r * z).sum())
    rnorm = bnorm
    it = 0
    for it in range(1, int(steps) + 1):
        Hp = hvp(p)
        curv = float((p * Hp).sum())
        if not (math.isfinite(curv) and math.isfinite(rz)):  # NaN compares false: x went NaN
            raise CGBreakdown("hvp (or precond) returned NaN or Inf: H x = b cannot be solved")
        if curv <= 0 or rz <= 0:  # not positive definite along p (only by rounding): stop here
            it -= 1
            break
        alpha = rz / curv
        x += alpha * p
        r -= alpha * Hp
        rnorm = float(r.norm())
        if rnorm <= tol * bnorm:
            break
        z = r if precond is None else precond(r)
        rz_new = float((r * z).sum())
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, rnorm / bnorm, it


class CGBreakdown(ValueError):
    """:func:`conjugate_gradient` met NaN or Inf: a bad operator, or iterates that grew past
    float64 on a system far too ill-conditioned for it."""


def _class_block_preconditioner(P: Any, X: Any, w: Any, reg: float) -> Callable[[Any], Any]:
    """Block-Jacobi over classes: ``B_c = Σ_i w_i p_ic (1 - p_ic) x_i x_iᵀ + 2λ I`` (r × r each),
    the diagonal blocks of the Hessian, Cholesky-factored once; ``M⁻¹ R`` solves each row of R.

    Builds in O(C s r²) and applies in O(C r²); for large r (C r² above ~2²⁵ entries) the plain
    diagonal of the Hessian is used instead.
    """
    torch = _torch()
    C, r = P.shape[1], X.shape[1]
    curv = w[:, None] * P * (1 - P)  # (s, C)
    if C * r * r > (1 << 25):
        diag = curv.T @ (X * X) + 2 * reg  # (C, r)
        return lambda R: R / diag
    B = torch.stack([(X * curv[:, c : c + 1]).T @ X for c in range(C)])  # no (s, C, r) temporary
    B.diagonal(dim1=1, dim2=2).add_(2 * reg)
    L, info = torch.linalg.cholesky_ex(B)
    if bool(info.any()):  # rounding: fall back to the diagonal
        diag = B.diagonal(dim1=1, dim2=2)
        return lambda R: R / diag
    Binv = torch.cholesky_inverse(L)  # applying an explicit inverse is a cheap batched mat-vec
    return lambda R: (Binv @ R.unsqueeze(2)).squeeze(2)


def _solve_hessian(
    P: Any,
    X: Any,
    w: Any,
    reg: float,
    B: Any,
    *,
    steps: int,
    tol: float,
    Minv: Any = None,
    mean: Any = None,
) -> tuple[Any, float, int]:
    """``H⁻¹ B`` for ``H = Σ_i w_i D_i ⊗ x_i x_iᵀ + 2λ I`` (``D_i = diag p_i - p_i p_iᵀ``).

    Softmax is invariant to adding one vector to every class row, so ``D_i 1 = 0`` and
    ``H (1 uᵀ) = 2λ 1 uᵀ``: the class-mean part of ``B`` is solved exactly as ``mean / 2λ`` and CG
    runs on the zero-class-mean part, which ``H`` keeps zero-mean. The block-Jacobi preconditioner
    is projected onto that subspace too (unprojected, its inverse blocks ``1 / p_c (1 - p_c)``
    would mix in the direction of curvature 2λ and undo the preconditioning). ``Minv`` is the
    block-Jacobi inverse (:func:`_class_block_preconditioner`, possibly built at a nearby W: any
    fixed SPD preconditioner is valid) or None for plain CG. The residual is relative to the
    zero-mean part. ``mean`` is ``B``'s class mean when the caller knows it exactly (Newton:
    ``∇F``'s is ``2λ mean(U)``); computed from ``B`` it carries rounding of ``eps |B|``, which the
    division by 2λ blows up.
    """
    B0 = B - B.mean(0, keepdim=True)
    if mean is None:
        mean = B.mean(0, keepdim=True)
    M = None
    if Minv is not None:

        def M(R: Any) -> Any:
            Y = Minv(R - R.mean(0, keepdim=True))
            return Y - Y.mean(0, keepdim=True)

    x, res, it = conjugate_gradient(
        lambda D: _hvp(P, X, w, reg, D), B0, steps=steps, tol=tol, precond=M
    )
    return x + mean / (2 * reg), res, it


def _newton(
    X: Any,
    T: Any,
    w: Any,
    reg: float,
    U0: Any,
    *,
    tol: float,
    max_iter: int,
    cg_max: int,
    w_rtol: float = 0.0,
) -> tuple[Any, dict]:
    """Newton-CG with Armijo backtracking on F (float64); ``U0`` is the warm start.

    Stops when ``|∇F| ≤ tol · |∇F(0)|`` or ``|∇F| ≤ w_rtol · 2λ |U|``: F is 2λ-strongly convex, so
    ``|U - U*| ≤ |∇F| / 2λ`` and the second test bounds the relative error of ``U`` by ``w_rtol``
    whatever the scale of ``∇F(0)`` (near-separable data: ``|∇F(0)|`` is 10⁶ times the gradient
    at which ``U`` is still a few percent off).
    """
    U = U0.clone()

    def exact_mean(g: Any, U: Any) -> Any:
        # The data part of ∇F has class-mean 0 (softmax is shift-invariant), so ∇F's class mean is
        # 2λ mean(U). Its rounding (eps |∇F|, large for large features) would be solved as
        # mean / 2λ in _solve_hessian and swamp the step: no Armijo step passed from |z| ~ 1e15.
        return g - g.mean(0, keepdim=True) + (2 * reg) * U.mean(0, keepdim=True)

    f, g, P = _loss_grad(U, X, T, w, reg)
    g = exact_mean(g, U)
    # scale of the stopping test: the gradient at W = 0 (uniform predictions)
    C = T.shape[1]
    g0 = float(((w[:, None] * (1.0 / C - T)).T @ X).norm()) if X.shape[0] else 0.0
    it = 0
    gn = float(g.norm())
    Minv = None

    def converged(gn: float, U: Any) -> bool:
        return gn <= tol * max(g0, 1e-300) or gn <= w_rtol * 2 * reg * float(U.norm())

    while it < max_iter and not converged(gn, U):
        eta = min(0.5, math.sqrt(gn / max(g0, 1e-300)))  # Eisenstat–Walker forcing: superlinear
        if Minv is None:
            Minv = _class_block_preconditioner(P, X, w, reg)
        mean = -(2 * reg) * U.mean(0, keepdim=True)  # -∇F's class mean, exactly
        d, _, cg_it = _solve_hessian(P, X, w, reg, -g, steps=cg_max, tol=eta, Minv=Minv, mean=mean)
        if cg_it > _STALE_CG:  # the preconditioner was built at an older W: rebuild next time
            Minv = None
        slope = float((g * d).sum())
        if slope >= 0:  # rounding only; fall back to steepest descent
            d, slope = -g, -gn * gn
        t, accepted = 1.0, False
        d_norm, floor = float(d.norm()), 4 * _EPS64 * float(U.norm())
        for _ in range(60):
            f_new, g_new, P_new = _loss_grad(U + t * d, X, T, w, reg)
            if float(f_new) <= float(f) + 1e-4 * t * slope:
                accepted = True
                break
            t *= 0.5
            if t * d_norm <= floor:  # the step would no longer change U
                break
        if not accepted:
            break  # no decrease representable: converged to rounding
        U = U + t * d
        f, g, P = f_new, exact_mean(g_new, U), P_new
        gn = float(g.norm())
        it += 1
    if Minv is None and X.shape[0]:
        Minv = _class_block_preconditioner(P, X, w, reg)
    info = {"loss": float(f), "grad_norm": gn, "iters": it, "P": P, "grad0": g0, "precond": Minv}
    return U, info


def solve_inner(
    Z: Any,
    targets: Any,
    *,
    reg: float = 1e-4,
    sample_weight: Any = None,
    W0: Any = None,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> tuple[Any, dict]:
    """Minimise the inner objective (eq. 3) by full-batch Newton-CG in float64.

    ``F(W) = Σ_i w_i CE(softmax(W z_i), t_i) + λ |W|²``, ``W`` (C, m), no bias: the paper's
    ``h_w(x) = σ(wᵀ z_x)`` has none (with :func:`.linear_ntk` the constant is already in the
    kernel).
    ``F`` is strongly convex (λ > 0); Newton-CG (truncated Newton with Eisenstat–Walker forcing,
    an Armijo line search, exact Hessian-vector products and the class-block preconditioner of
    :func:`.inverse_hvp`) converges globally and quadratically near the optimum. This is the
    default of :func:`.bilevel_select` without augmentation: the inner set ``labeled ∪ B`` is small
    and fixed, so a full-batch second-order method with a warm start needs a handful of Newton
    steps per greedy pick (3–4 on average, 15 for the first solve, on bench_bilevel.py's pools),
    where the paper's 10³ Adam steps of batch 64 only
    approach the optimum that the implicit-function gradient of eq. 2 assumes.

    Parameters
    ----------
    Z : array (s, m)
    targets : array (s, C)
        Probability rows (one-hot for labels, soft pseudo-labels otherwise).
    reg : float > 0, default 1e-4
        λ (the paper's value).
    sample_weight : array (s,), optional
    W0 : array (C, m), optional
        Warm start (default 0; the paper starts from random weights, irrelevant for a strictly
        convex problem solved to tolerance).
    tol : float, default 1e-10
        Stop when ``|∇F| ≤ tol · 2λ |W|``: F is 2λ-strongly convex, so ``W`` is then within
        ``tol · |W|`` of the optimum, however large ``|∇F(0)|`` is (well-separated classes), and
        from any warm start. Newton also stops at the rounding floor ``|∇F| ≤ 1e-14 · |∇F(0)|``
        and when no step decreases F any more.
    max_iter : int
        Newton iterations.

    Returns
    -------
    W : (C, m) float64 in ``Z``'s framework
    info : dict with ``loss``, ``grad_norm``, ``iters``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.bilevel import solve_inner
    >>> Z = np.array([[1.0, 0.0], [0.0, 1.0]]); T = np.array([[0.9, 0.1], [0.2, 0.8]])
    >>> W, info = solve_inner(Z, T)
    >>> np.round(np.exp(Z @ W.T) / np.exp(Z @ W.T).sum(1, keepdims=True), 3).tolist()
    [[0.9, 0.1], [0.2, 0.8]]
    """
    torch = _torch()
    reg = _number(reg, "reg", positive=True)
    tol = _number(tol, "tol", minimum=0.0)
    max_iter = check_positive_int(max_iter, "max_iter")
    zt, tt, wt, info = _float64_inputs(Z, targets, sample_weight)
    if tt is None:
        raise ValueError("targets are required")
    C = tt.shape[1]
    U0 = torch.zeros((C, zt.shape[1]), dtype=torch.float64, device=zt.device)
    if W0 is not None:
        U0 = _matrix64(W0, "W0", (C, zt.shape[1]), zt.device)
    with one_thread_if_small(zt.device, zt.shape[0] * zt.shape[1] * C, _common._SMALL_WORK):
        U, out = _newton(
            zt, tt, wt, reg, U0, tol=_common._NEWTON_FLOOR, max_iter=max_iter,
            cg_max=max(250, 2 * C * zt.shape[1]), w_rtol=tol,
        )  # fmt: skip
    out.pop("P")
    out.pop("precond")
    return from_torch(U, info), out


def _adam(
    W0: Any,
    batch: Callable[[np.random.Generator], tuple[Any, Any, Any]],
    s: int,
    reg: float,
    *,
    iters: int,
    lr: float,
    rng: np.random.Generator,
) -> Any:
    """Adam (Kingma & Ba; β = (0.9, 0.999), ε = 1e-8, fresh moments per call) on the minibatch
    estimate ``(s / |b|) Σ_b w ℓ + λ|W|²`` of F, over ``batch(rng) -> (Z_b, T_b, w_b)``.

    The minibatch gradient is the closed form ``(s / |b|) Σ_b w (p - t) zᵀ + 2λ W``: no autograd.
    """
    torch = _torch()
    W = W0.clone()
    m1, m2 = torch.zeros_like(W), torch.zeros_like(W)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, int(iters) + 1):
        zb, tb, wb = batch(rng)
        P = torch.softmax(zb @ W.T, dim=1)
        g = (s / zb.shape[0]) * ((wb[:, None] * (P - tb)).T @ zb) + 2 * reg * W
        m1.mul_(b1).add_(g, alpha=1 - b1)
        m2.mul_(b2).addcmul_(g, g, value=1 - b2)
        step = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        W -= step * m1 / (m2.sqrt() + eps * math.sqrt(1 - b2**t))
    return W
