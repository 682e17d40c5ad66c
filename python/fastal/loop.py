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
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import numbers
import os
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import save_npz_atomic, write_atomic
from ._torch_state import forked_rng
from ._validate import _number, check_positive_int

_STATE_VERSION = 1


def auc(n_labeled: Sequence[float], values: Sequence[float]) -> float:
    """Area under a learning curve, normalised by the label range.

    ``AUC = 1 / (n_K - n_0) · Σ_k (n_{k+1} - n_k) (v_k + v_{k+1}) / 2``: the trapezoid rule over the
    label counts divided by their range, i.e. the mean metric over the labeling budget (an
    accuracy AUC lies in [0, 1]), the "AUC ± std" of learning curves that Shen et al. report in
    accuracy units (Sparse Approximation, Tables 1–2). A single point gives its value, points that
    all share one label count (repeated runs of one round) their mean.

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
            f"n_labeled and values must be 1-D of the same non-zero length, got {x.shape} and {y.shape}"
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
    strategy : str
    seed : int
    added : ndarray
        For each index of ``labeled``, the round that labeled it (0: the initial set).
    """

    rows: list[dict]
    metric: str
    labeled: np.ndarray
    strategy: str = ""
    seed: int = 0
    added: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    @property
    def n_labeled(self) -> np.ndarray:
        return np.array([r["n_labeled"] for r in self.rows], dtype=np.int64)

    @property
    def values(self) -> np.ndarray:
        return np.array([r[self.metric] for r in self.rows], dtype=np.float64)

    @property
    def auc(self) -> float:
        """:func:`auc` of the metric over the label counts."""
        return auc(self.n_labeled, self.values)

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The rows as CSV text (``strategy, seed, round, n_labeled, <metric>, train_seconds,
        select_seconds``); written atomically to ``path`` when given."""
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
# data


class _Data:
    """A pool or test set with its labels: ``(X, y)`` arrays/tensors or a Dataset of ``(x, y)``."""

    def __init__(self, data: Any, name: str, task: str) -> None:
        from torch.utils.data import Dataset

        self.task = task
        self._all_labels = None
        if isinstance(data, (tuple, list)) and len(data) == 2:
            X, y = data
            self.label_name = f"{name}[1]"
            self.X = _as_tensor(X, f"{name}[0]", floating=True)
            self.y = _as_tensor(y, self.label_name, floating=task == "regression")
            if self.X.shape[0] != self.y.shape[0]:
                raise ValueError(
                    f"{name} inputs have {self.X.shape[0]} rows but labels {self.y.shape[0]}"
                )
            if task == "classification" and self.y.ndim != 1:
                raise ValueError(
                    f"{name} labels must be 1-D class indices, got shape {tuple(self.y.shape)}"
                )
            if task == "classification":
                self.y = _class_labels(self.y, self.label_name)
            self.dataset = None
            self.n = int(self.X.shape[0])
        elif isinstance(data, Dataset) and hasattr(data, "__len__"):
            self.label_name = f"{name} (a Dataset)"
            self.dataset, self.X, self.y = data, None, None
            self.n = len(data)
        else:
            raise TypeError(
                f"{name} must be an (inputs, labels) pair or a map-style Dataset of (x, y), got {type(data).__name__}"
            )
        if self.n == 0:
            raise ValueError(f"{name} is empty")

    @property
    def inputs(self) -> Any:
        """What the adapter runs the model over."""
        return self.X if self.dataset is None else self.dataset

    def all_labels(self) -> Any:
        """Every row's label, read once (a Dataset's item by item: images may be decoded)."""
        if self.dataset is None:
            return self.y
        if self._all_labels is None:
            self._all_labels = self.labels(np.arange(self.n))
        return self._all_labels

    def fingerprint(self) -> str:
        """A hash of the rows' identity: every label and a strided sample of the inputs (of a
        Dataset, the labels of 32 spread rows: its inputs may be augmented at random). A resumed
        run must see the same rows in the same order, or the saved indices name other rows."""
        import torch

        h = hashlib.blake2b(digest_size=16)
        h.update(str(self.n).encode())
        if self.dataset is None:
            parts = (self.y, self.X[:: max(1, self.n // 1024)])
        else:
            spread = np.linspace(0, self.n - 1, min(self.n, 32)).round().astype(np.int64)
            parts = (self.labels(spread),)
        for t in parts:
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def labels(self, idx: np.ndarray) -> Any:
        """The oracle: labels of the rows ``idx`` (a torch tensor)."""
        import torch

        if self.dataset is None:
            return self.y[torch.from_numpy(idx)]
        ys = [torch.as_tensor(self.dataset[int(i)][1]) for i in idx]
        if self.task == "classification":
            ys = [_one_label(y, self.label_name) for y in ys]
        y = torch.stack(ys) if ys else torch.empty(0, dtype=torch.int64)
        if self.task == "classification":
            return _class_labels(y, self.label_name)
        return y.to(torch.get_default_dtype())

    def subset(self, idx: np.ndarray) -> Any:
        """The rows ``idx`` with their labels, as a Dataset of ``(x, y)``."""
        import torch
        from torch.utils.data import Subset, TensorDataset

        if self.dataset is None:
            t = torch.from_numpy(idx)
            return TensorDataset(self.X[t], self.y[t])
        if self.task == "classification":  # labels as int64 class indices, checked as read
            return Subset(_ClassLabels(self.dataset, self.label_name), idx.tolist())
        return Subset(self.dataset, idx.tolist())


class _ClassLabels:
    """A Dataset of ``(x, y)`` whose labels come out as int64 class indices (``_class_labels``)."""

    def __init__(self, dataset: Any, name: str) -> None:
        self.dataset, self.name = dataset, name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        import torch

        x, y = self.dataset[i]
        return x, _class_labels(_one_label(torch.as_tensor(y), self.name), self.name)


def _as_tensor(a: Any, name: str, *, floating: bool) -> Any:
    import torch

    if isinstance(a, torch.Tensor):
        t = a.detach()
    elif isinstance(a, np.ndarray):
        arr = np.ascontiguousarray(a)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(a).__name__}")
    numpy_double = t.dtype == torch.float64 and isinstance(a, np.ndarray)
    if floating and (not t.is_floating_point() or numpy_double):
        t = t.to(torch.get_default_dtype())
    if t.ndim == 0:
        raise ValueError(f"{name} must have a row dimension")
    return t


def _one_label(y: Any, name: str) -> Any:
    """A Dataset's class label for one row as a 0-d tensor: a scalar, or one value stored with a
    shape such as (1,) (compared with (n,) predictions, (n, 1) labels would broadcast to n x n)."""
    if y.numel() != 1:
        raise ValueError(
            f"{name} must give one class label per row, got a label of shape {tuple(y.shape)}"
        )
    return y.reshape(())


def _class_labels(y: Any, name: str) -> Any:
    """Class labels as int64: integer (or bool) tensors, or floating ones holding whole numbers;
    anything else, and negative labels, raise an error that names ``name``."""
    import torch

    if y.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.is_floating_point():
        # whole numbers only (exact in float64 below 2**53): never truncate 0.5 to class 0
        bad = ~torch.isfinite(y) | (y != torch.round(y)) | (y.abs() >= 2**53)
        if bad.any():
            raise ValueError(
                f"{name} must hold integer class indices, got {y.dtype} labels such as "
                f"{float(y[bad][0])!r}; pass integer labels (floats only if they are whole numbers)"
            )
    y = y.to(torch.int64)
    if y.numel() and bool((y < 0).any()):
        raise ValueError(f"{name} has negative class labels: e.g. {int(y[y < 0][0])}")
    return y


def _check_classes(y: Any, n_classes: int, name: str) -> None:
    """Class labels ``y`` (int64) must lie in [0, n_classes): the model's number of logits."""
    if y.numel() and int(y.max()) >= n_classes:
        raise ValueError(
            f"{name} has class labels outside [0, {n_classes}) (the model returns {n_classes} "
            f"logits): e.g. {int(y.max())}"
        )


def _n_classes(model: Any, data: _Data, idx: np.ndarray) -> int:
    """The number of logits ``model`` returns, from one pool row (the RNG state is kept). It runs
    a copy: a lazy module (``nn.LazyLinear``) would otherwise take its weights here, outside the
    round's seeded training, and a resumed run would draw them elsewhere."""
    import copy

    import torch

    from .torch import pool_outputs

    rows = data.X[torch.from_numpy(idx[:1])] if data.dataset is None else data.subset(idx[:1])
    with forked_rng(_param_device(model)):
        probe = copy.deepcopy(model)
        logits = pool_outputs(probe, rows, ("logits",), inference_mode=False, progress=False)
    return int(logits["logits"].shape[1])


def _param_device(model: Any) -> Any:
    for t in model.parameters():
        return t.device
    return "cpu"


def as_model_dtype(model: Any, X: Any) -> Any:
    """Floating inputs in the dtype of the model's (first floating) parameters, as the adapter
    casts them; other inputs (token ids) as they are."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return X.to(dtype) if dtype is not None and X.is_floating_point() else X


def _tensors(dataset: Any) -> tuple[Any, Any]:
    """A Dataset of (x, y) stacked into two tensors (labeled sets are small)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors
    xs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=256, shuffle=False):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return torch.cat(xs), torch.cat(ys)


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
    """
    import copy

    import torch

    _check_task(task)
    for value, name in ((max_steps, "max_steps"), (min_val, "min_val"), (seed, "seed")):
        _count(value, name)
    for value, name in ((batch_size, "batch_size"), (eval_every, "eval_every")):
        check_positive_int(value, name)
    check_positive_int(patience, "patience")
    if not 0 <= _number(val_fraction, "val_fraction") < 1:
        raise ValueError(
            f"val_fraction must be in [0, 1): rows must be left to train on, got {val_fraction}"
        )
    X, y = _tensors(dataset)
    n = X.shape[0]
    if n == 0:
        raise ValueError("cannot train on an empty labeled set")
    X = as_model_dtype(model, X)
    model.to(device)
    dev = torch.device(device)
    nonfinite_before = _nonfinite_parameters(model)
    with forked_rng(dev, seed):
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=g)
        n_val = round(val_fraction * n) if val_fraction > 0 and val_fraction * n >= min_val else 0
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


def _nonfinite_parameters(model: Any) -> set[str]:
    """Names of the model's initialised parameters holding NaN or Inf before training (a mask of
    -inf on purpose; a lazy module's parameters are not initialised yet)."""
    import torch

    return {
        name
        for name, p in model.named_parameters()
        if not isinstance(p, torch.nn.parameter.UninitializedParameter)
        and not bool(torch.isfinite(p).all())
    }


def _check_trained(model: Any, steps: int, nonfinite_before: set[str]) -> None:
    """Refuse a model that training left with NaN / Inf in a trainable parameter that was finite
    (or initialised during training): it would still be evaluated (every argmax the first class)
    and select from NaN outputs. Frozen parameters and those non-finite before are left alone."""
    import torch

    diverged = _nonfinite_parameters(model) - nonfinite_before
    for name, p in model.named_parameters():
        if name in diverged and p.requires_grad:
            hint = (
                ": in float16, Adam's eps of 1e-8 rounds to 0; train in float32 or bfloat16, or "
                "pass your own train_fn"
                if p.dtype == torch.float16
                else ": lower lr, or pass your own train_fn"
            )
            raise ValueError(
                f"training diverged: parameter {name!r} ({str(p.dtype)[6:]}) holds NaN or Inf "
                f"after {steps} Adam steps{hint}"
            )


def _loss(out: Any, y: Any, task: str) -> Any:
    import torch.nn.functional as F

    if task == "classification":
        return F.cross_entropy(out, y)
    out, y = _match(out, y, "the labeled rows' targets")
    return F.mse_loss(out, y.to(out.dtype))


def _match(out: Any, y: Any, name: str) -> tuple[Any, Any]:
    """Regression outputs and targets of one shape: a scalar target may be (B,) or (B, 1) on
    either side; any other difference is an error (a broadcast would compare B x B pairs)."""
    if out.ndim == 2 and out.shape[1] == 1 and y.ndim == 1:
        out = out[:, 0]
    elif y.ndim == 2 and y.shape[1] == 1 and out.ndim == 1:
        y = y[:, 0]
    if out.shape != y.shape:
        raise ValueError(
            f"{name} have shape {tuple(y.shape)} but the model's outputs {tuple(out.shape)}"
        )
    return out, y


def evaluate(model: Any, data: _Data, task: str, *, device: Any, batch_size: int) -> float:
    """Test accuracy (classification) or mean squared error (regression)."""
    import torch

    from .torch import pool_outputs

    key = "logits" if task == "classification" else "outputs"
    out = pool_outputs(
        model, data.inputs, (key,), task=task, device=device, batch_size=batch_size, progress=False
    )[key]
    y = data.all_labels()
    if task == "classification":
        _check_classes(y, out.shape[1], data.label_name)
        return float((out.argmax(1) == y.to(out.device)).to(torch.float64).mean())
    out, y = _match(out, y, data.label_name)
    return float(((out.to(torch.float64) - y.to(out.device, torch.float64)) ** 2).mean())


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
        dtype), or a map-style Dataset of ``(x, y)``. Classification labels are class indices in
        ``[0, C)``, ``C`` the number of logits the model returns: integer (or bool) labels, or
        floating ones only when every value is a whole number (``1.0``, never ``0.5``: those
        raise rather than being truncated). They are checked (``ValueError`` naming ``pool[1]``
        or ``test[1]``) before the first training; a Dataset's labels as they are read (the
        labeled rows before each training, the test set at each evaluation), one per row (a
        scalar, or one value stored with a shape such as ``(1,)``). Regression targets have the
        shape of the model's outputs, a scalar target ``(n,)`` or ``(n, 1)`` on either side.
        The pool's labels are the oracle: only labeled rows are shown to training.
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
        are neither lost nor chosen again. A damaged or foreign file raises ``ValueError``.
    select_options : dict, optional
        More options for :func:`fastal.torch.select` (``mc_samples``, ``amp``, ``progress``,
        ...); not those run passes itself (``labeled``, ``labels``, ``seed``, ``task``,
        ``device``, ``batch_size``).
    log : callable, optional
        Called with one line per round.

    Returns
    -------
    RunResult
        ``.rows``, ``.auc``, ``.labeled``, ``.to_csv()``.
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
    options = dict(select_options or {})
    clash = sorted(set(options) & _RUN_OWNS)
    if clash:
        raise ValueError(
            f"select_options sets {', '.join(clash)}, which run passes itself (labeled, labels, "
            "seed from the run seed; task, device, batch_size from run's own arguments)"
        )
    meta = {
        "version": _STATE_VERSION, "seed": int(seed), "strategy": strategy_name, "n": data.n,
        "task": task, "budgets": budgets,
        "initial": int(initial) if isinstance(initial, numbers.Integral) else [int(i) for i in initial],
        "pool": data.fingerprint(), "test": testset.fingerprint(),
        "strategy_params": _stable_repr(strategy), "select_options": _stable_repr(options),
    }  # fmt: skip
    save_to = checkpoint if checkpoint is not None else resume

    if resume is not None:
        labeled, added, rows = _load_state(resume, meta)
    else:
        labeled = _initial(initial, data.n, seed)
        added, rows = np.zeros(labeled.size, np.int64), []
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
                n_classes = _n_classes(model, data, labeled)
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
        value = evaluate(model, testset, task, device=device, batch_size=batch_size)
        row = {"round": r, "n_labeled": int(labeled.size), metric: value,
               "train_seconds": train_seconds, "select_seconds": 0.0}  # fmt: skip
        if r < len(budgets):
            start = time.perf_counter()
            sel = torch_select(
                strategy, model, data.inputs, budgets[r], labeled, seed=select_seed, labels=labels,
                task=task, device=device, batch_size=batch_size, **{"progress": False, **options},
            )  # fmt: skip
            picks = np.asarray(
                sel.indices.cpu() if hasattr(sel.indices, "cpu") else sel.indices, dtype=np.int64
            )
            _check_picks(picks, labeled, budgets[r], data.n, strategy_name)
            row["select_seconds"] = time.perf_counter() - start
            labeled = np.concatenate([labeled, picks])
            added = np.concatenate([added, np.full(picks.size, r + 1, np.int64)])
        rows.append(row)
        save()
        if log is not None:
            log(
                f"{strategy_name} seed {seed} round {r}: {row['n_labeled']} labels, {metric} {value:.4f}"
            )
    return RunResult(rows, metric, labeled, strategy_name, int(seed), added)


#: The options of fastal.torch.select that run sets itself (select_options may not).
_RUN_OWNS = frozenset({"labeled", "labels", "seed", "task", "device", "batch_size"})


def _stable_repr(value: Any) -> str | None:
    """``repr(value)`` when it names the settings only (no object address, which would differ in
    the resumed process), else None (not compared)."""
    text = repr(sorted(value.items())) if isinstance(value, dict) else repr(value)
    return None if " at 0x" in text else text


def _budgets(budget: Any, rounds: int | None) -> list[int]:
    if isinstance(budget, numbers.Integral) and not isinstance(budget, bool):
        if rounds is None:
            raise ValueError("rounds is needed with a single int budget")
        budgets = [int(budget)] * _count(rounds, "rounds")
    elif isinstance(budget, (str, bytes)) or not isinstance(budget, Iterable):
        raise TypeError(f"budget must be an int or a sequence of ints, got {type(budget).__name__}")
    else:
        budgets = [_count(b, "every budget") for b in budget]
        if rounds is not None and _count(rounds, "rounds") != len(budgets):
            raise ValueError(f"budget has {len(budgets)} entries but rounds = {rounds}")
    if any(b < 1 for b in budgets):
        raise ValueError(f"every budget must be >= 1, got {budgets}")
    return budgets


def _check_task(task: Any) -> None:
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")


def _count(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    return int(v)


def _initial(initial: Any, n: int, seed: int) -> np.ndarray:
    from ._validate import check_indices

    if isinstance(initial, numbers.Integral) and not isinstance(initial, bool):
        k = int(initial)
        if not 1 <= k <= n:
            raise ValueError(f"initial must be between 1 and the pool size {n}, got {k}")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed)]))
        return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
    lab = check_indices(np.asarray(initial), n, "initial")
    if lab.size == 0:
        raise ValueError("initial must name at least one row")
    return lab


def _check_picks(picks: np.ndarray, labeled: np.ndarray, budget: int, n: int, name: str) -> None:
    if picks.shape != (budget,):
        raise RuntimeError(
            f"strategy {name} returned {picks.shape} indices for a budget of {budget}"
        )
    if picks.size and (picks.min() < 0 or picks.max() >= n):
        raise RuntimeError(f"strategy {name} returned indices outside the pool [0, {n})")
    if np.unique(picks).size != picks.size or np.isin(picks, labeled).any():
        raise RuntimeError(f"strategy {name} returned a duplicate or already labeled index")


def _save_state(
    path: Any, meta: dict, labeled: np.ndarray, added: np.ndarray, rows: list[dict]
) -> None:
    metric = "accuracy" if meta["task"] == "classification" else "mse"
    cols = {c: np.array([r[c] for r in rows], dtype=np.float64) for c in
            ("n_labeled", metric, "train_seconds", "select_seconds")}  # fmt: skip
    save_npz_atomic(
        path, meta=np.array(json.dumps(meta)), labeled=labeled.astype(np.int64), added=added.astype(np.int64),
        **{f"row_{k}": v for k, v in cols.items()},
    )  # fmt: skip


def _load_state(path: Any, meta: dict) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    if not Path(path).exists():
        raise FileNotFoundError(f"resume: no saved run at {path}")
    metric = "accuracy" if meta["task"] == "classification" else "mse"
    names = ("n_labeled", metric, "train_seconds", "select_seconds")
    try:
        # np.load leaves its file open when the zip is damaged: hold the file here
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            saved = json.loads(str(z["meta"]))
            labeled, added = z["labeled"], z["added"]
            cols = {c: z[f"row_{c}"] for c in names}
    except _UNREADABLE as err:
        why = f"{type(err).__name__}: {err}"
        raise ValueError(f"resume: {path} is not a saved fastal run ({why})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"resume: {path} is not a saved fastal run (its meta is not a mapping)")
    for key in ("version", "seed", "strategy", "n", "task", "initial", "budgets"):
        if saved.get(key) != meta[key]:
            raise ValueError(
                f"resume: the run saved at {path} has {key} = {saved.get(key)!r}, this one {meta[key]!r}"
            )
    # saved by newer runs only; a setting that cannot be told apart (None) is not compared
    for key, what in _RESUME_CHECKS.items():
        if saved.get(key) is not None and meta[key] is not None and saved[key] != meta[key]:
            raise ValueError(f"resume: the run saved at {path} had {what}; start a new checkpoint")
    n_rows = cols["n_labeled"].size
    first = meta["initial"] if isinstance(meta["initial"], int) else len(meta["initial"])
    expected = first + sum(meta["budgets"][:n_rows])  # each round but the last labels its budget
    labeled = _saved_indices(labeled, meta["n"], path, "labeled")
    added = _saved_indices(added, len(meta["budgets"]) + 1, path, "added", unique=False)
    if any(c.shape != (n_rows,) for c in cols.values()) or n_rows > len(meta["budgets"]) + 1:
        raise ValueError(f"resume: {path} has a table of inconsistent length")
    if labeled.size != expected or added.size != labeled.size:
        raise ValueError(
            f"resume: {path} holds {labeled.size} labeled rows ({added.size} rounds of labeling) "
            f"after {n_rows} rounds; {expected} expected"
        )
    rows = [
        {"round": i, "n_labeled": int(cols["n_labeled"][i]), metric: float(cols[metric][i]),
         "train_seconds": float(cols["train_seconds"][i]), "select_seconds": float(cols["select_seconds"][i])}
        for i in range(n_rows)
    ]  # fmt: skip
    return labeled, added, rows


#: What reading a damaged or foreign state file raises (a .npy: no context manager, TypeError).
_UNREADABLE = (OSError, ValueError, KeyError, AttributeError, TypeError, EOFError,
               zipfile.BadZipFile)  # fmt: skip

#: What a resumed run must share with the saved one beyond its settings, and how to say it.
_RESUME_CHECKS = {
    "pool": "another pool (its labels or inputs, or their order, differ: the saved indices would "
    "name other rows)",
    "test": "another test set",
    "strategy_params": "other strategy settings",
    "select_options": "other select_options",
}


def _saved_indices(
    values: np.ndarray, n: int, path: Any, name: str, *, unique: bool = True
) -> np.ndarray:
    from ._validate import check_indices

    try:
        return check_indices(values, n, name, unique=unique)
    except (TypeError, ValueError) as err:
        raise ValueError(f"resume: {path} is not a consistent saved run: {err}") from None
