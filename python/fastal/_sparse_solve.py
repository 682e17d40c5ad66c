"""The Sparse Approximation problem (eq. 15) and its solvers: Greedy (Alg. 1), proximal IHT
(Alg. 2) and fastal's top-b σ safeguard. Public through :mod:`fastal.sparse`, whose docstring
states the interpretations."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _ext, _interop
from ._validate import check_choice


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

    def __post_init__(self) -> None:
        # the public face of the solvers: checked here, where a bad value gave a duplicate pick
        # (greedy with b > n), a torch dtype error naming nothing, or an empty top-b set (NaN σ)
        import torch

        n = self.phi.n
        if isinstance(self.b, bool) or not isinstance(self.b, (int, np.integer)):
            raise TypeError(f"b must be an integer, got {type(self.b).__name__}")
        if not 0 <= self.b <= n:
            raise ValueError(f"b must be in [0, {n}] (the columns of phi), got {self.b}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            real = isinstance(value, (int, float, np.integer, np.floating))
            if isinstance(value, bool) or not real:
                raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
            if not 0 <= value < math.inf:
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        for name in ("v", "sigma"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.dtype != torch.float64:
                got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
                raise TypeError(f"{name} must be a float64 torch tensor, got {got}")
        if tuple(self.sigma.shape) != (n,):
            raise ValueError(f"sigma must have shape ({n},), got {tuple(self.sigma.shape)}")
        if not bool(torch.isfinite(self.sigma).all()):
            raise ValueError("sigma contains NaN or Inf")
        G = getattr(self.phi, "G", None)
        if G is not None and G.dtype != torch.float64:  # DensePhi computes in G's dtype
            raise TypeError(f"a DensePhi's G must be float64 (as the weights are), got {G.dtype}")

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
        """The smooth part of the objective, ``f1(w) = |Φw - v|² + β |w - 1|²``, a float.

        ``w`` and ``r`` as in :meth:`grad_f1`.
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
        to order 1, and μ is scaled back; there ``Φu`` is computed again from ``u`` brought to
        order 1 first (``Φu`` goes like the features' scale cubed and may have lost its digits to
        underflow).

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
        return self._line_step(u, w, r, phi_u)[0]

    def _line_step(self, u: Any, w: Any, r: Any = None, phi_u: Any = None) -> tuple[float, Any]:
        """:meth:`line_search`'s μ and the residual's change ``μ Φu`` (from the ``Φu`` that gave
        μ: after an underflow, the recomputed one, not the caller's)."""
        r = self.residual(w) if r is None else r
        pu = self.phi.apply(u) if phi_u is None else phi_u
        num, den = self._line_terms(u, w, r, pu)
        if math.isfinite(num) and _SAFE_DEN[0] <= den <= _SAFE_DEN[1]:
            mu = num / den
            return mu, mu * pu
        # |Φu|² goes like the features' scale to the sixth power (u = ∇f1): past ~1e51 it
        # overflows, below ~1e-51 it underflows, and μ = num / inf or num / 0 -> 0 would silently
        # skip the step (with β = 0 IHT then returned the first b candidates, weights 0). The
        # minimiser along k u is μ / k: k, a power of two, brings the larger of Φu and √β u to
        # O(1); if even that fails, NaN reaches the caller's finiteness check.
        largest = float(u.abs().max())
        if largest == 0:
            return 0.0, pu * 0  # a zero direction: no step
        if not math.isfinite(largest):
            return math.nan, pu * math.nan
        # Φ of u brought to O(1) again: Φu (~ the scale cubed) may have underflowed, to
        # subnormals below features of ~1e-103 (at 4e-106 De-bias returned a residual r - μ Φu
        # off by 1e-3 relative, which misled every later pick) and wholly below ~1e-108
        k0 = _power_of_two_towards_one(largest)
        if k0 != 1.0:
            u, pu = u * k0, self.phi.apply(u * k0)
        peak = max(float(pu.abs().max()), math.sqrt(self.beta) * float(u.abs().max()))
        if peak == 0:
            return 0.0, pu * 0  # a direction Φ maps to 0, with β = 0: no step
        if not math.isfinite(peak):
            return math.nan, pu * math.nan
        k = _power_of_two_towards_one(peak)
        num, den = self._line_terms(u * k, w, r, pu * k)
        if not (math.isfinite(num) and math.isfinite(den)):
            return math.nan, pu * math.nan
        along = num / den * k if den > 0 else 0.0  # the minimiser along k0 u
        return along * k0, along * pu

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
        mu, step = self._line_step(u, w, r, pu)
        return w - mu * u, r - step


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

    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 0 <= b <= sigma.numel():
        raise ValueError(f"b must be an integer in [0, {sigma.numel()}], got {b!r}")
    if not bool(torch.isfinite(sigma).all()):  # a NaN matches neither > nor == the b-th value
        raise ValueError("sigma contains NaN or Inf")
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


#: A momentum direction d = w - w_prev with max |d| at most this times max |w| is rounding.
_MOMENTUM_NOISE = 2.0**-40


def solve_iht(
    p: SparseProblem, iters: int, progress: bool = False, prox: str = "paper"
) -> SolverResult:
    """Alg. 2: gradient step with exact line search, the top-b proximal step (:func:`iht_threshold`
    with ``rule=prox``), De-bias, clamp, and momentum with a line-searched step. On CUDA the top-b
    step reads ``s`` and ``σ`` rounded to float32 (its kernel's input); the rest is float64.

    From ``w = z = 0``, each iteration: ``s = z - μ ∇f1(z)`` (μ by
    :meth:`SparseProblem.line_search`); ``(S, w) =`` the top-b step of ``s``; one De-bias over
    ``S``; ``w`` clamped at 0; then ``z = w - τ d`` for ``d = w - w_prev``, τ line-searched along
    ``d`` (``z = w`` where ``d`` is rounding, ``max |d| <= 2^-40 max |w|``: not in the paper, whose
    line search then divides rounding by rounding).

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
    >>> p = SparseProblem(DensePhi(G, 1), G.sum(1) / 4, sigma, b=1, alpha=0.1, beta=0.0)
    >>> res = solve_iht(p, 3, prox="exact")
    >>> res.selected.tolist(), res.weights.tolist(), [round(f, 6) for f in res.objective]
    ([2], [0.0, 0.0, 0.5, 0.0], [-0.001, -0.001, -0.001])
    >>> solve_iht(p, 3).selected.tolist()  # the paper's score: -α σ_j² for every s_j >= 0
    [3]
    """
    import torch
    from tqdm.auto import tqdm

    from .sparse import IHT_RULES  # (sparse imports this module: a late import, no cycle)

    prox = check_choice(prox, "prox", IHT_RULES)
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
        if not bool(torch.isfinite(s_arg).all()):  # the top-b kernels would name their argument
            raise ValueError("the IHT score is NaN or Inf (an overflow upstream)")
        S, w_new = _iht_torch(s_arg, sigma_arg, p.b, p.alpha, prox)
        w = w_new.to(torch.float64)
        w, r_w = p.debias(w, S)
        if bool((w < 0).any()):
            w = w.clamp_min(0)
            r_w = p.residual(w)
        d = w - w_prev
        if float(d.abs().max()) <= _MOMENTUM_NOISE * float(w.abs().max()):
            # a stalled iteration: d is rounding, and its line search (a ratio of two rounding
            # errors) gave τ ~ 1e15 and a step |τ d| of order 1 pointing anywhere
            z, r_z = w, r_w
        else:
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
    from .sparse import iht_threshold

    return iht_threshold(s.contiguous(), sigma.contiguous(), b, alpha, rule=rule)


def _power_of_two_towards_one(peak: float) -> float:
    """The power of two (at most 2^1000, for a subnormal ``peak``) that brings ``peak`` to
    [0.5, 1): exact scaling."""
    return math.ldexp(1.0, min(-math.frexp(peak)[1], 1000))
