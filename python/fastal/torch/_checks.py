"""The checks of ``fastal.torch``: its arguments, the model and what the model returns.

Each turns a user's mistake into an error that names the argument and shows what was received,
before the pool pass where it can (``needs``, devices, dtypes, seeds, ``labeled`` / ``labels`` /
``duals``), else as the first batch shows it (the model's outputs, ``embed_fn``'s result; the
feature layer's input in :mod:`fastal.torch._forward`) or at the end (NaN / Inf outputs, named
by row of ``data``). Also the model's device, dtype and feature layer, which those checks read.
Private: the public functions of :mod:`fastal.torch.adapter` call them (and :mod:`fastal.loop` /
:mod:`fastal.ally` a few).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._warnings import warn_user


def _check_needs(
    needs: Sequence[str] | str, task: str, extra: tuple[str, ...] = (), strategy: str | None = None
) -> tuple[str, ...]:
    """``needs`` as a tuple of distinct names that a ``task`` model gives (or ``extra``); errors
    name ``strategy`` where the needs are that strategy's ``requires``, not the caller's."""
    from .adapter import NEEDS  # (the adapter imports this module)

    if task not in NEEDS:
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    if isinstance(needs, str):
        needs = (needs,)
    if not isinstance(needs, (list, tuple)) or not all(isinstance(k, str) for k in needs):
        raise TypeError(f"needs must be a name or a list of names, got {needs!r:.60}")
    needs = tuple(dict.fromkeys(needs))
    bad = [k for k in needs if k not in NEEDS[task] + extra]
    if bad and strategy is not None:
        raise ValueError(
            f"strategy {strategy!r} reads {', '.join(map(repr, bad))}, which a {task} model "
            f"cannot give (task={task!r} gives {', '.join(map(repr, NEEDS[task]))}): pick a "
            "strategy that reads those"
        )
    if bad:
        raise ValueError(
            f"needs has {', '.join(map(repr, bad))}, which a {task} model cannot give; "
            f"choose from {', '.join(map(repr, NEEDS[task] + extra))}"
        )
    return needs


def _check_collate(collate_fn: Any, data: Any) -> None:
    """``collate_fn`` only where fastal builds the DataLoader (a Dataset, a list of rows)."""
    from torch.utils.data import DataLoader

    if collate_fn is None:
        return
    if isinstance(data, DataLoader):
        raise ValueError(
            "collate_fn is for a Dataset: data is a DataLoader, which collates with its own "
            "(pass the Dataset, or build the DataLoader with this collate_fn)"
        )
    if isinstance(data, (torch.Tensor, np.ndarray)):
        raise ValueError(
            f"collate_fn is for a Dataset: data is a {type(data).__name__}, sliced into batches "
            "rather than collated (use batch_fn to turn a slice into the model's input)"
        )


#: Output dtypes of ``pool_outputs`` (the floating dtypes the strategies read).
_OUT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_device(value: Any, name: str, *, cpu_or_cuda: bool) -> torch.device:
    """``value`` as a torch.device that exists here; ``meta`` is refused, and with
    ``cpu_or_cuda`` every device other than the CPU and CUDA (where fastal reads outputs)."""
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"{name} must be a torch.device or a device string such as 'cpu' or 'cuda:0', "
            f"got {value!r}"
        ) from None
    if dev.type == "meta" or (cpu_or_cuda and dev.type not in ("cpu", "cuda")):
        where = "the CPU or a CUDA device" if cpu_or_cuda else "a device that holds data"
        raise ValueError(f"{name} must be {where}, got {dev}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} is {dev} but CUDA is not available to torch here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"{name} is {dev} but torch sees {torch.cuda.device_count()} CUDA device(s)"
            )
    return dev


def _check_dtype(dtype: Any) -> torch.dtype:
    """A floating output dtype, given as a torch.dtype or its name (``"float32"``)."""
    found = dtype
    if isinstance(dtype, str):
        found = getattr(torch, dtype.removeprefix("torch."), None)
    if isinstance(found, torch.dtype) and found in _OUT_DTYPES:
        return found
    raise TypeError(
        "dtype must be torch.float32, torch.float64, torch.float16 or torch.bfloat16 (or its "
        f"name, e.g. 'float32'), got {dtype!r}"
    )


def _check_seed(seed: Any, name: str) -> int | None:
    """None or a non-negative int that ``torch.manual_seed`` takes (below 2**64): the rule of
    ``make_rng`` for ints, with torch's upper bound."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be None or a non-negative int, got {seed!r}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"{name} must be None or an int in [0, 2**64), got {seed!r}")
    return int(seed)


def _check_embedding(h: Any, rows: int) -> torch.Tensor:
    """What ``embed_fn`` returned: a tensor with one row per input row."""
    if not isinstance(h, torch.Tensor):
        raise TypeError(
            f"embed_fn must return a torch tensor of shape ({rows}, d), got {type(h).__name__}"
        )
    if h.ndim < 1 or h.shape[0] != rows:
        raise ValueError(
            f"embed_fn must return one row per input row: shape ({rows}, d) for this batch, "
            f"got {tuple(h.shape)}"
        )
    return h


def _check_labeled(labeled: Any, n: int) -> np.ndarray:
    """``labeled`` as in-range, unique int64 row indices (host); a boolean mask is refused."""
    from .._validate import check_indices

    return check_indices(labeled, n, "labeled")


def _check_labels(labels: Any, idx: np.ndarray, task: str) -> torch.Tensor | None:
    """``labels`` as a 1-D CPU tensor with one entry per labeled row (None when not given):
    integer class indices for a classifier, real numbers for a regression model."""
    if labels is None:
        return None
    from .._validate import host_values

    classes = task == "classification"
    what, kinds = ("integer class indices", "iu") if classes else ("real numbers", "iuf")
    arr = host_values(labels, "labels", what, kinds)
    if arr.ndim != 1 or arr.shape[0] != idx.size:
        raise ValueError(
            f"labels must have one entry per labeled row ({idx.size}), got shape {arr.shape}"
        )
    return torch.as_tensor(arr)


def _classes_of(pool: dict) -> int | None:
    """C, from whichever of the model's class outputs the pass produced (None: none of them)."""
    for key in ("logits", "probs", "mc_probs"):
        if key in pool:
            return int(pool[key].shape[-1])
    return None


def _check_label_range(targets: torch.Tensor, n_classes: int) -> None:
    """Class indices in ``[0, C)`` for a model with ``C`` outputs; the message names labels."""
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n_classes):
        raise ValueError(
            f"labels must be class indices in [0, {n_classes}) for a model of {n_classes} outputs, "
            f"got values in [{int(targets.min())}, {int(targets.max())}]"
        )


def _labeled_duals(model: nn.Module, duals: Any, m: int) -> Any:
    """λ of the ``m`` labeled rows: ``duals=`` when given, else what PrimalDualTrainer left on
    the model."""
    from ..pdcl import model_duals

    source = "duals"
    if duals is None:
        duals, source = model_duals(model), "the model's dual variables"
    if duals is None:
        raise ValueError(
            "this strategy needs the dual variables of the labeled rows: train the model with "
            "fastal.pdcl.PrimalDualTrainer (e.g. ALLY().train_fn), which leaves them on the model, "
            "or pass duals="
        )
    if source == "duals" and (isinstance(duals, (str, bytes)) or np.ndim(duals) != 1):
        got = f"shape {tuple(duals.shape)}" if hasattr(duals, "shape") else type(duals).__name__
        raise TypeError(f"duals must be a 1-D array of the labeled rows' dual variables, got {got}")
    if len(duals) != m:
        fix = "pass one per labeled row"
        if source != "duals":
            fix = "train on exactly the labeled rows"
        raise ValueError(
            f"{source} are for {len(duals)} labeled rows but labeled has {m}: {fix}, in their order"
        )
    return duals


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _model_dtype(model: nn.Module) -> torch.dtype:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _feature_layer(model: nn.Module, layer: nn.Module | str | None) -> nn.Module:
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError:
            names = [name for name, _ in model.named_modules() if name]
            listed = ", ".join(map(repr, names[:20])) + (", ..." if len(names) > 20 else "")
            raise ValueError(
                f"feature_layer {layer!r} is not a submodule of the model; "
                f"its submodules are: {listed or 'none'}"
            ) from None
    if isinstance(layer, nn.Module):
        return layer
    if layer is not None:
        raise TypeError(
            f"feature_layer must be an nn.Module or a submodule name, got {type(layer).__name__}"
        )
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            "the model has no nn.Linear whose input could be the features: "
            "pass feature_layer= or embed_fn="
        )
    return linears[-1]


def _check_output(z: Any, task: str, rows: int) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise TypeError(
            f"the model must return a tensor, got {type(z).__name__}: wrap it in an nn.Module "
            "whose forward returns the logits (e.g. model(x)[0] or model(x).logits)"
        )
    if z.shape[:1] != (rows,):
        raise ValueError(f"the model returned shape {tuple(z.shape)} for a batch of {rows} rows")
    if task == "classification" and z.ndim != 2:
        raise ValueError(
            f"a classifier must return logits of shape (batch, C), got {tuple(z.shape)}"
        )
    if task == "classification" and z.shape[1] < 2:
        # a softmax over one column is 1 everywhere: every uncertainty score would be the same
        raise ValueError(
            f"a classifier must return at least 2 logits per row, got {z.shape[1]}: for a "
            "single-logit binary model (BCEWithLogitsLoss) return torch.cat([torch.zeros_like(z), "
            "z], 1), whose softmax is [1 - sigmoid(z), sigmoid(z)]"
        )
    return z


def _warn_if_probabilities(z: torch.Tensor) -> None:
    """Logits that are already probabilities (a softmax head) would be softmaxed again: flattened
    towards uniform, every uncertainty score distorted. Checked on the first batch."""
    z = z.detach().float()
    if bool(((z >= 0) & (z <= 1)).all()) and bool(((z.sum(1) - 1).abs() < 1e-4).all()):
        warn_user(
            "the model's outputs look like probabilities (rows in [0, 1] summing to 1): fastal "
            "treats them as logits and applies a softmax; return the logits (drop the final "
            "softmax) for probs, entropy, margin, BALD and BADGE to be right",
        )


def _module_name(model: nn.Module, module: nn.Module) -> str:
    """``module``'s name in ``model`` ('' where it is not one of its modules)."""
    return next((n for n, m in model.named_modules() if m is module), "")


#: What an error of the model on integer inputs gets told (they are passed as they are).
INTEGER_INPUTS_HINT = (
    "integer inputs reach the model as they are (token ids for an nn.Embedding): cast features "
    "to float"
)


def _integer_dtype_error(x: Any, err: BaseException) -> bool:
    """Whether ``err`` is the model's dtype error on integer inputs ``x`` (not a shape error)."""
    integer = isinstance(x, torch.Tensor) and not (x.is_floating_point() or x.is_complex())
    return integer and ("dtype" in str(err) or "scalar type" in str(err))


def _check_amp(amp: Any) -> torch.dtype | None:
    """The autocast dtype ``amp`` asks for (None: off), checked whatever the device."""
    if isinstance(amp, (bool, np.bool_)):
        return torch.float16 if amp else None
    if isinstance(amp, torch.dtype) and amp in (torch.float16, torch.bfloat16):
        return amp
    raise ValueError(f"amp must be a bool, torch.float16 or torch.bfloat16, got {amp!r}")


def _refused(t: torch.Tensor, key: str) -> torch.Tensor:
    """Where ``pool_outputs`` refuses an output value: NaN or Inf, and for logits NaN or +Inf
    (a model masking classes gives -inf logits, whose probabilities are 0)."""
    return t.isnan() | (t == math.inf) if key == "logits" else ~torch.isfinite(t)


#: CPU output dtypes that numpy reads in place (bfloat16 stays with torch)
_NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64)


def _any_refused_host(c: torch.Tensor, key: str) -> bool:
    """:func:`_refused` ``.any()`` of a CPU chunk through numpy: one pass where torch's CPU
    isfinite takes four (==, abs, !=, &), ~10x slower. For logits ``a < inf`` is False exactly
    for NaN and +Inf."""
    a = c.detach().numpy()
    ok = np.less(a, np.inf) if key == "logits" else np.isfinite(a)
    return not bool(ok.all())


def _check_finite_outputs(outputs: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Refuse NaN / Inf outputs (:func:`_refused`) where the rows of ``data`` can be named: a
    strategy would only say that its ``probs`` or ``X`` hold some. Row chunks of about 4M values,
    one synchronisation unless some chunk is refused."""
    for key, t in outputs.items():
        axis = 1 if key.startswith("mc_") else 0
        n = t.shape[axis]
        step = max(1, (1 << 22) // max(1, t.numel() // max(1, n)))
        chunks = [t.narrow(axis, s, min(step, n - s)) for s in range(0, n, step)]
        if t.device.type == "cpu" and t.dtype in _NUMPY_DTYPES:
            if not any(_any_refused_host(c, key) for c in chunks):
                continue
        elif not chunks or not bool(torch.stack([_refused(c, key).any() for c in chunks]).any()):
            continue
        rows = torch.nonzero(_refused(t, key).movedim(axis, 0).reshape(n, -1).any(1)).flatten()
        trained = (p for p in model.parameters() if p.requires_grad)
        cause = (
            "its parameters hold NaN or Inf: the training diverged"
            if any(not bool(torch.isfinite(p).all()) for p in trained)
            else f"check those rows of data, and that the values fit {str(t.dtype)[6:]}"
        )
        what = "NaN or +Inf" if key == "logits" else "NaN or Inf"
        raise ValueError(
            f"the model's {key} are {what} for {rows.numel()} row(s) of data, first at row "
            f"{int(rows[0])} ({cause})"
        )
