"""`fastal demo` in its reduced CI setting, and `fastal select` for every strategy."""

from __future__ import annotations

import csv
import importlib.util
import types

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from fastal import cli, demo, loop, strategies


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_demo_quick_digits(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = read_csv(tmp_path / "results.csv")
    png = tmp_path / "learning_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    expected = list(demo.DEFAULT_STRATEGIES["classification"])
    if not demo.crc_available():
        expected.remove("crc")
        assert "crc skipped" in out
    by_strategy = {s: [r for r in rows if r["strategy"] == s] for s in expected}
    assert sorted({r["strategy"] for r in rows}) == sorted(expected)
    data = demo.load("digits")
    for s, rs in by_strategy.items():
        assert [int(r["round"]) for r in rs] == [0, 1, 2]  # --quick: 1 seed, 2 rounds
        assert [int(r["n_labeled"]) for r in rs] == [20, 50, 80]
        assert {r["metric"] for r in rs} == {"accuracy"}
        final = float(rs[-1]["value"])
        assert final > max(0.1, data.chance), (s, final)  # never below chance (10 classes)
    # the printed table: a header, one line per label count, the AUC line
    table = out[out.index("  labels") :].splitlines()
    assert table[0].split() == ["labels", *expected]
    assert [line.split()[0] for line in table[1:5]] == ["20", "50", "80", "AUC"]


def test_demo_quick_regression(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--dataset", "diabetes", "--out", str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "results.csv")
    assert {r["strategy"] for r in rows} == {"random", "coreset", "ally"}
    assert {r["metric"] for r in rows} == {"mse"}
    assert all(np.isfinite(float(r["value"])) for r in rows)
    assert (tmp_path / "learning_curves.png").exists()
    printed = capsys.readouterr().out
    assert "lower is better" in printed
    assert f"ALLY's by primal-dual training ({demo.ALLY_DUAL_STEPS} dual steps)" in printed


def test_demo_quick_mnist1d(tmp_path):
    """mnist1d is generated locally by its package (no download): random and Core-Set only."""
    pytest.importorskip("mnist1d")
    args = ["demo", "--quick", "--dataset", "mnist1d", "--strategies", "random,coreset"]
    assert cli.main([*args, "--out", str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "results.csv")
    assert {r["strategy"] for r in rows} == {"random", "coreset"}
    assert {r["metric"] for r in rows} == {"accuracy"}
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows)


def test_demo_refusals(tmp_path):
    """Each refused before --out is made: a refused run leaves no empty folder behind."""
    out = tmp_path / "new"
    with pytest.raises(SystemExit, match="regression model does not give"):
        cli.main(
            [
                "demo",
                "--quick",
                "--dataset",
                "diabetes",
                "--strategies",
                "entropy",
                "--out",
                str(out),
            ]
        )
    with pytest.raises(SystemExit, match="unknown strategy"):
        cli.main(["demo", "--quick", "--strategies", "nope", "--out", str(out)])
    with pytest.raises(SystemExit, match="more than the pool"):
        cli.main(["demo", "--quick", "--budget", "600", "--out", str(out)])
    if importlib.util.find_spec("mnist1d") is None:
        with pytest.raises(SystemExit, match="pip install mnist1d"):
            cli.main(["demo", "--quick", "--dataset", "mnist1d", "--out", str(out)])
    assert not out.exists()


def test_each_seed_runs_with_its_own_seed_and_a_fresh_strategy(monkeypatch):
    calls = []

    def fake_run(pool, test, **kw):
        calls.append((kw["strategy"], kw["seed"]))
        return types.SimpleNamespace(auc=0.5)

    monkeypatch.setattr(loop, "run", fake_run)
    res = demo.run_demo("digits", ["random", "coreset"], seeds=3, rounds=1, budget=10, initial=10)
    assert [seed for _, seed in calls] == [0, 1, 2, 0, 1, 2]
    assert len({id(s) for s, _ in calls}) == 6  # no strategy object shared between runs
    assert {name: len(runs) for name, runs in res.results.items()} == {"random": 3, "coreset": 3}


def test_crc_takes_the_largest_group_that_divides_the_budget():
    assert demo.make_strategy("crc", 20).group_size == 20
    assert demo.make_strategy("crc", 30).group_size == 15
    assert demo.make_strategy("crc", 7).group_size == 7


def test_chance_is_the_most_frequent_test_class():
    data = demo._classification("toy", (np.zeros((2, 1)), np.array([0, 1])),
                                (np.zeros((4, 1)), np.array([0, 0, 0, 1])))  # fmt: skip
    assert data.n_outputs == 2
    assert data.chance == 0.75


def test_a_plan_reads_other_spellings_as_the_registered_names():
    """strategies.get takes "CRC"; the plan compared the raw strings (make_strategy's "crc" set
    its group size for the budget, and "entropy" beside "Entropy" was not a repeat)."""
    _, names, _ = demo.plan_demo("digits", ["CRC", "Entropy"], initial=20, rounds=1, budget=30)
    assert names[-1] == "entropy"
    assert "crc" in names or not demo.crc_available()
    with pytest.raises(ValueError, match="strategies named twice: entropy"):
        demo.plan_demo("digits", ["entropy", "Entropy"], initial=20, rounds=1, budget=30)


def test_a_plan_that_uses_the_whole_pool_runs():
    data, names, _ = demo.plan_demo("digits", ["random"], initial=100, rounds=9, budget=100)
    assert data.pool[0].shape[0] == 1000
    assert names == ["random"]
    with pytest.raises(ValueError, match="1001 is more than the pool"):
        demo.plan_demo("digits", ["random"], initial=101, rounds=9, budget=100)


def test_diabetes_is_standardised_on_its_pool():
    data = demo.load("diabetes")
    X, y = data.pool
    assert X.shape == (300, 10)
    assert_allclose(X.mean(0), 0, atol=1e-5)
    assert_allclose(X.std(0), 1, atol=1e-5)
    assert abs(float(y.mean())) < 1e-5
    assert abs(float(y.std()) - 1) < 1e-5


# ---------------------------------------------------------------------------------------------
# fastal select --strategy NAME with pool arrays from .npy files


def pool_files(tmp_path, n=120, C=4, d=6):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(n, C)).astype(np.float32)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    mc = rng.dirichlet(np.ones(C), size=(5, n)).astype(np.float32)
    arrays = {"features": rng.normal(size=(n, d)).astype(np.float32), "probs": p.astype(np.float32),
              "logits": z, "mc_probs": mc}  # fmt: skip
    for k, a in arrays.items():
        np.save(tmp_path / f"{k}.npy", a)
    np.save(tmp_path / "labeled.npy", np.array([0, 5, 9], dtype=np.int64))
    return arrays


OPTION = {
    "features": "--features",
    "probs": "--probs",
    "logits": "--logits",
    "mc_probs": "--mc-probs",
}


@pytest.mark.parametrize(
    "name", ["random", "entropy", "margin", "least_confidence", "bald", "egl", "badge", "kmeans"]
)
def test_select_every_strategy_from_npy(tmp_path, name):
    arrays = pool_files(tmp_path)
    cls = strategies.get(name)
    argv = [
        "select",
        "--strategy",
        name,
        "--labeled",
        str(tmp_path / "labeled.npy"),
        "--budget",
        "7",
        "--out",
        str(tmp_path / "picks.npy"),
        "--seed",
        "2",
    ]
    given = list(cls.requires) or ["features"]
    for key in given:
        argv += [OPTION[key], str(tmp_path / f"{key}.npy")]
    assert cli.main(argv) == 0
    picks = np.load(tmp_path / "picks.npy")
    pool = {k: arrays[k] for k in given}
    if not cls.requires:
        pool = {"n": 120}
    elif given == ["features"]:
        pool = arrays["features"]
    expected = cls().select(pool, 7, np.array([0, 5, 9]), seed=2).indices
    assert_array_equal(picks, expected)


def test_select_names_the_missing_array(tmp_path):
    pool_files(tmp_path)
    with pytest.raises(SystemExit, match=r"needs probs: pass --probs or --logits"):
        cli.main(["select", "--strategy", "badge", "--features", str(tmp_path / "features.npy")])
    with pytest.raises(SystemExit, match=r"needs mc_probs: pass --mc-probs"):
        cli.main(["select", "--strategy", "bald", "--probs", str(tmp_path / "probs.npy")])
    with pytest.raises(SystemExit, match="needs probs"):
        cli.main(["select", "--strategy", "entropy"])  # the digits pool has no probabilities
    np.save(tmp_path / "short.npy", np.ones((5, 4), np.float32) / 4)
    with pytest.raises(SystemExit, match="disagree on the number of rows"):
        cli.main(["select", "--strategy", "egl", "--features", str(tmp_path / "features.npy"),
                  "--probs", str(tmp_path / "short.npy")])  # fmt: skip
