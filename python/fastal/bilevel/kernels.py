"""Neural tangent kernels of the proxy model and their Nyström features (Borsos et al., §2)."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np

from .._memory import refuse_unless_it_fits
from .._threads import one_thread_if_small
from .._torch_arrays import from_torch
from .._validate import (
    _number,
    check_positive_int,
)
from . import _common
from ._common import (
    Kernel,
    _float_tensor,
    _rows_per_chunk,
    _tensor,
    _torch,
)

#: a kernel matrix eigenvalue below -_INDEFINITE x the largest one: not rounding (float32 kernels
#: give ~m · 6e-8), an indefinite kernel
_INDEFINITE = 1e-4


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
        "(inner products beyond its range): scale the rows "
        f"down{'' if dtype == 'float64' else ' or pass float64'}"
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
    ill-conditioned near 1, and the cosine has float32 rounding); float64 rows about 1e-8.

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

    Parameters
    ----------
    kernel : {"ntk_last_layer", "linear", "relu_ntk"} or callable
        The kernel by name, or a kernel function (returned unchanged).
    depth : int >= 0, default 1
        Hidden ReLU layers of ``"relu_ntk"`` (ignored otherwise).
    bias : float >= 0, default 0.0
        Bias variance of ``"relu_ntk"`` (ignored otherwise).

    Returns
    -------
    callable
        ``k(X, Y)``: :func:`linear_ntk` itself, a ``functools.partial`` of :func:`relu_ntk`, or
        ``kernel``.

    Raises
    ------
    ValueError
        For an unknown name, or a bad ``depth`` / ``bias`` with ``"relu_ntk"``.

    Examples
    --------
    >>> from fastal.bilevel import linear_ntk, make_kernel
    >>> make_kernel("linear") is linear_ntk, make_kernel("relu_ntk", depth=2).keywords
    (True, {'depth': 2, 'bias': 0.0})
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
    features: r ≤ d + 1) gives ``m' ≤ r`` whatever ``m``. The paper's ``(K_UU)^{†/2} k(U, x)``
    is ``E_k`` times these ``m'`` features: the same kernel ``Z Zᵀ`` and, as the proxy's weights
    rotate with them, the same picks under the default Newton inner solver (Adam's per-coordinate
    steps are not rotation invariant: with ``solver="adam"`` the basis can change its picks).

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

    Examples
    --------
    Three landmarks in 2-D under the linear kernel ``k(x, y) = xᵀy + 1``: ``Z Zᵀ`` reproduces
    the kernel of the landmarks.

    >>> import numpy as np
    >>> from fastal.bilevel import Nystrom, make_kernel
    >>> U = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> ny = Nystrom(U, make_kernel("linear"))
    >>> Z = ny.transform(U)
    >>> ny.rank, Z.shape, (Z @ Z.T).round(6).tolist()
    (3, (3, 3), [[2.0, 1.0, 2.0], [1.0, 2.0, 2.0], [2.0, 2.0, 3.0]])
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
            with one_thread_if_small(ut.device, m * ua.shape[1] ** 2, _common._SMALL_WORK):
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
            with one_thread_if_small(ut.device, m**3, _common._SMALL_WORK):
                evals, evecs = torch.linalg.eigh((K + K.T) / 2)
        top = float(evals[-1]) if evals.numel() else 0.0
        low = float(evals[0]) if evals.numel() else 0.0
        if low < -_INDEFINITE * max(top, 0.0):  # -(A Bᵀ) kept 18 eigenvalues of rounding noise
            raise ValueError(
                f"the kernel is not positive semi-definite on the landmarks: its kernel matrix "
                f"has eigenvalue {low:.3g} against a largest one of {top:.3g}"
            )
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
        """Features of the rows of a torch tensor ``X`` (n, d) as a torch tensor (n, m').

        Parameters
        ----------
        X : torch.Tensor (n, d)
            Rows shaped like the landmarks, on any device (the landmarks are moved there).
        chunk : int >= 1, optional
            Rows per kernel block (default: a size that bounds the block's memory).

        Returns
        -------
        torch.Tensor (n, m')
            float64 for float64 ``X``, else float32, on ``X``'s device.

        Raises
        ------
        ValueError
            When the (n, m') output would exceed the memory available on the device (the message
            says what to shrink).
        """
        torch = _torch()
        n = int(X.shape[0])
        dtype = torch.float64 if X.dtype == torch.float64 else torch.float32  # X's precision class
        U = self.landmarks.to(X.device, dtype)
        proj = self._projection64.to(X.device, dtype)
        refuse_unless_it_fits(
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
        with one_thread_if_small(X.device, min(n, step) * U.shape[0] * width, _common._SMALL_WORK):
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

        Parameters
        ----------
        X : array (n, d)
            Rows shaped like the landmarks: numpy, torch or cupy.
        chunk : int >= 1, optional
            Rows per kernel block (default: a size that bounds the block's memory).

        Returns
        -------
        array (n, m')
            In ``X``'s framework and device; float64 for float64 ``X``, else float32.

        Raises
        ------
        ValueError
            If the rows of ``X`` are not shaped like the landmarks.
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
