"""Bilevel coreset (Borsos et al. 2021): kernels, Nyström features, the inner solver, CG, the
greedy scores and the strategy, against float64 numpy references."""

from __future__ import annotations

import doctest
import importlib
import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

import fastal.torch
from fastal import bilevel as bl
from fastal.bilevel.inner import _adam, _class_block_preconditioner
from fastal.strategies import get
from fastal.strategies.bilevel import BilevelCoreset

# ---------------------------------------------------------------------------------------------
# float64 numpy references


def softmax_ref(L: np.ndarray) -> np.ndarray:
    L = L - L.max(1, keepdims=True)
    E = np.exp(L)
    return E / E.sum(1, keepdims=True)


def hessian_ref(Z, W, reg, w=None) -> np.ndarray:
    """The explicit (C·m, C·m) Hessian of the inner objective, coordinate c·m + k = W[c, k]."""
    s, m = Z.shape
    C = W.shape[0]
    w = np.ones(s) if w is None else w
    P = softmax_ref(Z @ W.T)
    H = 2 * reg * np.eye(C * m)
    for i in range(s):
        D = np.diag(P[i]) - np.outer(P[i], P[i])
        H += w[i] * np.kron(D, np.outer(Z[i], Z[i]))
    return H


def grad_ref(Z, T, W, reg, w=None) -> np.ndarray:
    w = np.ones(Z.shape[0]) if w is None else w
    P = softmax_ref(Z @ W.T)
    return (w[:, None] * (P - T)).T @ Z + 2 * reg * W


def loss_ref(Z, T, W, reg) -> float:
    P = softmax_ref(Z @ W.T)
    return float(-(T * np.log(P)).sum() + reg * (W * W).sum())


def solve_inner_ref(Z, T, reg, C) -> np.ndarray:
    """Dense damped Newton to machine precision (tiny problems only)."""
    m = Z.shape[1]
    W = np.zeros((C, m))
    for _ in range(200):
        g = grad_ref(Z, T, W, reg)
        if np.linalg.norm(g) < 1e-13:
            break
        d = -np.linalg.solve(hessian_ref(Z, W, reg), g.ravel()).reshape(C, m)
        t, f0 = 1.0, loss_ref(Z, T, W, reg)
        while loss_ref(Z, T, W + t * d, reg) > f0 + 1e-4 * t * (g * d).sum() and t > 1e-12:
            t /= 2
        W = W + t * d
    return W


def per_sample_gradients_ref(Z, T, W) -> np.ndarray:
    """Every per-sample gradient materialised: row x is (p_x - t_x) ⊗ z_x, (n, C·m)."""
    A = softmax_ref(Z @ W.T) - T
    return np.einsum("nc,nk->nck", A, Z).reshape(Z.shape[0], -1)


def greedy_ref(Z, T, labeled, budget, reg):
    """Alg. 1 with exact inner solves and exact H⁻¹∇G; returns picks and the first scores."""
    n, m = Z.shape
    C = T.shape[1]
    S = list(labeled)
    picks, first = [], None
    for _ in range(budget):
        W = solve_inner_ref(Z[S], T[S], reg, C) if S else np.zeros((C, m))
        grad_G = per_sample_gradients_ref(Z, T, W).sum(0)
        H = hessian_ref(Z[S], W, reg) if S else 2 * reg * np.eye(C * m)
        v = np.linalg.solve(H, grad_G)
        scores = per_sample_gradients_ref(Z, T, W) @ v
        cand = np.setdiff1d(np.arange(n), S)
        if first is None:
            first = np.full(n, np.nan)
            first[cand] = scores[cand]
        best = cand[np.argmax(scores[cand])]  # argmax: first maximum, the lowest index
        picks.append(int(best))
        S.append(int(best))
    return np.array(picks), first


def relu_ntk_ref(X, Y, depth, bias=0.0) -> np.ndarray:
    """The arc-cosine recursion, entry by entry with the math module."""
    d = X.shape[1]
    out = np.empty((X.shape[0], Y.shape[0]))
    for i, x in enumerate(X):
        for j, y in enumerate(Y):
            sxy = 2 * float(x @ y) / d + bias
            sxx = 2 * float(x @ x) / d + bias
            syy = 2 * float(y @ y) / d + bias
            theta = sxy
            for _ in range(depth):
                c = max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))
                a = math.acos(c)
                sdot = (math.pi - a) / math.pi
                sxy = math.sqrt(sxx * syy) / math.pi * (math.sin(a) + (math.pi - a) * c) + bias
                theta = theta * sdot + sxy
                sxx += bias
                syy += bias
            out[i, j] = theta
    return out


def problem(n=40, m=6, C=3, n_lab=4, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, m))
    soft = rng.dirichlet(np.ones(C), n)
    labeled = rng.choice(n, n_lab, replace=False)
    y = rng.integers(C, size=n_lab)
    return Z, soft, labeled, y


def targets(soft, labeled, y):
    T = soft.copy()
    if len(labeled):
        T[labeled] = np.eye(soft.shape[1])[y]
    return T


# ---------------------------------------------------------------------------------------------
# (a) Hessian-vector products, CG and the inner solver


@pytest.mark.parametrize(("s", "m"), [(5, 4), (3, 6), (8, 3)])
def test_inverse_hvp_matches_dense_solve(s, m):
    rng = np.random.default_rng(s * 10 + m)
    C, reg = 3, 1e-2
    Z = rng.normal(size=(s, m))
    W = rng.normal(size=(C, m)) * 0.5
    G = rng.normal(size=(C, m))
    w = rng.uniform(0.5, 2.0, s)
    H = hessian_ref(Z, W, reg, w)
    want = np.linalg.solve(H, G.ravel()).reshape(C, m)
    # the HVP is the explicit Hessian times the vector
    assert_allclose(
        bl.inner_hvp(Z, W, G, reg=reg, sample_weight=w),
        (H @ G.ravel()).reshape(C, m),
        rtol=1e-12,
        atol=1e-12,
    )
    # CG on the span of Z (C·rank(Z) <= 30 unknowns: 30 steps are exact) ...
    for precondition in (True, False):
        V, info = bl.inverse_hvp(
            Z, W, G, reg=reg, sample_weight=w, cg_steps=30, precondition=precondition
        )
        assert_allclose(V, want, rtol=1e-8, atol=1e-8 * np.abs(want).max())
        assert info["residual"] < 1e-8
    # ... and plain CG on the full space with the HVP operator agree with the dense solve
    Zt, Wt, wt = (torch.from_numpy(a) for a in (Z, W, w))
    x, _res, _ = bl.conjugate_gradient(
        lambda D: bl.inner_hvp(Zt, Wt, D, reg=reg, sample_weight=wt),
        torch.from_numpy(G),
        steps=200,
        tol=1e-13,
    )
    assert_allclose(x.numpy(), want, rtol=1e-7, atol=1e-8 * np.abs(want).max())


def test_cg_stops_after_steps_and_reports_the_residual():
    rng = np.random.default_rng(1)
    M = rng.normal(size=(40, 40))
    A = torch.from_numpy(M @ M.T + 1e-3 * np.eye(40))
    b = torch.from_numpy(rng.normal(size=40))
    x, res, it = bl.conjugate_gradient(lambda v: A @ v, b, steps=5)
    assert it == 5
    assert_allclose(res, float((b - A @ x).norm() / b.norm()), rtol=1e-6)
    x0, res0, it0 = bl.conjugate_gradient(lambda v: A @ v, torch.zeros(40, dtype=torch.float64))
    assert (it0, res0) == (0, 0.0)
    assert not bool(x0.any())


def test_cg_refuses_non_finite_right_hand_sides_and_operators():
    """A NaN in b, or an operator returning NaN, gave a NaN solution and a NaN residual."""
    eye = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^b contains NaN or Inf"):
        bl.conjugate_gradient(lambda v: v, torch.tensor([1.0, float("nan"), 0.0]))
    with pytest.raises(ValueError, match=r"^hvp \(or precond\) returned NaN or Inf"):
        bl.conjugate_gradient(lambda v: v * float("nan"), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^hvp \(or precond\) returned NaN or Inf"):
        bl.conjugate_gradient(lambda v: eye @ v, torch.ones(3, dtype=torch.float64),
                              precond=lambda r: r * float("inf"))  # fmt: skip


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_nystrom_refuses_an_indefinite_kernel(sign):
    """-(A Bᵀ) kept 18 eigenvalues of rounding noise (~1e-14 against |λ| ~ 1e2) as features;
    A Bᵀ - 3 I on the landmarks has eigenvalues of both signs."""
    U = torch.from_numpy(np.random.default_rng(0).normal(size=(40, 6)))

    def kernel(A, B):
        K = sign * (A @ B.T)
        return K - 3 * (torch.cdist(A, B) == 0).to(K.dtype) if sign > 0 else K

    with pytest.raises(ValueError, match=r"^the kernel is not positive semi-definite on the "
                       r"landmarks: its kernel matrix has eigenvalue -"):  # fmt: skip
        bl.Nystrom(U, kernel)
    assert bl.Nystrom(U, lambda A, B: A @ B.T).rank == 6  # the PSD kernel, rank d


def test_solve_inner_reaches_the_optimum():
    Z, soft, labeled, y = problem(n=12, m=5, C=3)
    T = targets(soft, labeled, y)
    W, info = bl.solve_inner(Z, T, reg=1e-3, tol=1e-12)
    assert_allclose(W, solve_inner_ref(Z, T, 1e-3, 3), rtol=1e-6, atol=1e-8)
    assert np.abs(grad_ref(Z, T, W, 1e-3)).max() < 1e-9
    assert_allclose(info["loss"], loss_ref(Z, T, W, 1e-3), rtol=1e-12)
    assert_allclose(bl.inner_objective(Z, T, W, reg=1e-3), info["loss"], rtol=1e-12)
    # warm start at the optimum: no Newton step needed
    _, again = bl.solve_inner(Z, T, reg=1e-3, tol=1e-8, W0=W)
    assert again["iters"] == 0


def test_solve_inner_sample_weights_repeat_rows():
    Z, soft, labeled, y = problem(n=10, m=4, C=3, seed=2)
    T = targets(soft, labeled, y)
    w = np.array([3, 1, 2, 1, 1, 2, 1, 1, 1, 4], dtype=np.float64)
    W, _ = bl.solve_inner(Z, T, reg=1e-3, sample_weight=w, tol=1e-12)
    rep = np.repeat(np.arange(10), w.astype(int))
    assert_allclose(W, solve_inner_ref(Z[rep], T[rep], 1e-3, 3), rtol=1e-6, atol=1e-8)
    assert np.abs(grad_ref(Z, T, W, 1e-3, w)).max() < 1e-9


def test_adam_matches_torch_adam():
    Z, soft, _, _ = problem(n=8, m=3, C=2, seed=1)
    Zt, Tt = torch.from_numpy(Z), torch.from_numpy(soft)
    wt = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)
    W0 = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3)))
    rows = [torch.tensor([0, 3, 5]), torch.tensor([1, 2, 7]), torch.tensor([4, 6, 0])] * 3
    reg, lr, s = 1e-2, 0.05, 8

    order = iter(rows)

    def batch(rng):
        k = next(order)
        return Zt[k], Tt[k], wt[k]

    got = _adam(W0, batch, s, reg, iters=len(rows), lr=lr, rng=np.random.default_rng(0))

    W = W0.clone().requires_grad_(True)
    opt = torch.optim.Adam([W], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    for k in rows:
        logp = torch.log_softmax(Zt[k] @ W.T, dim=1)
        loss = -(s / k.numel()) * (wt[k] * (Tt[k] * logp).sum(1)).sum() + reg * (W * W).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert_allclose(got.numpy(), W.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_class_block_preconditioner_inverts_the_diagonal_blocks():
    rng = np.random.default_rng(3)
    s, r, C, reg = 7, 3, 4, 1e-2
    X = rng.normal(size=(s, r))
    w = rng.uniform(0.5, 2.0, size=s)
    P = softmax_ref(rng.normal(size=(s, C)))
    R = rng.normal(size=(C, r))
    Minv = _class_block_preconditioner(
        torch.from_numpy(P), torch.from_numpy(X), torch.from_numpy(w), reg
    )
    got = Minv(torch.from_numpy(R)).numpy()
    for c in range(C):
        B = (X * (w * P[:, c] * (1 - P[:, c]))[:, None]).T @ X + 2 * reg * np.eye(r)
        assert_allclose(got[c], np.linalg.solve(B, R[c]), rtol=1e-10)


def test_solve_inner_tolerance_bounds_the_error_of_w():
    """tol bounds |W - W*| / |W*| (F is 2λ-strongly convex) on separable classes, where |∇F(0)|
    is ~10⁵ times the gradient at which W is still 1e-7 off, from zero and from a warm start."""
    rng = np.random.default_rng(1)
    n, d, C, reg = 200, 8, 3, 1e-4
    centres = rng.normal(scale=3.0, size=(C, d))
    cls = rng.integers(C, size=n)
    Z = np.c_[centres[cls] + rng.normal(size=(n, d)), np.ones(n)]
    T = np.eye(C)[cls]
    want = solve_inner_ref(Z, T, reg, C)
    W_part, _ = bl.solve_inner(Z[:150], T[:150], reg=reg)
    for W0 in (None, W_part):
        W, _ = bl.solve_inner(Z, T, reg=reg, W0=W0, tol=1e-10)
        assert np.linalg.norm(W - want) <= 1e-9 * np.linalg.norm(want)
    with pytest.raises(ValueError, match="tol"):
        bl.solve_inner(Z, T, tol=-1.0)


# ---------------------------------------------------------------------------------------------
# (b) Nyström features


@pytest.mark.parametrize("kernel", ["relu_ntk", "ntk_last_layer"])
def test_nystrom_reproduces_the_kernel_on_the_landmarks(kernel):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 5))
    U = X[rng.choice(60, 15, replace=False)]
    Z = bl.nystrom_features(X, U, kernel)
    k = bl.make_kernel(kernel)
    K_UU = k(torch.from_numpy(U), torch.from_numpy(U)).numpy()
    ZU = bl.nystrom_features(U, U, kernel)
    assert_allclose(ZU @ ZU.T, K_UU, rtol=1e-9, atol=1e-9 * np.abs(K_UU).max())
    if kernel == "ntk_last_layer":
        assert Z.shape[1] == 6  # rank of [x, 1]·[x', 1] is d + 1
    # Nyström approximation K_XU K_UU^† K_UX everywhere
    K_XU = k(torch.from_numpy(X), torch.from_numpy(U)).numpy()
    assert_allclose(
        Z @ Z.T, K_XU @ np.linalg.pinv(K_UU, rcond=1e-12) @ K_XU.T, rtol=1e-6, atol=1e-6
    )


def test_nystrom_with_all_points_as_landmarks_is_exact():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 4))
    K = relu_ntk_ref(X, X, 2)
    Z = bl.nystrom_features(X, X, partial_relu(2), chunk=7)
    # θ ≈ 0 on the diagonal: arccos near 1 amplifies rounding to ~1e-8 (reference and ours alike)
    assert_allclose(Z @ Z.T, K, rtol=1e-7, atol=1e-9 * K.max())
    # float32 and torch: same map within float32 rounding, returned as torch
    Zt = bl.nystrom_features(torch.from_numpy(X).float(), torch.from_numpy(X).float(), "relu_ntk")
    assert isinstance(Zt, torch.Tensor)
    assert Zt.dtype == torch.float32
    K1 = relu_ntk_ref(X, X, 1)
    assert_allclose((Zt @ Zt.T).double().numpy(), K1, rtol=2e-3, atol=2e-3 * K1.max())


def partial_relu(depth):
    return lambda A, B: bl.relu_ntk(A, B, depth=depth)


# ---------------------------------------------------------------------------------------------
# (c) the infinite-width ReLU NTK


@pytest.mark.parametrize(("depth", "bias"), [(0, 0.0), (1, 0.0), (2, 0.0), (3, 0.5)])
def test_relu_ntk_matches_the_recursion(depth, bias):
    rng = np.random.default_rng(depth)
    X, Y = rng.normal(size=(7, 4)), rng.normal(size=(5, 4))
    X[0] = 0.0  # a zero row
    Y[1] = X[2] * 3  # parallel rows: θ = 0
    got = bl.relu_ntk(X, Y, depth=depth, bias=bias)
    want = relu_ntk_ref(X[1:], Y, depth, bias)
    assert_allclose(got[1:], want, rtol=1e-7, atol=1e-10)
    assert np.isfinite(got).all()
    K = bl.relu_ntk(X[1:], depth=depth, bias=bias)
    ev = np.linalg.eigvalsh(K)
    assert ev.min() >= -1e-10 * ev.max()  # positive semi-definite


def test_relu_ntk_depth_one_closed_form():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(6, 3))
    d = X.shape[1]
    nx = np.linalg.norm(X, axis=1)
    cos = np.clip(X @ X.T / np.outer(nx, nx), -1, 1)
    th = np.arccos(cos)
    want = (2 * X @ X.T / d) * (np.pi - th) / np.pi + 2 * np.outer(nx, nx) / (d * np.pi) * (
        np.sin(th) + (np.pi - th) * cos
    )
    assert_allclose(bl.relu_ntk(X, depth=1), want, rtol=1e-7)


def test_relu_ntk_matches_a_wide_network():
    """Empirical NTK of wide random networks in the NTK parameterisation (σ_w² = 2)."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(5, 3))
    d = X.shape[1]
    # depth 1, width 200 000, per-sample gradients in closed form
    N = 200_000
    W1, w2 = rng.normal(size=(N, d)), rng.normal(size=N)
    pre = X @ W1.T * np.sqrt(2 / d)
    act = np.maximum(pre, 0)
    g_w2 = act * np.sqrt(2 / N)
    gate = (pre > 0) * w2 * np.sqrt(2 / N)  # ∂f/∂pre
    K_emp = g_w2 @ g_w2.T + (gate @ gate.T) * (2 / d) * (X @ X.T)
    K = bl.relu_ntk(X, depth=1)
    assert np.abs(K_emp - K).max() < 0.03 * np.abs(K).max()
    # depth 2 through autograd (width 1024: a loose check)
    torch.manual_seed(0)
    width = 1024
    Ws = [
        torch.randn(width, d, dtype=torch.float64),
        torch.randn(width, width, dtype=torch.float64),
        torch.randn(1, width, dtype=torch.float64),
    ]
    for W in Ws:
        W.requires_grad_(True)

    def f(x):
        h = x
        for W in Ws[:-1]:
            h = torch.relu(np.sqrt(2 / h.shape[0]) * W @ h)
        return (np.sqrt(2 / width) * Ws[-1] @ h)[0]

    J = []
    for x in torch.from_numpy(X):
        grads = torch.autograd.grad(f(x), Ws)
        J.append(torch.cat([g.reshape(-1) for g in grads]))
    J = torch.stack(J).numpy()
    K2 = bl.relu_ntk(X, depth=2)
    assert np.linalg.norm(J @ J.T - K2) < 0.15 * np.linalg.norm(K2)


# ---------------------------------------------------------------------------------------------
# (d) scores and the greedy picks against materialised per-sample gradients


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_candidate_scores_match_materialised_gradients(dtype):
    rng = np.random.default_rng(6)
    n, m, C = 50, 7, 4
    Z = rng.normal(size=(n, m))
    T = rng.dirichlet(np.ones(C), n)
    W = rng.normal(size=(C, m))
    V = rng.normal(size=(C, m))
    A = softmax_ref(Z @ W.T) - T
    want = per_sample_gradients_ref(Z, T, W) @ V.ravel()
    got = bl.candidate_scores(Z.astype(dtype), A.astype(dtype), V)
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    got_t = bl.candidate_scores(torch.from_numpy(Z), torch.from_numpy(A), torch.from_numpy(V))
    assert isinstance(got_t, torch.Tensor)
    assert_allclose(got_t.numpy(), want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize(("n_lab", "with_labels"), [(4, True), (4, False), (0, False)])
def test_greedy_matches_the_dense_reference(n_lab, with_labels):
    Z, soft, labeled, y = problem(n=30, m=5, C=3, n_lab=n_lab, seed=7 + n_lab)
    T = targets(soft, labeled, y) if with_labels else soft
    reg = 1e-3
    want, first = greedy_ref(Z, T, labeled, 4, reg)
    res = bl.bilevel_select(
        Z, y if with_labels else None, soft, labeled, 4, reg=reg, random_fraction=0.0, seed=0,
        inner_tol=1e-13,
    )  # fmt: skip
    got_first = res.diagnostics["first_scores"]
    assert_array_equal(np.isnan(got_first), np.isnan(first))
    ok = ~np.isnan(first)
    assert_allclose(got_first[ok], first[ok], rtol=1e-6, atol=1e-9 * np.abs(first[ok]).max())
    assert res.indices[0] == np.flatnonzero(ok)[np.argmax(first[ok])]
    assert_array_equal(res.indices, want)
    assert max(res.diagnostics["cg_residual"]) < 1e-8  # C·r <= 3·8: 30 steps are exact here


def test_upper_loss_is_the_cross_entropy_over_the_pool():
    Z, soft, labeled, y = problem(n=30, m=4, C=3, n_lab=5, seed=4)
    T = targets(soft, labeled, y)
    res = bl.bilevel_select(
        Z, y, soft, labeled, 1, reg=1e-3, random_fraction=0.0, inner_tol=1e-12, seed=0
    )
    W = solve_inner_ref(Z[labeled], T[labeled], 1e-3, 3)  # the first inner set: labeled only
    G = float(-(T * np.log(softmax_ref(Z @ W.T))).sum())
    assert G > 0
    assert_allclose(res.diagnostics["upper_loss"][0], G, rtol=1e-8)


def test_greedy_default_tolerance_on_near_separable_data():
    """Well-separated classes and λ = 1e-4: |∇F(0)| is ~10⁶ times the gradient at which W is still
    a few percent off. At the default inner_tol the picks must still be Alg. 1's (a stopping test
    relative to |∇F(0)| skipped the re-solve after picks and diverged at the third pick here)."""
    rng = np.random.default_rng(1)
    n, d, C, n_lab = 400, 16, 4, 60
    centres = rng.normal(scale=3.0, size=(C, d))
    cls = rng.integers(C, size=n)
    H = centres[cls] + rng.normal(size=(n, d))
    Z = np.c_[H, np.ones(n)]
    soft = softmax_ref(H @ centres.T / 30)
    labeled, y = np.arange(n_lab), cls[:n_lab]
    want, _ = greedy_ref(Z, targets(soft, labeled, y), labeled, 5, 1e-4)
    res = bl.bilevel_select(Z, y, soft, labeled, 5, reg=1e-4, random_fraction=0.0, seed=0)
    assert_array_equal(res.indices, want)
    assert min(res.diagnostics["inner_iters"][1:]) >= 1  # W moved after every pick


def test_first_pick_ties_go_to_the_lowest_index():
    Z, soft, labeled, y = problem(n=20, m=4, C=3, seed=8)
    Z[15], soft[15] = Z[9], soft[9]  # two identical candidates
    Z[3], soft[3] = Z[9], soft[9]
    first = bl.bilevel_select(Z, y, soft, labeled, 1, random_fraction=0, seed=0).diagnostics[
        "first_scores"
    ]
    top = np.nanmax(first)
    best = int(np.flatnonzero(first == top)[0])
    got = bl.bilevel_select(Z, y, soft, labeled, 1, random_fraction=0, seed=0).indices[0]
    assert got == best
    if best in (3, 9, 15):
        assert got == min(i for i in (3, 9, 15) if i not in labeled)


# ---------------------------------------------------------------------------------------------
# (e) invariants of the strategy


def make_pool(n=150, d=6, C=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(C, d)) * 2
    cls = rng.integers(C, size=n)
    h = centres[cls] + rng.normal(size=(n, d))
    logits = h @ centres.T / 3 + rng.normal(size=(n, C))
    return {"features": h.astype(dtype), "logits": logits.astype(dtype)}, cls


@pytest.mark.parametrize(
    ("budget", "random_fraction", "per_step"),
    [(10, 0.1, 1), (12, 0.25, 3), (7, 0.0, 2), (5, 1.0, 1), (9, 0.1, 20)],
)
def test_invariants(budget, random_fraction, per_step):
    pool, cls = make_pool()
    labeled = np.arange(0, 40, 4)
    strat = BilevelCoreset(landmarks=40, random_fraction=random_fraction, per_step=per_step)
    sel = strat.select(dict(pool, labeled_targets=cls[labeled]), budget, labeled=labeled, seed=3)
    idx = sel.indices
    assert idx.dtype == np.int64
    assert idx.shape == (budget,)
    assert len(set(idx.tolist())) == budget
    assert not set(idx.tolist()) & set(labeled.tolist())
    n_random = math.floor(random_fraction * budget + 1e-9)
    dg = sel.diagnostics
    assert len(dg["random"]) == n_random
    assert_array_equal(idx[:n_random], dg["random"])
    assert_array_equal(idx[n_random:], dg["greedy"])
    assert dg["n_steps"] == math.ceil((budget - n_random) / per_step)
    again = strat.select(dict(pool, labeled_targets=cls[labeled]), budget, labeled=labeled, seed=3)
    assert_array_equal(again.indices, idx)  # reproducible from the seed


def test_random_fill_is_uniform_and_seeded():
    pool, _ = make_pool(n=60)
    strat = BilevelCoreset(landmarks=20, random_fraction=1.0)
    picks = [
        tuple(strat.select(pool, 3, labeled=[0, 1], seed=s).indices.tolist()) for s in range(40)
    ]
    assert len(set(picks)) > 30  # different seeds, different random points
    counts = np.bincount(np.concatenate(picks), minlength=60)
    assert counts[:2].sum() == 0
    assert (counts[2:] > 0).sum() > 40


def test_budget_zero_and_everything():
    pool, _ = make_pool(n=20)
    sel = BilevelCoreset(landmarks=10).select(pool, 0, labeled=[1, 2])
    assert sel.indices.shape == (0,)
    sel = BilevelCoreset(landmarks=10, random_fraction=0.0).select(pool, 18, labeled=[1, 2], seed=0)
    assert sorted(sel.indices.tolist()) == [i for i in range(20) if i not in (1, 2)]


def test_random_count_is_not_lost_to_rounding():
    Z, soft, labeled, y = problem(n=110, m=3, C=2, n_lab=4, seed=5)
    res = bl.bilevel_select(Z, y, soft, labeled, 100, random_fraction=0.29, per_step=100, seed=0)
    assert len(res.diagnostics["random"]) == 29
    assert len(res.diagnostics["greedy"]) == 71


@pytest.mark.parametrize("random_fraction", [0.3, 0.5, 0.9])
def test_everything_with_a_random_part_is_a_permutation(random_fraction):
    Z, soft, labeled, y = problem(n=24, m=4, C=3, n_lab=4, seed=6)
    res = bl.bilevel_select(
        Z, y, soft, labeled, 20, random_fraction=random_fraction, per_step=3, seed=1
    )
    assert sorted(res.indices.tolist()) == sorted(set(range(24)) - set(labeled.tolist()))


def test_random_points_are_in_the_first_inner_problem():
    Z, soft, labeled, y = problem(n=30, m=4, C=3, n_lab=4, seed=7)
    T = targets(soft, labeled, y)
    res = bl.bilevel_select(
        Z, y, soft, labeled, 4, reg=1e-3, random_fraction=0.5, inner_tol=1e-12, seed=2
    )
    S = np.concatenate([labeled, res.diagnostics["random"]])
    assert S.size == labeled.size + 2
    W = solve_inner_ref(Z[S], T[S], 1e-3, 3)
    assert_allclose(res.diagnostics["inner_loss"][0], loss_ref(Z[S], T[S], W, 1e-3), rtol=1e-9)


def test_random_fraction_above_one_is_refused():
    Z, soft, labeled, y = problem(n=20, m=3, C=2, n_lab=2, seed=8)
    with pytest.raises(ValueError, match="random_fraction must be in"):
        bl.bilevel_select(Z, y, soft, labeled, 3, random_fraction=1.5, seed=0)


def test_probabilities_above_one_are_refused():
    Z, soft, labeled, y = problem(n=20, m=3, C=2, n_lab=2, seed=8)
    bad = soft.copy()
    bad[5] = [1.0005, 0.0]  # sums to 1 within the tolerance, but is not a probability
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        bl.bilevel_select(Z, y, bad, labeled, 3, seed=0)


# ---------------------------------------------------------------------------------------------
# (f) input frameworks and kernels


def test_numpy_and_torch_inputs_give_the_same_picks():
    pool, cls = make_pool(n=120)
    labeled = np.array([3, 17, 40, 77])
    strat = BilevelCoreset(landmarks=50)
    a = strat.select(dict(pool, labeled_targets=cls[labeled]), 8, labeled=labeled, seed=1)
    tpool = {k: torch.from_numpy(v) for k, v in pool.items()}
    tpool["labeled_targets"] = torch.from_numpy(cls[labeled])
    b = strat.select(tpool, 8, labeled=torch.from_numpy(labeled), seed=1)
    assert isinstance(b.indices, torch.Tensor)
    assert b.indices.dtype == torch.int64
    assert_array_equal(b.indices.numpy(), a.indices)
    # float32 storage: float32 pool passes, same invariants
    p32, _ = make_pool(n=120, dtype=np.float32)
    c = strat.select(p32, 8, labeled=labeled, seed=1)
    assert len(set(c.indices.tolist()) - set(labeled.tolist())) == 8


def test_probs_relu_kernel_on_inputs_and_callable_kernel():
    pool, _ = make_pool(n=80)
    rng = np.random.default_rng(0)
    probs = softmax_ref(pool["logits"])
    inputs = rng.normal(size=(80, 2, 3))
    sel = BilevelCoreset(kernel="relu_ntk", depth=2, kernel_input="inputs", landmarks=30).select(
        {"probs": probs, "features": pool["features"], "inputs": inputs}, 6, labeled=[0, 1], seed=0
    )
    assert sel.diagnostics["rank"] == 30
    assert sel.diagnostics["kernel"] == "relu_ntk"
    assert len(set(sel.indices.tolist()) - {0, 1}) == 6

    def rbf(A, B):
        return torch.exp(-(torch.cdist(A, B) ** 2) / 10)

    sel = BilevelCoreset(kernel=rbf, landmarks=25).select(pool, 6, labeled=[0, 1], seed=0)
    assert sel.diagnostics["kernel"] == "rbf"
    assert len(set(sel.indices.tolist()) - {0, 1}) == 6


def test_augmentation_is_called_and_selection_is_valid():
    pool, cls = make_pool(n=100)
    calls = []

    def jitter(rows, rng):
        calls.append(rows.shape[0])
        return rows + torch.from_numpy(rng.normal(scale=0.1, size=tuple(rows.shape))).to(rows.dtype)

    labeled = np.arange(5)
    strat = BilevelCoreset(
        landmarks=30, augment=jitter, inner_iters=15, batch_size=8, random_fraction=0.2
    )
    sel = strat.select(dict(pool, labeled_targets=cls[labeled]), 5, labeled=labeled, seed=0)
    dg = sel.diagnostics
    assert dg["solver"] == "adam"
    assert len(calls) == 15 * dg["n_steps"]
    assert set(calls) == {8}
    assert len(set(sel.indices.tolist())) == 5
    assert not set(sel.indices.tolist()) & set(labeled.tolist())
    # Adam without augmentation reaches about the Newton optimum of the inner problem
    Z, soft, lab, y = problem(n=25, m=4, C=3, n_lab=6, seed=9)
    newton = bl.bilevel_select(Z, y, soft, lab, 1, random_fraction=0, reg=1e-2, seed=0)
    adam = bl.bilevel_select(
        Z,
        y,
        soft,
        lab,
        1,
        random_fraction=0,
        reg=1e-2,
        solver="adam",
        inner_iters=500,
        lr=0.1,
        seed=0,
    )
    assert adam.diagnostics["inner_loss"][0] <= newton.diagnostics["inner_loss"][0] * 1.01 + 1e-3


# ---------------------------------------------------------------------------------------------
# (g) bad inputs


def test_bad_inputs():
    pool, cls = make_pool(n=30)
    s = BilevelCoreset(landmarks=10)
    with pytest.raises(ValueError, match="logits"):
        s.select({"features": pool["features"]}, 2)
    with pytest.raises(ValueError, match="features"):
        s.select({"logits": pool["logits"]}, 2)
    with pytest.raises(TypeError, match="mapping"):
        s.select(pool["features"], 2)
    with pytest.raises(ValueError, match="one row per row"):
        s.select({"logits": pool["logits"], "features": pool["features"][:20]}, 2)
    bad = pool["features"].copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        s.select({"logits": pool["logits"], "features": bad}, 2)
    bad = pool["logits"].copy()
    bad[1, 0] = np.inf
    with pytest.raises(ValueError, match="NaN"):
        s.select({"logits": bad, "features": pool["features"]}, 2)
    with pytest.raises(ValueError, match="larger than the unlabeled pool"):
        s.select(pool, 29, labeled=[0, 1])
    with pytest.raises(ValueError, match="one entry per labeled row"):
        s.select(dict(pool, labeled_targets=cls[:3]), 2, labeled=[0, 1])
    with pytest.raises(ValueError, match=r"classes in \[0, 4\)"):
        s.select(dict(pool, labeled_targets=np.array([0, 7])), 2, labeled=[0, 1])
    with pytest.raises(ValueError, match="duplicate"):
        s.select(pool, 2, labeled=[0, 0])
    with pytest.raises(ValueError, match="per_step"):
        BilevelCoreset(per_step=0)
    with pytest.raises(ValueError, match="random_fraction"):
        BilevelCoreset(random_fraction=1.5)
    with pytest.raises(ValueError, match="kernel"):
        BilevelCoreset(kernel="rbf")
    with pytest.raises(ValueError, match="reg"):
        BilevelCoreset(reg=0.0)
    with pytest.raises(ValueError, match="solver"):
        BilevelCoreset(solver="sgd")
    with pytest.raises(ValueError, match="augment"):
        BilevelCoreset(solver="newton", augment=lambda r, g: r)
    with pytest.raises(ValueError, match="depth"):
        BilevelCoreset(kernel="relu_ntk", depth=-1)
    with pytest.raises(ValueError, match="soft_pool"):
        bl.bilevel_select(np.ones((5, 2)), None, np.full((5, 2), 0.7), None, 1)
    with pytest.raises(ValueError, match="augment needs raw"):
        bl.bilevel_select(
            np.ones((5, 2)), None, np.full((5, 2), 0.5), None, 1, augment=lambda r, g: r
        )
    with pytest.raises(ValueError, match="kernel must return"):
        bl.nystrom_features(np.ones((4, 2)), np.ones((2, 2)), lambda A, B: torch.ones(3, 3))
    assert get("bilevel") is BilevelCoreset


@pytest.mark.parametrize("fn", [bl.inner_hvp, bl.inverse_hvp])
def test_weights_are_checked_by_name(fn):
    """inner_hvp and inverse_hvp refuse weights of the wrong shape or with NaN, naming W."""
    Z, V = np.ones((5, 3)), np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"W must have shape \(C, 3\), got \(2, 4\)"):
        fn(Z, np.zeros((2, 4)), V)
    with pytest.raises(ValueError, match=r"W must have shape \(C, 3\), got \(3,\)"):
        fn(Z, np.zeros(3), V)
    bad = np.zeros((2, 3))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="W contains NaN or Inf"):
        fn(Z, bad, V)


# ---------------------------------------------------------------------------------------------
# (h) through a torch model


def test_through_fastal_torch_select():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    X = torch.randn(200, 5)
    labeled = torch.arange(10)
    y = torch.randint(0, 3, (10,))
    strat = BilevelCoreset(landmarks=64)
    sel = fastal.torch.select(strat, model, X, 6, labeled, seed=0, labels=y, progress=False)
    idx = sel.indices
    assert isinstance(idx, torch.Tensor)
    assert idx.shape == (6,)
    assert len(set(idx.tolist())) == 6
    assert not set(idx.tolist()) & set(range(10))
    assert sel.diagnostics["rank"] <= 17  # features of the last Linear's input: 16 + 1
    # the same as calling the strategy on the pool with the labels
    pool = fastal.torch.pool_outputs(model, X, ("logits", "features"), progress=False)
    direct = strat.select(dict(pool, labeled_targets=y), 6, labeled, seed=0)
    assert_array_equal(direct.indices.numpy(), idx.numpy())
    unlabelled = strat.select(pool, 3, labeled, seed=0)  # pseudo-labels for the labeled rows
    assert len(set(unlabelled.indices.tolist()) - set(range(10))) == 3


MODULES_WITH_EXAMPLES = [
    "fastal.bilevel.kernels",
    "fastal.bilevel.inner",
    "fastal.bilevel.greedy",
    "fastal.strategies.bilevel",
]


@pytest.mark.parametrize("name", MODULES_WITH_EXAMPLES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


# ---------------------------------------------------------------------------------------------
# overflow (audit §5) and low-precision probabilities (§4)


@pytest.mark.parametrize("depth", [1, 3])
def test_relu_ntk_large_float32_rows_do_not_overflow_in_between(depth):
    """Rows of norm ~1e10: |x|² ~ 1e20 fits float32 and so do the kernel values, but the product
    Σ(x, x) Σ(x', x') ~ 1e40 does not; the angle must come out right all the same."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 3)) * 1e10
    X32 = X.astype(np.float32)
    got = bl.relu_ntk(X32, depth=depth)
    assert got.dtype == np.float32
    assert np.isfinite(got).all()
    # the documented float32 error of (nearly) parallel pairs, the diagonal: ~1e-4 per layer
    expected = relu_ntk_ref(X32.astype(float), X32.astype(float), depth)
    assert_allclose(got, expected, rtol=1e-4 * depth)


@pytest.mark.parametrize("kernel", ["relu_ntk", "linear_ntk"])
def test_ntk_kernels_refuse_overflowing_values(kernel):
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(5, 2)) * 1e20).astype(np.float32)
    fn = getattr(bl, kernel)
    with pytest.raises(ValueError, match=f"{kernel}: the kernel values of X overflow float32"):
        fn(X)
    with pytest.raises(ValueError, match="overflow float32"):
        fn(X[:2] * 1e10, X[2:])
    assert np.isfinite(fn(X.astype(np.float64))).all()  # float64 holds them
    bad = X.astype(np.float64)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"^Y contains NaN"):
        fn(X.astype(np.float64), bad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_soft_pool_is_accepted(dtype):
    Z, _, labeled, y = problem(n=30, m=5, C=3, seed=3)
    soft_low = torch.softmax(torch.randn(30, 3, generator=torch.Generator().manual_seed(1)), 1)
    soft_low = soft_low.to(dtype)
    res = bl.bilevel_select(Z, y, soft_low, labeled, 3, random_fraction=0.0, seed=0)
    want = bl.bilevel_select(Z, y, soft_low.double() / soft_low.double().sum(1, keepdim=True),
                             labeled, 3, random_fraction=0.0, seed=0)  # fmt: skip
    assert_array_equal(res.indices, want.indices)
    with pytest.raises(ValueError, match="soft_pool rows must sum to 1"):
        bl.bilevel_select(Z, y, (soft_low.double() * 0.97).to(dtype), labeled, 3, seed=0)


@pytest.mark.parametrize(("m", "d"), [(40, 6), (5, 9), (30, 29)])
def test_linear_kernel_features_skip_the_kernel_rows(m, d):
    """For the last-layer NTK the map comes from the thin SVD of [U, 1] and is applied to [x, 1]
    directly; the generic path (the same kernel behind another callable) forms kernel rows. Both
    give the Nyström kernel up to rounding (the features themselves may differ by a rotation)."""
    rng = np.random.default_rng(m + d)
    X, U = rng.normal(size=(70, d)), rng.normal(size=(m, d))
    fast = bl.Nystrom(U, bl.linear_ntk)
    slow = bl.Nystrom(U, lambda a, b: bl.linear_ntk(a, b))
    assert fast._linear is not None
    assert slow._linear is None
    assert fast.rank == slow.rank == min(m, d + 1)
    np.testing.assert_allclose(fast.eigenvalues, slow.eigenvalues, rtol=1e-9)
    zf, zs = fast.transform(X), slow.transform(X)
    np.testing.assert_allclose(zf @ zf.T, zs @ zs.T, rtol=1e-9, atol=1e-9)
    if m >= d + 1:  # landmarks span [x, 1]: the Nyström kernel is the kernel
        np.testing.assert_allclose(zf @ zf.T, X @ X.T + 1, rtol=1e-9, atol=1e-9)


def test_linear_kernel_keeps_the_small_real_directions_of_float32_features():
    """[U, 1] of float32 features whose offset direction is weak (s / s_max ~ 0.004, far above
    float32's resolution) keeps all d + 1 directions: the map is orthonormal, nothing is amplified,
    and the pinv rule (m · eps32 on eigenvalues) would drop it. An exact duplicate column is a
    true rank deficiency and is still dropped."""
    rng = np.random.default_rng(5)
    m, d = 2000, 16
    U = (rng.normal(size=(m, d)) * 30 + 10).astype(np.float32)  # the ones column nearly in span
    sv = np.linalg.svd(np.c_[U.astype(np.float64), np.ones(m)], compute_uv=False)
    assert 1e-4 < sv[-1] / sv[0] < np.sqrt(m * np.finfo(np.float32).eps)
    nys = bl.Nystrom(U, bl.linear_ntk)
    assert nys.rank == d + 1
    X = (rng.normal(size=(50, d)) * 30 + 10).astype(np.float32)
    Z = np.asarray(nys.transform(X), dtype=np.float64)
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(
        Z @ Z.T, X64 @ X64.T + 1, rtol=2e-5, atol=2e-5 * np.abs(X64 @ X64.T).max()
    )
    U[:, 1] = U[:, 0]
    assert bl.Nystrom(U, bl.linear_ntk).rank == d


@pytest.mark.parametrize("kernel", [bl.relu_ntk, bl.linear_ntk])
def test_integer_features_are_refused_naming_them(kernel):
    X = np.ones((3, 2), np.int64)
    with pytest.raises(TypeError, match=r"X must hold floating-point features.*int64"):
        kernel(X)
    with pytest.raises(TypeError, match="Y must hold floating-point features"):
        kernel(X.astype(np.float32), X)


# -- found by a review of the bilevel code ---------------------------------------------------------


def _tiny_problem(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(6, 3)), rng.dirichlet(np.ones(3), 6)


def test_newton_is_scale_free_for_large_features():
    """The class mean of ∇F is 2λ mean(W) exactly; its rounding (eps |∇F|) was solved as
    mean / 2λ and swamped the step, so from |z| ~ 1e15 Newton made no step and returned W = 0.
    F(W; s Z, λ) = F(s W; Z, λ / s²): the same loss, and s W the other problem's optimum."""
    Z, T = _tiny_problem()
    untrained = 6 * math.log(3)  # W = 0: uniform predictions
    for s in (1e6, 1e15, 1e20):
        W, info = bl.solve_inner(Z * s, T, reg=1e-4)
        W_ref, info_ref = bl.solve_inner(Z, T, reg=1e-4 / s**2)
        assert info["loss"] < untrained - 0.5
        assert_allclose(info["loss"], info_ref["loss"], rtol=1e-12)
        # the loss is flat at the optimum: W is fixed to ~1e-9, by the BLAS's rounding
        assert_allclose(W * s, W_ref, rtol=1e-8, atol=1e-12)


def test_scores_that_overflow_are_an_error_not_picks():
    """float32 features near 1e18: every first-step score was inf or NaN and picks came back."""
    rng = np.random.default_rng(1)
    Z = (rng.normal(size=(40, 4)) * 1e18).astype(np.float32)
    soft = rng.dirichlet(np.ones(3), 40)
    with pytest.raises(ValueError, match=r"eq\.-2 scores of the pool are not finite"):
        bl.bilevel_select(Z, np.array([0, 1]), soft, [0, 1], 3, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(solver="adam", lr=float("nan")), ValueError, "lr must be finite"),
        (dict(solver="adam", lr=-1.0), ValueError, "lr must be > 0"),
        (dict(inner_tol=float("nan")), ValueError, "inner_tol must be finite"),
        (dict(inner_tol=-1.0), ValueError, "inner_tol must be >= 0"),
        (dict(cg_tol="a"), TypeError, "cg_tol must be a real number"),
        (dict(precondition="no"), TypeError, "precondition must be a bool"),
        (dict(progress="yes"), TypeError, "progress must be a bool"),
        (
            dict(augment=lambda r, g: r, raw=np.zeros((40, 4)), featurize=3),
            TypeError,
            "featurize must be callable",
        ),
    ],
)
def test_bilevel_select_checks_its_hyperparameters(kwargs, error, message):
    rng = np.random.default_rng(2)
    Z, soft = rng.normal(size=(40, 4)), rng.dirichlet(np.ones(3), 40)
    with pytest.raises(error, match=message):
        bl.bilevel_select(Z, np.array([0, 1]), soft, [0, 1], 3, seed=0, **kwargs)


def test_a_scalar_targets_labeled_is_refused():
    rng = np.random.default_rng(3)
    Z, soft = rng.normal(size=(10, 2)), rng.dirichlet(np.ones(3), 10)
    for scalar in (1, np.int64(1), np.array(1)):
        with pytest.raises(ValueError, match="got a scalar"):
            bl.bilevel_select(Z, scalar, soft, [4], 2, seed=0)


def test_nystrom_chunk_and_dtype():
    """A negative chunk returned the uninitialised output; the features follow X's precision
    class, as documented, whatever the landmarks' dtype."""
    X = np.random.default_rng(4).normal(size=(20, 3))
    for kernel in ("ntk_last_layer", "relu_ntk"):
        for bad in (-1, 0, 1.5):
            with pytest.raises(ValueError, match="chunk must be a positive integer"):
                bl.nystrom_features(X, X[:5], kernel, chunk=bad)
        exact = bl.nystrom_features(X, X[:5], kernel)
        # relu_ntk's arccos near 1 turns a BLAS's chunk-dependent rounding of a landmark's own
        # cosine into ~1e-8 (sqrt of float64's eps, as documented for float32's 1e-4)
        rtol = 1e-12 if kernel == "ntk_last_layer" else 1e-7
        assert_allclose(bl.nystrom_features(X, X[:5], kernel, chunk=3), exact, rtol=rtol)
        assert bl.nystrom_features(X, X[:5].astype(np.float32), kernel).dtype == np.float64
        assert bl.nystrom_features(X.astype(np.float32), X[:5], kernel).dtype == np.float32


def test_linear_landmarks_that_overflow_say_so():
    """The thin SVD's s² overflowed and the message told the user to pass a smaller rcond."""
    X = np.random.default_rng(5).normal(size=(10, 3)) * 1e160
    for rcond in (None, 0.0):
        with pytest.raises(ValueError, match=r"overflow float64: scale the rows down"):
            bl.Nystrom(X, bl.linear_ntk, rcond=rcond)


@pytest.mark.parametrize(
    ("augment", "match"),
    [
        (lambda rows, r: rows.numpy(), r"^augment must return a torch tensor of 8 rows \(it was "
         r"given \(8, 2, 4\)\), got ndarray \(8, 2, 4\)$"),
        (lambda rows, r: rows[:4], r"^augment must return a torch tensor of 8 rows .* got Tensor "
         r"\(4, 2, 4\)$"),
        (lambda rows, r: rows * float("nan"), r"^augment returned NaN or Inf values$"),
    ],
)  # fmt: skip
def test_a_bad_augment_output_names_augment(augment, match):
    """featurize's messages named X ('X contains NaN or Inf'), or numpy failed on '.to'."""
    rng = np.random.default_rng(6)
    pool = {"features": rng.normal(size=(30, 2, 4)).astype(np.float32),
            "probs": rng.dirichlet(np.ones(3), 30).astype(np.float32),
            "labeled_targets": np.array([0, 1, 2])}  # fmt: skip
    strategy = BilevelCoreset(augment=augment, inner_iters=2, landmarks=10, batch_size=8)
    with pytest.raises(ValueError, match=match):
        strategy.select(pool, 2, [0, 1, 2], seed=0)


def test_scores_past_float32_name_reg_as_well_as_the_features():
    """A tiny reg (H⁻¹ ∇G ~ 1 / reg) overflowed the scores, and the message blamed the features."""
    rng = np.random.default_rng(6)
    pool = {"features": rng.normal(size=(30, 4)).astype(np.float32),
            "probs": rng.dirichlet(np.ones(3), 30).astype(np.float32),
            "labeled_targets": np.array([0, 1, 2])}  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"^the eq.-2 scores of the pool are not finite in "
        r"torch.float32: the features are too large or reg = 1e-300 too small",
    ):
        BilevelCoreset(reg=1e-300, landmarks=10).select(pool, 2, [0, 1, 2], seed=0)


def test_a_cg_breakdown_on_the_inner_hessian_names_the_features_and_reg(monkeypatch):
    """float64 features near 1e16 with reg = 1e-4: CG's iterates grew 100x a step to Inf, and the
    error named no argument and gave no fix. Whether they do depends on the BLAS's rounding (an
    Intel Xeon's MKL solved the same system), so the Hessian products are made Inf here."""
    from fastal.bilevel import inner

    real = inner.conjugate_gradient
    monkeypatch.setattr(
        inner, "conjugate_gradient", lambda hvp, b, **kw: real(lambda v: hvp(v) * math.inf, b, **kw)
    )
    rng = np.random.default_rng(0)
    H, p = rng.normal(size=(30, 70)), rng.dirichlet(np.ones(3), 30)
    pool = {"features": H * 1e16, "logits": np.log(p), "labeled_targets": [1]}
    with pytest.raises(ValueError, match=r"^conjugate gradients on the inner problem's Hessian "
                       r"broke down in torch.float64 \(NaN or Inf\): the features \(up to "
                       r".*\) are too large or reg = 0.0001 too small"):  # fmt: skip
        BilevelCoreset(landmarks=8).select(pool, 3, [0], seed=0)
    assert issubclass(bl.CGBreakdown, ValueError)


def test_augment_sees_rows_in_their_shape_and_budget_0_has_every_key():
    rng = np.random.default_rng(6)
    n = 30
    x = rng.normal(size=(n, 2, 4)).astype(np.float32)
    probs = rng.dirichlet(np.ones(3), n).astype(np.float32)
    shapes = set()

    def shift(rows, r):
        shapes.add(tuple(rows.shape[1:]))
        return torch.roll(rows, 1, dims=-1)

    pool = {"features": x, "probs": probs, "labeled_targets": np.array([0, 1, 2])}
    strategy = BilevelCoreset(augment=shift, inner_iters=5, landmarks=10)
    full = strategy.select(pool, 2, [0, 1, 2], seed=0)
    assert shapes == {(2, 4)}
    empty = strategy.select(pool, 0, [0, 1, 2], seed=0)
    assert set(empty.diagnostics) == set(full.diagnostics)
    assert empty.diagnostics["seconds"]["total"] == 0.0
