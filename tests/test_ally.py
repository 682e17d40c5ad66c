"""ALLY: the per-cluster pick against a brute-force reference, the dual regression head, the
strategy from arrays and from a torch model, the loop (classification and regression), the
generative mode, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

import fastal
from fastal import strategies
from fastal.ally import backbone, fit_dual_head, maximize_dual, pick_per_cluster
from fastal.pdcl import PrimalDualTrainer
from fastal.strategies import ALLY


def pick_per_cluster_ref(clusters, scores, budget):
    """Round by round: every cluster offers its best row not yet taken (score desc, index asc);
    a round is taken whole while the budget lasts, else its best offers (score desc, index asc)."""
    clusters, scores = list(clusters), list(scores)
    taken: list[int] = []
    members = {c: sorted((i for i in range(len(scores)) if clusters[i] == c),
                         key=lambda i: (-scores[i], i)) for c in set(clusters)}  # fmt: skip
    rnd = 0
    while len(taken) < budget:
        offers = sorted((m[rnd] for m in members.values() if len(m) > rnd),
                        key=lambda i: (-scores[i], i))  # fmt: skip
        taken += offers[: budget - len(taken)]
        rnd += 1
    return taken


@pytest.mark.parametrize("case", range(40))
def test_pick_per_cluster_matches_the_reference(case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(1, 40))
    k = int(rng.integers(1, n + 1))
    clusters = rng.integers(0, k, n)
    scores = rng.integers(0, 5, n).astype(float) if case % 2 else rng.normal(size=n)  # ties
    budget = int(rng.integers(0, n + 1))
    got = pick_per_cluster(clusters, scores, budget)
    assert got.tolist() == pick_per_cluster_ref(clusters, scores, budget)
    counts = np.bincount(clusters[got], minlength=k)
    sizes = np.bincount(clusters, minlength=k)
    # equity: clusters with rows left differ by at most one, and none has more than one above them
    left = counts[counts < sizes]
    if left.size:
        assert left.max() - left.min() <= 1
        assert counts.max() <= left.min() + 1


def test_pick_per_cluster_argument_checks():
    with pytest.raises(ValueError, match="1-D of one length"):
        pick_per_cluster([0, 1], [0.5], 1)
    with pytest.raises(ValueError, match="budget"):
        pick_per_cluster([0, 1], [0.5, 0.1], 3)
    with pytest.raises(ValueError, match="NaN"):
        pick_per_cluster([0, 1], [np.nan, 0.1], 1)
    # cluster labels 0.7 and 1.2 were truncated to clusters 0 and 1
    with pytest.raises(TypeError, match=r"^clusters must hold integer cluster labels, got dtype "
                       r"float64$"):  # fmt: skip
        pick_per_cluster([0.7, 1.2], [0.5, 0.1], 1)
    with pytest.raises(TypeError, match=r"^scores must hold real numbers, got dtype <U1$"):
        pick_per_cluster([0, 1], ["a", "b"], 1)
    assert pick_per_cluster([], [], 0).tolist() == []  # numpy makes [] float64: still no clusters
    want = pick_per_cluster([0, 1, 1], [0.5, 0.1, 0.3], 2).tolist()
    for budget in (np.array(2), torch.tensor(2)):  # 0-d integers, as every budget takes
        assert pick_per_cluster([0, 1, 1], [0.5, 0.1, 0.3], budget).tolist() == want
    with pytest.raises(ValueError, match="budget"):
        pick_per_cluster([0, 1], [0.5, 0.1], np.array(1.0))


def _pool(n=300, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4, size=(5, d))
    X = (centres[rng.integers(0, 5, n)] + rng.normal(size=(n, d))).astype(np.float32)
    return X


@pytest.mark.parametrize("backend", ["numpy", "torch-cpu"])
def test_one_pick_per_cluster_the_argmax_of_the_predictions(backend):
    X = _pool()
    labeled = np.arange(0, 300, 7)
    pred = np.random.default_rng(1).gamma(1.0, size=300)
    pool = {"features": X if backend == "numpy" else torch.from_numpy(X), "dual_predictions": pred}
    sel = ALLY().select(pool, 12, labeled, seed=3)
    picks = sel.indices if backend == "numpy" else sel.indices.numpy()
    assert isinstance(sel.indices, np.ndarray if backend == "numpy" else torch.Tensor)
    rest = np.setdiff1d(np.arange(300), labeled)
    clusters = sel.diagnostics["clusters"]
    assert clusters.shape == rest.shape
    assert np.unique(clusters).size == 12
    assert picks.size == 12
    assert np.unique(picks).size == 12
    assert not np.isin(picks, labeled).any()
    for c in range(12):
        members = rest[clusters == c]
        best = members[np.argmax(pred[members])]  # first maximum: lowest index on ties
        assert np.isin(best, picks)
        assert np.isin(picks, members).sum() == 1
    # The clusters are the k-means partition: every candidate is nearest its own cluster's mean.
    means = np.stack([X[rest][clusters == c].mean(0) for c in range(12)]).astype(np.float64)
    d2 = ((X[rest][:, None, :].astype(np.float64) - means[None]) ** 2).sum(-1)
    assert (d2[np.arange(rest.size), clusters] <= d2.min(1) + 1e-3).all()


def test_bfloat16_duals_and_predictions_count_as_their_float32_values():
    X = torch.from_numpy(_pool())
    labeled = np.arange(0, 300, 7)
    pred = torch.from_numpy(np.random.default_rng(4).gamma(1.0, size=300)).bfloat16()
    duals = torch.from_numpy(np.abs(_pool()[labeled, 0])).bfloat16()
    for key, value in (("dual_predictions", pred), ("duals", duals)):
        picks = [
            ALLY(head_steps=20).select({"features": X, key: v}, 8, labeled, seed=0).indices
            for v in (value, value.float())
        ]
        np.testing.assert_array_equal(picks[0].numpy(), picks[1].numpy())


def test_fewer_clusters_than_budget_share_the_budget_equally():
    X = _pool()
    pred = np.random.default_rng(2).random(300)
    sel = ALLY(n_clusters=4).select({"features": X, "dual_predictions": pred}, 10, None, seed=0)
    counts = np.bincount(sel.diagnostics["clusters"][sel.indices], minlength=4)
    assert sorted(counts.tolist()) == [2, 2, 3, 3]
    assert sel.diagnostics["n_clusters"] == 4


def test_more_clusters_than_budget_are_lowered_to_the_budget():
    X = _pool()
    pred = np.random.default_rng(2).random(300)
    pool = {"features": X, "dual_predictions": pred}
    sel = ALLY(n_clusters=8).select(pool, 3, None, seed=0)
    assert sel.diagnostics["n_clusters"] == 3
    clusters = sel.diagnostics["clusters"]
    assert clusters.max() == 2
    assert sorted(clusters[sel.indices].tolist()) == [0, 1, 2]  # one pick per cluster
    # the same as asking for the budget's k
    assert_array_equal(sel.indices, ALLY(n_clusters=3).select(pool, 3, None, seed=0).indices)


def test_dual_head_learns_the_duals():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5)).astype(np.float32)
    lam = np.maximum(X[:, 0] + 0.5 * X[:, 1], 0) * 3
    head = fit_dual_head(X[:300], lam[:300], steps=400, seed=0)
    pred = head.predict(X[300:])
    assert (pred >= 0).all()
    assert np.corrcoef(pred, lam[300:])[0, 1] > 0.8
    again = fit_dual_head(X[:300], lam[:300], steps=400, seed=0).predict(X[300:])
    assert_array_equal(pred, again)  # seeded


def _data(m=32, d=5, seed=0):
    rng = np.random.default_rng(seed)
    H = rng.normal(size=(m, d)) * np.array([1.0, 2.0, 0.5, 3.0, 1.0]) + 4.0
    lam = np.abs(H[:, 0] - 4.0) + 0.1
    return H, lam


def test_dual_head_standardises_by_one_rms_scale():
    H, lam = _data()
    head = fit_dual_head(H, lam, steps=5, seed=0)
    assert_allclose(head.mean.numpy(), H.mean(0), rtol=1e-6)
    rms = np.sqrt(H.var(0).mean())
    assert_allclose(head.std.numpy(), np.full(H.shape[1], rms), rtol=1e-6)


def test_dual_head_predictions_are_in_the_duals_units():
    H, lam = _data()
    a = fit_dual_head(H, lam, steps=50, seed=0)
    b = fit_dual_head(H, 10.0 * lam, steps=50, seed=0)
    assert b.scale == 10.0 * a.scale == 10.0 * lam.max()
    pa, pb = a.predict(H), b.predict(H)
    assert_allclose(pb, 10.0 * pa, rtol=1e-5)
    x = torch.as_tensor(H[:4], dtype=torch.float32)
    assert_allclose(a.forward(x).detach().numpy(), pa[:4], rtol=1e-6)
    assert pa.max() > 0.1 * lam.max()  # in λ's units, not divided by max λ


def test_a_unit_no_labeled_row_activates_does_not_pin_the_pool_to_zero():
    """ReLU embeddings: unit 3 is 0 on every labeled row and 0.05 on a tenth of the pool. With
    per-column standard deviations (floored at 1e-6) those rows reached the head at ~5e4 and were
    all predicted 0; one scale for every column keeps them in the range of the others."""
    rng = np.random.default_rng(0)
    n, m = 500, 30
    H = np.maximum(rng.normal(size=(n, 16)), 0).astype(np.float32)
    H[:m, 3] = 0.0
    H[m:, 3] = np.where(rng.random(n - m) < 0.1, 0.05, 0.0)
    head = fit_dual_head(H[:m], 2 * H[:m, 0], steps=500, seed=0)
    pred, active = head.predict(H[m:]), H[m:, 3] > 0
    assert np.median(pred[active]) > 0.5 * np.median(pred[~active]) > 0
    assert np.unique(head.std.numpy()).size == 1  # one scale for every column
    assert np.corrcoef(pred, H[m:, 0])[0, 1] > 0.3  # still the dual's own signal (30 rows)


def test_all_zero_duals_train_no_head_and_still_select():
    X = _pool()
    labeled = np.arange(30)
    with pytest.warns(UserWarning, match="every dual variable is 0"):
        sel = ALLY().select({"features": X, "duals": np.zeros(30)}, 5, labeled, seed=0)
    assert sel.diagnostics["all_duals_zero"] is True
    assert sel.diagnostics["random_within_clusters"] is True
    rest = np.arange(30, 300)
    clusters = sel.diagnostics["clusters"]
    assert sorted(clusters[np.searchsorted(rest, sel.indices)].tolist()) == list(range(5))
    # seeded; that the member is random, not each cluster's lowest index (the paper: like random
    # sampling), is test_equal_predictions_pick_a_random_member_of_each_cluster's
    pool = {"features": X, "dual_predictions": np.ones(300)}
    first = ALLY().select(pool, 5, labeled, seed=0).indices.tolist()
    assert ALLY().select(pool, 5, labeled, seed=0).indices.tolist() == first


def test_equal_predictions_pick_a_random_member_of_each_cluster():
    X = _pool()
    labeled = np.arange(30)
    rest = np.arange(30, 300)
    lowest = []
    for seed in range(4):
        pool = {"features": X, "dual_predictions": np.ones(300)}
        sel = ALLY().select(pool, 5, labeled, seed=seed)
        assert sel.diagnostics["random_within_clusters"] is True
        clusters = sel.diagnostics["clusters"]
        firsts = sorted(int(rest[clusters == c].min()) for c in range(5))
        lowest.append(sorted(sel.indices.tolist()) == firsts)
    assert not all(lowest)


def test_duals_given_picks_high_dual_regions():
    # λ* is large for one blob of the labeled points; the picks should lean towards it.
    X = _pool(n=600, seed=4)
    labeled = np.arange(0, 600, 3)
    lam = np.where(X[labeled, 0] > np.median(X[:, 0]), 2.0, 0.0)
    sel = ALLY(n_clusters=5, head_steps=300).select(
        {"features": X, "duals": lam}, 20, labeled, seed=0
    )
    assert sel.diagnostics["max_dual"] == 2.0
    assert (X[sel.indices, 0] > np.median(X[:, 0])).mean() > 0.7


def _mlp(d_in=6, out=3):
    return torch.nn.Sequential(torch.nn.Linear(d_in, 16), torch.nn.ReLU(), torch.nn.Linear(16, out))


def test_through_the_torch_adapter_with_a_primal_dual_trained_model():
    X = torch.from_numpy(_pool())
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    labeled = np.arange(0, 300, 5)
    ally = ALLY(trainer=PrimalDualTrainer(iterations=20), head_steps=100)
    torch.manual_seed(0)
    model = ally.train_fn(
        _mlp(),
        torch.utils.data.TensorDataset(X[labeled], y[labeled]),
        task="classification",
        seed=0,
    )
    sel = fastal.torch.select(ally, model, X, 8, labeled, seed=1, progress=False)
    picks = sel.indices.numpy()
    assert np.unique(picks).size == 8
    assert not np.isin(picks, labeled).any()
    assert ally.head_ is not None
    assert "pool_seconds" in sel.diagnostics
    # explicit duals= override the model's
    sel2 = fastal.torch.select(ally, _mlp(), X, 8, labeled, seed=1, progress=False,
                               duals=model.fastal_duals.numpy())  # fmt: skip
    assert sel2.indices.shape == (8,)
    with pytest.raises(ValueError, match="PrimalDualTrainer"):
        fastal.torch.select(ally, _mlp(), X, 8, labeled, progress=False)
    with pytest.raises(ValueError, match="for 60 labeled rows but labeled has 59"):
        fastal.torch.select(ally, model, X, 8, labeled[:-1], progress=False)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_loop_trains_with_the_primal_dual_trainer(task, tmp_path):
    X = _pool(n=200)
    if task == "classification":
        y = (X[:, 0] > X[:, 1]).astype(np.int64)
        out = 2
    else:
        y = (X[:, 0] - 0.5 * X[:, 2]).astype(np.float32)
        out = 1
    ally = ALLY(trainer=PrimalDualTrainer(iterations=15), head_steps=50)
    res = fastal.loop.run(
        (X[:150], y[:150]), (X[150:], y[150:]), model_fn=lambda: _mlp(out=out), strategy=ally,
        initial=20, budget=10, rounds=2, task=task, seed=0, checkpoint=tmp_path / "state.npz",
    )  # fmt: skip
    assert res.strategy == "ally"
    assert len(res.rows) == 3
    assert res.labeled.size == 40
    assert np.unique(res.labeled).size == 40
    assert np.isfinite(res.values).all()
    assert ally.trainer.duals_.shape == (40,)  # the last training saw every label


def test_registered_and_requires_duals():
    assert strategies.get("ally") is ALLY
    assert fastal.ally.pick_per_cluster is pick_per_cluster  # fastal.ally loads on access
    assert fastal.torch.needs_of("ally") == ("features", "duals")


def test_generative_mode_raises_the_predicted_dual():
    torch.manual_seed(0)
    model = _mlp(d_in=2)
    X = torch.randn(128, 2)
    embed = backbone(model)
    with torch.no_grad():
        feats = embed(X)
    head = fit_dual_head(feats, X[:, 0].abs() + X[:, 1].clamp_min(0), steps=300)
    x0 = torch.zeros(8, 2)
    x, trace = maximize_dual(embed, head, x0, steps=60, lr=0.05, bounds=(-1.5, 1.5))
    assert trace.shape == (61,)
    assert trace[-1] > trace[0]
    assert (x.abs() <= 1.5).all()
    assert (x0 == 0).all()
    assert all(p.grad is None for p in model.parameters())
    assert model.training  # flags restored


@pytest.mark.parametrize(
    ("pool", "labeled", "budget", "match"),
    [
        ({"features": "X"}, [0, 1], 3, "dual variables"),
        ({"features": "X", "duals": np.ones(3)}, [0, 1], 3, r"one value per labeled row \(2\)"),
        ({"features": "X", "duals": np.array([1.0, np.nan])}, [0, 1], 3, "NaN"),
        ({"features": "X", "duals": np.array([1.0, -1.0])}, [0, 1], 3, "non-negative"),
        ({"features": "X", "dual_predictions": np.ones(5)}, [0, 1], 3, r"one value per pool row"),
        ({"features": "X", "duals": np.ones(2)}, [0, 1], 99, "larger than the unlabeled pool"),
        ({"features": "X", "duals": np.ones(2)}, [0, 0], 3, "labeled"),
        ({"duals": np.ones(2)}, [0, 1], 3, "features"),
    ],
)
def test_bad_input(pool, labeled, budget, match):
    X = _pool(n=40)
    pool = {k: (X if isinstance(v, str) else v) for k, v in pool.items()}
    with pytest.raises(ValueError, match=match):
        ALLY(head_steps=5).select(pool, budget, labeled, seed=0)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="n_clusters"):
        ALLY(n_clusters=0)
    with pytest.raises(ValueError, match="steps"):
        fit_dual_head(np.ones((4, 2)), np.ones(4), steps=0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"head_steps": 0}, "^head_steps must be a positive integer, got 0"),
        ({"head_layers": -1}, "^head_layers must be a positive integer, got -1"),
        ({"head_hidden": 0}, "^head_hidden must be a positive integer"),
        ({"head_lr": -1.0}, r"^head_lr must be > 0, got -1.0"),
        ({"head_lr": float("nan")}, "^head_lr must be finite"),
        ({"kmeans_iter": 0}, "^kmeans_iter must be a positive integer"),
        ({"kmeans_minibatch": -3}, "^kmeans_minibatch must be a positive integer"),
    ],
)
def test_head_and_kmeans_arguments_are_checked_at_construction(kw, match):
    """Checked by the constructor (not at select), named as the constructor names them."""
    with pytest.raises(ValueError, match=match):
        ALLY(**kw)


def test_progress_bar_over_the_kmeans_iterations(capsys):
    X = _pool(n=120)
    labeled = np.arange(20)
    duals = np.abs(X[labeled, 0]).astype(np.float64)
    kw = {"head_steps": 20, "kmeans_iter": 7}
    want = ALLY(**kw).select({"features": X, "duals": duals}, 6, labeled, seed=0)
    got = ALLY(progress=True, **kw).select({"features": X, "duals": duals}, 6, labeled, seed=0)
    assert "k-means" in capsys.readouterr().err
    assert np.array_equal(got.indices, want.indices)
    with pytest.raises(TypeError, match="progress must be a bool"):
        ALLY(progress=1)


def test_dual_head_learning_rate_is_checked():
    with pytest.raises(ValueError, match=r"^lr must be > 0"):
        fit_dual_head(np.ones((4, 2)), np.ones(4), lr=-1.0)
    with pytest.raises(ValueError, match=r"^weight_decay must be >= 0"):
        fit_dual_head(np.ones((4, 2)), np.ones(4), weight_decay=-0.1)


def test_overflowing_features_name_features():
    X = _pool(n=60) * np.float32(1e20)
    with pytest.raises(ValueError, match="distances between rows of features overflow float32"):
        ALLY(head_steps=5).select({"features": X, "dual_predictions": np.ones(60)}, 3, seed=0)


def test_select_from_the_shell(tmp_path, capsys):
    from fastal import cli

    X = _pool(n=120)
    np.save(tmp_path / "emb.npy", X)
    np.save(tmp_path / "lab.npy", np.arange(20))
    np.save(tmp_path / "lam.npy", np.abs(X[:20, 0]))
    args = ["select", "--strategy", "ally", "--embeddings", str(tmp_path / "emb.npy"),
            "--labeled", str(tmp_path / "lab.npy"), "--budget", "6"]  # fmt: skip
    out = str(tmp_path / "picks.npy")
    assert cli.main([*args, "--duals", str(tmp_path / "lam.npy"), "--out", out]) == 0
    picks = np.load(out)
    assert picks.shape == (6,)
    assert np.unique(picks).size == 6
    assert picks.min() >= 20
    with pytest.raises(SystemExit, match="--duals or --dual-predictions"):
        cli.main(args)


def test_nan_features_are_named_not_blamed_on_the_duals():
    X = _pool()
    for row in (200, 3):  # unlabeled, labeled
        bad = X.copy()
        bad[row, 1] = np.nan
        message = f"^features contains NaN or Inf in 1 row\\(s\\), first at row {row}$"
        with pytest.raises(ValueError, match=message):
            ALLY().select({"features": bad, "duals": np.ones(30)}, 5, np.arange(30), seed=0)


def test_maximize_dual_on_a_zero_head_and_on_no_head():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    X = torch.randn(32, 4)
    embed = backbone(model)
    with torch.no_grad():
        head = fit_dual_head(embed(X), torch.zeros(32))
    assert head.net is None
    x_new, trace = maximize_dual(embed, head, X[:4], steps=5)
    torch.testing.assert_close(x_new, X[:4])
    assert trace.tolist() == [0.0] * 6
    with pytest.raises(TypeError, match="head must be a DualRegressor"):
        maximize_dual(embed, None, X[:4], steps=5)


def test_maximize_dual_checks_lr_and_bounds():
    """bounds = (1, 0) was accepted (every input clamped to 1, then 0) and lr = -1 reached Adam."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    embed = backbone(model)
    X = torch.randn(16, 2)
    with torch.no_grad():
        head = fit_dual_head(embed(X), X[:, 0].abs(), steps=5)
    with pytest.raises(ValueError, match=r"^bounds must be \(low, high\) with low <= high, got "
                       r"\(1, 0\)$"):  # fmt: skip
        maximize_dual(embed, head, torch.zeros(2, 2), steps=2, bounds=(1, 0))
    with pytest.raises(ValueError, match=r"^lr must be > 0, got -1.0$"):
        maximize_dual(embed, head, torch.zeros(2, 2), steps=2, lr=-1.0)
    x, _ = maximize_dual(embed, head, torch.zeros(2, 2), steps=2, bounds=(-0.5, 0.5))
    assert float(x.abs().max()) <= 0.5


def test_ally_trainer_must_be_callable():
    with pytest.raises(TypeError, match=r"^trainer must be a PrimalDualTrainer .* got int$"):
        ALLY(trainer=5)


def test_a_callers_autocast_does_not_reach_the_dual_head():
    """Under torch.autocast("cpu", bfloat16) the head trained in bfloat16: predicted λ up to
    4992 for targets in [0, 1] and 8 of 10 picks moved."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 16)).astype(np.float32)
    pool = {"features": X, "duals": rng.random(20).astype(np.float32)}
    want = strategies.ALLY().select(pool, 10, np.arange(20), seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = strategies.ALLY().select(pool, 10, np.arange(20), seed=0)
    assert_array_equal(got.indices, want.indices)
    assert got.diagnostics["predicted_dual_max"] == want.diagnostics["predicted_dual_max"]


def test_predicted_dual_diagnostics_are_the_predictions_not_the_tie_break():
    """With every λ 0 the picks are random members of the clusters; the diagnostics reported the
    mean and max of those random draws (0.53, 0.997) as the head's predictions."""
    X = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    with pytest.warns(UserWarning, match="every dual variable is 0"):
        d = strategies.ALLY().select({"features": X, "duals": np.zeros(10)}, 5, np.arange(10),
                                     seed=0).diagnostics  # fmt: skip
    assert d["random_within_clusters"]
    assert (d["predicted_dual_mean"], d["predicted_dual_max"]) == (0.0, 0.0)
