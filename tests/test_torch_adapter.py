"""fastal.torch: the model adapter against hand-computed outputs of a tiny model."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import fastal.torch as ft
from fastal import strategies
from fastal.strategies import Selection, Strategy

N, D_IN, D_H, C = 10, 3, 4, 3


def weights():
    rng = np.random.default_rng(0)
    return {
        "W1": rng.normal(size=(D_H, D_IN)), "b1": rng.normal(size=D_H),
        "W2": rng.normal(size=(C, D_H)), "b2": rng.normal(size=C),
    }  # fmt: skip


class Tiny(nn.Module):
    """x -> relu(W1 x + b1) -> [dropout] -> W2 h + b2, counting forward calls of each part."""

    def __init__(self, dropout: float = 0.0, out: int = C) -> None:
        super().__init__()
        w = weights()
        self.body = nn.Linear(D_IN, D_H)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head = nn.Linear(D_H, out)
        with torch.no_grad():
            self.body.weight.copy_(torch.from_numpy(w["W1"]))
            self.body.bias.copy_(torch.from_numpy(w["b1"]))
            self.head.weight.copy_(torch.from_numpy(w["W2"][:out]))
            self.head.bias.copy_(torch.from_numpy(w["b2"][:out]))
        self.calls = {"model": 0, "head": 0}
        self.head.register_forward_hook(lambda *a: self._count("head"))

    def _count(self, key: str) -> None:
        self.calls[key] += 1

    def forward(self, x):
        self.calls["model"] += 1
        return self.head(self.drop(torch.relu(self.body(x))))


def inputs() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(N, D_IN)).astype(np.float32)


def reference(x: np.ndarray) -> dict[str, np.ndarray]:
    w = weights()
    h = np.maximum(x.astype(np.float64) @ w["W1"].T + w["b1"], 0)
    z = h @ w["W2"].T + w["b2"]
    p = np.exp(z - z.max(1, keepdims=True))
    return {"features": h, "logits": z, "probs": p / p.sum(1, keepdims=True)}


class XOnly(Dataset):
    def __init__(self, x):
        self.x = torch.from_numpy(x)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


class Stream(IterableDataset):
    def __init__(self, x):
        self.x = torch.from_numpy(x)

    def __iter__(self):
        return iter(self.x)


def as_data(kind: str, x: np.ndarray):
    y = torch.zeros(len(x), dtype=torch.int64)
    if kind == "tensor":
        return torch.from_numpy(x)
    if kind == "numpy":
        return x.astype(np.float64)  # cast to the model's float32 on the way in
    if kind == "dataset":
        return TensorDataset(torch.from_numpy(x), y)
    if kind == "x-dataset":
        return XOnly(x)
    if kind == "dataloader":
        return DataLoader(TensorDataset(torch.from_numpy(x), y), batch_size=3, shuffle=False)
    if kind == "iterable":
        return Stream(x)
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind", ["tensor", "numpy", "dataset", "x-dataset", "dataloader", "iterable"]
)
def test_features_logits_probs_match_hand_computation(kind):
    x = inputs()
    out = ft.pool_outputs(
        Tiny(), as_data(kind, x), ("features", "logits", "probs"), batch_size=4, progress=False
    )
    assert list(out) == ["features", "logits", "probs"]
    ref = reference(x)
    for key in out:
        assert out[key].dtype == torch.float32
        assert out[key].device.type == "cpu"
        assert_allclose(out[key].numpy(), ref[key], rtol=1e-5, atol=1e-6)


def test_only_what_was_asked_is_computed():
    x = torch.from_numpy(inputs())
    batches = 3  # 10 rows in batches of 4

    model = Tiny()
    out = ft.pool_outputs(model, x, ("features",), batch_size=4, progress=False)
    assert list(out) == ["features"]
    # the pass stops at the hooked layer, but on the first batch (it watches what follows)
    assert model.calls == {"model": batches, "head": 1}
    assert len(model.head._forward_pre_hooks) == 0  # hook removed

    model = Tiny()
    out = ft.pool_outputs(model, x, ("probs",), batch_size=4, progress=False)
    assert list(out) == ["probs"]
    assert model.calls == {"model": batches, "head": batches}

    model = Tiny()
    ft.pool_outputs(model, x, ("features", "logits", "probs"), batch_size=4, progress=False)
    assert model.calls == {"model": batches, "head": batches}  # one pass gives all three

    model = Tiny(dropout=0.5)
    out = ft.pool_outputs(model, x, ("mc_probs",), batch_size=4, mc_samples=5, progress=False)
    assert list(out) == ["mc_probs"]
    assert model.calls["model"] == 5 * batches

    model = Tiny(dropout=0.5)
    ft.pool_outputs(model, x, ("probs", "mc_probs"), batch_size=4, mc_samples=5, progress=False)
    assert model.calls["model"] == 6 * batches


@pytest.fixture
def hook_calls(monkeypatch) -> list:
    """The modules whose forward pre-hooks (the feature hook) fire, in order."""
    fired = []
    real = nn.Module.register_forward_pre_hook

    def spy(self, hook, *args, **kwargs):
        def counted(module, *inp):  # (args) or (args, kwargs) with with_kwargs=True
            fired.append(module)
            return hook(module, *inp)

        return real(self, counted, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "register_forward_pre_hook", spy)
    return fired


def test_feature_hook_fires_once_per_batch_and_only_when_asked(hook_calls):
    fired = hook_calls
    model = Tiny()
    x = torch.from_numpy(inputs())
    ft.pool_outputs(model, x, ("logits",), batch_size=4, progress=False)
    assert fired == []
    ft.pool_outputs(model, x, ("features", "logits"), batch_size=4, progress=False)
    assert fired == [model.head] * 3


def subsets(keys):
    return [c for r in range(1, len(keys) + 1) for c in itertools.combinations(keys, r)]


@pytest.mark.parametrize(
    ("task", "needs"),
    [("classification", c) for c in subsets(ft.NEEDS["classification"])]
    + [("regression", c) for c in subsets(ft.NEEDS["regression"])],
)
def test_every_combination_of_needs_equals_the_separate_calls(task, needs):
    # audit §3: "features" with "mc_probs" leaked _StopForward, and with "probs" too the feature
    # hook tripped on the Monte-Carlo passes ("the feature layer ran more than once")
    x = torch.from_numpy(inputs())
    batches, T = 3, 5  # 10 rows in batches of 4
    opts = dict(task=task, batch_size=4, mc_samples=T, seed=0, progress=False)
    model = Tiny(dropout=0.5, out=C if task == "classification" else 1)
    model.drop.eval()  # a mix of flags, to see them restored
    out = ft.pool_outputs(model, x, needs, **opts)
    assert list(out) == list(needs)
    assert len(model.head._forward_pre_hooks) == 0  # hook removed
    assert [m.training for m in model.modules()] == [True, True, False, True]
    mc = any(k.startswith("mc_") for k in needs)
    head = any(k in ("logits", "probs", "outputs") for k in needs)
    deterministic = head or "features" in needs
    # one deterministic pass (it stops at the head when only features are asked, but on the
    # first batch, whose pass runs through to watch what follows the layer), T MC passes
    assert model.calls == {
        "model": batches * (deterministic + T * mc),
        "head": batches * (head + T * mc) + ("features" in needs and not head),
    }
    for key in needs:
        alone = ft.pool_outputs(Tiny(dropout=0.5, out=model.head.out_features), x, (key,), **opts)
        assert_array_equal(out[key].numpy(), alone[key].numpy(), err_msg=key)  # seeded: same masks
    ref = reference(inputs())
    if "features" in out:
        assert_allclose(out["features"].numpy(), ref["features"], rtol=1e-5, atol=1e-6)
    for key in ("mc_probs", "mc_outputs"):
        if key in out:
            assert out[key].shape[:2] == (T, N)
            assert (np.ptp(out[key].numpy(), axis=0) > 0).any()  # dropout was on
    if "mc_probs" in out:
        p = out["mc_probs"].numpy()
        assert p.shape == (T, N, C)
        assert (p >= 0).all()
        assert (p <= 1).all()
        assert_allclose(p.sum(-1), 1, rtol=1e-5)


def test_feature_hook_is_off_during_the_mc_passes(hook_calls):
    fired = hook_calls
    x = torch.from_numpy(inputs())
    for needs in (("features", "mc_probs"), ("features", "probs", "mc_probs")):
        fired.clear()
        model = Tiny(dropout=0.5)
        ft.pool_outputs(model, x, needs, batch_size=4, mc_samples=5, progress=False)
        assert fired == [model.head] * 3  # once per batch: the deterministic pass only
        assert len(model.head._forward_pre_hooks) == 0


def test_select_with_features_and_mc_probs():
    x = torch.from_numpy(inputs())
    sel = ft.select("bald", Tiny(dropout=0.5), x, 3, labeled=[0], seed=0, mc_samples=5,
                    needs=("features", "probs", "mc_probs"), progress=False)  # fmt: skip
    alone = ft.select("bald", Tiny(dropout=0.5), x, 3, labeled=[0], seed=0, mc_samples=5,
                      progress=False)  # fmt: skip
    assert sel.indices.tolist() == alone.indices.tolist()


def test_embed_fn_and_feature_layer():
    x = torch.from_numpy(inputs())
    ref = reference(inputs())["features"]
    model = Tiny()
    out = ft.pool_outputs(
        model, x, ("features",), embed_fn=lambda m, b: torch.relu(m.body(b)), progress=False
    )
    assert_allclose(out["features"].numpy(), ref, rtol=1e-5, atol=1e-6)
    assert model.calls["model"] == 0  # embed_fn alone: the model's forward never runs
    out = ft.pool_outputs(Tiny(), x, ("features",), feature_layer="body", progress=False)
    assert_allclose(out["features"].numpy(), inputs(), rtol=1e-6)


def test_mc_dropout_passes_differ_and_their_mean_converges():
    x = torch.from_numpy(inputs()[:3])
    model = Tiny(dropout=0.5)
    with torch.no_grad():
        model.body.bias += 4.0  # every hidden unit active: each dropout mask changes the output
    model.train()  # the caller's mode must come back
    T = 4000
    out = ft.pool_outputs(model, x, ("probs", "mc_probs"), mc_samples=T, seed=0, progress=False)
    mc = out["mc_probs"].numpy().astype(np.float64)
    assert mc.shape == (T, 3, C)
    assert all(m.training for m in model.modules())
    assert_allclose(mc.sum(-1), 1, rtol=1e-5)
    assert (np.ptp(mc, axis=0).max(-1) > 0.05).all()  # the passes differ, on every row

    w = weights()
    h = np.maximum(inputs()[:3].astype(np.float64) @ w["W1"].T + w["b1"] + 4.0, 0)
    assert (h > 0).all()

    def softmax(z):
        p = np.exp(z - z.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)

    # deterministic probs: dropout off even though the model was in train mode
    assert_allclose(out["probs"].numpy(), softmax(h @ w["W2"].T + w["b2"]), rtol=1e-5)
    # exact expectation over the 2^4 dropout masks (keep probability 1/2, kept units scaled by 2)
    exact = np.zeros((3, C))
    for mask in itertools.product([0.0, 2.0], repeat=D_H):
        exact += softmax((h * np.array(mask)) @ w["W2"].T + w["b2"]) / 2**D_H
    stderr = mc.std(0) / np.sqrt(T)
    assert (np.abs(mc.mean(0) - exact) < 5 * stderr + 1e-6).all()
    assert not np.allclose(
        out["probs"].numpy(), exact, atol=1e-3
    )  # the MC mean is not the eval pass

    again = ft.pool_outputs(model, x, ("mc_probs",), mc_samples=50, seed=0, progress=False)[
        "mc_probs"
    ]
    assert_array_equal(again.numpy(), out["mc_probs"][:50].numpy())  # seeded
    other = ft.pool_outputs(model, x, ("mc_probs",), mc_samples=50, seed=1, progress=False)[
        "mc_probs"
    ]
    assert not torch.equal(other, again)


def _model(dropout: float) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 5))


def test_mc_samples_defaults_to_20_passes():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    out = ft.pool_outputs(_model(0.5), x, ("mc_probs",), batch_size=4, seed=0, progress=False)
    assert tuple(out["mc_probs"].shape) == (20, 6, 5)


def test_probs_of_a_bfloat16_model_are_the_float32_softmax_of_its_logits():
    model = _model(0.0).to(torch.bfloat16)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(2)) * 4
    out = ft.pool_outputs(model, x, ("logits", "probs"), batch_size=8, progress=False)
    assert out["logits"].dtype == out["probs"].dtype == torch.float32
    # the bfloat16 logits widen exactly to float32: the probabilities are their float32 softmax
    assert_array_equal(out["probs"].numpy(), torch.softmax(out["logits"], dim=1).numpy())


def test_regression_outputs():
    x = torch.from_numpy(inputs())
    ref = reference(inputs())
    out = ft.pool_outputs(
        Tiny(out=1), x, ("features", "outputs"), task="regression", batch_size=3, progress=False
    )
    assert out["outputs"].shape == (N, 1)
    assert_allclose(out["outputs"].numpy()[:, 0], ref["logits"][:, 0], rtol=1e-5, atol=1e-6)
    assert_allclose(out["features"].numpy(), ref["features"], rtol=1e-5, atol=1e-6)

    class Scalar(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = Tiny(out=1, dropout=0.5)

        def forward(self, x):
            return self.net(x)[:, 0]

    out = ft.pool_outputs(
        Scalar(), x, ("outputs", "mc_outputs"), task="regression", mc_samples=4, progress=False
    )
    assert out["outputs"].shape == (N,)
    assert out["mc_outputs"].shape == (4, N)
    with pytest.raises(ValueError, match="regression model cannot give"):
        ft.pool_outputs(Tiny(out=1), x, ("probs",), task="regression")


def test_select_names_the_strategy_whose_reads_a_regression_model_cannot_give():
    """It said "needs has 'probs'", naming an argument the caller never passed."""
    x = torch.from_numpy(inputs())
    message = (
        r"strategy 'entropy' reads 'probs', which a regression model cannot give "
        r"\(task='regression' gives 'features', 'outputs'"
    )
    with pytest.raises(ValueError, match=message):
        ft.select("entropy", Tiny(out=1), x, 2, task="regression", progress=False)
    with pytest.raises(ValueError, match="needs has 'probs'"):  # needs= given: named as before
        ft.select("entropy", Tiny(out=1), x, 2, needs=("probs",), task="regression")


def test_progress_bar_and_output_options(capsys):
    x = torch.from_numpy(inputs())
    out = ft.pool_outputs(Tiny(), x, ("logits",), dtype=torch.float64, progress=True)
    assert out["logits"].dtype == torch.float64
    assert "fastal pool pass" in capsys.readouterr().err


def test_refusals():
    x = torch.from_numpy(inputs())
    with pytest.raises(ValueError, match="dropout"):
        ft.pool_outputs(Tiny(), x, ("mc_probs",))
    with pytest.raises(ValueError, match="shuffle=False"):
        ft.pool_outputs(
            Tiny(), DataLoader(TensorDataset(x), batch_size=2, shuffle=True), ("probs",)
        )
    with pytest.raises(ValueError, match="drop_last"):
        ft.pool_outputs(
            Tiny(), DataLoader(TensorDataset(x), batch_size=3, drop_last=True), ("probs",)
        )
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        ft.pool_outputs(nn.Sequential(nn.ReLU()), x, ("features",))
    with pytest.raises(ValueError, match="cannot give"):
        ft.pool_outputs(Tiny(), x, ("embeddings",))
    with pytest.raises(ValueError, match="empty"):
        ft.pool_outputs(Tiny(), x[:0], ("probs",))
    with pytest.raises(TypeError, match="data must be"):
        ft.pool_outputs(Tiny(), object(), ("probs",))


def test_needs_of_follows_requires():
    expected = {
        "random": (), "entropy": ("probs",), "margin": ("probs",), "least_confidence": ("probs",),
        "bald": ("mc_probs",), "coreset": ("features",), "kmeans": ("features",),
        "badge": ("probs", "features"), "egl": ("probs", "features"),
        "sparse_approx": ("logits", "features"), "crc": ("features", "probs"),
        "ally": ("features", "duals"), "bilevel": ("logits", "features"),
        "robust_coreset": ("features",),
    }  # fmt: skip
    # "duals" comes from training (fastal.pdcl), not from a pass over the pool
    from_training = {"duals"}
    for name in strategies.available():
        assert ft.needs_of(name) == strategies.get(name).requires
        assert ft.needs_of(strategies.get(name)) == ft.needs_of(name)
        if name in expected:
            assert set(ft.needs_of(name)) == set(expected[name]), name
        assert set(ft.needs_of(name)) - from_training <= set(ft.NEEDS["classification"]), name


class Spy(Strategy):
    name = ""
    requires = ("logits", "features")

    def select(self, pool, budget, labeled=None, *, seed=None):
        self.pool = pool
        return Selection(np.arange(budget), {})


def test_select_computes_what_the_strategy_requires():
    x = torch.from_numpy(inputs())
    spy = Spy()
    ft.select(spy, Tiny(), x, 2, labeled=np.array([4, 7]), labels=np.array([1, 2]), progress=False)
    assert set(spy.pool) == {"logits", "features", "labeled_logits", "labeled_targets"}
    assert_allclose(
        spy.pool["labeled_logits"].numpy(), reference(inputs())["logits"][[4, 7]], rtol=1e-5
    )
    assert spy.pool["labeled_targets"].tolist() == [1, 2]

    model = Tiny()
    sel = ft.select("random", model, x, 3, labeled=[0, 1], seed=0)
    assert model.calls["model"] == 0  # random needs nothing from the model
    assert (
        sel.indices.tolist()
        == np.random.default_rng(0).choice(np.arange(2, N), 3, replace=False).tolist()
    )

    model = Tiny()
    sel = ft.select("entropy", model, x, 3, labeled=[0], progress=False)
    p = reference(inputs())["probs"]
    h = -(p * np.log(p)).sum(1)
    h[0] = -np.inf
    assert sel.indices.tolist() == np.argsort(-h, kind="stable")[:3].tolist()
    assert "pool_seconds" in sel.diagnostics


def test_select_checks_labeled_and_labels_before_indexing():
    # audit §7: an out-of-range index raised torch's IndexError, and a boolean mask was read
    # as 0/1 indices ("labels must have one entry per labeled row (60)")
    x = torch.from_numpy(inputs())
    for strategy in (Spy(), "sparse_approx"):
        model = Tiny()
        with pytest.raises(
            ValueError, match=r"labeled has indices out of range \[0, 10\): e.g. 100"
        ):
            ft.select(strategy, model, x, 2, labeled=[0, 1, 100], labels=[0, 1, 2], progress=False)
        assert model.calls["model"] == 0  # refused before the pool pass
        mask = np.zeros(N, dtype=bool)
        mask[[0, 1, 2]] = True
        for labeled in (mask, torch.from_numpy(mask)):
            with pytest.raises(
                TypeError, match="labeled must hold integer indices, got a boolean mask"
            ):
                ft.select(strategy, model, x, 2, labeled=labeled, labels=[0, 1, 2], progress=False)
        with pytest.raises(ValueError, match=r"labels must have one entry per labeled row \(3\)"):
            ft.select(strategy, model, x, 2, labeled=[0, 1, 2], labels=[0, 1], progress=False)
        with pytest.raises(ValueError, match=r"labels must have one entry per labeled row \(3\)"):
            ft.select(strategy, model, x, 2, labeled=[0, 1, 2], labels=[[0, 1, 2]], progress=False)
        with pytest.raises(ValueError, match="labeled has duplicate indices"):
            ft.select(strategy, model, x, 2, labeled=[0, 0], labels=[0, 1], progress=False)
        assert model.calls["model"] == 0
    # the mask as indices works, and gives what the indices give
    spy = Spy()
    ft.select(spy, Tiny(), x, 2, labeled=np.flatnonzero(mask), labels=[0, 1, 2], progress=False)
    assert_allclose(
        spy.pool["labeled_logits"].numpy(), reference(inputs())["logits"][:3], rtol=1e-5
    )
    # a pool of unknown size (an IterableDataset) is checked right after its pass
    with pytest.raises(ValueError, match=r"labeled has indices out of range \[0, 10\)"):
        ft.select(
            Spy(), Tiny(), Stream(inputs()), 2, labeled=[0, 100], labels=[0, 1], progress=False
        )
    spy = Spy()
    ft.select(spy, Tiny(), Stream(inputs()), 2, labeled=[4, 7], labels=[1, 2], progress=False)
    assert spy.pool["labeled_targets"].tolist() == [1, 2]


def test_fastal_torch_does_not_shadow_torch():
    import importlib

    import fastal
    import fastal.ntk

    assert torch.__name__ == "torch"
    assert torch.__file__ != ft.__file__
    assert importlib.import_module("torch") is torch
    assert fastal.torch is ft  # also reachable as an attribute
    out = fastal.ntk.ntk_features(
        torch.ones(2, 3), 4
    )  # a fastal module doing `import torch` inside
    assert isinstance(out, torch.Tensor)


# ---------------------------------------------------------------------------------------------
# Sparse Approximation end to end from a model: both solvers, both forms, and an ensemble

SA_N, SA_D, SA_H, SA_C, SA_BUDGET = 150, 5, 16, 4, 8


class DropoutMLP(nn.Module):
    """x -> relu(Linear) -> Dropout(0.3) -> Linear: MC dropout samples, last-layer features."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():  # the weights from `seed`, the global RNG left alone
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Linear(SA_D, SA_H), nn.ReLU(), nn.Dropout(0.3), nn.Linear(SA_H, SA_C)
            )

    def forward(self, x):
        return self.net(x)


def sa_pool() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Pool inputs, the labeled rows and their labels."""
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.normal(size=(SA_N, SA_D)).astype(np.float32))
    labeled = np.arange(0, SA_N, 10)
    return x, labeled, rng.integers(0, SA_C, labeled.size)


def assert_same_selection(sel, expected) -> None:
    assert_array_equal(np.asarray(sel.indices), np.asarray(expected.indices))
    assert_array_equal(sel.diagnostics["weights"], expected.diagnostics["weights"])
    assert sel.diagnostics["objective"] == expected.diagnostics["objective"]
    for key in ("form", "solver", "alpha", "beta", "temperature"):
        assert sel.diagnostics[key] == expected.diagnostics[key], key


@pytest.mark.parametrize("form", ["factored", "bayesian"])
@pytest.mark.parametrize("solver", ["iht", "greedy"])
def test_sparse_approx_from_a_model_equals_the_array_call(solver, form):
    """``fastal.torch.select`` with ``SparseApprox`` on a dropout MLP picks exactly what the
    array-level strategy picks from the same outputs (``pool_outputs``, same MC seed):

    - factored (eq. 14): logits and features, with the labeled rows' logits and labels, on which
      the temperature is fitted (``"auto"``);
    - Bayesian (eq. 13): ``needs=("mc_probs",)``, 8 MC-dropout passes seeded by ``seed``.
    """
    from fastal import fit_temperature
    from fastal.strategies import SparseApprox

    x, labeled, labels = sa_pool()
    model = DropoutMLP()
    if form == "factored":
        sel = ft.select(SparseApprox(solver=solver), model, x, SA_BUDGET, labeled=labeled,
                        labels=labels, progress=False)  # fmt: skip
        pool = ft.pool_outputs(model, x, ("logits", "features"), progress=False)
        pool["labeled_logits"] = pool["logits"][torch.from_numpy(labeled)]
        pool["labeled_targets"] = torch.from_numpy(labels)
        T = fit_temperature(pool["labeled_logits"], pool["labeled_targets"])
        assert sel.diagnostics["temperature"] == T != 1.0  # fitted on the labels passed
    else:
        sel = ft.select(SparseApprox(solver=solver), model, x, SA_BUDGET, labeled=labeled,
                        needs=("mc_probs",), mc_samples=8, seed=0, progress=False)  # fmt: skip
        pool = ft.pool_outputs(model, x, ("mc_probs",), mc_samples=8, seed=0, progress=False)
        assert pool["mc_probs"].shape == (8, SA_N, SA_C)
        assert (np.ptp(pool["mc_probs"].numpy(), axis=0) > 0).any()  # dropout was on
    expected = SparseApprox(solver=solver).select(pool, SA_BUDGET, labeled)
    assert_same_selection(sel, expected)
    idx = np.asarray(sel.indices)
    assert sel.diagnostics["form"] == form
    assert np.unique(idx).size == SA_BUDGET
    assert not np.isin(idx, labeled).any()
    assert model.training  # the caller's mode is back


@pytest.mark.parametrize("solver", ["iht", "greedy"])
def test_sparse_approx_bayesian_form_from_an_ensemble(solver):
    """An ensemble as the posterior samples of the Bayesian form: the members' softmax outputs
    (eval mode, dropout off) stacked on a new first axis, ``(members, n, C)``, passed as
    ``"mc_probs"``. The same stack from ``pool_outputs(member, x, ("probs",))`` (torch) and from
    plain ``torch.softmax`` (numpy) give the same selection."""
    from fastal.strategies import SparseApprox

    x, labeled, _ = sa_pool()
    models = [DropoutMLP(seed=k).eval() for k in range(5)]
    with torch.no_grad():
        by_hand = np.stack([torch.softmax(m(x), 1).numpy() for m in models])
    sel = SparseApprox(solver=solver).select({"mc_probs": by_hand}, SA_BUDGET, labeled)
    assert sel.diagnostics["form"] == "bayesian"
    idx = np.asarray(sel.indices)
    assert np.unique(idx).size == SA_BUDGET
    assert not np.isin(idx, labeled).any()

    members = [ft.pool_outputs(m, x, ("probs",), progress=False)["probs"] for m in models]
    stacked = torch.stack(members)
    assert_allclose(stacked.numpy(), by_hand, rtol=1e-6, atol=1e-7)
    from_pool = SparseApprox(solver=solver).select({"mc_probs": stacked}, SA_BUDGET, labeled)
    assert isinstance(from_pool.indices, torch.Tensor)
    assert_array_equal(from_pool.indices.numpy(), idx)
    assert_allclose(
        from_pool.diagnostics["weights"], sel.diagnostics["weights"], rtol=1e-9, atol=1e-12
    )


# -- found by a review of the torch layer ------------------------------------------------------


def test_features_are_the_layer_input_even_if_changed_in_place_later():
    """With ReLU(inplace=True) as the feature layer the hook kept a reference to its input and
    returned the post-ReLU values whenever logits were asked for too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D_IN, 8), nn.ReLU(inplace=True), nn.Linear(8, C)).eval()
    x = torch.from_numpy(inputs())
    with torch.no_grad():
        pre = model[0](x)
    for needs in (("features",), ("features", "probs")):
        out = ft.pool_outputs(model, x, needs, feature_layer="1", progress=False)
        assert_array_equal(out["features"].numpy(), pre.numpy())
    assert (pre < 0).any()


@pytest.mark.parametrize("kind", ["tensor", "ndarray", "list"])
def test_batch_fn_applies_to_tensor_and_array_pools(kind):
    """batch_fn was silently skipped unless the pool was a Dataset or DataLoader."""
    x = inputs()
    data = {"tensor": torch.from_numpy(x), "ndarray": x, "list": x.tolist()}[kind]
    model = Tiny()
    out = ft.pool_outputs(
        model, data, ("logits",), batch_fn=lambda b: b * 2, batch_size=4, progress=False
    )
    assert_allclose(out["logits"].numpy(), reference(2 * x)["logits"], rtol=1e-5, atol=1e-5)


def test_outputs_are_ordinary_tensors():
    """The buffers were allocated under inference mode: in-place edits and training on the
    returned features raised outside it."""
    out = ft.pool_outputs(Tiny(), torch.from_numpy(inputs()), ("features", "probs"), progress=False)
    stream = ft.pool_outputs(Tiny(), Stream(inputs()), ("features",), batch_size=4, progress=False)
    for t in (*out.values(), *stream.values()):
        assert not t.is_inference()
    out["probs"].clamp_(1e-6)
    head = nn.Linear(D_H, C)
    nn.functional.cross_entropy(head(out["features"]), torch.zeros(N, dtype=torch.long)).backward()


def test_an_empty_iterable_dataset_is_an_error():
    with pytest.raises(ValueError, match="data is empty"):
        ft.pool_outputs(Tiny(), Stream(inputs()[:0]), ("features", "probs"), progress=False)


def test_a_feature_layer_called_with_a_keyword_argument():
    class KwargNet(Tiny):
        def forward(self, x):
            return self.head(input=torch.relu(self.body(x)))

    x = inputs()
    out = ft.pool_outputs(KwargNet(), torch.from_numpy(x), ("features", "probs"), progress=False)
    assert_allclose(out["features"].numpy(), reference(x)["features"], rtol=1e-5, atol=1e-6)


def test_batch_fn_may_return_a_named_tuple():
    from typing import NamedTuple

    class Inputs(NamedTuple):
        x: torch.Tensor
        scale: torch.Tensor

    class TwoInputs(Tiny):
        def forward(self, x, scale):
            return super().forward(x * scale)

    x = inputs()
    out = ft.pool_outputs(TwoInputs(), XOnly(x), ("logits",), batch_size=4, progress=False,
                          batch_fn=lambda b: Inputs(b, torch.full((len(b), 1), 2.0)))  # fmt: skip
    assert_allclose(out["logits"].numpy(), reference(2 * x)["logits"], rtol=1e-5, atol=1e-5)


def test_a_named_tuple_inside_a_mapping_keeps_its_fields():
    """Only a NamedTuple the model reads by field name shows that the device move rebuilt it as
    a NamedTuple (a plain tuple has no .scale); the top-level one is unpacked with * either way."""
    from typing import NamedTuple

    class Affine(NamedTuple):
        scale: torch.Tensor
        shift: torch.Tensor

    class AffineInput(Tiny):
        def forward(self, x, affine):
            return super().forward(x * affine.scale + affine.shift)

    def batch_fn(b):
        return {"x": b, "affine": Affine(torch.full((len(b), 1), 2.0), torch.ones(1))}

    x = inputs()
    out = ft.pool_outputs(AffineInput(), XOnly(x), ("logits",), batch_size=4, progress=False,
                          batch_fn=batch_fn)  # fmt: skip
    assert_allclose(out["logits"].numpy(), reference(2 * x + 1)["logits"], rtol=1e-5, atol=1e-5)


def test_a_list_batch_sampler_is_checked_for_order():
    """A DataLoader built from a list of index lists has no .sampler: AttributeError before."""
    x = inputs()
    ds = XOnly(x)
    ordered = DataLoader(ds, batch_sampler=[[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]])
    out = ft.pool_outputs(Tiny(), ordered, ("logits",), progress=False)
    assert_allclose(out["logits"].numpy(), reference(x)["logits"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch_sampler does not give rows 0, 1, 2"):
        ft.pool_outputs(Tiny(), DataLoader(ds, batch_sampler=[[5, 6, 7, 8, 9], [0, 1, 2, 3, 4]]),
                        ("logits",), progress=False)  # fmt: skip


def test_a_generator_seed_also_seeds_the_mc_passes():
    """select(seed=Generator) left the dropout masks unseeded: the same Generator state gave
    other picks. The masks now come from a copy of it (the strategy still draws from it)."""
    x = torch.from_numpy(inputs())
    picks = [
        ft.select("bald", Tiny(dropout=0.5), x, 4, seed=np.random.default_rng(7), mc_samples=5,
                  progress=False).indices.tolist()
        for _ in range(2)
    ]  # fmt: skip
    assert picks[0] == picks[1]


@pytest.mark.parametrize("make", [np.random.SeedSequence, np.random.PCG64])
def test_a_seed_sequence_or_bit_generator_also_seeds_the_mc_passes(make):
    """Seeds make_rng takes beyond ints and Generators left the masks unseeded too."""
    x = torch.from_numpy(inputs())
    picks = [
        ft.select("bald", Tiny(dropout=0.5), x, 4, seed=make(7), mc_samples=5,
                  progress=False).indices.tolist()
        for _ in range(2)
    ]  # fmt: skip
    assert picks[0] == picks[1]


class Forbidden(Dataset):
    """A pool whose rows must not be read (the checks come before the pass)."""

    def __len__(self):
        return N

    def __getitem__(self, i):
        raise AssertionError("the pool pass ran")


def test_impossible_budgets_are_refused_before_the_pool_pass():
    with pytest.raises(ValueError, match="multiple of group_size"):
        ft.select(strategies.CRC(group_size=4), Tiny(), Forbidden(), 6, progress=False)
    with pytest.raises(ValueError, match="budget"):
        ft.select("badge", Tiny(), Forbidden(), N + 1, progress=False)


def test_wrong_length_duals_are_named_as_given():
    message = r"^duals are for 3 labeled rows but labeled has 5: pass one"
    with pytest.raises(ValueError, match=message):
        ft.select("ally", Tiny(), torch.from_numpy(inputs()), 2, labeled=range(5),
                  duals=np.ones(3), progress=False)  # fmt: skip


class TransformerClassifier(nn.Module):
    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=dropout, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def test_mc_dropout_reaches_a_transformer_layer():
    """torch's fused encoder path (taken in eval mode without grad) skips the layer's dropout
    modules: every pass was the same and BALD picked the lowest indices with zero scores."""
    torch.manual_seed(0)
    model, x = TransformerClassifier(), torch.randn(16, 5, 4)
    mc = ft.pool_outputs(model, x, ("mc_probs",), mc_samples=4, seed=0, progress=False)["mc_probs"]
    assert float((mc - mc[0]).abs().max()) > 1e-3
    assert torch.backends.mha.get_fastpath_enabled()  # restored
    scores = ft.select("bald", model, x, 3, seed=0, progress=False).diagnostics["scores"]
    assert float(scores.max()) > 0


def test_mc_passes_that_never_differ_are_refused():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.0), nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"with p > 0 in the model \(its 1 have p = 0\)"):
        ft.pool_outputs(model, torch.from_numpy(inputs()), ("mc_probs",), progress=False)

    class FunctionalDropout(Tiny):
        def __init__(self) -> None:
            super().__init__(dropout=0.5)

        def forward(self, x):  # the module is never called: F.dropout follows self.training
            return self.head(nn.functional.dropout(torch.relu(self.body(x)), 0.5, self.training))

    x = torch.from_numpy(inputs())
    with pytest.raises(ValueError, match="all 3 Monte-Carlo passes gave the same outputs"):
        ft.select("bald", FunctionalDropout(), x, 2, mc_samples=3, progress=False)


def test_a_single_logit_classifier_is_refused():
    """softmax over one column is 1 everywhere: entropy picked the lowest indices."""
    with pytest.raises(ValueError, match="at least 2 logits per row, got 1"):
        ft.select("entropy", Tiny(out=1), torch.from_numpy(inputs()), 2, progress=False)


def test_a_feature_layer_that_sees_part_of_the_batch_is_refused():
    class Chunked(Tiny):
        def forward(self, x):
            return torch.cat([self.head(torch.relu(self.body(c))) for c in x.split(4)])

    message = r"saw an input of shape \(4, 4\) for a batch of 10 rows"
    with pytest.raises(RuntimeError, match=message):
        ft.select("coreset", Chunked(), torch.from_numpy(inputs()), 2, seed=0, progress=False)


def test_loaders_that_may_reorder_or_repeat_rows_are_refused():
    from torch.utils.data import BatchSampler, SequentialSampler

    class Bucketed(BatchSampler):  # batches in another order, over a SequentialSampler
        def __iter__(self):
            return reversed(list(super().__iter__()))

    x, ds = inputs(), XOnly(inputs())
    bucketed = DataLoader(ds, batch_sampler=Bucketed(SequentialSampler(ds), 3, False))
    with pytest.raises(ValueError, match=r"custom batch_sampler \(Bucketed\)"):
        ft.pool_outputs(Tiny(), bucketed, ("logits",), progress=False)
    dropping = DataLoader(ds, batch_sampler=BatchSampler(SequentialSampler(ds), 3, True))
    with pytest.raises(ValueError, match="drop_last=True"):
        ft.pool_outputs(Tiny(), dropping, ("logits",), progress=False)
    with pytest.raises(ValueError, match="batch_size=None"):
        ft.pool_outputs(Tiny(), DataLoader(ds, batch_size=None), ("logits",), progress=False)
    streams = ((Stream(x), {"num_workers": 2}), (DataLoader(Stream(x), num_workers=2), {}))
    for data, kwargs in streams:
        with pytest.raises(ValueError, match="IterableDataset read with num_workers=2"):
            ft.pool_outputs(Tiny(), data, ("logits",), progress=False, **kwargs)


def test_a_refused_call_leaves_the_model_where_it_was():
    moves = []
    model = Tiny()
    model.to = lambda *args, **kwargs: moves.append(args)
    with pytest.raises(ValueError, match="data is empty"):
        ft.pool_outputs(model, XOnly(inputs()[:0]), ("logits",), device="cpu", progress=False)
    assert moves == []
    ft.pool_outputs(model, XOnly(inputs()), ("logits",), device="cpu", progress=False)
    assert len(moves) == 1


def test_a_dataset_pass_leaves_torch_generator_alone():
    """Starting a DataLoader iteration draws its workers' base seed from torch's generator."""
    model, pool = Tiny(), XOnly(inputs())
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    ft.pool_outputs(model, pool, ("probs",), batch_size=4, progress=False)
    ft.pool_outputs(model, DataLoader(pool, batch_size=4), ("probs",), progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_random_on_a_stream_counts_its_rows():
    """random reads no model output: the size of an IterableDataset was 'unknown'."""
    picks = ft.select("random", Tiny(), Stream(inputs()), 4, labeled=[0, 1], seed=0, progress=False)
    assert picks.indices.shape == (4,)
    assert set(picks.indices.tolist()) <= set(range(2, N))


def test_outputs_that_are_probabilities_are_flagged():
    class SoftmaxHead(Tiny):
        def forward(self, x):
            return torch.softmax(super().forward(x), dim=1)

    with pytest.warns(UserWarning, match="look like probabilities"):
        ft.pool_outputs(SoftmaxHead(), torch.from_numpy(inputs()), ("probs",), progress=False)

    class TupleOut(Tiny):
        def forward(self, x):
            return super().forward(x), x

    with pytest.raises(TypeError, match=r"got tuple: wrap it in an nn.Module .* model\(x\)\[0\]"):
        ft.pool_outputs(TupleOut(), torch.from_numpy(inputs()), ("probs",), progress=False)


# ---------------------------------------------------------------------------------------------
# what a user's pipeline meets (user audit, session 28)


def test_a_sparse_or_meta_pool_gets_its_own_refusal():
    """_known_size caught every TypeError: 'data must be a torch Tensor, ..., got Tensor'."""
    x = torch.from_numpy(inputs())
    for bad, message in ((x.to_sparse(), "layout torch.sparse_coo"), (x.to("meta"), "device meta")):
        with pytest.raises(TypeError, match=f"data is a torch tensor .*{message}"):
            ft.select("coreset", Tiny(), bad, 2, [0], progress=False)
        with pytest.raises(TypeError, match=f"data is a torch tensor .*{message}"):
            ft.pool_outputs(Tiny(), bad, progress=False)


def test_random_through_select_returns_a_torch_tensor_like_the_rest():
    """Random counted its rows from {"n": n} and gave numpy, unlike the other strategies."""
    data = inputs()
    for name in ("random", "entropy"):
        sel = ft.select(name, Tiny(), data, 3, torch.tensor([0, 1]), seed=0, progress=False)
        assert isinstance(sel.indices, torch.Tensor)
        assert sel.indices.dtype == torch.int64
    expected = strategies.Random().select(N, 3, [0, 1], seed=0).indices
    got = ft.select("random", Tiny(), data, 3, [0, 1], seed=0, progress=False).indices
    assert_array_equal(got.numpy(), expected)


def test_non_finite_outputs_name_the_row_of_data():
    x = torch.from_numpy(inputs())
    x[7, 1] = float("nan")
    for needs, key in ((("features",), "features"), (("probs",), "probs"), (("logits",), "logits")):
        with pytest.raises(ValueError, match=f"model.s {key} are NaN or .?Inf for 1 row.*row 7 "):
            ft.pool_outputs(Tiny(), x, needs, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"probs are NaN or Inf .* row 7"):
        ft.select("badge", Tiny(), x, 2, [0], progress=False)
    diverged = Tiny()
    with torch.no_grad():
        diverged.head.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="its parameters hold NaN or Inf: the training diverged"):
        ft.pool_outputs(diverged, inputs(), ("probs",), progress=False)
    big = torch.from_numpy(inputs()) * 1e5  # finite float32 features, past float16's range
    with pytest.raises(ValueError, match="values fit float16"):
        ft.pool_outputs(Tiny(), big * big, ("features",), dtype=torch.float16, progress=False)


def test_progress_must_be_a_bool_everywhere():
    """CoreSet, KMeansSampling, SparseApprox and pool_outputs took progress="no" (truthy: a bar)."""
    for make in (strategies.CoreSet, strategies.KMeansSampling, strategies.SparseApprox):
        with pytest.raises(TypeError, match="progress must be a bool"):
            make(progress="no")
    with pytest.raises(TypeError, match="progress must be a bool"):
        ft.pool_outputs(Tiny(), inputs(), progress="no")
    with pytest.raises(TypeError, match="inference_mode must be a bool"):
        ft.pool_outputs(Tiny(), inputs(), inference_mode=1, progress=False)


def test_a_model_on_the_meta_device_is_refused():
    for device in (None, "cpu"):  # torch's own error when model.to(device) ran first
        with pytest.raises(ValueError, match="parameters are on the meta device"):
            ft.pool_outputs(Tiny().to("meta"), inputs(), device=device, progress=False)


def test_minus_inf_logits_of_masked_classes_are_kept():
    """A model masking a class returns -inf logits: probabilities 0, not an error."""
    masked = nn.Sequential(Tiny(), nn.ConstantPad1d((0, 1), -math.inf))  # a 4th, impossible class
    out = ft.pool_outputs(masked, inputs(), ("logits", "probs"), progress=False)
    assert (out["logits"][:, -1] == -math.inf).all()
    assert (out["probs"][:, -1] == 0).all()
    nan = nn.Sequential(Tiny(), nn.ConstantPad1d((0, 1), math.inf))
    with pytest.raises(ValueError, match=r"logits are NaN or \+Inf for 10 row"):
        ft.pool_outputs(nan, inputs(), ("logits",), progress=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_non_finite_outputs_in_every_storage_dtype_and_mc_axis(dtype):
    """The CPU check reads float16/32/64 outputs through numpy (bfloat16 through torch): the same
    verdicts, whatever the dtype, on axis 0 and on the mc_ outputs' axis 1."""
    x = torch.from_numpy(inputs())
    x[5, 0] = float("inf")
    for needs, key in ((("features",), "features"), (("mc_probs",), "mc_probs")):
        with pytest.raises(ValueError, match=f"model.s {key} are NaN or .?Inf for 1 row.*row 5 "):
            ft.pool_outputs(
                Tiny(dropout=0.5), x, needs, dtype=dtype, mc_samples=3, batch_size=4, progress=False
            )
    out = ft.pool_outputs(
        Tiny(dropout=0.5), inputs(), ("mc_probs",), dtype=dtype, mc_samples=3, progress=False
    )
    assert out["mc_probs"].dtype == dtype
    assert out["mc_probs"].shape == (3, N, C)


@pytest.mark.skipif(not hasattr(BaseException, "add_note"), reason="exception notes: Python 3.11")
def test_an_error_inside_the_model_says_which_rows_ran():
    with pytest.raises(RuntimeError, match="mat1 and mat2") as caught:
        ft.pool_outputs(Tiny(), np.ones((10, D_IN + 1), np.float32), batch_size=4, progress=False)
    assert caught.value.__notes__ == ["(fastal: in the batch of data starting at row 0)"]


def test_batch_fn_results_of_an_array_pool_are_cast_to_the_model_dtype():
    out = ft.pool_outputs(Tiny().float(), inputs(), ("logits",), batch_size=4, progress=False,
                          batch_fn=lambda t: t.to(torch.float64))  # fmt: skip
    assert out["logits"].dtype == torch.float32
    assert_allclose(out["logits"].numpy(), reference(inputs())["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not hasattr(BaseException, "add_note"), reason="exception notes: Python 3.11")
def test_the_note_names_the_failing_batchs_first_row():
    class FailsLate(Tiny):
        def forward(self, x):
            if self.calls["model"] == 2:  # the third batch: rows 8 and 9
                raise RuntimeError("boom")
            return super().forward(x)

    x = np.ones((10, D_IN), np.float32)
    with pytest.raises(RuntimeError, match="boom") as caught:
        ft.pool_outputs(FailsLate(), x, batch_size=4, progress=False)
    assert caught.value.__notes__ == ["(fastal: in the batch of data starting at row 8)"]


def test_warnings_point_at_the_callers_line():
    """They pointed at fastal/torch/adapter.py (the strategy's caller): a filter on the user's
    module, or pytest's report, missed the user's call."""
    with pytest.warns(UserWarning, match="P equals the predictions") as caught:
        ft.select("sparse_approx", Tiny(), inputs(), 2, [0], progress=False)
    softmaxed = nn.Sequential(Tiny(), nn.Softmax(dim=1))
    with pytest.warns(UserWarning, match="look like probabilities") as caught_too:
        ft.pool_outputs(softmaxed, inputs(), ("probs",), progress=False)
    assert [w.filename for w in (*caught, *caught_too)] == [__file__, __file__]
