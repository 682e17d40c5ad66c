"""The pool and test sets of the active-learning loop, and the checks of their labels.

:class:`_Data` holds an ``(X, y)`` pair or a map-style Dataset of ``(x, y)``: the labels as the
oracle (read for the rows asked), a fingerprint of the rows for a resumed run, and the labeled rows
as a Dataset to train on. The functions beside it turn labels into int64 class indices (refusing
fractional and negative ones, and those past the model's logits), count a model's logits, stack a
labeled Dataset into tensors and cast inputs to the model's dtype. :func:`fastal.loop.run`,
:func:`fastal.loop.fit` and :func:`fastal._loop_train.evaluate` call them, and
:mod:`fastal.pdcl`'s trainer stacks and casts its labeled set with :func:`_tensors` and
:func:`as_model_dtype`.
"""

from __future__ import annotations

import hashlib
import numbers
from typing import Any

import numpy as np

from ._torch_state import forked_rng

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
            # integers of 16 bits or more (token ids) as they are, as fit and the adapter take
            # them (as floats an nn.Embedding refused them, ids past 2^24 collided); bool and
            # 8-bit pixels, and numpy float64, in the default float dtype as before
            self.X = _as_tensor(X, f"{name}[0]", floating=not _token_ids(X))
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
            else:  # a NaN target made every test error NaN, or read as a diverged training
                _refuse_nonfinite(self.y, self.label_name, "regression targets")
            _refuse_nonfinite(self.X, f"{name}[0]", "inputs")
            self.dataset = None
            self.n = int(self.X.shape[0])
        elif isinstance(data, Dataset) and hasattr(data, "__len__"):
            self.label_name = f"{name} (a Dataset)"
            self.dataset, self.X, self.y = data, None, None
            self.n = len(data)
        else:
            raise TypeError(
                f"{name} must be an (inputs, labels) pair or a map-style Dataset of (x, y), got "
                f"{type(data).__name__}"
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
        ys = [_label_tensor(_row_pair(self.dataset, int(i), self.label_name)[1], self.label_name)
              for i in idx]  # fmt: skip
        if self.task == "classification":
            ys = [_one_label(y, self.label_name) for y in ys]
        y = torch.stack(ys) if ys else torch.empty(0, dtype=torch.int64)
        if self.task == "classification":
            return _class_labels(y, self.label_name)
        y = y.to(torch.get_default_dtype())
        _refuse_nonfinite(y, self.label_name, "regression targets", rows=idx)
        return y

    def subset(self, idx: np.ndarray) -> Any:
        """The rows ``idx`` with their labels, as a Dataset of ``(x, y)``."""
        import torch
        from torch.utils.data import Subset, TensorDataset

        if self.dataset is None:
            t = torch.from_numpy(idx)
            return TensorDataset(self.X[t], self.y[t])
        # labels checked as read: int64 class indices, or finite regression targets
        return Subset(_CheckedLabels(self.dataset, self.label_name, self.task), idx.tolist())


class _CheckedLabels:
    """A Dataset of ``(x, y)`` whose labels come out as int64 class indices (``_class_labels``),
    or as finite regression targets (a NaN read as a diverged training)."""

    def __init__(self, dataset: Any, name: str, task: str) -> None:
        self.dataset, self.name, self.task = dataset, name, task

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        import torch

        x, y = _row_pair(self.dataset, i, self.name)
        y = _label_tensor(y, self.name)
        if self.task == "classification":
            return x, _class_labels(_one_label(y, self.name), self.name)
        if y.is_floating_point() and not bool(torch.isfinite(y).all()):
            raise ValueError(f"{self.name} holds a NaN or Inf regression target at row {i}")
        return x, y


def check_train_seed(seed: Any) -> int:
    """A training seed: an int that ``torch.Generator.manual_seed`` takes, [0, 2**64) (2**64 was
    torch's "Overflow when unpacking long long", 1.5 was truncated to 1)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be a non-negative int, got {seed!r}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    return int(seed)


def checked_training_labels(model: Any, X: Any, y: Any, task: str, seed: int) -> Any:
    """The labels of a training set (``fit``, the primal-dual trainer), its inputs ``X`` checked
    finite: class indices in [0, C) for a model of C logits (0.5 was trained as class 0, a label
    past the logits was torch's IndexError), or finite regression targets."""
    import copy

    import torch

    from .torch._checks import INTEGER_INPUTS_HINT, _check_output, _integer_dtype_error

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    lazy = torch.nn.parameter.is_lazy  # an unset lazy parameter cannot be asked anything
    if any(not lazy(p) and p.is_inference() for p in model.parameters()):  # was: at step 1
        raise ValueError(
            "model has parameters created under torch.inference_mode() (inference tensors), which "
            "no optimizer can update: build the model outside inference mode"
        )
    _refuse_nonfinite(X, "dataset", "inputs")
    if task == "classification" and y.ndim != 1:
        raise ValueError(f"dataset labels must be 1-D class indices, got shape {tuple(y.shape)}")
    # two rows through a copy (lazy modules stay unset; two, as a .squeeze() head makes one row
    # no row): a model returning a tuple or a dict is told so here, not by the loss
    device = _param_device(model)
    rows = min(2, int(X.shape[0]))
    try:
        probe = copy.deepcopy(model).eval()  # eval: no batch-norm statistics moved, no dropout
    except Exception:
        if task == "classification":  # its labels need the number of classes
            raise
        probe = None  # a model that cannot be copied: no probe for regression, as before
    out = None
    if probe is not None:
        with torch.no_grad(), forked_rng(device, seed):
            try:
                out = probe(as_model_dtype(model, X[:rows]).to(device))
            except (RuntimeError, TypeError) as err:
                if not _integer_dtype_error(X, err):
                    raise
                raise TypeError(
                    f"the model cannot take the dataset's integer inputs ({X.dtype}: {err}); "
                    f"{INTEGER_INPUTS_HINT}"
                ) from err
            # the shape where there are two rows (one row squeezed is no row); else the type alone
            if rows == 2 or not isinstance(out, torch.Tensor):
                out = _check_output(out, task, rows)
    if task != "classification":
        _refuse_nonfinite(y, "dataset", "regression targets")
        return y
    y = _class_labels(y, "dataset labels")
    _check_classes(y, int(out.shape[-1]), "dataset labels")
    return y


def _refuse_nonfinite(t: Any, name: str, what: str, rows: Any = None) -> None:
    """A ValueError naming ``name`` and the first row of ``t`` with a NaN or Inf (``rows``: the
    pool rows of ``t``'s rows, when ``t`` holds a selection of them)."""
    import torch

    if not t.is_floating_point() or t.numel() == 0:
        return
    flat = t.reshape(t.shape[0], -1)
    step = max(1, (1 << 24) // max(1, flat.shape[1]))  # no pool-sized temporary
    chunks = (flat[s : s + step] for s in range(0, flat.shape[0], step))
    bad = torch.cat([~torch.isfinite(c).all(dim=1) for c in chunks])
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0])
        row = first if rows is None else int(rows[first])
        raise ValueError(
            f"{name} holds NaN or Inf {what} in {int(bad.sum())} row(s), first at row {row}"
        )


def _token_ids(a: Any) -> bool:
    """Integer inputs of 16 bits or more (token ids: kept integer), not bool or 8-bit pixels."""
    if isinstance(a, np.ndarray):
        return a.dtype.kind in "iu" and a.dtype.itemsize >= 2
    import torch

    if not isinstance(a, torch.Tensor) or a.is_floating_point() or a.is_complex():
        return False
    return a.dtype != torch.bool and a.element_size() >= 2


def _as_tensor(a: Any, name: str, *, floating: bool) -> Any:
    import torch

    if isinstance(a, torch.Tensor):
        t = a.detach()
    elif isinstance(a, np.ndarray):
        if a.dtype.kind not in "biuf":  # strings, objects, complex: torch's error named nothing
            raise TypeError(
                f"{name} must hold numbers, got dtype {a.dtype}"
                + (" (class names: map them to indices 0..C-1)" if a.dtype.kind in "USO" else "")
            )
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


def _row_pair(dataset: Any, i: int, name: str) -> tuple[Any, Any]:
    """Row ``i`` of a Dataset, which must be an ``(x, y)`` pair (a dict row was ``KeyError: 1``)."""
    item = dataset[i]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        kind = type(item).__name__ + (f" of {len(item)}" if isinstance(item, (tuple, list)) else "")
        raise TypeError(
            f"{name} must give (x, y) pairs, row {i} is a {kind}; wrap the Dataset so that it "
            "returns (input, label)"
        )
    return item[0], item[1]


def _label_tensor(y: Any, name: str) -> Any:
    """One row's label as a tensor; a string (a class name) is refused naming ``name``."""
    import torch

    try:
        return torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"{name} must give numeric labels, got {type(y).__name__} {str(y)[:40]!r}"
        ) from None


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


def _n_classes(model: Any, data: _Data, idx: np.ndarray, **reading: Any) -> int:
    """The number of logits ``model`` returns, from one pool row (the RNG state is kept), read
    as ``reading`` says (``collate_fn``, ``batch_fn``, ...). It runs a copy: a lazy module
    (``nn.LazyLinear``) would otherwise take its weights here, outside the round's seeded
    training, and a resumed run would draw them elsewhere."""
    import copy

    import torch

    from .torch import pool_outputs

    rows = data.X[torch.from_numpy(idx[:1])] if data.dataset is None else data.subset(idx[:1])
    with forked_rng(_param_device(model)):
        probe = copy.deepcopy(model)
        logits = pool_outputs(
            probe, rows, ("logits",), inference_mode=False, progress=False, **reading
        )
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


def _tensors(dataset: Any, trainer: str = "fastal.loop.fit") -> tuple[Any, Any]:
    """A Dataset of (x, y) stacked into two tensors (labeled sets are small); ``trainer`` names
    the caller in the error for rows of several shapes."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors
    xs, ys = [], []
    try:
        for x, y in DataLoader(dataset, batch_size=256, shuffle=False):
            xs.append(x)
            ys.append(torch.as_tensor(y))
        return torch.cat(xs), torch.cat(ys)
    except RuntimeError as err:
        if "equal size" not in str(err) and "Sizes of tensors must match" not in str(err):
            raise
        raise ValueError(
            f"the labeled rows differ in shape (variable-length inputs?): {trainer} stacks them "
            "into one tensor; train with a train_fn of your own that batches them (e.g. with the "
            f"collate_fn given to loop.run). torch said: {err}"
        ) from None
