"""Bilevel coreset selection (Borsos, Tagliasacchi & Krause, ICASSP 2021): the math.

Semi-supervised batch active learning via bilevel optimisation. The batch ``B`` is the set of pool
points that, with their (pseudo-)labels, best *summarise* the labeled set plus the pseudo-labeled
pool for a proxy model (eq. 1, 3):

    min_{B ⊂ pool, |B| = b}  G(W*) = Σ_{i ∈ L} ℓ(h_W*(x_i), y_i) + Σ_{x ∈ pool} ℓ(h_W*(x), ỹ_x)
    s.t.  W* = argmin_W F(B, W) = Σ_{i ∈ L} ℓ(h_W(x_i), y_i) + Σ_{x ∈ B} ℓ(h_W(x), ỹ_x) + λ |W|²

with ``h_W(x) = softmax(W z_x)``, ``z_x`` the Nyström features of a neural tangent kernel and ``ℓ``
the cross-entropy with soft targets. Greedy forward selection (eq. 2, Alg. 1) adds, one at a time,

    x* = argmax_{x ∈ pool \\ B'}  ∇_W ℓ(h_W(x), ỹ_x)ᵀ  H⁻¹  ∇_W G(W),   H = ∂²F(B', W) / ∂W²,

at ``W = W*(B')``, then re-solves the inner problem (warm-started).

Why eq. 2 (implicit function theorem): give a candidate ``x`` weight ε in the inner objective,
``F_ε = F + ε ℓ_x``. Its minimiser satisfies ``∇F(W_ε) + ε ∇ℓ_x(W_ε) = 0``; differentiating at ε = 0
gives ``dW*/dε = -H⁻¹ ∇ℓ_x``, so ``dG/dε = ∇Gᵀ dW*/dε = -∇ℓ_xᵀ H⁻¹ ∇G``. The candidate whose added
weight *decreases* the upper objective fastest has the *largest* ``∇ℓ_xᵀ H⁻¹ ∇G``: the arg-max of
eq. 2. A positive rescaling of ``G`` (a mean instead of the paper's sum) does not change the pick.

Everything here is rank one per sample: ``∇_W ℓ(h_W(x), t) = (p_x - t) ⊗ z_x`` (a C × m' matrix),
so the score of every candidate is ``(p_x - ỹ_x)ᵀ V z_x`` with ``V = H⁻¹ ∇G``, a row-wise product
(:meth:`fastal.sparse.FactoredPhi.adjoint`, the C++ factored kernel on the CPU): no ``n × C·m'``
per-sample gradient matrix is ever formed. ``W`` is stored as a ``(C, m')`` matrix; flattened,
entry ``(c, k)`` is coordinate ``c·m' + k`` (the layout of :class:`fastal.GradientEmbedding`).

Arrays: numpy, torch (CPU or CUDA) or cupy; the big pool passes run in torch on the input's device
(zero-copy for numpy and cupy) and results come back in the input's framework.

Modules: :mod:`.kernels` (the NTK kernels and Nyström features), :mod:`.inner` (the inner
problem and its solvers), :mod:`.outer` (``H⁻¹ ∇G`` and the scores of eq. 2) and :mod:`.greedy`
(the driver, :func:`bilevel_select`); their public names are importable from here.
"""

from .greedy import BilevelResult, bilevel_select, empty_diagnostics, one_hot, resolve_solver
from .inner import CGBreakdown, conjugate_gradient, inner_hvp, inner_objective, solve_inner
from .kernels import Nystrom, linear_ntk, make_kernel, nystrom_features, relu_ntk
from .outer import candidate_scores, inverse_hvp

__all__ = [
    "BilevelResult",
    "CGBreakdown",
    "Nystrom",
    "bilevel_select",
    "candidate_scores",
    "conjugate_gradient",
    "empty_diagnostics",
    "inner_hvp",
    "inner_objective",
    "inverse_hvp",
    "linear_ntk",
    "make_kernel",
    "nystrom_features",
    "one_hot",
    "relu_ntk",
    "resolve_solver",
    "solve_inner",
]
