"""Baselines random, entropy, margin, least_confidence, bald against float64 numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    CPU_BACKENDS,
    assert_indices_like,
    indices_to_backend,
    to_backend,
    to_numpy,
    upcast,
)
from numpy.testing import assert_allclose, assert_array_equal

from fastal import strategies
from fastal.strategies import BALD, Entropy, LeastConfidence, Margin, Random

# ------------------------------------------------------------------------------------------
# references


def entropy_ref(p: np.ndarray) -> np.ndarray:
    logp = np.log(np.where(p > 0, p, 1.0))
    return -(p * logp).sum(-1)


def margin_ref(p: np.ndarray) -> np.ndarray:
    s = np.sort(p, axis=1)
    return -(s[:, -1] - s[:, -2])


def least_confidence_ref(p: np.ndarray) -> np.ndarray:
    return 1 - p.max(1)


def bald_ref(mc: np.ndarray) -> np.ndarray:
    return entropy_ref(mc.mean(0)) - entropy_ref(mc).mean(0)


def top_ref(scores: np.ndarray, labeled, budget: int) -> np.ndarray:
    """Highest scores among the unlabeled rows, ties to the lowest index."""
    rows = np.setdiff1d(np.arange(scores.size), [] if labeled is None else labeled)
    order = np.lexsort((rows, -scores[rows]))
    return rows[order][:budget]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def probs(n=200, C=5, seed=0, sharp=3.0) -> np.ndarray:
    return softmax(np.random.default_rng(seed).normal(size=(n, C)) * sharp)


SCORES = {"entropy": entropy_ref, "margin": margin_ref, "least_confidence": least_confidence_ref}


# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", list(SCORES))
@pytest.mark.parametrize("labeled", [None, [0, 3, 17, 42]])
def test_scores_and_picks_match_numpy(name, backend, dtype, labeled):
    P = to_backend(probs(), backend, dtype)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    sel = strategies.get(name)().select({"probs": P}, 20, lab)
    assert_indices_like(sel.indices, P, 20)
    ref_scores = SCORES[name](upcast(P))
    assert_allclose(to_numpy(sel.diagnostics["scores"]), ref_scores, rtol=1e-12, atol=1e-15)
    assert_array_equal(to_numpy(sel.indices), top_ref(ref_scores, labeled, 20))


@pytest.mark.parametrize("name", list(SCORES))
def test_logits_are_softmaxed(name):
    z = np.random.default_rng(3).normal(size=(100, 4)) * 2
    sel = strategies.get(name)().select({"logits": z}, 10, [1, 2])
    ref = SCORES[name](softmax(z))
    assert_allclose(sel.diagnostics["scores"], ref, rtol=1e-10, atol=1e-14)
    assert_array_equal(sel.indices, top_ref(ref, [1, 2], 10))


@pytest.mark.parametrize("name", list(SCORES))
def test_ties_go_to_the_lowest_index(name):
    a = [0.4, 0.4, 0.2]  # the most uncertain row, repeated
    b = [0.8, 0.1, 0.1]
    P = np.array([b, a, b, a, a, b, a])
    sel = strategies.get(name)().select({"probs": P}, 4, labeled=[3])
    assert sel.indices.tolist() == [1, 4, 6, 0]


def test_known_values():
    P = np.array([[1.0, 0.0], [0.5, 0.5], [0.7, 0.3]])
    assert_allclose(
        Entropy().select({"probs": P}, 1).diagnostics["scores"],
        [0, np.log(2), entropy_ref(P[2:])[0]],
    )
    assert_allclose(Margin().select({"probs": P}, 1).diagnostics["scores"], [-1.0, 0.0, -0.4])
    assert_allclose(
        LeastConfidence().select({"probs": P}, 1).diagnostics["scores"], [0.0, 0.5, 0.3]
    )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("labeled", [None, [5, 6]])
def test_bald_matches_numpy(backend, labeled):
    rng = np.random.default_rng(4)
    base = rng.normal(size=(1, 80, 6))
    mc = softmax(base + rng.normal(size=(30, 80, 6)) * rng.uniform(0, 2, size=(1, 80, 1)))
    MC = to_backend(mc, backend, "float64")
    sel = BALD().select(
        {"mc_probs": MC}, 15, None if labeled is None else indices_to_backend(labeled, backend)
    )
    assert_indices_like(sel.indices, MC, 15)
    ref = bald_ref(mc)
    assert_allclose(to_numpy(sel.diagnostics["scores"]), ref, rtol=1e-10, atol=1e-14)
    assert_array_equal(to_numpy(sel.indices), top_ref(ref, labeled, 15))
    assert (ref > -1e-12).all()  # mutual information is non-negative


def test_bald_agreeing_passes_score_zero():
    p = np.tile(
        [[0.5, 0.25, 0.25], [0.75, 0.125, 0.125]], (5, 1)
    )  # dyadic: the mean over passes is exact
    with pytest.warns(UserWarning, match=r"^every BALD score is 0: the T = 4 passes of mc_probs "
                      r"agree on every row .*dropout active"):  # fmt: skip
        sel = BALD().select({"mc_probs": np.stack([p, p, p, p])}, 3)
    assert_allclose(sel.diagnostics["scores"], 0, atol=1e-12)
    assert sel.indices.tolist() == [0, 1, 2]  # all tied: lowest indices
    p[0] = [0.25, 0.5, 0.25]  # one row whose passes differ: no warning
    BALD().select({"mc_probs": np.stack([p, p, p, np.tile(p[1], (10, 1))])}, 3)


def test_bald_scores_are_never_negative_and_near_agreement_ties_agreement():
    """Two passes one ulp apart: float64 H[mean] - mean H rounds to -1.1e-16; the score is
    clamped to 0 (BALD's mutual information is >= 0), so row 0 ties the agreeing row 1 and the
    tie goes to the lowest index."""
    p = np.array([0.6161932263421596, 0.29339796449326006, 0.09040880916458023])
    q = p.copy()
    q[0] = np.nextafter(q[0], 2.0)  # one ulp up: the rows still sum to 1 within 1e-3
    r = np.array([0.2, 0.3, 0.5])
    mc = np.stack([np.stack([p, r]), np.stack([q, r])])  # (T=2, n=2, C=3)
    with pytest.warns(UserWarning, match="every BALD score is 0"):
        sel = BALD().select({"mc_probs": mc}, 1)
    scores = np.asarray(sel.diagnostics["scores"])
    assert (scores >= 0).all(), scores
    assert_array_equal(scores, [0.0, 0.0])
    assert_array_equal(sel.indices, [0])


def test_bald_refuses_probabilities_above_one_within_the_sum_tolerance():
    """1.0005 is past [0, 1] though its row sums to 1 within 1e-3: refused, as for 'probs'."""
    mc = np.array([[[1.0005, 0.0], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BALD().select({"mc_probs": mc}, 1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_random_is_a_seeded_uniform_choice(backend):
    X = to_backend(np.zeros((50, 2)), backend, "float32")
    labeled = [1, 2, 3]
    sel = Random().select({"features": X}, 10, indices_to_backend(labeled, backend), seed=7)
    assert_indices_like(sel.indices, X, 10)
    rest = np.setdiff1d(np.arange(50), labeled)
    assert_array_equal(
        to_numpy(sel.indices), np.random.default_rng(7).choice(rest, 10, replace=False)
    )
    assert_array_equal(Random().select(50, 10, labeled, seed=7).indices, to_numpy(sel.indices))
    assert_array_equal(
        Random().select({"n": 50}, 10, labeled, seed=7).indices, to_numpy(sel.indices)
    )
    assert (
        Random().select({"mc_probs": np.zeros((4, 50, 3))}, 50 - 3, labeled, seed=0).indices.size
        == 47
    )
    picks = [tuple(Random().select(50, 5, seed=s).indices) for s in range(5)]
    assert len(set(picks)) == 5


@pytest.mark.parametrize(
    ("pool", "stated"),
    [
        (
            {"features": np.zeros((50, 2)), "probs": np.full((40, 3), 1 / 3)},
            "features 50, probs 40",
        ),
        ({"n": 50, "logits": np.zeros((49, 3))}, "n 50, logits 49"),
        (
            {"outputs": np.zeros((50, 1)), "mc_probs": np.zeros((4, 51, 3))},
            "outputs 50, mc_probs 51",
        ),
    ],
)
def test_random_refuses_a_pool_whose_entries_disagree_on_its_rows(pool, stated):
    """Random counted the first entry it knew and ignored the rest: picks from 50 rows of a pool
    whose probabilities had 40 came back without a word."""
    with pytest.raises(
        ValueError, match=f"^pool's entries disagree on the number of rows: {stated}$"
    ):
        Random().select(pool, 5, seed=0)


def test_random_on_a_pool_of_agreeing_entries_counts_them_once():
    torch = pytest.importorskip("torch")
    pool = {"n": 30, "features": torch.zeros(30, 2), "mc_probs": np.zeros((2, 30, 3))}
    sel = Random().select(pool, 4, [0], seed=1)
    assert isinstance(sel.indices, np.ndarray)  # with "n": numpy, as for an int
    assert_array_equal(sel.indices, Random().select(30, 4, [0], seed=1).indices)
    del pool["n"]
    assert isinstance(Random().select(pool, 4, [0], seed=1).indices, torch.Tensor)  # features'


def test_random_counts_the_rows_of_a_gradient_embedding():
    """CoreSet and BADGE take a GradientEmbedding as the pool or its 'features': so does Random,
    which refused it (and, with 'n' beside it, ignored it)."""
    import fastal

    emb = fastal.gradient_embedding(np.full((30, 3), 1 / 3), np.ones((30, 4)))
    want = Random().select(30, 4, [0], seed=1).indices
    assert_array_equal(Random().select(emb, 4, [0], seed=1).indices, want)
    assert_array_equal(Random().select({"features": emb, "n": 30}, 4, [0], seed=1).indices, want)
    with pytest.raises(
        ValueError, match=r"^pool's entries disagree on the number of rows: n 31, features 30$"
    ):
        Random().select({"features": emb, "n": 31}, 4, seed=1)


def test_registry_and_requires():
    for name, cls, req in [
        ("random", Random, ()), ("entropy", Entropy, ("probs",)), ("margin", Margin, ("probs",)),
        ("least_confidence", LeastConfidence, ("probs",)), ("bald", BALD, ("mc_probs",)),
    ]:  # fmt: skip
        assert strategies.get(name) is cls
        assert cls.requires == req


def test_validation():
    P = probs(20, 3)
    with pytest.raises(ValueError, match="budget = 21"):
        Entropy().select({"probs": P}, 21)
    with pytest.raises(ValueError, match="sum to 1"):
        Entropy().select({"probs": P * 0.5}, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Margin().select({"probs": P * 2}, 2)
    with pytest.raises(ValueError, match="NaN"):
        LeastConfidence().select({"logits": np.full((3, 2), np.nan)}, 1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        Margin().select({"probs": np.ones((4, 1))}, 1)
    with pytest.raises(ValueError, match="needs 'probs' or 'logits'"):
        Entropy().select({"features": P}, 1)
    with pytest.raises(TypeError, match="mapping"):
        Entropy().select(P, 1)
    with pytest.raises(ValueError, match="3-D"):
        BALD().select({"mc_probs": P}, 1)
    with pytest.raises(ValueError, match="sum to 1"):
        BALD().select({"mc_probs": np.full((2, 3, 2), 0.2)}, 1)
    with pytest.raises(ValueError, match="duplicate"):
        Random().select(10, 2, [1, 1])
    with pytest.raises(ValueError, match="budget = 9"):
        Random().select(10, 9, [0, 1])


# ------------------------------------------------------------------------------------------
# probabilities stored in float16 / bfloat16 (audit §4): the row-sum tolerance follows the dtype

LOW = ("float16", "bfloat16")


def low_precision_softmax(shape, dtype: str, seed: int):
    """torch softmax outputs (float32) cast to ``dtype``: rows sum to 1 only to its rounding."""
    import torch

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*shape, generator=g) * 2
    return torch.softmax(z, -1).to(getattr(torch, dtype))


@pytest.mark.parametrize("C", [3, 10, 1000])
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize(
    ("cls", "ref"),
    [(Entropy, entropy_ref), (Margin, margin_ref), (LeastConfidence, least_confidence_ref)],
)
def test_low_precision_probs_are_accepted(cls, ref, dtype, C):
    p = low_precision_softmax((200, C), dtype, seed=C)
    sel = cls().select({"probs": p}, 7, [0, 1])
    stored = upcast(p)
    assert_allclose(upcast(sel.diagnostics["scores"]), ref(stored), rtol=1e-12, atol=1e-15)
    assert_array_equal(to_numpy(sel.indices), top_ref(ref(stored), [0, 1], 7))


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_mc_probs_are_accepted(dtype):
    mc = low_precision_softmax((5, 120, 4), dtype, seed=3)
    sel = BALD().select({"mc_probs": mc}, 6)
    assert_allclose(upcast(sel.diagnostics["scores"]), bald_ref(upcast(mc)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("dtype", "factor"),
    # a row sum off by more than max(1e-3, 2 eps(dtype)) is refused in every dtype
    [("float64", 0.998), ("float32", 0.998), ("float16", 0.995), ("bfloat16", 0.97)],
)
def test_unnormalised_rows_are_still_refused(dtype, factor):
    import torch

    p = low_precision_softmax((50, 4), "float32", seed=1).double() * factor
    p = p.to(getattr(torch, dtype))
    with pytest.raises(ValueError, match=f"probs rows must sum to 1 .*{dtype}"):
        Entropy().select({"probs": p}, 2)
    with pytest.raises(ValueError, match=f"mc_probs rows must sum to 1 .*{dtype}"):
        BALD().select({"mc_probs": p[None].expand(3, -1, -1)}, 2)


def test_prob_sum_tolerance_rule():
    import torch

    from fastal._validate import prob_sum_tol

    assert prob_sum_tol("float64") == prob_sum_tol(np.float32) == 1e-3
    assert prob_sum_tol(torch.float16) == 2.0**-9
    assert prob_sum_tol("bfloat16") == 2.0**-6


def test_bald_scores_in_row_tiles_equal_one_tile(monkeypatch):
    """BALD reads its (T, n, C) input in row tiles (memory); tiles of 7 rows give the same scores
    up to torch's reduction order over the passes."""
    from fastal.strategies import uncertainty

    rng = np.random.default_rng(5)
    mc = softmax(rng.normal(size=(1, 50, 6)) + rng.normal(size=(30, 50, 6)))
    whole = BALD().select({"mc_probs": mc}, 10)
    monkeypatch.setattr(uncertainty, "_TILE_VALUES", 30 * 6 * 7)
    tiled = BALD().select({"mc_probs": mc}, 10)
    assert_allclose(tiled.diagnostics["scores"], whole.diagnostics["scores"], rtol=1e-13)
    assert_array_equal(tiled.indices, whole.indices)
    assert_allclose(tiled.diagnostics["scores"], bald_ref(mc), rtol=1e-10, atol=1e-14)
    bad = mc.copy()
    bad[3, 45, 2] = np.nan  # in the last tile
    with pytest.raises(ValueError, match=r"^mc_probs must hold finite probabilities in \[0, 1\]"):
        BALD().select({"mc_probs": bad}, 10)


def test_one_hot_rows_score_plus_zero():
    """Σ p log p of a one-hot row is -0.0; the reported scores say 0."""
    from fastal.strategies import BALD, Entropy

    P = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    with pytest.warns(UserWarning, match="every BALD score is 0"):
        bald = BALD().select({"mc_probs": np.stack([P, P])}, 2)
    sels = (Entropy().select({"probs": P}, 2), bald)
    for sel in sels:
        scores = np.asarray(sel.diagnostics["scores"])
        assert not np.signbit(scores).any()


@pytest.mark.parametrize("T", [3, 7, 10])
def test_bald_agreeing_passes_of_any_probabilities_tie(T):
    """Equal passes of non-dyadic probabilities: their mean need not round back to them, and the
    scores came out as ±4e-16, so rounding noise chose the picks instead of the lowest index."""
    p = softmax(np.random.default_rng(T).normal(size=(40, 5)))
    with pytest.warns(UserWarning, match="every BALD score is 0"):
        sel = BALD().select({"mc_probs": np.stack([p] * T)}, 5)
    assert (to_numpy(sel.diagnostics["scores"]) == 0).all()
    assert sel.indices.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("name", ["entropy", "margin", "least_confidence", "bald", "egl"])
def test_column_major_torch_inputs_pick_as_row_major(name):
    """A float64 tile of a column-major tensor kept its strides, so each row summed in another
    order and the picks differed from the same values stored row-major."""
    import torch

    rng = np.random.default_rng(5)
    p = softmax(rng.normal(size=(256, 7)) * 3)
    h = rng.normal(size=(256, 9))
    if name == "bald":
        mc = softmax(rng.normal(size=(4, 256, 7)))
        row, col = torch.from_numpy(mc), torch.from_numpy(np.asfortranarray(mc.transpose(2, 1, 0)))
        pools = [{"mc_probs": row}, {"mc_probs": col.permute(2, 1, 0)}]
    else:
        col_p = torch.from_numpy(np.asfortranarray(p))
        pools = [{"probs": torch.from_numpy(p)}, {"probs": col_p}]
        if name == "egl":
            pools[0]["features"] = torch.from_numpy(h)
            pools[1]["features"] = torch.from_numpy(np.asfortranarray(h))
    strategy = strategies.get(name)()
    a, b = (strategy.select(pool, 20) for pool in pools)
    assert_array_equal(to_numpy(a.diagnostics["scores"]), to_numpy(b.diagnostics["scores"]))
    assert_array_equal(to_numpy(a.indices), to_numpy(b.indices))


@pytest.mark.parametrize("name", ["entropy", "margin", "least_confidence", "bald", "egl"])
def test_score_strategies_check_their_seed(name):
    """The scores use no seed, but a bad one is refused like every other strategy's."""
    probs = softmax(np.random.default_rng(0).normal(size=(10, 3)))
    pool = {"probs": probs, "features": np.ones((10, 2))}
    pool["mc_probs"] = np.stack([pool["probs"], pool["probs"][::-1]])  # passes that differ
    strategy = strategies.get(name)()
    for bad in ("abc", -5, 1.5):
        with pytest.raises((TypeError, ValueError), match="seed must be None, a non-negative int"):
            strategy.select(pool, 2, seed=bad)
    strategy.select(pool, 2, seed=3)


@pytest.mark.parametrize("name", ["entropy", "egl", "badge", "coreset_gradients"])
def test_logits_under_probs_name_the_pool_key(name):
    """The hint said "pass kind='logits'", an argument strategies do not have."""
    pool = {"probs": np.array([[2.0, -1.0], [0.5, 0.5]]), "features": np.ones((2, 2))}
    with pytest.raises(ValueError, match="pass them under the pool key 'logits' for logits"):
        strategies.get(name)().select(pool, 1)


def test_bald_warns_about_mc_probs_with_the_rows_first():
    """(n, T, C), what torch.stack(passes, dim=1) gives, was read as n passes over T rows: the
    indices picked were pass numbers, silently."""
    rng = np.random.default_rng(0)
    mc = rng.dirichlet(np.ones(5), size=(8, 500))  # (T, n, C)
    with pytest.warns(UserWarning, match=r"shape \(500, 8, 5\) is read as T = 500.*transpose"):
        BALD().select({"mc_probs": mc.transpose(1, 0, 2)}, 5)
    assert BALD().select({"mc_probs": mc}, 5).indices.shape == (5,)  # no warning (pytest: error)
    few = rng.dirichlet(np.ones(3), size=(100, 30))  # mc_samples = 100 over 30 rows: plausible
    assert BALD().select({"mc_probs": few}, 2).indices.shape == (2,)  # (a review: it warned)
    with pytest.raises(ValueError, match=r"\(T passes, n, C\); from baal's \(n, C, T\) pass "
                       r"mc_probs.transpose\(2, 0, 1\)"):  # fmt: skip
        BALD().select({"mc_probs": mc[:, :30].transpose(1, 2, 0)}, 5)  # baal's layout
