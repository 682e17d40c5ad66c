"""The score baselines (entropy, margin, least confidence, BALD) and EGL pick their top ``budget``
rows without sorting the pool (scale review, finding 9): ``topk`` finds the b-th largest score and
only the b rows kept are sorted. The picks and their order are those of the full stable sort they
replaced, checked here against a float64 numpy reference of that rule, with many ties at the
boundary, NaN, ±inf and ±0 scores, labeled rows, and budgets 0 and "everything".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CPU_BACKENDS, to_backend, to_numpy

import fastal.strategies.uncertainty as unc
from fastal.strategies import BALD, EGL, Entropy, LeastConfidence, Margin


def old_rule(scores: np.ndarray, labeled, budget: int) -> np.ndarray:
    """The rule the full sort implemented: the unlabeled rows in ascending order, stably sorted by
    ``-score`` (NaN after every number, ``-0.0 == 0.0``), the first ``budget`` of them."""
    rows = np.setdiff1d(np.arange(scores.size), np.asarray(labeled, dtype=np.int64))
    keys = -np.asarray(scores, dtype=np.float64)[rows]
    return rows[np.argsort(keys, kind="stable")][:budget]


def unlabeled(n: int, labeled) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[np.asarray(labeled, dtype=np.int64)] = False
    return np.flatnonzero(mask)


def tied_scores(rng, n: int, special: bool) -> np.ndarray:
    """Scores from a few distinct values, so that the budget's boundary falls inside a tie."""
    values = [0.25, 0.5, 0.5 + 2**-52, 1.0, 3.0]
    if special:
        values += [0.0, -0.0, np.inf, -np.inf, np.nan]
    return rng.choice(np.array(values), size=n)


@pytest.mark.parametrize("topk_values", [1 << 18, 4])  # one topk call; chunks of max(4, 4 b)
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000])
def test_top_rows_equal_the_stable_sort_with_ties(monkeypatch, n, special, topk_values):
    monkeypatch.setattr(unc, "_TOPK_VALUES", topk_values, raising=False)
    rng = np.random.default_rng(n + 1000 * special)
    for trial in range(40):
        s = tied_scores(rng, n, special)
        labeled = [] if trial % 3 == 0 else np.flatnonzero(rng.random(n) < 0.3)
        rest = unlabeled(n, labeled)
        budgets = {0, rest.size, *rng.integers(0, rest.size + 1, size=6).tolist()}
        for b in sorted(budgets):
            got = unc._top_rows(torch.from_numpy(s.copy()), rest, b)
            assert got.dtype == torch.int64
            np.testing.assert_array_equal(got.numpy(), old_rule(s, labeled, b))


def test_top_rows_nan_and_minus_inf_at_the_boundary():
    # the b-th largest is -inf: the -inf rows come first (by index), then the NaN rows
    s = np.array([np.nan, -np.inf, 1.0, np.nan, -np.inf, 2.0, np.nan])
    for b in range(s.size + 1):
        got = unc._top_rows(torch.from_numpy(s), np.arange(s.size), b).numpy()
        np.testing.assert_array_equal(got, old_rule(s, [], b))
    np.testing.assert_array_equal(
        unc._top_rows(torch.from_numpy(s), np.arange(s.size), 7).numpy(), [5, 2, 1, 4, 0, 3, 6]
    )


def test_top_rows_sort_only_the_budget(monkeypatch):
    """No sort of the pool (the full sort was O(n log n) with ~9 length-n vectors), and ``topk``
    (torch's CPU one copies its input with the indices) in chunks."""
    sizes, topk_sizes = [], []

    def recording(fn):
        def wrapper(t, *args, **kwargs):
            sizes.append(t.numel())
            return fn(t, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(torch, "sort", recording(torch.sort))
    monkeypatch.setattr(torch, "argsort", recording(torch.argsort))
    monkeypatch.setattr(torch.Tensor, "sort", recording(torch.Tensor.sort))
    monkeypatch.setattr(torch.Tensor, "argsort", recording(torch.Tensor.argsort))
    topk = torch.topk

    def recording_topk(t, *args, **kwargs):
        if t.dim() == 1:  # not Margin's top 2 of each row
            topk_sizes.append(t.numel())
        return topk(t, *args, **kwargs)

    monkeypatch.setattr(torch, "topk", recording_topk)
    monkeypatch.setattr(unc, "_TOPK_VALUES", 512, raising=False)
    rng = np.random.default_rng(0)
    n, b = 5000, 40
    p = rng.dirichlet(np.ones(4), size=n)
    p[::2] = p[0]  # half the pool ties
    for strategy, pool in [
        (Entropy(), {"probs": p}),
        (Margin(), {"probs": p}),
        (LeastConfidence(), {"logits": np.log(p)}),
        (BALD(), {"mc_probs": np.stack([p, p[::-1]])}),
        (EGL(), {"probs": p, "features": rng.normal(size=(n, 3))}),
    ]:
        for labeled in (None, [0, 5, 99]):
            sizes.clear()
            topk_sizes.clear()
            strategy.select(pool, b, labeled)
            assert sizes, strategy.name
            assert max(sizes) <= b, (strategy.name, max(sizes))
            assert max(topk_sizes) <= 512, (strategy.name, max(topk_sizes))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("strategy", [Entropy, Margin, LeastConfidence])
def test_score_picks_follow_the_old_rule_on_tied_pools(strategy, backend):
    rng = np.random.default_rng(1)
    distinct = rng.dirichlet(np.ones(5), size=6)
    P = distinct[rng.integers(0, 6, size=3000)]  # 6 distinct rows: ties everywhere
    pool = {"probs": to_backend(P, backend, "float32")}
    for labeled in ([], rng.choice(3000, 700, replace=False)):
        for b in (1, 17, 500, 1111, 3000 - len(labeled)):
            sel = strategy().select(pool, b, labeled if len(labeled) else None)
            scores = to_numpy(sel.diagnostics["scores"])
            picks = to_numpy(sel.indices)
            np.testing.assert_array_equal(picks, old_rule(scores, labeled, b))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bald_picks_follow_the_old_rule_on_tied_pools(backend):
    rng = np.random.default_rng(2)
    passes = rng.dirichlet(np.ones(3), size=(4, 5))  # 4 passes over 5 distinct rows
    mc = passes[:, rng.integers(0, 5, size=2000)]
    mc[:, ::7] = mc[:1, ::7]  # every pass agrees there: score 0
    pool = {"mc_probs": to_backend(mc, backend, "float64")}
    labeled = rng.choice(2000, 300, replace=False)
    for b in (1, 50, 700, 1700):
        sel = BALD().select(pool, b, labeled)
        np.testing.assert_array_equal(
            to_numpy(sel.indices), old_rule(to_numpy(sel.diagnostics["scores"]), labeled, b)
        )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("squared", [True, False])
def test_egl_picks_follow_the_old_rule_on_tied_pools(backend, squared):
    rng = np.random.default_rng(3)
    P = rng.dirichlet(np.ones(4), size=5)
    H = rng.normal(size=(5, 6))
    rows = rng.integers(0, 5, size=2500)
    pool = {"probs": to_backend(P[rows], backend, "float32"),
            "features": to_backend(H[rows], backend, "float32")}  # fmt: skip
    for labeled in ([], rng.choice(2500, 400, replace=False)):
        for b in (1, 99, 800, 2100):
            sel = EGL(squared=squared).select(pool, b, labeled if len(labeled) else None)
            np.testing.assert_array_equal(
                to_numpy(sel.indices),
                old_rule(to_numpy(sel.diagnostics["scores"]), labeled, b),
            )
