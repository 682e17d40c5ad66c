"""Primal-dual constrained learning (Elenter et al., ALLY, NeurIPS 2022, §4.1, Alg. 1).

Training minimises the mean loss subject to one constraint per labeled sample,
``ℓ'(f(x_i), y_i) <= ε_i``, through the empirical Lagrangian

    L(θ, λ) = 1/|L| Σ_i [ ℓ(f_θ(x_i), y_i) + λ_i (ℓ'(f_θ(x_i), y_i) - ε_i) ],   λ >= 0,

alternating ``T_p`` primal steps on θ (minibatches of the Lagrangian) with one projected dual
ascent step ``λ_i ← [λ_i + η_d (ℓ'_i - ε_i)]₊`` on every labeled sample. The dual variables
accumulate each sample's constraint slack over training; at a solution ``-λ*_i`` is the sensitivity
of the optimal loss to ε_i (Theorem 3.2), which ALLY uses as the sample's informativeness.

:class:`DualVariables` is the piece to put in your own training loop; :class:`PrimalDualTrainer`
is a complete trainer with the ``train_fn`` signature of :func:`fastal.loop.run`.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._torch_state import forked_rng, grad_on
from ._validate import _number, check_choice, check_positive_int

#: The paper's constant constraint levels (§5.2: cross-entropy 0.2; §5.3: MSE 0.1).
PAPER_EPS = {"classification": 0.2, "regression": 0.1}

#: Attribute under which :class:`PrimalDualTrainer` leaves λ on the model it trained.
DUALS_ATTR = "fastal_duals"


def _check_eps(eps: Any) -> None:
    """Constraint levels: a finite number >= 0, or a 1-D array of them (its length is checked
    against the labeled set when training starts)."""
    if isinstance(eps, numbers.Real) and not isinstance(eps, bool):
        _number(eps, "eps", minimum=0.0)
        return
    from . import _interop

    try:
        arr = np.asarray(_interop.host_numpy(eps) if _interop.is_array(eps) else eps, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(
            f"eps must be a number, an array, 'auto' or None, got {type(eps).__name__}"
        ) from None
    if arr.ndim > 1:
        raise ValueError(f"eps must be a scalar or 1-D (one level per sample), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("eps must be finite")
    if (arr < 0).any():
        raise ValueError(f"eps must be >= 0, got {float(arr.min())}")


class DualVariables:
    """One dual variable ``λ_i >= 0`` per labeled sample, with the Lagrangian and the dual step.

    Parameters
    ----------
    n : int
        Number of labeled samples (constraints).
    eps : float or array (n,)
        Constraint levels ε_i >= 0 (one for all or one per sample).
    lr_dual : float
        η_d, the dual step size.
    device, dtype
        Where λ lives (torch; default the CPU) and its dtype (float32 by default).

    Examples
    --------
    In a training loop of your own (``idx`` indexes the labeled set):

    >>> import torch
    >>> from fastal.pdcl import DualVariables
    >>> duals = DualVariables(4, eps=0.5, lr_dual=1.0)
    >>> losses = torch.tensor([0.1, 0.9, 0.2, 2.0])
    >>> round(float(duals.lagrangian(losses, torch.arange(4))), 6)  # λ = 0: the mean loss
    0.8
    >>> duals.step(losses)  # λ ← [λ + η_d (ℓ - ε)]₊
    >>> [round(v, 6) for v in duals.value.tolist()]
    [0.0, 0.4, 0.0, 1.5]
    """

    def __init__(
        self, n: int, eps: Any, lr_dual: float, *, device: Any = "cpu", dtype: Any = None
    ) -> None:
        import torch

        n = check_positive_int(n, "n")
        self.lr_dual = _number(lr_dual, "lr_dual", positive=True)
        dtype = torch.float32 if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch dtype, got {dtype!r}")  # 0.5 -> 0
        if eps is None or isinstance(eps, str):  # the trainer's "auto" / None are resolved there
            raise TypeError(f"eps must be a number or an array of them, got {eps!r}")
        _check_eps(eps)
        from .torch._checks import _check_device

        device = _check_device(device, "device", cpu_or_cuda=True)
        eps_t = torch.as_tensor(eps, dtype=dtype, device=device).detach().clone()
        if eps_t.ndim == 0:
            eps_t = eps_t.expand(int(n)).clone()
        if eps_t.shape != (int(n),):
            raise ValueError(f"eps must be a scalar or have shape ({n},), got {tuple(eps_t.shape)}")
        if not bool(torch.isfinite(eps_t).all()):
            raise ValueError("eps must be finite")
        if bool((eps_t < 0).any()):
            raise ValueError(
                f"eps must be >= 0 (constraints loss_i <= eps_i on non-negative losses), "
                f"got {float(eps_t.min())}"
            )
        self.eps = eps_t
        self.value = torch.zeros(int(n), dtype=dtype, device=device)

    @property
    def n(self) -> int:
        return int(self.value.shape[0])

    def lagrangian(self, losses: Any, idx: Any, secondary: Any = None) -> Any:
        """``mean_i [ℓ_i + λ_i (ℓ'_i - ε_i)]`` over a minibatch; differentiable in the losses.

        Parameters
        ----------
        losses : tensor (B,)
            Per-sample objective losses ℓ_i of the minibatch.
        idx : tensor (B,)
            Positions of the minibatch rows in the labeled set.
        secondary : tensor (B,), optional
            Per-sample constraint losses ℓ'_i; default ``losses`` (ℓ' = ℓ).

        Returns
        -------
        tensor (0-d)
            The minibatch Lagrangian in the dtype of ``losses`` (λ and ε cast to it, on its
            device), with the graph of ``losses`` and ``secondary`` (λ is a constant).

        Raises
        ------
        TypeError
            If ``losses`` or ``secondary`` is not a torch tensor.
        ValueError
            On mismatched shapes or positions outside ``[0, n)``.
        """
        import torch

        for value, name in ((losses, "losses"), (secondary, "secondary")):
            if value is not None and not isinstance(value, torch.Tensor):  # differentiable ones
                raise TypeError(f"{name} must be a torch tensor, got {type(value).__name__}")
        secondary = losses if secondary is None else secondary
        if losses.ndim != 1 or secondary.shape != losses.shape:
            raise ValueError(
                f"losses and secondary must be 1-D of one shape, got {tuple(losses.shape)} and "
                f"{tuple(secondary.shape)}"
            )
        idx = torch.as_tensor(idx).to(self.value.device)
        if idx.shape != losses.shape or idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise ValueError(
                f"idx must hold one integer position per loss ({losses.shape[0]}), got dtype "
                f"{idx.dtype} and shape {tuple(idx.shape)}"
            )
        if idx.numel():  # an index out of range is a device-side assert on CUDA: refuse it here
            low, high = (int(v) for v in torch.aminmax(idx))
            if low < 0 or high >= self.n:
                raise ValueError(
                    f"idx must hold positions in the labeled set [0, {self.n}), got values in "
                    f"[{low}, {high}]"
                )
        lam = self.value[idx].to(losses.dtype)
        eps = self.eps[idx].to(losses.dtype)
        return (losses + lam.to(losses.device) * (secondary - eps.to(losses.device))).mean()

    def slacks(self, secondary: Any) -> Any:
        """``ℓ'_i - ε_i`` for every labeled sample (positive: the constraint is violated).

        Parameters
        ----------
        secondary : tensor or array (n,)
            Constraint loss ℓ'_i of every labeled sample, finite (detached and cast to λ's device
            and dtype).

        Returns
        -------
        tensor (n,)
            The slacks, in λ's dtype and on its device.

        Raises
        ------
        ValueError
            If ``secondary`` does not have shape ``(n,)`` or holds NaN or Inf.
        """
        import torch

        if not isinstance(secondary, torch.Tensor):
            secondary = torch.as_tensor(np.asarray(secondary, dtype=np.float64))
        secondary = secondary.detach().to(self.value.device, self.value.dtype)
        if secondary.shape != self.value.shape:
            raise ValueError(
                f"secondary must hold one loss per labeled sample ({self.n}), "
                f"got {tuple(secondary.shape)}"
            )
        if not bool(torch.isfinite(secondary).all()):  # it would poison λ for good
            raise ValueError("secondary contains NaN or Inf: a loss diverged")
        return secondary - self.eps

    def step(self, secondary: Any) -> None:
        """The projected dual ascent step ``λ ← [λ + η_d (ℓ' - ε)]₊`` (Alg. 1, lines 5–6).

        Replaces ``value`` with the new λ (checked as :meth:`slacks` checks).

        Parameters
        ----------
        secondary : tensor or array (n,)
            Constraint loss ℓ'_i of every labeled sample (the whole labeled set, model in eval
            mode in :class:`PrimalDualTrainer`).
        """
        self.value = (self.value + self.lr_dual * self.slacks(secondary)).clamp_min_(0)


def per_sample_loss(out: Any, y: Any, task: str) -> Any:
    """Per row: cross-entropy (classification) or mean squared error over outputs (regression).

    Parameters
    ----------
    out : tensor (B, C) or (B, ...)
        Model outputs: logits for classification, predictions for regression.
    y : tensor (B,) or (B, ...)
        Class indices (int64) for classification; regression targets shaped like ``out`` (a
        ``(B,)`` against ``(B, 1)`` scalar column is matched).
    task : {"classification", "regression"}
        Any value other than ``"classification"`` is taken as regression.

    Returns
    -------
    tensor (B,)
        ``cross_entropy(out, y, reduction="none")``, or the squared error averaged over each
        row's outputs; differentiable.

    Examples
    --------
    >>> import torch
    >>> from fastal.pdcl import per_sample_loss
    >>> out = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    >>> losses = per_sample_loss(out, torch.tensor([0, 0]), "classification")
    >>> [round(v, 4) for v in losses.tolist()]
    [0.6931, 0.1269]
    >>> per_sample_loss(out, torch.ones(2, 2), "regression").tolist()
    [1.0, 1.0]
    """
    import torch.nn.functional as F

    from ._loop_train import _match

    if task == "classification":
        return F.cross_entropy(out, y, reduction="none")
    # (B,) against (B, 1) targets broadcast to B x B: the shapes must agree up to a scalar column
    out, y = _match(out, y, "the labeled rows' targets")
    err = (out - y.to(out.dtype)) ** 2
    return err.reshape(err.shape[0], -1).mean(1)


@dataclass
class PDCLHistory:
    """Per dual step: mean constraint loss ℓ', mean and max slack ``ℓ' - ε``, share of violated
    constraints, mean and max λ (all over the labeled set, the model in eval mode).

    A :class:`PrimalDualTrainer` keeps the one of its last call as ``history_``; each list has one
    float per dual step (``iterations`` of them).

    Attributes
    ----------
    loss : list of float
        Mean constraint loss ℓ' over the labeled set, before the dual step.
    mean_slack : list of float
        Mean slack ``ℓ'_i - ε_i``.
    max_slack : list of float
        Largest slack.
    violated : list of float
        Share of the labeled samples with a positive slack, in [0, 1].
    mean_dual : list of float
        Mean λ after the dual step.
    max_dual : list of float
        Largest λ after the dual step.

    Examples
    --------
    >>> from fastal.pdcl import PDCLHistory
    >>> h = PDCLHistory()
    >>> h.loss.append(0.4); h.violated.append(0.25)
    >>> h.loss, h.violated, h.max_dual
    ([0.4], [0.25], [])
    """

    loss: list[float] = field(default_factory=list)
    mean_slack: list[float] = field(default_factory=list)
    max_slack: list[float] = field(default_factory=list)
    violated: list[float] = field(default_factory=list)
    mean_dual: list[float] = field(default_factory=list)
    max_dual: list[float] = field(default_factory=list)


class PrimalDualTrainer:
    """Train a model by primal-dual constrained learning (Alg. 1) and keep its dual variables.

    Called as ``trainer(model, dataset, *, task, seed, device) -> model`` (the ``train_fn`` of
    :func:`fastal.loop.run`): ``iterations`` (T) rounds of ``primal_steps`` (T_p) minibatch steps
    on the Lagrangian followed by one dual step over the whole labeled set. Afterwards the model
    carries ``model.fastal_duals`` (λ, one per row of ``dataset``, in its order, float32 on the
    CPU), which :func:`fastal.torch.select` hands to :class:`~fastal.strategies.ALLY`; the trainer
    keeps ``duals_``, ``eps_`` and ``history_`` of its last call. The dataset's inputs must be
    finite, its labels class indices in ``[0, C)`` for a model of ``C`` logits (whole-number
    floats taken) or finite regression targets: otherwise ``ValueError`` naming the row.

    Parameters
    ----------
    eps : float, array, "auto" or None
        Constraint levels ε >= 0 (checked here; an array's length when training). ``None``
        (default): the paper's constants, 0.2 for cross-entropy and 0.1 for MSE (§5.2–5.3).
        ``"auto"``: ``eps_factor`` times the mean training loss of an unconstrained fit of a
        copy of the model with the same schedule (§5.4 finds ``[1.05, 1.25]`` times that loss
        works well); this doubles the training time.
    eps_factor : float, default 1.15
        The multiple for ``eps="auto"``.
    lr_primal : float, default 1e-3
        η_p.
    lr_dual : float, default 0.1
        η_d.
    iterations : int, default 100
        T, the number of dual steps.
    primal_steps : int, optional
        T_p, primal steps per dual step; default ``ceil(n / batch_size)``, about an epoch (each
        step takes a whole batch of a seeded permutation, a new one when the rest would not fill a
        batch, so some rows wait for the next permutation).
    batch_size : int, default 64
    optimizer : {"adam", "sgd"}, default "adam"
        Alg. 1 writes plain SGD steps (``"sgd"``: exactly that, with ``momentum``); Adam is the
        default because it works with one ``lr_primal`` across datasets, as :func:`fastal.loop.fit`.
    momentum : float, default 0.0
        For ``"sgd"``.
    weight_decay : float, default 0.0
    secondary_loss : callable, optional
        ``ℓ'(outputs, targets) -> (B,)`` per-sample constraint loss; default ℓ' = ℓ (cross-entropy
        or squared error, as the task).

    Examples
    --------
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from fastal.pdcl import PrimalDualTrainer
    >>> X = torch.randn(40, 3); y = (X[:, 0] > 0).long()
    >>> trainer = PrimalDualTrainer(iterations=20)
    >>> model = trainer(torch.nn.Linear(3, 2), TensorDataset(X, y), task="classification", seed=0)
    >>> model.fastal_duals.shape, bool((model.fastal_duals >= 0).all())
    (torch.Size([40]), True)
    """

    def __init__(
        self,
        *,
        eps: Any = None,
        eps_factor: float = 1.15,
        lr_primal: float = 1e-3,
        lr_dual: float = 0.1,
        iterations: int = 100,
        primal_steps: int | None = None,
        batch_size: int = 64,
        optimizer: str = "adam",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        secondary_loss: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        if isinstance(eps, str) and eps != "auto":
            raise ValueError(f"eps must be a number, an array, 'auto' or None, got {eps!r}")
        if eps is not None and not isinstance(eps, str):
            _check_eps(eps)
        optimizer = check_choice(optimizer, "optimizer", ("adam", "sgd"))
        self.eps = eps
        self.eps_factor = _number(eps_factor, "eps_factor", positive=True)
        self.lr_primal = _number(lr_primal, "lr_primal", positive=True)
        self.lr_dual = _number(lr_dual, "lr_dual", positive=True)
        self.iterations = check_positive_int(iterations, "iterations")
        self.primal_steps = (
            None if primal_steps is None else check_positive_int(primal_steps, "primal_steps")
        )
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.optimizer = optimizer
        self.momentum = _number(momentum, "momentum", minimum=0.0)
        self.weight_decay = _number(weight_decay, "weight_decay", minimum=0.0)
        if secondary_loss is not None and not callable(secondary_loss):
            raise TypeError(f"secondary_loss must be callable, got {type(secondary_loss).__name__}")
        self.secondary_loss = secondary_loss

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))
        return f"PrimalDualTrainer({params})"

    def __call__(
        self,
        model: Any,
        dataset: Any,
        *,
        task: str = "classification",
        seed: int = 0,
        device: Any = "cpu",
    ) -> Any:
        import torch

        from ._loop_data import _tensors, as_model_dtype, check_train_seed, checked_training_labels

        seed = check_train_seed(seed)
        if task not in PAPER_EPS:
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        X, y = _tensors(dataset, "PrimalDualTrainer")
        n = int(X.shape[0])
        if n == 0:
            raise ValueError("cannot train on an empty labeled set")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        from .torch._checks import _check_device

        dev = _check_device(device, "device", cpu_or_cuda=True)
        model.to(dev)
        X, y = as_model_dtype(model, X).to(dev), y.to(dev)
        y = checked_training_labels(model, X, y, task, seed)
        with forked_rng(dev, seed), grad_on():
            if isinstance(self.eps, str):  # "auto" (numpy compares an eps array elementwise)
                shadow = copy.deepcopy(model)
                self._train(shadow, X, y, task, seed, None)
                p_u = float(self._secondary(shadow, X, y, task).mean())
                eps: Any = self.eps_factor * p_u
            else:
                eps = PAPER_EPS[task] if self.eps is None else self.eps
            duals = DualVariables(n, eps, self.lr_dual, device=dev)
            history = self._train(model, X, y, task, seed, duals)
        model.eval()
        lam = duals.value.detach().to("cpu", torch.float32)
        setattr(model, DUALS_ATTR, lam)
        self.duals_, self.eps_, self.history_ = lam, duals.eps.detach().cpu(), history
        return model

    # -----------------------------------------------------------------------------------------

    def _secondary(self, model: Any, X: Any, y: Any, task: str) -> Any:
        """ℓ' of every labeled row, the model in eval mode, in batches."""
        import torch

        model.eval()
        parts = []
        with torch.no_grad():
            for s in range(0, X.shape[0], 1024):
                out = model(X[s : s + 1024])
                yb = y[s : s + 1024]
                parts.append(
                    per_sample_loss(out, yb, task)
                    if self.secondary_loss is None
                    else self.secondary_loss(out, yb)
                )
        return torch.cat(parts).to(torch.float32)

    def _train(self, model: Any, X: Any, y: Any, task: str, seed: int, duals: Any) -> PDCLHistory:
        """T rounds of T_p primal steps and (with ``duals``) one dual step; λ = 0 without."""
        import torch

        n = X.shape[0]
        bs = min(self.batch_size, n)
        steps = self.primal_steps or math.ceil(n / bs)
        params = list(model.parameters())
        if self.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=self.lr_primal, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD(
                params, lr=self.lr_primal, momentum=self.momentum, weight_decay=self.weight_decay
            )
        g = torch.Generator().manual_seed(int(seed))
        order, pos = torch.randperm(n, generator=g), 0
        history = PDCLHistory()
        for _ in range(self.iterations):
            model.train()
            for _ in range(steps):
                if pos + bs > n:
                    order, pos = torch.randperm(n, generator=g), 0
                idx = order[pos : pos + bs]
                pos += bs
                idx_dev = idx.to(X.device)
                out = model(X[idx_dev])
                losses = per_sample_loss(out, y[idx_dev], task)
                if duals is None:
                    objective = losses.mean()
                else:
                    secondary = (
                        None
                        if self.secondary_loss is None
                        else self.secondary_loss(out, y[idx_dev])
                    )
                    objective = duals.lagrangian(losses, idx, secondary)
                opt.zero_grad(set_to_none=True)
                objective.backward()
                opt.step()
            if duals is not None:
                sec = self._secondary(model, X, y, task)
                if not bool(torch.isfinite(sec).all()):
                    raise RuntimeError(
                        f"primal-dual training diverged at dual step {len(history.loss) + 1} "
                        "(non-finite losses): lower lr_primal or lr_dual"
                    )
                slack = duals.slacks(sec)
                duals.step(sec)
                history.loss.append(float(sec.mean()))
                history.mean_slack.append(float(slack.mean()))
                history.max_slack.append(float(slack.max()))
                history.violated.append(float((slack > 0).to(torch.float32).mean()))
                history.mean_dual.append(float(duals.value.mean()))
                history.max_dual.append(float(duals.value.max()))
        return history


def model_duals(model: Any) -> Any:
    """The λ a :class:`PrimalDualTrainer` left on ``model``, or None.

    Parameters
    ----------
    model : nn.Module or any object
        A model trained by a :class:`PrimalDualTrainer` (or anything else).

    Returns
    -------
    tensor (n,) or None
        ``model.fastal_duals``: λ, one per labeled row in the order of the training dataset,
        float32 on the CPU; None when the model has none.

    Examples
    --------
    >>> import torch
    >>> from fastal.pdcl import model_duals
    >>> model_duals(torch.nn.Linear(2, 2)) is None
    True
    """
    return getattr(model, DUALS_ATTR, None)
