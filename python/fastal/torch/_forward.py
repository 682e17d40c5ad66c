"""One batch of the pool through the model, for :func:`fastal.torch.adapter.pool_outputs`.

The deterministic (eval) pass records the feature layer's input with a forward pre-hook
(:class:`_FeatureHook`) and, on the first batch, watches which linear products run after the
default feature layer (:func:`_linear_calls`: a head registered before the body or a functional
head would make its input the wrong features). The Monte-Carlo passes (:func:`_mc_passes`) run
the whole model with its dropout modules in train mode, unhooked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .._warnings import warn_user
from ._batches import _call
from ._checks import _check_embedding, _check_output, _module_name, _warn_if_probabilities


class _StopForward(Exception):
    """Raised by the feature hook when nothing after the hooked layer is needed."""


class _FeatureHook:
    """The input of ``layer`` in one forward pass, recorded by a forward pre-hook that is on only
    inside :meth:`on` (the deterministic pass: the Monte-Carlo passes neither need nor trip it).
    With ``stop`` (nothing after the layer is needed) the pass ends at the layer's first call,
    but for a pass that runs on (:meth:`on`'s ``through``: the first batch's, watching the head),
    which records that first call only, as a stopped pass would."""

    def __init__(self, layer: nn.Module, stop: bool) -> None:
        self.layer = layer
        self.stop = stop
        self.through = False
        self.captured: list[torch.Tensor] = []
        self.repeated = False  # the layer ran again in a pass running through (told by a warning)

    def record(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.captured:
            if self.stop:  # running through: a stopped pass would not have seen this call
                self.repeated = True
                return
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
            raise RuntimeError(
                f"the feature layer's input is a {type(x).__name__}, not a tensor: pass embed_fn="
            )
        if self.stop and not self.through:
            self.captured.append(x)
            raise _StopForward
        # a copy: the rest of the forward pass may change it in place (ReLU(inplace=True))
        self.captured.append(x.clone())

    @contextlib.contextmanager
    def on(self, through: bool = False) -> Iterator[None]:
        self.captured.clear()
        self.through = through
        self.repeated = False
        handle = self.layer.register_forward_pre_hook(self.record, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            self.through = False

    def features(self, rows: int, model: nn.Module) -> torch.Tensor:
        """What the pass recorded, checked to be the whole batch; the record is then dropped."""
        try:
            return _captured_features(self.captured, self.layer, rows, model)
        finally:
            self.captured.clear()


def _captured_features(
    captured: list, layer: nn.Module, rows: int, model: nn.Module
) -> torch.Tensor:
    """The feature layer's input for the whole batch: a layer that saw part of it (a chunked
    forward, ``nn.DataParallel`` replicas sharing the hook) would give rows of mixed widths."""
    if not captured:
        name = _module_name(model, layer)
        raise RuntimeError(
            f"the feature layer {type(layer).__name__} {name!r} did not run in the forward pass "
            "(the default is the last nn.Linear registered: one used only in training, or "
            "attention's out_proj, never runs as a module); pass feature_layer= or embed_fn="
        )
    x = captured[0]
    if x.ndim == 0 or x.shape[0] != rows:
        raise RuntimeError(
            f"the feature layer {type(layer).__name__} saw an input of shape {tuple(x.shape)} for "
            f"a batch of {rows} rows: it runs on part of the batch (a chunked forward, "
            "nn.DataParallel replicas) or batch-second; pass embed_fn= (or model.module)"
        )
    if isinstance(layer, nn.Linear) and x.ndim > 2 and x[0].numel() != x.shape[-1]:
        # a linear head applied per position (tokens, pixels) and pooled after: the last-layer
        # gradient is (p - e_y) ⊗ (the pooled input), not the flattened positions, so BADGE, EGL
        # and SparseApprox would read a wrong embedding of another width. Other layers' inputs
        # (a Flatten's, a pooling block's) are flattened per row, as before.
        raise ValueError(
            f"the feature layer {type(layer).__name__} {_module_name(model, layer)!r} saw an input "
            f"of shape {tuple(x.shape)}: it runs per position, not once per row; pass embed_fn= "
            "returning the (B, d) features you want (e.g. the input pooled as the model pools its "
            "outputs), or feature_layer= a layer that sees (B, d)"
        )
    return x


#: Products that make a head without an ``nn.Linear`` (F.linear on a tied weight, a cosine head).
_LINEAR_OPS = frozenset(
    ["linear", "bilinear", "matmul", "__matmul__", "__rmatmul__", "mm", "addmm", "bmm",
     "baddbmm", "einsum", "tensordot", "mv", "addmv", "inner", "dot", "multi_dot",
     "chain_matmul", "cosine_similarity", "cdist"]
)  # fmt: skip

#: Modules that leave their fast path while any function mode is on (``has_torch_function``):
#: the watch is suspended inside them, so that they compute what they compute unwatched.
_FAST_PATH_MODULES = (nn.MultiheadAttention, nn.TransformerEncoder, nn.TransformerEncoderLayer)


class _LinearCalls(list):
    """The ``nn.Linear`` modules in the order a forward pass calls them, and the linear products
    (``F.linear``, ``@``, ...) that ran outside them after ``layer`` was the last one to run."""

    def __init__(self, layer: nn.Module | None) -> None:
        super().__init__()
        self.layer = layer
        self.products_after: list[str] = []


class _ProductsAfter(torch.overrides.TorchFunctionMode):
    """Records the linear products while it is on the mode stack (:func:`_linear_calls` pushes it
    when the layer has run, not before: the model's body runs unwatched)."""

    def __init__(self, calls: _LinearCalls) -> None:
        super().__init__()
        self.calls = calls
        self.on = False

    def push(self) -> None:
        if not self.on:
            self.__enter__()
            self.on = True

    def pop(self) -> None:
        if self.on:
            self.__exit__(None, None, None)
            self.on = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        calls = self.calls
        if name in _LINEAR_OPS and calls and calls[-1] is calls.layer:
            calls.products_after.append(name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _linear_calls(model: nn.Module, watch: bool, layer: nn.Module | None) -> Iterator[list]:
    """The ``nn.Linear`` modules of ``model`` in the order a forward pass calls them (``watch``;
    else an empty list and no hooks), and the linear products after ``layer``'s call.

    The products are watched by a function mode pushed when ``layer`` returns, so that nothing
    before it runs differently; it is popped inside the modules whose fast path a function mode
    turns off (attention, transformer layers), and at the end. Not under ``torch.compile``: a
    mode pushed inside a compiled forward is not something dynamo is known to take."""
    calls = _LinearCalls(layer)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)] if watch else []
    mode = _ProductsAfter(calls) if watch and not hasattr(model, "_orig_mod") else None

    def after_linear(mod: nn.Module, *_: Any) -> None:
        calls.append(mod)
        if mod is layer and mode is not None:
            mode.push()

    resume: list[bool] = []  # per fast-path module entered: whether the mode was on

    def before_fast_path(*_: Any) -> None:
        resume.append(mode is not None and mode.on)
        if resume[-1]:
            mode.pop()

    def after_fast_path(*_: Any) -> None:
        if resume and resume.pop():
            mode.push()

    handles = [m.register_forward_hook(after_linear) for m in linears]
    if mode is not None:
        for m in model.modules():
            if isinstance(m, _FAST_PATH_MODULES):
                handles.append(m.register_forward_pre_hook(before_fast_path))
                handles.append(m.register_forward_hook(after_fast_path))
    try:
        yield calls
    finally:
        if mode is not None:
            mode.pop()
        for h in handles:
            h.remove()


def _warn_if_not_the_head(model: nn.Module, layer: nn.Module, calls: _LinearCalls) -> None:
    """The default feature layer is the last ``nn.Linear`` registered, which need not be the head
    (one registered before the body, or a head that is a function: ``F.linear`` on a tied weight,
    a cosine head): its input was then some other activation, silently. Where another
    ``nn.Linear`` or a linear product runs after it in the forward pass, say so (first batch)."""
    if not calls:
        return
    name = _module_name(model, layer)
    if calls[-1] is not layer:
        after = f"is not the last one the forward pass runs ({_module_name(model, calls[-1])!r})"
    elif calls.products_after:
        after = f"is followed by a product outside an nn.Linear ({calls.products_after[0]})"
    else:
        return
    warn_user(
        f"the default feature layer, the last nn.Linear registered ({name!r}), {after}: it may "
        "not be the head, and the features would be its input; pass feature_layer= (the head) "
        "or embed_fn=",
    )


def _eval_pass(
    model: nn.Module,
    x: Any,
    rows: int,
    *,
    hook: _FeatureHook | None,
    embed_fn: Callable[[nn.Module, Any], torch.Tensor] | None,
    head: tuple[str, ...],
    task: str,
    amp_ctx: Callable[[], Any],
    first: bool,
    watch_head: bool,
) -> dict[str, torch.Tensor]:
    """The batch's features (``embed_fn``'s or ``hook``'s) and its ``head`` outputs (``"logits"``,
    ``"probs"``, ``"outputs"``) from one forward pass in eval mode. On the ``first`` batch, with
    ``watch_head`` (the feature layer is the default one), a warning if that layer does not look
    like the head (that pass runs the whole model even when only the features are asked), and
    one if the logits look like probabilities."""
    result: dict[str, torch.Tensor] = {}
    layer = hook.layer if hook is not None else None
    with amp_ctx():
        if embed_fn is not None:
            result["features"] = _check_embedding(embed_fn(model, x), rows)
        z = None
        # the first pass watches what runs after the default layer (the head, or not)
        watch = first and watch_head and hook is not None
        if head or hook is not None:
            recording = hook.on(through=watch) if hook is not None else contextlib.nullcontext()
            try:
                with recording, _linear_calls(model, watch, layer) as calls:
                    z = _call(model, x)
            except _StopForward:
                z = None
            except Exception:
                # running through only to watch the head (features alone asked): what fails
                # after the features were taken (a head that raises, runs out of memory, ...)
                # is not the caller's to see, and there is then no head to judge
                if not (watch and hook.stop and hook.captured):
                    raise
                z, watch = None, False
    if hook is not None:  # before the head warning: a layer that never ran is an error
        result["features"] = hook.features(rows, model)
    if watch and hook.repeated:
        warn_user(
            f"the default feature layer, the last nn.Linear registered "
            f"({_module_name(model, layer)!r}), runs more than once in a forward pass (a shared "
            "layer, test-time augmentation): the features are the input of its first call; pass "
            "feature_layer= or embed_fn= to choose them",
        )
    elif watch:
        _warn_if_not_the_head(model, layer, calls)
    if head:
        z = _check_output(z, task, rows)
        if first and task == "classification":
            _warn_if_probabilities(z)
        for key in head:
            result[key] = torch.softmax(z.float(), dim=1) if key == "probs" else z
    return result


def _mc_passes(
    model: nn.Module,
    x: Any,
    rows: int,
    *,
    dropouts: list[nn.Module],
    samples: int,
    task: str,
    amp_ctx: Callable[[], Any],
    varied: bool,
) -> tuple[torch.Tensor, bool]:
    """``samples`` forward passes over the batch with the ``dropouts`` in train mode (the rest of
    the model in eval), stacked (T, B, ...): softmaxed for a classifier. Also ``varied`` or
    whether some pass differs from the first (once True, not compared again)."""
    passes = []
    for m in dropouts:
        m.train()
    # torch's fused transformer path skips the dropout modules altogether
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        for _ in range(samples):
            with amp_ctx():
                z = _check_output(_call(model, x), task, rows)
            varied = varied or (bool(passes) and not torch.equal(z, passes[0]))
            passes.append(z)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m in dropouts:
            m.eval()
    stacked = torch.stack(passes)
    return (torch.softmax(stacked.float(), dim=2) if task == "classification" else stacked), varied
