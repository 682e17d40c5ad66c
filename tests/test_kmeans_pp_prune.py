"""k-means++ on the CPU prunes as k-center greedy does: a row whose nearest centre ``a`` has
``d(c_new, a) >= 2 d(row, a)`` is not read (common/prune.h), and a block that the test keeps for
the most part is read whole. A pruned row's mind cannot change, so the block sums, and the draws,
are those of the full pass:

- picks equal the unpruned kernel's and the float64 reference's on clustered pools (where the
  test prunes most rows), for every storage dtype, gradient embeddings, labeled rows (their
  nearest labeled row seeds ``near``), excluded rows (BADGE), both first-pick rules;
- the state crosses the calls that split the steps (Ctrl-C, progress); BADGE's picks do not
  change, and its diagnostics report the rows read;
- rows read: fewer than half on the mixture, every row plus the centres of the test on a pool
  where nothing is pruned; rows shorter than 256 bytes and ``prune=False`` are not pruned;
- bad state handed to the kernel is refused with a message.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import half_pruned_pool, mixture, to_backend, to_numpy
from reference import kmeans_pp_ref

import fastal
import fastal._ext as ext
import fastal._seeding as seeding
from fastal.strategies import BADGE


def _seeding(X, k, prune, **kw):
    stats = {}
    picks = seeding._kmeans_pp(X, k, prune=prune, stats=stats, **kw)
    return to_numpy(picks), stats


@pytest.mark.parametrize("first", ["norm", "random"])
@pytest.mark.parametrize("n_labeled", [0, 6])
@pytest.mark.parametrize("seed", range(3))
def test_pruned_picks_equal_the_reference_on_clustered_rows(first, n_labeled, seed):
    X = mixture(3000, 12, 30, seed=seed)
    labeled = np.random.default_rng(seed).choice(3000, n_labeled, replace=False)
    lab = labeled if n_labeled else None
    got, stats = _seeding(X, 120, True, seed=seed, first=first, labeled=lab)
    full, full_stats = _seeding(X, 120, False, seed=seed, first=first, labeled=lab)
    np.testing.assert_array_equal(got, kmeans_pp_ref(X, 120, seed, first, lab))
    np.testing.assert_array_equal(got, full)
    assert stats["pruned"]
    assert not full_stats["pruned"]
    assert full_stats["rows_read"] == sum(3000 - n_labeled - t for t in range(1, 121))
    assert 2 * stats["rows_read"] < full_stats["rows_read"]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("seed", range(2))
def test_pruned_picks_equal_the_unpruned_kernel_in_every_dtype(dtype, seed):
    X = to_backend(mixture(2500, 16, 25, seed=seed), "torch-cpu", dtype)
    labeled = np.arange(0, 2500, 500)
    for lab in (None, labeled):
        got, stats = _seeding(X, 150, True, seed=seed, labeled=lab)
        full, _ = _seeding(X, 150, False, seed=seed, labeled=lab)
        np.testing.assert_array_equal(got, full)
        assert stats["rows_read"] < 2500 * 150 / 2


@pytest.mark.parametrize("seed", range(3))
def test_pruned_picks_on_a_gradient_embedding_with_excluded_rows(seed):
    """BADGE's seeding: a factored embedding (the test carries its rows' squared norms), the
    labeled rows excluded in place."""
    rng = np.random.default_rng(seed)
    n, C, d = 3000, 5, 12
    centres = rng.normal(size=(20, d)) * 8
    cls = rng.integers(20, size=n)
    feats = (centres[cls] + rng.normal(size=(n, d)) * 0.3).astype(np.float32)
    probs = np.eye(C, dtype=np.float32)[cls % C] * 0.9 + 0.02
    probs /= probs.sum(1, keepdims=True)
    emb = fastal.gradient_embedding(probs, feats)
    excl = rng.choice(n, 200, replace=False).astype(np.int64)
    got, stats = _seeding(emb, 100, True, seed=seed, first="norm", exclude=excl)
    full, full_stats = _seeding(emb, 100, False, seed=seed, first="norm", exclude=excl)
    np.testing.assert_array_equal(got, full)
    assert not np.isin(got, excl).any()
    assert stats["pruned"]
    assert stats["rows_read"] < full_stats["rows_read"]


def test_the_state_crosses_the_calls_that_split_the_steps(monkeypatch):
    X = mixture(4000, 16, 40, seed=5).astype(np.float32)
    whole, whole_stats = _seeding(X, 200, True, seed=1, labeled=np.arange(3))
    calls = []
    steps = ext.cpu.kmeanspp_steps_float32

    def counting(*args):
        calls.append(args[6:8])
        return steps(*args)

    monkeypatch.setattr(ext.cpu, "kmeanspp_steps_float32", counting)
    monkeypatch.setattr(fastal.ops, "_INTERRUPT_WORK", 4000 * 16 * 7)  # 7 steps a call
    split, split_stats = _seeding(X, 200, True, seed=1, labeled=np.arange(3))
    assert len(calls) > 20
    np.testing.assert_array_equal(split, whole)
    assert split_stats == whole_stats


def test_a_block_the_test_mostly_keeps_is_read_whole():
    """Half the pool is tight clusters around far labeled rows (pruned at every step), half a
    Gaussian blob (always kept), shuffled: each 2048-row block keeps about half its rows, so it
    is read whole, and every row is read, plus the earlier centres of the test."""
    X, labeled = half_pruned_pool(300)
    got, stats = _seeding(X, 40, True, seed=0, labeled=labeled)
    full, full_stats = _seeding(X, 40, False, seed=0, labeled=labeled)
    np.testing.assert_array_equal(got, full)
    assert stats["rows_read"] == full_stats["rows_read"] + sum(10 + t for t in range(40))


def test_short_rows_and_prune_false_are_not_pruned(monkeypatch):
    monkeypatch.setattr(fastal.ops, "_PRUNE_MIN_ROW_BYTES", 256)
    for d, prunes in ((63, False), (64, True)):
        X = mixture(2000, d, 20, seed=2).astype(np.float32)
        got, stats = _seeding(X, 50, True, seed=0)
        full, _ = _seeding(X, 50, False, seed=0)
        np.testing.assert_array_equal(got, full)
        assert stats["pruned"] is prunes
    with pytest.raises(TypeError, match="prune"):
        fastal.kmeans_pp(X, 5, prune=1)
    np.testing.assert_array_equal(
        fastal.kmeans_pp(X, 30, seed=4, prune=False), fastal.kmeans_pp(X, 30, seed=4)
    )


def test_badge_picks_do_not_change_with_pruning():
    rng = np.random.default_rng(4)
    n, C, d = 3000, 6, 24
    centres = rng.normal(size=(C, d)) * 4
    cls = rng.integers(C, size=n)
    feats = (centres[cls] + rng.normal(size=(n, d))).astype(np.float32)
    logits = feats @ centres.T.astype(np.float32) / 8
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    pool = {"probs": probs, "features": feats}
    labeled = rng.choice(n, 50, replace=False)
    pruned = BADGE().select(pool, 200, labeled, seed=3)
    assert pruned.diagnostics["pruned"]
    assert pruned.diagnostics["rows_read_fraction"] < 0.5
    full = BADGE(prune=False).select(pool, 200, labeled, seed=3)
    np.testing.assert_array_equal(pruned.indices, full.indices)
    assert not full.diagnostics["pruned"]
    assert full.diagnostics["rows_read"] == sum(n - 50 - t for t in range(1, 201))
    assert full.diagnostics["rows_read_fraction"] == 1.0


def test_the_kernel_refuses_bad_pruning_state():
    X = mixture(300, 8, 5, seed=1).astype(np.float32)
    n, k = X.shape[0], 10
    mind = np.full(n, np.inf, dtype=np.float32)
    picks = np.full(k, -1, dtype=np.int64)
    picks[0] = 0
    u = np.random.default_rng(0).random(k)
    blocks = np.zeros(-(-n // ext.cpu.kmeanspp_block))
    steps = ext.cpu.kmeanspp_steps_float32
    near, centres = np.full(n, -1, dtype=np.int64), np.zeros(k, dtype=np.int64)
    with pytest.raises(ValueError, match="together"):
        steps((X,), mind, picks, u, blocks, True, 0, 1, near, None, 0)
    with pytest.raises(ValueError, match="centres"):
        steps((X,), mind, picks, u, blocks, True, 0, 1, near, centres[:5], 0)
    bad = near.copy()
    bad[7] = 3  # a centre position that no step has placed
    with pytest.raises(ValueError, match=r"near\[7\]"):
        steps((X,), mind, picks, u, blocks, True, 0, 1, bad, centres, 0)
    assert steps((X,), mind, picks, u, blocks, True, 0, k, near, centres, 0) > 0
