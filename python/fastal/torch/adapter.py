"""Run a PyTorch model over a pool and return what the strategies read.

``pool_outputs`` makes one pass over the pool (plus ``T`` Monte-Carlo dropout passes per batch when
``"mc_probs"`` is asked) in eval mode without autograd, and fills preallocated output tensors batch
by batch, so a pool of millions of rows never holds more than one batch of activations.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, SequentialSampler

from .. import _interop
from .._torch_state import LOCK, forked_rng
from .._validate import check_bool
from .._warnings import warn_user

#: What ``pool_outputs`` can compute, per task.
NEEDS = {
    "classification": ("features", "logits", "probs", "mc_probs"),
    "regression": ("features", "outputs", "mc_outputs"),
}


class _StopForward(Exception):
    """Raised by the feature hook when nothing after the hooked layer is needed."""


def needs_of(strategy: Any) -> tuple[str, ...]:
    """What ``strategy`` reads from a pool: its ``requires`` (an instance, a class or a name).

    Examples
    --------
    >>> import fastal.torch
    >>> fastal.torch.needs_of("badge")
    ('probs', 'features')
    """
    if isinstance(strategy, str):
        from ..strategies import get

        strategy = get(strategy)
    requires = getattr(strategy, "requires", None)
    if requires is None:
        raise TypeError(
            f"strategy must be a Strategy, a Strategy class or a name, got {type(strategy).__name__}"
        )
    return tuple(requires)


def pool_size(data: Any) -> int:
    """Number of rows of a pool given as a tensor, an array, a map-style Dataset or a DataLoader."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        _interop.describe(data, "data")  # masked entries, sparse / nested tensors: named refusals
        if data.ndim == 0:
            raise ValueError("data must have a leading row dimension, got a 0-d array")
        return int(data.shape[0])
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, IterableDataset) or not hasattr(data, "__len__"):
        raise TypeError(f"the size of {type(data).__name__} is unknown: it has no __len__")
    return len(data)


def pool_outputs(
    model: nn.Module,
    data: Any,
    needs: Sequence[str] | str = ("features", "probs"),
    *,
    task: str = "classification",
    batch_size: int = 256,
    device: Any = None,
    output_device: Any = "cpu",
    dtype: torch.dtype | str = torch.float32,
    amp: bool | torch.dtype = False,
    mc_samples: int = 20,
    seed: int | None = None,
    embed_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    feature_layer: nn.Module | str | None = None,
    batch_fn: Callable[[Any], Any] | None = None,
    num_workers: int = 0,
    inference_mode: bool = True,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Run ``model`` over the pool ``data`` and return only the outputs named in ``needs``.

    The model runs in eval mode (its modules' train/eval flags are restored afterwards) under
    ``torch.inference_mode()`` (``torch.no_grad()`` with ``inference_mode=False``), on ``device``,
    batch by batch, with a tqdm bar. Outputs are written into tensors preallocated on
    ``output_device`` once the first batch shows their shape (an ``IterableDataset`` of unknown
    length is collected and concatenated instead).

    Parameters
    ----------
    model : nn.Module
        Moved to ``device`` when one is given (``model.to(device)``, in place, as ``nn.Module.to``)
        once the arguments are checked. A classifier returns (B, C) logits with C >= 2 (a
        single-logit binary model: return ``[0, z]``, whose softmax is the sigmoid's pair).
    data : Tensor, ndarray, list of numbers, Dataset or DataLoader
        The pool, in a fixed order: row ``i`` of every output is row ``i`` of ``data``. Tensors
        and arrays are sliced into batches (a (nested) list of plain numbers is read as an array);
        a Dataset is read through a ``DataLoader`` without shuffling (``num_workers`` workers); a
        DataLoader must not shuffle or drop rows: its batch sampler must be torch's own over a
        ``SequentialSampler`` (``shuffle=False``) or a list of in-order index lists, and its
        ``collate_fn`` must keep the rows' order (one sorting a batch by length would scramble
        the outputs: fastal cannot see that). An ``IterableDataset`` is read with no workers (each
        would replay the stream). Starting the pass leaves torch's global generator as it was. A
        batch that is a tuple or list (``(x, y)`` pairs) gives its first element to the model;
        use ``batch_fn`` for anything else (its result is moved to ``device``; a tuple is
        unpacked into the call, a mapping passed as keyword arguments). Floating inputs of every
        kind (arrays, tensors, and the floating tensors of a Dataset's or DataLoader's batches,
        after ``batch_fn``) are cast to the model's parameter dtype; other dtypes (e.g. integer
        token ids) are passed as they are.
    needs : sequence of str
        Classification: ``"features"`` (n, d), ``"logits"`` (n, C), ``"probs"`` (n, C, softmax of
        the logits), ``"mc_probs"`` (T, n, C): ``T = mc_samples`` passes with every dropout module
        in train mode and everything else in eval (MC dropout, Gal & Ghahramani 2016), and torch's
        fused transformer path (which skips them) off. A model without a dropout module of p > 0,
        or whose passes all agree (functional ``F.dropout`` follows ``model.training``, which
        stays False), raises ``ValueError``.
        Regression: ``"features"``, ``"outputs"`` ((n,) or (n, k), as the model returns),
        ``"mc_outputs"`` (T, n, ...).
    task : {"classification", "regression"}
    batch_size : int, default 256
        Rows per forward pass (tensors, arrays and Datasets; a DataLoader keeps its own).
    device : str or torch.device, optional
        Where the model runs; default: where its parameters are (the CPU without parameters).
        ``"meta"`` is refused (moving the model there would drop its weights).
    output_device : str or torch.device, default "cpu"
        Where the outputs are allocated: a CPU or CUDA device.
    dtype : torch.dtype or str, default float32
        Output dtype: ``torch.float32``, ``torch.float64``, ``torch.float16`` or ``torch.bfloat16``,
        or its name (``"float32"``, ...). Probabilities are computed from float32 logits whatever
        the dtype.
    amp : bool or torch.dtype, default False
        Autocast on CUDA (``True`` means float16; pass ``torch.bfloat16`` for bfloat16). Checked on
        every device, ignored on devices other than CUDA.
    mc_samples : int, default 20
        ``T`` for ``"mc_probs"`` / ``"mc_outputs"``.
    seed : int, optional
        Seeds the dropout masks of the MC passes (the global RNG state is restored afterwards);
        a non-negative int below 2**64. Unseeded, they draw from torch's global generator. The
        masks are drawn batch by batch: the same seed with another batch size gives other masks.
    embed_fn : callable, optional
        ``embed_fn(model, x) -> (B, ...)`` features, a tensor with one row per input row (rows are
        flattened to ``(B, d)``); by default a forward pre-hook records the input of
        ``feature_layer``.
    feature_layer : nn.Module or str, optional
        The layer whose input are the features (a module or a name for ``model.get_submodule``).
        Default: the last ``nn.Linear`` in ``model.modules()`` order. It must see the whole
        batch (one row per input row; not a chunked forward or ``nn.DataParallel`` replicas).
        The hook is on during the deterministic (eval) pass only; when that pass needs nothing
        after the layer (no ``"logits"``, ``"probs"`` or ``"outputs"``) it stops there. The
        Monte-Carlo passes run the whole model without the hook, so any combination of
        ``needs`` works.
    batch_fn : callable, optional
        Turns one batch of ``data`` into the model's input: a Dataset's or DataLoader's batch as
        it is collated, a tensor's or array's slice of ``batch_size`` rows as a tensor (already
        on ``device`` in the model's dtype).
    num_workers : int, default 0
        DataLoader workers when ``data`` is a Dataset.
    inference_mode : bool, default True
        ``torch.inference_mode()`` (else ``torch.no_grad()``). Every tensor the forward creates
        is then an inference tensor: a model that caches activations on itself during forward
        and reuses them in training needs ``inference_mode=False``.
    progress : bool, default True

    Returns
    -------
    dict
        Exactly the keys of ``needs``, torch tensors on ``output_device``, finite but for -inf
        logits (a masked class): a NaN or Inf output (a diverged model, a row of ``data`` holding
        NaN, a value past ``dtype``'s range) raises ``ValueError`` naming the first such row of
        ``data``. On Python 3.11+ an error
        raised while a batch runs carries a note saying where in ``data`` that batch starts.

    Examples
    --------
    >>> import torch, fastal.torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> out = fastal.torch.pool_outputs(model, torch.randn(100, 4), ("features", "probs"), progress=False)
    >>> out["features"].shape, out["probs"].shape
    (torch.Size([100, 8]), torch.Size([100, 3]))
    """
    needs = _check_needs(needs, task)
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    mc = "mc_probs" in needs or "mc_outputs" in needs
    if mc and (
        isinstance(mc_samples, bool)
        or not isinstance(mc_samples, numbers.Integral)
        or mc_samples < 1
    ):
        raise ValueError(f"mc_samples must be a positive integer, got {mc_samples!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    run = _check_device(device, "device", cpu_or_cuda=False) if device is not None else None
    out_device = _check_device(output_device, "output_device", cpu_or_cuda=True)
    dtype = _check_dtype(dtype)
    amp_dtype = _check_amp(amp)
    seed = _check_seed(seed, "seed")
    check_bool(inference_mode, "inference_mode")
    check_bool(progress, "progress")
    for fn, fn_name in ((embed_fn, "embed_fn"), (batch_fn, "batch_fn")):
        if fn is not None and not callable(fn):
            raise TypeError(f"{fn_name} must be callable, got {type(fn).__name__}")
    data = _plain_numbers(data)
    # The model's train / eval flags, its forward hooks and torch's generator are process-wide:
    # one pass at a time across threads (fastal._torch_state).
    with LOCK:
        dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        if mc and not any(m.p > 0 for m in dropouts):
            raise ValueError(
                "mc_probs / mc_outputs need dropout modules (nn.Dropout, ...) with p > 0 in the "
                f"model ({f'its {len(dropouts)} have p = 0' if dropouts else 'it has none'}): "
                "without one every Monte-Carlo pass is the same"
            )
        hook_layer = None
        if "features" in needs and embed_fn is None:
            hook_layer = _feature_layer(model, feature_layer)
        head = tuple(k for k in needs if k in ("logits", "probs", "outputs"))
        only_features = "features" in needs and not head

        n = _known_size(data, num_workers)
        if n == 0:
            raise ValueError("data is empty: the pool needs at least one row")
        if _model_device(model).type == "meta":  # before model.to: torch's error says less
            raise ValueError(
                "the model's parameters are on the meta device (shapes without values): load its "
                "weights first (e.g. model.to_empty(device=...) and load_state_dict)"
            )
        if run is not None:  # after the checks: a refused call leaves the model where it was
            model.to(run)
        run_device = run if run is not None else _model_device(model)
        batches = _batches(data, batch_size, num_workers, run_device, batch_fn, _model_dtype(model))
        writer = _Writer(n, out_device, dtype)
        amp_ctx = _autocast(amp_dtype, run_device)
        grad_ctx = torch.inference_mode if inference_mode else torch.no_grad
        captured: list[torch.Tensor] = []

        def record(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            if captured:
                raise RuntimeError(
                    "the feature layer ran more than once in one forward pass; pass feature_layer= "
                    "or embed_fn= to say which features to use"
                )
            if args:
                x = args[0]
            elif len(kwargs) == 1:  # called as layer(input=h)
                x = next(iter(kwargs.values()))
            else:
                raise RuntimeError(
                    f"the feature layer was called with keyword arguments {sorted(kwargs)}: pass "
                    "embed_fn= (or a feature_layer= called with its input first)"
                )
            if not isinstance(x, torch.Tensor):
                what = type(x).__name__
                raise RuntimeError(f"the feature layer's input is a {what}, not a tensor: pass embed_fn=")
            if only_features:
                captured.append(x)
                raise _StopForward
            # a copy: the rest of the forward pass may change it in place (ReLU(inplace=True))
            captured.append(x.clone())

        @contextlib.contextmanager
        def feature_hook() -> Iterator[None]:
            # On for the deterministic pass only: the Monte-Carlo passes neither need nor trip it.
            handle = (
                hook_layer.register_forward_pre_hook(record, with_kwargs=True)
                if hook_layer is not None
                else None
            )
            try:
                yield
            finally:
                if handle is not None:
                    handle.remove()

        states = [(m, m.training) for m in model.modules()]
        rng = _forked_rng(seed, run_device) if mc else contextlib.nullcontext()
        varied = False  # whether some Monte-Carlo pass differs from the batch's first
        bar = _progress(n, progress)
        try:
            model.eval()
            with rng, grad_ctx(), _naming_rows(writer):
                for x in batches:
                    rows = _rows(x)
                    result: dict[str, torch.Tensor] = {}
                    if "features" in needs or head:
                        captured.clear()
                        with amp_ctx():
                            if embed_fn is not None:
                                result["features"] = _check_embedding(embed_fn(model, x), rows)
                            z = None
                            if head or hook_layer is not None:
                                try:
                                    with feature_hook():
                                        z = _call(model, x)
                                except _StopForward:
                                    z = None
                        if hook_layer is not None:
                            result["features"] = _captured_features(captured, hook_layer, rows)
                        if head:
                            z = _check_output(z, task, rows)
                            if writer.pos == 0 and task == "classification":
                                _warn_if_probabilities(z)
                            for key in head:
                                result[key] = (
                                    torch.softmax(z.float(), dim=1) if key == "probs" else z
                                )
                        captured.clear()
                    if mc:
                        passes = []
                        for m in dropouts:
                            m.train()
                        # torch's fused transformer path skips the dropout modules altogether
                        fastpath = torch.backends.mha.get_fastpath_enabled()
                        torch.backends.mha.set_fastpath_enabled(False)
                        try:
                            for _ in range(mc_samples):
                                with amp_ctx():
                                    z = _check_output(_call(model, x), task, rows)
                                varied = varied or (bool(passes) and not torch.equal(z, passes[0]))
                                passes.append(z)
                        finally:
                            torch.backends.mha.set_fastpath_enabled(fastpath)
                            for m in dropouts:
                                m.eval()
                        stacked = torch.stack(passes)
                        if task == "classification":
                            result["mc_probs"] = torch.softmax(stacked.float(), dim=2)
                        else:
                            result["mc_outputs"] = stacked
                    writer.write(result, rows)
                    bar.update(rows)
        finally:
            bar.close()
            for m, training in states:
                m.train(training)
        if mc and mc_samples > 1 and not varied:
            raise ValueError(
                f"mc_probs / mc_outputs: all {mc_samples} Monte-Carlo passes gave the same "
                "outputs on every row, so their disagreement (BALD's score) is zero everywhere; "
                "fastal puts the nn.Dropout modules in train mode, which does nothing for "
                "functional dropout (F.dropout(x, p, self.training)) or dropout on a branch the "
                "output ignores"
            )
        outputs = writer.result(needs)
    _check_finite_outputs(outputs, model)
    return outputs


def select(
    strategy: Any,
    model: nn.Module,
    data: Any,
    budget: int,
    labeled: Any = None,
    *,
    seed: Any = None,
    labels: Any = None,
    needs: Sequence[str] | None = None,
    **options: Any,
):
    """Compute what ``strategy`` requires with :func:`pool_outputs` and call its ``select``.

    Parameters
    ----------
    strategy : Strategy, Strategy class or name
        A name or class is instantiated with its defaults.
    model, data
        As in :func:`pool_outputs` (``options`` are passed to it: ``batch_size``, ``device``, ...).
    budget, labeled, seed
        Passed to ``strategy.select``. ``labeled`` holds unique row indices in ``[0, n)``; it is
        checked before the pool pass (right after it when the pool's size is unknown, an
        ``IterableDataset``): an index out of range or repeated raises ``ValueError`` naming
        ``labeled``, and a boolean mask ``TypeError`` (pass ``np.flatnonzero(mask)``). ``seed`` is
        None, a non-negative int or a numpy Generator, for every strategy. It also seeds the MC
        dropout masks: an int directly, a Generator through a draw from a copy of it (so the
        strategy still draws from the Generator as given).
    mc_seed : int, optional (keyword, in ``options``)
        Seeds the MC dropout masks instead of ``seed``: None (torch's global generator) or a
        non-negative int.
    labels : array, optional
        The known labels of the ``labeled`` rows, 1-D, one per row of ``labeled`` in the same
        order (checked with ``labeled``): integer class indices in ``[0, C)`` for a classifier of
        ``C`` outputs (real numbers for ``task="regression"``). With ``"logits"`` in the pool
        they are added as ``"labeled_logits"`` / ``"labeled_targets"`` (Sparse Approximation fits
        its temperature on them).
    needs : sequence of str, optional
        Override ``strategy.requires`` (e.g. ``("mc_probs",)`` for the Bayesian Sparse Approximation).
    duals : array, optional (keyword, in ``options``)
        For strategies that require ``"duals"`` (ALLY): λ of the labeled rows in the order of
        ``labeled``; default the ``fastal_duals`` a :class:`fastal.pdcl.PrimalDualTrainer` left on
        ``model``.

    Returns
    -------
    Selection
        The strategy's ``(indices, diagnostics)``: indices a torch int64 tensor on
        ``output_device`` (default the CPU), whatever ``data`` is; diagnostics gain
        ``"pool_seconds"``, the time spent computing the pool outputs.

    Examples
    --------
    >>> import torch, fastal.torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> sel = fastal.torch.select("entropy", model, torch.randn(50, 4), 5, labeled=[0, 1], progress=False)
    >>> len(sel.indices)
    5
    """
    from ..strategies import Strategy, get

    if isinstance(strategy, str):
        strategy = get(strategy)()
    elif isinstance(strategy, type) and issubclass(strategy, Strategy):
        strategy = strategy()
    from .._validate import check_budget, make_rng

    task = options.get("task", "classification")
    needs = needs_of(strategy) if needs is None else _check_needs(needs, task, extra=("duals",))
    duals = options.pop("duals", None)
    model_needs = tuple(k for k in needs if k != "duals")
    make_rng(seed, "seed")  # the rule of every strategy, whether or not this one draws
    if "mc_seed" in options:
        mc_seed = _check_seed(options.pop("mc_seed"), "mc_seed")
    elif isinstance(seed, np.random.Generator):
        # the masks from the Generator too (it was left unseeded: same Generator, other picks);
        # a copy, so that the strategy draws from the Generator as given
        mc_seed = int(copy.deepcopy(seed).integers(2**63))
    else:
        mc_seed = _check_seed(seed, "seed") if isinstance(seed, numbers.Integral) else None

    def labeled_rows(n: int) -> tuple[np.ndarray, Any, Any]:
        # labeled, labels, duals and the budget are checked against the pool before anything
        # indexes them (and, where the size is known, before the pass)
        idx = _check_labeled(labeled, n)
        checked = check_budget(budget, n - idx.size)
        validate = getattr(strategy, "validate_budget", None)  # e.g. CRC's multiple of G
        if validate is not None:
            validate(checked)
        targets = _check_labels(labels, idx, task)
        return idx, targets, _labeled_duals(model, duals, idx.size) if "duals" in needs else None

    n = _size_or_none(data)
    if n is not None:  # known size: check before the pool pass rather than after it
        idx, targets, duals = labeled_rows(n)
    start = time.perf_counter()
    if model_needs:
        pool: dict[str, Any] = pool_outputs(model, data, model_needs, seed=mc_seed, **options)
    else:
        pool = {"n": n if n is not None else _count_rows(data, options)}
    if n is None:  # an IterableDataset: its size is known now
        idx, targets, duals = labeled_rows(pool["n"] if "n" in pool else _outputs_rows(pool))
    if "duals" in needs:
        pool["duals"] = duals
    seconds = time.perf_counter() - start
    out_device = _check_device(
        options.get("output_device", "cpu"), "output_device", cpu_or_cuda=True
    )
    if isinstance(labeled, np.ndarray) and out_device.type != "cpu":
        labeled = torch.as_tensor(labeled, device=out_device)
    n_classes = _classes_of(pool) if task == "classification" else None
    if targets is not None and n_classes is not None:
        _check_label_range(targets, n_classes)
    if targets is not None and idx.size and "logits" in pool:
        device = pool["logits"].device
        pool["labeled_logits"] = pool["logits"][torch.as_tensor(idx, device=device)]
        pool["labeled_targets"] = targets.to(device)
    sel = strategy.select(pool, budget, labeled, seed=seed)
    if isinstance(sel.indices, np.ndarray):  # counted from pool["n"] (random): torch, as the rest
        sel = sel._replace(indices=torch.as_tensor(sel.indices, device=out_device))
    sel.diagnostics["pool_seconds"] = seconds
    return sel


# ---------------------------------------------------------------------------------------------


def _host(x: Any) -> Any:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def _check_needs(
    needs: Sequence[str] | str, task: str, extra: tuple[str, ...] = ()
) -> tuple[str, ...]:
    if task not in NEEDS:
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    if isinstance(needs, str):
        needs = (needs,)
    needs = tuple(dict.fromkeys(needs))
    bad = [k for k in needs if k not in NEEDS[task] + extra]
    if bad:
        raise ValueError(
            f"needs has {', '.join(map(repr, bad))}, which a {task} model cannot give; "
            f"choose from {', '.join(map(repr, NEEDS[task] + extra))}"
        )
    return needs


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


def _plain_numbers(data: Any) -> Any:
    """A (nested) list or tuple of plain numbers as a numpy array (the DataLoader would collate
    its rows into columns); anything else as it is."""
    if not isinstance(data, (list, tuple)) or not data:
        return data
    first = data[0]
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    if isinstance(first, (torch.Tensor, np.ndarray)) or not isinstance(first, numbers.Number):
        return data
    try:
        arr = np.asarray(data)
    except (TypeError, ValueError):
        return data  # ragged, e.g. (x, y) pairs: read as a Dataset
    return arr if arr.dtype.kind in "biuf" and arr.ndim >= 1 else data


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


def _size_or_none(data: Any) -> int | None:
    """Rows of the pool, or None when only a pass over it can tell (an IterableDataset)."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return pool_size(data)  # its own refusal (a sparse or meta tensor) names data
    try:
        return pool_size(data)
    except TypeError:
        return None


def _count_rows(data: Any, options: Mapping[str, Any]) -> int:
    """Rows of a pool of unknown size (an IterableDataset) for a strategy that reads no model
    output (random): one pass over the data, without the model."""
    workers = options.get("num_workers", 0)
    _known_size(data, workers)
    batches = _batches(data, options.get("batch_size", 256), workers, torch.device("cpu"),
                       options.get("batch_fn"), torch.float32)  # fmt: skip
    rows = sum(_rows(x) for x in batches)
    if rows == 0:
        raise ValueError("data is empty: the pool needs at least one row")
    return rows


def _outputs_rows(pool: Mapping[str, torch.Tensor]) -> int:
    key, t = next(iter(pool.items()))
    return int(t.shape[1] if key.startswith("mc_") else t.shape[0])


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
            "the model has no nn.Linear whose input could be the features: pass feature_layer= or embed_fn="
        )
    return linears[-1]


def _captured_features(captured: list, layer: nn.Module, rows: int) -> torch.Tensor:
    """The feature layer's input for the whole batch: a layer that saw part of it (a chunked
    forward, ``nn.DataParallel`` replicas sharing the hook) would give rows of mixed widths."""
    if not captured:
        name = type(layer).__name__
        raise RuntimeError(f"the feature layer {name} did not run in the forward pass")
    x = captured[0]
    if x.ndim == 0 or x.shape[0] != rows:
        raise RuntimeError(
            f"the feature layer {type(layer).__name__} saw an input of shape {tuple(x.shape)} for "
            f"a batch of {rows} rows: it runs on part of the batch (a chunked forward, "
            "nn.DataParallel replicas) or batch-second; pass embed_fn= (or model.module)"
        )
    return x


def _known_size(data: Any, num_workers: int = 0) -> int | None:
    iterable = isinstance(getattr(data, "dataset", data), IterableDataset)
    workers = data.num_workers if isinstance(data, DataLoader) else num_workers
    if iterable and workers > 0:
        raise ValueError(
            f"data is an IterableDataset read with num_workers={workers}: each worker replays or "
            "shares the stream and their batches interleave, so row i would not be the stream's "
            "i-th row; read it with num_workers=0 (or pass a map-style Dataset)"
        )
    if isinstance(data, DataLoader):
        batches = data.batch_sampler
        if data.drop_last or getattr(batches, "drop_last", False):
            raise ValueError(
                "data is a DataLoader with drop_last=True: the last rows would get no outputs"
            )
        if batches is None and not iterable:
            raise ValueError(
                "data is a DataLoader with batch_size=None (no batching): the model would see one "
                "row at a time without a batch dimension; pass batch_size= (or the Dataset itself)"
            )
        if not iterable:
            _check_in_order(batches)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return pool_size(data)  # its own refusal (a sparse or meta tensor) names data
    try:
        return pool_size(data)
    except TypeError:
        if isinstance(data, (Dataset, DataLoader)):
            return None
        raise TypeError(
            f"data must be a torch Tensor, a numpy array, a Dataset or a DataLoader, got {type(data).__name__}"
        ) from None


def _check_in_order(batches: Any) -> None:
    """Refuse a batch sampler that may not give rows 0, 1, 2, ... in order. Only torch's own
    ``BatchSampler`` over a ``SequentialSampler`` is trusted unread: a subclass (length bucketing)
    may reorder the batches whatever its ``.sampler``."""
    sampler = getattr(batches, "sampler", None)
    if type(batches) is BatchSampler:
        if type(sampler) is SequentialSampler:
            return
        raise ValueError(
            f"data is a DataLoader with a {type(sampler).__name__}: rows would come out of "
            "order; pass a DataLoader with shuffle=False (or the Dataset itself)"
        )
    if isinstance(batches, (list, tuple)):
        if not _in_order(batches):
            raise ValueError(
                "data is a DataLoader whose batch_sampler does not give rows 0, 1, 2, ... "
                "in order: rows would come out of order"
            )
        return
    raise ValueError(
        f"data is a DataLoader with a custom batch_sampler ({type(batches).__name__}): fastal "
        "cannot tell that it gives rows 0, 1, 2, ... in order (bucketing samplers do not); pass "
        "a DataLoader with batch_size= and shuffle=False, or a list of in-order index lists"
    )


def _in_order(batches: Any) -> bool:
    """Whether a batch sampler without a ``.sampler`` (a list of index lists) yields 0, 1, 2, ...
    (it is iterated once here; a sampler that draws at random is not in order anyway)."""
    expected = 0
    for batch in batches:
        for i in batch:
            if int(i) != expected:
                return False
            expected += 1
    return True


def _to(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """``x`` (a tensor, or tensors in tuples, lists and mappings) on ``device``; floating tensors
    also cast to ``dtype`` when one is given (the rule of the numpy path)."""
    if isinstance(x, torch.Tensor):
        cast = dtype if dtype is not None and x.is_floating_point() else x.dtype
        return x.to(device, dtype=cast, non_blocking=True)
    if isinstance(x, (tuple, list)):
        moved = [_to(v, device, dtype) for v in x]
        return type(x)(*moved) if hasattr(x, "_fields") else type(x)(moved)  # NamedTuple
    if isinstance(x, Mapping):
        return {k: _to(v, device, dtype) for k, v in x.items()}
    return x


def _default_input(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    raise TypeError(
        f"cannot tell the model input in a batch of type {type(batch).__name__}: pass batch_fn= "
        "(e.g. batch_fn=lambda b: b['pixel_values'])"
    )


def _batches(
    data: Any,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    batch_fn: Any,
    model_dtype: torch.dtype,
) -> Iterator[Any]:
    if isinstance(data, np.ndarray):
        cast = model_dtype if np.issubdtype(data.dtype, np.floating) else None
        for s in range(0, data.shape[0], batch_size):
            chunk = _interop.native_order(np.ascontiguousarray(data[s : s + batch_size]))
            t = torch.from_numpy(chunk if chunk.flags.writeable else chunk.copy())
            t = t.to(device=device, dtype=cast or t.dtype)
            yield t if batch_fn is None else _to(batch_fn(t), device, model_dtype)
        return
    if isinstance(data, torch.Tensor):
        for s in range(0, data.shape[0], batch_size):
            t = _to(data[s : s + batch_size], device, model_dtype)
            yield t if batch_fn is None else _to(batch_fn(t), device, model_dtype)
        return
    if not isinstance(data, DataLoader):
        data = DataLoader(
            data,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
    # Starting an iteration draws the workers' base seed from torch's generator: not the user's.
    with torch.random.fork_rng(devices=[]):
        batches = iter(data)
    fn = batch_fn or _default_input
    for batch in batches:
        yield _to(fn(batch), device, model_dtype)


def _call(model: nn.Module, x: Any) -> Any:
    if isinstance(x, tuple):
        return model(*x)
    if isinstance(x, Mapping):
        return model(**x)
    return model(x)


def _rows(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    values: Iterable = (
        x.values() if isinstance(x, Mapping) else x if isinstance(x, (tuple, list)) else ()
    )
    for v in values:
        if isinstance(v, torch.Tensor):
            return int(v.shape[0])
    raise TypeError(f"cannot tell the number of rows of a model input of type {type(x).__name__}")


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


def _check_amp(amp: Any) -> torch.dtype | None:
    """The autocast dtype ``amp`` asks for (None: off), checked whatever the device."""
    if isinstance(amp, (bool, np.bool_)):
        return torch.float16 if amp else None
    if isinstance(amp, torch.dtype) and amp in (torch.float16, torch.bfloat16):
        return amp
    raise ValueError(f"amp must be a bool, torch.float16 or torch.bfloat16, got {amp!r}")


def _autocast(dtype: torch.dtype | None, device: torch.device) -> Callable[[], Any]:
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type="cuda", dtype=dtype)


def _forked_rng(seed: int | None, device: torch.device) -> Any:
    return contextlib.nullcontext() if seed is None else forked_rng(device, seed)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(n: int | None, progress: bool) -> Any:
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=n, unit="rows", desc="fastal pool pass")


@contextlib.contextmanager
def _naming_rows(writer: _Writer) -> Iterator[None]:
    """Adds to an error raised while a batch runs (the model's own, a shape mismatch) which rows
    of ``data`` that batch started at: a bare matmul error does not say it came from the pool."""
    try:
        yield
    except Exception as e:
        if hasattr(e, "add_note"):  # Python 3.11+
            e.add_note(f"(fastal: in the batch of data starting at row {writer.pos})")
        raise


def _refused(t: torch.Tensor, key: str) -> torch.Tensor:
    """Where ``pool_outputs`` refuses an output value: NaN or Inf, and for logits NaN or +Inf
    (a model masking classes gives -inf logits, whose probabilities are 0)."""
    return t.isnan() | (t == math.inf) if key == "logits" else ~torch.isfinite(t)


def _check_finite_outputs(outputs: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Refuse NaN / Inf outputs (:func:`_refused`) where the rows of ``data`` can be named: a
    strategy would only say that its ``probs`` or ``X`` hold some. Row chunks of about 4M values,
    one synchronisation unless some chunk is refused."""
    for key, t in outputs.items():
        axis = 1 if key.startswith("mc_") else 0
        n = t.shape[axis]
        step = max(1, (1 << 22) // max(1, t.numel() // max(1, n)))
        chunks = [t.narrow(axis, s, min(step, n - s)) for s in range(0, n, step)]
        if not chunks or not bool(torch.stack([_refused(c, key).any() for c in chunks]).any()):
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


class _Writer:
    """Copies each batch's outputs into tensors preallocated at the first batch (size known), or
    collects them when the pool size is unknown."""

    def __init__(self, n: int | None, device: torch.device, dtype: torch.dtype) -> None:
        self.n, self.device, self.dtype = n, device, dtype
        self.out: dict[str, torch.Tensor] = {}
        self.parts: dict[str, list[torch.Tensor]] = {}
        self.pos = 0

    def write(self, result: dict[str, torch.Tensor], rows: int) -> None:
        for key, t in result.items():
            if key == "features":
                t = t.reshape(rows, -1)
            axis = 1 if key.startswith("mc_") else 0
            if t.shape[axis] != rows:
                raise ValueError(f"{key} has {t.shape[axis]} rows for a batch of {rows}")
            if self.n is None:
                with torch.inference_mode(False):  # a copy that is not an inference tensor
                    part = torch.empty(t.shape, dtype=self.dtype, device=self.device)
                part.copy_(t)
                self.parts.setdefault(key, []).append(part)
                continue
            if key not in self.out:
                shape = list(t.shape)
                shape[axis] = self.n
                # not inference tensors (the pass runs in inference mode): users may edit the
                # outputs in place or train on them
                with torch.inference_mode(False):
                    self.out[key] = torch.empty(shape, dtype=self.dtype, device=self.device)
            dst = (
                self.out[key][:, self.pos : self.pos + rows]
                if axis
                else self.out[key][self.pos : self.pos + rows]
            )
            if dst.shape != t.shape:
                raise ValueError(
                    f"{key} has shape {tuple(t.shape)} in this batch, {tuple(dst.shape)} expected"
                )
            dst.copy_(t)
        self.pos += rows
        if self.n is not None and self.pos > self.n:
            raise ValueError(f"data gave more than its {self.n} rows")

    def result(self, needs: tuple[str, ...]) -> dict[str, torch.Tensor]:
        if self.n is None and self.pos == 0:
            raise ValueError("data is empty: the pool needs at least one row")
        if self.n is None:
            return {
                k: torch.cat(self.parts[k], dim=1 if k.startswith("mc_") else 0)
                for k in needs
                if k in self.parts
            }
        if self.pos != self.n:
            raise ValueError(f"data gave {self.pos} rows but has length {self.n}")
        return {k: self.out[k] for k in needs if k in self.out}
