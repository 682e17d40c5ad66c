"""Features whose inner products are the trace of an empirical NTK (CRC, Kong et al., §3.1).

For a network ``z = f(x; θ)`` with C outputs, the empirical NTK block is
``K(x, x')_{cc'} = <∂z_c/∂θ(x), ∂z_c'/∂θ(x')>``; CRC replaces it by its trace over the classes,
``Σ_c K(x, x')_{cc}``. ``ntk_features`` returns rows ``φ(x)`` with ``<φ(x), φ(x')>`` equal to that trace,
so the Gram matrix of a set is ``Z_S Z_Sᵀ``, the input of :func:`fastal.gram_min_eig`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._interop import describe
from ._validate import check_bool, check_matrix
from .gradients import as_torch, from_torch


def ntk_features(features: Any, n_classes: int, *, bias: bool = True) -> Any:
    """Last-layer trace-NTK features ``√C · [h, 1]`` for a linear last layer ``z = W h + b``.

    ``∂z_c/∂W = e_c ⊗ h`` and ``∂z_c/∂b = e_c``, so ``K_cc(x, x') = h·h' + 1`` for every class and the
    trace is ``C (h·h' + 1)``. The paper found the last layer best (Table 2).

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
    if not bool(torch.isfinite(h).all()):
        raise ValueError("features contains NaN or Inf")
    if bias:
        h = torch.cat([h, torch.ones((h.shape[0], 1), dtype=h.dtype, device=h.device)], 1)
    return from_torch((h * float(np.sqrt(n_classes))).contiguous(), info)


def ntk_features_jacobian(model: Any, inputs: Any, *, params: Any = None, chunk: int = 64) -> Any:
    """Trace-NTK features from per-sample Jacobians over chosen parameters (small models only).

    ``φ(x) = [∂z_1/∂θ(x), ..., ∂z_C/∂θ(x)]`` over the parameters ``params`` (default: all of the
    model's parameters; pass e.g. those of the last k layers), so ``<φ(x), φ(x')> = Σ_c K_cc(x, x')``.
    Uses ``torch.func.jacrev`` vmapped over a chunk of samples; the result has ``C · P`` columns for
    ``P`` parameters, so keep ``P`` small.

    Parameters
    ----------
    model : torch.nn.Module
        Evaluated in its current mode; outputs of shape (batch, C).
    inputs : torch.Tensor (n, ...)
    params : iterable of parameter names, optional
        Names from ``model.named_parameters()`` to differentiate; the others are held fixed.
    chunk : int
        Samples per vmapped Jacobian call.

    Returns
    -------
    torch.Tensor (n, C · P), float32 (float64 for float64 models), on the inputs' device.
    """
    import torch
    from torch.func import functional_call, jacrev, vmap

    describe(inputs, "inputs")
    named = dict(model.named_parameters())
    names = list(named) if params is None else list(params)
    missing = [p for p in names if p not in named]
    if missing:
        raise ValueError(f"params names unknown to the model: {missing}")
    wrt = {k: named[k].detach() for k in names}
    fixed = {k: v.detach() for k, v in named.items() if k not in wrt}
    buffers = dict(model.named_buffers())

    def out(p, x):
        return functional_call(model, {**fixed, **p, **buffers}, (x[None],))[0]

    rows = []
    for s in range(0, inputs.shape[0], chunk):
        jac = vmap(jacrev(out), in_dims=(None, 0))(wrt, inputs[s : s + chunk])  # {name: (b, C, *shape)}
        flat = torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()], dim=2)
        rows.append(flat.reshape(flat.shape[0], -1))  # class-major: [∂z_1/∂θ, ..., ∂z_C/∂θ]
    return torch.cat(rows, 0)
