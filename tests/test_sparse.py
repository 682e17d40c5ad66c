"""Sparse Approximation (Shen et al.): the SparseApprox strategy against the float64 references
of :mod:`reference`.

- The problem (eq. 15): the factored ``Φ`` (eq. 14) and the Bayesian ``Φ`` (eq. 13) against the
  materialised references, through the internal problem builders and through end results: the
  selection, weights and objective trace of ``SparseApprox`` equal :func:`reference.greedy_ref` /
  :func:`reference.iht_ref` on the reference ``Φ, v, sigma``.
- The safeguard (on by default; an addition required by issue 4): the top-b sigma set with its
  De-bias weights replaces a worse solver result, mirrored by :func:`reference.safeguard_ref`.
- Tiny problems: the gap to :func:`reference.exhaustive_ref` is printed (``pytest -s``); per
  instance and per solver, f is no worse than the top-b sigma set with the same weight rule.

The top-b kernel is tested in ``test_iht_threshold.py``, the label temperature in
``test_sparse_temperature.py``, bad and extreme input in ``test_sparse_inputs.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import to_numpy
from numpy.testing import assert_allclose, assert_array_equal
from reference import (
    debias_ref,
    exhaustive_ref,
    f1_ref,
    grad_f1_ref,
    greedy_ref,
    iht_ref,
    line_search_ref,
    mc_losses_ref,
    objective_ref,
    optimal_weights_ref,
    safeguard_ref,
    softmax_ref,
    sparse_problem_bayesian_ref,
    sparse_problem_factored_ref,
    support_objective_ref,
    top_scores_ref,
    top_sigma_candidate_ref,
    unlabeled_rows,
)

import fastal
import fastal.strategies
from fastal.strategies.sparse_approx import expected_distance

SparseApprox = fastal.strategies.get("sparse_approx")


#: (form, solver) -> (alpha, beta): the spec's defaults (paper Tables 4-5)
DEFAULTS = {
    ("factored", "iht"): (1e-8, 1e-4),
    ("factored", "greedy"): (1e-2, 1e-1),
    ("bayesian", "iht"): (1.0, 1e-3),
    ("bayesian", "greedy"): (2.0, 0.5),
}


#: the UserWarning of a label distribution P equal to the predictions p (Φ = 0: top-b sigma)
P_IS_P = "label distribution P equals the predictions p"


#: float64 end-to-end comparisons: same algorithm, different summation order
W_RTOL, W_ATOL = 1e-8, 1e-11


F_RTOL = 1e-9


# ---------------------------------------------------------------------------------------------
# data


def logits_pool(n: int, C: int, d: int, seed: int, scale: float = 2.0) -> dict:
    rng = np.random.default_rng(seed)
    return {"logits": rng.normal(size=(n, C)) * scale, "features": rng.normal(size=(n, d))}


def mc_probs(m: int, n: int, C: int, seed: int) -> np.ndarray:
    """MC-dropout-like samples: a per-row mean logit plus per-sample noise, softmaxed."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, n, C)) * 2
    z = base + rng.normal(size=(m, n, C)) * 1.5
    return softmax_ref(z.reshape(m * n, C)).reshape(m, n, C)


def losses_pool(m: int, n: int, C: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "losses": rng.gamma(2.0, 1.0, size=(m, n, C)),
        "probs": softmax_ref(rng.normal(size=(n, C))),
    }


def factored_reference(pool: dict, rows, b: int, T: float, bias: bool = False):
    """(Phi, v, sigma) of the unlabeled ``rows`` of a logits pool with label temperature ``T``."""
    z = np.asarray(pool["logits"], dtype=np.float64)[rows]
    H = np.asarray(pool["features"], dtype=np.float64)[rows]
    return sparse_problem_factored_ref(softmax_ref(z), softmax_ref(z / T), H, b, bias=bias)


def bayesian_reference(pool: dict, rows, b: int):
    if "mc_probs" in pool:
        L, P = mc_losses_ref(pool["mc_probs"])
    else:
        L, P = np.asarray(pool["losses"], np.float64), np.asarray(pool["probs"], np.float64)
    return sparse_problem_bayesian_ref(L[:, rows], P[rows], b)


def solve_ref(
    Phi, v, sigma, b, solver, alpha, beta, iters=50, tau=1.0, prox="paper", safeguard=True
):
    """The reference solver's ``(S, w, trace)``; with ``safeguard`` (SparseApprox's default) the
    top-b sigma candidate replaces it when better and the trace gets the returned f
    (:func:`reference.safeguard_ref`)."""
    if solver == "greedy":
        raw = greedy_ref(Phi, v, sigma, b, alpha, beta, tau)
    else:
        raw = iht_ref(Phi, v, sigma, b, alpha, beta, iters, prox)
    if not safeguard:
        return raw
    return safeguard_ref(Phi, v, sigma, b, alpha, beta, raw)[:3]


def assert_valid_selection(
    sel, n: int, b: int, labeled, solver: str, iters: int = 50, safeguard: bool = True
) -> None:
    """b distinct pool indices, none labeled; weights over the unlabeled rows, >= 0, zero off the
    selection, and the selected ones aligned with the indices; the objective trace one float per
    step / iteration (plus the safeguard's entry); every diagnostics key."""
    idx = to_numpy(sel.indices)
    assert idx.dtype == np.int64
    assert idx.shape == (b,)
    assert np.unique(idx).size == b, f"indices not distinct: {idx}"
    assert ((idx >= 0) & (idx < n)).all()
    if labeled is not None:
        assert not np.isin(idx, labeled).any(), "a labeled row was selected"
    diag = sel.diagnostics
    keys = ("weights", "selected_weights", "objective", "temperature", "form", "alpha", "beta",
            "solver", "safeguard", "fallback", "top_sigma_objective")  # fmt: skip
    for key in keys:
        assert key in diag, key
    assert diag["safeguard"] is safeguard
    assert isinstance(diag["fallback"], bool)
    assert diag["fallback"] is False or safeguard
    assert diag["solver"] == solver
    rows = unlabeled_rows(n, labeled)
    w = diag["weights"]
    assert isinstance(w, np.ndarray)
    assert w.dtype == np.float64
    assert w.shape == (rows.size,)
    assert (w >= 0).all()
    off = ~np.isin(rows, idx)
    assert (w[off] == 0).all(), "a weight outside the selection is non-zero"
    sw = diag["selected_weights"]
    assert isinstance(sw, np.ndarray)
    assert sw.dtype == np.float64
    assert_array_equal(sw, w[np.searchsorted(rows, idx)])
    assert isinstance(diag["objective"], list)
    assert all(isinstance(f, float) for f in diag["objective"])
    steps = b if solver == "greedy" else iters
    assert len(diag["objective"]) == steps + safeguard
    if safeguard:
        assert isinstance(diag["top_sigma_objective"], float)
        f, f_top = diag["objective"][-1], diag["top_sigma_objective"]
        tol = 1e-9 * (abs(f) + abs(f_top)) + 1e-15  # the safeguard's margin is 1e-10 relative
        assert f <= f_top + tol, "worse than the top-b sigma candidate"
    else:
        assert diag["top_sigma_objective"] is None


def assert_same_solution(sel, rows, expected, Phi, v, sigma, alpha, beta) -> None:
    """The selection (pool indices, in order), weights and objective trace of ``sel`` equal the
    reference solver's on ``(Phi, v, sigma)``, and the trace ends at f(weights; S)."""
    S, w, trace = expected
    idx = to_numpy(sel.indices)
    assert_array_equal(idx, rows[S])
    got_w = sel.diagnostics["weights"]
    assert_allclose(got_w, w, rtol=W_RTOL, atol=W_ATOL * max(1.0, np.abs(w).max()))
    got_f = np.asarray(sel.diagnostics["objective"])
    assert_allclose(got_f, trace, rtol=F_RTOL, atol=1e-13)
    S_got = np.searchsorted(rows, idx)
    f_last = objective_ref(Phi, v, sigma, alpha, beta, got_w, S_got)
    assert_allclose(got_f[-1], f_last, rtol=F_RTOL, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# the references themselves: LineSearch, De-bias, optimal weights


def _random_problem(seed: int, m: int = 7, n: int = 9):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, n)), rng.normal(size=m), np.abs(rng.normal(size=n))


@pytest.mark.parametrize("beta", [0.0, 1e-3, 0.5])
@pytest.mark.parametrize("seed", range(4))
def test_line_search_is_the_exact_minimiser(seed, beta):
    """f1(w - μu) <= f1(w - μ'u) on a fine grid of μ' around the LineSearch μ (Alg. 4), and the
    implementation's LineSearch (SparseProblem.line_search) gives the same μ."""
    from fastal.sparse import DensePhi, SparseProblem

    Phi, v, sigma = _random_problem(seed)
    rng = np.random.default_rng(seed + 100)
    b = 3
    problem = SparseProblem(
        DensePhi(torch.from_numpy(Phi * b), b),
        torch.from_numpy(v),
        torch.from_numpy(sigma),
        b,
        0.0,
        beta,
    )
    for _ in range(5):
        w, u = np.abs(rng.normal(size=9)), rng.normal(size=9)
        mu = line_search_ref(Phi, v, beta, u, w)
        f_mu = f1_ref(Phi, v, beta, w - mu * u)
        span = max(1.0, abs(mu))
        for mu2 in mu + span * np.linspace(-1, 1, 2001):
            assert f_mu <= f1_ref(Phi, v, beta, w - mu2 * u) + 1e-12 * abs(f_mu)
        got = problem.line_search(torch.from_numpy(u), torch.from_numpy(w))
        assert_allclose(got, mu, rtol=1e-12, atol=1e-14)
    # a zero direction: the denominator is 0 -> 0
    assert line_search_ref(Phi, v, beta, np.zeros(9), np.ones(9)) == 0.0
    assert (
        problem.line_search(torch.zeros(9, dtype=torch.float64), torch.ones(9, dtype=torch.float64))
        == 0.0
    )


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_grad_f1_matches_the_reference_gradient(beta):
    """SparseProblem.grad_f1 is ∇f1 = 2 Φᵀ(Φw - v) + 2β(w - 1) at a w with non-zero entries
    (float64 reference, and a central difference of f1)."""
    from fastal.sparse import DensePhi, SparseProblem

    Phi, v, sigma = _random_problem(3)
    b = 3
    problem = SparseProblem(
        DensePhi(torch.from_numpy(Phi * b), b), torch.from_numpy(v), torch.from_numpy(sigma),
        b, 0.0, beta,
    )  # fmt: skip
    w = np.abs(np.random.default_rng(4).normal(size=9))
    got = problem.grad_f1(torch.from_numpy(w)).numpy()
    assert_allclose(got, grad_f1_ref(Phi, v, beta, w), rtol=1e-12, atol=1e-12)
    h = 1e-6

    def f1(x):
        return problem.f1(torch.from_numpy(x))

    fd = [(f1(w + h * e) - f1(w - h * e)) / (2 * h) for e in np.eye(9)]
    assert_allclose(got, fd, rtol=1e-6, atol=1e-6)


def test_debias_moves_only_the_selected_set_and_never_increases_f1():
    from fastal.sparse import DensePhi, SparseProblem

    Phi, v, sigma = _random_problem(7)
    problem = SparseProblem(
        DensePhi(torch.from_numpy(Phi * 2), 2),
        torch.from_numpy(v),
        torch.from_numpy(sigma),
        2,
        0.3,
        0.1,
    )
    w = np.zeros(9)
    w[[2, 5, 6]] = [0.5, 1.5, 0.0]  # index 6 selected at weight 0
    S = np.array([2, 5, 6])
    out = debias_ref(Phi, v, 0.1, w, S)
    assert (out[np.setdiff1d(np.arange(9), S)] == 0).all()
    assert f1_ref(Phi, v, 0.1, out) <= f1_ref(Phi, v, 0.1, w)
    got = problem.debias(torch.from_numpy(w), torch.from_numpy(S))
    got = (got[0] if isinstance(got, tuple) else got).numpy()  # (w, residual) or w
    assert_allclose(got, out, rtol=1e-12, atol=1e-14)
    assert_allclose(
        problem.objective(torch.from_numpy(out), torch.from_numpy(S)),
        objective_ref(Phi, v, sigma, 0.3, 0.1, out, S),
        rtol=1e-12,
    )


def test_nnls_fallback_matches_scipy():
    """The reference's own Lawson-Hanson (used without scipy) agrees with scipy's NNLS."""
    pytest.importorskip("scipy")
    from reference import _lawson_hanson, nnls_ref

    rng = np.random.default_rng(0)
    for _ in range(40):
        A, y = rng.normal(size=(9, 4)), rng.normal(size=9)
        assert_allclose(_lawson_hanson(A, y), nnls_ref(A, y), rtol=1e-9, atol=1e-12)


def test_optimal_weights_reference_is_optimal():
    """The NNLS weights are feasible and no random non-negative w on the same support is better."""
    Phi, v, _ = _random_problem(11)
    S = np.array([0, 4, 7])
    w = optimal_weights_ref(Phi, v, 0.05, S)
    assert (w >= 0).all()
    assert (np.delete(w, S) == 0).all()
    f = f1_ref(Phi, v, 0.05, w)
    rng = np.random.default_rng(0)
    for _ in range(200):
        w2 = np.zeros(9)
        w2[S] = np.maximum(w[S] + rng.normal(size=3) * 0.1, 0)
        assert f <= f1_ref(Phi, v, 0.05, w2) + 1e-12


# ---------------------------------------------------------------------------------------------
# the factored problem (eq. 14) against the materialised reference


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("labeled", [None, [1, 4, 22]])
def test_factored_problem_matches_the_materialised_reference(labeled, bias):
    """Φu, Φᵀ R, v and sigma of the implementation's factored problem equal the reference's dense
    Φ = (1/b) [a_j ⊗ h_j]_j (both the sparse-u and the dense-u path of Φu)."""
    n, C, d, b, T = 40, 4, 3, 5, 2.5
    pool = logits_pool(n, C, d, seed=1)
    rows = unlabeled_rows(n, labeled)
    strat = SparseApprox(temperature=T, bias=bias)
    phi, v, sigma, T_got = strat._factored_problem(pool, torch.from_numpy(rows), b)
    assert T_got == T
    Phi, v_ref, sigma_ref = factored_reference(pool, rows, b, T, bias=bias)
    dh = d + bias
    assert_allclose(to_numpy(v).ravel(), v_ref, rtol=1e-12, atol=1e-15)
    assert_allclose(to_numpy(sigma), sigma_ref, rtol=1e-12, atol=0)
    rng = np.random.default_rng(2)
    for nnz in (2, rows.size):  # few non-zeros (column subset) and dense
        u = np.zeros(rows.size)
        u[rng.choice(rows.size, nnz, replace=False)] = rng.normal(size=nnz)
        got = to_numpy(phi.apply(torch.from_numpy(u)))
        assert got.shape == (C, dh)
        assert_allclose(got.ravel(), Phi @ u, rtol=1e-12, atol=1e-15)
    R = rng.normal(size=(C, dh))
    assert_allclose(
        to_numpy(phi.adjoint(torch.from_numpy(R))), Phi.T @ R.ravel(), rtol=1e-12, atol=1e-15
    )


def test_factored_sigma_on_confident_rows():
    """sigma_j = (1/n_u)|h_j| Σ_y P_jy |P_j - e_y| where P_j is close to a one-hot: |P_j - e_y| of
    the likely class is tiny, and must be computed from the differences (error ~ ulp(1) on the scale
    |h|/n_u), not as sqrt(|P|² - 2 P_y + 1), which cancels (error ~ sqrt(ulp(1)) of the scale,
    up to 46 % of sigma_j on these rows)."""
    n = 6
    z = np.array([[30.0, 0, 0], [0, 25.0, 0], [18.0, 0, -3], [1, 2, 3], [40, 39, 0], [0, 0, 12.0]])
    H = np.ones((n, 2))
    pool = {"logits": z, "features": H}
    rows = np.arange(n)
    with pytest.warns(UserWarning, match=P_IS_P):
        _, _, sigma, _ = SparseApprox(temperature=1.0)._factored_problem(
            pool, torch.from_numpy(rows), 2
        )
    _, _, sigma_ref = factored_reference(pool, rows, 2, 1.0)
    scale = np.sqrt(2.0) / n  # |h| / n_u: the size of sigma for an uncertain row
    assert_allclose(to_numpy(sigma), sigma_ref, rtol=1e-6, atol=1e-15 * scale)


def test_expected_distance_keeps_confident_rows():
    """Rows [1, t] and [1, t/2, t/2] (t = 2^-60; the 1 is 1 - t rounded): Σ_y P_y |P - e_y| with
    1 - P_top read as the others' sum, t. Row 1: 1·√(t² + t²) + t·√(1 + 1) = 2√2 t. Row 2:
    √(t² + t²/2) + 2 · (t/2) · √(1 + 1 + ...) = (√1.5 + √2) t to float64 rounding."""
    t = 2.0**-60
    P = torch.tensor([[1.0, t, 0.0], [1.0, t / 2, t / 2]], dtype=torch.float64)
    got = expected_distance(P).numpy()
    assert_allclose(got, [2 * math.sqrt(2) * t, (math.sqrt(1.5) + math.sqrt(2)) * t], rtol=1e-12)


@pytest.mark.parametrize("labeled", [None, [0, 3]])
@pytest.mark.parametrize("source", ["mc_probs", "losses"])
def test_bayesian_problem_matches_reference(source, labeled):
    from fastal.strategies.sparse_approx import _bayesian_problem

    m, n, C, b = 5, 12, 3, 4
    pool = (
        {"mc_probs": mc_probs(m, n, C, seed=4)} if source == "mc_probs" else losses_pool(m, n, C, 4)
    )
    rows = unlabeled_rows(n, labeled)
    phi, v, sigma = _bayesian_problem(pool, torch.from_numpy(rows), b)
    Phi, v_ref, sigma_ref = bayesian_reference(pool, rows, b)
    assert_allclose(to_numpy(v), v_ref, rtol=1e-12, atol=1e-15)
    assert_allclose(to_numpy(sigma), sigma_ref, rtol=1e-12, atol=0)
    u = np.random.default_rng(0).normal(size=rows.size)
    assert_allclose(to_numpy(phi.apply(torch.from_numpy(u))), Phi @ u, rtol=1e-12, atol=1e-15)
    r = np.random.default_rng(1).normal(size=m)
    assert_allclose(to_numpy(phi.adjoint(torch.from_numpy(r))), Phi.T @ r, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# SparseApprox end to end against the reference solvers


AB = [(None, None), (1.0, 1e-3), (1e-2, 1e-1), (0.0, 1e-2)]


AB_IDS = ["defaults", "a1-b1e-3", "a1e-2-b1e-1", "a0-b1e-2"]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("labeled", [None, [2, 5, 6, 30]])
@pytest.mark.parametrize(("alpha", "beta"), AB, ids=AB_IDS)
@pytest.mark.parametrize("solver", ["greedy", "iht"])
def test_factored_selection_matches_reference(solver, alpha, beta, labeled, bias):
    n, C, d, b, T = 36, 4, 3, 6, 2.0
    pool = logits_pool(n, C, d, seed=5)
    iters = 30
    sel = SparseApprox(
        solver=solver, alpha=alpha, beta=beta, temperature=T, bias=bias, iters=iters
    ).select(pool, b, labeled)
    assert_valid_selection(sel, n, b, labeled, solver, iters)
    diag = sel.diagnostics
    a, be = DEFAULTS[("factored", solver)] if alpha is None else (alpha, beta)
    assert diag["form"] == "factored"
    assert (diag["alpha"], diag["beta"]) == (a, be)
    assert diag["temperature"] == T
    rows = unlabeled_rows(n, labeled)
    Phi, v, sigma = factored_reference(pool, rows, b, T, bias=bias)
    expected = solve_ref(Phi, v, sigma, b, solver, a, be, iters=iters)
    assert_same_solution(sel, rows, expected, Phi, v, sigma, a, be)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("solver", ["greedy", "iht"])
def test_factored_selection_matches_reference_random(solver, seed):
    """More shapes: pools of 20-80 rows, 2-6 classes, budgets 1 to n_u, temperatures < and > 1."""
    rng = np.random.default_rng(seed)
    n, C, d = int(rng.integers(20, 80)), int(rng.integers(2, 7)), int(rng.integers(1, 6))
    T = float(rng.choice([0.5, 3.0]))
    pool = logits_pool(n, C, d, seed=seed + 50)
    labeled = np.sort(rng.choice(n, size=int(rng.integers(0, 5)), replace=False))
    rows = unlabeled_rows(n, labeled)
    for b in (1, int(rng.integers(2, rows.size)), rows.size):
        alpha, beta = 0.5, 1e-3
        sel = SparseApprox(solver=solver, alpha=alpha, beta=beta, temperature=T, iters=20).select(
            pool, b, labeled
        )
        assert_valid_selection(sel, n, b, labeled, solver, 20)
        Phi, v, sigma = factored_reference(pool, rows, b, T)
        expected = solve_ref(Phi, v, sigma, b, solver, alpha, beta, iters=20)
        assert_same_solution(sel, rows, expected, Phi, v, sigma, alpha, beta)


@pytest.mark.parametrize("solver", ["greedy", "iht"])
def test_zero_denominators_keep_zero_weight_indices_selected(solver):
    """T = 1 and β = 0: Φ = 0 and every LineSearch denominator is 0 -> μ = 0, w stays 0. The
    selection is still b indices (top sigma), each at weight 0 (a selected index whose weight is 0
    stays selected), and f = -alpha Σ_S sigma²."""
    n, b, alpha = 20, 3, 2.0
    pool = logits_pool(n, 3, 2, seed=10)
    rows = np.arange(n)
    _, _, sigma = factored_reference(pool, rows, b, 1.0)
    with pytest.warns(UserWarning, match=P_IS_P):
        sel = SparseApprox(solver=solver, alpha=alpha, beta=0.0, temperature=1.0).select(pool, b)
    top = top_scores_ref(sigma, b)
    assert_array_equal(to_numpy(sel.indices), top)
    assert_array_equal(sel.diagnostics["weights"], np.zeros(n))
    assert np.isfinite(sel.diagnostics["objective"]).all()
    assert_allclose(sel.diagnostics["objective"][-1], -alpha * np.sum(sigma[top] ** 2), rtol=1e-12)


@pytest.mark.parametrize("solver", ["greedy", "iht"])
def test_alpha_zero_ties_go_to_the_lowest_index(solver):
    """T = 1, alpha = 0: every candidate scores the same (greedy: -2βτ; IHT: ½[-1]₊² = 0), so the
    selection is the first b unlabeled rows in index order."""
    n, b = 15, 5
    pool = logits_pool(n, 3, 2, seed=12)
    labeled = [0, 2]
    strat = SparseApprox(solver=solver, alpha=0.0, beta=0.1, temperature=1.0)
    with pytest.warns(UserWarning, match=P_IS_P):
        sel = strat.select(pool, b, labeled)
    assert_array_equal(to_numpy(sel.indices), unlabeled_rows(n, labeled)[:b])


@pytest.mark.parametrize("labeled", [None, [1, 7]])
@pytest.mark.parametrize(("alpha", "beta"), [(None, None), (0.3, 1e-2)], ids=["defaults", "a03"])
@pytest.mark.parametrize("solver", ["greedy", "iht"])
@pytest.mark.parametrize("source", ["mc_probs", "losses"])
def test_bayesian_selection_matches_reference(source, solver, alpha, beta, labeled):
    m, n, C, b = 8, 30, 4, 5
    pool = (
        {"mc_probs": mc_probs(m, n, C, seed=15)}
        if source == "mc_probs"
        else losses_pool(m, n, C, 15)
    )
    sel = SparseApprox(solver=solver, alpha=alpha, beta=beta).select(pool, b, labeled)
    assert_valid_selection(sel, n, b, labeled, solver)
    diag = sel.diagnostics
    a, be = DEFAULTS[("bayesian", solver)] if alpha is None else (alpha, beta)
    assert diag["form"] == "bayesian"
    assert (diag["alpha"], diag["beta"]) == (a, be)
    assert diag["temperature"] is None
    rows = unlabeled_rows(n, labeled)
    Phi, v, sigma = bayesian_reference(pool, rows, b)
    expected = solve_ref(Phi, v, sigma, b, solver, a, be)
    assert_same_solution(sel, rows, expected, Phi, v, sigma, a, be)


def test_bayesian_mc_probs_equals_losses_form():
    M = mc_probs(6, 25, 3, seed=16)
    L, P = mc_losses_ref(M)
    for solver in ("greedy", "iht"):
        a = SparseApprox(solver=solver).select({"mc_probs": M}, 4, [5])
        c = SparseApprox(solver=solver).select({"losses": L, "probs": P}, 4, [5])
        assert_array_equal(to_numpy(a.indices), to_numpy(c.indices))
        assert_allclose(a.diagnostics["weights"], c.diagnostics["weights"], rtol=1e-9, atol=1e-12)


def test_mc_probs_zeros_are_clipped():
    """A probability of exactly 0 gives the loss -log(1e-12), not inf."""
    M = mc_probs(4, 10, 3, seed=17)
    M[:, 2, 1] = 0.0
    M[:, 2] /= M[:, 2].sum(-1, keepdims=True)
    sel = SparseApprox(solver="greedy").select({"mc_probs": M}, 3)
    Phi, v, sigma = bayesian_reference({"mc_probs": M}, np.arange(10), 3)
    a, be = DEFAULTS[("bayesian", "greedy")]
    assert_same_solution(
        sel, np.arange(10), solve_ref(Phi, v, sigma, 3, "greedy", a, be), Phi, v, sigma, a, be
    )


@pytest.mark.parametrize("solver", ["greedy", "iht"])
def test_defaults_and_registry(solver):
    assert fastal.strategies.get("sparse_approx") is SparseApprox
    assert "sparse_approx" in fastal.strategies.available()
    assert SparseApprox.name == "sparse_approx"
    strat = SparseApprox(solver=solver)
    assert strat.alpha is None
    assert strat.beta is None
    assert strat.iters == 50
    assert strat.tau == 1.0
    assert strat.temperature == "auto"
    assert strat.safeguard is True
    with pytest.warns(UserWarning, match=P_IS_P):  # "auto" without labeled logits: T = 1
        sel = strat.select(logits_pool(20, 3, 2, seed=0), 3)
    assert (sel.diagnostics["alpha"], sel.diagnostics["beta"]) == DEFAULTS[("factored", solver)]
    sel = strat.select({"mc_probs": mc_probs(4, 20, 3, seed=0)}, 3)
    assert (sel.diagnostics["alpha"], sel.diagnostics["beta"]) == DEFAULTS[("bayesian", solver)]
    # alpha given, beta left to the default (and vice versa)
    sel = SparseApprox(solver=solver, alpha=0.25, temperature=2.0).select(
        logits_pool(20, 3, 2, seed=0), 3
    )
    assert (sel.diagnostics["alpha"], sel.diagnostics["beta"]) == (
        0.25,
        DEFAULTS[("factored", solver)][1],
    )


#: (form, solver, dataset) -> (alpha, beta), read off the paper's Tables 4 (Bayesian) and 5
PAPER_TABLES = {
    ("bayesian", "iht", "fashion_mnist"): (1.0, 1e-3),
    ("bayesian", "greedy", "fashion_mnist"): (2.0, 0.5),
    ("bayesian", "iht", "cifar10"): (1.0, 1e-6),
    ("bayesian", "greedy", "cifar10"): (2.0, 1.0),
    ("bayesian", "iht", "cifar100"): (1.0, 1e-6),
    ("bayesian", "greedy", "cifar100"): (1.0, 0.5),
    ("factored", "iht", "mnist"): (1e-8, 1e-4),
    ("factored", "greedy", "mnist"): (1e-8, 1e-1),
    ("factored", "iht", "svhn"): (1e-8, 1e-4),
    ("factored", "greedy", "svhn"): (1e-1, 1e-1),
    ("factored", "iht", "cifar10"): (1e-8, 1e-6),
    ("factored", "greedy", "cifar10"): (1e-2, 1e-1),
}


def test_paper_settings_hold_every_table_row_and_the_defaults_are_rows():
    """All twelve rows by name, with the schedules of Appendix G; the defaults are four of them."""
    from fastal.strategies import PAPER_SETTINGS
    from fastal.strategies.sparse_settings import DEFAULT_SETTING

    assert {k: (r.alpha, r.beta) for k, r in PAPER_SETTINGS.items()} == PAPER_TABLES
    for (form, solver), dataset in DEFAULT_SETTING.items():
        assert PAPER_TABLES[(form, solver, dataset)] == DEFAULTS[(form, solver)]
    # Appendix G: epochs, batch size, lr, weight decay, optimizer, momentum; seed, query size,
    # rounds, random projections (G.1 only); the same for both solvers of a dataset
    schedules = {
        ("bayesian", "fashion_mnist"): (200, 256, 1e-3, 5e-4, "adam", None, 1000, 1000, 9, 100),
        ("bayesian", "cifar10"): (200, 256, 1e-3, 5e-4, "adam", None, 3000, 5000, 4, 2000),
        ("bayesian", "cifar100"): (200, 256, 1e-3, 5e-4, "adam", None, 10000, 5000, 4, 2000),
        ("factored", "mnist"): (150, 32, 1e-2, 5e-4, "sgd", 0.9, 40, 40, 15, None),
        ("factored", "svhn"): (150, 128, 1e-2, 5e-4, "sgd", 0.9, 1000, 1000, 5, None),
        ("factored", "cifar10"): (100, 128, 1e-3, 5e-4, "sgd", 0.9, 3000, 3000, 5, None),
    }
    for (form, solver, dataset), r in PAPER_SETTINGS.items():
        assert (r.form, r.solver, r.dataset) == (form, solver, dataset)
        got = (r.epochs, r.batch_size, r.lr, r.weight_decay, r.optimizer, r.momentum,
               r.seed_size, r.query_size, r.rounds, r.projections)  # fmt: skip
        assert got == schedules[(form, dataset)], (form, solver, dataset)


@pytest.mark.parametrize("solver", ["iht", "greedy"])
def test_setting_selects_like_its_alpha_and_beta_given_by_hand(solver):
    """setting= is only a name for (alpha, beta): the same picks, weights and trace; explicit
    alpha / beta still win over it."""
    pool = logits_pool(60, 4, 5, seed=3)
    for dataset in ("mnist", "svhn", "cifar10"):
        a, be = PAPER_TABLES[("factored", solver, dataset)]
        named = SparseApprox(solver=solver, setting=dataset, temperature=2.0).select(pool, 6)
        by_hand = SparseApprox(solver=solver, alpha=a, beta=be, temperature=2.0).select(pool, 6)
        np.testing.assert_array_equal(named.indices, by_hand.indices)
        np.testing.assert_array_equal(named.diagnostics["weights"], by_hand.diagnostics["weights"])
        assert named.diagnostics["objective"] == by_hand.diagnostics["objective"]
        assert named.diagnostics["setting"] == dataset
        assert (named.diagnostics["alpha"], named.diagnostics["beta"]) == (a, be)
    mc = {"mc_probs": mc_probs(4, 30, 3, seed=2)}
    sel = SparseApprox(solver=solver, setting="cifar100", beta=0.25).select(mc, 3)
    assert sel.diagnostics["setting"] == "cifar100"
    assert (sel.diagnostics["alpha"], sel.diagnostics["beta"]) == (
        PAPER_TABLES[("bayesian", solver, "cifar100")][0], 0.25,
    )  # fmt: skip
    a, be = PAPER_TABLES[("bayesian", solver, "cifar10")]  # β = 1e-6 / 1: not the defaults
    named = SparseApprox(solver=solver, setting="cifar10").select(mc, 3)
    by_hand = SparseApprox(solver=solver, alpha=a, beta=be).select(mc, 3)
    np.testing.assert_array_equal(named.indices, by_hand.indices)
    assert named.diagnostics["objective"] == by_hand.diagnostics["objective"]
    assert (named.diagnostics["alpha"], named.diagnostics["beta"]) == (a, be)


def test_setting_errors_name_the_argument_and_the_table():
    with pytest.raises(ValueError, match="setting must be None or one of"):
        SparseApprox(setting="imagenet")
    with pytest.raises(ValueError, match="setting must be None or one of"):
        SparseApprox(setting=3)
    # cifar100 is a Table 4 (Bayesian) row only; svhn a Table 5 row only
    with pytest.raises(ValueError, match=r"setting='cifar100'.*Table 5"):
        SparseApprox(setting="cifar100", temperature=2.0).select(logits_pool(20, 3, 2, seed=0), 3)
    with pytest.raises(ValueError, match=r"setting='svhn'.*Table 4"):
        SparseApprox(setting="svhn").select({"mc_probs": mc_probs(4, 20, 3, seed=0)}, 3)


def test_iht_default_iterations_and_greedy_trace_length():
    """One entry per IHT iteration / greedy pick, plus the safeguard's (the f returned)."""
    pool = logits_pool(30, 3, 2, seed=1)
    for kwargs, steps in (
        ({"solver": "iht"}, 50),
        ({"solver": "iht", "iters": 1}, 1),
        ({"solver": "greedy"}, 4),
    ):
        for safeguard in (True, False):
            strat = SparseApprox(temperature=2.0, safeguard=safeguard, **kwargs)
            trace = strat.select(pool, 4).diagnostics["objective"]
            assert len(trace) == steps + safeguard, (kwargs, safeguard)


def test_greedy_tau_is_used():
    """τ scales the gradient against alpha sigma²: each τ gives the reference's selection."""
    n, b, T = 30, 5, 2.0
    pool = logits_pool(n, 3, 3, seed=18)
    rows = np.arange(n)
    Phi, v, sigma = factored_reference(pool, rows, b, T)
    for tau in (1e-3, 1.0, 50.0):
        sel = SparseApprox(solver="greedy", alpha=1.0, beta=1e-3, tau=tau, temperature=T).select(
            pool, b
        )
        expected = solve_ref(Phi, v, sigma, b, "greedy", 1.0, 1e-3, tau=tau)
        assert_same_solution(sel, rows, expected, Phi, v, sigma, 1.0, 1e-3)


@pytest.mark.parametrize("solver", ["greedy", "iht"])
def test_torch_pool_and_determinism(solver, capsys):
    pool = logits_pool(40, 4, 3, seed=19)
    strat = SparseApprox(solver=solver, temperature=2.0)
    a = strat.select(pool, 6, [0, 9])
    again = strat.select(pool, 6, [0, 9], seed=123)  # no randomness: the seed changes nothing
    assert_array_equal(to_numpy(again.indices), to_numpy(a.indices))
    assert_array_equal(again.diagnostics["weights"], a.diagnostics["weights"])
    tpool = {k: torch.from_numpy(v) for k, v in pool.items()}
    t = strat.select(tpool, 6, torch.tensor([0, 9]))
    assert_array_equal(to_numpy(t.indices), to_numpy(a.indices))
    assert_allclose(t.diagnostics["weights"], a.diagnostics["weights"], rtol=1e-12, atol=1e-15)
    p = SparseApprox(solver=solver, temperature=2.0, progress=True).select(pool, 6, [0, 9])
    capsys.readouterr()
    assert_array_equal(to_numpy(p.indices), to_numpy(a.indices))


@pytest.mark.parametrize("solver", ["greedy", "iht"])
def test_float32_pool_gives_a_valid_selection(solver):
    pool = {k: v.astype(np.float32) for k, v in logits_pool(60, 5, 4, seed=20).items()}
    sel = SparseApprox(solver=solver, temperature=2.0, iters=10).select(pool, 7, [3])
    assert_valid_selection(sel, 60, 7, [3], solver, 10)
    assert np.isfinite(sel.diagnostics["objective"]).all()


@pytest.mark.parametrize("solver", ["greedy", "iht"])
def test_weights_index_the_unlabeled_rows_and_selected_weights_the_indices(solver):
    """diagnostics["weights"][k] belongs to the k-th unlabeled row in ascending pool order;
    diagnostics["selected_weights"][i] to indices[i] (labeled rows spread through the pool)."""
    n, b = 30, 6
    labeled = [0, 4, 5, 17, 29]
    pool = logits_pool(n, 3, 3, seed=22)
    strat = SparseApprox(solver=solver, temperature=2.0, alpha=0.5, beta=1e-3)
    sel = strat.select(pool, b, labeled)
    rows = unlabeled_rows(n, labeled)
    w, sw = sel.diagnostics["weights"], sel.diagnostics["selected_weights"]
    idx = to_numpy(sel.indices)
    assert w.shape == (n - len(labeled),)
    assert sw.shape == (b,)
    by_pool_row = dict(zip(rows.tolist(), w.tolist(), strict=True))
    assert sw.tolist() == [by_pool_row[i] for i in idx.tolist()]
    assert (sw > 0).any()
    assert sum(by_pool_row[i] for i in set(rows.tolist()) - set(idx.tolist())) == 0
    empty = SparseApprox(solver=solver, temperature=2.0).select(pool, 0, labeled)
    assert empty.diagnostics["selected_weights"].shape == (0,)
    assert empty.diagnostics["weights"].shape == (rows.size,)


def test_budget_equal_to_the_unlabeled_pool_and_zero():
    pool = logits_pool(12, 3, 2, seed=21)
    labeled = [4, 5]
    for solver in ("greedy", "iht"):
        sel = SparseApprox(solver=solver, temperature=2.0, iters=5).select(pool, 10, labeled)
        assert_valid_selection(sel, 12, 10, labeled, solver, 5)
        assert set(to_numpy(sel.indices).tolist()) == set(unlabeled_rows(12, labeled).tolist())
        empty = SparseApprox(solver=solver, temperature=2.0).select(pool, 0, labeled)
        assert to_numpy(empty.indices).shape == (0,)


# ---------------------------------------------------------------------------------------------
# tiny problems: the gap to the exhaustive optimum


TINY = [(8, 1), (10, 2), (9, 3), (12, 4)]


def tiny_problem(form: str, n: int, b: int, seed: int):
    """(pool, strategy kwargs, Phi, v, sigma) of a tiny factored (T = 2) or Bayesian problem."""
    if form == "factored":
        pool = logits_pool(n, 3, 2, seed=100 + seed)
        return (pool, {"temperature": 2.0}, *factored_reference(pool, np.arange(n), b, 2.0))
    pool = {"mc_probs": mc_probs(6, n, 3, seed=100 + seed)}
    return (pool, {}, *bayesian_reference(pool, np.arange(n), b))


TINY_SOLVERS = ("greedy", "iht", "iht-exact")  # "iht-exact": IHT with prox="exact"


@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 1e-3), (1e-2, 1e-1), (1.0, 1e-3), (2.0, 0.5)])
@pytest.mark.parametrize("form", ["factored", "bayesian"])
def test_tiny_problems_gap_to_exhaustive(form, alpha, beta):
    """For n <= 12, b <= 4: f(greedy), f(IHT) (prox "paper" and "exact") against the best set of b
    with its optimal non-negative weights (NNLS per set). Printed per case (run with -s).

    Asserted per instance and per solver:

    - the exhaustive value is a lower bound (the solvers' w is >= 0 and supported on S);
    - the implementation's selection and objective are the reference algorithm's (with the
      safeguard, as SparseApprox runs by default);
    - the issue's "not worse than selecting the top-b sigma": f(solver) <= f of the top-b sigma set
      with the same weight rule (De-bias from w = 1, clamped at 0), up to the safeguard's 1e-10
      margin. Without the safeguard this fails per instance (measured on these shapes, 10 seeds:
      greedy up to 15/40, IHT "paper" up to 17/40 at alpha = 0, IHT "exact" up to 27/40, that
      last count with its score of before 2026-12-07, which counted σ only where s_j > 0).

    Also printed, not asserted: the gap of the top-b sigma set with its *optimal* (NNLS) weights,
    which the solvers do not always reach."""
    gaps = {name: [] for name in (*TINY_SOLVERS, "top_sigma", "top_sigma_nnls")}
    fallbacks = dict.fromkeys(TINY_SOLVERS, 0)
    for seed in range(5):
        for n, b in TINY:
            pool, pool_args, Phi, v, sigma = tiny_problem(form, n, b, seed)
            _, _, f_opt = exhaustive_ref(Phi, v, sigma, b, alpha, beta)
            _, _, f_top = top_sigma_candidate_ref(Phi, v, sigma, b, alpha, beta)
            f_top_nnls = support_objective_ref(Phi, v, sigma, alpha, beta, top_scores_ref(sigma, b))
            scale = max(1.0, abs(f_opt))
            line = [f"{form} seed={seed} n={n} b={b} a={alpha:g} b={beta:g} f*={f_opt:.6g}"]
            for name in TINY_SOLVERS:
                solver, _, prox = name.partition("-")
                sel = SparseApprox(
                    solver=solver, alpha=alpha, beta=beta, prox=prox or "paper", **pool_args
                ).select(pool, b)
                w = sel.diagnostics["weights"]
                S = to_numpy(sel.indices)
                f = objective_ref(Phi, v, sigma, alpha, beta, w, S)
                assert_allclose(sel.diagnostics["objective"][-1], f, rtol=F_RTOL, atol=1e-13)
                assert_allclose(sel.diagnostics["top_sigma_objective"], f_top, rtol=F_RTOL)
                ref = solve_ref(Phi, v, sigma, b, solver, alpha, beta, prox=prox or "paper")
                assert_array_equal(S, ref[0])
                assert f >= f_opt - 1e-12 * scale, f"{name} below the exhaustive optimum"
                tol = 1e-9 * (abs(f) + abs(f_top)) + 1e-15
                assert f <= f_top + tol, f"{name} worse than the top-b sigma set (seed {seed})"
                fallbacks[name] += sel.diagnostics["fallback"]
                gaps[name].append(f - f_opt)
                mark = " (top-sigma)" if sel.diagnostics["fallback"] else ""
                line.append(f"{name} gap={f - f_opt:.3e}{mark}")
            gaps["top_sigma"].append(f_top - f_opt)
            gaps["top_sigma_nnls"].append(f_top_nnls - f_opt)
            line.append(f"top-sigma gap={f_top - f_opt:.3e} (NNLS {f_top_nnls - f_opt:.3e})")
            print("  ".join(line))
    count = len(gaps["top_sigma"])
    print(
        f"{form} a={alpha:g} b={beta:g} mean gaps over {count}: "
        + " ".join(f"{k} {np.mean(g):.3e}" for k, g in gaps.items())
        + "; safeguard fell back: "
        + " ".join(f"{k} {c}/{count}" for k, c in fallbacks.items())
    )


@pytest.mark.parametrize("solver", TINY_SOLVERS)
def test_safeguard_replaces_a_solver_worse_than_top_sigma(solver):
    """A tiny instance where the solver alone ends above the top-b sigma set: safeguard=False
    returns the raw solver (the reference algorithm, its trace, no fallback); the default returns
    the top-b sigma set in descending sigma order with its De-bias weights, flags the fallback and
    ends the trace at the lower f."""
    solver, _, prox = solver.partition("-")
    prox = prox or "paper"
    # (form, seed, n, b, alpha, beta) found by scanning the tiny problems for a raw solver worse
    # than the top-b sigma candidate by a wide margin (28 %, 31 % and 1.4 %), on another set
    form, seed, n, b, alpha, beta = {
        "greedy": ("factored", 2, 10, 2, 0.0, 1e-3),
        "paper": ("factored", 2, 10, 2, 0.0, 1e-3),
        "exact": ("factored", 2, 12, 4, 1e-2, 1e-1),
    }[prox if solver == "iht" else solver]
    pool, pool_args, Phi, v, sigma = tiny_problem(form, n, b, seed)
    kwargs = dict(solver=solver, alpha=alpha, beta=beta, prox=prox, **pool_args)
    raw = solve_ref(Phi, v, sigma, b, solver, alpha, beta, prox=prox, safeguard=False)
    S_top, w_top, f_top = top_sigma_candidate_ref(Phi, v, sigma, b, alpha, beta)
    assert raw[2][-1] > f_top + 1e-3 * abs(f_top), "not a case where the solver alone is worse"

    off = SparseApprox(safeguard=False, **kwargs).select(pool, b)
    assert_valid_selection(off, n, b, None, solver, safeguard=False)
    assert_same_solution(off, np.arange(n), raw, Phi, v, sigma, alpha, beta)
    assert off.diagnostics["fallback"] is False
    assert off.diagnostics["top_sigma_objective"] is None

    on = SparseApprox(**kwargs).select(pool, b)
    assert_valid_selection(on, n, b, None, solver)
    assert on.diagnostics["fallback"] is True
    assert_array_equal(to_numpy(on.indices), S_top)
    assert not np.array_equal(np.sort(to_numpy(off.indices)), np.sort(S_top))
    expected = (S_top, w_top, np.append(raw[2], f_top))
    assert_same_solution(on, np.arange(n), expected, Phi, v, sigma, alpha, beta)
    assert_allclose(on.diagnostics["top_sigma_objective"], f_top, rtol=F_RTOL)
    assert_allclose(on.diagnostics["selected_weights"], w_top[S_top], rtol=W_RTOL, atol=W_ATOL)
    assert on.diagnostics["objective"][-1] < off.diagnostics["objective"][-1]


def test_top_b_sigma_ties_go_to_the_lowest_index():
    """The safeguard's set: the b largest sigma in descending order, ties to the lowest index, as
    :func:`reference.top_scores_ref`, also with many ties at the boundary."""
    from fastal.sparse import top_b_sigma

    rng = np.random.default_rng(0)
    for sigma in (
        rng.random(50),
        rng.integers(0, 4, 50).astype(np.float64),
        np.zeros(7),
        np.array([1.0, 2.0, 2.0, 0.5, 2.0, 1.0]),
    ):
        for b in range(sigma.size + 1):
            got = top_b_sigma(torch.from_numpy(sigma), b).numpy()
            assert_array_equal(got, top_scores_ref(sigma, b))


@pytest.mark.parametrize("prox", ["Exact", "prox", ""])
def test_solve_iht_refuses_an_unknown_prox(prox):
    """The CPU kernel takes a flag (exact or not): any other word ran the paper's rule unsaid."""
    from fastal.sparse import DensePhi, SparseProblem, solve_iht

    G = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    p = SparseProblem(DensePhi(G, 1), G.sum(1) / 3, sigma, b=1, alpha=1.0, beta=0.0)
    with pytest.raises(ValueError, match=rf"^prox must be 'paper' or 'exact', got '{prox}'$"):
        solve_iht(p, 2, prox=prox)


def test_iht_takes_no_momentum_step_along_rounding(monkeypatch):
    """Once IHT stalls, d = w - w_prev is rounding and Alg. 2's line search along it divides
    rounding by rounding: τ ~ 1e15, a step |τ d| of order 1. On these problems that moved the
    final weights by 1e-3 to 1e-2; with the guard the solver equals the reference's (which has
    it too), and without it, it does not on some of them (which ones depends on the BLAS's
    rounding: seed 291 rounds to d = 0 on an Intel Xeon's MKL)."""
    from fastal import _sparse_solve
    from fastal.sparse import DensePhi, SparseProblem, solve_iht

    def solve(G, v, sigma):
        problem = SparseProblem(
            DensePhi(torch.from_numpy(G), 2), torch.from_numpy(v), torch.from_numpy(sigma),
            2, 1e-3, 0.1,
        )  # fmt: skip
        return solve_iht(problem, 50)

    moved = []
    for seed in (16, 18, 291):
        rng = np.random.default_rng(seed)
        G = rng.normal(size=(3, 32))
        sigma, v = rng.random(32), G.sum(1) / 32
        S, w, _ = iht_ref(G / 2, v, sigma, 2, 1e-3, 0.1, 50)
        got = solve(G, v, sigma)
        assert_array_equal(got.selected, S)
        assert_allclose(got.weights, w, rtol=0, atol=1e-12)
        with monkeypatch.context() as m:
            m.setattr(_sparse_solve, "_MOMENTUM_NOISE", -1.0)  # the paper's momentum step
            moved.append(np.abs(solve(G, v, sigma).weights - w).max())
    assert max(moved) > 1e-4, moved


def test_the_p_equals_p_warning_says_why():
    """It said "(temperature 1, or label_probs equal to probs)" whatever the cause, and told a user
    of one-hot predictions to change a temperature that changes nothing there."""
    pool = logits_pool(12, 3, 2, seed=3)
    with pytest.warns(UserWarning, match=r"\(temperature 1\).*labeled_targets.*labels="):
        SparseApprox(temperature=1.0).select(pool, 2)
    one_hot = {"probs": np.eye(3)[np.arange(12) % 3], "features": pool["features"]}
    with pytest.warns(UserWarning, match=r"one-hot or uniform rows, which temperature 2 leaves"):
        SparseApprox(temperature=2.0).select(one_hot, 2)
    uniform = {"logits": np.zeros((12, 3)), "features": pool["features"]}  # a zeroed head
    with pytest.warns(UserWarning, match=r"one-hot or uniform rows.*no temperature changes"):
        SparseApprox(temperature=2.0).select(uniform, 2)
    same = {**one_hot, "label_probs": one_hot["probs"]}
    with pytest.warns(UserWarning, match=r"\(label_probs equal to the predictions\).*other label"):
        SparseApprox().select(same, 2)
