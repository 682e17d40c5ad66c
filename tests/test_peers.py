"""Agreement with peers' implementations of the same algorithm.

Each test imports its peer with ``pytest.importorskip``: scikit-activeml comes with the ``test``
extra; small-text, bmdal-reg and decile-distil with the ``bench`` extra (skipped without it).
Continuous random data keeps the peers' own tie-breaking (random, or ``argpartition``'s
unspecified order) from acting, so picks must match exactly (as sets where a peer's order is
unspecified).
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import fastal
from fastal import strategies


def _probs(n: int, C: int, seed: int) -> np.ndarray:
    z = np.random.default_rng(seed).normal(scale=2.0, size=(n, C))
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _pool_and_labeled(n: int, d: int, n_labeled: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.choice(n, size=n_labeled, replace=False)


# -- k-center greedy ------------------------------------------------------------------------------

KCENTER_CASES = [(50, 2, 1, 10), (200, 5, 3, 30), (600, 16, 20, 40), (1000, 64, 1, 25)]


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize(("n", "d", "n_labeled", "budget"), KCENTER_CASES)
def test_skactiveml_coreset_picks(n, d, n_labeled, budget, prune):
    """scikit-activeml's CoreSet (k-center greedy with sklearn's Euclidean distances) on the same
    float64 data and labeled set. The labeled set is non-empty, so its random tie-breaking never
    acts, and continuous random data has no near-ties at its (expanded-form) precision."""
    skactiveml_pool = pytest.importorskip("skactiveml.pool")
    X, labeled = _pool_and_labeled(n, d, n_labeled, n + d)
    y = np.full(n, np.nan)
    y[labeled] = np.random.default_rng(0).integers(0, 3, size=n_labeled)

    peer = skactiveml_pool.CoreSet(missing_label=np.nan, random_state=0)
    expected = peer.query(X, y, batch_size=budget)
    got = fastal.kcenter_greedy(X, budget, labeled=labeled, prune=prune)
    assert_array_equal(got, expected)


@pytest.mark.parametrize(("n", "d", "n_labeled", "budget"), KCENTER_CASES)
def test_small_text_greedy_coreset_picks(n, d, n_labeled, budget):
    """small-text's ``greedy_coreset`` (Euclidean). It returns positions among
    ``indices_unlabeled`` and also uses them as pool rows, so the pool is laid out with the
    unlabeled rows first, where both readings agree."""
    coresets = pytest.importorskip("small_text.query_strategies.coresets")
    X, _ = _pool_and_labeled(n, d, n_labeled, n + d)
    unlabeled, labeled = np.arange(n - n_labeled), np.arange(n - n_labeled, n)

    expected = coresets.greedy_coreset(X, unlabeled, labeled, budget, distance_metric="euclidean")
    got = fastal.kcenter_greedy(X, budget, labeled=labeled)
    assert_array_equal(got, expected)


@pytest.mark.parametrize(("n", "d", "n_labeled", "budget"), KCENTER_CASES)
def test_bmdal_maxdist_picks(n, d, n_labeled, budget, monkeypatch):
    """bmdal-reg's MaxDist selection (``sel_with_train``: the labeled rows are the first centres)
    on identity features in float64; its indices are pool rows of the unlabeled part."""
    torch = pytest.importorskip("torch")
    selection = pytest.importorskip("bmdal_reg.bmdal.selection")
    from bmdal_reg.bmdal.feature_data import TensorFeatureData
    from bmdal_reg.bmdal.feature_maps import IdentityFeatureMap
    from bmdal_reg.bmdal.features import Features

    monkeypatch.setattr(np, "Inf", np.inf, raising=False)  # bmdal-reg 3.0.2 spells np.Inf (numpy 1)
    X, labeled = _pool_and_labeled(n, d, n_labeled, n + d)
    unlabeled = np.setdiff1d(np.arange(n), labeled)
    fmap = IdentityFeatureMap(n_features=d)
    pool = Features(fmap, TensorFeatureData(torch.from_numpy(X[unlabeled])))
    train = Features(fmap, TensorFeatureData(torch.from_numpy(X[labeled])))
    peer = selection.MaxDistSelectionMethod(pool, train, sel_with_train=True, verbosity=0)
    expected = unlabeled[peer.select(budget).numpy()]

    got = fastal.kcenter_greedy(X, budget, labeled=labeled)
    assert_array_equal(got, expected)


@pytest.mark.parametrize(("n", "d", "n_labeled", "budget"), KCENTER_CASES)
def test_distil_furthest_first_picks(n, d, n_labeled, budget):
    """decile-distil's CoreSet ``furthest_first`` (sklearn distances, per-row minimum update)."""
    core_set = pytest.importorskip("distil.active_learning_strategies.core_set")
    X, labeled = _pool_and_labeled(n, d, n_labeled, n + d)
    unlabeled = np.setdiff1d(np.arange(n), labeled)

    positions = core_set.CoreSet.furthest_first(None, X[unlabeled], X[labeled], budget)
    got = fastal.kcenter_greedy(X, budget, labeled=labeled)
    assert_array_equal(got, unlabeled[np.asarray(positions)])


# -- uncertainty baselines ------------------------------------------------------------------------

UNCERTAINTY = [
    # (fastal strategy, scikit-activeml method, small-text strategy)
    (strategies.LeastConfidence, "least_confident", "LeastConfidence"),
    (strategies.Margin, "margin_sampling", "BreakingTies"),
    (strategies.Entropy, "entropy", "PredictionEntropy"),
]


@pytest.mark.parametrize(("ours", "method", "_"), UNCERTAINTY)
@pytest.mark.parametrize("C", [2, 3, 10])
def test_skactiveml_uncertainty_scores(ours, method, _, C):
    """scikit-activeml's ``uncertainty_scores``: the same score up to a monotone map, so the
    same ranking; checked on the scores (least confidence and entropy are the same numbers,
    margin is ``1 - (p₁ - p₂)`` there and ``-(p₁ - p₂)`` here) and on the top-b picks."""
    uncertainty = pytest.importorskip("skactiveml.pool._uncertainty_sampling")
    p = _probs(300, C, C)
    theirs = uncertainty.uncertainty_scores(p, method=method)
    scores = np.asarray(ours().scores({"probs": p})[0])
    expected = {"least_confident": theirs, "margin_sampling": theirs - 1, "entropy": theirs}
    assert_allclose(scores, expected[method], rtol=1e-12, atol=1e-12)

    budget = 40
    top = np.argsort(-theirs, kind="stable")[:budget]
    assert_array_equal(ours().select({"probs": p}, budget).indices, top)


class _FixedProbabilities:
    """The classifier small-text's strategies query: fixed (MC) probabilities per pool row."""

    def __init__(self, probs: np.ndarray, mc_probs: np.ndarray | None = None) -> None:
        self.probs, self.mc_probs = probs, mc_probs

    def predict_proba(self, dataset, dropout_sampling: int = 1):
        if dropout_sampling > 1:
            return self.mc_probs[:, dataset].transpose(1, 0, 2)  # (n, T, C), small-text's layout
        return self.probs[dataset]


@pytest.mark.parametrize(("ours", "_", "peer_name"), UNCERTAINTY)
@pytest.mark.parametrize("C", [2, 3, 10])
def test_small_text_uncertainty_picks(ours, _, peer_name, C):
    """small-text's confidence-based strategies: the same set of picks (their order is
    ``argpartition``'s), labeled rows excluded."""
    query = pytest.importorskip("small_text.query_strategies")
    n, budget = 300, 40
    p = _probs(n, C, C + 1)
    labeled = np.arange(0, n, 7)
    unlabeled = np.setdiff1d(np.arange(n), labeled)

    peer = getattr(query, peer_name)()
    expected = peer.query(_FixedProbabilities(p), np.arange(n), unlabeled, labeled, None, n=budget)
    got = ours().select({"probs": p}, budget, labeled).indices
    assert_array_equal(np.sort(got), np.sort(expected))


@pytest.mark.parametrize("C", [2, 5])
def test_small_text_bald_picks(C):
    """small-text's BALD on the same MC-dropout probabilities. It adds 1e-8 inside its logs; the
    picks agree as long as no two scores at the cut are that close, which the seed ensures."""
    query = pytest.importorskip("small_text.query_strategies")
    T, n, budget = 8, 300, 30
    mc = np.stack([_probs(n, C, 100 * C + t) for t in range(T)])  # (T, n, C)
    labeled = np.arange(0, n, 11)
    unlabeled = np.setdiff1d(np.arange(n), labeled)

    clf = _FixedProbabilities(mc.mean(0), mc)
    peer = query.BALD(dropout_samples=T)
    expected = peer.query(clf, np.arange(n), unlabeled, labeled, None, n=budget)
    got = strategies.BALD().select({"mc_probs": mc}, budget, labeled).indices
    assert_array_equal(np.sort(got), np.sort(expected))


# -- BADGE's gradient embedding -------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
def test_distil_gradient_embedding(bias):
    """decile-distil's ``get_grad_embedding`` (BADGE's hypothetical-label gradients, computed
    densely from a model) against ``fastal.gradient_embedding`` on the model's outputs. distil
    stores ``p - e_ŷ`` times the features, class by class, with the C bias entries first."""
    torch = pytest.importorskip("torch")
    strategy = pytest.importorskip("distil.active_learning_strategies.strategy")
    n, d, C = 64, 7, 4
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(n, 5, generator=gen)

    class Net(torch.nn.Module):  # distil's model protocol: forward(x, last=True) -> (out, emb)
        def __init__(self):
            super().__init__()
            self.body, self.head = torch.nn.Linear(5, d), torch.nn.Linear(d, C)

        def forward(self, x, last=False):
            emb = torch.tanh(self.body(x))
            out = self.head(emb)
            return (out, emb) if last else out

        def get_embedding_dim(self):
            return d

    class Handler(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i], i

    torch.manual_seed(0)
    net = Net().eval()
    peer = strategy.Strategy(X, None, X, net, Handler, C, {"batch_size": 16, "device": "cpu"})
    theirs = peer.get_grad_embedding(X, bias_grad=bias).numpy()

    with torch.no_grad():
        logits, feats = net(X, last=True)
    emb = fastal.gradient_embedding(logits.numpy(), feats.numpy(), kind="logits", bias=bias)
    ours = emb.dense()
    if bias:  # ours: per class [C·(features, 1)]; distil: [C biases, C·features]
        ours = ours.reshape(n, C, d + 1)
        ours = np.concatenate([ours[:, :, d], ours[:, :, :d].reshape(n, C * d)], axis=1)
    assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
