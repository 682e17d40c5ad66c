"""Plain float64 numpy references for the kernels: slow, short and obviously correct.

Distances are computed in the direct form ``sqrt(sum((x - c) ** 2))`` (never the expanded
``|x|^2 + |c|^2 - 2 x.c``, which cancels badly). Comparisons are made on the squared sums, so the
square root cannot merge two distinct values into a tie. Every arg-max / arg-min breaks ties to
the lowest index, the documented rule of every fastal backend.
"""

from __future__ import annotations

import numpy as np


def sqdist_to_row(X: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of every row of ``X`` (n, d) to the row ``c`` (d,), float64."""
    diff = np.asarray(X, dtype=np.float64) - np.asarray(c, dtype=np.float64)
    return np.sum(diff * diff, axis=1)


def min_distance_ref(X, Y) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``X`` (n, d): distance to the nearest row of ``Y`` (m, d) and its index.

    Returns ``(distances (n,) float64, index (n,) int64)``; ties go to the lowest index of ``Y``.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    n, m = X.shape[0], Y.shape[0]
    best = np.full(n, np.inf)
    index = np.full(n, -1, dtype=np.int64)
    for j in range(m):  # increasing j with a strict test: the lowest index wins a tie
        d2 = sqdist_to_row(X, Y[j])
        better = d2 < best
        best[better] = d2[better]
        index[better] = j
    return np.sqrt(best), index


def kcenter_greedy_ref(X, budget: int, labeled=None, first: int | None = None):
    """k-center greedy (Sener & Savarese, Alg. 1) in float64.

    Parameters
    ----------
    X : (n, d) array
    budget : number of picks
    labeled : indices of the initial centres (never picked), or None
    first : the first pick when there is no labeled point (required then, if budget > 0)

    Returns
    -------
    picks : (budget,) int64, in pick order
    radius : (budget,) float64, covering radius ``max_i min_c ||x_i - c||`` after each pick
        (0 once every point is a centre)
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    labeled = [] if labeled is None else [int(i) for i in np.asarray(labeled).ravel()]
    is_centre = np.zeros(n, dtype=bool)
    mind2 = np.full(n, np.inf)  # squared distance to the nearest centre
    for j in labeled:
        is_centre[j] = True
        mind2 = np.minimum(mind2, sqdist_to_row(X, X[j]))

    picks: list[int] = []
    radius: list[float] = []
    for t in range(budget):
        if t == 0 and not labeled:
            assert first is not None, "no labeled point: pass the first centre"
            c = int(first)
        else:
            # the farthest non-centre point; np.argmax returns the first (lowest) maximum
            c = int(np.argmax(np.where(is_centre, -np.inf, mind2)))
        assert not is_centre[c]
        picks.append(c)
        is_centre[c] = True
        mind2 = np.minimum(mind2, sqdist_to_row(X, X[c]))
        rest = mind2[~is_centre]
        radius.append(float(np.sqrt(rest.max())) if rest.size else 0.0)
    return np.array(picks, dtype=np.int64), np.array(radius, dtype=np.float64)


def covering_radius_ref(X, centres) -> float:
    """``max_i min_c ||x_i - c||`` over the rows that are not centres (0 if there are none)."""
    X = np.asarray(X, dtype=np.float64)
    centres = np.asarray(centres, dtype=np.int64)
    if centres.size == 0:
        return float("inf")
    mask = np.ones(X.shape[0], dtype=bool)
    mask[centres] = False
    if not mask.any():
        return 0.0
    dist, _ = min_distance_ref(X[mask], X[centres])
    return float(dist.max())


# ---------------------------------------------------------------------------------------------
# gradient embeddings, k-means++ / Lloyd, BADGE, EGL, k-means sampling


def softmax_ref(z) -> np.ndarray:
    """Row-wise softmax in float64 (shifted by the row maximum)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def gradient_embedding_ref(probs_or_logits, features, labels=None, bias=False, logits=False):
    """Last-layer cross-entropy gradients ``g_i = a_i ⊗ h_i`` in float64.

    ``a_i = p_i - t_i`` with ``t_i`` the one-hot of ``argmax p_i`` (ties to the lowest class) when
    ``labels`` is None, the one-hot of ``labels[i]`` for 1-D integer labels, or the row ``P_i`` of
    a 2-D label distribution. ``h_i`` is the feature row, extended by a trailing 1 with ``bias``.

    Returns ``(A (n, C), H (n, dh), dense (n, C*dh))`` with ``dense[i, c*dh + k] = A[i,c] H[i,k]``.
    """
    z = np.asarray(probs_or_logits, dtype=np.float64)
    p = softmax_ref(z) if logits else z
    H = np.asarray(features, dtype=np.float64)
    n, C = p.shape
    if bias:
        H = np.concatenate([H, np.ones((n, 1))], axis=1)
    if labels is None:
        target = np.eye(C)[np.argmax(p, axis=1)]  # np.argmax: first maximum
    else:
        labels = np.asarray(labels)
        target = np.eye(C)[labels] if labels.ndim == 1 else labels.astype(np.float64)
    A = p - target
    dense = (A[:, :, None] * H[:, None, :]).reshape(n, C * H.shape[1])
    return A, H, dense


def kmeans_pp_ref(X_dense, k: int, seed, first: str = "random", labeled=None, *, margins=False):
    """k-means++ seeding (Arthur & Vassilvitskii 2007) with fastal's documented random stream.

    ::

        rng = np.random.default_rng(seed)
        no labeled row: first pick = argmax |x|^2 ("norm", ties lowest) or rng.integers(n)
        u = rng.random(k)
        sampled pick t (t >= 1 without labeled rows, t >= 0 with): D^2 sampling with u[t]:
            w = squared distance to the nearest centre (labeled rows and picks are centres)
            cum = cumsum(w); total = cum[-1]
            total > 0: first i with cum[i] > u[t] * total (searchsorted side="right"),
                       clipped to the last row with w > 0
            total = 0: the floor(u[t] * r)-th of the r non-centre rows, ascending

    Returns the picks (k,) int64 in pick order; with ``margins=True`` also, for every pick, how
    close it came to being another row: ``min_i |cum[i] - u*total| / total`` for a sampled pick,
    the relative gap of the two largest squared norms for a "norm" first pick, inf otherwise. It
    bounds the relative rounding a low-precision kernel may make before it may pick differently.
    """
    X = np.asarray(X_dense, dtype=np.float64)
    n = X.shape[0]
    lab = [] if labeled is None else [int(i) for i in np.asarray(labeled).ravel()]
    rng = np.random.default_rng(seed)
    is_centre = np.zeros(n, dtype=bool)
    mind2 = np.full(n, np.inf)
    for j in lab:
        is_centre[j] = True
        mind2 = np.minimum(mind2, sqdist_to_row(X, X[j]))

    picks: list[int] = []
    margin: list[float] = []

    def take(c: int) -> None:
        nonlocal mind2
        assert not is_centre[c], f"row {c} picked twice"
        picks.append(c)
        is_centre[c] = True
        mind2 = np.minimum(mind2, sqdist_to_row(X, X[c]))

    start = 0
    if not lab and k > 0:
        if first == "norm":
            sq = np.sum(X * X, axis=1)
            c = int(np.argmax(sq))  # first maximum
            top = np.sort(sq)[::-1]
            gap = (top[0] - top[1]) / top[0] if n > 1 and top[0] > 0 else np.inf
        elif first == "random":
            c, gap = int(rng.integers(n)), np.inf
        else:
            raise ValueError(f"first must be 'norm' or 'random', got {first!r}")
        take(c)
        margin.append(gap)
        start = 1
    u = rng.random(k)
    for t in range(start, k):
        w = np.where(is_centre, 0.0, mind2)
        cum = np.cumsum(w)
        total = cum[-1]
        if total > 0:
            x = u[t] * total
            c = int(np.searchsorted(cum, x, side="right"))
            positive = np.flatnonzero(w > 0)
            if c >= n or w[c] <= 0:
                c = int(positive[-1])
            margin.append(float(np.min(np.abs(cum[positive] - x)) / total))
        else:
            free = np.flatnonzero(~is_centre)
            r = free.size
            c = int(free[min(int(np.floor(u[t] * r)), r - 1)])
            margin.append(np.inf)
        take(c)
    out = np.array(picks, dtype=np.int64)
    return (out, np.array(margin)) if margins else out


def assign_ref(X, centres) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre of every row (ties to the lowest centre) and the squared distance to it."""
    X = np.asarray(X, dtype=np.float64)
    centres = np.asarray(centres, dtype=np.float64)
    d2 = np.stack([sqdist_to_row(X, c) for c in centres], axis=1)  # (n, k)
    labels = np.argmin(d2, axis=1).astype(np.int64)  # first minimum
    return labels, d2[np.arange(X.shape[0]), labels]


def lloyd_ref(X, init_centres, max_iter: int, tol: float) -> dict:
    """Lloyd's k-means iterations in float64, with fastal's documented rules.

    Each iteration: assign every row to its nearest centre (ties to the lowest centre); every
    centre with rows becomes their mean; the empty clusters, in increasing centre order, take the
    rows farthest from the centre they were assigned to (largest distance first, ties to the lowest
    row), the j-th empty cluster the j-th farthest row. Only the empty cluster's centre changes:
    the donor cluster keeps the mean of the rows assigned to it (the spec does not remove the row
    from it, unlike scikit-learn).
    Stop after the iteration whose labels equal the previous iteration's, or whose total centre
    shift ``sum_c |c_new - c_old|^2`` is ``<= tol * mean(var(X, axis=0))``, or after ``max_iter``
    iterations; ``converged`` says whether a stopping rule fired. Labels and inertia are then
    recomputed for the final centres.

    Returns a dict: centres (k, d), labels (n,), inertia, n_iter, converged.
    """
    X = np.asarray(X, dtype=np.float64)
    centres = np.array(init_centres, dtype=np.float64)
    k = centres.shape[0]
    threshold = tol * float(np.mean(np.var(X, axis=0)))
    old_labels = None
    n_iter, converged = 0, False
    for it in range(1, max_iter + 1):
        labels, d2 = assign_ref(X, centres)
        new = centres.copy()
        counts = np.bincount(labels, minlength=k)
        for c in np.flatnonzero(counts):
            new[c] = X[labels == c].sum(axis=0) / counts[c]
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            far = np.lexsort((np.arange(X.shape[0]), -d2))  # decreasing distance, then index
            for j, c in enumerate(empty):
                new[c] = X[far[j]]
        shift = float(np.sum((new - centres) ** 2))
        centres = new
        n_iter = it
        if old_labels is not None and np.array_equal(labels, old_labels):
            converged = True
            break
        if shift <= threshold:
            converged = True
            break
        old_labels = labels
    labels, d2 = assign_ref(X, centres)
    return {
        "centres": centres,
        "labels": labels,
        "inertia": float(d2.sum()),
        "n_iter": n_iter,
        "converged": converged,
    }


def egl_ref(probs, features, bias: bool = False) -> np.ndarray:
    """Expected gradient length scores (Settles et al. 2008) of the last layer, float64:
    ``score_i = |h_i|^2 * sum_y p_iy |p_i - e_y|^2`` (``|h_i|^2 + 1`` with ``bias``), the
    expectation over ``y ~ p_i`` of the squared gradient norm ``|(p_i - e_y) ⊗ h_i|^2``."""
    p = np.asarray(probs, dtype=np.float64)
    h = np.asarray(features, dtype=np.float64)
    hn = np.sum(h * h, axis=1) + (1.0 if bias else 0.0)
    C = p.shape[1]
    expected = np.zeros(p.shape[0])
    for y in range(C):
        diff = p - np.eye(C)[y]
        expected += p[:, y] * np.sum(diff * diff, axis=1)
    return hn * expected


def top_scores_ref(scores, budget: int, labeled=None) -> np.ndarray:
    """The ``budget`` unlabeled rows of largest score, descending, ties to the lowest index."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(scores.size), -scores))
    if labeled is not None:
        order = order[~np.isin(order, np.asarray(labeled))]
    return order[:budget].astype(np.int64)


def unlabeled_rows(n: int, labeled=None) -> np.ndarray:
    """Rows not in ``labeled``, ascending."""
    mask = np.ones(n, dtype=bool)
    if labeled is not None:
        mask[np.asarray(labeled, dtype=np.int64)] = False
    return np.flatnonzero(mask)


def badge_ref(
    probs_or_logits, features, budget: int, labeled=None, seed=None, bias=False, logits=False
) -> np.ndarray:
    """BADGE (Ash et al. 2020): k-means++ with the largest-norm first pick over the gradient
    embeddings (hypothetical labels) of the unlabeled rows; returns pool indices in pick order."""
    rows = unlabeled_rows(np.asarray(features).shape[0], labeled)
    z = np.asarray(probs_or_logits, dtype=np.float64)[rows]
    _, _, dense = gradient_embedding_ref(z, np.asarray(features)[rows], bias=bias, logits=logits)
    return rows[kmeans_pp_ref(dense, budget, seed, first="norm")]


def kmeans_sampling_ref(X, budget: int, labeled=None, seed=None, max_iter=100, tol=1e-4):
    """k-means sampling: Lloyd from a k-means++ start (first pick random) with ``k = budget`` over
    the unlabeled rows, then for every centre the row of its cluster nearest to it (ties to the
    lowest index). Clusters that end empty then take, in centre order, the unpicked rows farthest
    from *their own* assigned centre (largest distance first, ties to the lowest index): the spec's
    "farthest from its centre" read like Lloyd's empty-cluster rule (the row's centre), not as the
    distance to the empty cluster's centre. Returns pool indices in centre order."""
    X = np.asarray(X, dtype=np.float64)
    rows = unlabeled_rows(X.shape[0], labeled)
    Xu = X[rows]
    init = Xu[kmeans_pp_ref(Xu, budget, seed, first="random")]
    res = lloyd_ref(Xu, init, max_iter, tol)
    labels, centres = res["labels"], res["centres"]
    d2 = np.sum((Xu - centres[labels]) ** 2, axis=1)  # to the row's own centre
    picks = np.full(budget, -1, dtype=np.int64)
    for c in range(budget):
        members = np.flatnonzero(labels == c)
        if members.size:
            picks[c] = members[np.argmin(d2[members])]  # first minimum: lowest row
    far = np.lexsort((np.arange(rows.size), -d2))  # decreasing distance, then row
    far = far[~np.isin(far, picks)]
    empty = np.flatnonzero(picks < 0)
    picks[empty] = far[: empty.size]
    return rows[picks]


# ---------------------------------------------------------------------------------------------
# Sparse Approximation (Shen et al.): Problem 2 (eq. 15), greedy (Alg. 1), proximal IHT (Alg. 2),
# LineSearch / De-bias (Alg. 4 / 5), top-b thresholding (Appendix E), temperature scaling.
#
# Everything below is dense float64 numpy and follows the issue-4 spec's pseudo-code line by line:
#   f(w; S) = |v - Phi w|^2 + beta |w - 1|^2 - alpha sum_{j in S} sigma_j^2
# with the selected set S tracked explicitly (a selected index whose weight is clamped to 0 stays
# selected). Every arg-min breaks ties to the lowest index.


def iht_score_ref(s, sigma, alpha: float, rule: str = "paper") -> np.ndarray:
    """The top-b step's score: Appendix E's ``½[-s_j]_+² - alpha sigma_j²`` ("paper"), or the
    exact proximal one ``-½[s_j]_+² - alpha sigma_j²`` ("exact")."""
    s = np.asarray(s, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    bonus = alpha * (sigma * sigma) if alpha else np.zeros_like(sigma)  # alpha = 0: no sigma term
    if rule == "exact":
        pos = np.maximum(s, 0.0)
        return -(0.5 * (pos * pos)) - bonus
    neg = np.maximum(-s, 0.0)
    return 0.5 * (neg * neg) - bonus


def iht_threshold_ref(
    s, sigma, b: int, alpha: float, rule: str = "paper"
) -> tuple[np.ndarray, np.ndarray]:
    """Appendix E top-b step: the ``b`` indices of smallest score (:func:`iht_score_ref`), ordered
    by (score, index) ascending, and ``w`` with ``w[support] = max(s, 0)``, 0 elsewhere."""
    s = np.asarray(s, dtype=np.float64)
    score = iht_score_ref(s, sigma, alpha, rule)
    order = np.lexsort((np.arange(s.size), score))  # by score, then by index
    support = order[:b].astype(np.int64)
    w = np.zeros_like(s)
    w[support] = np.maximum(s[support], 0.0)
    return support, w


def sparse_problem_factored_ref(probs_model, label_dist, H, b: int, bias: bool = False):
    """The non-Bayesian (eq. 14) problem, materialised: column ``j`` of ``Phi`` is
    ``(1/b) a_j ⊗ h_j`` with ``a_j = p_j - P_j`` (flattened ``c * dh + k``, like
    :func:`gradient_embedding_ref`), ``v = (1/n_u) Σ_j a_j ⊗ h_j`` and
    ``sigma_j = (1/n_u) |h_j| Σ_y P_jy |P_j - e_y|``. The rows passed are the unlabeled rows (n_u).

    Returns ``(Phi (C*dh, n_u), v (C*dh,), sigma (n_u,))``, float64.
    """
    p = np.asarray(probs_model, dtype=np.float64)
    P = np.asarray(label_dist, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    n_u, C = p.shape
    if bias:
        H = np.concatenate([H, np.ones((n_u, 1))], axis=1)
    A = p - P
    G = (A[:, :, None] * H[:, None, :]).reshape(n_u, -1)  # row j = a_j ⊗ h_j
    Phi = G.T / b
    v = G.sum(axis=0) / n_u
    spread = np.zeros(n_u)
    for y in range(C):
        diff = P - np.eye(C)[y]
        spread += P[:, y] * np.sqrt(np.sum(diff * diff, axis=1))
    sigma = np.sqrt(np.sum(H * H, axis=1)) * spread / n_u
    return Phi, v, sigma


def mc_losses_ref(mc_probs) -> tuple[np.ndarray, np.ndarray]:
    """Bayesian inputs from MC probabilities (m, n, C): ``L = -log(max(p, 1e-12))`` and the label
    distribution ``P = mean_i p_i`` (n, C)."""
    M = np.asarray(mc_probs, dtype=np.float64)
    return -np.log(np.maximum(M, 1e-12)), M.mean(axis=0)


def sparse_problem_bayesian_ref(losses, P, b: int):
    """The Bayesian (eq. 13) problem: ``g_j(y) = L[:, j, y] - mean_i L[i, j, y]`` (R^m),
    ``E_j = Σ_y P_jy g_j(y)``, ``Phi = (1/b) [E_1 .. E_n]`` (m, n), ``v = (1/n) Σ_j E_j``,
    ``sigma_j = (1/n) Σ_y P_jy |g_j(y) - E_j|``. ``losses`` (m, n, C) and ``P`` (n, C) hold the
    unlabeled rows only. Returns ``(Phi, v, sigma)``, float64."""
    L = np.asarray(losses, dtype=np.float64)
    P = np.asarray(P, dtype=np.float64)
    _, n, C = L.shape
    g = L - L.mean(axis=0, keepdims=True)  # (m, n, C)
    E = np.einsum("jy,mjy->mj", P, g)  # (m, n)
    Phi = E / b
    v = E.sum(axis=1) / n
    sigma = np.zeros(n)
    for y in range(C):
        dev = g[:, :, y] - E
        sigma += P[:, y] * np.sqrt(np.sum(dev * dev, axis=0))
    return Phi, v, sigma / n


def f1_ref(Phi, v, beta: float, w) -> float:
    """``|v - Phi w|² + β |w - 1|²``."""
    r = v - Phi @ w
    d = w - 1.0
    return float(r @ r + beta * (d @ d))


def grad_f1_ref(Phi, v, beta: float, w) -> np.ndarray:
    """``2 Phiᵀ(Phi w - v) + 2 β (w - 1)``."""
    return 2.0 * (Phi.T @ (Phi @ w - v)) + 2.0 * beta * (w - 1.0)


def objective_ref(Phi, v, sigma, alpha: float, beta: float, w, S) -> float:
    """``f(w) = f1(w) - alpha Σ_{j in S} sigma_j²`` (f2 counts the indices of the selected S)."""
    S = np.asarray(S, dtype=np.int64)
    sigma = np.asarray(sigma, dtype=np.float64)
    return f1_ref(Phi, v, beta, w) - alpha * float(np.sum(sigma[S] ** 2))


def line_search_ref(Phi, v, beta: float, u, w) -> float:
    """Alg. 4: the exact ``argmin_μ f1(w - μ u)``; 0 when the denominator is 0."""
    Pu = Phi @ u
    den = float(Pu @ Pu + beta * (u @ u))
    if den == 0.0:
        return 0.0
    return float(((Phi @ w - v) @ Pu + beta * ((w - 1.0) @ u)) / den)


def debias_ref(Phi, v, beta: float, w, S) -> np.ndarray:
    """Alg. 5 over the selected set: ``u = [grad f1(w)]_S``; ``w - LineSearch(u, w) u``."""
    u = np.zeros_like(w)
    S = np.asarray(S, dtype=np.int64)
    u[S] = grad_f1_ref(Phi, v, beta, w)[S]
    return w - line_search_ref(Phi, v, beta, u, w) * u


def greedy_ref(Phi, v, sigma, b: int, alpha: float, beta: float, tau: float = 1.0):
    """Alg. 1 as in the spec. Returns ``(S (b,) int64 in pick order, w (n,), trace (b,))`` with
    ``trace[t] = f(w; S)`` after pick ``t``."""
    Phi = np.asarray(Phi, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    n = Phi.shape[1]
    w = np.zeros(n)
    S: list[int] = []
    chosen = np.zeros(n, dtype=bool)
    trace = []
    for _ in range(b):
        crit = tau * grad_f1_ref(Phi, v, beta, w) - alpha * sigma**2
        j = int(np.argmin(np.where(chosen, np.inf, crit)))  # first minimum: lowest index
        S.append(j)
        chosen[j] = True
        e = np.zeros(n)
        e[j] = 1.0
        w = w - line_search_ref(Phi, v, beta, e, w) * e
        w = debias_ref(Phi, v, beta, w, S)
        w = np.maximum(w, 0.0)
        trace.append(objective_ref(Phi, v, sigma, alpha, beta, w, S))
    return np.array(S, dtype=np.int64), w, np.array(trace)


def iht_ref(Phi, v, sigma, b: int, alpha: float, beta: float, iters: int = 50, rule: str = "paper"):
    """Alg. 2 as in the spec. Returns ``(S (b,) int64 in the last thresholding's score order,
    w (n,), trace (iters,))`` with ``trace[t] = f(w; S)`` after iteration ``t``."""
    Phi = np.asarray(Phi, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    n = Phi.shape[1]
    w = np.zeros(n)
    z = np.zeros(n)
    S = np.zeros(0, dtype=np.int64)
    trace = []
    for _ in range(iters):
        w_prev = w
        g = grad_f1_ref(Phi, v, beta, z)
        s = z - line_search_ref(Phi, v, beta, g, z) * g
        S, w = iht_threshold_ref(s, sigma, b, alpha, rule)
        w = debias_ref(Phi, v, beta, w, S)
        w = np.maximum(w, 0.0)
        d = w - w_prev
        # a stalled iteration's d is rounding: no momentum (fastal's guard, not the paper's)
        stalled = np.abs(d).max() <= 2.0**-40 * np.abs(w).max()
        z = w if stalled else w - line_search_ref(Phi, v, beta, d, w) * d
        trace.append(objective_ref(Phi, v, sigma, alpha, beta, w, S))
    return S, w, np.array(trace)


def top_sigma_candidate_ref(Phi, v, sigma, b: int, alpha: float, beta: float):
    """The safeguard's candidate (an addition required by issue 4, not in the paper): the ``b``
    largest sigma (:func:`top_scores_ref`: descending, ties to the lowest index) weighted as the
    solvers weight a fixed support, De-bias from ``w = 1`` on it, then clamped at 0.
    Returns ``(S, w, f)``."""
    Phi = np.asarray(Phi, dtype=np.float64)
    S = top_scores_ref(sigma, b)
    w = np.zeros(Phi.shape[1])
    w[S] = 1.0
    w = np.maximum(debias_ref(Phi, v, beta, w, S), 0.0)
    return S, w, objective_ref(Phi, v, sigma, alpha, beta, w, S)


def safeguard_ref(Phi, v, sigma, b: int, alpha: float, beta: float, result, rtol: float = 1e-10):
    """``SparseApprox(safeguard=True)`` after a solver's ``result = (S, w, trace)``: the top-b
    sigma candidate (:func:`top_sigma_candidate_ref`) replaces it when its f is lower by more than
    ``rtol`` times the larger size ``f1 + alpha Σ_S sigma²`` of the two; the trace gets the f of
    what is returned. Returns ``(S, w, trace, fallback, f_top)``."""
    S, w, trace = result
    S_t, w_t, f_t = top_sigma_candidate_ref(Phi, v, sigma, b, alpha, beta)
    sigma = np.asarray(sigma, dtype=np.float64)

    def size(w_, S_):
        S_ = np.asarray(S_, dtype=np.int64)
        return f1_ref(Phi, v, beta, w_) + alpha * float(np.sum(sigma[S_] ** 2))

    f_s = objective_ref(Phi, v, sigma, alpha, beta, w, S)
    if f_t < f_s - rtol * max(size(w_t, S_t), size(w, S)):
        return S_t, w_t, np.append(trace, f_t), True, f_t
    return S, w, np.append(trace, f_s), False, f_t


def nnls_ref(A, y) -> np.ndarray:
    """``argmin_{x >= 0} |A x - y|²``: scipy's Lawson-Hanson when available, else ours."""
    A = np.asarray(A, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    try:
        from scipy.optimize import nnls
    except ImportError:
        return _lawson_hanson(A, y)
    return nnls(A, y)[0]


def _lawson_hanson(A, y, tol: float = 1e-12) -> np.ndarray:
    """Lawson & Hanson's active-set NNLS (1974), dense float64."""
    k = A.shape[1]
    x = np.zeros(k)
    passive = np.zeros(k, dtype=bool)
    for _ in range(3 * k + 10):
        grad = A.T @ (y - A @ x)
        if passive.all() or np.max(np.where(passive, -np.inf, grad)) <= tol:
            break
        passive[int(np.argmax(np.where(passive, -np.inf, grad)))] = True
        while True:
            z = np.zeros(k)
            z[passive] = np.linalg.lstsq(A[:, passive], y, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            bad = passive & (z <= 0)
            step = np.min(x[bad] / (x[bad] - z[bad]))
            x = x + step * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
    return x


def optimal_weights_ref(Phi, v, beta: float, S) -> np.ndarray:
    """The non-negative ``w`` supported on ``S`` minimising ``f1``: the NNLS of
    ``[Phi_S; sqrt(β) I] w_S ≈ [v; sqrt(β) 1]`` (the rows off ``S`` are 0)."""
    Phi = np.asarray(Phi, dtype=np.float64)
    S = np.asarray(S, dtype=np.int64)
    k = S.size
    A = np.concatenate([Phi[:, S], np.sqrt(beta) * np.eye(k)], axis=0)
    y = np.concatenate([np.asarray(v, dtype=np.float64), np.sqrt(beta) * np.ones(k)])
    w = np.zeros(Phi.shape[1])
    w[S] = nnls_ref(A, y)
    return w


def support_objective_ref(Phi, v, sigma, alpha: float, beta: float, S) -> float:
    """``min_{w >= 0, supp(w) ⊆ S} f(w; S)``: the value of the set ``S`` with its best weights."""
    w = optimal_weights_ref(Phi, v, beta, S)
    return objective_ref(Phi, v, sigma, alpha, beta, w, S)


def exhaustive_ref(Phi, v, sigma, b: int, alpha: float, beta: float):
    """The optimum of eq. 15 over every set of ``b`` indices with its optimal non-negative weights
    (tiny problems only). Returns ``(S (sorted), w, f)``; ties to the lexicographically first S."""
    from itertools import combinations

    n = np.asarray(Phi).shape[1]
    best = (None, None, np.inf)
    for S in combinations(range(n), b):
        w = optimal_weights_ref(Phi, v, beta, S)
        f = objective_ref(Phi, v, sigma, alpha, beta, w, S)
        if f < best[2]:
            best = (np.array(S, dtype=np.int64), w, f)
    return best


def temperature_nll_ref(logits, targets, T: float) -> float:
    """Mean negative log-likelihood of ``softmax(logits / T)`` at the integer ``targets``."""
    z = np.asarray(logits, dtype=np.float64) / T
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.sum(np.exp(z), axis=1))
    t = np.asarray(targets, dtype=np.int64)
    return float(np.mean(lse - z[np.arange(z.shape[0]), t]))


def fit_temperature_ref(logits, targets, lo: float = 1e-2, hi: float = 1e2) -> float:
    """Temperature scaling (Guo et al. 2017): ``argmin_T`` of :func:`temperature_nll_ref` over
    ``log T in [log lo, log hi]``: an 81-point grid on log T, then golden section in the bracket
    around the best grid point (the NLL is convex in 1/T, hence unimodal in log T)."""
    a, c = np.log(lo), np.log(hi)
    grid = np.linspace(a, c, 81)
    vals = [temperature_nll_ref(logits, targets, np.exp(x)) for x in grid]
    i = int(np.argmin(vals))
    left, right = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    invphi = (np.sqrt(5.0) - 1.0) / 2.0

    def nll(x: float) -> float:
        return temperature_nll_ref(logits, targets, float(np.exp(x)))

    x1 = right - invphi * (right - left)
    x2 = left + invphi * (right - left)
    f1, f2 = nll(x1), nll(x2)
    while right - left > 1e-10:
        if f1 <= f2:
            right, x2, f2 = x2, x1, f1
            x1 = right - invphi * (right - left)
            f1 = nll(x1)
        else:
            left, x1, f1 = x1, x2, f2
            x2 = left + invphi * (right - left)
            f2 = nll(x2)
    x = 0.5 * (left + right)
    best = min((nll(x), x), (vals[i], grid[i]))[1]  # a boundary optimum stays on the boundary
    return float(np.exp(best))


# ---------------------------------------------------------------------------------------------
# Batched Gram eigenvalues (CRC, Kong et al. eq. 9)


def gram_spectrum_ref(Z, S, side: str = "auto") -> np.ndarray:
    """Ascending eigenvalues (float64, ``np.linalg.eigvalsh``) of the Gram matrix of the rows ``S``
    of ``Z``: ``Z_S Z_Sᵀ`` (side ``"S"``), ``Z_Sᵀ Z_S`` (side ``"D"``) or the smaller of the two
    (``"auto"``, ``|S| <= D`` taking the ``|S|`` side). Both sides share their non-zero
    eigenvalues."""
    ZS = np.asarray(Z, dtype=np.float64)[np.asarray(S, dtype=np.int64)]
    if side == "auto":
        side = "S" if ZS.shape[0] <= ZS.shape[1] else "D"
    K = ZS @ ZS.T if side == "S" else ZS.T @ ZS
    return np.linalg.eigvalsh(K)


def gram_min_eig_ref(Z, labeled, groups, rtol=None, side: str = "auto"):
    """For every row ``g`` of ``groups``: the smallest eigenvalue above ``rtol * λ_max`` of the Gram
    matrix of ``S = labeled + g`` (0.0 when there is none), and the spectrum (ascending).

    ``rtol`` defaults to ``max(|S|, D) * eps(float64)``. Returns ``(lambda_min (n_groups,),
    spectra (n_groups, m))`` with ``m`` the size of the chosen side.
    """
    Z = np.asarray(Z, dtype=np.float64)
    lab = np.asarray([] if labeled is None else labeled, dtype=np.int64).ravel()
    groups = np.asarray(groups, dtype=np.int64)
    mins, spectra = [], []
    for g in groups:
        S = np.concatenate([lab, g])
        tol = max(S.size, Z.shape[1]) * np.finfo(np.float64).eps if rtol is None else rtol
        ev = gram_spectrum_ref(Z, S, side)
        pos = ev[ev > tol * ev[-1]] if ev[-1] > 0 else ev[:0]
        mins.append(float(pos[0]) if pos.size else 0.0)
        spectra.append(ev)
    return np.array(mins), np.array(spectra)
