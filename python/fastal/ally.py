"""ALLY's pieces (Elenter et al., NeurIPS 2022, §4.2, §4.4, §5.1): the dual regression head, the
per-cluster pick, and the generative mode.

After primal-dual training (:mod:`fastal.pdcl`) every labeled sample has a dual variable λ*_i.
A *dual regression head* ``f_ω: R^d → R₊`` learns λ* from the frozen embeddings of the labeled
samples (Alg. 2, line 3: MSE), predicts it on the pool, and ALLY takes the pool points with the
highest predicted λ from each k-means cluster of the unlabeled rows' embeddings (§5.1).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from ._threads import one_thread_if_small
from ._torch_state import forked_rng, own_numerics
from ._validate import _number, check_positive_int, host_values, scalar_int


def _torch():
    import torch

    return torch


def _on_cpu_unless_tensor(x: Any) -> Any:
    """A tensor as it is; anything else as a CPU tensor (``torch.as_tensor`` alone would follow
    a global default device)."""
    torch = _torch()
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x, device="cpu")


def dual_head(
    in_dim: int, *, hidden: int = 128, layers: int = 5, dtype: Any = None, device: Any = None
) -> Any:
    """The dual regression head of §5.1: an MLP with ``layers`` hidden layers of ``hidden`` units,
    each ``Linear → BatchNorm1d → ReLU``, then ``Linear → Softplus`` (a non-negative output).

    ``dtype`` and ``device`` default to float32 on the CPU, not to torch's global defaults: the
    initial weights are drawn in ``dtype``, so a global default would change the picks.

    Parameters
    ----------
    in_dim : int
        d, the width of the embeddings.
    hidden : int, default 128
        Units of every hidden layer (§5.1 does not give the width).
    layers : int, default 5
        The number of hidden ``Linear → BatchNorm1d → ReLU`` blocks (§5.1: 5); 0 leaves
        ``Linear(in_dim, 1) → Softplus``.
    dtype : torch.dtype, optional
        Of the parameters; default float32.
    device : torch.device or str, optional
        Of the parameters; default ``"cpu"``.

    Returns
    -------
    torch.nn.Sequential
        A freshly initialised head (torch's RNG draws the weights), in training mode, mapping
        ``(B, in_dim)`` to ``(B, 1)``.

    Examples
    --------
    >>> from fastal.ally import dual_head
    >>> net = dual_head(8, hidden=16, layers=2)
    >>> [type(m).__name__ for m in net]
    ['Linear', 'BatchNorm1d', 'ReLU', 'Linear', 'BatchNorm1d', 'ReLU', 'Linear', 'Softplus']
    >>> net[0].weight.dtype, net[0].weight.device.type
    (torch.float32, 'cpu')
    """
    import torch
    from torch import nn

    kw = {"dtype": dtype or torch.float32, "device": device or "cpu"}
    mods: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        mods += [nn.Linear(width, hidden, **kw), nn.BatchNorm1d(hidden, **kw), nn.ReLU()]
        width = hidden
    mods += [nn.Linear(width, 1, **kw), nn.Softplus()]
    return nn.Sequential(*mods)


class DualRegressor:
    """A fitted dual regression head: ``predict(features) -> λ̂ >= 0``.

    Inputs are centred on the labeled features' mean and divided by one scale shared by every column
    (the root mean square of the labeled columns' standard deviations), so the embedding's geometry
    is the paper's up to a shift and a scale; targets are divided by ``max λ`` for training (a
    positive rescaling, so the ranking of the predictions is unchanged); :meth:`predict` undoes
    both. Per-column scales are not used: a unit that no labeled row activates has a standard
    deviation near zero there, and dividing by it blew up the pool rows that do activate it until
    their λ̂ saturated at 0. When every λ is zero (a very loose ε, §5.4) no network
    is trained and the prediction is zero everywhere.

    Attributes
    ----------
    net : nn.Module or None
        ``x ↦ λ̂ / scale`` on the centred, scaled inputs (None when every λ is zero).
    mean : tensor (d,)
    std : tensor (d,)
        The input scale, the same value in every column.
    scale : float
    train_loss : float
        Final MSE on the labeled set, in units of λ².

    Parameters
    ----------
    net : nn.Module or None
        Maps ``(B, d)`` centred, scaled inputs to ``(B, 1)`` outputs ``λ̂ / scale``.
    mean : tensor (d,)
        Subtracted from the inputs; its dtype and device are the head's.
    std : tensor (d,)
        Divides the centred inputs.
    scale : float
        Multiplies the outputs (``max λ`` of the training duals).
    train_loss : float
        Kept as it is (:func:`fit_dual_head` passes the final MSE).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from fastal.ally import DualRegressor
    >>> lin = torch.nn.Linear(2, 1)
    >>> with torch.no_grad():
    ...     _ = lin.weight.fill_(0.0), lin.bias.fill_(0.0)
    >>> net = torch.nn.Sequential(lin, torch.nn.Softplus())  # λ̂ = 2 softplus(0) = 2 log 2
    >>> head = DualRegressor(net, torch.zeros(2), torch.ones(2), 2.0, 0.0)
    >>> head.predict(np.ones((3, 2))).round(6).tolist()
    [1.386294, 1.386294, 1.386294]
    >>> DualRegressor(None, torch.zeros(2), torch.ones(2), 0.0, 0.0).predict(np.ones((2, 2)))
    array([0., 0.])
    """

    def __init__(self, net: Any, mean: Any, std: Any, scale: float, train_loss: float) -> None:
        self.net, self.mean, self.std = net, mean, std
        self.scale, self.train_loss = float(scale), float(train_loss)

    def forward(self, features: Any) -> Any:
        """Differentiable λ̂ for a (B, d) torch tensor (the head in eval mode).

        ``net((features - mean) / std) · scale``; puts ``net`` in eval mode (and leaves it so).

        Parameters
        ----------
        features : torch.Tensor (B, d)
            On the head's device (that of ``mean``); cast to the head's dtype.

        Returns
        -------
        torch.Tensor (B,)
            λ̂ in the head's dtype (>= 0 for a ``net`` ending in Softplus, as :func:`dual_head`),
            with the graph of ``features`` and of the head's parameters; zeros in ``features``'
            dtype and device (no graph) when ``net`` is None.
        """
        torch = _torch()
        if self.net is None:
            return torch.zeros(features.shape[0], dtype=features.dtype, device=features.device)
        self.net.eval()
        z = (features.to(self.mean.dtype) - self.mean.to(features.device)) / self.std.to(
            features.device
        )
        return self.net(z)[:, 0] * self.scale

    def predict(self, features: Any, batch_size: int = 8192) -> np.ndarray:
        """λ̂ for every row of ``features`` (a torch tensor or numpy array), float64 numpy.

        Parameters
        ----------
        features : tensor or array (n, d)
            A torch tensor on any device (moved to the head's device batch by batch), or an
            array-like read as a CPU tensor.
        batch_size : int, default 8192
            Rows per :meth:`forward` call (under ``torch.inference_mode``).

        Returns
        -------
        ndarray (n,)
            float64, λ̂ of every row (:meth:`forward`'s values).
        """
        torch = _torch()
        t = _on_cpu_unless_tensor(features)
        out = np.empty(t.shape[0], dtype=np.float64)
        dev = self.mean.device
        with torch.inference_mode(), own_numerics(dev):
            for s in range(0, t.shape[0], batch_size):
                out[s : s + batch_size] = (
                    self.forward(t[s : s + batch_size].to(dev)).double().cpu().numpy()
                )
        return out


def fit_dual_head(
    features: Any,
    duals: Any,
    *,
    hidden: int = 128,
    layers: int = 5,
    steps: int = 500,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> DualRegressor:
    """Train the dual regression head on the labeled embeddings (Alg. 2, line 3).

    ``min_ω 1/|L| Σ_i (f_ω(h_i) - λ*_i)²`` by Adam on whole minibatches of seeded permutations
    (a new permutation when the rest would not fill a batch).

    Parameters
    ----------
    features : tensor or array (m, d)
        Frozen embeddings of the labeled samples (the backbone's output); m >= 2 (batch norm)
        unless every dual is 0 (then no network is trained).
    duals : tensor or array (m,)
        Their dual variables λ* >= 0.
    hidden, layers : int, default 128 and 5
        Width and number of hidden layers (§5.1: 5 hidden layers; the width is not given there),
        both >= 1 (:func:`dual_head` also builds a bare linear head, ``layers=0``, which this
        training does not take).
    steps, lr, batch_size, weight_decay : default 500, 1e-3, 64 and 0
        Adam schedule (``batch_size >= 2``: batch norm).
    seed : int
        Seeds the initialisation and the batches (the global torch RNG is restored afterwards).

    Returns
    -------
    DualRegressor
        The head, in eval mode, on ``features``' device (CPU for an array), float64 for float64
        ``features`` and float32 otherwise; ``net`` is None, and every prediction 0, when every
        dual is 0.

    Examples
    --------
    >>> import torch
    >>> from fastal.ally import fit_dual_head
    >>> X = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    >>> head = fit_dual_head(X, X[:, 0].abs(), hidden=8, layers=1, steps=20)
    >>> head.scale == float(X[:, 0].abs().max()), head.predict(X).shape
    (True, (32,))
    >>> bool((head.predict(X) >= 0).all())
    True
    >>> fit_dual_head(X, torch.zeros(32)).net is None  # all duals 0: no network, λ̂ = 0
    True
    """
    torch = _torch()
    H, lam = _on_cpu_unless_tensor(features).detach(), _on_cpu_unless_tensor(duals).detach()
    if H.ndim != 2:
        raise ValueError(f"features must be 2-D (m, d), got shape {tuple(H.shape)}")
    if lam.shape != (H.shape[0],):
        raise ValueError(
            f"duals must have one value per labeled row ({H.shape[0]}), got shape "
            f"{tuple(lam.shape)}"
        )
    if not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()):
        raise ValueError("duals must be finite and non-negative (λ >= 0)")
    if not bool(torch.isfinite(H).all()):
        raise ValueError("features contain NaN or Inf")
    for v, name in (
        (hidden, "hidden"),
        (layers, "layers"),
        (steps, "steps"),
        (batch_size, "batch_size"),
    ):
        check_positive_int(v, name)
    if batch_size < 2:  # before any other work: the head's batch norm trains on >= 2 rows
        raise ValueError(f"batch_size must be >= 2 (the head's batch norm), got {batch_size}")
    lr = _number(lr, "lr", positive=True)
    weight_decay = _number(weight_decay, "weight_decay", minimum=0.0)
    dtype = torch.float64 if H.dtype == torch.float64 else torch.float32
    with torch.inference_mode(False):  # plain tensors: the head trains and back-propagates on them
        H, lam = H.to(dtype).clone(), lam.to(H.device, dtype).clone()
        mean = H.mean(0)
        rms = float(H.var(0, unbiased=False).mean().sqrt()) if H.shape[0] > 1 else 0.0
        std = torch.full_like(mean, rms if rms > 0 and math.isfinite(rms) else 1.0)
    scale = float(lam.max())
    if scale == 0.0:
        return DualRegressor(None, mean, std, 0.0, 0.0)
    m = H.shape[0]
    if m < 2:
        raise ValueError(
            f"the dual regression head needs at least 2 labeled rows (batch norm), got {m}"
        )
    with (
        forked_rng(H.device, seed),
        own_numerics(H.device, grad=True),
        one_thread_if_small(H.device),
    ):
        Z, target = (H - mean) / std, lam / scale
        # drawn in float32 whatever the features' dtype (and torch's global default), then cast
        net = dual_head(H.shape[1], hidden=hidden, layers=layers, device=H.device).to(dtype=dtype)
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        g = torch.Generator().manual_seed(int(seed))
        bs = min(batch_size, m)
        order, pos = torch.randperm(m, generator=g, device="cpu"), 0
        net.train()
        for _ in range(steps):
            if pos + bs > m:  # whole batches only: batch norm needs >= 2 rows
                order, pos = torch.randperm(m, generator=g, device="cpu"), 0
            idx = order[pos : pos + bs].to(H.device)
            pos += bs
            loss = torch.nn.functional.mse_loss(net(Z[idx])[:, 0], target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        final = float(torch.nn.functional.mse_loss(net(Z)[:, 0], target)) * scale**2
    return DualRegressor(net, mean, std, scale, final)


def pick_per_cluster(clusters: Any, scores: Any, budget: int) -> np.ndarray:
    """Highest scores per cluster with equal shares: positions into ``scores``, in pick order.

    Round ``j`` offers the j-th best row of every cluster that has one; all are taken while the
    budget lasts, and the last round takes its best offers. Cluster sizes therefore differ by at
    most one unless a cluster runs out of rows (§5.1: "maintaining equity among the number of
    samples per cluster"). With ``k = budget`` clusters that is the argmax of each. Ties go to the
    lowest position, within a cluster and across a round.

    Parameters
    ----------
    clusters : 1-D int array-like (n,)
        The cluster label of every row (any integers; a non-empty float array is refused).
    scores : 1-D array-like (n,)
        Real scores (bool, integer or float; ±inf allowed, NaN refused); higher is picked first.
    budget : int
        How many rows, ``0 <= budget <= n``.

    Returns
    -------
    ndarray (budget,) int64
        Distinct positions into ``scores``, in pick order (round by round, each round by score).

    Examples
    --------
    >>> from fastal.ally import pick_per_cluster
    >>> pick_per_cluster([0, 0, 1, 1, 1], [0.3, 0.9, 0.5, 0.1, 0.8], 3).tolist()
    [1, 4, 2]
    """
    labels = host_values(clusters, "clusters", "integer cluster labels", kinds="iuf")
    if labels.size and labels.dtype.kind == "f":  # 0.7 and 1.2 were clusters 0 and 1; [] is float
        raise TypeError(f"clusters must hold integer cluster labels, got dtype {labels.dtype}")
    labels = labels.astype(np.int64, copy=False)
    s = host_values(scores, "scores", "real numbers", kinds="biuf").astype(np.float64)
    if labels.ndim != 1 or s.shape != labels.shape:
        raise ValueError(
            f"clusters and scores must be 1-D of one length, got {labels.shape} and {s.shape}"
        )
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    budget = scalar_int(budget)  # a 0-d integer array or tensor, as every budget takes
    if (
        isinstance(budget, bool)
        or not isinstance(budget, numbers.Integral)
        or not 0 <= budget <= s.size
    ):
        raise ValueError(f"budget must be an integer in [0, {s.size}], got {budget!r}")
    # Rank within each cluster: sort by (cluster, -score, position).
    order = np.lexsort((-s, labels))  # lexsort is stable: ties keep the position order
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sizes = np.diff(np.r_[starts, s.size])
    rank = np.arange(s.size) - np.repeat(starts, sizes)
    # Only the rounds 0 .. R-1 that hold the first `budget` picks are ordered (the least R with
    # sum_c min(size_c, R) >= budget): a sort of ~budget rows, not of the pool.
    lo, hi = 0, int(sizes.max(initial=0))
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if np.minimum(sizes, mid).sum() < budget else (lo, mid)
    first = rank < lo
    order, rank = order[first], rank[first]
    # Pick order: by round (rank), then by score, then by position.
    by_round = order[np.lexsort((order, -s[order], rank))]
    return by_round[:budget].astype(np.int64)


def backbone(model: Any, feature_layer: Any = None) -> Callable[[Any], Any]:
    """A differentiable ``x ↦ features`` of a torch model: the input of ``feature_layer`` (default:
    the last ``nn.Linear``, as :func:`fastal.torch.pool_outputs`), computed by a forward pass in
    eval mode that stops there (the modules' train/eval flags are restored afterwards).

    Parameters
    ----------
    model : torch.nn.Module
        The trained network; not copied (the function calls it).
    feature_layer : nn.Module or str, optional
        The layer whose first positional input is the embedding, or its name in
        ``model.named_modules()``; default the last ``nn.Linear`` of ``model.modules()``.
        Resolved here: an unknown name or a model without ``nn.Linear`` raises ``ValueError``,
        another type ``TypeError``.

    Returns
    -------
    callable
        ``embed(x)``: the tensor the feature layer receives for ``model(x)``, with its graph
        (no ``no_grad``). It raises ``RuntimeError`` when the layer does not run in the forward
        pass.

    Examples
    --------
    >>> import torch
    >>> from fastal.ally import backbone
    >>> nn = torch.nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2))
    >>> x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    >>> h = backbone(model)(x)  # the input of model[3], dropout off
    >>> h.shape, torch.equal(h, torch.relu(model[0](x))), model.training
    (torch.Size([5, 4]), True, True)
    """
    from .torch._checks import _feature_layer

    layer = _feature_layer(model, feature_layer)

    class _Stop(Exception):
        pass

    def embed(x: Any) -> Any:
        captured: list[Any] = []

        def hook(_m: Any, args: tuple) -> None:
            captured.append(args[0])
            raise _Stop

        states = [(m, m.training) for m in model.modules()]
        handle = layer.register_forward_pre_hook(hook)
        try:
            model.eval()
            model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
            for m, training in states:
                m.train(training)
        if not captured:
            raise RuntimeError(
                f"the feature layer {type(layer).__name__} did not run in the forward pass"
            )
        return captured[0]

    return embed


def maximize_dual(
    embed: Callable[[Any], Any],
    head: DualRegressor,
    x: Any,
    *,
    steps: int = 100,
    lr: float = 0.05,
    bounds: tuple[float, float] | None = None,
) -> tuple[Any, np.ndarray]:
    """The generative mode of §4.4: gradient ascent on inputs to raise their predicted λ.

    Starting from ``x`` (e.g. inputs the head scores as uninformative), Adam steps on
    ``-Σ λ̂(embed(x))`` with the backbone and the head frozen (both in eval mode); ``bounds``
    clamps the inputs after each step (e.g. ``(0, 1)`` for images).

    Parameters
    ----------
    embed : callable
        Differentiable ``x ↦ features``, e.g. :func:`backbone` of the trained model.
    head : DualRegressor
        E.g. ``ALLY.head_`` after a selection, or :func:`fit_dual_head`.
    x : tensor (B, ...)
        Starting inputs (not modified).
    steps, lr : Adam schedule (default 100 steps at 0.05).
    bounds : (low, high), optional
        Clamp the inputs to this range after each step.

    Returns
    -------
    (tensor, ndarray)
        The optimised inputs and the mean predicted λ before each step and after the last
        (``steps + 1`` values). A head fitted on all-zero duals predicts 0 everywhere: nothing
        to ascend, so the inputs come back unchanged with a flat trace.

    Examples
    --------
    >>> import torch
    >>> from fastal.ally import backbone, fit_dual_head, maximize_dual
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> X = torch.randn(64, 2)
    >>> embed = backbone(model)
    >>> with torch.no_grad():
    ...     head = fit_dual_head(embed(X), X[:, 0].abs(), steps=200)  # λ grows with |x_0|
    >>> x_new, trace = maximize_dual(embed, head, torch.zeros(4, 2), steps=50)
    >>> bool(trace[-1] > trace[0])
    True
    """
    torch = _torch()
    check_positive_int(steps, "steps")
    _number(lr, "lr", positive=True)
    if bounds is not None:
        low, high = (_number(v, "bounds") for v in bounds)
        if not low <= high:
            raise ValueError(f"bounds must be (low, high) with low <= high, got {tuple(bounds)}")
    if not isinstance(head, DualRegressor):
        raise TypeError(
            f"head must be a DualRegressor (ALLY.head_ after a selection from duals, or "
            f"fit_dual_head), got {type(head).__name__}"
        )
    with torch.inference_mode(False):  # gradients on the inputs, even inside inference mode
        z = _on_cpu_unless_tensor(x).detach().clone()
        if not z.is_floating_point():
            z = z.to(torch.get_default_dtype())
        z.requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        trace = []
        with torch.enable_grad():
            trace += _ascend(embed, head, z, opt, steps, bounds)
        with torch.no_grad():
            trace.append(float(head.forward(embed(z)).mean()))
    return z.detach(), np.array(trace)


def _ascend(
    embed: Callable[[Any], Any],
    head: DualRegressor,
    z: Any,
    opt: Any,
    steps: int,
    bounds: tuple[float, float] | None,
) -> list[float]:
    torch = _torch()
    trace = []
    if head.net is None:  # all-zero duals: λ̂ = 0, a constant without a gradient
        return [0.0] * steps
    for _ in range(steps):
        lam = head.forward(embed(z))
        trace.append(float(lam.detach().mean()))
        # autograd.grad, not backward: the model's and head's parameters get no .grad
        (z.grad,) = torch.autograd.grad(-lam.sum(), z)
        opt.step()
        if bounds is not None:
            with torch.no_grad():
                z.clamp_(*bounds)
    return trace
