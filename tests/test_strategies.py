"""fastal.strategies: the CoreSet strategy over embeddings and the registry."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import CPU_BACKENDS, assert_indices_like, indices_to_backend, to_backend, to_numpy
from numpy.testing import assert_allclose, assert_array_equal

import fastal
from fastal import strategies
from fastal.strategies import CoreSet, CoreSetGradients, Selection, Strategy


def embeddings(n=300, d=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("labeled", [None, [0, 7, 42]])
def test_coreset_equals_kcenter_greedy(backend, labeled, prune):
    X = to_backend(embeddings(), backend, "float32")
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    sel = CoreSet(prune=prune).select(X, 25, lab, seed=3)
    assert isinstance(sel, Selection)
    assert_indices_like(sel.indices, X, 25)
    picks, radius = fastal.kcenter_greedy(X, 25, labeled=lab, seed=3, return_radius=True)
    assert_array_equal(to_numpy(sel.indices), to_numpy(picks))

    diag = sel.diagnostics
    for key in ("initial_radius", "final_radius", "rows_read", "rows_read_fraction"):
        assert key in diag, key
    assert_allclose(diag["final_radius"], to_numpy(radius)[-1])
    assert_array_equal(to_numpy(diag["radius"]), to_numpy(radius))
    if labeled is None:
        assert diag["initial_radius"] == np.inf
    else:
        assert diag["initial_radius"] > diag["final_radius"]
    assert isinstance(diag["rows_read"], int)
    # pruned: at most every row, plus the earlier centres each step reads for d(c_new, a)
    n, n_lab = 300, 0 if labeled is None else len(labeled)
    unpruned = sum(n - n_lab - t for t in range(1, 26))
    centre_rows = sum(n_lab + t for t in range(25))  # the step adding centre pos reads pos rows
    assert 0 < diag["rows_read"] <= unpruned + centre_rows
    assert diag["rows_read_fraction"] == pytest.approx(diag["rows_read"] / unpruned)
    if not prune:
        assert diag["rows_read_fraction"] == 1.0


def test_coreset_seed_controls_the_first_centre():
    X = embeddings()
    a = CoreSet().select(X, 5, seed=11).indices
    b = CoreSet().select(X, 5, seed=11).indices
    assert_array_equal(a, b)
    assert a[0] == np.random.default_rng(11).integers(len(X))


def test_coreset_validates_like_kcenter():
    with pytest.raises(ValueError, match=r"^budget = 301"):
        CoreSet().select(embeddings(), 301)
    with pytest.raises(ValueError, match=r"^labeled has duplicate"):
        CoreSet().select(embeddings(), 3, [1, 1])


def test_coreset_budget_zero():
    sel = CoreSet().select(embeddings(), 0, [4])
    assert to_numpy(sel.indices).shape == (0,)
    assert sel.diagnostics["final_radius"] == sel.diagnostics["initial_radius"]


def test_registry():
    assert strategies.get("coreset") is CoreSet
    assert "coreset" in strategies.available()
    assert strategies.available() == sorted(strategies.available())
    assert issubclass(CoreSet, Strategy)
    assert CoreSet.name == "coreset"
    assert "features" in CoreSet.requires
    assert (
        repr(CoreSet()) == "CoreSet(embedding='features', bias=False, prune=True, progress=False)"
    )
    assert strategies.get("coreset_gradients") is CoreSetGradients
    assert CoreSetGradients.requires == ("probs", "features")


def test_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown strategy 'no-such-thing'; available: .*coreset"):
        strategies.get("no-such-thing")


def test_names_in_other_spellings_and_class_names():
    """get("BADGE") and get("Entropy") failed: names are lower case, classes are not."""
    spellings = {
        "BADGE": "badge", "Entropy": "entropy", "LeastConfidence": "least_confidence",
        "least-confidence": "least_confidence", "Robust Coreset": "robust_coreset",
        "KMeansSampling": "kmeans", "SparseApprox": "sparse_approx", "CRC": "crc",
    }  # fmt: skip
    for spelled, name in spellings.items():
        assert strategies.get(spelled) is strategies.get(name), spelled
    with pytest.raises(ValueError, match="unknown strategy 'core'"):
        strategies.get("core")


def test_register_rejects_nameless_and_clashing_classes():
    class Nameless(Strategy):
        pass

    with pytest.raises(ValueError, match="needs a non-empty `name`"):
        strategies.register(Nameless)

    class Clash(Strategy):
        name = "coreset"

    with pytest.raises(ValueError, match="already registered"):
        strategies.register(Clash)
    assert strategies.get("coreset") is CoreSet


def test_coreset_over_gradient_embeddings():
    """embedding="gradients" (and the registered "coreset_gradients") is k-center over BADGE's
    factored last-layer gradients: the picks of fastal.kcenter_greedy on that embedding, from a
    mapping pool, and through fastal.torch.select by name."""
    import torch

    import fastal
    import fastal.torch as ft

    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(4), 300)
    feats = rng.normal(size=(300, 6))
    labeled = [0, 5, 9]
    emb = fastal.gradient_embedding(probs, feats)
    want = fastal.kcenter_greedy(emb, 12, labeled=labeled, seed=1)
    pool = {"probs": probs, "features": feats}
    for strategy in (
        CoreSet(embedding="gradients"),
        CoreSetGradients(),
        strategies.get("coreset_gradients")(),
    ):
        np.testing.assert_array_equal(strategy.select(pool, 12, labeled, seed=1).indices, want)
    with_bias = CoreSetGradients(bias=True).select(pool, 12, labeled, seed=1).indices
    want_bias = fastal.kcenter_greedy(
        fastal.gradient_embedding(probs, feats, bias=True), 12, labeled=labeled, seed=1
    )
    np.testing.assert_array_equal(with_bias, want_bias)
    with pytest.raises(ValueError, match="embedding"):
        CoreSet(embedding="grads")
    with pytest.raises(ValueError, match=r"probs|logits"):
        CoreSetGradients().select({"features": feats}, 3)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(200, 5)
    sel = ft.select("coreset_gradients", model, x, 7, labeled=[1, 2], seed=3, progress=False)
    out = ft.pool_outputs(model, x, ("probs", "features"), progress=False)
    np.testing.assert_array_equal(
        np.asarray(sel.indices), CoreSetGradients().select(out, 7, [1, 2], seed=3).indices
    )


def test_fastal_strategies_loads_on_first_use():
    """``import fastal`` then ``fastal.strategies.X``, in a fresh interpreter (here the test
    session has imported it already)."""
    code = "import fastal; print(fastal.strategies.CoreSet.__name__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "CoreSet"
