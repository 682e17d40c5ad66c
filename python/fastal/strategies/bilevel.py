"""Bilevel coreset (Borsos et al., ICASSP 2021): the batch that best summarises the pseudo-labeled
pool for a Nyström-NTK proxy model, chosen greedily by the implicit-function gradient (eq. 2)."""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _interop
from .._torch_arrays import MASKED_LOGITS, as_torch
from .._validate import (
    _number,
    check_bool,
    check_budget,
    check_choice,
    check_classes,
    check_matrix,
    check_positive_int,
    check_same_device,
    host_values,
    make_rng,
)
from .base import Selection, Strategy, register, unlabeled_rows


@register
class BilevelCoreset(Strategy):
    """Semi-supervised batch active learning via bilevel optimisation (Borsos, Tagliasacchi &
    Krause, ICASSP 2021, eq. 1–3, Alg. 1).

    The batch ``B`` is the set of unlabeled points that, trained on together with the labeled set,
    makes a proxy model fit the labeled set *and* the pseudo-labeled pool best (eq. 3). The proxy
    is multinomial logistic regression with weight decay λ on Nyström features of a neural tangent
    kernel; ``B`` grows greedily by eq. 2, each pick re-solving the inner problem warm-started.
    See :mod:`fastal.bilevel` for the math (derivation of the score, solvers, CG).

    Steps: pseudo-labels ``ỹ = softmax(logits)`` (or ``"probs"``) for every row; ``m`` landmarks
    drawn at random (seeded) from labeled ∪ pool; Nyström features ``z_x = K_UU^{†/2} k(U, x)``;
    ``⌊random_fraction · budget⌋`` points drawn uniformly first (they join the inner problem);
    the rest by :func:`fastal.bilevel.bilevel_select`.

    Labels: the labeled rows use ``pool["labeled_targets"]`` (integer classes or probability rows,
    one per row of ``labeled``, in its order; :func:`fastal.torch.select` adds it when called with
    ``labels=``) and otherwise their own pseudo-labels.

    Parameters
    ----------
    kernel : "ntk_last_layer", "relu_ntk" or callable, default "ntk_last_layer"
        ``"ntk_last_layer"``: the empirical last-layer NTK ``[h, 1]·[h', 1]`` on the features
        (rank ≤ d + 1, so at most d + 1 Nyström features whatever ``landmarks``). ``"relu_ntk"``:
        the infinite-width fully-connected ReLU NTK of ``depth`` hidden layers
        (:func:`fastal.bilevel.relu_ntk`; the paper used the NTK of its own architecture). A
        callable ``k(X, Y) -> (n_X, n_Y)`` receives torch tensors.
    depth : int >= 0, default 2
        Hidden layers of ``"relu_ntk"`` (0: the linear kernel); checked whatever the kernel.
    kernel_bias : float, default 0
        Bias variance σ_b² of ``"relu_ntk"``.
    kernel_input : str, default "features"
        The pool key the kernel reads: the penultimate ``"features"``, or e.g. ``"inputs"`` (raw
        inputs, flattened to 2-D) that you add to the pool yourself.
    landmarks : int, default 2000
        m, the paper's value; capped by the number of rows. The features ``Z`` are n × rank
        float32 (float64 for float64 inputs) with rank ≤ m (≤ d + 1 for ``"ntk_last_layer"``):
        with ``"relu_ntk"`` and 2000 landmarks, 8 kB per row, four times float32 features of
        width 512. Before computing them, ``select`` estimates ``Z`` plus the pool pass's
        ``A`` (n × C) and raises a ``ValueError`` naming ``landmarks`` when that exceeds the
        memory available on the device (psutil's ``available``, else Linux's ``MemAvailable``,
        and no more than the process's memory cgroup leaves before its limit; the CUDA driver's
        free memory plus PyTorch's unused cache), rather than being killed
        for lack of memory or swapping halfway through.
    reg : float, default 1e-4
        λ of eq. 3 (the paper's value).
    cg_steps : int, default 30
        Conjugate-gradient steps of ``H⁻¹ ∇G`` (the paper's value).
    precondition : bool, default True
        Block-Jacobi preconditioned CG (an addition: the inner Hessian is badly conditioned at
        λ = 10⁻⁴); False is the paper's plain CG. See :func:`fastal.bilevel.inverse_hvp`.
    random_fraction : float, default 0.1
        Share of the batch drawn uniformly at random (the paper's practice, §3).
    per_step : int, default 1
        Picks per outer greedy step. ``1`` is the paper's algorithm; larger values (a departure,
        for large budgets) add the top ``per_step`` scores per step. Each step passes twice over
        ``Z`` (linear in n) and re-solves the inner problem (Newton: at most 100 iterations of at
        most 250 CG steps, growing with |labeled| + picks, not with n), and nothing bounds the
        total time: on a 2-core CPU, a budget of 1000 with ``per_step=1`` at n = 10⁶ took an
        estimated 20–60 minutes. For pools of 10⁵ rows and more pass about ``budget / 100``
        (see :func:`fastal.bilevel.bilevel_select`, "Cost, and large pools").
    solver : {"auto", "newton", "adam"}, default "auto"
        Inner solver: full-batch Newton-CG in float64 without augmentation (exact optimum, a few
        warm-started steps per pick), Adam minibatches with it (the paper's; see
        :func:`fastal.bilevel.bilevel_select` for ``inner_iters``, ``batch_size`` and ``lr``).
    augment : callable ``augment(rows, rng) -> rows``, optional
        Data augmentation of the kernel-input rows (torch tensors of the pool's row shape, e.g.
        ``(B, channels, time)``: the kernel flattens them afterwards) for the inner minibatches;
        their features are recomputed through the Nyström map for every minibatch.
    inner_iters, batch_size, lr : int, int, float, default 1000, 64 and 1e-2
        Adam settings (paper: 1000 steps of batch 64; its learning rate is not given).
    rcond : float in [0, 1), optional
        Relative eigenvalue cutoff of the Nyström map (:class:`fastal.bilevel.Nystrom`): the
        eigenvalues at or below ``rcond · λ_max`` are dropped, so ``rcond >= 1`` would drop all.
    progress : bool, default False

    The pool is a mapping with ``"logits"`` (or ``"probs"``) and ``"features"`` (and
    ``kernel_input`` if different), one row per point; indices come back distinct, outside
    ``labeled``, exactly ``budget`` of them, in the framework of the pool's arrays: the random
    points first, then the greedy picks in order.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.strategies.bilevel import BilevelCoreset
    >>> rng = np.random.default_rng(0)
    >>> pool = {"logits": rng.normal(size=(200, 3)), "features": rng.normal(size=(200, 8))}
    >>> sel = BilevelCoreset(landmarks=50).select(pool, 10, labeled=[0, 1, 2], seed=0)
    >>> len(set(sel.indices.tolist())), sel.diagnostics["rank"], len(sel.diagnostics["random"])
    (10, 9, 1)
    """

    name = "bilevel"
    requires = ("logits", "features")

    def __init__(
        self,
        *,
        kernel: str | Callable[[Any, Any], Any] = "ntk_last_layer",
        depth: int = 2,
        kernel_bias: float = 0.0,
        kernel_input: str = "features",
        landmarks: int = 2000,
        reg: float = 1e-4,
        cg_steps: int = 30,
        precondition: bool = True,
        random_fraction: float = 0.1,
        per_step: int = 1,
        solver: str = "auto",
        augment: Callable[[Any, np.random.Generator], Any] | None = None,
        inner_iters: int = 1000,
        batch_size: int = 64,
        lr: float = 1e-2,
        rcond: float | None = None,
        progress: bool = False,
    ) -> None:
        from ..bilevel import make_kernel

        make_kernel(kernel, depth=depth, bias=kernel_bias)  # validates the name, depth and bias
        if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 0:
            raise ValueError(f"depth must be a non-negative integer, got {depth!r}")  # any kernel
        for name, v in (
            ("landmarks", landmarks),
            ("cg_steps", cg_steps),
            ("per_step", per_step),
            ("inner_iters", inner_iters),
            ("batch_size", batch_size),
        ):
            check_positive_int(v, name)
        solver = check_choice(solver, "solver", ("auto", "newton", "adam"))
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be callable, got {type(augment).__name__}")
        if augment is not None and solver == "newton":
            raise ValueError("solver='newton' is full-batch and cannot use augment")
        if not isinstance(kernel_input, str):
            raise TypeError(
                f"kernel_input must be a pool key (str), got {type(kernel_input).__name__}"
            )
        self.kernel = kernel
        self.depth = int(depth)
        self.kernel_bias = _number(kernel_bias, "kernel_bias", minimum=0.0)
        self.kernel_input = kernel_input
        self.landmarks = int(landmarks)
        self.reg = _number(reg, "reg", positive=True)
        self.cg_steps = int(cg_steps)
        self.precondition = check_bool(precondition, "precondition")
        self.random_fraction = _number(random_fraction, "random_fraction", minimum=0.0)
        if self.random_fraction > 1:
            raise ValueError(f"random_fraction must be in [0, 1], got {random_fraction}")
        self.per_step = int(per_step)
        self.solver = solver
        self.augment = augment
        self.inner_iters = int(inner_iters)
        self.batch_size = int(batch_size)
        self.lr = _number(lr, "lr", positive=True)
        self.rcond = None if rcond is None else _number(rcond, "rcond", minimum=0.0)
        if self.rcond is not None and self.rcond >= 1:
            raise ValueError(
                f"rcond must be in [0, 1), got {rcond}: eigenvalues at or below rcond · λ_max "
                "are dropped, so it would drop every eigenvalue of the kernel"
            )
        self.progress = check_bool(progress, "progress")

    def select(self, pool: Any, budget: int, labeled: Any = None, *, seed: Any = None) -> Selection:
        import torch

        from .._memory import refuse_unless_it_fits
        from ..bilevel import (
            Nystrom,
            bilevel_select,
            empty_diagnostics,
            make_kernel,
            resolve_solver,
        )
        from ..bilevel._common import _all_finite, _check_probs, _rows_per_chunk
        from ..bilevel.greedy import _CheckedProbs

        if not hasattr(pool, "keys"):
            raise TypeError(
                f"pool must be a mapping with 'logits' (or 'probs') and '{self.kernel_input}', "
                f"got {type(pool).__name__}"
            )
        key = "probs" if "probs" in pool else "logits"
        if key not in pool:
            raise ValueError(f"pool needs 'logits' or 'probs'; it has {', '.join(map(repr, pool))}")
        if self.kernel_input not in pool:
            raise ValueError(
                f"pool needs {self.kernel_input!r} (the kernel's input); "
                f"it has {', '.join(map(repr, pool))}"
            )
        pinfo = check_matrix(pool[key], key)
        n, C = pinfo.shape
        check_classes(C, key, pinfo.shape)
        xinfo = _interop.describe(pool[self.kernel_input], self.kernel_input)
        if len(xinfo.shape) < 2 or xinfo.shape[0] != n:
            raise ValueError(
                f"{self.kernel_input} must have one row per row of {key} ({n}), "
                f"got shape {xinfo.shape}"
            )
        if xinfo.dtype not in _interop.FLOAT_DTYPES:
            raise TypeError(f"{self.kernel_input} must be floating point, got {xinfo.dtype}")
        if int(np.prod(xinfo.shape[1:])) == 0:
            raise ValueError(
                f"{self.kernel_input} has no columns: shape {xinfo.shape}, need d >= 1"
            )
        check_same_device(xinfo, self.kernel_input, pinfo, key)
        lab, rest = unlabeled_rows(n, labeled, like=pinfo)
        b = check_budget(budget, rest.size)

        # the pseudo-labels: one float64 (n, C) buffer, bilevel_select's targets (_CheckedProbs)
        if key == "probs":  # checked here, so that the message names the pool's key
            soft = _check_probs(as_torch(pool[key], pinfo), key)
        else:  # softmax in row chunks: no float64 copy of the logits beside the result
            p = as_torch(pool[key], pinfo)
            soft = torch.empty(tuple(p.shape), dtype=torch.float64, device=p.device)
            step = _rows_per_chunk(C)
            for s in range(0, n, step):
                c = p[s : s + step].to(torch.float64)
                if not bool(torch.isfinite(c.amax(1)).all()):  # -inf: a masked class
                    raise ValueError(f"{key} contains NaN or Inf {MASKED_LOGITS}")
                soft[s : s + step] = torch.softmax(c, dim=1)
        rows = as_torch(pool[self.kernel_input], xinfo)  # augment gets them in their own shape
        X = rows.reshape(n, -1)
        if not X.is_floating_point():
            raise TypeError(f"{self.kernel_input} must be floating point, got {X.dtype}")
        if not _all_finite(X):
            raise ValueError(f"{self.kernel_input} contains NaN or Inf")
        targets = self._labeled_targets(pool, lab.size, C)

        diagnostics: dict[str, Any] = {"kernel": self._kernel_name(), "landmarks": None}
        if b == 0:  # the keys of every other budget, empty
            empty = _interop.to_framework(np.empty(0, np.int64), xinfo)
            diagnostics.update(empty_diagnostics(resolve_solver(self.solver, self.augment), 0))
            diagnostics["seconds"]["features"] = 0.0
            return Selection(empty, diagnostics)

        rng = make_rng(seed)
        t0 = time.perf_counter()
        m = min(self.landmarks, n)
        U_idx = np.sort(rng.choice(n, size=m, replace=False))
        kernel = make_kernel(self.kernel, depth=self.depth, bias=self.kernel_bias)
        nys = Nystrom(X[torch.from_numpy(U_idx).to(X.device)], kernel, rcond=self.rcond)
        # Z (n x rank), then A (n x C) of the pool pass, in X's precision class; and O(n) vectors
        zbytes = 8 if X.dtype == torch.float64 else 4
        refuse_unless_it_fits(
            n * ((nys.rank + C) * zbytes + 48),
            X.device,
            f"BilevelCoreset's Nyström features ({n} rows x {nys.rank}) and pool pass",
            f"pass fewer landmarks (now {m}; Z has one column per kept eigenvalue of their kernel "
            f"matrix, {nys.rank} here) or select from a random subsample of the pool",
        )
        Z = nys.transform_torch(X)
        feature_seconds = time.perf_counter() - t0

        res = bilevel_select(
            Z,
            targets,
            _CheckedProbs(soft),  # renormalised and written into in place: not used below
            lab,
            b,
            reg=self.reg,
            cg_steps=self.cg_steps,
            precondition=self.precondition,
            random_fraction=self.random_fraction,
            per_step=self.per_step,
            solver=self.solver,
            inner_iters=self.inner_iters,
            batch_size=self.batch_size,
            lr=self.lr,
            augment=self.augment,
            raw=rows if self.augment is not None else None,
            featurize=(lambda r: nys.transform_torch(r.reshape(r.shape[0], -1)))
            if self.augment is not None
            else None,
            seed=rng,
            progress=self.progress,
        )
        diagnostics.update(res.diagnostics)
        diagnostics["landmarks"] = U_idx
        diagnostics["rank"] = nys.rank
        diagnostics["seconds"]["features"] = feature_seconds
        # a mixed pool (torch logits, numpy features): the kernel input's framework
        return Selection(_interop.to_framework(res.indices, xinfo), diagnostics)

    def _kernel_name(self) -> str:
        if callable(self.kernel):
            return getattr(self.kernel, "__name__", type(self.kernel).__name__)
        return self.kernel

    @staticmethod
    def _labeled_targets(pool: Any, n_lab: int, C: int) -> Any:
        """The labeled rows' targets as a host array, or None (their pseudo-labels are used)."""
        if "labeled_targets" not in pool:
            return None
        import torch

        from ..bilevel._common import _check_probs

        # host numpy in native byte order; bfloat16 widened (exactly) to float32, which numpy holds
        arr = host_values(pool["labeled_targets"], "labeled_targets", "classes or probabilities")
        if arr.ndim == 0 or arr.shape[0] != n_lab:
            got = arr.shape[0] if arr.ndim else "a scalar"
            raise ValueError(
                f"labeled_targets must have one entry per labeled row ({n_lab}), got {got}"
            )
        if n_lab == 0:
            return None
        if arr.ndim == 1:
            if not np.issubdtype(arr.dtype, np.integer):
                raise TypeError(
                    f"labeled_targets must be integer classes when 1-D, got dtype {arr.dtype}"
                )
            if arr.min() < 0 or arr.max() >= C:
                raise ValueError(
                    f"labeled_targets must be classes in [0, {C}), "
                    f"got values in [{arr.min()}, {arr.max()}]"
                )
            return arr.astype(np.int64)
        if arr.ndim == 2 and arr.shape[1] == C and np.issubdtype(arr.dtype, np.floating):
            return _check_probs(torch.tensor(arr), "labeled_targets").numpy()
        raise ValueError(
            f"labeled_targets must be ({n_lab},) classes or ({n_lab}, {C}) probabilities, "
            f"got shape {arr.shape}"
        )
