"""Bilevel coresets (Borsos et al. 2021, issue 8): fastal against a dense torch port, same run.

Pool: a ``C``-class Gaussian mixture (centres N(0, 9 I), unit noise) of ``n`` float32 rows of
``d`` features; logits ``features · centresᵀ / 30``; the first ``n_lab`` rows are labeled with their
classes. Every pick is greedy (``random_fraction = 0``) so that both sides run the same algorithm:
Alg. 1 with the last-layer NTK ``[h, 1]·[h', 1]``, λ = 1e-4, one pick per outer step.

``fastal``       ``BilevelCoreset(kernel="ntk_last_layer", random_fraction=0).select(...)``:
                 Nyström features (``landmarks``, default 2000), warm-started Newton-CG on the
                 inner points, one chunked pool pass for ``A`` and ``∇G``, 30 preconditioned CG
                 steps for ``H⁻¹ ∇G``, the row-wise C++ scoring kernel. Never an ``n × C·m``
                 matrix.
``torch_dense``  written here, what a straightforward torch port looks like: the exact feature map
                 of that kernel, ``z = [h, 1]`` (the same kernel, so the same proxy model up to a
                 rotation of the features), float64; per pick a damped Newton solve of the inner
                 problem with the dense ``C·m × C·m`` Hessian and ``torch.linalg.solve`` (warm
                 started; stopped at ``|∇F| <= 1e-10 · |∇F(W = 0)|``, 3-4 steps a pick), the
                 per-sample gradients ``(p_x - ỹ_x) ⊗ z_x`` materialised as an ``n × C·m`` matrix,
                 ``∇G`` its column sum, ``H⁻¹ ∇G`` by a dense solve and the scores by a mat-vec.
                 Skipped when that matrix would exceed ``FASTAL_BENCH_MEM_GB`` (default 8).

Both solve eq. 2 exactly up to rounding (fastal's CG reaches relative residuals of 1e-7 or below),
so the picks agree until two candidates' scores are within rounding of each other; ``extra_info``
reports ``same_prefix`` (how many leading picks agree) and ``overlap`` (shared picks / budget).

Sizes by ``FASTAL_BENCH``: tiny (n = 2,000, d = 16, C = 4, 10 picks; CI), medium (n ∈ {10k, 50k},
d = 128, C = 10, |L| = 100, 100 picks), full (medium plus n = 200k). ``extra_info`` carries the
sizes, ``seconds`` (one round each) and, for fastal, ``speedup_vs_torch_dense`` measured earlier
in the same session, and fastal's own split (``seconds_features``, ``seconds_inner``, ...).
Each side first runs once on a 200-row pool, outside the timing (torch's lazy set-up, first
imports). Threads: both use torch's pool (``torch.get_num_threads()``, ``extra_info["threads"]``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from fastal.strategies import BilevelCoreset

PRESET = os.environ.get("FASTAL_BENCH", "tiny").strip().lower() or "tiny"
#: (n, d, C, n_lab, budget)
CASES = {
    "tiny": [(2000, 16, 4, 20, 10)],
    "medium": [(10_000, 128, 10, 100, 100), (50_000, 128, 10, 100, 100)],
    "full": [(n, 128, 10, 100, 100) for n in (10_000, 50_000, 200_000)],
}[PRESET]
LANDMARKS = 200 if PRESET == "tiny" else 2000
REG = 1e-4
MEM_GB = float(os.environ.get("FASTAL_BENCH_MEM_GB", "8"))
_TIMES: dict = {}
_PICKS: dict = {}


def make_pool(n: int, d: int, C: int, n_lab: int, seed: int = 0) -> tuple[dict, np.ndarray]:
    """The mixture pool above, with ``labeled_targets`` for the first ``n_lab`` rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(C, d))
    y = rng.integers(C, size=n)
    H = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
    logits = (H @ centres.T.astype(np.float32)) / 30
    labeled = np.arange(n_lab)
    return {"logits": logits, "features": H, "labeled_targets": y[:n_lab]}, labeled


def _inner_newton(Z_S, T_S, W, reg: float, g_ref: float, tol: float = 1e-10, max_iter: int = 100):
    """Damped Newton on ``Σ_S CE(softmax(W z), t) + λ|W|²`` with the dense Hessian, until
    ``|∇F| <= tol · g_ref`` (``g_ref``: the gradient norm of the cold start W = 0 at the first
    pick; a target relative to each warm start would fall below float64 rounding from the second
    pick on and run every pick to ``max_iter``). Returns W, the Hessian at W (reused for
    ``H⁻¹ ∇G``) and the number of Newton steps."""
    import torch

    C, m = W.shape
    eye = torch.eye(C * m, dtype=W.dtype)

    def loss_grad_hess(W):
        logp = torch.log_softmax(Z_S @ W.T, 1)
        P = logp.exp()
        f = -(T_S * logp).sum() + reg * (W * W).sum()
        g = (P - T_S).T @ Z_S + 2 * reg * W
        # Σ_i (diag p_i - p_i p_iᵀ) ⊗ z_i z_iᵀ, entry (c·m + k, c'·m + k')
        B = torch.diag_embed(P) - P[:, :, None] * P[:, None, :]
        Hs = torch.einsum("iab,ik,il->akbl", B, Z_S, Z_S).reshape(C * m, C * m)
        return f, g, Hs + 2 * reg * eye

    f, g, Hs = loss_grad_hess(W)
    steps = 0
    for steps in range(max_iter + 1):
        if float(g.norm()) <= tol * g_ref or steps == max_iter:
            break
        step = torch.linalg.solve(Hs, g.reshape(-1)).reshape(C, m)
        t = 1.0
        while True:  # Armijo backtracking: Newton from a poor start can overshoot
            W_new = W - t * step
            logp = torch.log_softmax(Z_S @ W_new.T, 1)
            f_new = -(T_S * logp).sum() + reg * (W_new * W_new).sum()
            if f_new <= f - 1e-4 * t * float((g * step).sum()) or t < 1e-8:
                break
            t *= 0.5
        W = W_new
        f, g, Hs = loss_grad_hess(W)
    return W, Hs, steps


def torch_dense_bilevel(
    pool: dict, labeled: np.ndarray, budget: int, reg: float = REG, newton_steps: list | None = None
) -> list:
    """Alg. 1 (eq. 2-3) with everything dense: see the module docstring. ``newton_steps``, when
    given, receives the Newton steps of each pick."""
    import torch

    H = torch.from_numpy(pool["features"]).double()
    n, C = H.shape[0], pool["logits"].shape[1]
    Z = torch.cat([H, torch.ones(n, 1, dtype=H.dtype)], 1)  # exact features of [h,1]·[h',1]
    m = Z.shape[1]
    T = torch.softmax(torch.from_numpy(pool["logits"]).double(), 1)
    T[torch.from_numpy(labeled)] = torch.nn.functional.one_hot(
        torch.from_numpy(pool["labeled_targets"]).long(), C
    ).double()
    S = [int(i) for i in labeled]
    available = torch.ones(n, dtype=torch.bool)
    available[torch.from_numpy(labeled)] = False
    W = torch.zeros(C, m, dtype=torch.float64)
    idx = torch.tensor(S)
    g_ref = float(((torch.softmax(Z[idx] @ W.T, 1) - T[idx]).T @ Z[idx]).norm()) or 1.0
    picks: list[int] = []
    for _ in range(budget):
        idx = torch.tensor(S)
        W, Hs, steps = _inner_newton(Z[idx], T[idx], W, reg, g_ref)
        if newton_steps is not None:
            newton_steps.append(steps)
        A = torch.softmax(Z @ W.T, 1) - T
        grads = (A[:, :, None] * Z[:, None, :]).reshape(n, C * m)  # n × C·m, materialised
        v = torch.linalg.solve(Hs, grads.sum(0))
        scores = (grads @ v).masked_fill(~available, -torch.inf)
        i = int(torch.argmax(scores))  # first maximum: ties to the lowest index
        picks.append(i)
        S.append(i)
        available[i] = False
    return picks


def _agreement(a: list, b: list) -> tuple[int, float]:
    prefix = next(
        (k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    return prefix, len(set(a) & set(b)) / max(len(a), 1)


@pytest.mark.parametrize("impl", ["torch_dense", "fastal"])
@pytest.mark.parametrize(
    ("n", "d", "C", "n_lab", "budget"),
    CASES,
    ids=[f"n{n}-d{d}-C{C}-b{b}" for n, d, C, _, b in CASES],
)
def test_bilevel_select(benchmark, impl, n, d, C, n_lab, budget):
    import torch

    benchmark.group = f"bilevel/cpu/n={n}/d={d}/C={C}/b={budget}"
    pool, labeled = make_pool(n, d, C, n_lab)
    key = (n, d, C, n_lab, budget)
    info = {"n": n, "d": d, "C": C, "n_labeled": n_lab, "budget": budget, "impl": impl,
            "threads": torch.get_num_threads()}  # fmt: skip
    small, small_lab = make_pool(200, d, C, n_lab)  # warm-up: torch's lazy set-up, imports
    if impl == "torch_dense":
        gb = n * C * (d + 1) * 8 / 2**30
        if gb > MEM_GB:
            pytest.skip(f"the n × C·m gradients need {gb:.1f} GB > FASTAL_BENCH_MEM_GB={MEM_GB}")
        torch_dense_bilevel(small, small_lab, 2)
        steps: list[int] = []
        picks = benchmark.pedantic(
            lambda: torch_dense_bilevel(pool, labeled, budget, newton_steps=steps),
            rounds=1, iterations=1,
        )  # fmt: skip
        info["newton_steps"] = steps
    else:
        strategy = BilevelCoreset(landmarks=LANDMARKS, random_fraction=0.0)
        strategy.select(small, 2, small_lab, seed=0)
        sel = benchmark.pedantic(
            lambda: strategy.select(pool, budget, labeled, seed=0), rounds=1, iterations=1
        )
        picks = sel.indices.tolist()
        info.update({f"seconds_{k}": v for k, v in sel.diagnostics["seconds"].items()})
        info["rank"] = sel.diagnostics["rank"]
    assert len(set(picks)) == budget
    assert not set(picks) & set(labeled.tolist())
    # benchmark.stats is None with --benchmark-disable
    seconds = benchmark.stats.stats.min if benchmark.stats else float("nan")
    _TIMES[(key, impl)] = seconds
    _PICKS[(key, impl)] = picks
    info["seconds"] = seconds
    if impl == "fastal" and (key, "torch_dense") in _TIMES:
        info["speedup_vs_torch_dense"] = _TIMES[(key, "torch_dense")] / seconds
        info["same_prefix"], info["overlap"] = _agreement(picks, _PICKS[(key, "torch_dense")])
    benchmark.extra_info.update(info)
