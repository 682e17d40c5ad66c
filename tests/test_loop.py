"""fastal.loop: bookkeeping of the active-learning loop, resume after an interruption, AUC."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from torch import nn
from torch.utils.data import TensorDataset

from fastal import loop
from fastal._loop_data import _Data
from fastal._loop_state import _initial
from fastal._loop_train import evaluate
from fastal.strategies import CoreSet, Random
from fastal.strategies.base import Selection


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (and the CI machine is small)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blobs(n: int, seed: int, C: int = 3, d: int = 4):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(C, d)) * 3
    y = rng.integers(C, size=n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def model_fn():
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


train = functools.partial(loop.fit, max_steps=25, eval_every=5)


class Recorder:
    """A train function that checks what it is shown and can fail at a chosen round."""

    def __init__(self, fail_at: int | None = None):
        self.sizes: list[int] = []
        self.fail_at = fail_at

    def __call__(self, model, dataset, *, task, seed, device):
        X, y = dataset.tensors
        # every row shown to training carries its oracle label
        rows = [int(np.flatnonzero((POOL[0] == x.numpy()).all(1))[0]) for x in X]
        assert_array_equal(y.numpy(), POOL[1][rows])
        assert len(set(rows)) == len(rows)
        if self.fail_at is not None and len(self.sizes) == self.fail_at:
            raise KeyboardInterrupt(f"stopped at round {self.fail_at}")
        self.sizes.append(len(rows))
        return train(model, dataset, task=task, seed=seed, device=device)


@pytest.mark.parametrize("strategy", ["entropy", "coreset", "bald", "random"])
def test_bookkeeping(strategy):
    rec = Recorder()
    budgets = [5, 10, 7]
    res = loop.run(POOL, TEST, model_fn=model_fn, strategy=strategy, initial=8, budget=budgets,
                   train_fn=rec, seed=3, select_options={"mc_samples": 4})  # fmt: skip
    n = len(POOL[1])
    assert res.metric == "accuracy"
    assert [r["round"] for r in res.rows] == [0, 1, 2, 3]
    assert res.n_labeled.tolist() == [8, 13, 23, 30] == rec.sizes
    assert res.labeled.size == 30
    assert np.unique(res.labeled).size == res.labeled.size  # no index labeled twice
    unlabeled = np.setdiff1d(np.arange(n), res.labeled)
    assert_array_equal(
        np.sort(np.concatenate([res.labeled, unlabeled])), np.arange(n)
    )  # labeled + rest = all
    assert res.added.tolist() == [0] * 8 + [1] * 5 + [2] * 10 + [3] * 7
    assert all(0 <= v <= 1 for v in res.values)
    assert res.rows[-1]["select_seconds"] == 0.0
    assert res.auc == pytest.approx(loop.auc(res.n_labeled, res.values))


def test_resume_after_an_interruption_gives_the_same_labels(tmp_path):
    kwargs = dict(model_fn=model_fn, strategy="entropy", initial=6, budget=8, rounds=4, seed=11)
    full = loop.run(POOL, TEST, train_fn=train, checkpoint=tmp_path / "full.npz", **kwargs)

    state = tmp_path / "run.npz"
    with pytest.raises(KeyboardInterrupt):
        loop.run(POOL, TEST, train_fn=Recorder(fail_at=2), checkpoint=state, **kwargs)
    with np.load(state) as z:  # saved after round 1: the initial set + two batches
        assert z["labeled"].size == 6 + 2 * 8
        assert_array_equal(z["labeled"], full.labeled[: 6 + 2 * 8])
        assert z["row_n_labeled"].tolist() == [6, 14]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    rec = Recorder()
    resumed = loop.run(POOL, TEST, train_fn=rec, resume=state, **kwargs)
    assert rec.sizes == [22, 30, 38]  # rounds 2, 3, 4 only
    assert_array_equal(resumed.labeled, full.labeled)
    assert_array_equal(resumed.added, full.added)
    assert_allclose(resumed.values, full.values)
    assert resumed.auc == full.auc

    again = loop.run(POOL, TEST, train_fn=rec, resume=state, **kwargs)  # finished: nothing to redo
    assert rec.sizes == [22, 30, 38]
    assert_array_equal(again.labeled, full.labeled)

    with pytest.raises(ValueError, match="seed"):
        loop.run(POOL, TEST, train_fn=train, resume=state, **dict(kwargs, seed=12))
    with pytest.raises(FileNotFoundError):
        loop.run(POOL, TEST, train_fn=train, resume=tmp_path / "missing.npz", **kwargs)


def test_same_seed_same_run_different_seed_different_start():
    kwargs = dict(
        model_fn=model_fn, strategy="margin", initial=5, budget=5, rounds=1, train_fn=train
    )
    a = loop.run(POOL, TEST, seed=0, **kwargs)
    b = loop.run(POOL, TEST, seed=0, **kwargs)
    c = loop.run(POOL, TEST, seed=1, **kwargs)
    assert_array_equal(a.labeled, b.labeled)
    assert a.values.tolist() == b.values.tolist()
    assert not np.array_equal(a.labeled[:5], c.labeled[:5])


def test_auc_on_a_hand_made_table():
    assert loop.auc([10, 20, 40], [0.5, 0.7, 0.8]) == pytest.approx((10 * 0.6 + 20 * 0.75) / 30)
    assert loop.auc([10, 20], [0.4, 0.4]) == pytest.approx(0.4)
    assert loop.auc([50], [0.9]) == 0.9
    assert loop.auc([50, 50], [0.8, 0.9]) == pytest.approx(0.85)  # one label count: the mean
    res = loop.RunResult(
        rows=[
            {
                "round": i,
                "n_labeled": n,
                "accuracy": v,
                "train_seconds": 0.5,
                "select_seconds": 0.25,
            }
            for i, (n, v) in enumerate([(10, 0.5), (20, 0.7), (40, 0.8)])
        ],
        metric="accuracy",
        labeled=np.arange(40),
        strategy="x",
        seed=2,
    )
    assert res.auc == pytest.approx(0.7)
    lines = res.to_csv().splitlines()
    assert lines[0] == "strategy,seed,round,n_labeled,accuracy,train_seconds,select_seconds"
    assert lines[1] == "x,2,0,10,0.5,0.5,0.25"
    with pytest.raises(ValueError, match="non-decreasing"):
        loop.auc([20, 10], [0.1, 0.2])


def test_regression_dataset_pool_and_strategy_object(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=80)).astype(np.float32)
    pool = TensorDataset(torch.from_numpy(X[:60]), torch.from_numpy(y[:60]))  # a Dataset of (x, y)

    def reg_model():
        return nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1))

    res = loop.run(
        pool,
        (X[60:], y[60:]),
        model_fn=reg_model,
        strategy=CoreSet(),
        initial=10,
        budget=10,
        rounds=2,
        task="regression",
        train_fn=train,
        seed=0,
    )
    assert res.metric == "mse"
    assert res.n_labeled.tolist() == [10, 20, 30]
    assert np.isfinite(res.values).all()
    assert (res.values >= 0).all()
    res.to_csv(tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().startswith("strategy,seed,round,n_labeled,mse")
    with pytest.raises(ValueError, match="regression model cannot give"):
        loop.run(
            pool,
            (X[60:], y[60:]),
            model_fn=reg_model,
            strategy="entropy",
            initial=10,
            budget=10,
            rounds=1,
            task="regression",
            train_fn=train,
        )


def test_argument_checks():
    kwargs = dict(model_fn=model_fn, strategy="random", train_fn=train)
    with pytest.raises(ValueError, match="rounds is needed"):
        loop.run(POOL, TEST, initial=5, budget=5, **kwargs)
    with pytest.raises(ValueError, match="more than the pool"):
        loop.run(POOL, TEST, initial=100, budget=30, rounds=1, **kwargs)
    with pytest.raises(ValueError, match="rounds = 3"):
        loop.run(POOL, TEST, initial=5, budget=[5, 5], rounds=3, **kwargs)
    with pytest.raises(ValueError, match="duplicate"):
        loop.run(POOL, TEST, initial=[1, 1], budget=5, rounds=1, **kwargs)
    res = loop.run(POOL, TEST, initial=[3, 1, 2], budget=2, rounds=1, **kwargs)
    assert res.labeled[:3].tolist() == [3, 1, 2]


POOL, TEST = blobs(120, 0), blobs(60, 1)


def test_one_label_more_than_the_pool_is_refused_before_training():
    calls = []

    def counting_train(*args, **kwargs):
        calls.append(1)
        return train(*args, **kwargs)

    kwargs = dict(model_fn=model_fn, strategy="random", train_fn=counting_train)
    with pytest.raises(ValueError, match="more than the pool"):
        loop.run(POOL, TEST, initial=111, budget=5, rounds=2, **kwargs)  # 111 + 10 = 121 > 120
    assert calls == []  # refused up front, not after the first rounds' training


def test_class_labels_are_checked_at_run():
    # audit §10: float labels were truncated (0.5 -> class 0) and out-of-range labels surfaced as
    # torch's "IndexError: Target 6 is out of bounds" from inside training
    X, y = POOL

    def never(model, dataset, *, task, seed, device):
        raise AssertionError("training must not start")

    kwargs = dict(model_fn=model_fn, strategy="entropy", initial=5, budget=5, rounds=1)
    bad = y.copy()
    bad[70] = 6  # any row, labeled or not: the oracle reveals it sooner or later
    outside = r"pool\[1\] has class labels outside \[0, 3\) \(the model returns 3 logits\): e.g. 6"
    cases = [
        ((X, y + 0.5), TEST, r"pool\[1\] must hold integer class indices, got torch.float64"),
        ((X, np.where(np.arange(y.size) == 3, np.nan, y)), TEST, r"pool\[1\] must hold integer"),
        ((X, bad), TEST, outside),
        ((X, torch.from_numpy(bad)), TEST, r"pool\[1\] has class labels outside \[0, 3\)"),
        ((X, y - 1), TEST, r"pool\[1\] has negative class labels: e.g. -1"),
        (POOL, (TEST[0], TEST[1] + 3), r"test\[1\] has class labels outside \[0, 3\)"),
        (TensorDataset(torch.from_numpy(X), torch.from_numpy(y + 3)), TEST,
         r"pool \(a Dataset\) has class labels outside \[0, 3\)"),
        (TensorDataset(torch.from_numpy(X), torch.from_numpy(y + 0.5)), TEST,
         r"pool \(a Dataset\) must hold integer class indices"),
    ]  # fmt: skip
    for pool, test, message in cases:
        with pytest.raises(ValueError, match=message):
            loop.run(pool, test, train_fn=never, **kwargs)
    # a Dataset test set is read at evaluation, after the first training
    test = TensorDataset(torch.from_numpy(TEST[0]), torch.from_numpy(TEST[1] + 3))
    with pytest.raises(ValueError, match=r"test \(a Dataset\) has class labels outside \[0, 3\)"):
        loop.run(POOL, test, train_fn=train, **kwargs)

    # whole-number float labels are class indices: the same run as with integer labels
    ints = loop.run(POOL, TEST, train_fn=train, seed=4, **kwargs)
    floats = loop.run((X, y.astype(np.float64)), (TEST[0], TEST[1].astype(np.float32)),
                      train_fn=train, seed=4, **kwargs)  # fmt: skip
    assert_array_equal(floats.labeled, ints.labeled)
    assert floats.values.tolist() == ints.values.tolist()
    pool = TensorDataset(torch.from_numpy(X), torch.from_numpy(y.astype(np.float32)))
    from_dataset = loop.run(pool, TEST, train_fn=train, seed=4, **kwargs)
    assert_array_equal(from_dataset.labeled, ints.labeled)


def test_resume_when_the_budgets_use_up_the_pool(tmp_path):
    """On resume the labeled set already holds the finished rounds' picks: only the budgets still
    to spend count against the pool (all of them were added again, refusing a valid run)."""
    n = len(POOL[1])
    kwargs = dict(model_fn=model_fn, strategy="entropy", initial=20, budget=[50, 50], seed=4)
    full = loop.run(POOL, TEST, train_fn=train, **kwargs)
    assert full.labeled.size == n
    state = tmp_path / "run.npz"
    with pytest.raises(KeyboardInterrupt):
        loop.run(POOL, TEST, train_fn=Recorder(fail_at=1), checkpoint=state, **kwargs)
    resumed = loop.run(POOL, TEST, train_fn=train, resume=state, **kwargs)
    assert_array_equal(resumed.labeled, full.labeled)
    finished = loop.run(POOL, TEST, train_fn=train, resume=state, **kwargs)
    assert_array_equal(finished.labeled, full.labeled)


class RowDataset(torch.utils.data.Dataset):
    """(x, y) rows whose labels are stored with shape ``label_shape`` (e.g. (1,))."""

    def __init__(self, X, y, label_shape=()):
        self.X, self.y, self.label_shape = X, y, label_shape

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return torch.as_tensor(self.X[i]), torch.as_tensor(self.y[i]).reshape(self.label_shape)


def test_labels_stored_with_shape_1_are_one_label_per_row():
    """Test labels of shape (1,) used to broadcast (n,) predictions against (n, 1) labels: an
    n x n comparison gave accuracy 0.34 where the same labels as a 1-D array gave 0.97."""
    kwargs = dict(model_fn=model_fn, strategy="margin", initial=10, budget=10, rounds=1, seed=0,
                  train_fn=train)  # fmt: skip
    flat = loop.run(POOL, TEST, **kwargs)
    shaped = loop.run(RowDataset(*POOL, (1,)), RowDataset(*TEST, (1,)), **kwargs)
    assert_array_equal(shaped.labeled, flat.labeled)
    assert_allclose(shaped.values, flat.values)
    with pytest.raises(ValueError, match=r"test \(a Dataset\) must give one class label per row"):
        loop.run(POOL, RowDataset(TEST[0], np.repeat(TEST[1][:, None], 2, 1), (2,)), **kwargs)


class ItemDataset(torch.utils.data.Dataset):
    """Rows made by ``item(x, y)``: a dict, a triple, a class name as the label, ..."""

    def __init__(self, X, y, item):
        self.X, self.y, self.item = X, y, item

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.item(torch.as_tensor(self.X[i]), int(self.y[i]))


@pytest.mark.parametrize(
    ("item", "error", "message"),
    [
        (lambda x, y: {"x": x, "y": y}, TypeError, r"must give \(x, y\) pairs, row 0 is a dict"),
        (lambda x, y: (x, y, 0), TypeError, "row 0 is a tuple of 3"),
        (lambda x, y: (x, "abc"[y]), TypeError, "must give numeric labels, got str"),
    ],
)  # fmt: skip
def test_dataset_rows_that_are_not_x_y_pairs_are_named(item, error, message):
    """A dict row was a bare 'KeyError: 1', a class name torch's 'can't convert' (a user audit)."""
    kwargs = dict(model_fn=model_fn, strategy="random", initial=10, budget=10, rounds=1, seed=0,
                  train_fn=train)  # fmt: skip
    with pytest.raises(error, match=message):
        loop.run(ItemDataset(*POOL, item), TEST, **kwargs)


def test_class_names_as_labels_are_refused_by_name():
    kwargs = dict(model_fn=model_fn, strategy="random", initial=10, budget=10, rounds=1, seed=0)
    names = np.array(["a", "b", "c"])[TEST[1]]
    with pytest.raises(TypeError, match=r"test\[1\] must hold numbers, got dtype <U1 \(class"):
        loop.run(POOL, (TEST[0], names), **kwargs)


def test_variable_length_rows_with_the_default_training_say_what_to_pass():
    """The default fit stacks the labeled rows: rows of several lengths were torch's 'stack
    expects each tensor to be equal size' from inside fit (a user audit)."""
    rng = np.random.default_rng(0)
    seqs = [torch.from_numpy(rng.integers(1, 9, size=int(rng.integers(2, 6)))) for _ in range(60)]
    labels = rng.integers(0, 2, 60)

    class Seqs(torch.utils.data.Dataset):
        def __init__(self, lo, hi):
            self.lo, self.hi = lo, hi

        def __len__(self):
            return self.hi - self.lo

        def __getitem__(self, i):
            return seqs[self.lo + i], int(labels[self.lo + i])

    def collate(rows):
        xs, ys = zip(*rows, strict=True)
        return nn.utils.rnn.pad_sequence(list(xs), batch_first=True), torch.tensor(ys)

    def bag():
        return nn.Sequential(nn.EmbeddingBag(9, 4), nn.Linear(4, 2))

    with pytest.raises(ValueError, match=r"differ in shape.*: fastal.loop.fit stacks them"):
        loop.run(Seqs(0, 40), Seqs(40, 60), model_fn=bag, strategy="random", initial=10,
                 budget=5, rounds=1, seed=0, collate_fn=collate)  # fmt: skip
    from fastal.pdcl import PrimalDualTrainer

    with pytest.raises(ValueError, match=r"differ in shape.*: PrimalDualTrainer stacks them"):
        loop.run(Seqs(0, 40), Seqs(40, 60), model_fn=bag, strategy="random", initial=10,
                 budget=5, rounds=1, seed=0, collate_fn=collate,
                 train_fn=PrimalDualTrainer())  # fmt: skip


def test_regression_targets_of_shape_n_1_match_scalar_outputs():
    """y (n, 1) against a model returning (n,): fit trained on an n x n broadcast MSE and the
    test MSE was far too large. Now (n,) and (n, 1) on either side agree; other shapes raise."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=80)).astype(np.float32)

    class Scalar(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1))

        def forward(self, x):
            return self.net(x)[:, 0]

    kwargs = dict(model_fn=Scalar, strategy="coreset", initial=10, budget=10, rounds=1, seed=0,
                  task="regression", train_fn=train)  # fmt: skip
    flat = loop.run((X[:60], y[:60]), (X[60:], y[60:]), **kwargs)
    column = loop.run((X[:60], y[:60, None]), (X[60:], y[60:, None]), **kwargs)
    assert_allclose(column.values, flat.values, rtol=1e-6)
    assert np.isfinite(flat.values).all()
    wide = np.repeat(y[:, None], 2, 1)
    with pytest.raises(ValueError, match=r"have shape \(10, 2\) but the model's outputs \(10,\)"):
        loop.run((X[:60], wide[:60]), (X[60:], wide[60:]), **kwargs)


def test_fit_casts_inputs_to_the_model_dtype():
    """The default trainer used to pass float64 rows to a float32 model (raw 'mat1 and mat2
    must have the same dtype'); the adapter already cast them."""
    X, y = POOL
    kwargs = dict(strategy="entropy", initial=10, budget=5, rounds=1, train_fn=train)
    for rows in (torch.from_numpy(X).double(), X.astype(np.float16)):
        res = loop.run((rows, y), TEST, model_fn=model_fn, **kwargs)
        assert res.n_labeled.tolist() == [10, 15]
    res = loop.run(RowDataset(X.astype(np.float64), y), TEST, model_fn=model_fn, **kwargs)
    assert res.n_labeled.tolist() == [10, 15]
    res = loop.run((X.astype(np.float64), y), TEST, model_fn=lambda: model_fn().double(), **kwargs)
    assert res.n_labeled.tolist() == [10, 15]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (dict(budget=[2.7]), ValueError, "every budget must be a non-negative integer, got 2.7"),
        (dict(budget=[True, 2]), ValueError, "every budget must be a non-negative integer"),
        (dict(budget="12"), TypeError, "budget must be an int or a sequence of ints"),
        (dict(budget=2.5), TypeError, "budget must be an int or a sequence of ints"),
        (dict(seed=1.5), ValueError, "seed must be a non-negative integer"),
        (dict(seed=None), ValueError, "seed must be a non-negative integer"),
        (dict(seed=-1), ValueError, "seed must be a non-negative integer"),
        (dict(initial=10.0), TypeError, "initial must be an int or a sequence of row indices"),
        (dict(device="bogus"), ValueError, "device must be a torch.device"),
        (dict(model_fn=lambda: "net"), TypeError, "model_fn must return an nn.Module, got str"),
    ],
)
def test_run_names_bad_arguments(change, error, message):
    kwargs = dict(model_fn=model_fn, strategy="random", train_fn=train, initial=5, budget=[2])
    with pytest.raises(error, match=message):
        loop.run(POOL, TEST, **{**kwargs, **change})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(val_fraction=1.0), r"val_fraction must be in \[0, 1\)"),
        (dict(val_fraction=-0.1), r"val_fraction must be in \[0, 1\)"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(eval_every=0), "eval_every must be a positive integer"),
        (dict(patience=0), "patience must be a positive integer"),
        (dict(max_steps=-1), "max_steps must be a non-negative integer"),
        (dict(task="clf"), "task must be 'classification' or 'regression'"),
    ],
)
def test_fit_refuses_arguments_that_would_train_on_nothing(change, message):
    """val_fraction >= 1 or batch_size = 0 returned the untrained model; eval_every = 0 divided
    by zero."""
    X, y = POOL
    with pytest.raises(ValueError, match=message):
        loop.fit(model_fn(), TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), **change)


def test_a_budget_the_strategy_cannot_take_is_refused_before_training():
    """CRC's budget must be a multiple of its group size: round 2 failed after three trainings
    and the checkpoint could not be resumed with corrected budgets."""
    from fastal.strategies import CRC

    def never(model, dataset, *, task, seed, device):
        raise AssertionError("training must not start")

    with pytest.raises(ValueError, match="multiple of group_size"):
        loop.run(POOL, TEST, model_fn=model_fn, strategy=CRC(group_size=5), initial=5,
                 budget=[5, 5, 7], train_fn=never)  # fmt: skip


class SeedRecorder(Random):
    """Random picks, recording the seed of every call."""

    name = "seed_recorder"

    def __init__(self):
        self.seeds: list = []

    def select(self, pool, budget, labeled=None, *, seed=None):
        self.seeds.append(seed)
        return super().select(pool, budget, labeled, seed=seed)


class ReplacesFirstPick(Random):
    """A misbehaving strategy: Random's picks with the first one replaced by ``first(labeled)``."""

    name = "replaces_first_pick"

    def __init__(self, first):
        self.first = first

    def select(self, pool, budget, labeled=None, *, seed=None):
        picks = super().select(pool, budget, labeled, seed=seed).indices.copy()
        picks[0] = self.first(np.asarray(labeled))
        return Selection(picks, {})


def test_each_round_selects_with_its_own_seed():
    rec = SeedRecorder()
    loop.run(POOL, TEST, model_fn=model_fn, strategy=rec, initial=8, budget=[3, 3, 3],
             train_fn=train, seed=5)  # fmt: skip
    want = [int(np.random.SeedSequence([5, r]).generate_state(3)[2]) for r in range(3)]
    assert [int(s) for s in rec.seeds] == want
    assert len(set(want)) == 3


def test_a_strategy_returning_a_labeled_row_is_refused():
    strategy = ReplacesFirstPick(lambda lab: lab[0])
    with pytest.raises(RuntimeError, match="duplicate or already labeled index"):
        loop.run(POOL, TEST, model_fn=model_fn, strategy=strategy, initial=8, budget=3, rounds=1,
                 train_fn=train, seed=0)  # fmt: skip


@pytest.mark.parametrize("budget", [[3, 0], [0], 0])
def test_a_zero_budget_is_refused(budget):
    rounds = 2 if budget == 0 else None
    with pytest.raises(ValueError, match="every budget must be >= 1"):
        loop.run(POOL, TEST, model_fn=model_fn, strategy="random", initial=8, budget=budget,
                 rounds=rounds, train_fn=train, seed=0)  # fmt: skip


def test_budgets_as_0_d_integer_arrays():
    """budget=np.array(5) failed in numpy ('iteration over a 0-d array'); 0-d floats are refused
    naming budget."""
    kwargs = dict(model_fn=model_fn, strategy="random", initial=8, rounds=2, train_fn=train, seed=0)
    want = loop.run(POOL, TEST, budget=5, **kwargs).labeled
    for budget in (np.array(5), torch.tensor(5)):
        assert_array_equal(loop.run(POOL, TEST, budget=budget, **kwargs).labeled, want)
    with pytest.raises(TypeError, match="budget must be an int or a sequence of ints, got ndarray"):
        loop.run(POOL, TEST, budget=np.array(5.0), **kwargs)


def unseeded_train(model, dataset, *, task, seed, device):
    """A user's own training: ignores `seed`, shuffles and drops out from torch's generator."""
    from torch.utils.data import DataLoader

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(3):
        for x, y in DataLoader(dataset, batch_size=4, shuffle=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model


def test_a_train_fn_that_ignores_its_seed_still_repeats(tmp_path):
    """run did not seed a user's train_fn: reruns and resumed runs chose other labels."""
    kwargs = dict(model_fn=model_fn, strategy="margin", initial=6, budget=6, rounds=3, seed=2,
                  train_fn=unseeded_train)  # fmt: skip
    torch.manual_seed(0)
    full = loop.run(POOL, TEST, **kwargs)
    torch.manual_seed(1)  # another global state: the run must not depend on it
    assert_array_equal(loop.run(POOL, TEST, **kwargs).labeled, full.labeled)

    state, stopped = tmp_path / "run.npz", []

    def stop_after_round_1(line):
        stopped.append(line)
        if len(stopped) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.run(POOL, TEST, checkpoint=state, log=stop_after_round_1, **kwargs)
    assert_array_equal(loop.run(POOL, TEST, resume=state, **kwargs).labeled, full.labeled)


def test_lazy_modules_take_their_weights_from_the_run_seed():
    """The class-count probe ran round 0's model first, unseeded: a LazyLinear took its weights
    from the caller's generator state."""

    def lazy_model():
        return nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 3))

    kwargs = dict(model_fn=lazy_model, strategy="entropy", initial=6, budget=6, rounds=2, seed=0,
                  train_fn=train)  # fmt: skip
    torch.manual_seed(0)
    a = loop.run(POOL, TEST, **kwargs)
    torch.manual_seed(123)
    b = loop.run(POOL, TEST, **kwargs)
    assert_array_equal(a.labeled, b.labeled)
    assert a.values.tolist() == b.values.tolist()


def test_resume_refuses_another_pool_or_other_settings(tmp_path):
    kwargs = dict(model_fn=model_fn, strategy=CoreSet(), initial=6, budget=6, rounds=1, seed=0,
                  train_fn=train)  # fmt: skip
    state = tmp_path / "run.npz"
    loop.run(POOL, TEST, checkpoint=state, **kwargs)
    order = np.random.default_rng(0).permutation(len(POOL[1]))
    shuffled = (POOL[0][order], POOL[1][order])
    with pytest.raises(ValueError, match="another pool"):
        loop.run(shuffled, TEST, resume=state, **kwargs)
    with pytest.raises(ValueError, match="another test set"):
        loop.run(POOL, (TEST[0][:50], TEST[1][:50]), resume=state, **kwargs)
    with pytest.raises(ValueError, match="other strategy settings"):
        loop.run(POOL, TEST, resume=state, **dict(kwargs, strategy=CoreSet(prune=False)))
    with pytest.raises(ValueError, match="other select_options"):
        loop.run(POOL, TEST, resume=state, select_options={"mc_samples": 3}, **kwargs)
    assert loop.run(POOL, TEST, resume=state, **kwargs).rows  # the same settings resume


def test_resume_extends_a_run_with_more_rounds(tmp_path):
    """Resuming a finished run with rounds raised was refused ('budgets = [6, 6], this one
    [6, 6, 6, 6]'); now it goes on as a run started with the longer budgets."""
    kwargs = dict(model_fn=model_fn, strategy="entropy", initial=6, seed=3, train_fn=train)
    want = loop.run(POOL, TEST, budget=6, rounds=4, **kwargs)
    state = tmp_path / "run.npz"
    loop.run(POOL, TEST, budget=6, rounds=2, checkpoint=state, **kwargs)
    three = loop.run(POOL, TEST, budget=[6, 6, 6], resume=state, **kwargs)
    assert three.n_labeled.tolist() == [6, 12, 18, 24]
    got = loop.run(POOL, TEST, budget=6, rounds=4, resume=state, **kwargs)
    assert_array_equal(got.labeled, want.labeled)
    assert got.values.tolist() == want.values.tolist()
    assert got.n_labeled.tolist() == [6, 12, 18, 24, 30]
    with pytest.raises(ValueError, match=r"has budgets = \[6, 6, 6, 6\], this one \[6, 6\]"):
        loop.run(POOL, TEST, budget=6, rounds=2, resume=state, **kwargs)  # fewer: refused
    with pytest.raises(ValueError, match=r"this one \[6, 6, 6, 5, 5\]"):
        loop.run(POOL, TEST, budget=[6, 6, 6, 5, 5], resume=state, **kwargs)  # not an extension


def test_resume_ignores_settings_that_print_an_object_address(tmp_path):
    """A setting whose repr holds an object address (a function here) differs in every process,
    so it is not compared: the same run resumes with another function object of the same code."""
    kwargs = dict(model_fn=model_fn, strategy="entropy", initial=6, budget=6, rounds=2, seed=0,
                  train_fn=train)  # fmt: skip
    first_fn, second_fn = (lambda b: b), (lambda b: b)  # both alive: two addresses
    assert repr(first_fn) != repr(second_fn)
    state = tmp_path / "run.npz"
    with pytest.raises(KeyboardInterrupt):
        loop.run(POOL, TEST, checkpoint=state, select_options={"batch_fn": first_fn},
                 **dict(kwargs, train_fn=Recorder(fail_at=1)))  # fmt: skip
    full = loop.run(POOL, TEST, select_options={"batch_fn": first_fn}, **kwargs)
    resumed = loop.run(POOL, TEST, resume=state, select_options={"batch_fn": second_fn}, **kwargs)
    assert_array_equal(resumed.labeled, full.labeled)


def test_resume_names_a_damaged_state_file(tmp_path):
    kwargs = dict(model_fn=model_fn, strategy="entropy", initial=6, budget=6, rounds=1, seed=0,
                  train_fn=train)  # fmt: skip
    state = tmp_path / "run.npz"
    loop.run(POOL, TEST, checkpoint=state, **kwargs)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(state.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"resume: .*truncated.npz is not a saved fastal run"):
        loop.run(POOL, TEST, resume=truncated, **kwargs)
    other = tmp_path / "other.npy"
    np.save(other, np.arange(3))
    with pytest.raises(ValueError, match="is not a saved fastal run"):
        loop.run(POOL, TEST, resume=other, **kwargs)
    with np.load(state) as z:
        parts = dict(z)
    parts["labeled"] = np.concatenate([parts["labeled"][:-1], parts["labeled"][:1]])
    duplicated = tmp_path / "duplicated.npz"
    np.savez(duplicated, **parts)
    with pytest.raises(ValueError, match="not a consistent saved run: labeled has duplicate"):
        loop.run(POOL, TEST, resume=duplicated, **kwargs)
    parts["labeled"] = parts["labeled"][:-1]
    np.savez(duplicated, **parts)
    with pytest.raises(ValueError, match="holds 11 labeled rows"):
        loop.run(POOL, TEST, resume=duplicated, **kwargs)


def test_select_options_may_not_set_what_run_passes():
    with pytest.raises(ValueError, match="select_options sets batch_size, seed, which run passes"):
        loop.run(POOL, TEST, model_fn=model_fn, strategy="entropy", initial=6, budget=6,
                 rounds=1, select_options={"batch_size": 8, "seed": 1})  # fmt: skip


def test_a_dataset_test_set_is_labelled_once():
    reads = []

    class Counting(torch.utils.data.Dataset):
        def __len__(self):
            return len(TEST[1])

        def __getitem__(self, i):
            reads.append(i)
            return torch.from_numpy(TEST[0][i]), int(TEST[1][i])

    loop.run(POOL, Counting(), model_fn=model_fn, strategy="entropy", initial=6, budget=6,
             rounds=2, train_fn=train)  # fmt: skip
    n = len(TEST[1])
    # the fingerprint's 32 labels, the model pass of each of the 3 evaluations, the labels once
    assert len(reads) == 32 + 3 * n + n


def test_csv_quotes_and_auc_refuses_nan():
    res = loop.RunResult([{"round": 0, "n_labeled": 5, "accuracy": 0.5, "train_seconds": 1.0,
                           "select_seconds": 0.0}], "accuracy", np.arange(5), "a,b", 0)  # fmt: skip
    assert res.to_csv().splitlines()[1].startswith('"a,b",0,0,5,')
    with pytest.raises(ValueError, match="values contains NaN"):
        loop.auc([1, 2], [0.5, float("nan")])
    with pytest.raises(ValueError, match="n_labeled contains NaN"):
        loop.auc([1, float("nan")], [0.5, 0.6])


def test_training_that_diverges_is_refused():
    """A float16 model trained to NaN weights (Adam's eps is 0 in float16) and the run went on to
    report an accuracy for it (user audit, session 28)."""
    X, y = POOL
    dataset = TensorDataset(torch.from_numpy(X[:40]), torch.from_numpy(y[:40]))
    torch.manual_seed(0)
    hint = r"training diverged: parameter .* \(float16\).*Adam's eps of 1e-8 rounds to 0"
    with pytest.raises(ValueError, match=hint):
        loop.fit(model_fn().half(), dataset, max_steps=60, lr=1e-2)
    with pytest.raises(ValueError, match="training diverged"):
        loop.run(
            POOL,
            TEST,
            model_fn=lambda: model_fn().half(),
            strategy="random",
            initial=20,
            budget=5,
            rounds=1,
            train_fn=functools.partial(loop.fit, max_steps=60, lr=1e-2),
        )
    trained = loop.fit(model_fn().bfloat16(), dataset, max_steps=20)  # bfloat16 trains
    assert all(bool(torch.isfinite(p).all()) for p in trained.parameters())


def test_parameters_training_did_not_make_non_finite_are_not_refused():
    """A frozen -inf class mask and a lazy module left uninitialised (max_steps=0) are the
    model's own, not a divergence."""

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = model_fn()
            self.mask = nn.Parameter(torch.tensor([0.0, 0.0, -math.inf]), requires_grad=False)

        def forward(self, x):
            return self.body(x) + self.mask

    X, y = POOL
    keep = y < 2
    dataset = TensorDataset(torch.from_numpy(X[keep][:40]), torch.from_numpy(y[keep][:40]))
    loop.fit(Masked(), dataset, max_steps=10)
    loop.fit(nn.Sequential(nn.LazyLinear(3)), dataset, max_steps=0)


def test_a_trainable_parameter_non_finite_before_training_is_not_refused():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = model_fn()
            self.spare = nn.Parameter(torch.tensor([math.inf]))  # trainable, never in the graph

        def forward(self, x):
            return self.body(x)

    X, y = POOL
    dataset = TensorDataset(torch.from_numpy(X[:40]), torch.from_numpy(y[:40]))
    loop.fit(Unused(), dataset, max_steps=5)


def test_evaluate_gives_the_mean_squared_error():
    X = np.zeros((4, 2), np.float32)
    y = np.array([1.0, -1.0, 2.0, 0.0], np.float32)
    zero = nn.Linear(2, 1)
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)
    data = _Data((X, y), "test", "regression")
    assert evaluate(zero, data, "regression", device="cpu", batch_size=3) == pytest.approx(1.5)


def test_fit_passes_integer_inputs_as_they_are():
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 10, size=(30, 5)))
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 3, size=30))
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(20, 3))
    loop.fit(model, TensorDataset(tokens, labels), max_steps=3)


def test_a_strategy_index_one_past_the_pool_is_refused():
    strategy = ReplacesFirstPick(lambda lab: len(POOL[1]))
    with pytest.raises(RuntimeError, match=r"outside the pool \[0, 120\)"):
        loop.run(POOL, TEST, model_fn=model_fn, strategy=strategy, initial=8, budget=3, rounds=1,
                 train_fn=train, seed=0)  # fmt: skip


def test_the_initial_draw_is_sorted():
    first = _initial(10, 120, 3)
    assert_array_equal(first, np.sort(first))
    assert np.unique(first).size == 10


# -- second fuzz audit (session 31) -----------------------------------------------------------


def reg_model():
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))


def regression_data(n: int, seed: int):
    X = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
    return X, X[:, 0].copy()


def test_regression_targets_and_inputs_must_be_finite():
    """A NaN test target made every round's mse NaN; a NaN pool row surfaced, once labeled, as
    'training diverged'. Both are refused up front, naming the array and the row."""
    pool, (Xt, yt) = regression_data(60, 0), regression_data(20, 1)
    yt[3] = np.nan
    kw = dict(model_fn=reg_model, strategy="random", initial=10, budget=5, rounds=1,
              task="regression", train_fn=train)  # fmt: skip
    with pytest.raises(ValueError, match=r"^test\[1\] holds NaN or Inf regression targets in 1 "
                       r"row\(s\), first at row 3$"):  # fmt: skip
        loop.run(pool, (Xt, yt), **kw)
    X = pool[0].copy()
    X[7, 2] = np.inf
    with pytest.raises(ValueError, match=r"^pool\[0\] holds NaN or Inf inputs in 1 row\(s\), "
                       r"first at row 7$"):  # fmt: skip
        loop.run((X, pool[1]), regression_data(20, 1), **kw)
    # a Dataset's targets, as the rows are labeled: the pool row is named
    y = pool[1].copy()
    y[[5, 9]] = np.nan
    with pytest.raises(ValueError, match=r"^pool \(a Dataset\) holds a NaN or Inf regression "
                       r"target at row [59]$"):  # fmt: skip
        loop.run(RowDataset(pool[0], y), regression_data(20, 1), **{**kw, "initial": range(10)})


class FloatPicks(Random):
    """A strategy whose indices are floats (50.9 was labeled as row 50)."""

    name = "float_picks"

    def select(self, pool, budget, labeled=None, *, seed=None):
        picks = super().select(pool, budget, labeled, seed=seed).indices
        return Selection(picks + 0.9, {})


def test_a_strategy_returning_float_indices_is_refused():
    with pytest.raises(RuntimeError, match="float_picks returned indices of dtype float64, not "):
        loop.run(POOL, TEST, model_fn=model_fn, strategy=FloatPicks(), initial=8, budget=3,
                 rounds=1, train_fn=train, seed=0)  # fmt: skip


def test_fit_keeps_a_training_row_whatever_the_validation_fraction():
    """val_fraction = 0.995 of 100 rows held out round(99.5) = 100 of them: the model came back
    untrained, with no error."""
    X = torch.from_numpy(POOL[0][:100])
    y = torch.from_numpy(POOL[1][:100])
    model = model_fn()
    before = [p.detach().clone() for p in model.parameters()]
    loop.fit(model, TensorDataset(X, y), val_fraction=0.995, max_steps=5, seed=0)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (torch.tensor([0, 1, 2, 6] * 5), r"^dataset labels has class labels outside \[0, 3\) "
         r"\(the model returns 3 logits\): e.g. 6$"),
        (torch.tensor([0.5, 1.0] * 10), r"^dataset labels must hold integer class indices"),
        (torch.zeros(20, 2, dtype=torch.int64), r"^dataset labels must be 1-D class indices, got "
         r"shape \(20, 2\)$"),
    ],
)  # fmt: skip
def test_fit_checks_class_labels_as_run_does(labels, match):
    """fit gave torch's IndexError (label 6 of 3 logits) or RuntimeError (2-D labels)."""
    X = torch.from_numpy(POOL[0][:20])
    with pytest.raises(ValueError, match=match):
        loop.fit(model_fn(), TensorDataset(X, labels), max_steps=2)
    # whole-number float labels are class indices, as in run
    loop.fit(model_fn(), TensorDataset(X, torch.from_numpy(POOL[1][:20]).double()), max_steps=2)
    with pytest.raises(TypeError, match=r"^model must be an nn.Module, got function$"):
        loop.fit(model_fn, TensorDataset(X, torch.from_numpy(POOL[1][:20])), max_steps=2)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (dict(model_fn=model_fn()), TypeError, r"^model_fn must be a callable that returns a "
         r"fresh nn.Module \(e.g. a lambda or a class\), got Sequential$"),
        (dict(model_fn=5), TypeError, r"^model_fn must be a callable .* got int$"),
        (dict(train_fn=5), TypeError, r"^train_fn must be callable, got int$"),
        (dict(log=5), TypeError, r"^log must be callable, got int$"),  # was: after a round
        (dict(select_options="x"), TypeError, r"^select_options must be a dict, got str$"),
        (dict(select_options={"mc_sample": 3}), TypeError,  # was: after round 0's training
         r"^select_options has unknown option\(s\) 'mc_sample'"),
        (dict(select_options={"mc_samples": 0}), ValueError, r"^mc_samples must be"),
        (dict(batch_size=0), ValueError, r"^batch_size must be"),
        (dict(initial=np.array(5)), ValueError, r"^initial must be 1-D, got shape \(\)$"),
        (dict(initial=(i for i in range(8))), TypeError,
         r"^initial must hold integer indices, got generator$"),
        (dict(initial={1, 5, 9}), TypeError, r"^initial must hold integer indices, got set$"),
    ],
)  # fmt: skip
def test_run_checks_its_callables_and_initial_before_any_work(change, error, match):
    kw = dict(model_fn=model_fn, strategy="random", initial=8, budget=3, rounds=1,
              train_fn=train, seed=0)  # fmt: skip
    with pytest.raises(error, match=match):
        loop.run(POOL, TEST, **{**kw, **change})


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (dict(lr=-1.0), ValueError, r"^lr must be > 0, got -1.0$"),
        (dict(lr=float("nan")), ValueError, r"^lr must be finite, got nan$"),
        (dict(lr="x"), TypeError, r"^lr must be a real number, got str$"),
        (dict(weight_decay=-0.1), ValueError, r"^weight_decay must be >= 0.0, got -0.1$"),
    ],
)
def test_fit_checks_its_optimizer_settings(change, error, match):
    data = TensorDataset(torch.from_numpy(POOL[0][:20]), torch.from_numpy(POOL[1][:20]))
    with pytest.raises(error, match=match):
        loop.fit(model_fn(), data, max_steps=2, **change)


def test_test_rows_of_another_shape_than_the_pool_are_refused_before_training():
    rec = Recorder()
    with pytest.raises(ValueError, match=r"^test\[0\] rows have shape \(3,\), pool\[0\] rows "
                       r"\(4,\): the model takes one of them$"):  # fmt: skip
        loop.run(POOL, (TEST[0][:, :3], TEST[1]), model_fn=model_fn, strategy="random",
                 initial=8, budget=3, rounds=1, train_fn=rec, seed=0)  # fmt: skip
    assert rec.sizes == []


def test_ally_with_one_initial_label_is_refused_before_training():
    """ALLY's dual head trains with batch norm on the labeled rows: initial=1 failed only after
    round 0's training, with an error that did not name initial."""
    rec = Recorder()
    with pytest.raises(ValueError, match=r"^initial must give at least 2 labeled rows for ally, "
                       r"got 1$"):  # fmt: skip
        loop.run(POOL, TEST, model_fn=model_fn, strategy="ally", initial=1, budget=3, rounds=1,
                 train_fn=rec, seed=0)  # fmt: skip
    assert rec.sizes == []
    assert Random.min_labeled == 0
    # no round selects: nothing to refuse (round 0 trains and evaluates only)
    done = loop.run(POOL, TEST, model_fn=model_fn, strategy="ally", initial=1, budget=3,
                    rounds=0, train_fn=rec, seed=0)  # fmt: skip
    assert done.labeled.size == 1


def test_fit_names_a_bad_device():
    data = TensorDataset(torch.from_numpy(POOL[0][:20]), torch.from_numpy(POOL[1][:20]))
    with pytest.raises(ValueError, match=r"^device must be a torch.device or a device string"):
        loop.fit(model_fn(), data, max_steps=2, device="nope")


def _token_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 10, (n, 2))
    return X, (X[:, 0] > 4).astype(np.int64)


def test_integer_inputs_reach_an_embedding_model_as_integers():
    """run cast an (X, y) pair's integer inputs to float32: an nn.Embedding model failed in
    round 0, and ids past 2^24 collided; fit and the adapter pass them as they are."""

    def embedding_model():
        return nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))

    res = loop.run(
        _token_data(30, 0), _token_data(10, 1), model_fn=embedding_model, strategy="random",
        initial=5, budget=3, rounds=1, train_fn=functools.partial(loop.fit, max_steps=3), seed=0,
    )  # fmt: skip
    assert len(res.labeled) == 8
    ids = _Data((np.array([[2**24 + 1], [2**24]]), np.array([0, 1])), "pool", "classification")
    assert ids.X.dtype == torch.int64
    assert ids.X[:, 0].tolist() == [2**24 + 1, 2**24]


def test_integer_features_for_a_float_model_are_named():
    X, y = _token_data(20, 0)
    mlp = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    data = TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    with pytest.raises(TypeError, match="cannot take the dataset's integer inputs"):
        loop.fit(mlp, data, max_steps=2)
    with pytest.raises(RuntimeError) as err:
        loop.run((X, y), _token_data(10, 1), model_fn=lambda: mlp, strategy="random",
                 initial=5, budget=3, rounds=1, seed=0)  # fmt: skip
    assert any("integer inputs reach the model as they are" in n for n in err.value.__notes__)


def test_resume_names_another_task(tmp_path):
    """The other task's run has no column of this one's metric: that read raised a KeyError
    reported as 'is not a saved fastal run', before the settings were compared."""
    kwargs = dict(model_fn=model_fn, strategy="random", initial=6, budget=6, rounds=1, seed=0,
                  train_fn=train)  # fmt: skip
    state = tmp_path / "run.npz"
    loop.run(POOL, TEST, checkpoint=state, **kwargs)
    with pytest.raises(ValueError, match="has task = 'classification', this one 'regression'"):
        loop.run(POOL, TEST, resume=state, task="regression", **kwargs)


def test_select_options_may_name_the_needs():
    """needs is select's own keyword (the README asks for Bayesian SparseApprox with it): the
    early check of select_options refused it."""
    res = loop.run(POOL, TEST, model_fn=model_fn, strategy="sparse_approx", initial=10, budget=5,
                   rounds=1, train_fn=train, seed=0,
                   select_options={"needs": ("mc_probs",), "mc_samples": 3})  # fmt: skip
    assert len(res.labeled) == 15


@pytest.mark.parametrize(("dtype", "want"), [
    (np.float64, torch.float32),  # numpy float64: the default dtype, as documented
    (np.float32, torch.float32),
    (np.uint8, torch.float32),  # pixels
    (np.bool_, torch.float32),
    (np.int16, torch.int16),  # token ids
    (np.int64, torch.int64),
])  # fmt: skip
def test_pool_inputs_keep_token_ids_and_cast_the_rest(dtype, want):
    X = np.zeros((3, 2), dtype)
    assert _Data((X, np.array([0, 1, 0])), "pool", "classification").X.dtype == want


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_fit_takes_a_head_that_squeezes_its_output(task):
    """The one-row probe of 5a1bf6b refused .squeeze() heads (one row squeezed is no row)."""

    class Squeezed(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 3 if task == "classification" else 1)

        def forward(self, x):
            return self.head(x).squeeze()

    X = torch.from_numpy(POOL[0][:20])
    y = torch.from_numpy(POOL[1][:20]) if task == "classification" else X[:, 0]
    loop.fit(Squeezed(), TensorDataset(X, y), task=task, max_steps=2)


def test_fit_trains_a_regression_model_that_cannot_be_copied():
    """The probe of the model's outputs runs on a copy; for regression, which needs no class
    count, a model that cannot be copied (it holds a lock) trains without it, as before."""
    import threading

    class HoldsALock(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 1)
            self.lock = threading.Lock()

        def forward(self, x):
            return self.head(x)

    X = torch.from_numpy(POOL[0][:20])
    loop.fit(HoldsALock(), TensorDataset(X, X[:, :1]), task="regression", max_steps=2)
