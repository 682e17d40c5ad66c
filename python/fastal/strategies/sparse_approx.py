"""Sparse Approximation (Shen et al.): a batch as a sparse approximation of the pool loss."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from .. import _interop
from .._torch_arrays import MASKED_LOGITS, as_torch, torch_row_norms_if_finite
from .._torch_arrays import row_chunks as _value_chunks
from .._validate import _number, check_bool, check_budget, check_choice, check_classes, check_matrix
from .._warnings import warn_user
from ..sparse import (
    DensePhi,
    FactoredPhi,
    SparseProblem,
    _fit_temperature,
    safeguard_top_sigma,
    solve_greedy,
    solve_iht,
)
from .base import Selection, Strategy, register, unlabeled_rows
from .sparse_settings import DATASETS, DEFAULTS, setting_for

__all__ = ["DEFAULTS", "SparseApprox"]  # DEFAULTS: (form, solver) -> (alpha, beta), kept here too


@register
class SparseApprox(Strategy):
    """Sparse Approximation for batch active learning (Shen et al., Problem 2, eq. 15).

    Chooses ``b`` points and non-negative weights ``w`` so that the weighted loss of the selection
    approximates the expected loss of the whole unlabeled pool (the bias ``|v - Φw|²``) while
    favouring points of high individual variance ``σ_j`` (``-α Σ σ_j²``), with a ridge
    ``β |w - 1|²``. Two forms of ``Φ``:

    - non-Bayesian (eq. 14): expected last-layer cross-entropy gradients under a label distribution
      ``P`` from temperature-scaled predictions, ``E_y[g_j] = (p_j - P_j) ⊗ h_j``, kept factored;
      ``σ_j = (1/n_u) |h_j| Σ_y P_jy |P_j - e_y|``.
    - Bayesian (eq. 13): centred losses over ``m`` posterior samples (MC dropout, an ensemble).

    Solvers: ``"greedy"`` (Alg. 1) and ``"iht"`` (proximal IHT, Alg. 2), both with the exact line
    search (Alg. 4) and De-bias (Alg. 5); the proximal step is :func:`fastal.iht_threshold`.

    Parameters
    ----------
    solver : {"iht", "greedy"}, default "iht"
    alpha, beta : float, optional
        Override the ``setting``'s values. By default, a row of the paper's tables per form and
        solver: non-Bayesian IHT α = 1e-8, β = 1e-4 (Table 5, MNIST) and greedy α = 1e-2, β = 0.1
        (CIFAR-10); Bayesian IHT α = 1, β = 1e-3 and greedy α = 2, β = 0.5 (Table 4,
        Fashion-MNIST). Why these rows: :data:`fastal.strategies.sparse_settings.DEFAULT_SETTING`.
    setting : str, optional
        Take α, β from the paper's row for this dataset and the pool's form and solver
        (:data:`fastal.strategies.sparse_settings.PAPER_SETTINGS`, which also holds each
        experiment's training and query schedule): ``"mnist"``, ``"svhn"``, ``"cifar10"`` for the
        non-Bayesian form (Table 5); ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"`` for the
        Bayesian form (Table 4). A dataset the form's table lacks is a ``ValueError`` at selection.
    iters : int, default 50
        IHT iterations T (not given in the paper).
    prox : {"paper", "exact"}, default "paper"
        The score of IHT's top-b step (:func:`fastal.iht_threshold`): Appendix E's
        ``½[-s_j]₊² - α σ_j²``, or the exact proximal minimiser's ``-½[s_j]₊² - α σ_j²``.
        Appendix E drops the ``½ s_j²`` of the rows it does not select, so with ``"paper"`` every
        row with a positive gradient-step value ``s_j`` scores ``-α σ_j²``, however large ``s_j``.
        Neither rule wins everywhere on the tiny problems the tests solve exhaustively: without
        the safeguard, ``"exact"`` is closer to the optimum on average at α = 0 and ``"paper"`` at
        α ≥ 0.01 (where it mostly returns the top-σ set); with it (the default), ``"exact"``
        (which then often falls back to the top-σ set) is closer on average in most settings
        tested, ``"paper"`` at α = 1, β = 1e-3.
    tau : float > 0, default 1.0
        Greedy step size τ (not given in the paper).
    bias : bool, default False
        Include the bias gradient in the non-Bayesian embedding. ``bias=True``, a float
        ``temperature`` and ``pool["label_probs"]`` are refused with a Bayesian pool, which has no
        use for them.
    temperature : "auto", float or None, default "auto"
        Non-Bayesian label distribution ``P = softmax(logits / T)``, or ``P = softmax(log p / T)``
        for a ``"probs"`` pool (the same distribution for any logits of ``p``; ``p_jy = 0`` gives
        ``P_jy = 0``). ``"auto"`` fits ``T`` by NLL on ``pool["labeled_logits"]`` and
        ``pool["labeled_targets"]`` when both are present (Guo et al. 2017; for a probs pool the
        fitted ``T`` is applied to ``log p`` as above), else ``T = 1``; ``None`` means ``T = 1``.
        ``pool["label_probs"]`` gives ``P`` directly and wins over ``"auto"`` / ``None``; with a
        float temperature as well it is a ``ValueError`` (pass one). When ``P = p`` (``T = 1``
        without ``"label_probs"``, or ``"label_probs"`` equal to ``"probs"``) every expected
        gradient ``p_j - P_j`` is zero, so ``Φ = 0`` and the selection is driven by ``σ`` alone
        (the top-b σ): a ``UserWarning`` says so.
        ``diagnostics["temperature"]`` is the ``T`` used, ``None`` with ``"label_probs"``. When the
        labeled logits are those of the model's own training set and it fits them perfectly, the
        NLL keeps falling as ``T → 0`` and the fit stops at its bound, ``T = 0.01``: ``P`` is then
        nearly one-hot and ``σ`` nearly 0 (:func:`fastal.fit_temperature`); logits of held-out
        labeled rows calibrate ``T`` as Guo et al. do.
    safeguard : bool, default True
        fastal's addition, not in the paper (greedy and IHT are never worse than selecting the
        top-b σ): after the solver, the ``b`` largest ``σ`` (ties to the lowest
        index), weighted by one De-bias from ``w = 1`` and clamped at 0 as the solvers do, replace
        the solver's result when their ``f`` is lower (by more than ``1e-10`` of the size of the
        terms of ``f``, so that rounding does not decide a tie;
        :func:`fastal.sparse.safeguard_top_sigma`). ``diagnostics["fallback"]`` says whether
        they did, ``diagnostics["top_sigma_objective"]`` holds their ``f``, and the objective
        trace gets one last entry: the ``f`` of the returned selection. ``False`` returns the
        solver's result and trace as they are (``fallback`` False, ``top_sigma_objective``
        None). The extra cost is one De-bias, O(n).
    progress : bool, default False

    The pool is a mapping: ``"logits"`` (or ``"probs"``, optionally ``"label_probs"``) and
    ``"features"`` for the non-Bayesian form; ``"mc_probs"`` (m, n, C), or ``"losses"`` (m, n, C)
    with ``"probs"`` as ``P``, for the Bayesian form (m >= 2 samples: the losses are centred over
    them; from ``"mc_probs"`` the losses are ``-log max(p, 1e-12)``, a floor that exact zeros
    need, which also caps the loss of any probability below 1e-12 at 27.6: pass ``"losses"`` for
    exact ones). Selected indices are exactly ``budget`` pool
    indices (see :mod:`fastal.sparse` for how a weight clamped to 0 is handled). On the CPU the
    non-Bayesian form reads ``"features"`` in place, float32, float16 or bfloat16 alike (widened
    as read, the bias column implicit): beyond the inputs it holds O(n·C) values, never a copy of
    the features, labeled rows or not; except where the largest feature-row norm is outside
    [2^-24, 2^24]: ``Φ``'s float32 products (up to the cube of that scale) would leave float32's
    range, so they run in float64 on a float64 copy of the unlabeled rows' features. The Bayesian
    ``Φ`` follows eq. 19 (centred losses without the ``1/√m`` of eq. 13), which sets the balance
    of α and β against the ridge (see :mod:`fastal.sparse`). CUDA pools run the same float64
    solver, except that IHT's top-b step reads ``s`` and ``σ`` rounded to float32 (the CUDA
    kernel's input; the weights are then de-biased in float64): candidates whose scores differ by
    less than float32's resolution tie there and go to the lower index, so the picks can differ
    from the CPU's at such near-ties.

    Returns a :class:`Selection` whose ``diagnostics`` hold, besides the settings used:

    - ``"weights"``: ``(n_u,)`` float64, the weights ``w`` over the *unlabeled* rows in ascending
      pool order (row ``k`` is the ``k``-th pool index not in ``labeled``), 0 off the selection;
    - ``"selected_weights"``: ``(budget,)`` float64, the weights aligned with ``indices``;
    - ``"objective"``: the list of ``f`` after each greedy pick / IHT iteration (plus the
      safeguard's entry, see ``safeguard``);
    - ``"fallback"``: True when the top-b σ set was returned instead of the solver's result;
    - ``"form"`` (``"factored"`` or ``"bayesian"``), ``"solver"``, ``"setting"`` (the paper row's
      dataset, also when ``alpha`` and ``beta`` override it), ``"alpha"``, ``"beta"``,
      ``"temperature"``, ``"safeguard"``, ``"top_sigma_objective"`` and, for IHT, ``"prox"``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.strategies import SparseApprox
    >>> rng = np.random.default_rng(0)
    >>> pool = {"logits": rng.normal(size=(200, 4)), "features": rng.normal(size=(200, 8))}
    >>> sel = SparseApprox(temperature=2.0).select(pool, 10, labeled=[0, 1])
    >>> len(set(sel.indices.tolist())), sel.diagnostics["form"]
    (10, 'factored')
    >>> w = sel.diagnostics["weights"]  # over the 198 unlabeled rows 2, 3, ..., 199
    >>> bool((sel.diagnostics["selected_weights"] == w[sel.indices - 2]).all())
    True
    """

    name = "sparse_approx"
    requires = ("logits", "features")

    def __init__(
        self,
        *,
        solver: str = "iht",
        alpha: float | None = None,
        beta: float | None = None,
        setting: str | None = None,
        iters: int = 50,
        prox: str = "paper",
        tau: float = 1.0,
        bias: bool = False,
        temperature: Any = "auto",
        safeguard: bool = True,
        progress: bool = False,
    ) -> None:
        solver = check_choice(solver, "solver", ("iht", "greedy"))
        if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 1:
            raise ValueError(f"iters must be a positive integer, got {iters!r}")
        self.solver = solver
        self.alpha = None if alpha is None else _number(alpha, "alpha", minimum=0.0)
        self.beta = None if beta is None else _number(beta, "beta", minimum=0.0)
        known = sorted(set(DATASETS["factored"]) | set(DATASETS["bayesian"]))
        if setting is not None and setting not in known:
            raise ValueError(f"setting must be None or one of {known}, got {setting!r}")
        self.setting = setting
        self.iters = int(iters)
        prox = check_choice(prox, "prox", ("paper", "exact"))
        self.prox = prox
        self.tau = _number(tau, "tau", positive=True)
        self.bias = check_bool(bias, "bias")
        if not (temperature is None or temperature == "auto"):
            temperature = _number(temperature, "temperature", positive=True)
        self.temperature = temperature
        self.safeguard = check_bool(safeguard, "safeguard")
        self.progress = check_bool(progress, "progress")

    def select(self, pool: Any, budget: int, labeled: Any = None, *, seed: Any = None) -> Selection:
        import torch

        if not hasattr(pool, "keys"):
            raise TypeError(
                "pool must be a mapping (see the SparseApprox docstring), got "
                f"{type(pool).__name__}"
            )
        bayesian = "mc_probs" in pool or "losses" in pool
        form = "bayesian" if bayesian else "factored"
        first = pool["mc_probs"] if "mc_probs" in pool else pool["losses"] if bayesian else None
        if bayesian:
            info = _interop.describe(first, "mc_probs" if "mc_probs" in pool else "losses")
            name = "mc_probs" if "mc_probs" in pool else "losses"
            if len(info.shape) != 3:
                raise ValueError(f"{name} must be 3-D (m samples, n, C), got shape {info.shape}")
            if info.shape[0] < 2:  # g_j(y) is centred over the samples
                raise ValueError(
                    f"{name} must hold m >= 2 posterior samples (shape (m, n, C)), got shape "
                    f"{info.shape}: with one sample every centred loss is 0"
                )
            if info.shape[2] < 1:
                raise ValueError(
                    f"{name} must hold C >= 1 classes (shape (m, n, C)), got shape {info.shape}"
                )
            if name == "mc_probs":  # losses may be of one output; probabilities of one class are 1
                check_classes(info.shape[2], name, info.shape)
            self._refuse_factored_settings(name, "label_probs" in pool)
            n = info.shape[1]
        else:
            key = "logits" if "logits" in pool else "probs"
            if key not in pool or "features" not in pool:
                raise ValueError(
                    "pool needs 'logits' (or 'probs') and 'features' for the non-Bayesian form"
                )
            info = check_matrix(pool[key], key)
            check_classes(info.shape[1], key, info.shape)
            n = info.shape[0]
        _, rest = unlabeled_rows(n, labeled, like=info)
        if not bayesian:  # a mixed pool (torch logits, numpy features): features' framework
            info = check_matrix(pool["features"], "features")
        b = check_budget(budget, rest.size)
        row = setting_for(form, self.solver, self.setting)
        alpha = self.alpha if self.alpha is not None else row.alpha
        beta = self.beta if self.beta is not None else row.beta
        diagnostics = {
            "form": form, "solver": self.solver, "setting": row.dataset, "alpha": alpha,
            "beta": beta, "temperature": None, "safeguard": self.safeguard, "fallback": False,
            "top_sigma_objective": None,
        }  # fmt: skip
        if self.solver == "iht":
            diagnostics["prox"] = self.prox
        if b == 0:
            empty = np.empty(0, np.int64)
            diagnostics.update(
                weights=np.zeros(rest.size), selected_weights=np.zeros(0), objective=[]
            )
            return Selection(_interop.to_framework(empty, info), diagnostics)
        idx = torch.from_numpy(rest)
        if bayesian:
            phi, v, sigma = _bayesian_problem(pool, idx, b)
        else:
            phi, v, sigma, T = self._factored_problem(pool, idx, b)
            diagnostics["temperature"] = T
        try:
            problem = SparseProblem(phi, v, sigma, b, alpha, beta)
            if self.solver == "greedy":
                res = solve_greedy(problem, self.tau, self.progress)
            else:
                res = solve_iht(problem, self.iters, self.progress, self.prox)
            if self.safeguard:
                res = safeguard_top_sigma(problem, res)
        except ValueError as err:  # a non-finite σ or IHT score: an overflow upstream
            if not str(err).startswith(("the IHT score is", "sigma contains NaN or Inf")):
                raise
            raise ValueError(_overflow_message(pool, alpha, beta)) from None
        if not (np.isfinite(res.objective).all() and np.isfinite(res.weights).all()):
            raise ValueError(_overflow_message(pool, alpha, beta))
        indices = rest[res.selected]
        diagnostics.update(
            weights=res.weights,
            selected_weights=res.weights[res.selected],
            objective=res.objective,
            fallback=res.fallback,
            top_sigma_objective=res.top_sigma_objective,
        )
        return Selection(_interop.to_framework(indices, info), diagnostics)

    def _refuse_factored_settings(self, name: str, label_probs: bool) -> None:
        """The label distribution P (temperature, ``label_probs``) and the bias gradient shape the
        factored Φ only: on a Bayesian pool they were silently ignored."""
        unused = []
        if self.bias:
            unused.append("bias=True")
        if self.temperature not in (None, "auto"):
            unused.append(f"temperature={self.temperature!r}")
        if label_probs:
            unused.append("pool['label_probs']")
        if unused:
            raise ValueError(
                f"{' and '.join(unused)} apply to the non-Bayesian form (logits or probs with "
                f"features); the Bayesian form (pool['{name}']) has no use for them: drop them, "
                f"or drop pool['{name}'] for the non-Bayesian form"
            )

    def _factored_problem(self, pool, idx, b):
        """``Φ`` (eq. 14, factored), ``v``, ``σ`` and the ``T`` used, over the rows ``idx``.

        ``p``, ``P``, ``A = p - P`` and ``σ`` are built in row chunks (:func:`_row_chunks`): the
        float64 temporaries are a few chunks wide, whatever n; only ``A``, ``h`` and ``σ`` are kept.
        """
        import torch

        key = "logits" if "logits" in pool else "probs"
        zinfo = check_matrix(pool[key], key)
        finfo = check_matrix(pool["features"], "features")
        if (finfo.device, finfo.device_index) != (zinfo.device, zinfo.device_index):
            raise ValueError(
                f"features is a {finfo.where} array but {key} is {zinfo.where}; pass both on "
                "one device"
            )
        if finfo.shape[0] != zinfo.shape[0]:
            raise ValueError(
                f"features must have {zinfo.shape[0]} rows like {key}, got {finfo.shape}"
            )
        acc = torch.float64 if zinfo.dtype == finfo.dtype == "float64" else torch.float32
        z = as_torch(pool[key], zinfo)
        dev = z.device
        idx = idx.to(dev)
        h = as_torch(pool["features"], finfo)  # used in place (never written): see FactoredPhi
        hrows = idx if idx.numel() < zinfo.shape[0] else None
        h_norms = _row_norms_if_finite(h, hrows, acc)
        if acc == torch.float32 and h_norms is not None and h_norms.numel():
            # Φ's products run in A's dtype; with float32 they reach |h|³ (the line search's
            # Φ Φᵀ r) and left float32's range silently (features near 2^-45 or 2^60): such
            # pools take float64 products instead, on a float64 copy of the features
            top = float(h_norms.max())
            if top > 0.0 and not _F32_SAFE_NORM[0] <= top <= _F32_SAFE_NORM[1]:
                # the unlabeled rows only, gathered once
                acc = torch.float64
                h = (h if hrows is None else h[hrows]).to(torch.float64)
                hrows = None
        n_u, C = idx.numel(), zinfo.shape[1]
        chunks = _row_chunks(n_u, C)
        # z is gathered (in its own dtype) and cast one chunk at a time; the checks are reduced over
        # the chunks and raised afterwards, in the order of the checks on the whole
        finite = torch.ones((), dtype=torch.bool, device=dev)
        probs_check = _Distributions("probs", zinfo.dtype) if key == "probs" else None
        for s, e in chunks:
            zc = z[idx[s:e]]
            # logits: -inf is a masked class (probability 0), if a row keeps a finite logit
            finite &= torch.isfinite(zc.amax(1) if key == "logits" else zc).all()
            if probs_check is not None:
                probs_check.add(zc.to(torch.float64))
        if h_norms is None or not bool(finite):
            masked = f" {MASKED_LOGITS}" if key == "logits" else ""
            raise ValueError(f"{key} and features must be finite{masked}")
        T = None
        label = "label_probs" in pool  # with logits or probs alike
        if label and isinstance(self.temperature, float):
            raise ValueError(
                f"temperature={self.temperature!r} and pool['label_probs'] both give the label "
                "distribution P; pass one (temperature=None or 'auto' to use label_probs)"
            )
        if probs_check is not None:
            probs_check.raise_if_invalid()
        if label:
            linfo = check_matrix(pool["label_probs"], "label_probs")
            if linfo.shape != zinfo.shape:
                raise ValueError(
                    f"label_probs must have shape {zinfo.shape} like {key}, got {linfo.shape}"
                )
            lsrc = as_torch(pool["label_probs"], linfo)
            lidx = idx.to(lsrc.device)
            label_check = _Distributions("label_probs", linfo.dtype)
        else:
            T = self._temperature(pool, key)
        A = torch.empty((n_u, C), dtype=acc, device=dev)
        dist = torch.empty(n_u, dtype=torch.float64, device=dev)
        differs = torch.zeros((), dtype=torch.bool, device=dev)
        for s, e in chunks:
            zc = z[idx[s:e]].to(torch.float64)
            p = torch.softmax(zc, 1) if key == "logits" else zc
            if label:
                P = label_check.add(lsrc[lidx[s:e]].to(dev).to(torch.float64))
            elif key == "logits":
                P = _tempered_softmax(zc, T)
            else:  # softmax(log p / T) = softmax(logits / T) for any logits of p; log 0 gives P = 0
                P = p if T == 1.0 else _tempered_softmax(torch.log(p), T)
            differs |= (p != P).any()
            A[s:e] = p - P
            dist[s:e] = expected_distance(P)
            del zc, p, P
        if label:
            label_check.raise_if_invalid()
        if not bool(differs):
            if label:
                why, fix = "label_probs equal to the predictions", "pass other label_probs"
            elif T == 1.0:
                why = "temperature 1"
                fix = (
                    "pass a temperature other than 1, labeled_logits and labeled_targets for "
                    "temperature='auto' (fastal.torch.select: labels=), or label_probs"
                )
            else:  # a tempered one-hot (or uniform) row is the same row
                why = f"one-hot or uniform rows, which temperature {T:g} leaves as they are"
                fix = "no temperature changes such predictions"
            warn_user(
                f"SparseApprox: the label distribution P equals the predictions p ({why}), so "
                "every expected gradient p - P is 0 and the selection reduces to the top-b "
                f"sigma; {fix}",
            )
        if self.bias:
            h_norms = torch.sqrt(h_norms * h_norms + 1)
        sigma = h_norms * dist / n_u
        _refuse_underflow(sigma, h_norms, dist, n_u, key)
        phi = FactoredPhi(A, h, b, hrows=hrows, bias=self.bias)
        v = phi.apply(torch.ones(n_u, dtype=torch.float64, device=dev)) * (b / n_u)
        return phi, v, sigma, T

    def _temperature(self, pool, key: str) -> float:
        if self.temperature == "auto":
            if "labeled_logits" in pool and "labeled_targets" in pool:
                linfo = check_matrix(pool["labeled_logits"], "labeled_logits")
                C = check_matrix(pool[key], key).shape[1]
                if linfo.shape[1] != C:
                    raise ValueError(
                        f"labeled_logits must have {C} classes like {key}, got shape {linfo.shape}"
                    )
                return _fit_temperature(
                    pool["labeled_logits"],
                    pool["labeled_targets"],
                    ("labeled_logits", "labeled_targets"),
                )
            return 1.0
        return 1.0 if self.temperature is None else float(self.temperature)


def _overflow_message(pool: Any, alpha: float, beta: float) -> str:
    """Why the objective stopped being finite, naming the inputs the user can change."""
    source = "mc_probs" if "mc_probs" in pool else "losses" if "losses" in pool else "features"
    return (
        f"the Sparse Approximation objective is not finite (NaN or Inf): its terms are squares of "
        f"the scale of {source} (|v - Φw|², α σ²) and of alpha = {alpha:.3g}, beta = {beta:.3g}, "
        f"and they left float64's range (overflowed, or underflowed to 0 / 0); rescale {source} "
        "or lower alpha / beta"
    )


def _refuse_underflow(sigma: Any, h_norms: Any, dist: Any, n_u: int, key: str) -> None:
    """The objective's data terms are squares of the scale of σ = |h| Σ_y P_y |P - e_y| / n_u;
    below ``sqrt(tiny / eps)`` of float64 they lose digits to underflow (features near 1e-160
    picked the lowest indices). The message names the smaller factor: the features, or a label
    distribution P one-hot to rounding (logits near 800 at temperature 2)."""
    top = float(sigma.max()) if sigma.numel() else 0.0
    if not 0 < top < _SMALLEST_SIGMA:
        return
    h_top, d_top = float(h_norms.max()) / n_u, float(dist.max())
    if d_top < h_top:  # P's spread is the smaller factor
        raise ValueError(
            f"the label distribution P is one-hot to rounding (its spread Σ P_y |P - e_y| is "
            f"at most {d_top:.3g}), so the objective's terms underflow float64 (the largest "
            f"sigma is {top:.3g}); raise the temperature or lower the scale of {key}"
        )
    raise ValueError(
        f"features are too small for float64: the largest sigma is {top:.3g}, and the "
        "objective's terms (squares of that scale) underflow; scale features up by some s "
        "and beta by s**2 (the same problem, its objective times s**2; greedy's picks do not "
        "change, IHT's may: its top-b step weighs alpha sigma**2 against a squared "
        "distance between weights, which does not scale)"
    )


#: the range of the largest feature-row norm in which Φ's float32 products (up to its cube, times
#: sums over rows and classes) keep float32's precision; outside it they run in float64
_F32_SAFE_NORM = (2.0**-24, 2.0**24)

#: the smallest largest σ whose square keeps float64's 53 bits above the subnormal range
_SMALLEST_SIGMA = math.sqrt(np.finfo(np.float64).tiny / np.finfo(np.float64).eps)


def expected_distance(P: Any) -> Any:
    """``Σ_y P_y |P - e_y|`` per row, without cancellation on confident rows.

    ``|P - e_y|² = (1 - P_y)² + Σ_{c≠y} P_c²``. For ``y`` other than the arg-max, ``P_y ≤ 1/2`` and
    both terms are safe from ``1 - P_y`` and ``|P|² - P_y²``; for the arg-max they are summed from
    the other classes directly (``1 - P_max`` would otherwise lose every digit when P_max ≈ 1).
    """
    import torch

    rows = torch.arange(P.shape[0], device=P.device)
    top = P.argmax(1)
    others = P.clone()
    others[rows, top] = 0
    one_minus = 1 - P
    one_minus[rows, top] = others.sum(1)
    rest_sq = (P * P).sum(1, keepdim=True) - P * P
    rest_sq[rows, top] = (others * others).sum(1)
    return (P * (one_minus**2 + rest_sq.clamp_min(0)).sqrt()).sum(1)


#: Rows per chunk in the problem builders: about this many float64 values (2 MiB) per (m, rows, C)
#: or (rows, C) block, so that their temporaries stay a few blocks whatever the pool size.
_CHUNK_VALUES = 1 << 18


def _row_norms_if_finite(h: Any, hrows: Any, acc: Any) -> Any:
    """Float64 norms of the rows ``h[hrows]`` (all rows when None) in ``acc``, or None when one is
    not finite; gathered and widened a chunk of rows at a time
    (``fastal._torch_arrays.row_chunks``), so that no copy of the pool's features is made."""
    import torch

    n = h.shape[0] if hrows is None else hrows.numel()
    out = torch.empty(n, dtype=torch.float64, device=h.device)
    for s, e in _value_chunks(n, h.shape[1]):
        norms = torch_row_norms_if_finite((h[s:e] if hrows is None else h[hrows[s:e]]).to(acc))
        if norms is None:
            return None
        out[s:e] = norms
    return out


def _row_chunks(n: int, C: int, m: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive row ranges covering ``range(n)`` for (m, rows, C) blocks of
    about ``_CHUNK_VALUES`` values, computing what the same operations on all n rows compute.

    Each chunk but the last starts and ends on a multiple of 64 values along the flattened
    ``rows · C`` axis: torch's CPU sum over a leading dim (``mean(0)``) adds the samples of the
    columns in whole vector blocks one after the other, and those of a trailing partial block in
    another order, so chunks cut elsewhere would change the last bits of some column means. No
    chunk has fewer than 4 rows unless n does (a reduction to one value can take another order).
    """
    step = 64 // math.gcd(C, 64)  # rows per 64 values
    rows = -(-max(4, _CHUNK_VALUES // max(m * C, 1)) // step) * step
    bounds = [*range(0, n, rows), n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 4:
        del bounds[-2]  # a short last chunk joins the one before
    return list(itertools.pairwise(bounds))


class _Distributions:
    """Checks that float64 tensors (classes last) hold probability rows: finite, in [0, 1],
    summing to 1 within the rounding of their storage ``dtype`` (at least 1e-3).

    ``add`` each row chunk (returned as is), then ``raise_if_invalid`` raises what the checks on all
    of them at once raise; the results stay on the device until then (one synchronisation).
    """

    def __init__(self, name: str, dtype: str) -> None:
        self.name, self.dtype, self.bad, self.worst = name, dtype, None, None

    def add(self, t: Any) -> Any:
        import torch

        bad = ~torch.isfinite(t).all() | ((t < 0) | (t > 1)).any()
        self.bad = bad if self.bad is None else self.bad | bad
        if t.numel():
            worst = (t.sum(-1) - 1).abs().max()
            self.worst = worst if self.worst is None else torch.maximum(self.worst, worst)
        return t

    def raise_if_invalid(self) -> None:
        import torch

        if self.bad is not None and bool(self.bad):
            raise ValueError(f"{self.name} must hold finite probabilities in [0, 1]")
        tol = max(1e-3, 2.0 * float(torch.finfo(getattr(torch, self.dtype)).eps))
        if self.worst is not None and float(self.worst) > tol:
            raise ValueError(
                f"{self.name} rows must sum to 1 over the classes "
                f"(within {tol:.3g} for {self.dtype})"
            )


def _bayesian_problem(pool, idx, b):
    """Φ (m, n_u), v, σ of eq. 13 from posterior losses or MC probabilities.

    Built in row chunks (:func:`_row_chunks`; the losses are centred over the samples, row by row):
    each chunk is gathered in its storage dtype, then cast to float64, so the float64 temporaries
    are a few (m, rows, C) blocks, whatever n; only ``E`` (m, n_u) and ``σ`` are kept.
    """
    import torch

    if "mc_probs" in pool:
        info = _interop.describe(pool["mc_probs"], "mc_probs")
        if info.dtype not in _interop.FLOAT_DTYPES:
            raise TypeError(f"mc_probs must have a floating dtype, got {info.dtype}")
        src = as_torch(pool["mc_probs"], info)
        check, P_src = _Distributions("mc_probs", info.dtype), None
    else:
        info = _interop.describe(pool["losses"], "losses")
        if info.dtype not in _interop.FLOAT_DTYPES:
            raise TypeError(f"losses must have a floating dtype, got {info.dtype}")
        src = as_torch(pool["losses"], info)
        if "probs" not in pool:
            raise ValueError("pool with 'losses' needs 'probs' (n, C): the label distribution P")
        pinfo = check_matrix(pool["probs"], "probs")
        if tuple(pinfo.shape) != tuple(info.shape[1:]):
            raise ValueError(
                f"probs must have shape {tuple(info.shape[1:])} like losses[0], got "
                f"{tuple(pinfo.shape)}"
            )
        P_src = as_torch(pool["probs"], pinfo)
        check = _Distributions("probs", pinfo.dtype)
        finite = torch.ones((), dtype=torch.bool, device=src.device)
    dev = src.device
    idx = idx.to(dev)
    m, C = info.shape[0], info.shape[2]
    n_u = idx.numel()
    E = None
    sigma = torch.empty(n_u, dtype=torch.float64, device=dev)
    for s, e in _row_chunks(n_u, C, m):
        rows = idx[s:e]
        if P_src is None:
            losses = check.add(src[:, rows].to(torch.float64))  # p for now (a gathered copy)
            P = losses.mean(0)
            losses.clamp_min_(1e-12).log_().neg_()  # -log p, in place
        else:
            losses = src[:, rows].to(torch.float64)
            P = check.add(P_src[rows].to(torch.float64))
            finite &= torch.isfinite(losses).all()
        g = losses.sub_(losses.mean(0, keepdim=True))  # g_j(y) in R^m: centred over the samples
        E_rows = torch.einsum("mjy,jy->mj", g, P)  # E_y[g_j(y)]
        if e - s == n_u:
            E = E_rows
        else:
            if E is None:  # einsum's layout (transposed, but for C = 1), so that E.sum(1) and the
                # products with E add as they would on one block
                transposed = E_rows.stride(0) == 1 and E_rows.stride(1) != 1
                E = E_rows.new_empty((n_u, m)).T if transposed else E_rows.new_empty((m, n_u))
            E[:, s:e] = E_rows
        spread = g.sub_(E_rows[:, :, None]).norm(dim=0)  # |g_j(y) - E_j| over the m samples
        sigma[s:e] = (P * spread).sum(1) / n_u
        del losses, g, P, spread, E_rows
    check.raise_if_invalid()
    if P_src is not None and not bool(finite):
        raise ValueError("losses contains NaN or Inf")
    phi = DensePhi(E, b)
    v = E.sum(1) / n_u
    return phi, v, sigma


def _tempered_softmax(z: Any, T: float) -> Any:
    """``softmax(z / T)`` by rows. For ``T < 1`` the row maximum comes off before the division: a
    tiny ``T`` then sends the other entries to ``-inf`` (probability 0) instead of sending every
    entry past float64 (inf - inf = NaN). ``T >= 1`` divides first (``z / T`` cannot overflow
    then, while ``z - max`` can for rows spread past float64)."""
    import torch

    if T < 1:
        z = z - z.amax(1, keepdim=True)
    return torch.softmax(z / T, 1)
