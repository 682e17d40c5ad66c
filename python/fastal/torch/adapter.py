"""Run a PyTorch model over a pool and return what the strategies read.

``pool_outputs`` makes one pass over the pool (plus ``T`` Monte-Carlo dropout passes per batch when
``"mc_probs"`` is asked) in eval mode without autograd, and fills preallocated output tensors batch
by batch, so a pool of millions of rows never holds more than one batch of activations.

This module holds the public functions; their argument, model and output checks are in
:mod:`fastal.torch._checks`, the reading of the pool in batches and the writing of the outputs in
:mod:`fastal.torch._batches`, the passes of one batch through the model in
:mod:`fastal.torch._forward`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import numbers
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from .. import _interop
from .._torch_state import LOCK
from .._validate import check_bool
from ._batches import (
    _autocast,
    _batches,
    _count_rows,
    _forked_rng,
    _known_size,
    _naming_rows,
    _outputs_rows,
    _plain_numbers,
    _progress,
    _refuse_non_pools,
    _rows,
    _size_or_none,
    _Writer,
)
from ._checks import (
    _check_amp,
    _check_collate,
    _check_device,
    _check_dtype,
    _check_finite_outputs,
    _check_label_range,
    _check_labeled,
    _check_labels,
    _check_needs,
    _check_seed,
    _classes_of,
    _feature_layer,
    _labeled_duals,
    _model_device,
    _model_dtype,
)
from ._forward import _eval_pass, _FeatureHook, _mc_passes

#: What ``pool_outputs`` can compute, per task.
NEEDS = {
    "classification": ("features", "logits", "probs", "mc_probs"),
    "regression": ("features", "outputs", "mc_outputs"),
}


def needs_of(strategy: Any) -> tuple[str, ...]:
    """What ``strategy`` reads from a pool: its ``requires`` (an instance, a class or a name).

    Parameters
    ----------
    strategy : Strategy, Strategy class or str
        An instance (whose ``requires`` may depend on its arguments, e.g.
        ``CoreSet(embedding="gradients")``), a class, or a registered name
        (:func:`fastal.strategies.get`).

    Returns
    -------
    tuple of str
        The pool keys, e.g. ``("probs", "features")``; ``()`` for ``"random"``.

    Raises
    ------
    TypeError
        If ``strategy`` has no ``requires``.
    ValueError
        If a name is not registered.

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
            "strategy must be a Strategy, a Strategy class or a name, got "
            f"{type(strategy).__name__}"
        )
    return tuple(requires)


def pool_size(data: Any) -> int:
    """Number of rows of a pool given as a tensor, an array, a (nested) list of numbers, a
    map-style Dataset or a DataLoader (any ``data`` :func:`pool_outputs` takes, but an
    ``IterableDataset``, whose size only a pass can tell).

    Parameters
    ----------
    data : Tensor, ndarray, list, Dataset or DataLoader
        The pool: a tensor or array of at least one dimension (rows on axis 0), a nested list,
        a map-style ``Dataset`` with ``__len__``, or a ``DataLoader`` (its dataset's length, not
        its number of batches).

    Returns
    -------
    int
        The number of rows (samples) of the pool.

    Raises
    ------
    TypeError
        For an ``IterableDataset`` or another object without ``__len__``.
    ValueError
        For a 0-d tensor or array.

    Examples
    --------
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> import fastal.torch
    >>> X = torch.zeros(10, 3)
    >>> loader = DataLoader(TensorDataset(X), batch_size=4)
    >>> fastal.torch.pool_size(X), fastal.torch.pool_size(loader)
    (10, 10)
    """
    _refuse_non_pools(data)
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


def _check_counts(*, batch_size: Any = 1, mc_samples: Any = 1, num_workers: Any = 0) -> None:
    """The pass's integer options, checked whether or not this call uses them."""
    for value, name, least in ((batch_size, "batch_size", 1), (mc_samples, "mc_samples", 1),
                               (num_workers, "num_workers", 0)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            what = "a positive" if least else "a non-negative"
            raise ValueError(f"{name} must be {what} integer, got {value!r}")


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
    collate_fn: Callable[[list], Any] | None = None,
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
        token ids) are passed as they are. A string, bytes or a mapping is a ``TypeError`` (a
        mapping of per-row tensors goes in as a Dataset whose rows are mappings).
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
        ``T`` for ``"mc_probs"`` / ``"mc_outputs"`` (a positive integer, checked in every call).
    seed : int, optional
        Seeds the dropout masks of the MC passes (the global RNG state is restored afterwards);
        a non-negative int below 2**64. Unseeded, they draw from torch's global generator. The
        masks are drawn batch by batch: the same seed with another batch size gives other masks.
    embed_fn : callable, optional
        ``embed_fn(model, x) -> (B, ...)`` features, a tensor with one row per input row (rows are
        flattened to ``(B, d)``); by default a forward pre-hook records the input of
        ``feature_layer``. Not together with ``feature_layer``.
    feature_layer : nn.Module or str, optional
        The layer whose input are the features (a module or a name for ``model.get_submodule``).
        Default: the last ``nn.Linear`` in ``model.modules()`` order. It must see the whole batch
        (one row per input row; not a chunked forward or ``nn.DataParallel`` replicas); its
        input is flattened to ``(B, d)``, but an ``nn.Linear`` applied at several positions
        (``(B, T, d)``, pooled after) is refused, since its flattened input is not the last-layer
        gradient's factor. The hook is on during the
        deterministic (eval) pass only; when that pass needs nothing after the layer (no
        ``"logits"``, ``"probs"`` or ``"outputs"``) it stops there, at the layer's first call;
        otherwise a layer that runs more than once in one forward (test-time augmentation, a reused
        layer) is refused. A default layer that is not the last ``nn.Linear`` the forward pass runs
        (a head registered before the body), or that is followed by a linear product outside an
        ``nn.Linear`` (a head that is ``F.linear`` on a tied weight, a cosine head), or that
        runs again after that first call, draws a warning: the first batch's pass runs the
        whole model to see that, even when only the features are asked (an error after the
        layer there is then not raised, and nothing is judged). The Monte-Carlo passes run the
        whole model without the hook, so any combination of ``needs`` works.
    batch_fn : callable, optional
        Turns one batch of ``data`` into the model's input: a Dataset's or DataLoader's batch as
        it is collated, a tensor's or array's slice of ``batch_size`` rows as a tensor (already
        on ``device`` in the model's dtype).
    collate_fn : callable, optional
        The ``collate_fn`` of the DataLoader that reads ``data`` when it is a Dataset (or a list
        of rows): rows of different lengths (token ids, audio) padded into one batch. Its result
        goes to the model as a collated batch does (a tuple's first element, or ``batch_fn``'s
        result). A DataLoader keeps its own, and tensors and arrays are sliced, not collated:
        passing one there is an error.
    num_workers : int, default 0
        DataLoader workers when ``data`` is a Dataset (a non-negative integer).
    inference_mode : bool, default True
        ``torch.inference_mode()`` (else ``torch.no_grad()``). Every tensor the forward creates
        is then an inference tensor: a model that caches activations on itself during forward
        and reuses them in training needs ``inference_mode=False``. A model with uninitialised
        lazy modules (``nn.LazyLinear``, ...) runs under ``torch.no_grad()``: their first
        forward creates their weights.
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
    >>> X = torch.randn(100, 4)
    >>> out = fastal.torch.pool_outputs(model, X, ("features", "probs"), progress=False)
    >>> out["features"].shape, out["probs"].shape
    (torch.Size([100, 8]), torch.Size([100, 3]))
    """
    needs = _check_needs(needs, task)
    _check_counts(batch_size=batch_size, mc_samples=mc_samples, num_workers=num_workers)
    mc = "mc_probs" in needs or "mc_outputs" in needs
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    run = _check_device(device, "device", cpu_or_cuda=False) if device is not None else None
    out_device = _check_device(output_device, "output_device", cpu_or_cuda=True)
    dtype = _check_dtype(dtype)
    amp_dtype = _check_amp(amp)
    seed = _check_seed(seed, "seed")
    check_bool(inference_mode, "inference_mode")
    check_bool(progress, "progress")
    for fn, fn_name in ((embed_fn, "embed_fn"), (batch_fn, "batch_fn"), (collate_fn, "collate_fn")):
        if fn is not None and not callable(fn):
            raise TypeError(f"{fn_name} must be callable, got {type(fn).__name__}")
    _check_collate(collate_fn, data)
    if collate_fn is None:  # with one, a list is a list of rows for it to batch
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
        if feature_layer is not None and embed_fn is not None:
            raise ValueError(
                "pass feature_layer= or embed_fn=, not both: the features are embed_fn's, and "
                "feature_layer would be ignored"
            )
        head = tuple(k for k in needs if k in ("logits", "probs", "outputs"))
        hook = None
        if "features" in needs and embed_fn is None:
            hook = _FeatureHook(_feature_layer(model, feature_layer), stop=not head)
        elif feature_layer is not None:  # checked though unused: a typo'd name passed silently
            _feature_layer(model, feature_layer)

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
        batches = _batches(
            data, batch_size, num_workers, run_device, batch_fn, _model_dtype(model), collate_fn
        )
        writer = _Writer(n, out_device, dtype)
        amp_ctx = _autocast(amp_dtype, run_device)
        # a lazy module's first forward creates its weights: inference tensors there, which the
        # model's training could not use afterwards
        lazy = any(map(nn.parameter.is_lazy, itertools.chain(model.parameters(), model.buffers())))
        grad_ctx = torch.inference_mode if inference_mode and not lazy else torch.no_grad

        states = [(m, m.training) for m in model.modules()]
        rng = _forked_rng(seed, run_device) if mc else contextlib.nullcontext()
        varied = False  # whether some Monte-Carlo pass differs from the batch's first
        bar = _progress(n, progress)
        try:
            model.eval()
            with rng, grad_ctx(), _naming_rows(writer) as current:
                for x in batches:
                    current.inputs = x
                    rows = _rows(x)
                    result: dict[str, torch.Tensor] = {}
                    if "features" in needs or head:
                        result = _eval_pass(
                            model, x, rows, hook=hook, embed_fn=embed_fn, head=head, task=task,
                            amp_ctx=amp_ctx, first=writer.pos == 0,
                            watch_head=hook is not None and feature_layer is None,
                        )  # fmt: skip
                    if mc:
                        key = "mc_probs" if task == "classification" else "mc_outputs"
                        result[key], varied = _mc_passes(
                            model, x, rows, dropouts=dropouts, samples=mc_samples, task=task,
                            amp_ctx=amp_ctx, varied=varied,
                        )  # fmt: skip
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


_MC_SAMPLES_DEFAULT = inspect.signature(pool_outputs).parameters["mc_samples"].default

#: what ``select`` passes on to ``pool_outputs`` (``needs`` and ``seed`` are its own), or reads
_SELECT_OPTIONS = frozenset(inspect.signature(pool_outputs).parameters) - {
    "model",
    "data",
    "needs",
    "seed",
} | {"duals", "mc_seed"}


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
        As in :func:`pool_outputs`.
    budget, labeled, seed
        Passed to ``strategy.select``. ``labeled`` holds unique row indices in ``[0, n)``; it is
        checked before the pool pass (right after it when the pool's size is unknown, an
        ``IterableDataset``): an index out of range or repeated raises ``ValueError`` naming
        ``labeled``, and a boolean mask ``TypeError`` (pass ``np.flatnonzero(mask)``). ``seed`` is
        None, a non-negative int or a numpy Generator, for every strategy. It also seeds the MC
        dropout masks: an int directly, a Generator through a draw from a copy of it (so the
        strategy still draws from the Generator as given).
    **options
        :func:`pool_outputs`' keywords (``batch_size``, ``device``, ``task``, ...), passed on to
        it, and ``mc_seed`` and ``duals`` below. Any other is a ``TypeError``; ``batch_size``,
        ``mc_samples`` and ``num_workers`` are checked also for a strategy that needs no model
        output (random).
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
        Override ``strategy.requires`` (``("mc_probs",)``: the Bayesian Sparse Approximation).
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
    >>> X = torch.randn(50, 4)
    >>> sel = fastal.torch.select("entropy", model, X, 5, labeled=[0, 1], progress=False)
    >>> len(sel.indices)
    5
    """
    from ..strategies import Strategy, get

    if isinstance(strategy, str):
        strategy = get(strategy)()
    elif isinstance(strategy, type) and issubclass(strategy, Strategy):
        strategy = strategy()
    from .._validate import check_budget, make_rng

    unknown = sorted(set(options) - _SELECT_OPTIONS)
    if unknown:  # pool_outputs would refuse them, but a strategy without model outputs skips it
        raise TypeError(
            f"select got unknown option(s) {', '.join(map(repr, unknown))}: options are "
            "pool_outputs' keywords (batch_size, device, ...), duals and mc_seed"
        )
    counts = ("batch_size", "mc_samples", "num_workers")
    _check_counts(**{k: options[k] for k in counts if k in options})
    _check_collate(options.get("collate_fn"), data)  # also where no model output is read
    task = options.get("task", "classification")
    if needs is None:  # the strategy's: checked here, so that the error names the strategy
        name = getattr(strategy, "name", type(strategy).__name__)
        needs = _check_needs(needs_of(strategy), task, extra=("duals",), strategy=name)
    else:
        needs = _check_needs(needs, task, extra=("duals",))
    duals = options.pop("duals", None)
    model_needs = tuple(k for k in needs if k != "duals")
    make_rng(seed, "seed")  # the rule of every strategy, whether or not this one draws
    if "mc_seed" in options:
        mc_seed = _check_seed(options.pop("mc_seed"), "mc_seed")
    elif isinstance(seed, numbers.Integral) or seed is None:
        mc_seed = None if seed is None else _check_seed(seed, "seed")
    else:
        # a Generator, BitGenerator or SeedSequence: the masks from it too (they were left
        # unseeded: same seed, other picks); a copy, so that the strategy draws from it as given
        mc_seed = int(make_rng(copy.deepcopy(seed), "seed").integers(2**63))
    mc_samples = options.get("mc_samples", _MC_SAMPLES_DEFAULT)
    if mc_samples < 2 and any(k in model_needs for k in ("mc_probs", "mc_outputs")):
        raise ValueError(
            f"mc_samples must be >= 2 for {getattr(strategy, 'name', strategy)!r}: the "
            "disagreement of one Monte-Carlo pass with itself is 0 on every row"
        )

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
