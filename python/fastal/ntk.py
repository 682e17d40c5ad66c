"""Features whose inner products are the trace of an empirical NTK (CRC, Kong et al., §3.1).

For a network ``z = f(x; θ)`` with C outputs, the empirical NTK block is
``K(x, x')_{cc'} = <∂z_c/∂θ(x), ∂z_c'/∂θ(x')>``; CRC replaces it by its trace over the classes,
``Σ_c K(x, x')_{cc}``. ``ntk_features`` returns rows ``φ(x)`` with ``<φ(x), φ(x')>`` equal to that
trace, so the Gram matrix of a set is ``Z_S Z_Sᵀ``, the input of :func:`fastal.gram_min_eig`.
``ntk_features_jacobian`` does the same from per-sample Jacobians, over the last k layers or any
chosen parameters.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ._interop import describe
from ._torch_arrays import as_torch, from_torch
from ._torch_state import own_numerics
from ._validate import check_bool, check_matrix, check_positive_int

# ntk_features fills its output in row blocks of about this many values, so that its temporaries
# (a block's finiteness mask) stay small next to the (n, d + 1) output (tests make it tiny)
_CHUNK_VALUES = 1 << 22


def ntk_features(features: Any, n_classes: int, *, bias: bool = True) -> Any:
    """Last-layer trace-NTK features ``√C · [h, 1]`` for a linear last layer ``z = W h + b``.

    ``∂z_c/∂W = e_c ⊗ h`` and ``∂z_c/∂b = e_c``, so ``K_cc(x, x') = h·h' + 1`` for every class and
    the trace is ``C (h·h' + 1)``. The paper found the last layer best (Table 2). For the last k
    layers of a network see :func:`ntk_features_jacobian` (``last_k=1`` gives the same Gram).

    Parameters
    ----------
    features : array (n, d)
        Penultimate features ``h`` (numpy or torch, CPU or CUDA).
    n_classes : int
        C, the number of outputs.
    bias : bool, default True
        Whether the last layer has a bias (adds the constant column).

    Returns
    -------
    array (n, d + bias) in the framework, device and dtype of ``features``.

    Notes
    -----
    Memory: the output, filled in blocks of rows (about 4M values each, with a boolean mask of
    the block for the finiteness check), so the peak is the output plus a few MiB (and a
    contiguous copy of non-contiguous numpy ``features``).

    Examples
    --------
    >>> import numpy as np, fastal
    >>> fastal.ntk_features(np.array([[1.0, 2.0]]), 4).tolist()
    [[2.0, 4.0, 2.0]]
    """
    import torch

    info = check_matrix(features, "features")
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    bias = check_bool(bias, "bias")
    h = as_torch(features, info)
    n, d = h.shape
    root_c = _root_c(n_classes)
    # the output is the only whole-pool allocation: h goes in by row blocks, each scaled in place
    # as the whole [h, 1] once was (the same multiply, so the same bits) and checked while warm
    out = torch.empty((n, d + int(bias)), dtype=h.dtype, device=h.device)
    if bias:
        out[:, d] = 1
    step = _chunk_rows(out.shape[1])
    finite = torch.ones((), dtype=torch.bool, device=h.device)  # one synchronisation at the end
    for s in range(0, n, step):
        block = out[s : s + step]
        block[:, :d].copy_(h[s : s + step])
        block.mul_(root_c)
        finite &= torch.isfinite(block).all()
    if not bool(finite):  # NaN / Inf in h, or √C h overflows: h says which, as before
        blocks = [h[s : s + step] for s in range(0, n, step)]
        if not all(bool(torch.isfinite(b).all()) for b in blocks):
            raise ValueError("features contains NaN or Inf")
        peak = max(float(b.abs().max()) for b in blocks)
        peak = max(peak, 1.0) if bias else peak  # the peak of [h, 1], as before
        raise ValueError(
            f"features times √n_classes overflows {info.dtype}: |features| reaches {peak:.3g} and "
            f"√C = {root_c:.3g}; rescale them, or pass a wider dtype"
        )
    return from_torch(out, info)


def _root_c(n_classes: int) -> float:
    try:
        return math.sqrt(n_classes)
    except OverflowError:  # an int past float64's range
        raise ValueError(
            f"n_classes is too large for a floating-point √C ({len(str(n_classes))} digits)"
        ) from None


class NtkRows:
    """Rows of ``ntk_features(h, C, bias=bias)`` made when read, for a host pool whose
    ``(n, d + 1)`` copy is not wanted (CRC reads them group by group).

    ``take(rows)`` returns the values ``ntk_features`` would hold in those rows, bit for bit (the
    same widening copy and the same in-place multiply by ``√C``), in ``dtype``; with
    ``root_c=None`` the rows are only widened (given NTK features). The row-reader protocol of
    :class:`fastal.gram.StoredRows`: ``shape``, ``dtype`` (a name), ``peak()`` and ``whole``,
    which is ``None`` (there is no stored ``Z`` to read in place). Build it with
    :func:`ntk_rows`, which makes ``ntk_features``' checks, or after checking ``h`` is finite.

    Parameters
    ----------
    h : torch.Tensor (n, d)
        Penultimate features on the CPU (a CUDA tensor raises ``ValueError``), kept by reference
        and never written; not checked here.
    root_c : float or None
        ``√C``, the factor of every entry; ``None``: no factor (the rows are ``[h, 1]`` or ``h``
        in ``dtype``).
    bias : bool
        Append the constant column (a 1 before the factor): ``D = d + 1``, else ``D = d``.
    dtype : torch.dtype
        The floating dtype of the rows made (``h`` is cast to it row by row).

    Attributes
    ----------
    shape : (int, int)
        ``(n, D)``.
    dtype : str
        ``dtype``'s name, e.g. ``"float32"``.
    whole : None
        No stored ``Z``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from fastal.ntk import NtkRows
    >>> rows = NtkRows(torch.tensor([[1.0, 2.0], [3.0, -4.0]]), 2.0, True, torch.float64)
    >>> rows.shape, rows.dtype, rows.whole
    ((2, 3), 'float64', None)
    >>> rows.take(np.array([1, 0])).tolist()  # 2 · [h, 1]
    [[6.0, -8.0, 2.0], [2.0, 4.0, 2.0]]
    >>> rows.abs_max(), rows.peak()
    (4.0, 8.0)
    """

    whole = None

    def __init__(self, h: Any, root_c: float | None, bias: bool, dtype: Any) -> None:
        import torch

        if h.device.type != "cpu":
            raise ValueError(f"NtkRows reads host features, got a tensor on {h.device}")
        self.h, self.root_c, self.bias, self._dtype = h, root_c, bias, dtype
        self.shape = (int(h.shape[0]), int(h.shape[1]) + int(bias))
        self.dtype = str(dtype).removeprefix("torch.")
        self._torch = torch
        self._peak: float | None = None

    def take(self, rows: np.ndarray) -> np.ndarray:
        """A new C-contiguous ``(len(rows), D)`` numpy array of those rows.

        Parameters
        ----------
        rows : 1-D int array-like
            Row indices into ``h`` (read as int64; repeats allowed).

        Returns
        -------
        ndarray (len(rows), D)
            ``root_c · [h[rows], 1]`` (without the 1 when not ``bias``, without the factor when
            ``root_c`` is None) in ``dtype``, a new array the caller may write.
        """
        torch = self._torch
        idx = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        d = self.h.shape[1]
        out = torch.empty((idx.numel(), self.shape[1]), dtype=self._dtype)
        if self.bias:
            out[:, d] = 1
        out[:, :d].copy_(self.h[idx])
        if self.root_c is not None:
            out.mul_(self.root_c)
        return out.numpy()

    def peak(self) -> float:
        """``max |Z|``: rounding is monotone, so it is ``max |h|`` (and 1 for the bias) times
        ``√C`` rounded once, as in the row that holds it. Row blocks, no whole-pool temporary.

        Returns
        -------
        float
            ``max |Z|`` over every row that :meth:`take` makes, computed on the first call and
            kept (:func:`ntk_rows` sets it when it builds the reader). NaN / Inf in ``h``, or
            ``√C h`` past ``dtype``'s range, give a non-finite value; nothing is raised here.
        """
        if self._peak is None:
            self._peak = self._scaled(self.abs_max())
        return self._peak

    def abs_max(self) -> float:
        """``max |h|`` (NaN or Inf where ``h`` holds one), in row blocks.

        Returns
        -------
        float
            The largest ``|h|`` entry, exactly (0.0 for an empty ``h``); NaN propagates. Kept
            in float64, which holds every value of the input dtypes: a value past a narrower
            ``dtype``'s range is found by the overflow check of :meth:`peak` (:func:`ntk_rows`'
            message), not read as Inf. Computed afresh on every call.
        """
        torch, h = self._torch, self.h
        top = torch.zeros((), dtype=torch.float64)
        for s in range(0, h.shape[0], _chunk_rows(h.shape[1])):
            block = h[s : s + _chunk_rows(h.shape[1])]
            if block.numel():
                top = torch.maximum(top, block.abs().amax().to(torch.float64))  # NaN propagates
        return float(top)

    def _scaled(self, h_max: float) -> float:
        """``max |Z|`` from ``max |h|`` (exact in ``dtype``): the bias's 1, then √C, one round."""
        torch = self._torch
        top = torch.tensor(h_max, dtype=self._dtype)
        if self.bias:
            top = torch.maximum(top, torch.ones((), dtype=self._dtype))
        if self.root_c is not None:
            top = top.reshape(1).mul_(self.root_c)[0]
        return float(top)


def ntk_rows(features: Any, n_classes: int, *, bias: bool = True, dtype: Any = None) -> NtkRows:
    """An :class:`NtkRows` over host ``features``, after the checks of :func:`ntk_features` and
    with its messages (NaN / Inf; ``√C h`` overflowing ``dtype``). ``dtype``: a torch float
    dtype, by default that of ``features``.

    ``take(rows)`` of the result equals those rows of ``ntk_features(features, n_classes,
    bias=bias)`` bit for bit (when ``dtype`` is that of ``features``); one pass over ``features``
    (in row blocks) checks them and sets ``peak()``.

    Parameters
    ----------
    features : array (n, d)
        Penultimate features ``h`` on the host: numpy or CPU torch (used in place; a numpy array
        that is not C-contiguous is copied once). A CUDA tensor raises ``ValueError``.
    n_classes : int
        C, the number of outputs (>= 1): the rows are scaled by ``√C``.
    bias : bool, default True
        Append the constant column (``D = d + 1``).
    dtype : torch.dtype, optional
        The dtype of the rows made; default ``features``' dtype (CRC passes float32 for float16 /
        bfloat16 features, to widen them). Values of ``√C h`` past its range are refused with
        the overflow message.

    Returns
    -------
    NtkRows
        The reader, ``shape == (n, d + bias)``, with ``peak()`` already computed.

    Examples
    --------
    >>> import numpy as np, fastal
    >>> from fastal.ntk import ntk_rows
    >>> h = np.array([[1.0, 2.0], [0.5, -3.0]])
    >>> rows = ntk_rows(h, 4)
    >>> rows.shape, rows.dtype, rows.peak()
    ((2, 3), 'float64', 6.0)
    >>> np.array_equal(rows.take(np.arange(2)), fastal.ntk_features(h, 4))
    True
    """
    info = check_matrix(features, "features")
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    bias = check_bool(bias, "bias")
    h = as_torch(features, info)
    rows = NtkRows(h, _root_c(n_classes), bias, h.dtype if dtype is None else dtype)
    raw = rows.abs_max()  # NaN / Inf kept
    if not math.isfinite(raw):
        raise ValueError("features contains NaN or Inf")
    rows._peak = rows._scaled(raw)  # one pass over h for both
    if not math.isfinite(rows._peak):
        peak = max(raw, 1.0) if bias else raw  # the peak of [h, 1], as ntk_features reports it
        raise ValueError(
            f"features times √n_classes overflows {rows.dtype}: |features| reaches {peak:.3g} and "
            f"√C = {rows.root_c:.3g}; rescale them, or pass a wider dtype"
        )
    return rows


def _chunk_rows(width: int) -> int:
    """Rows per block of :func:`ntk_features`: about ``_CHUNK_VALUES`` values, at least one row."""
    return max(1, _CHUNK_VALUES // max(width, 1))


def ntk_features_jacobian(
    model: Any, inputs: Any, *, params: Any = None, last_k: int | None = None, chunk: int = 64
) -> Any:
    """Trace-NTK features from per-sample Jacobians over chosen parameters (small models only).

    ``φ(x) = [∂z_1/∂θ(x), ..., ∂z_C/∂θ(x)]`` (class-major, each block flattened over the chosen
    parameters θ), so ``<φ(x), φ(x')> = Σ_c <∂z_c/∂θ(x), ∂z_c/∂θ(x')> = Σ_c K_cc(x, x')``: the trace
    over the classes of the empirical NTK, the kernel CRC uses (Kong et al., §3.1, eq. 9; Alg. 1
    computes it "over final layers", and §3.3 / Table 2 found the last layer best). The Gram matrix
    ``J Jᵀ`` is that trace itself, with no extra factor: for a last layer ``z = W h + b``,
    ``last_k=1`` gives exactly the Gram of :func:`ntk_features` ``(h, C)`` (``C (h·h' + 1)``),
    although the columns differ (``C · (C d + C)`` here, mostly zeros, against ``d + 1`` there).
    Prefer :func:`ntk_features` for the last linear layer; use this function for deeper or
    non-linear last layers.

    Which parameters (θ):

    - ``params``: names from ``model.named_parameters()``; the others are held fixed.
    - ``last_k``: the parameters of the last ``k`` *parameterised modules*. A parameterised module
      is a module of ``model.modules()`` that holds trainable parameters itself (``requires_grad``,
      registered directly on it, not on a submodule): an ``nn.Linear``, ``nn.Conv2d``,
      ``nn.BatchNorm*`` or ``nn.LayerNorm`` with affine parameters each count as one layer, with all
      their trainable parameters (a bias belongs with its weight); parameter-free modules
      (``nn.ReLU``, ``nn.Dropout``, containers) do not count. "Last" is in registration order (the
      depth-first order of ``model.modules()``, which for ``nn.Sequential`` is the order of
      execution; for a custom module it is the order of the assignments in ``__init__``, which need
      not be the order of ``forward``). Parameters registered on ``model`` itself count as one
      module, the first. Frozen parameters (``requires_grad=False``) are never selected.
    - neither: every parameter of the model (``model.named_parameters()``), the full NTK,
      frozen ones (``requires_grad=False``) included: pass ``params`` to leave them out.

    Mode: the NTK is taken at the current parameters with the model in **eval mode**
    (``model.eval()``: BatchNorm uses its running statistics, Dropout is off), which is also what
    makes a per-sample Jacobian well defined; the ``training`` flag of every submodule is restored
    afterwards, also on error, and so are its parameters and buffers (the same objects, also for a
    module shared under two names). Buffers (running statistics) are not changed.

    Uses ``torch.func.jacrev`` vmapped over chunks of samples; the result has ``C · P`` columns for
    ``P`` selected parameter values, so keep ``P`` small (or use ``last_k``).

    Parameters
    ----------
    model : torch.nn.Module
        Outputs of shape (batch, C) (logits).
    inputs : torch.Tensor (n, ...)
        On the model's device; n >= 1. Floating inputs must be finite and are cast to the dtype of
        the model's parameters (as :func:`fastal.torch.pool_outputs` does); other dtypes (e.g.
        integer token ids) are passed as they are.
    params : iterable of str, optional
        Names from ``model.named_parameters()`` to differentiate. Not with ``last_k``.
    last_k : int, optional
        Differentiate the parameters of the last ``last_k`` parameterised modules (see above);
        1 <= last_k <= their number. Not with ``params``.
    chunk : int, default 64
        Samples per vmapped Jacobian call (memory only; the result does not depend on it).

    Returns
    -------
    torch.Tensor (n, C · P), in the dtype the model computes in (float32, float64 for a float64
    model), on the inputs' device.

    Examples
    --------
    >>> import torch, fastal
    >>> _ = torch.manual_seed(0)
    >>> nn = torch.nn
    >>> mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> J = fastal.ntk_features_jacobian(mlp, x, last_k=1)  # the last Linear: weight and bias
    >>> J.shape
    torch.Size([5, 20])
    >>> Z = fastal.ntk_features(mlp[:2](x), 2)  # √C [h, 1] from the penultimate features
    >>> torch.allclose(J @ J.T, Z @ Z.T)
    True
    """
    import torch
    from torch.func import functional_call

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor (n, ...), got {type(inputs).__name__}")
    describe(inputs, "inputs")
    if inputs.ndim < 1 or inputs.shape[0] < 1:
        shape = tuple(inputs.shape)
        raise ValueError(f"inputs must hold at least one sample (n, ...), got shape {shape}")
    chunk = check_positive_int(chunk, "chunk")
    if params is not None and last_k is not None:
        raise ValueError(
            "params and last_k are mutually exclusive: pass one of them (neither: all parameters)"
        )
    named = dict(model.named_parameters())
    if last_k is not None:
        names = _last_k_names(model, last_k)
    elif params is None:
        names = list(named)
    else:
        if isinstance(params, str):
            raise ValueError(f"params must be an iterable of parameter names, got {params!r}")
        try:
            names = list(params)
        except TypeError:
            raise TypeError(
                f"params must be an iterable of parameter names (str), got {type(params).__name__}"
            ) from None
        not_str = [p for p in names if not isinstance(p, str)]
        if not_str:
            raise TypeError(f"params must hold parameter names (str), got {not_str[0]!r}")
        missing = [p for p in names if p not in named]
        if missing:
            raise ValueError(f"params names unknown to the model: {missing}")
        if not names:
            raise ValueError("params must name at least one parameter, got an empty list")
    if not names:
        raise ValueError("model has no parameters to differentiate")
    inputs = _jacobian_inputs(model, inputs)
    wrt = {k: named[k].detach() for k in names}
    fixed = {k: v.detach() for k, v in named.items() if k not in wrt}
    buffers = dict(model.named_buffers())

    def out(p, x):
        return functional_call(model, {**fixed, **p, **buffers}, (x[None],))[0]

    modes = [(m, m.training) for m in model.modules()]
    # functional_call swaps tensors into each module's _parameters / _buffers and puts back what
    # it finds under one name; a module reachable under two names (self.b = self.a) kept plain
    # tensors instead of its nn.Parameters, and an optimizer built earlier stopped training it.
    held = [(m, dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    model.eval()
    try:
        with own_numerics(inputs.device):  # a caller's autocast mixed bfloat16 into jacrev
            rows = _jacobian_rows(model, out, wrt, inputs, chunk)
    finally:
        for m, training in modes:
            m.training = training  # per module, not recursive: mixed modes come back as they were
        for m, parameters, buffers in held:
            m._parameters.update(parameters)
            m._buffers.update(buffers)
    J = torch.cat(rows, 0)
    if not bool(torch.isfinite(J).all()):
        raise ValueError(
            "the Jacobian features contain NaN or Inf: the model's parameters or its derivatives "
            "are not finite at these inputs"
        )
    return J


def _jacobian_rows(model: Any, out: Any, wrt: dict, inputs: Any, chunk: int) -> list:
    """:func:`ntk_features_jacobian`'s rows, ``chunk`` inputs at a time, after one probe of the
    model's output (the model in eval mode, its tensors swapped by ``out``)."""
    import torch
    from torch.func import jacrev, vmap

    with torch.no_grad():
        try:
            probe = model(inputs[:1])
        except (RuntimeError, TypeError) as err:
            if inputs.is_floating_point():  # e.g. a feature count the first layer does not take
                raise ValueError(
                    f"the model cannot take inputs of shape {tuple(inputs.shape)}: {err}"
                ) from err
            raise TypeError(
                f"inputs has dtype {inputs.dtype}, which the model cannot take ({err}); "
                "floating inputs are cast to the model's dtype, other dtypes passed as they are"
            ) from err
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2:
        shape = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ValueError(f"model must return logits of shape (batch, C), got {shape}")
    rows = []
    for s in range(0, inputs.shape[0], chunk):
        # {name: (b, C, *shape)}
        jac = vmap(jacrev(out), in_dims=(None, 0))(wrt, inputs[s : s + chunk])
        flat = torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()], dim=2)
        rows.append(flat.reshape(flat.shape[0], -1))  # class-major: [∂z_1/∂θ, ..., ∂z_C/∂θ]
    return rows


def _jacobian_inputs(model: Any, inputs: Any) -> Any:
    """``inputs`` of :func:`ntk_features_jacobian` checked finite and, when floating, cast to the
    dtype of the model's first floating parameter (the rule of ``fastal.torch.pool_outputs``)."""
    if not inputs.is_floating_point():
        return inputs
    if not bool(inputs.isfinite().all()):
        raise ValueError("inputs contains NaN or Inf")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), inputs.dtype)
    cast = inputs.to(dtype)
    if not bool(cast.isfinite().all()):
        raise ValueError(
            f"inputs overflow the model's dtype {dtype}: |inputs| reaches "
            f"{float(inputs.abs().max()):.3g}; rescale them"
        )
    return cast


def _last_k_names(model: Any, last_k: Any) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the trainable parameters of the last ``last_k``
    modules that hold trainable parameters themselves, in ``model.named_modules()`` order."""
    if isinstance(last_k, bool) or not isinstance(last_k, numbers.Integral) or last_k < 1:
        raise ValueError(f"last_k must be a positive integer, got {last_k!r}")
    layers = []  # (module name, [parameter objects])
    for mname, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own:
            layers.append((mname or "<model>", own))
    if last_k > len(layers):
        listed = ", ".join(repr(n) for n, _ in layers)
        raise ValueError(
            f"last_k must be at most the number of parameterised modules of the model "
            f"({len(layers)}: {listed}), got {last_k}"
        )
    chosen = {id(p) for _, own in layers[-last_k:] for p in own}
    # named_parameters() lists a shared (tied) parameter once, under its first name
    return [name for name, p in model.named_parameters() if id(p) in chosen]
