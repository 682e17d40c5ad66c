# ruff: noqa: RUF002, RUF003  (math notation in docstrings and comments is deliberate)
"""Bilevel coreset selection (Borsos, Tagliasacchi & Krause, ICASSP 2021): the math.

Semi-supervised batch active learning via bilevel optimisation. The batch ``B`` is the set of pool
points that, with their (pseudo-)labels, best *summarise* the labeled set plus the pseudo-labeled
pool for a proxy model (eq. 1, 3):

    min_{B ⊂ pool, |B| = b}  G(W*) = Σ_{i ∈ L} ℓ(h_W*(x_i), y_i) + Σ_{x ∈ pool} ℓ(h_W*(x), ỹ_x)
    s.t.  W* = argmin_W F(B, W) = Σ_{i ∈ L} ℓ(h_W(x_i), y_i) + Σ_{x ∈ B} ℓ(h_W(x), ỹ_x) + λ |W|²

with ``h_W(x) = softmax(W z_x)``, ``z_x`` the Nyström features of a neural tangent kernel and ``ℓ``
the cross-entropy with soft targets. Greedy forward selection (eq. 2, Alg. 1) adds, one at a time,

    x* = argmax_{x ∈ pool \\ B'}  ∇_W ℓ(h_W(x), ỹ_x)ᵀ  H⁻¹  ∇_W G(W),   H = ∂²F(B', W) / ∂W²,

at ``W = W*(B')``, then re-solves the inner problem (warm-started).

Why eq. 2 (implicit function theorem): give a candidate ``x`` weight ε in the inner objective,
``F_ε = F + ε ℓ_x``. Its minimiser satisfies ``∇F(W_ε) + ε ∇ℓ_x(W_ε) = 0``; differentiating at ε = 0
gives ``dW*/dε = -H⁻¹ ∇ℓ_x``, so ``dG/dε = ∇Gᵀ dW*/dε = -∇ℓ_xᵀ H⁻¹ ∇G``. The candidate whose added
weight *decreases* the upper objective fastest has the *largest* ``∇ℓ_xᵀ H⁻¹ ∇G``: the arg-max of
eq. 2. A positive rescaling of ``G`` (a mean instead of the paper's sum) does not change the pick.

Everything here is rank one per sample: ``∇_W ℓ(h_W(x), t) = (p_x - t) ⊗ z_x`` (a C × m' matrix),
so the score of every candidate is ``(p_x - ỹ_x)ᵀ V z_x`` with ``V = H⁻¹ ∇G``, a row-wise product
(:meth:`fastal.sparse.FactoredPhi.adjoint`, the C++ factored kernel on the CPU): no ``n × C·m'``
per-sample gradient matrix is ever formed. ``W`` is stored as a ``(C, m')`` matrix; flattened,
entry ``(c, k)`` is coordinate ``c·m' + k`` (the layout of :class:`fastal.GradientEmbedding`).

Arrays: numpy, torch (CPU or CUDA) or cupy; the big pool passes run in torch on the input's device
(zero-copy for numpy and cupy) and results come back in the input's framework.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import numpy as np

from . import _interop
from ._threads import one_thread_if_small
from ._validate import (
    _number,
    check_bool,
    check_budget,
    check_indices,
    check_positive_int,
    make_rng,
    prob_sum_tol,
)
from .gradients import as_torch, from_torch

Kernel = Callable[[Any, Any], Any]

#: Elements per chunk of the row-batched pool passes (bounds temporaries to ~ 32 MB of float64).
_CHUNK_ELEMS = 1 << 22
#: Multiply-adds per Hessian-vector product below which the inner problem runs on one thread.
_SMALL_WORK = 1 << 22
#: Newton's CG iterations above which its preconditioner is rebuilt at the current W.
_STALE_CG = 8
_EPS64 = float(np.finfo(np.float64).eps)
#: bilevel_select's Newton also stops at |∇F| ≤ this · |∇F(0)|: rounding allows no better.
_NEWTON_FLOOR = 1e-14


def _torch():
    import torch

    return torch


def _tensor(x: Any, name: str) -> tuple[Any, _interop.ArrayInfo]:
    info = _interop.describe(x, name)
    return as_torch(x, info), info


def _float_tensor(x: Any, name: str) -> tuple[Any, _interop.ArrayInfo]:
    """``_tensor`` of features: a kernel of integer rows would be computed in integers."""
    xt, info = _tensor(x, name)
    if not xt.is_floating_point():
        raise TypeError(
            f"{name} must hold floating-point features (float16, bfloat16, float32, float64), got "
            f"dtype {info.dtype}: cast it to float32"
        )
    return xt, info


def _rows_per_chunk(width: int) -> int:
    return max(64, _CHUNK_ELEMS // max(int(width), 1))


def _all_finite(t: Any) -> bool:
    """Whether the 2-D tensor ``t`` holds no NaN / Inf, checked in row chunks
    (:func:`fastal.gradients.torch_isfinite_rows`): ``torch.isfinite`` of a whole tensor allocates
    |t| and two masks, 1.75 times a float32 tensor."""
    from .gradients import torch_isfinite_rows

    return bool(torch_isfinite_rows(t).all())


#: Allocations below this many bytes are not compared with the available memory (so featurizing
#: an augmented minibatch asks the system nothing).
_MEMORY_CHECK_MIN = 1 << 28


def _available_bytes(device: Any) -> int | None:
    """Bytes a new allocation on ``device`` can take now without swapping; None when unknown.

    CUDA: the driver's free memory plus what PyTorch's caching allocator holds unused. CPU: the
    machine's ``psutil.virtual_memory().available`` where psutil is installed, else Linux's
    ``MemAvailable`` (free memory plus the page cache the kernel can drop), else the physical
    memory (a bound that only refuses what can never fit); the smaller of that and what this
    process's memory cgroup leaves (:func:`_cgroup_available_bytes`: a container's limit, which
    the machine-wide figures do not see).
    """
    torch = _torch()
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free) + int(cached)
    if device.type != "cpu":
        return None
    machine = _machine_available_bytes()
    group = _cgroup_available_bytes()
    known = [b for b in (machine, group) if b is not None]
    return min(known) if known else None


def _machine_available_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


#: Memory cgroup limits at or above this are "no limit" (cgroup v1 writes 2^63 rounded to a page).
_NO_LIMIT = 1 << 60


def _cgroup_available_bytes(
    root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup"
) -> int | None:
    """What the memory cgroups of this process leave before their limits, or None (no limit, or
    no cgroup file to read): the smallest over the process's cgroup and its ancestors of
    ``limit - (usage - inactive file cache)`` (the cache the kernel reclaims before it refuses, as
    container runtimes count a working set). cgroup v2 (``memory.max``, ``memory.current``,
    ``inactive_file``) and v1 (``memory.limit_in_bytes``, ``memory.usage_in_bytes``,
    ``total_inactive_file``); the cgroup's path comes from ``self_cgroup``, and a path not mounted
    under ``root`` (a container that sees only its own cgroup) is read at the mount's top."""
    try:
        with open(self_cgroup, encoding="utf-8", errors="replace") as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
    except OSError:
        return None
    layouts = []  # (mount, path within it, limit file, usage file, inactive key)
    for _, controllers, path in entries:
        if controllers == "":
            layouts.append((root, path, "memory.max", "memory.current", "inactive_file"))
        elif "memory" in controllers.split(","):
            layouts.append((os.path.join(root, "memory"), path, "memory.limit_in_bytes",
                            "memory.usage_in_bytes", "total_inactive_file"))  # fmt: skip
    best = None
    for mount, path, limit_file, usage_file, inactive_key in layouts:
        path = path.removesuffix(" (deleted)")
        parts = [p for p in path.split("/") if p]
        if ".." in parts:  # not a path below the mount: read its top only
            parts = []
        chain = [os.path.join(mount, *parts[:i]) for i in range(len(parts) + 1)]
        for here in chain if os.path.isdir(chain[-1]) else [mount]:
            room = _cgroup_room(here, limit_file, usage_file, inactive_key)
            if room is not None:
                best = room if best is None else min(best, room)
    return best


def _cgroup_room(directory: str, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    """``limit - (usage - inactive file cache)`` of one cgroup directory, None when unlimited or
    unreadable."""
    try:
        with open(os.path.join(directory, limit_file)) as f:
            text = f.read().strip()
        if text == "max" or not 0 <= int(text) < _NO_LIMIT:  # v1 writes -1 for "no limit" too
            return None
        limit = int(text)
        with open(os.path.join(directory, usage_file)) as f:
            usage = int(f.read().strip())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    inactive = 0
    try:
        with open(os.path.join(directory, "memory.stat")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    inactive = int(value)
                    break
    except (OSError, ValueError):
        pass
    return max(0, limit - max(0, usage - inactive))


def _refuse_unless_it_fits(nbytes: int, device: Any, what: str, hint: str) -> None:
    """ValueError when ``nbytes`` (an estimate of what is about to be allocated) exceeds the
    memory available on ``device`` (:func:`_available_bytes`): filled later, such an allocation
    would swap for hours or get the process killed with no message. ``what`` needs the bytes;
    ``hint`` says what to lower."""
    if nbytes < _MEMORY_CHECK_MIN:
        return
    available = _available_bytes(device)
    if available is None or nbytes <= available:
        return
    torch = _torch()
    device = torch.device(device)
    where = "the CPU" if device.type == "cpu" else str(device)
    raise ValueError(
        f"{what} would need {nbytes / 2**30:.2f} GiB but {where} has {available / 2**30:.2f} GiB "
        f"available: {hint}"
    )


# ---------------------------------------------------------------------------------------------
# kernels


def linear_ntk(X: Any, Y: Any = None) -> Any:
    """Empirical last-layer NTK: ``k(h, h') = [h, 1]·[h', 1] = h·h' + 1``.

    For a last layer ``z = W h + b`` the Jacobian of one logit ``z_c`` with respect to ``(W, b)`` is
    ``e_c ⊗ [h, 1]``, so every diagonal block of the empirical NTK is ``h·h' + 1`` (CRC's trace over
    the C classes is C times this; the constant factor is left out here, as in the paper's
    per-output kernel).

    Parameters
    ----------
    X : array (n, d)
    Y : array (k, d), optional
        Defaults to ``X``. Same framework and device as ``X``.

    Returns
    -------
    array (n, k) in the framework, device and dtype of ``X``. A ``ValueError`` is raised when the
    input holds NaN / Inf or a kernel value overflows that dtype (float32 rows of norm ≳ 1e19).

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.bilevel import linear_ntk
    >>> linear_ntk(np.array([[1.0, 2.0]]), np.array([[3.0, 0.5], [0.0, 0.0]])).tolist()
    [[5.0, 1.0]]
    """
    xt, info = _float_tensor(X, "X")
    yt = xt if Y is None else _float_tensor(Y, "Y")[0].to(xt.dtype)
    if xt.ndim != 2 or yt.ndim != 2 or xt.shape[1] != yt.shape[1]:
        raise ValueError(
            f"X and Y must be 2-D with equal columns, got {tuple(xt.shape)} and {tuple(yt.shape)}"
        )
    return from_torch(_finite_kernel(xt @ yt.T + 1, xt, yt, Y is None, "linear_ntk"), info)


def _finite_kernel(K: Any, xt: Any, yt: Any, y_is_x: bool, kernel: str) -> Any:
    """``K`` if it is finite; else a ValueError: NaN / Inf in the input, or the kernel values
    overflow the dtype they are computed in (finite input of magnitude ≳ 1e19 in float32)."""
    torch = _torch()
    if bool(torch.isfinite(K).all()):
        return K
    for t, name in ((xt, "X"),) if y_is_x else ((xt, "X"), (yt, "Y")):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or Inf")
    dtype = str(K.dtype).removeprefix("torch.")
    raise ValueError(
        f"{kernel}: the kernel values of X{'' if y_is_x else ' and Y'} overflow {dtype} "
        f"(inner products beyond its range): scale the rows down{'' if dtype == 'float64' else ' or pass float64'}"
    )


def relu_ntk(X: Any, Y: Any = None, depth: int = 1, *, bias: float = 0.0) -> Any:
    """Closed-form NTK of an infinite-width fully-connected ReLU network (Jacot et al. 2018;
    arc-cosine recursion of Arora et al. 2019, Cho & Saul 2009).

    Normalisation (NTK parameterisation, as in neural-tangents' ``Dense(W_std=√2, b_std=√bias)``):
    ``depth`` hidden ReLU layers of width → ∞ and a linear read-out, every layer
    ``h^{l+1} = √2 / √fan_in · W^{l+1} g^l + √bias · b^{l+1}`` with standard normal ``W, b``
    (the input layer included, ``fan_in = d``). With ``Σ¹(x, x') = 2 x·x'/d + bias`` and, for
    ``l = 1..depth``, ``a = Σˡ(x, x)``, ``a' = Σˡ(x', x')``, ``cos θ = Σˡ(x, x') / √(a a')``:

        Σˡ⁺¹(x, x') = √(a a') / π · (sin θ + (π - θ) cos θ) + bias      (2 E[relu(u) relu(v)])
        Σ̇ˡ⁺¹(x, x') = (π - θ) / π                                        (2 E[relu'(u) relu'(v)])
        Θ¹ = Σ¹,   Θˡ⁺¹ = Θˡ · Σ̇ˡ⁺¹ + Σˡ⁺¹,   k(x, x') = Θ^{depth+1}(x, x').

    σ_w² = 2 keeps the diagonal ``Σˡ(x, x) = 2|x|²/d + l·bias`` from growing or vanishing with
    depth. ``depth = 0`` is the linear kernel ``2 x·x'/d + bias``. A zero row gets ``cos θ = 0``.

    Parameters
    ----------
    X : array (n, d)
    Y : array (k, d), optional
        Defaults to ``X``. Same framework and device.
    depth : int >= 0, default 1
        Number of hidden ReLU layers.
    bias : float >= 0, default 0
        Bias variance ``σ_b²`` of every layer.

    Returns
    -------
    array (n, k), framework, device and dtype of ``X`` (computed in that precision). A
    ``ValueError`` is raised when the input holds NaN / Inf or a kernel value overflows that dtype
    (float32 rows of norm ≳ 1e19); intermediate products are formed so that they do not overflow
    before the kernel values themselves do. In float32, entries of (nearly) parallel rows, the
    diagonal among them, carry a relative error of about 1e-4 per layer (``arccos`` is
    ill-conditioned near 1, and the cosine has float32 rounding); pass float64 rows for more.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.bilevel import relu_ntk
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> relu_ntk(x, depth=1).round(4).tolist()   # diagonal 2, orthogonal pair 1/π
    [[2.0, 0.3183], [0.3183, 2.0]]
    """
    torch = _torch()
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise ValueError(f"depth must be a non-negative integer, got {depth!r}")
    bias = _number(bias, "bias", minimum=0.0)
    xt, info = _float_tensor(X, "X")
    yt = xt if Y is None else _float_tensor(Y, "Y")[0].to(xt.dtype)
    if xt.ndim != 2 or yt.ndim != 2 or xt.shape[1] != yt.shape[1]:
        raise ValueError(
            f"X and Y must be 2-D with equal columns, got {tuple(xt.shape)} and {tuple(yt.shape)}"
        )
    d = max(int(xt.shape[1]), 1)
    sxy = (xt @ yt.T) * (2.0 / d) + bias
    sxx = (xt * xt).sum(1) * (2.0 / d) + bias
    syy = (yt * yt).sum(1) * (2.0 / d) + bias
    theta = sxy.clone()
    tiny = torch.finfo(xt.dtype).tiny
    for _ in range(int(depth)):
        # √a·√a' rather than √(a a'): the product overflows long before the kernel does
        norm = torch.sqrt(sxx)[:, None] * torch.sqrt(syy)[None, :]
        cos = torch.where(norm > tiny, sxy / norm.clamp_min(tiny), torch.zeros_like(sxy)).clamp(
            -1, 1
        )
        ang = torch.arccos(cos)
        sin = torch.sqrt((1 - cos * cos).clamp_min(0))
        sdot = (math.pi - ang) / math.pi
        sxy = norm / math.pi * (sin + (math.pi - ang) * cos) + bias
        theta = theta * sdot + sxy
        sxx, syy = sxx + bias, syy + bias  # 2 E[relu(u)²] = Var u: the diagonal only gains the bias
    return from_torch(_finite_kernel(theta, xt, yt, Y is None, "relu_ntk"), info)


def make_kernel(kernel: Any, *, depth: int = 1, bias: float = 0.0) -> Kernel:
    """A kernel function ``k(X, Y) -> (n_X, n_Y)`` on torch tensors from a name or a callable.

    ``"ntk_last_layer"`` (or ``"linear"``): :func:`linear_ntk`; ``"relu_ntk"``: :func:`relu_ntk`
    with ``depth`` and ``bias``; a callable is returned as is (it receives torch tensors of the
    same dtype and device and must return an ``(n_X, n_Y)`` torch tensor or numpy array).
    """
    if callable(kernel):
        return kernel
    if kernel in ("ntk_last_layer", "linear"):
        return linear_ntk
    if kernel == "relu_ntk":
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
            raise ValueError(f"depth must be a non-negative integer, got {depth!r}")
        return partial(relu_ntk, depth=int(depth), bias=_number(bias, "bias", minimum=0.0))
    raise ValueError(f"kernel must be 'ntk_last_layer', 'relu_ntk' or a callable, got {kernel!r}")


def _call_kernel(kernel: Kernel, X: Any, Y: Any) -> Any:
    torch = _torch()
    K = kernel(X, Y)
    if isinstance(K, np.ndarray):
        K = torch.from_numpy(K).to(X.device)
    if not isinstance(K, torch.Tensor) or tuple(K.shape) != (X.shape[0], Y.shape[0]):
        got = tuple(getattr(K, "shape", ())) or type(K).__name__
        raise ValueError(f"kernel must return an ({X.shape[0]}, {Y.shape[0]}) array, got {got}")
    return K.to(X.dtype)


# ---------------------------------------------------------------------------------------------
# Nyström features


class Nystrom:
    """The Nyström map ``z_x = (K_UU)^{†/2} [k(x, u_1), ..., k(x, u_m)]`` of fixed landmarks.

    ``K_UU = E Λ Eᵀ`` is eigendecomposed in float64 (for :func:`linear_ntk` through the thin SVD
    of ``[U, 1]``, whose right singular vectors then map ``[x, 1]`` to ``z_x`` directly);
    eigenvalues at or below ``rcond · λ_max`` are dropped and the map is
    ``z_x = Λ_k^{-1/2} E_kᵀ k(U, x)`` with ``m' = k ≤ m`` columns, so that
    ``Z_U Z_Uᵀ = E_k Λ_k E_kᵀ = K_UU`` on the kept spectrum (and ``Z Zᵀ`` is the Nyström
    approximation ``K_XU K_UU^† K_UX``). A kernel of rank r (e.g. :func:`linear_ntk` on d-dim
    features: r ≤ d + 1) gives ``m' ≤ r`` whatever ``m``.

    Parameters
    ----------
    landmarks : array (m, d)
    kernel : callable
        ``k(X, Y)`` on torch tensors (see :func:`make_kernel`).
    rcond : float in [0, 1), optional
        Relative eigenvalue cutoff; default ``m · eps`` of the compute dtype (numpy's ``pinv``
        convention), which keeps the rounding of the kernel rows from being amplified by
        ``λ^{-1/2}`` of the dropped directions. For :func:`linear_ntk` the map is orthonormal
        (``z = [x, 1] W_k``, nothing is amplified) and the default keeps every direction of
        ``[U, 1]`` above the resolution of the compute dtype (singular values above
        ``max(m, d + 1) · eps · s_max``, numpy's ``matrix_rank`` rule, i.e.
        ``rcond = (max(m, d + 1) · eps)²``): the pinv rule would drop real directions whose
        ``s / s_max`` is below ``√(m · eps)`` (0.016 at m = 2000 in float32), and the proxy model
        would lose them.

    Attributes
    ----------
    rank : int
        m', the number of features.
    eigenvalues : torch.Tensor (m',)
        The kept eigenvalues of ``K_UU``, descending.
    """

    def __init__(self, landmarks: Any, kernel: Kernel, *, rcond: float | None = None) -> None:
        torch = _torch()
        ut, info = _tensor(landmarks, "landmarks")
        if ut.ndim < 2 or ut.shape[0] == 0:
            raise ValueError(f"landmarks must hold at least one row, got shape {tuple(ut.shape)}")
        if not ut.is_floating_point():
            raise TypeError(f"landmarks must be floating point, got {ut.dtype}")
        self.dtype = torch.float64 if ut.dtype == torch.float64 else torch.float32
        self.landmarks = ut.to(self.dtype)
        self.kernel = kernel
        m = int(ut.shape[0])
        linear = kernel is linear_ntk and ut.ndim == 2
        if rcond is None:
            if linear:  # see the class docstring: the rank of [U, 1] by numpy's matrix_rank rule
                width = int(ut.shape[1]) + 1
                self.rcond = (max(m, width) * float(torch.finfo(self.dtype).eps)) ** 2
            else:
                self.rcond = m * float(torch.finfo(self.dtype).eps)
        else:
            self.rcond = _number(rcond, "rcond", minimum=0.0)
            if self.rcond >= 1:
                raise ValueError(
                    f"rcond must be in [0, 1), got {rcond}: eigenvalues at or below rcond · λ_max "
                    "are dropped, so it would drop every eigenvalue of the kernel"
                )
        if linear:
            # K_UU = Ua Uaᵀ with Ua = [U, 1] (m x (d + 1)): its eigenpairs come from the thin SVD
            # Ua = V S Wᵀ (λ = s², E = V) in O(m d²) instead of an O(m³) eigendecomposition
            u64 = self.landmarks.to(torch.float64)
            ua = torch.cat([u64, torch.ones_like(u64[:, :1])], 1)
            if not bool(torch.isfinite(ua).all()):
                raise ValueError("the kernel returned NaN or Inf on the landmarks")
            with one_thread_if_small(ut.device, m * ua.shape[1] ** 2, _SMALL_WORK):
                evecs, sv, wt = torch.linalg.svd(ua, full_matrices=False)
            if not bool(torch.isfinite(sv).all()):
                raise ValueError("the kernel returned NaN or Inf on the landmarks")
            if not bool(torch.isfinite(sv[:1] * sv[:1]).all()):  # λ = s²; no rcond can help
                raise ValueError(
                    "ntk_last_layer: the kernel values of the landmarks overflow float64: scale "
                    "the rows down"
                )
            evals = torch.flip(sv * sv, [0])  # ascending, as eigh gives them
            evecs, wt = torch.flip(evecs, [1]), torch.flip(wt, [0])
        else:
            u64 = self.landmarks.to(torch.float64)
            K = _call_kernel(kernel, u64, u64)
            if not bool(torch.isfinite(K).all()):
                raise ValueError("the kernel returned NaN or Inf on the landmarks")
            with one_thread_if_small(ut.device, m**3, _SMALL_WORK):
                evals, evecs = torch.linalg.eigh((K + K.T) / 2)
        top = float(evals[-1]) if evals.numel() else 0.0
        if top <= 0:
            raise ValueError("the kernel matrix of the landmarks has no positive eigenvalue")
        keep = torch.flip(torch.nonzero(evals > self.rcond * top).flatten(), [0])  # descending
        if keep.numel() == 0:  # rcond < 1 keeps λ_max; this guards the default m · eps
            raise ValueError(
                f"rcond = {self.rcond:.3g} dropped every eigenvalue of the landmarks' kernel "
                f"matrix (λ_max = {top:.3g}); pass a smaller rcond"
            )
        self.eigenvalues = evals[keep]
        # float64 (the eigensolver's): transform casts to X's precision class
        self._projection64 = evecs[:, keep] / torch.sqrt(evals[keep])
        #: (m, m') projection in the landmarks' precision: kernel rows times it are the features
        self.projection = self._projection64.to(self.dtype)
        #: linear kernel: z = [x, 1] W_k, the features without kernel rows ((d, m') and (m',))
        self._linear = None
        if linear:
            w = wt[keep].T  # [x, 1] W_k = (x Uᵀ + 1) V_k S_k⁻¹ = z
            self._linear = (w[:-1].contiguous(), w[-1].contiguous())
        self._info = info

    @property
    def rank(self) -> int:
        return int(self.projection.shape[1])

    def transform_torch(self, X: Any, *, chunk: int | None = None) -> Any:
        """Features of the rows of a torch tensor ``X`` (n, d) as a torch tensor (n, m')."""
        torch = _torch()
        n = int(X.shape[0])
        dtype = torch.float64 if X.dtype == torch.float64 else torch.float32  # X's precision class
        U = self.landmarks.to(X.device, dtype)
        proj = self._projection64.to(X.device, dtype)
        _refuse_unless_it_fits(
            n * self.rank * (8 if dtype == torch.float64 else 4),
            X.device,
            f"the Nyström features ({n} rows x {self.rank}, {str(dtype).removeprefix('torch.')})",
            f"use fewer landmarks (one feature per kept eigenvalue of their kernel matrix, "
            f"{self.rank} of {int(U.shape[0])} here) or transform the rows in parts",
        )
        out = torch.empty((n, self.rank), dtype=dtype, device=X.device)
        step = _rows_per_chunk(U.shape[0]) if chunk is None else check_positive_int(chunk, "chunk")
        width = int(np.prod(X.shape[1:])) if X.ndim > 1 else 1
        linear = None
        if self._linear is not None and X.ndim == 2 and X.shape[1] == U.shape[1]:
            linear = tuple(w.to(X.device, dtype) for w in self._linear)
        with one_thread_if_small(X.device, min(n, step) * U.shape[0] * width, _SMALL_WORK):
            for s in range(0, n, step):
                rows = X[s : s + step].to(dtype)
                if linear is not None:
                    z = torch.addmm(linear[1], rows, linear[0])
                    if bool(torch.isfinite(z).all()):
                        out[s : s + step] = z
                        continue  # else the kernel rows below raise what is wrong
                out[s : s + step] = _call_kernel(self.kernel, rows, U) @ proj
        return out

    def transform(self, X: Any, *, chunk: int | None = None) -> Any:
        """Features ``Z`` (n, m') of ``X`` (n, d), in ``X``'s framework and device.

        Kernel rows are computed in ``X``'s precision class (float64 for float64, float32 for every
        other float dtype), ``chunk`` rows at a time, so neither an ``n × n`` matrix nor the full
        ``n × m`` kernel block ever exists. ``Z`` has that dtype.
        """
        xt, info = _tensor(X, "X")
        if xt.ndim < 2 or (xt.ndim == 2 and xt.shape[1:] != self.landmarks.shape[1:]):
            raise ValueError(
                f"X must have rows shaped like the landmarks {tuple(self.landmarks.shape[1:])}, "
                f"got {tuple(xt.shape)}"
            )
        return from_torch(self.transform_torch(xt, chunk=chunk), info)


def nystrom_features(
    X: Any, landmarks: Any, kernel: Any, *, rcond: float | None = None, chunk: int | None = None
) -> Any:
    """Nyström features ``z_x = (K_UU)^{†/2} k(U, x)`` of every row of ``X`` (Borsos et al., §2).

    Parameters
    ----------
    X : array (n, d)
        numpy, torch (CPU / CUDA) or cupy.
    landmarks : array (m, d)
        The landmark rows U (the paper draws m = 2000 of them at random from labeled ∪ pool).
    kernel : "ntk_last_layer", "relu_ntk" (depth 1) or callable
        See :func:`make_kernel`.
    rcond : float, optional
        Relative eigenvalue cutoff (see :class:`Nystrom`).
    chunk : int, optional
        Rows per kernel block.

    Returns
    -------
    Z : array (n, m') in ``X``'s framework; float64 for float64 ``X``, float32 otherwise.
        ``Z_U Z_Uᵀ = K_UU`` on the landmarks (up to the dropped spectrum).

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.bilevel import nystrom_features, relu_ntk
    >>> X = np.random.default_rng(0).normal(size=(50, 3))
    >>> Z = nystrom_features(X, X[:10], "relu_ntk")
    >>> bool(np.allclose(Z[:10] @ Z[:10].T, relu_ntk(X[:10])))
    True
    """
    return Nystrom(landmarks, make_kernel(kernel), rcond=rcond).transform(X, chunk=chunk)


# ---------------------------------------------------------------------------------------------
# the inner problem: multinomial logistic regression on z with weight decay


def _loss_grad(W: Any, Z: Any, T: Any, w: Any, reg: float) -> tuple[Any, Any, Any]:
    """F(W), ∇F(W) (C, m) and the probabilities P (s, C); float64 tensors."""
    torch = _torch()
    logp = torch.log_softmax(Z @ W.T, dim=1)
    P = torch.exp(logp)
    f = -(w * (T * logp).sum(1)).sum() + reg * (W * W).sum()
    g = (w[:, None] * (P - T)).T @ Z + 2 * reg * W
    return f, g, P


def _hvp(P: Any, Z: Any, w: Any, reg: float, D: Any) -> Any:
    """``H D`` with ``H = Σ_i w_i (diag p_i - p_i p_iᵀ) ⊗ z_i z_iᵀ + 2λ I`` (closed form)."""
    M = Z @ D.T  # (s, C): D z_i
    J = P * (M - (P * M).sum(1, keepdim=True))  # (diag p - p pᵀ) D z_i
    return (w[:, None] * J).T @ Z + 2 * reg * D


def _float64_inputs(
    Z: Any, T: Any, sample_weight: Any, name: str = "Z"
) -> tuple[Any, Any, Any, Any]:
    torch = _torch()
    zt, info = _tensor(Z, name)
    if zt.ndim != 2:
        raise ValueError(f"{name} must be 2-D (s, m), got shape {tuple(zt.shape)}")
    zt = zt.to(torch.float64)
    if not bool(torch.isfinite(zt).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    tt = None
    if T is not None:
        tt = _tensor(T, "targets")[0].to(zt.device)
        if tt.ndim != 2 or tt.shape[0] != zt.shape[0]:
            raise ValueError(
                f"targets must be ({zt.shape[0]}, C) probability rows (one_hot() for classes), "
                f"got shape {tuple(tt.shape)}"
            )
        tt = _check_probs(tt, "targets")
    if sample_weight is None:
        wt = torch.ones(zt.shape[0], dtype=torch.float64, device=zt.device)
    else:
        wt = _tensor(sample_weight, "sample_weight")[0].to(zt.device, torch.float64)
        if (
            tuple(wt.shape) != (zt.shape[0],)
            or bool((wt < 0).any())
            or not bool(torch.isfinite(wt).all())
        ):
            raise ValueError(f"sample_weight must be ({zt.shape[0]},) finite and >= 0")
    return zt, tt, wt, info


def _matrix64(x: Any, name: str, shape: tuple[int, ...], device: Any) -> Any:
    """``x`` as a finite float64 tensor of ``shape`` on ``device``; errors name ``name``."""
    torch = _torch()
    t = _tensor(x, name)[0].to(device, torch.float64)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def inner_objective(
    Z: Any, targets: Any, W: Any, *, reg: float = 1e-4, sample_weight: Any = None
) -> float:
    """``F(W) = Σ_i w_i CE(softmax(W z_i), t_i) + λ |W|²_F`` (eq. 3, inner problem), float64.

    ``CE(p, t) = -Σ_c t_c log p_c``; targets are probability rows (one-hot for known labels).
    """
    reg = _number(reg, "reg", positive=True)
    zt, tt, wt, _ = _float64_inputs(Z, targets, sample_weight)
    if tt is None:
        raise ValueError("targets are required")
    Wt = _matrix64(W, "W", (tt.shape[1], zt.shape[1]), zt.device)
    return float(_loss_grad(Wt, zt, tt, wt, reg)[0])


def inner_hvp(Z: Any, W: Any, V: Any, *, reg: float = 1e-4, sample_weight: Any = None) -> Any:
    """Hessian-vector product of the inner objective at ``W``, exact and in closed form.

    ``H V = Σ_i w_i ((diag p_i - p_i p_iᵀ) V z_i) z_iᵀ + 2λ V`` with ``p_i = softmax(W z_i)``: the
    Hessian of softmax cross-entropy does not depend on the targets.

    Parameters
    ----------
    Z : array (s, m)
        Features of the inner problem's points.
    W, V : arrays (C, m)
    reg : float
        λ (the penalty is ``λ |W|²``, whose Hessian is ``2λ I``).
    sample_weight : array (s,), optional

    Returns
    -------
    (C, m) float64, in ``Z``'s framework.
    """
    torch = _torch()
    reg = _number(reg, "reg", positive=True)
    zt, _, wt, info = _float64_inputs(Z, None, sample_weight)
    Wt = _tensor(W, "W")[0]
    if Wt.ndim != 2 or Wt.shape[1] != zt.shape[1]:
        raise ValueError(f"W must have shape (C, {zt.shape[1]}), got {tuple(Wt.shape)}")
    Wt = _matrix64(Wt, "W", tuple(Wt.shape), zt.device)
    Vt = _matrix64(V, "V", tuple(Wt.shape), zt.device)
    P = torch.softmax(zt @ Wt.T, dim=1)
    return from_torch(_hvp(P, zt, wt, reg, Vt), info)


def conjugate_gradient(
    hvp: Callable[[Any], Any],
    b: Any,
    *,
    steps: int = 30,
    tol: float = 1e-10,
    precond: Callable[[Any], Any] | None = None,
) -> tuple[Any, float, int]:
    """Solve ``H x = b`` for a symmetric positive definite operator given as ``hvp(x) = H x``.

    CG from ``x = 0`` (Hestenes–Stiefel; preconditioned when ``precond(r) ≈ H⁻¹ r`` is given,
    itself symmetric positive definite) on tensors of any shape (the inner product is the sum over
    all entries), at most ``steps`` iterations, stopping early when ``|b - H x| ≤ tol |b|``.

    Returns
    -------
    x : tensor like ``b``
    residual : float
        ``|b - H x| / |b|`` (the recursively updated residual; 0 when ``b = 0``).
    iterations : int
    """
    torch = _torch()
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    x = torch.zeros_like(b)
    r = b.clone()
    bnorm = float(r.norm())
    if bnorm == 0:
        return x, 0.0, 0
    z = r if precond is None else precond(r)
    p = z.clone()
    rz = float((r * z).sum())
    rnorm = bnorm
    it = 0
    for it in range(1, int(steps) + 1):
        Hp = hvp(p)
        curv = float((p * Hp).sum())
        if curv <= 0 or rz <= 0:  # not positive definite along p (only by rounding): stop here
            it -= 1
            break
        alpha = rz / curv
        x += alpha * p
        r -= alpha * Hp
        rnorm = float(r.norm())
        if rnorm <= tol * bnorm:
            break
        z = r if precond is None else precond(r)
        rz_new = float((r * z).sum())
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, rnorm / bnorm, it


def _class_block_preconditioner(P: Any, X: Any, w: Any, reg: float) -> Callable[[Any], Any]:
    """Block-Jacobi over classes: ``B_c = Σ_i w_i p_ic (1 - p_ic) x_i x_iᵀ + 2λ I`` (r × r each),
    the diagonal blocks of the Hessian, Cholesky-factored once; ``M⁻¹ R`` solves each row of R.

    Builds in O(C s r²) and applies in O(C r²); for large r (C r² above ~2²⁵ entries) the plain
    diagonal of the Hessian is used instead.
    """
    torch = _torch()
    C, r = P.shape[1], X.shape[1]
    curv = w[:, None] * P * (1 - P)  # (s, C)
    if C * r * r > (1 << 25):
        diag = curv.T @ (X * X) + 2 * reg  # (C, r)
        return lambda R: R / diag
    B = torch.stack([(X * curv[:, c : c + 1]).T @ X for c in range(C)])  # no (s, C, r) temporary
    B.diagonal(dim1=1, dim2=2).add_(2 * reg)
    L, info = torch.linalg.cholesky_ex(B)
    if bool(info.any()):  # rounding: fall back to the diagonal
        diag = B.diagonal(dim1=1, dim2=2)
        return lambda R: R / diag
    Binv = torch.cholesky_inverse(L)  # applying an explicit inverse is a cheap batched mat-vec
    return lambda R: (Binv @ R.unsqueeze(2)).squeeze(2)


def _solve_hessian(
    P: Any,
    X: Any,
    w: Any,
    reg: float,
    B: Any,
    *,
    steps: int,
    tol: float,
    Minv: Any = None,
    mean: Any = None,
) -> tuple[Any, float, int]:
    """``H⁻¹ B`` for ``H = Σ_i w_i D_i ⊗ x_i x_iᵀ + 2λ I`` (``D_i = diag p_i - p_i p_iᵀ``).

    Softmax is invariant to adding one vector to every class row, so ``D_i 1 = 0`` and
    ``H (1 uᵀ) = 2λ 1 uᵀ``: the class-mean part of ``B`` is solved exactly as ``mean / 2λ`` and CG
    runs on the zero-class-mean part, which ``H`` keeps zero-mean. The block-Jacobi preconditioner
    is projected onto that subspace too (unprojected, its inverse blocks ``1 / p_c (1 - p_c)``
    would mix in the direction of curvature 2λ and undo the preconditioning). ``Minv`` is the
    block-Jacobi inverse (:func:`_class_block_preconditioner`, possibly built at a nearby W: any
    fixed SPD preconditioner is valid) or None for plain CG. The residual is relative to the
    zero-mean part. ``mean`` is ``B``'s class mean when the caller knows it exactly (Newton:
    ``∇F``'s is ``2λ mean(U)``); computed from ``B`` it carries rounding of ``eps |B|``, which the
    division by 2λ blows up.
    """
    B0 = B - B.mean(0, keepdim=True)
    if mean is None:
        mean = B.mean(0, keepdim=True)
    M = None
    if Minv is not None:

        def M(R: Any) -> Any:
            Y = Minv(R - R.mean(0, keepdim=True))
            return Y - Y.mean(0, keepdim=True)

    x, res, it = conjugate_gradient(
        lambda D: _hvp(P, X, w, reg, D), B0, steps=steps, tol=tol, precond=M
    )
    return x + mean / (2 * reg), res, it


def _newton(
    X: Any,
    T: Any,
    w: Any,
    reg: float,
    U0: Any,
    *,
    tol: float,
    max_iter: int,
    cg_max: int,
    w_rtol: float = 0.0,
) -> tuple[Any, dict]:
    """Newton-CG with Armijo backtracking on F (float64); ``U0`` is the warm start.

    Stops when ``|∇F| ≤ tol · |∇F(0)|`` or ``|∇F| ≤ w_rtol · 2λ |U|``: F is 2λ-strongly convex, so
    ``|U - U*| ≤ |∇F| / 2λ`` and the second test bounds the relative error of ``U`` by ``w_rtol``
    whatever the scale of ``∇F(0)`` (near-separable data: ``|∇F(0)|`` is 10⁶ times the gradient
    at which ``U`` is still a few percent off).
    """
    U = U0.clone()

    def exact_mean(g: Any, U: Any) -> Any:
        # The data part of ∇F has class-mean 0 (softmax is shift-invariant), so ∇F's class mean is
        # 2λ mean(U). Its rounding (eps |∇F|, large for large features) would be solved as
        # mean / 2λ in _solve_hessian and swamp the step: no Armijo step passed from |z| ~ 1e15.
        return g - g.mean(0, keepdim=True) + (2 * reg) * U.mean(0, keepdim=True)

    f, g, P = _loss_grad(U, X, T, w, reg)
    g = exact_mean(g, U)
    # scale of the stopping test: the gradient at W = 0 (uniform predictions)
    C = T.shape[1]
    g0 = float(((w[:, None] * (1.0 / C - T)).T @ X).norm()) if X.shape[0] else 0.0
    it = 0
    gn = float(g.norm())
    Minv = None

    def converged(gn: float, U: Any) -> bool:
        return gn <= tol * max(g0, 1e-300) or gn <= w_rtol * 2 * reg * float(U.norm())

    while it < max_iter and not converged(gn, U):
        eta = min(0.5, math.sqrt(gn / max(g0, 1e-300)))  # Eisenstat–Walker forcing: superlinear
        if Minv is None:
            Minv = _class_block_preconditioner(P, X, w, reg)
        mean = -(2 * reg) * U.mean(0, keepdim=True)  # -∇F's class mean, exactly
        d, _, cg_it = _solve_hessian(
            P, X, w, reg, -g, steps=cg_max, tol=eta, Minv=Minv, mean=mean
        )
        if cg_it > _STALE_CG:  # the preconditioner was built at an older W: rebuild next time
            Minv = None
        slope = float((g * d).sum())
        if slope >= 0:  # rounding only; fall back to steepest descent
            d, slope = -g, -gn * gn
        t, accepted = 1.0, False
        d_norm, floor = float(d.norm()), 4 * _EPS64 * float(U.norm())
        for _ in range(60):
            f_new, g_new, P_new = _loss_grad(U + t * d, X, T, w, reg)
            if float(f_new) <= float(f) + 1e-4 * t * slope:
                accepted = True
                break
            t *= 0.5
            if t * d_norm <= floor:  # the step would no longer change U
                break
        if not accepted:
            break  # no decrease representable: converged to rounding
        U = U + t * d
        f, g, P = f_new, exact_mean(g_new, U), P_new
        gn = float(g.norm())
        it += 1
    if Minv is None and X.shape[0]:
        Minv = _class_block_preconditioner(P, X, w, reg)
    info = {"loss": float(f), "grad_norm": gn, "iters": it, "P": P, "grad0": g0, "precond": Minv}
    return U, info


def solve_inner(
    Z: Any,
    targets: Any,
    *,
    reg: float = 1e-4,
    sample_weight: Any = None,
    W0: Any = None,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> tuple[Any, dict]:
    """Minimise the inner objective (eq. 3) by full-batch Newton-CG in float64.

    ``F(W) = Σ_i w_i CE(softmax(W z_i), t_i) + λ |W|²``, ``W`` (C, m), no bias: the paper's
    ``h_w(x) = σ(wᵀ z_x)`` has none (with :func:`linear_ntk` the constant is already in the kernel).
    ``F`` is strongly convex (λ > 0); Newton-CG (truncated Newton with Eisenstat–Walker forcing,
    an Armijo line search, exact Hessian-vector products and the class-block preconditioner of
    :func:`inverse_hvp`) converges globally and quadratically near the optimum. This is the
    default of :func:`bilevel_select` without augmentation: the inner set ``labeled ∪ B`` is small
    and fixed, so a full-batch second-order method with a warm start needs a handful of Newton
    steps per greedy pick (3–4 on average, 15 for the first solve, on bench_bilevel.py's pools),
    where the paper's 10³ Adam steps of batch 64 only
    approach the optimum that the implicit-function gradient of eq. 2 assumes.

    Parameters
    ----------
    Z : array (s, m)
    targets : array (s, C)
        Probability rows (one-hot for labels, soft pseudo-labels otherwise).
    reg : float > 0, default 1e-4
        λ (the paper's value).
    sample_weight : array (s,), optional
    W0 : array (C, m), optional
        Warm start (default 0; the paper starts from random weights, irrelevant for a strictly
        convex problem solved to tolerance).
    tol : float, default 1e-10
        Stop when ``|∇F| ≤ tol · 2λ |W|``: F is 2λ-strongly convex, so ``W`` is then within
        ``tol · |W|`` of the optimum, however large ``|∇F(0)|`` is (well-separated classes), and
        from any warm start. Newton also stops at the rounding floor ``|∇F| ≤ 1e-14 · |∇F(0)|``
        and when no step decreases F any more.
    max_iter : int
        Newton iterations.

    Returns
    -------
    W : (C, m) float64 in ``Z``'s framework
    info : dict with ``loss``, ``grad_norm``, ``iters``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.bilevel import solve_inner
    >>> Z = np.array([[1.0, 0.0], [0.0, 1.0]]); T = np.array([[0.9, 0.1], [0.2, 0.8]])
    >>> W, info = solve_inner(Z, T)
    >>> np.round(np.exp(Z @ W.T) / np.exp(Z @ W.T).sum(1, keepdims=True), 3).tolist()
    [[0.9, 0.1], [0.2, 0.8]]
    """
    torch = _torch()
    reg = _number(reg, "reg", positive=True)
    tol = _number(tol, "tol", minimum=0.0)
    max_iter = check_positive_int(max_iter, "max_iter")
    zt, tt, wt, info = _float64_inputs(Z, targets, sample_weight)
    if tt is None:
        raise ValueError("targets are required")
    C = tt.shape[1]
    U0 = torch.zeros((C, zt.shape[1]), dtype=torch.float64, device=zt.device)
    if W0 is not None:
        U0 = _matrix64(W0, "W0", (C, zt.shape[1]), zt.device)
    with one_thread_if_small(zt.device, zt.shape[0] * zt.shape[1] * C, _SMALL_WORK):
        U, out = _newton(
            zt, tt, wt, reg, U0, tol=_NEWTON_FLOOR, max_iter=max_iter,
            cg_max=max(250, 2 * C * zt.shape[1]), w_rtol=tol,
        )  # fmt: skip
    out.pop("P")
    out.pop("precond")
    return from_torch(U, info), out


def _adam(
    W0: Any,
    batch: Callable[[np.random.Generator], tuple[Any, Any, Any]],
    s: int,
    reg: float,
    *,
    iters: int,
    lr: float,
    rng: np.random.Generator,
) -> Any:
    """Adam (Kingma & Ba; β = (0.9, 0.999), ε = 1e-8, fresh moments per call) on the minibatch
    estimate ``(s / |b|) Σ_b w ℓ + λ|W|²`` of F, over ``batch(rng) -> (Z_b, T_b, w_b)``.

    The minibatch gradient is the closed form ``(s / |b|) Σ_b w (p - t) zᵀ + 2λ W``: no autograd.
    """
    torch = _torch()
    W = W0.clone()
    m1, m2 = torch.zeros_like(W), torch.zeros_like(W)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, int(iters) + 1):
        zb, tb, wb = batch(rng)
        P = torch.softmax(zb @ W.T, dim=1)
        g = (s / zb.shape[0]) * ((wb[:, None] * (P - tb)).T @ zb) + 2 * reg * W
        m1.mul_(b1).add_(g, alpha=1 - b1)
        m2.mul_(b2).addcmul_(g, g, value=1 - b2)
        step = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        W -= step * m1 / (m2.sqrt() + eps * math.sqrt(1 - b2**t))
    return W


# ---------------------------------------------------------------------------------------------
# the outer step: ∇G, H⁻¹ ∇G, scores


class _Span:
    """An orthonormal basis Q (m, r) of span{z_i : i ∈ S}, grown by Gram–Schmidt, and X = Z_S Q.

    The inner Hessian ``H = 2λ I + Σ_i D_i ⊗ z_i z_iᵀ`` maps ``span(Q)`` (row space of ``V``) into
    itself and is ``2λ I`` on its complement. So ``H⁻¹ G = G_⊥ / 2λ + (H_r⁻¹ G Q) Qᵀ`` with
    ``H_r`` the restriction to C × r coordinates: CG runs on C·r unknowns instead of C·m, and the
    complement (where the paper's 30 CG steps on the full space would spend one step) is exact.
    """

    def __init__(self, m: int, device: Any) -> None:
        torch = _torch()
        self.Q = torch.zeros((m, 0), dtype=torch.float64, device=device)
        self.X = torch.zeros((0, 0), dtype=torch.float64, device=device)
        self.Zs = torch.zeros((0, m), dtype=torch.float64, device=device)

    def add(self, Znew: Any) -> int:
        """Add rows (k, m) to S; returns how many basis vectors were added."""
        torch = _torch()
        Znew = Znew.to(torch.float64)
        fresh = []
        Q = self.Q
        for z in Znew:
            q = z.clone()
            for _ in range(2):  # twice is enough (Kahan–Parlett)
                q -= Q @ (Q.T @ q)
                for f in fresh:
                    q -= f * (f @ q)
            nz = float(q.norm())
            if nz > 1e-10 * max(float(z.norm()), 1e-300):
                fresh.append(q / nz)
        if fresh:
            Qn = torch.stack(fresh, 1)
            self.X = torch.cat([self.X, self.Zs @ Qn], 1)
            self.Q = torch.cat([Q, Qn], 1)
        self.X = torch.cat([self.X, Znew @ self.Q], 0)
        self.Zs = torch.cat([self.Zs, Znew], 0)
        return len(fresh)


def _inverse_hvp_reduced(
    span: _Span,
    P: Any,
    w: Any,
    G: Any,
    reg: float,
    steps: int,
    tol: float,
    precondition: bool,
    Minv_at_P: Any = None,
) -> tuple[Any, float, int]:
    """``V = H⁻¹ G`` through the invariant subspace ``span(Q)`` (see :class:`_Span`)."""
    Q, X = span.Q, span.X
    Gr = G @ Q
    V = (G - Gr @ Q.T) / (2 * reg)
    if Q.shape[1] == 0:
        return V, 0.0, 0
    Minv = None
    if precondition:
        Minv = _class_block_preconditioner(P, X, w, reg) if Minv_at_P is None else Minv_at_P
    Vr, res, it = _solve_hessian(P, X, w, reg, Gr, steps=steps, tol=tol, Minv=Minv)
    return V + Vr @ Q.T, res, it


def inverse_hvp(
    Z: Any,
    W: Any,
    G: Any,
    *,
    reg: float = 1e-4,
    sample_weight: Any = None,
    cg_steps: int = 30,
    tol: float = 1e-10,
    precondition: bool = True,
) -> tuple[Any, dict]:
    """``V = H⁻¹ G`` for the inner Hessian at ``W`` by conjugate gradients (eq. 2; Pedregosa 2016).

    ``H = Σ_i w_i (diag p_i - p_i p_iᵀ) ⊗ z_i z_iᵀ + 2λ I`` over the inner points ``Z``. The row
    space of ``Z`` is invariant under ``H`` and ``H = 2λ I`` on its orthogonal complement, so the
    component of ``G`` outside ``span(Z)`` is divided by 2λ exactly and ``cg_steps`` CG iterations
    (Hessian-vector products of the inner objective, :func:`inner_hvp`) run on the rest, in an
    orthonormal basis of ``span(Z)`` (C · rank(Z) unknowns).

    With ``precondition=True`` (the default; an addition to the paper) CG is preconditioned by the
    class-diagonal blocks of ``H`` (``Σ_i w_i p_ic (1 - p_ic) x_i x_iᵀ + 2λ I``, Cholesky-factored):
    ``H`` has condition numbers up to ``|z|² s / 2λ`` (10⁷ and more at λ = 10⁻⁴), where 30 plain
    CG steps can leave a relative residual above 1; preconditioned, 30 steps typically reach
    10⁻² to 10⁻³. ``precondition=False`` is the paper's plain CG.

    Parameters
    ----------
    Z : array (s, m)
    W, G : arrays (C, m)
    reg : float
    sample_weight : array (s,), optional
    cg_steps : int, default 30 (the paper's)
    tol : float
        Early stop at relative residual ``tol``.
    precondition : bool, default True

    Returns
    -------
    V : (C, m) float64 in ``Z``'s framework
    info : dict with ``residual`` (relative, in the subspace) and ``iters``.
    """
    torch = _torch()
    reg = _number(reg, "reg", positive=True)
    cg_steps = check_positive_int(cg_steps, "cg_steps")
    tol = _number(tol, "tol", minimum=0.0)
    precondition = check_bool(precondition, "precondition")
    zt, _, wt, info = _float64_inputs(Z, None, sample_weight)
    Wt = _tensor(W, "W")[0]
    if Wt.ndim != 2 or Wt.shape[1] != zt.shape[1]:
        raise ValueError(f"W must have shape (C, {zt.shape[1]}), got {tuple(Wt.shape)}")
    Wt = _matrix64(Wt, "W", tuple(Wt.shape), zt.device)
    Gt = _matrix64(G, "G", tuple(Wt.shape), zt.device)
    span = _Span(zt.shape[1], zt.device)
    span.add(zt)
    P = torch.softmax(zt @ Wt.T, dim=1)
    with one_thread_if_small(zt.device, zt.shape[0] * zt.shape[1] * Gt.shape[0], _SMALL_WORK):
        V, res, it = _inverse_hvp_reduced(span, P, wt, Gt, reg, cg_steps, tol, precondition)
    return from_torch(V, info), {"residual": res, "iters": it}


def _upper_pass(Z: Any, W: Any, T: Any) -> tuple[Any, Any, float]:
    """One chunked pass over the pool: ``A = softmax(Z Wᵀ) - T`` (n, C) in Z's dtype,
    ``∇G = Aᵀ Z`` (C, m) float64 and ``G`` (the summed cross-entropy)."""
    torch = _torch()
    n, m = Z.shape
    A = torch.empty((n, T.shape[1]), dtype=Z.dtype, device=Z.device)
    grad = torch.zeros((T.shape[1], m), dtype=torch.float64, device=Z.device)
    Wc = W.to(Z.dtype)
    loss = 0.0
    step = _rows_per_chunk(m)
    for s in range(0, n, step):
        zc = Z[s : s + step]
        logp = torch.log_softmax((zc @ Wc.T).to(torch.float64), dim=1)
        tc = T[s : s + step]
        loss -= float((tc * logp).sum())
        a = (torch.exp(logp) - tc).to(Z.dtype)
        A[s : s + step] = a
        grad += (a.T @ zc).to(torch.float64)
    return A, grad, loss


def candidate_scores(Z: Any, A: Any, V: Any) -> Any:
    """Scores of eq. 2, ``∇_W ℓ_xᵀ V = a_xᵀ V z_x`` for every row (``a_x = p_x - ỹ_x``).

    The per-sample gradient ``a_x ⊗ z_x`` is rank one, so this is a row-wise product: on the CPU
    the C++ factored kernel (:meth:`fastal.sparse.FactoredPhi.adjoint`, one pass, no
    temporaries), elsewhere row tiles of ``rowsum(A ⊙ (Z Vᵀ))``. Never an ``n × C·m`` matrix.

    Parameters
    ----------
    Z : array (n, m)
    A : array (n, C)
        Same framework, device and dtype as ``Z`` (cast on purpose).
    V : array (C, m)
        ``H⁻¹ ∇G``.

    Returns
    -------
    (n,) float64 in ``Z``'s framework.
    """
    from .sparse import FactoredPhi

    torch = _torch()
    zt, info = _tensor(Z, "Z")
    at = _tensor(A, "A")[0].to(zt.device, zt.dtype)
    vt = _tensor(V, "V")[0].to(zt.device, torch.float64)
    if at.shape[0] != zt.shape[0] or tuple(vt.shape) != (at.shape[1], zt.shape[1]):
        raise ValueError(
            f"need Z (n, m), A (n, C), V (C, m); got {tuple(zt.shape)}, {tuple(at.shape)}, "
            f"{tuple(vt.shape)}"
        )
    return from_torch(FactoredPhi(at, zt, 1).adjoint(vt), info)


# ---------------------------------------------------------------------------------------------
# the greedy driver


class BilevelResult(NamedTuple):
    """Picks in selection order (int64 numpy) and a diagnostics dict."""

    indices: np.ndarray
    diagnostics: dict


def one_hot(labels: Any, n_classes: int) -> np.ndarray:
    """Integer classes (k,) as float64 one-hot rows (k, C)."""
    lab = np.asarray(_interop.host_numpy(labels))
    if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(
            f"labels must be 1-D integer classes, got dtype {lab.dtype} and shape {lab.shape}"
        )
    if lab.size and (lab.min() < 0 or lab.max() >= n_classes):
        raise ValueError(
            f"labels must be classes in [0, {n_classes}), got values in [{lab.min()}, {lab.max()}]"
        )
    out = np.zeros((lab.size, n_classes))
    out[np.arange(lab.size), lab] = 1.0
    return out


def _check_probs(P: Any, name: str) -> Any:
    """Finite rows in [0, 1] summing to 1, renormalised exactly: a new float64 tensor.

    The sum tolerance depends on the storage dtype of ``P``: ``max(1e-3, 2 eps)`` (1e-3 for
    float32 / float64, 2⁻⁹ for float16, 2⁻⁶ for bfloat16; :func:`fastal._validate.prob_sum_tol`).
    ``P`` (2-D) is checked in row chunks, so the result is the only whole float64 copy (a check of
    the whole made a second one and the masks of ``torch.isfinite``).
    """
    torch = _torch()
    tol = prob_sum_tol(P.dtype)
    storage = str(P.dtype).removeprefix("torch.")
    in_range = sums_ok = True
    step = _rows_per_chunk(P.shape[1])
    for s in range(0, P.shape[0], step):  # NaN anywhere is reported first, then range, then sums
        c = P[s : s + step].to(torch.float64)
        if not bool(torch.isfinite(c).all()):
            raise ValueError(f"{name} contains NaN or Inf")
        in_range = in_range and not bool(((c < 0) | (c > 1)).any())
        sums_ok = sums_ok and not bool(((c.sum(1) - 1).abs() > tol).any())
    if not in_range:
        raise ValueError(f"{name} must hold probabilities in [0, 1]")
    if not sums_ok:
        raise ValueError(f"{name} rows must sum to 1 (within {tol:.3g} for {storage})")
    T = P.to(torch.float64, copy=True)
    return T.div_(T.sum(1, keepdim=True))


class _CheckedProbs(NamedTuple):
    """Pseudo-label rows already checked and normalised by :func:`_check_probs` (or a softmax), in
    a float64 buffer that the caller hands over: :func:`bilevel_select` renormalises them in place,
    as ``_check_probs`` would in a copy, and writes the labeled rows' targets into them."""

    probs: Any


def _best_first(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest of the finite ``scores``, highest first, ties to the lowest
    position: ``np.lexsort((np.arange(n), -scores))[:k]`` in O(n + k log k) (a partition, then a
    sort of the k) instead of an O(n log n) sort of every candidate."""
    n = scores.size
    if k == 1:
        return np.array([int(np.argmax(scores))], dtype=np.int64)  # argmax: the first maximum
    if k >= n:
        return np.lexsort((np.arange(n), -scores)).astype(np.int64)
    kth = np.partition(scores, n - k)[n - k]  # the k-th highest value
    above = np.flatnonzero(scores > kth)
    pos = np.concatenate([above, np.flatnonzero(scores == kth)[: k - above.size]])
    return pos[np.lexsort((pos, -scores[pos]))].astype(np.int64)


def _random_count(random_fraction: float, budget: int) -> int:
    return math.floor(random_fraction * budget + 1e-9)


def resolve_solver(solver: str, augment: Any) -> str:
    """The inner solver ``solver`` ("auto", "newton" or "adam") names: "auto" is Adam with
    augmentation (its batches are augmented), Newton-CG without."""
    return "adam" if solver == "adam" or (solver == "auto" and augment is not None) else "newton"


def empty_diagnostics(solver: str, rank: int) -> dict[str, Any]:
    """:func:`bilevel_select`'s diagnostics before its first step (what a budget of 0 returns)."""
    return {
        "solver": solver,
        "rank": rank,
        "inner_loss": [],
        "inner_iters": [],
        "inner_grad_norm": [],
        "upper_loss": [],
        "cg_residual": [],
        "cg_iters": [],
        "pick_scores": [],
        "first_scores": None,
        "random": np.empty(0, np.int64),
        "greedy": np.empty(0, np.int64),
        "seconds": {"inner": 0.0, "pool_pass": 0.0, "cg": 0.0, "scores": 0.0, "total": 0.0},
        "n_steps": 0,
    }


def bilevel_select(
    Z: Any,
    targets_labeled: Any,
    soft_pool: Any,
    labeled: Any,
    budget: int,
    *,
    reg: float = 1e-4,
    cg_steps: int = 30,
    cg_tol: float = 1e-10,
    precondition: bool = True,
    random_fraction: float = 0.1,
    per_step: int = 1,
    solver: str = "auto",
    inner_tol: float = 1e-6,
    inner_iters: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-2,
    augment: Callable[[Any, np.random.Generator], Any] | None = None,
    raw: Any = None,
    featurize: Callable[[Any], Any] | None = None,
    seed: Any = None,
    progress: bool = False,
) -> BilevelResult:
    """Greedy bilevel coreset selection (Borsos et al. 2021, eq. 2–3, Alg. 1) on features ``Z``.

    Inner points ``S = labeled ∪ B`` (labels for labeled rows, pseudo-labels for ``B``); upper
    objective ``G`` = summed cross-entropy over *all* ``n`` rows (labels on labeled rows,
    pseudo-labels elsewhere, eq. 3). Each outer step: solve the inner problem (warm-started),
    compute ``A = softmax(Z Wᵀ) - T`` and ``∇G = Aᵀ Z`` in one pass over the pool, ``V = H⁻¹ ∇G``
    by ``cg_steps`` CG steps (:func:`inverse_hvp`), score every remaining candidate by
    ``a_xᵀ V z_x`` (:func:`candidate_scores`) and add the best (ties to the lowest index).

    Random fill (the paper's practice, §3: "90% by Alg. 1, 10% uniformly at random"):
    ``⌊random_fraction · budget⌋`` points are drawn uniformly (seeded) from the unlabeled pool
    *first*; they enter the inner problem with their pseudo-labels, like greedy picks, since they
    will be labeled too, so the greedy part summarises the pool *given* them (it does not spend
    picks on what the random points already cover). They come first in ``indices``.

    ``per_step > 1`` (a departure from the paper, for large budgets): each outer step adds the
    ``per_step`` best-scoring candidates at once (the last step fewer), dividing the number of
    inner solves and pool passes by ``per_step``; the points of one step do not see each other,
    so batches are less diverse than with the paper's one-at-a-time greedy.

    Cost, and large pools: there are ``⌈(budget - ⌊random_fraction · budget⌋) / per_step⌉`` outer
    steps, and each makes two passes over ``Z`` (``∇G`` and the scores, about ``2 n m C``
    multiply-adds, linear in ``n``) plus an inner solve and a CG solve whose cost grows with
    ``|labeled|`` + picks and ``m``, not with ``n``. Nothing bounds the total time. On a 2-core
    CPU the two passes took 0.12 s per step at ``n = 10⁵`` and 1.2 s at ``n = 10⁶`` (``m = 513``,
    ``C = 10``), and the Newton solve 0.13 s per step with 100 labeled rows but 2.7–8 s with 1000:
    the paper's budget of 1000 with ``per_step=1`` at ``n = 10⁶`` is 20–60 minutes, and
    ``per_step=10`` cuts that tenfold. For pools of 10⁵ rows and more, pass ``per_step`` of about
    ``budget / 100``. The Newton solve is capped at 100 Newton iterations of at most 250 CG steps
    each and stops at ``inner_tol``; a looser ``inner_tol`` (1e-4) shortens it on near-separable
    data. The Adam solver costs ``inner_iters`` minibatch steps per outer step.

    Memory: besides ``Z``, the pass keeps ``A`` (n, C) in ``Z``'s dtype, the targets (n, C) float64
    (a new tensor, or with :class:`fastal.strategies.BilevelCoreset` the strategy's own buffer)
    and a few float64 vectors of length ``n``; finiteness and probabilities are checked in row
    chunks.

    Parameters
    ----------
    Z : array (n, m)
        Features of every row (labeled and pool), e.g. :func:`nystrom_features`. float32 or
        float64; the pool passes run in this dtype, the inner problem and CG in float64.
    targets_labeled : array (|L|,) int or (|L|, C) float, or None
        Labels of the ``labeled`` rows in the order of ``labeled``; None uses their pseudo-labels.
    soft_pool : array (n, C)
        Pseudo-label distributions ỹ of every row (the labeled rows' are used only when
        ``targets_labeled`` is None).
    labeled : array of int, or None
    budget : int
    reg : float > 0, default 1e-4
        λ of eq. 3.
    cg_steps, cg_tol : CG iterations (paper: 30) and relative-residual early stop.
    precondition : bool, default True
        Block-Jacobi preconditioned CG (see :func:`inverse_hvp`); False: plain CG, the paper's.
    random_fraction : float in [0, 1], default 0.1
    per_step : int >= 1, default 1
        Picks per outer step (see above; 1 is the paper's algorithm).
    solver : {"auto", "newton", "adam"}
        Inner solver. ``"auto"``: Newton-CG (:func:`solve_inner`) without ``augment``, Adam with it.
        ``"adam"`` is the paper's: ``inner_iters`` steps (paper: 10³) of batch ``batch_size``
        (paper: 64) at learning rate ``lr`` (not given in the paper), warm-started; the first
        solve starts from zero weights where Alg. 1 draws them at random (seeded runs then do not
        depend on an initialisation draw; the problem is strictly convex).
    inner_tol : float, default 1e-6
        Newton stops when ``|∇F| ≤ inner_tol · 2λ |W|``: F is 2λ-strongly convex, so W is then
        within ``inner_tol · |W|`` of the optimum (or at the rounding floor ``|∇F| ≤ 1e-14 ·
        |∇F(0)|``). A test relative to ``|∇F(0)|`` alone stopped with W a few percent off on
        near-separable data and skipped the re-solve after most picks.
    inner_iters : int >= 1, default 1000
        Adam steps per inner solve (``solver="adam"``).
    batch_size : int >= 1, default 64
        Adam's minibatch size.
    lr : float > 0, default 1e-2
        Adam's learning rate.
    augment : callable ``augment(raw_rows, rng) -> raw_rows``, optional
        Data augmentation on raw rows (torch tensors, the rows of ``raw``) for the inner minibatches
        (the paper's keyword-spotting augmentations); features are recomputed with ``featurize``
        for every minibatch. The Hessian of eq. 2 is taken on the un-augmented features.
    raw : array (n, ...), optional
        Raw rows (e.g. the kernel's inputs); required with ``augment``.
    featurize : callable ``featurize(raw_rows) -> (k, m) tensor``, optional
        Features of raw rows, e.g. ``Nystrom.transform_torch``; required with ``augment``.
    seed : int or numpy Generator
        Random fill and minibatches.
    progress : bool
        tqdm bar over the picks.

    Returns
    -------
    BilevelResult
        ``indices`` (budget,) int64, in selection order; ``diagnostics``: ``random`` and
        ``greedy`` picks, per outer step ``inner_loss``, ``inner_iters``, ``inner_grad_norm``,
        ``upper_loss``, ``cg_residual``, ``cg_iters``, ``pick_scores``; ``first_scores`` (n,)
        float64 (NaN for non-candidates) of the first greedy step; ``rank`` (m); ``seconds``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.bilevel import bilevel_select
    >>> rng = np.random.default_rng(0)
    >>> Z, soft = rng.normal(size=(100, 6)), rng.dirichlet(np.ones(3), 100)
    >>> res = bilevel_select(Z, [0, 1, 2], soft, [0, 1, 2], 10, seed=0)
    >>> len(set(res.indices.tolist())), len(res.diagnostics["random"])
    (10, 1)
    """
    from tqdm.auto import tqdm

    torch = _torch()
    t_start = time.perf_counter()
    zt, zinfo = _tensor(Z, "Z")
    if zt.ndim != 2 or zt.shape[0] == 0 or zt.shape[1] == 0:
        raise ValueError(f"Z must be 2-D (n, m) and non-empty, got shape {tuple(zt.shape)}")
    if not zt.is_floating_point():
        raise TypeError(f"Z must be floating point, got {zt.dtype}")
    if zt.dtype not in (torch.float32, torch.float64):
        zt = zt.float()
    if not _all_finite(zt):
        raise ValueError("Z contains NaN or Inf")
    zt = zt.contiguous()
    n, m = zt.shape
    dev = zt.device
    checked = isinstance(soft_pool, _CheckedProbs)
    st = soft_pool.probs if checked else _tensor(soft_pool, "soft_pool")[0]
    if st.ndim != 2 or st.shape[0] != n:
        raise ValueError(
            f"soft_pool must be (n, C) with n = {n} rows like Z, got shape {tuple(st.shape)}"
        )
    if checked:  # what _check_probs returns, in the buffer handed over (no n × C copy)
        T = st.to(dev)
        T.div_(T.sum(1, keepdim=True))
    else:  # a new tensor: the labeled rows are written into it below
        T = _check_probs(st.to(dev), "soft_pool")
    C = int(T.shape[1])
    lab = check_indices(labeled, n, "labeled", like=zinfo)
    if targets_labeled is not None:
        tl = targets_labeled if _interop.is_array(targets_labeled) else np.asarray(targets_labeled)
        scalar = len(_interop.describe(tl, "targets_labeled").shape) == 0  # as_torch makes it (1,)
        tl_t = _tensor(tl, "targets_labeled")[0]
        if scalar or tl_t.ndim == 0:
            raise ValueError(
                "targets_labeled must be 1-D classes or 2-D probabilities, got a scalar"
            )
        if tl_t.shape[0] != lab.size:
            raise ValueError(
                f"targets_labeled must have one entry per labeled row ({lab.size}), "
                f"got {tl_t.shape[0]}"
            )
        if tl_t.ndim == 1:
            T[torch.from_numpy(lab).to(dev)] = torch.from_numpy(
                one_hot(_interop.host_numpy(tl_t), C)
            ).to(dev)
        elif tl_t.ndim == 2 and tl_t.shape[1] == C and tl_t.is_floating_point():
            T[torch.from_numpy(lab).to(dev)] = _check_probs(tl_t.to(dev), "targets_labeled")
        else:
            raise ValueError(
                f"targets_labeled must be (|L|,) integer classes or (|L|, {C}) probabilities, got "
                f"shape {tuple(tl_t.shape)} and dtype {tl_t.dtype}"
            )
    is_lab = np.zeros(n, dtype=bool)
    is_lab[lab] = True
    rest = np.flatnonzero(~is_lab)
    b = check_budget(budget, rest.size)
    reg = _number(reg, "reg", positive=True)
    random_fraction = _number(random_fraction, "random_fraction", minimum=0.0)
    if random_fraction > 1:
        raise ValueError(f"random_fraction must be in [0, 1], got {random_fraction}")
    for name, v in (
        ("per_step", per_step),
        ("cg_steps", cg_steps),
        ("inner_iters", inner_iters),
        ("batch_size", batch_size),
    ):
        check_positive_int(v, name)
    if solver not in ("auto", "newton", "adam"):
        raise ValueError(f"solver must be 'auto', 'newton' or 'adam', got {solver!r}")
    lr = _number(lr, "lr", positive=True)
    inner_tol = _number(inner_tol, "inner_tol", minimum=0.0)
    cg_tol = _number(cg_tol, "cg_tol", minimum=0.0)
    precondition = check_bool(precondition, "precondition")
    check_bool(progress, "progress")
    if featurize is not None and not callable(featurize):
        raise TypeError(f"featurize must be callable, got {type(featurize).__name__}")
    if augment is not None:
        if not callable(augment):
            raise TypeError(f"augment must be callable, got {type(augment).__name__}")
        if raw is None or featurize is None:
            raise ValueError(
                "augment needs raw (the rows it transforms) and featurize (their features)"
            )
        if solver == "newton":
            raise ValueError(
                "solver='newton' is full-batch and cannot use augment; use 'adam' or 'auto'"
            )
    use_adam = resolve_solver(solver, augment) == "adam"
    rng = make_rng(seed)
    raw_t = None
    if augment is not None:
        raw_t = _tensor(raw, "raw")[0]
        if raw_t.shape[0] != n:
            raise ValueError(f"raw must have n = {n} rows like Z, got shape {tuple(raw_t.shape)}")

    diag = empty_diagnostics("adam" if use_adam else "newton", int(m))
    seconds = diag["seconds"]
    n_random = _random_count(random_fraction, b)
    random_picks = (
        rng.choice(rest, size=n_random, replace=False) if n_random else np.empty(0, np.int64)
    )
    random_picks = random_picks.astype(np.int64)
    available = ~is_lab
    available[random_picks] = False
    S = np.concatenate([lab, random_picks]).astype(np.int64)

    span = _Span(m, dev)
    span.add(zt[torch.from_numpy(S).to(dev)])
    U = torch.zeros((C, span.Q.shape[1]), dtype=torch.float64, device=dev)  # W = U Qᵀ (Newton)
    W_full = torch.zeros((C, m), dtype=torch.float64, device=dev)  # Adam's W
    greedy: list[int] = []
    n_greedy = b - n_random

    def inner_batch(r: np.random.Generator, S_t: Any) -> tuple[Any, Any, Any]:
        k = torch.from_numpy(r.integers(S_t.shape[0], size=int(batch_size))).to(dev)
        rows = S_t[k]
        if augment is None:
            zb = zt[rows].to(torch.float64)
        else:
            out = augment(raw_t[rows], r)
            zb = torch.as_tensor(featurize(out), device=dev).to(torch.float64)
            if tuple(zb.shape) != (rows.shape[0], m):
                raise ValueError(
                    f"featurize must return ({rows.shape[0]}, {m}) features, got {tuple(zb.shape)}"
                )
        return zb, T[rows], torch.ones(rows.shape[0], dtype=torch.float64, device=dev)

    with tqdm(total=n_greedy, disable=not progress, desc="bilevel greedy", unit="pick") as bar:
        while len(greedy) < n_greedy:
            # inner problem on S = labeled ∪ random ∪ greedy (eq. 3, lower level)
            t0 = time.perf_counter()
            S_t = torch.from_numpy(S).to(dev)
            T_S = T[S_t]
            w_S = torch.ones(S.size, dtype=torch.float64, device=dev)
            if use_adam:
                if S.size:
                    with one_thread_if_small(dev, batch_size * m * max(C, m), _SMALL_WORK):
                        W_full = _adam(
                            W_full, lambda r, S_t=S_t: inner_batch(r, S_t), S.size, reg,
                            iters=inner_iters, lr=lr, rng=rng,
                        )  # fmt: skip
                f, g, P_S = _loss_grad(W_full, span.Zs, T_S, w_S, reg)
                diag["inner_loss"].append(float(f))
                diag["inner_iters"].append(int(inner_iters) if S.size else 0)
                diag["inner_grad_norm"].append(float(g.norm()))
                W = W_full
                Minv_S = None
            else:
                with one_thread_if_small(dev, S.size * span.Q.shape[1] * C, _SMALL_WORK):
                    U, info = _newton(
                        span.X, T_S, w_S, reg, U, tol=_NEWTON_FLOOR, max_iter=100, cg_max=250,
                        w_rtol=inner_tol,
                    )  # fmt: skip
                P_S, Minv_S = info["P"], info["precond"]
                diag["inner_loss"].append(info["loss"])
                diag["inner_iters"].append(info["iters"])
                diag["inner_grad_norm"].append(info["grad_norm"])
                W = U @ span.Q.T
            t1 = time.perf_counter()
            # upper gradient over labeled ∪ pool, one pass
            with one_thread_if_small(dev, n * m * C, _SMALL_WORK):
                A, G, upper = _upper_pass(zt, W, T)
            diag["upper_loss"].append(upper)
            t2 = time.perf_counter()
            with one_thread_if_small(dev, S.size * span.Q.shape[1] * C, _SMALL_WORK):
                V, res, it = _inverse_hvp_reduced(
                    span, P_S, w_S, G, reg, int(cg_steps), cg_tol, precondition, Minv_S
                )
            diag["cg_residual"].append(res)
            diag["cg_iters"].append(it)
            t3 = time.perf_counter()
            with one_thread_if_small(dev, n * m * C, _SMALL_WORK):
                scores = candidate_scores(zt, A, V)
            scores_np = _interop.host_numpy(scores).astype(np.float64)
            del A, scores  # else they live on while the next step's pass allocates new ones
            cand = np.flatnonzero(available)
            if diag["first_scores"] is None:
                first = np.full(n, np.nan)
                first[cand] = scores_np[cand]
                diag["first_scores"] = first
            k = min(int(per_step), n_greedy - len(greedy))
            sc = scores_np[cand]
            if not np.isfinite(sc).all():  # NaN would sort last and inf first: picks by overflow
                hint = "" if zt.dtype == torch.float64 else ", or pass float64 features"
                raise ValueError(
                    f"the eq.-2 scores of the pool are not finite in {zt.dtype}: the features are "
                    f"too large (scale Z down{hint})"
                )
            order = _best_first(sc, k)  # highest score, ties to the lowest index (cand ascends)
            picks = cand[order]
            t4 = time.perf_counter()
            seconds["inner"] += t1 - t0
            seconds["pool_pass"] += t2 - t1
            seconds["cg"] += t3 - t2
            seconds["scores"] += t4 - t3
            greedy.extend(int(p) for p in picks)
            diag["pick_scores"].extend(float(v) for v in sc[order])
            available[picks] = False
            S = np.concatenate([S, picks])
            added = span.add(zt[torch.from_numpy(picks).to(dev)])
            if not use_adam:  # new basis directions are orthogonal to W: extend U by zeros
                U = torch.cat([U, U.new_zeros((C, added))], 1)
            bar.update(len(picks))

    indices = np.concatenate([random_picks, np.asarray(greedy, dtype=np.int64)]).astype(np.int64)
    seconds["total"] = time.perf_counter() - t_start
    diag.update(random=random_picks, greedy=np.asarray(greedy, dtype=np.int64), seconds=seconds,
                n_steps=len(diag["inner_loss"]))  # fmt: skip
    return BilevelResult(indices, diag)
