"""The active-learning loop: train → evaluate → select → label, round after round, resumable.

:func:`run` holds the pool's labels as a hidden oracle and reveals a label only when its row is
selected. Each round trains a fresh model (from ``model_fn``) on the labeled rows, evaluates it on
the test set, asks the strategy for the next batch through :func:`fastal.torch.select`, and labels
it. The labeled set (and the table so far) is saved atomically after every round, so ``resume=``
continues a stopped run with the same labels it would have chosen without the stop.

Randomness is derived from the run seed only: the initial labeled set from ``SeedSequence([seed])``,
and in round ``r`` the model initialisation, the training and the strategy from
``SeedSequence([seed, r])``. Rerunning a round therefore repeats it exactly (on the same machine
and device: torch kernels may differ across them).

This module holds :func:`run`, :func:`fit`, :func:`auc` and :class:`RunResult`; the parts are
private modules beside it: :mod:`fastal._loop_data` (the pool and test sets, their labels),
:mod:`fastal._loop_train` (the loss, the checks of training, the test-set evaluation) and
:mod:`fastal._loop_state` (run's arguments and its saved state).
"""

from __future__ import annotations

import csv
import io
import numbers
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._io import write_atomic
from ._loop_data import (
    _check_classes,
    _Data,
    _n_classes,
    _tensors,
    as_model_dtype,
    check_train_seed,
    checked_training_labels,
)
from ._loop_state import (
    _RUN_OWNS,
    _STATE_VERSION,
    _budgets,
    _check_picks,
    _check_task,
    _count,
    _initial,
    _load_state,
    _save_state,
    _stable_repr,
)
from ._loop_train import _check_trained, _loss, _nonfinite_parameters, evaluate
from ._torch_state import forked_rng, grad_on
from ._validate import _number, check_positive_int


def auc(n_labeled: Sequence[float], values: Sequence[float]) -> float:
    """Area under a learning curve, normalised by the label range.

    ``AUC = 1 / (n_K - n_0) · Σ_k (n_{k+1} - n_k) (v_k + v_{k+1}) / 2``: the trapezoid rule over the
    label counts divided by their range, i.e. the mean metric over the labeling budget (an
    accuracy AUC lies in [0, 1]), the "AUC ± std" of learning curves that Shen et al. report in
    accuracy units (Sparse Approximation, Tables 1–2). A single point gives its value, points that
    all share one label count (repeated runs of one round) their mean.

    Parameters
    ----------
    n_labeled : sequence of float, shape (K,)
        Label counts of the curve's points, non-decreasing (read as float64), finite.
    values : sequence of float, shape (K,)
        The metric at each point (e.g. test accuracy), finite.

    Returns
    -------
    float
        The normalised area; ``mean(values)`` when every point has the same label count.

    Raises
    ------
    ValueError
        If the two are not 1-D of the same non-zero length, hold NaN or Inf, or ``n_labeled``
        decreases.

    Examples
    --------
    >>> from fastal.loop import auc
    >>> auc([10, 20, 40], [0.5, 0.7, 0.8])   # (10 * 0.6 + 20 * 0.75) / 30
    0.7
    """
    x = np.asarray(n_labeled, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(
            f"n_labeled and values must be 1-D of the same non-zero length, got {x.shape} and "
            f"{y.shape}"
        )
    for arr, name in ((x, "n_labeled"), (y, "values")):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or Inf")
    if np.any(np.diff(x) < 0):
        raise ValueError("n_labeled must be non-decreasing")
    if x[-1] == x[0]:  # no range to normalise by: the curve is one point
        return float(y.mean())
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


@dataclass
class RunResult:
    """The learning curve of one run.

    Attributes
    ----------
    rows : list of dict
        One per evaluation: ``round``, ``n_labeled``, the metric (``accuracy`` or ``mse``),
        ``train_seconds``, ``select_seconds`` (the selection that followed, 0 after the last).
    metric : str
        ``"accuracy"`` (classification) or ``"mse"`` (regression), on the test set.
    labeled : ndarray
        Every labeled pool index, in labeling order (the initial set first).
    strategy : str, default ""
        The strategy's registered ``name`` (its class name when it has none).
    seed : int, default 0
        The run seed.
    added : ndarray, default empty
        int64, for each index of ``labeled``, the round that labeled it (0: the initial set; the
        picks of the selection after evaluation ``r``: ``r + 1``).

    Also ``n_labeled`` (int64 array) and ``values`` (float64 array): the columns of ``rows``;
    ``auc``: :func:`auc` of them; ``to_csv()``: the table as CSV.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.loop import RunResult
    >>> rows = [{"round": 0, "n_labeled": 10, "accuracy": 0.5, "train_seconds": 1.0,
    ...          "select_seconds": 0.5},
    ...         {"round": 1, "n_labeled": 20, "accuracy": 0.7, "train_seconds": 1.0,
    ...          "select_seconds": 0.0}]
    >>> res = RunResult(rows, "accuracy", np.arange(20), "random", 0)
    >>> res.n_labeled.tolist(), res.values.tolist(), round(res.auc, 6)
    ([10, 20], [0.5, 0.7], 0.6)
    >>> print(res.to_csv(), end="")
    strategy,seed,round,n_labeled,accuracy,train_seconds,select_seconds
    random,0,0,10,0.5,1.0,0.5
    random,0,1,20,0.7,1.0,0.0
    """

    rows: list[dict]
    metric: str
    labeled: np.ndarray
    strategy: str = ""
    seed: int = 0
    added: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    @property
    def n_labeled(self) -> np.ndarray:
        """(len(rows),) int64: the label count of each evaluation."""
        return np.array([r["n_labeled"] for r in self.rows], dtype=np.int64)

    @property
    def values(self) -> np.ndarray:
        """(len(rows),) float64: the metric of each evaluation."""
        return np.array([r[self.metric] for r in self.rows], dtype=np.float64)

    @property
    def auc(self) -> float:
        """:func:`auc` of the metric over the label counts."""
        return auc(self.n_labeled, self.values)

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The rows as CSV text (``strategy, seed, round, n_labeled, <metric>, train_seconds,
        select_seconds``); written atomically to ``path`` when given.

        Parameters
        ----------
        path : str or os.PathLike, optional
            File to write (through a temporary file and ``os.replace``); nothing is written
            without it.

        Returns
        -------
        str
            The CSV text, a header line then one line per row, ``\\n``-terminated.
        """
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")  # quotes a strategy name with a comma
        cols = ["round", "n_labeled", self.metric, "train_seconds", "select_seconds"]
        out.writerow(["strategy", "seed", *cols])
        for r in self.rows:
            out.writerow([self.strategy, str(self.seed), *(_fmt(r[c]) for c in cols)])
        text = buf.getvalue()
        if path is not None:
            write_atomic(path, lambda f: f.write(text.encode()))
        return text


def _fmt(v: Any) -> str:
    return str(int(v)) if isinstance(v, (numbers.Integral, np.integer)) else repr(float(v))


# ---------------------------------------------------------------------------------------------
# training and evaluation


def fit(
    model: Any,
    dataset: Any,
    *,
    task: str = "classification",
    seed: int = 0,
    device: Any = "cpu",
    max_steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    val_fraction: float = 0.2,
    min_val: int = 10,
    eval_every: int = 10,
    patience: int = 10,
) -> Any:
    """The default training function: Adam on cross-entropy (or MSE), early stopping.

    ``val_fraction`` of the labeled rows (when there are at least ``min_val / val_fraction`` of
    them, so that the held-out part has ``min_val`` rows) is held out; every ``eval_every`` steps
    the held-out loss is measured, the best weights are kept, and training stops after ``patience``
    evaluations without improvement or ``max_steps`` steps, then the best weights are restored.
    Minibatches of ``batch_size`` are drawn in epochs of a seeded permutation. The model is left
    in eval mode. Tune with ``functools.partial(fit, max_steps=..., lr=...)``.

    Parameters
    ----------
    model : nn.Module
    dataset : Dataset of (x, y)
        The labeled rows (stacked into tensors: active-learning labeled sets are small; floating
        inputs are cast to the model's parameter dtype, as :func:`fastal.torch.pool_outputs` does).
        Inputs must be finite; labels class indices in ``[0, C)`` for a model of ``C`` logits
        (whole-number floats taken), or finite regression targets: else ``ValueError``.
    task : {"classification", "regression"}
    seed : int >= 0
        Seeds the split, the batches and dropout (the global torch RNG is restored afterwards).
    device : default "cpu"
    max_steps : int >= 0, default 300
        Adam steps at most.
    batch_size : int >= 1, default 64
    lr, weight_decay : float, default 1e-3 and 0
        Adam's settings.
    val_fraction : float in [0, 1), default 0.2
        Share of the labeled rows held out for early stopping (none below ``min_val`` rows).
    min_val : int >= 0, default 10
    eval_every : int >= 1, default 10
        Steps between held-out evaluations.
    patience : int >= 1, default 10
        Evaluations without improvement before training stops.

    Returns
    -------
    The trained model. Training that leaves a trainable parameter NaN or Inf (finite before)
    raises ``ValueError``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from torch.utils.data import TensorDataset
    >>> from fastal.loop import fit
    >>> X = torch.tensor([[-1.0], [-2.0], [1.0], [2.0]])
    >>> model = fit(torch.nn.Linear(1, 2), TensorDataset(X, torch.tensor([0, 0, 1, 1])),
    ...             max_steps=200, lr=0.1)
    >>> model(X).argmax(1).tolist(), model.training
    ([0, 0, 1, 1], False)
    """
    import copy

    import torch

    _check_task(task)
    for value, name in ((max_steps, "max_steps"), (min_val, "min_val")):
        _count(value, name)
    seed = check_train_seed(seed)
    for value, name in ((batch_size, "batch_size"), (eval_every, "eval_every")):
        check_positive_int(value, name)
    check_positive_int(patience, "patience")
    _number(lr, "lr", positive=True)  # torch's 'Invalid learning rate' otherwise, or NaN weights
    _number(weight_decay, "weight_decay", minimum=0.0)
    if not 0 <= _number(val_fraction, "val_fraction") < 1:
        raise ValueError(
            f"val_fraction must be in [0, 1): rows must be left to train on, got {val_fraction}"
        )
    X, y = _tensors(dataset)
    n = X.shape[0]
    if n == 0:
        raise ValueError("cannot train on an empty labeled set")
    y = checked_training_labels(model, X, y, task, seed)
    X = as_model_dtype(model, X)
    from .torch._checks import _check_device

    dev = _check_device(device, "device", cpu_or_cuda=True)
    model.to(dev)
    nonfinite_before = _nonfinite_parameters(model)
    with forked_rng(dev, seed), grad_on():
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=g)
        n_val = round(val_fraction * n) if val_fraction > 0 and val_fraction * n >= min_val else 0
        n_val = min(n_val, n - 1)  # 0.995 of 100 rows held out all 100: nothing was trained
        val, train = perm[:n_val], perm[n_val:]
        Xt, yt = X[train].to(dev), y[train].to(dev)
        Xv, yv = X[val].to(dev), y[val].to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        best, best_state, bad = float("inf"), None, 0
        order, pos = torch.randperm(len(train), generator=g), 0
        bs = min(batch_size, len(train))
        for step in range(max_steps):
            if pos + bs > len(train):
                order, pos = torch.randperm(len(train), generator=g), 0
            idx = order[pos : pos + bs].to(dev)
            pos += bs
            model.train()
            opt.zero_grad(set_to_none=True)
            loss = _loss(model(Xt[idx]), yt[idx], task)
            loss.backward()
            opt.step()
            if n_val and ((step + 1) % eval_every == 0 or step + 1 == max_steps):
                model.eval()
                with torch.no_grad():
                    v = float(_loss(model(Xv), yv, task))
                if v < best:
                    best, bad = v, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    bad += 1
                    if bad >= patience:
                        break
        if best_state is not None:
            model.load_state_dict(best_state)
    model.eval()
    _check_trained(model, step + 1 if max_steps else 0, nonfinite_before)
    return model


# ---------------------------------------------------------------------------------------------
# the loop


def run(
    pool: Any,
    test: Any,
    *,
    model_fn: Callable[[], Any],
    strategy: Any,
    initial: int | Sequence[int],
    budget: int | Sequence[int],
    rounds: int | None = None,
    train_fn: Callable[..., Any] | None = None,
    task: str = "classification",
    seed: int = 0,
    device: Any = "cpu",
    batch_size: int = 256,
    checkpoint: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    select_options: dict | None = None,
    collate_fn: Callable[[list], Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Run an active-learning experiment and return its learning curve.

    Round ``r = 0, 1, ..., rounds``: train a fresh model on the labeled rows, evaluate it on
    ``test`` (a row of the table), then, except after the last evaluation, select ``budget[r]``
    pool rows with ``strategy`` (through :func:`fastal.torch.select`) and reveal their labels.

    Parameters
    ----------
    pool, test : (inputs, labels) or Dataset
        ``(X, y)`` numpy arrays or torch tensors (floating numpy inputs become the default torch
        dtype, as do bool and 8-bit integers (pixels); integers of 16 bits or more, e.g. token
        ids, stay integer), or a map-style Dataset of ``(x, y)``. Classification labels are
        class indices in ``[0, C)``, ``C`` the number of logits the model returns: integer (or
        bool) labels, or
        floating ones only when every value is a whole number (``1.0``, never ``0.5``: those
        raise rather than being truncated). They are checked (``ValueError`` naming ``pool[1]``
        or ``test[1]``) before the first training; a Dataset's labels as they are read (the
        labeled rows before each training, the test set at each evaluation), one per row (a
        scalar, or one value stored with a shape such as ``(1,)``). Regression targets have the
        shape of the model's outputs, a scalar target ``(n,)`` or ``(n, 1)`` on either side.
        The pool's labels are the oracle: only labeled rows are shown to training. NaN or Inf
        floating inputs of an (inputs, labels) pair, and NaN or Inf regression targets (a
        Dataset's as they are read), raise ``ValueError`` naming the array and the row.
    model_fn : callable
        ``model_fn() -> nn.Module``, called at the start of every round under the round's seed.
    strategy : Strategy, class or name
        e.g. ``"badge"`` or ``fastal.strategies.CRC(group_size=10)``.
    initial : int or sequence of int
        Size of the initial labeled set (drawn uniformly with the run seed) or the indices.
    budget : int or sequence of int
        Points labeled per round: one int for every round, or one per round.
    rounds : int, optional
        Selection rounds (default: ``len(budget)``; required with an int budget).
    train_fn : callable, optional
        ``train_fn(model, dataset, *, task, seed, device) -> model`` with ``dataset`` a Dataset of
        the labeled ``(x, y)``; default the strategy's ``train_fn`` when it has one (ALLY: its
        primal-dual trainer), else :func:`fit`. It runs with torch's generator seeded from the
        round's seed (and restored afterwards), so one that ignores ``seed`` repeats too; numpy's
        and Python's global generators are not seeded.
    task : {"classification", "regression"}
        Metric: test accuracy, or test MSE (mean over rows and outputs).
    seed : int >= 0
        The run seed (see the module docstring for how rounds derive theirs).
    device : default "cpu"
        Where training, evaluation and the pool pass run.
    batch_size : int, default 256
        Rows per forward pass in evaluation and selection.
    checkpoint : path, optional
        Where the state (labeled set in labeling order, table so far, run settings) is written
        atomically (.npz through a temporary file and ``os.replace``) before the first round and
        after every round.
    resume : path, optional
        Continue the run saved there (it must exist and match ``seed``, ``strategy`` and its
        settings, the pool and the test set (a hash of their labels and sampled inputs: the same
        rows in the same order), ``task``, ``initial``, the budgets and ``select_options``); the
        state keeps being saved there unless ``checkpoint`` says otherwise. Labels already chosen
        are neither lost nor chosen again. The budgets may go on past the saved ones (``rounds``
        raised, or more entries): the run continues as one started with them would have (each
        round's seeds depend on the run seed and the round only), the saved last round trained
        again to select. A damaged or foreign file raises ``ValueError``.
    select_options : dict, optional
        More options for :func:`fastal.torch.select` (``mc_samples``, ``amp``, ``progress``,
        ...); not those run passes itself (``labeled``, ``labels``, ``seed``, ``task``,
        ``device``, ``batch_size``, ``collate_fn``). Its ``batch_fn`` and ``num_workers`` read
        the pool (the selection, and the one row that gives the number of classes), not the
        test set, which may be of another kind.
    collate_fn : callable, optional
        For Datasets whose rows differ in length (token ids, audio): the ``collate_fn`` of the
        DataLoaders that read the pool (selection) and the test set (evaluation), given the
        Dataset's ``(x, y)`` items (see :func:`fastal.torch.pool_outputs`). The default
        training (:func:`fit`) stacks the labeled rows and cannot take such rows: pass a
        ``train_fn`` that batches them with the same function.
    log : callable, optional
        Called with one line per round.

    Returns
    -------
    RunResult
        ``.rows``, ``.auc``, ``.labeled``, ``.to_csv()``.

    Examples
    --------
    Two rounds of random sampling, 4 labels each, with a short training:

    >>> import functools
    >>> import numpy as np, torch
    >>> from fastal.loop import fit, run
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 2)).astype(np.float32)
    >>> y = (X[:, 0] > 0).astype(np.int64)
    >>> res = run((X[:40], y[:40]), (X[40:], y[40:]), model_fn=lambda: torch.nn.Linear(2, 2),
    ...           strategy="random", initial=4, budget=4, rounds=2,
    ...           train_fn=functools.partial(fit, max_steps=20))
    >>> res.n_labeled.tolist(), res.metric, res.added.tolist()
    ([4, 8, 12], 'accuracy', [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    >>> 0.0 <= res.auc <= 1.0
    True
    """
    import torch

    from .strategies import Strategy, get
    from .torch import select as torch_select
    from .torch._checks import _check_device

    _check_task(task)
    seed = _count(seed, "seed")
    _check_device(device, "device", cpu_or_cuda=True)
    if isinstance(strategy, str):
        strategy = get(strategy)()
    elif isinstance(strategy, type) and issubclass(strategy, Strategy):
        strategy = strategy()
    strategy_name = getattr(strategy, "name", "") or type(strategy).__name__
    data = _Data(pool, "pool", task)
    testset = _Data(test, "test", task)
    if data.X is not None and testset.X is not None and data.X.shape[1:] != testset.X.shape[1:]:
        raise ValueError(  # found only by the evaluation after round 0's training otherwise
            f"test[0] rows have shape {tuple(testset.X.shape[1:])}, pool[0] rows "
            f"{tuple(data.X.shape[1:])}: the model takes one of them"
        )
    budgets = _budgets(budget, rounds)
    validate = getattr(strategy, "validate_budget", None)  # e.g. CRC's multiple of G, up front
    for b in budgets if validate is not None else ():
        validate(b)
    if train_fn is None:  # a strategy that needs its own training (ALLY) brings its trainer
        train_fn = getattr(strategy, "train_fn", None) or fit
    metric = "accuracy" if task == "classification" else "mse"
    is_count = isinstance(initial, numbers.Integral) and not isinstance(initial, bool)
    sequence = isinstance(initial, Iterable) and not isinstance(initial, (str, bytes))
    if not (is_count or sequence) or isinstance(initial, bool):
        raise TypeError(f"initial must be an int or a sequence of row indices, got {initial!r}")
    if not is_count:  # checked (and a generator read) once, before the settings record it
        initial = _initial(initial, data.n, seed)
    if isinstance(model_fn, torch.nn.Module) or not callable(model_fn):
        raise TypeError(
            "model_fn must be a callable that returns a fresh nn.Module (e.g. a lambda or a "
            f"class), got {type(model_fn).__name__}"
        )
    for fn, fn_name in ((train_fn, "train_fn"), (log, "log"), (collate_fn, "collate_fn")):
        if fn is not None and not callable(fn):
            raise TypeError(f"{fn_name} must be callable, got {type(fn).__name__}")
    if select_options is not None and not isinstance(select_options, Mapping):
        raise TypeError(f"select_options must be a dict, got {type(select_options).__name__}")
    options = dict(select_options or {})
    clash = sorted(set(options) & _RUN_OWNS)
    if clash:
        raise ValueError(
            f"select_options sets {', '.join(clash)}, which run passes itself (labeled, labels, "
            "seed from the run seed; task, device, batch_size, collate_fn from run's own "
            "arguments)"
        )
    # before round 0's training, which select would only follow with these errors
    from .torch._checks import _check_collate
    from .torch.adapter import _SELECT_OPTIONS, _check_counts

    unknown = sorted(set(options) - _SELECT_OPTIONS - {"needs"})  # needs: select's own keyword
    if unknown:
        raise TypeError(
            f"select_options has unknown option(s) {', '.join(map(repr, unknown))}: options are "
            "fastal.torch.select's keywords (mc_samples, amp, embed_fn, ...)"
        )
    check_positive_int(batch_size, "batch_size")
    _check_counts(**{k: options[k] for k in ("mc_samples", "num_workers") if k in options})
    for d in (data, testset):
        _check_collate(collate_fn, d.inputs)
    # how the pool's rows are read (the class count, as the selection reads them)
    reading = {"collate_fn": collate_fn} | {
        k: options[k] for k in ("batch_fn", "num_workers") if k in options
    }
    meta = {
        "version": _STATE_VERSION,
        "seed": int(seed),
        "strategy": strategy_name,
        "n": data.n,
        "task": task,
        "budgets": budgets,
        "initial": int(initial)
        if isinstance(initial, numbers.Integral)
        else [int(i) for i in initial],
        "pool": data.fingerprint(),
        "test": testset.fingerprint(),
        "strategy_params": _stable_repr(strategy),
        "select_options": _stable_repr(options),
    }
    save_to = checkpoint if checkpoint is not None else resume

    if resume is not None:
        labeled, added, rows = _load_state(resume, meta)
    else:
        labeled = _initial(initial, data.n, seed)
        added, rows = np.zeros(labeled.size, np.int64), []
        least = getattr(strategy, "min_labeled", 0)
        if budgets and labeled.size < least:  # found only after round 0's training otherwise
            raise ValueError(
                f"initial must give at least {least} labeled rows for {strategy_name}, got "
                f"{labeled.size}"
            )
    # resumed: labeled already holds the picks of the rounds done
    wanted = labeled.size + sum(budgets[len(rows) :])
    if wanted > data.n:
        raise ValueError(f"initial + budgets = {wanted} is more than the pool ({data.n} rows)")

    def save() -> None:
        if save_to is not None:
            _save_state(save_to, meta, labeled, added, rows)

    save()
    n_classes = None
    for r in range(len(rows), len(budgets) + 1):
        model_seed, train_seed, select_seed = (
            int(s) for s in np.random.SeedSequence([int(seed), r]).generate_state(3)
        )
        with forked_rng(device, model_seed):
            model = model_fn()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model_fn must return an nn.Module, got {type(model).__name__}")
        labels = None
        if task == "classification":
            if n_classes is None:  # labels must index the model's logits: check before training
                n_classes = _n_classes(model, data, labeled, **reading)
                for d in (data, testset):
                    if d.dataset is None:
                        _check_classes(d.y, n_classes, d.label_name)
            labels = data.labels(labeled)  # revealed so far (a Dataset's are checked as read)
            _check_classes(labels, n_classes, data.label_name)
        start = time.perf_counter()
        # under the round's seed: a user's train_fn that ignores `seed` (a shuffling DataLoader,
        # dropout) still repeats exactly, on a rerun and after a resume
        with forked_rng(device, train_seed):
            trained = train_fn(
                model, data.subset(labeled), task=task, seed=train_seed, device=device
            )
        model = trained if trained is not None else model
        train_seconds = time.perf_counter() - start
        value = evaluate(
            model, testset, task, device=device, batch_size=batch_size, collate_fn=collate_fn
        )
        row = {"round": r, "n_labeled": int(labeled.size), metric: value,
               "train_seconds": train_seconds, "select_seconds": 0.0}  # fmt: skip
        if r < len(budgets):
            start = time.perf_counter()
            sel = torch_select(
                strategy, model, data.inputs, budgets[r], labeled, seed=select_seed, labels=labels,
                task=task, device=device, batch_size=batch_size, **{"progress": False, **options},
                collate_fn=collate_fn,
            )  # fmt: skip
            picks = np.asarray(sel.indices.cpu() if hasattr(sel.indices, "cpu") else sel.indices)
            _check_picks(picks, labeled, budgets[r], data.n, strategy_name)
            picks = picks.astype(np.int64)
            row["select_seconds"] = time.perf_counter() - start
            labeled = np.concatenate([labeled, picks])
            added = np.concatenate([added, np.full(picks.size, r + 1, np.int64)])
        rows.append(row)
        save()
        if log is not None:
            log(
                f"{strategy_name} seed {seed} round {r}: {row['n_labeled']} labels, {metric} "
                f"{value:.4f}"
            )
    return RunResult(rows, metric, labeled, strategy_name, int(seed), added)
