"""EGL (expected gradient length, Settles et al. 2008) selection: fastal against what users write.

Pools: ``n`` rows, ``C`` classes, ``d`` features, float32; probabilities are the softmax of
``3 * N(0, 1)`` logits and features N(0, I), from fixed seeds. Every implementation scores each row
by its expected squared last-layer gradient length ``Σ_y p_y |(p - e_y) ⊗ h|²`` and takes the
``budget`` largest.

``fastal``        ``fastal.strategies.EGL().select({"probs": P, "features": H}, budget)``: the
                  closed form ``|h|² Σ_y p_y (1 - p_y)`` in row tiles, from non-negative terms (the
                  top class's probability read as 1 minus the others), ties to the lowest index.
``torch_closed``  the closed form as usually written, ``|h|² (1 - |p|²)`` in float32 torch and
                  ``torch.topk``: the fastest formula, which cancels to 0 on confident rows.
``torch_dense``   the gradients materialised, as a user without the closed form writes it: for
                  every class y, ``(p - e_y) ⊗ h`` (rows in chunks of 4096, so ``4096 x C x d`` at
                  a time), its squared norm weighted by ``p_y``; then ``torch.topk``. ``C`` times
                  the closed form's work on ``C x`` more data.

``extra_info``: sizes, ``seconds`` (best of the rounds), ``overlap_with_fastal`` (picks in common)
and, for the peers, ``ratio_to_fastal`` (their time over fastal's). Sizes by ``FASTAL_BENCH``: tiny
(n = 3,000, C = 10, d = 32; CI), medium (n = 100k, d = 512, C in {10, 100}; ``torch_dense`` at
C = 10 only), full (medium plus n = 1M at C = 10).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

PRESET = os.environ.get("FASTAL_BENCH", "tiny").strip().lower() or "tiny"
#: (n, C, d, budget)
CASES = {
    "tiny": [(3000, 10, 32, 100)],
    "medium": [(100_000, 10, 512, 1000), (100_000, 100, 512, 1000)],
    "full": [(100_000, 10, 512, 1000), (100_000, 100, 512, 1000), (1_000_000, 10, 512, 1000)],
}[PRESET]
IMPLS = ("fastal", "torch_closed", "torch_dense")
#: torch_dense does C times the work on C times the data: run where that stays seconds
DENSE_MAX_WORK = 1e11
_TIMES: dict = {}
_PICKS: dict = {}


def make_pool(n: int, C: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    rng = np.random.default_rng((n, C, d))
    logits = torch.from_numpy((3 * rng.standard_normal((n, C))).astype(np.float32))
    return torch.softmax(logits, 1).numpy(), rng.standard_normal((n, d), dtype=np.float32)


def torch_closed(P, H, budget: int):
    p, h = P.float(), H.float()
    scores = (h * h).sum(1) * (1 - (p * p).sum(1))
    return scores.topk(budget).indices


def torch_dense(P, H, budget: int, chunk: int = 4096):
    import torch

    n, C = P.shape
    scores = torch.empty(n)
    eye = torch.eye(C)
    for s in range(0, n, chunk):
        p, h = P[s : s + chunk], H[s : s + chunk]
        total = torch.zeros(p.shape[0])
        for y in range(C):
            g = (p - eye[y])[:, :, None] * h[:, None, :]  # (rows, C, d): the gradient for label y
            total += p[:, y] * (g * g).sum((1, 2))
        scores[s : s + chunk] = total
    return scores.topk(budget).indices


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("n", "C", "d", "budget"), CASES, ids=[f"n{n}-C{C}-d{d}-b{b}" for n, C, d, b in CASES]
)
def test_egl(benchmark, impl, n, C, d, budget):
    import torch

    import fastal.strategies

    benchmark.group = f"egl/cpu/n={n}/C={C}/d={d}/b={budget}"
    if impl == "torch_dense" and n * C * C * d > DENSE_MAX_WORK:
        work = n * C * C * d
        pytest.skip(f"torch_dense: n C² d = {work:.2g} multiply-adds, over {DENSE_MAX_WORK:g}")
    P, H = make_pool(n, C, d)
    if impl == "fastal":
        pool = {"probs": P, "features": H}

        def run():
            return np.asarray(fastal.strategies.EGL().select(pool, budget).indices)

    else:
        Pt, Ht = torch.from_numpy(P), torch.from_numpy(H)
        peer = torch_closed if impl == "torch_closed" else torch_dense

        def run():
            return peer(Pt, Ht, budget).numpy()

    picks = benchmark.pedantic(run, rounds=3, iterations=1)
    key = (n, C, d, budget)
    seconds = benchmark.stats.stats.min if benchmark.stats else float("nan")
    _TIMES[(key, impl)], _PICKS[(key, impl)] = seconds, picks
    assert np.unique(picks).size == budget
    benchmark.extra_info.update(n=n, C=C, d=d, budget=budget, impl=impl, seconds=seconds)
    if impl != "fastal" and (key, "fastal") in _TIMES:
        benchmark.extra_info["ratio_to_fastal"] = seconds / _TIMES[(key, "fastal")]
        common = np.intersect1d(picks, _PICKS[(key, "fastal")]).size
        benchmark.extra_info["overlap_with_fastal"] = int(common)
