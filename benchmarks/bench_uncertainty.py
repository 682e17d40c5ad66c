"""The uncertainty baselines (entropy, margin, least confidence, BALD): fastal against the peers.

Pools: ``n`` rows, ``C`` classes, float32 softmax probabilities of ``3 * N(0, 1)`` logits from fixed
seeds; for BALD ``T`` Monte-Carlo passes of such probabilities, (T, n, C). Every implementation
scores each row and takes the ``budget`` highest-scoring rows of the whole pool (none labeled).
Each peer gets the probabilities in the layout it reads, made before the timing.

``fastal``      ``fastal.strategies.{Entropy, Margin, LeastConfidence, BALD}().select(pool, b)``:
                scores in float64 row tiles, the probabilities checked (finite, in [0, 1], rows
                summing to 1), the top ``b`` in O(n + b log b), ties to the lowest index.
``torch``       the scores in float32 torch as DeepAL+ and distil write them (``p log p`` summed,
                the top-two gap, the largest probability; BALD as the entropy of the mean minus
                the mean entropy over (T, n, C)), then ``torch.topk``: no checks.
``small_text``  small-text's ``PredictionEntropy``, ``BreakingTies``, ``LeastConfidence`` and
                ``BALD(dropout_samples=T)`` ``query`` with a classifier whose ``predict_proba``
                returns the stored probabilities ((n, T, C) for BALD).
``skactiveml``  scikit-activeml's ``UncertaintySampling`` scoring and batch, called as its
                ``query`` calls them on a classifier's probabilities: ``uncertainty_scores`` then
                ``simple_batch`` (``b`` arg-max passes over the n utilities, which keeps a
                (b, n) float64 copy: skipped above ``FASTAL_BENCH_MEM_GB``, default 8). No BALD
                from probabilities (its BALD refits an ensemble).
``baal``        baal's ``BALD().get_ranks`` on (n, C, T); BALD only.

``extra_info``: sizes, ``seconds`` (best of the rounds), ``overlap_with_fastal`` (picks in common)
and, for the peers, ``ratio_to_fastal`` (their time over fastal's). Sizes by ``FASTAL_BENCH``: tiny
(n = 3,000, C = 10, T = 5; CI), medium (n = 100k, C in {10, 100}, T = 20), full (medium plus
n = 1M at C = 10). Peers that are not installed are skipped.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

PRESET = os.environ.get("FASTAL_BENCH", "tiny").strip().lower() or "tiny"
#: (n, C, T, budget)
CASES = {
    "tiny": [(3000, 10, 5, 100)],
    "medium": [(100_000, 10, 20, 1000), (100_000, 100, 20, 1000)],
    "full": [(100_000, 10, 20, 1000), (100_000, 100, 20, 1000), (1_000_000, 10, 20, 1000)],
}[PRESET]
METHODS = ("entropy", "margin", "least_confidence", "bald")
IMPLS = ("fastal", "torch", "small_text", "skactiveml", "baal")
MEM_BYTES = float(os.environ.get("FASTAL_BENCH_MEM_GB", "8")) * 2**30
_TIMES: dict = {}
_PICKS: dict = {}


def make_probs(shape: tuple[int, ...], seed: tuple[int, ...]) -> np.ndarray:
    """float32 softmax over the last axis of ``3 * N(0, 1)`` logits."""
    import torch

    logits = 3 * np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    return torch.softmax(torch.from_numpy(logits), -1).numpy()


def torch_scores(method: str, p):
    """Higher is picked first."""
    import torch

    if method == "entropy":
        return -(p * torch.log(p)).sum(1)
    if method == "margin":
        top2 = p.topk(2, dim=1).values
        return top2[:, 1] - top2[:, 0]
    if method == "least_confidence":
        return -p.max(1).values
    mean = p.mean(0)  # bald: p is (T, n, C)
    return -(mean * torch.log(mean)).sum(1) + (p * torch.log(p)).sum(2).mean(0)


class _StoredClassifier:
    """What small-text's strategies call: ``predict_proba`` returns the stored probabilities."""

    def __init__(self, probs: np.ndarray, mc: np.ndarray | None = None) -> None:
        self.probs, self.mc = probs, mc

    def predict_proba(self, _dataset, dropout_sampling: int = 1):
        return self.mc if dropout_sampling > 1 else self.probs


def small_text_runner(method: str, P: np.ndarray, T: int, budget: int):
    qs = pytest.importorskip("small_text.query_strategies")
    n = P.shape[1] if method == "bald" else P.shape[0]
    if method == "bald":
        clf = _StoredClassifier(None, np.ascontiguousarray(P.transpose(1, 0, 2)))  # (n, T, C)
        strategy = qs.BALD(dropout_samples=T)
    else:
        strategy = {"entropy": qs.PredictionEntropy, "margin": qs.BreakingTies,
                    "least_confidence": qs.LeastConfidence}[method]()  # fmt: skip
        clf = _StoredClassifier(P)
    unlabeled, labeled = np.arange(n), np.empty(0, dtype=np.int64)
    return lambda: np.asarray(strategy.query(clf, None, unlabeled, labeled, None, n=budget))


def skactiveml_runner(method: str, P: np.ndarray, budget: int):
    sampling = pytest.importorskip("skactiveml.pool._uncertainty_sampling")
    utils = pytest.importorskip("skactiveml.utils")
    if budget * P.shape[0] * 8 > MEM_BYTES:
        pytest.skip(f"skactiveml: simple_batch keeps a ({budget}, {P.shape[0]}) float64 copy")
    name = {"entropy": "entropy", "margin": "margin_sampling",
            "least_confidence": "least_confident"}[method]  # fmt: skip

    def run():
        with np.errstate(divide="ignore"):  # as UncertaintySampling.query
            utilities = sampling.uncertainty_scores(probas=P, method=name)
        return utils.simple_batch(utilities, 0, batch_size=budget)

    return run


def baal_runner(P: np.ndarray, budget: int):
    heuristics = pytest.importorskip("baal.active.heuristics")
    ncT = np.ascontiguousarray(P.transpose(1, 2, 0))  # baal reads (n, C, T)
    bald = heuristics.BALD()
    return lambda: np.asarray(bald.get_ranks(ncT)[0][:budget])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("n", "C", "T", "budget"), CASES, ids=[f"n{n}-C{C}-T{T}-b{b}" for n, C, T, b in CASES]
)
def test_uncertainty(benchmark, impl, method, n, C, T, budget):
    import torch

    import fastal.strategies

    bald = method == "bald"
    benchmark.group = f"uncertainty/cpu/{method}/n={n}/C={C}" + (f"/T={T}" if bald else "")
    if impl == "baal" and not bald:
        pytest.skip("baal: BALD only here")
    if impl == "skactiveml" and bald:
        pytest.skip("skactiveml: its BALD refits an ensemble; no BALD from probabilities")
    P = make_probs((T, n, C) if bald else (n, C), (n, C, T if bald else 1))
    if impl == "fastal":
        cls = {"entropy": fastal.strategies.Entropy, "margin": fastal.strategies.Margin,
               "least_confidence": fastal.strategies.LeastConfidence,
               "bald": fastal.strategies.BALD}[method]  # fmt: skip
        pool = {"mc_probs" if bald else "probs": P}

        def run():
            return np.asarray(cls().select(pool, budget).indices)

    elif impl == "torch":
        Pt = torch.from_numpy(P)

        def run():
            return torch_scores(method, Pt).topk(budget).indices.numpy()

    elif impl == "small_text":
        run = small_text_runner(method, P, T, budget)
    elif impl == "skactiveml":
        run = skactiveml_runner(method, P, budget)
    else:
        run = baal_runner(P, budget)

    picks = benchmark.pedantic(run, rounds=3, iterations=1)
    key = (method, n, C, T, budget)
    seconds = benchmark.stats.stats.min if benchmark.stats else float("nan")
    _TIMES[(key, impl)], _PICKS[(key, impl)] = seconds, picks
    assert np.unique(picks).size == budget
    benchmark.extra_info.update(
        method=method, n=n, C=C, T=T, budget=budget, impl=impl, seconds=seconds
    )
    if impl != "fastal" and (key, "fastal") in _TIMES:
        benchmark.extra_info["ratio_to_fastal"] = seconds / _TIMES[(key, "fastal")]
        common = np.intersect1d(picks, _PICKS[(key, "fastal")]).size
        benchmark.extra_info["overlap_with_fastal"] = int(common)
