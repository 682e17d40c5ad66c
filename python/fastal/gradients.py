"""Per-sample last-layer gradient embeddings, kept factored (BADGE, EGL, Sparse Approximation, ...).

For softmax cross-entropy with a last linear layer ``z = W h (+ b)``, the gradient of the loss of
one sample with respect to ``W`` is rank one: ``g = a ⊗ h`` with ``a = p - e_y`` (C values) and
``h`` the penultimate features (d values; a bias column extends ``h`` by a 1). So norms, inner
products and distances cost O(C + d) per pair instead of O(C·d):

    |g_i|² = |a_i|² |h_i|²,   <g_i, g_j> = (a_i·a_j)(h_i·h_j),
    |g_i - g_j|² = |g_i|² + |g_j|² - 2 (a_i·a_j)(h_i·h_j).

:class:`GradientEmbedding` holds the two factors; every distance kernel of fastal accepts it where
it accepts a dense matrix. ``dense()`` materialises the ``n × C·d`` matrix only when asked.

The arithmetic runs in torch (numpy and cupy inputs cross zero-copy), in row chunks so that the
temporaries of a million-row pool stay small.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _interop
from ._interop import ArrayInfo
from ._torch_arrays import (
    MASKED_LOGITS,
    acc_dtype,
    as_torch,
    from_torch,
    import_torch,
    row_chunks,
    torch_isfinite_rows,
    torch_logit_rows_ok,
)
from ._validate import (
    check_choice,
    check_classes,
    check_matrix,
    check_same_device,
    check_same_place,
    host_values,
    prob_sum_tol,
)


class GradientEmbedding:
    """Per-sample gradients ``g_i = A_i ⊗ H_i``, stored as factors ``A`` (n, C) and ``H`` (n, dh).

    Row ``i`` of the materialised matrix is ``g[i, c * dh + k] = A[i, c] * H[i, k]``.

    Parameters
    ----------
    A : array of shape (n, C)
        Left factors (for cross-entropy, ``p - e_y`` or ``p - P`` per row).
    H : array of shape (n, dh)
        Right factors (penultimate features, with a trailing 1 column for the bias gradient).
        Same framework, device and dtype as ``A``: float32, float16, bfloat16 (or float64 on CPU).

    Attributes
    ----------
    sqnorm : array of shape (n,)
        ``|A_i|² |H_i|²``, float32 (float64 for float64 factors), computed from the stored factors.
    A, H : arrays
        The stored factors, in the input's framework. For numpy they are read-only views (they
        may share memory with the arrays passed in, and ``sqnorm`` is computed from them). An
        embedding from ``gradient_embedding(..., bias=True)`` stores the features without the
        bias column (the kernels read its 1 implicitly); its ``H`` is ``[h, 1]`` made on access.

    Examples
    --------
    >>> import numpy as np, fastal
    >>> emb = fastal.GradientEmbedding(np.array([[1.0, -1.0]]), np.array([[2.0, 0.0, 1.0]]))
    >>> emb.dense().tolist(), emb.sqnorm.tolist()
    ([[2.0, 0.0, 1.0, -2.0, -0.0, -1.0]], [10.0])
    """

    def __init__(self, A: Any, H: Any) -> None:
        ainfo = check_matrix(A, "A")
        hinfo = check_matrix(H, "H")
        check_same_place(hinfo, "H", ainfo, "A")
        if hinfo.dtype != ainfo.dtype:
            raise TypeError(
                f"H has dtype {hinfo.dtype} but A has {ainfo.dtype}; cast one on purpose"
            )
        if hinfo.shape[0] != ainfo.shape[0]:
            raise ValueError(
                f"A and H must have the same number of rows, got {ainfo.shape} and {hinfo.shape}"
            )
        at, ht = as_torch(A, ainfo).contiguous(), as_torch(H, hinfo).contiguous()
        for t, name in ((at, "A"), (ht, "H")):
            bad = ~torch_isfinite_rows(t)
            if bool(bad.any()):
                first = int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"{name} contains NaN or Inf in {int(bad.sum())} row(s), first at row {first}"
                )
        self._init(at, ht, ainfo)

    @classmethod
    def _from_torch(
        cls, at: Any, ht: Any, info: ArrayInfo, bias: bool = False
    ) -> GradientEmbedding:
        """From torch factors; ``bias``: ``H`` is ``[ht, 1]``, the 1 implicit (``ht`` is the
        features themselves, not copied)."""
        self = cls.__new__(cls)
        self._init(at.contiguous(), ht.contiguous(), info, bias)
        return self

    def _init(self, at: Any, ht: Any, info: ArrayInfo, bias: bool = False) -> None:
        torch = import_torch()
        self._info = ArrayInfo(
            info.framework, info.device, info.device_index, info.dtype, tuple(at.shape)
        )
        # H = [_h, 1] when _bias: the kernels read the trailing 1 without it being stored
        self._a, self._h, self._bias = at, ht, bool(bias)
        acc = acc_dtype(info.dtype)
        sq = at.new_empty(at.shape[0], dtype=acc)
        # the largest |A_i|², |H_i|² and |g_i|² (NaN when one overflowed): see _check_distances_fit
        peaks = torch.zeros(3, dtype=acc, device=at.device)
        for s, e in row_chunks(at.shape[0], max(at.shape[1], ht.shape[1])):
            a, h = at[s:e].to(acc), ht[s:e].to(acc)
            asq, hsq = (a * a).sum(1), (h * h).sum(1) + int(self._bias)
            sq[s:e] = asq * hsq
            if asq.numel():
                chunk_peaks = torch.stack([asq.max(), hsq.max(), sq[s:e].max()])
                peaks = torch.maximum(peaks, chunk_peaks)  # propagates NaN
        self._sqnorm = sq
        self._peaks = peaks
        self._fits: bool | None = None

    def _largest_entry(self) -> float:
        """``max_i |g_i|_∞ = max_i |A_i|_∞ |H_i|_∞`` in float64 (no squares to underflow)."""
        torch = import_torch()
        peak = 0.0
        for s, e in row_chunks(self.n, max(self._a.shape[1], self._h.shape[1])):
            a = self._a[s:e].to(torch.float64).abs().amax(1)
            h = self._h[s:e].to(torch.float64).abs().amax(1)
            if self._bias:
                h = h.clamp(min=1.0)
            peak = max(peak, float((a * h).max()))
        return peak

    def _check_distances_fit(self, name: str) -> None:
        """Raise a ValueError naming ``name`` when a factored distance could overflow the
        accumulation dtype (float32; float64 for float64 factors).

        The factored distance ``s_i + s_j - 2 (A_i·A_j)(H_i·H_j)`` is clamped at 0 by the kernels,
        so an overflow (``inf - inf``) would silently read as distance 0. With ``|A|²``, ``|H|²``
        at most ``2^(E-4)`` and ``s = |A|²|H|²`` at most ``2^(E-3)`` (``2^E``: the dtype's range)
        no term overflows. The peaks come from the pass that computed ``sqnorm``: O(1) here.
        """
        if self._fits is None:
            top = 1024 if self._sqnorm.dtype == import_torch().float64 else 128
            a_max, h_max, s_max = (float(v) for v in self._peaks.cpu())
            factor, total = 2.0 ** (top - 4), 2.0 ** (top - 3)
            self._fits = bool(a_max <= factor and h_max <= factor and s_max <= total)  # NaN: False
        if not self._fits:
            acc = "float64" if self._sqnorm.dtype == import_torch().float64 else "float32"
            hint = "" if acc == "float64" else " or pass them as float64"
            raise ValueError(
                f"distances between rows of {name} overflow {acc}: scale the features down{hint}"
            )

    # -- factors and sizes ------------------------------------------------------------------

    @property
    def A(self) -> Any:
        return self._export(self._a)

    @property
    def H(self) -> Any:
        """The right factors, ``(n, dh)``; with the bias gradient's column, which the embedding
        does not store, a new array each time (the features are kept as given)."""
        return self._export(self._h_stored())

    def _h_stored(self) -> Any:
        """``H`` as an (n, dh) tensor: ``_h`` itself, or ``[_h, 1]`` made now."""
        if not self._bias:
            return self._h
        return _with_ones(self._h)

    @property
    def sqnorm(self) -> Any:
        return self._export(self._sqnorm)

    def _export(self, t: Any) -> Any:
        """A stored array for reading: numpy views are read-only, since a write would reach the
        caller's (perhaps read-only) input and leave ``sqnorm`` stale."""
        out = from_torch(t, self._info)
        if isinstance(out, np.ndarray):
            out.flags.writeable = False
        return out

    @property
    def info(self) -> ArrayInfo:
        """Framework, device and storage dtype of the factors (shape is that of ``A``)."""
        return self._info

    @property
    def n(self) -> int:
        return int(self._a.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self._a.shape[1])

    @property
    def dh(self) -> int:
        return int(self._h.shape[1]) + int(self._bias)

    @property
    def dim(self) -> int:
        return self.n_classes * self.dh

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.dim)

    @property
    def dtype(self) -> str:
        return self._info.dtype

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (
            f"GradientEmbedding(n={self.n}, C={self.n_classes}, dh={self.dh}, dtype={self.dtype}, "
            f"on {self._info.where})"
        )

    # -- export and subsets -----------------------------------------------------------------

    def _rows(self, rows: Any) -> Any:
        from ._validate import check_indices

        torch = import_torch()
        idx = check_indices(rows, self.n, "rows", like=self._info, unique=False)
        return torch.from_numpy(idx).to(self._a.device)

    def subset(self, rows: Any) -> GradientEmbedding:
        """The embedding of ``rows`` (1-D integer indices, in that order).

        Parameters
        ----------
        rows : 1-D integer indices
            Rows to keep, in ``[0, n)``; repeats are allowed. Any framework.

        Returns
        -------
        GradientEmbedding
            A new embedding of ``len(rows)`` rows with the same framework, device, dtype and bias
            handling (its factors are copies of the selected rows).

        Examples
        --------
        >>> import numpy as np, fastal
        >>> emb = fastal.GradientEmbedding(np.eye(2), np.array([[1.0], [2.0]]))
        >>> emb.subset([1, 1]).dense().tolist()
        [[0.0, 2.0], [0.0, 2.0]]
        """
        idx = self._rows(rows)
        return GradientEmbedding._from_torch(self._a[idx], self._h[idx], self._info, self._bias)

    def dense(self, rows: Any = None) -> Any:
        """The materialised ``(n, C·dh)`` gradient matrix (or its ``rows``): an explicit export.

        At n = 1M, C = 1000, d = 512 that is 2 TB in float32; use :meth:`iter_dense` to stream it.

        Parameters
        ----------
        rows : 1-D integer indices, optional
            Rows to export, in that order (repeats allowed); default all ``n``.

        Returns
        -------
        array of shape (len(rows), C·dh)
            ``g[i, c * dh + k] = A[i, c] * H[i, k]`` in the storage dtype, in the framework and on
            the device of the factors.
        """
        a, h = (
            (self._a, self._h)
            if rows is None
            else (self._a[self._rows(rows)], self._h[self._rows(rows)])
        )
        h = _with_ones(h) if self._bias else h
        width = a.shape[1] * h.shape[1]  # not -1: no rows (rows=[]) left it undetermined
        return from_torch((a[:, :, None] * h[:, None, :]).reshape(a.shape[0], width), self._info)

    def iter_dense(self, chunk_rows: int = 4096) -> Iterator[tuple[int, Any]]:
        """Yield ``(start, block)`` with ``block`` the dense rows ``start : start + chunk_rows``.

        Parameters
        ----------
        chunk_rows : int, default 4096
            Rows per block, ``>= 1`` (the last block may be shorter).

        Yields
        ------
        start : int
            Index of the block's first row.
        block : array of shape (<= chunk_rows, C·dh)
            Those rows of :meth:`dense`, same dtype, framework and device.

        Raises
        ------
        ValueError
            If ``chunk_rows`` is not a positive integer (raised on the first ``next``).

        Examples
        --------
        >>> import numpy as np, fastal
        >>> emb = fastal.GradientEmbedding(np.ones((5, 2)), np.ones((5, 3)))
        >>> [(start, block.shape) for start, block in emb.iter_dense(chunk_rows=2)]
        [(0, (2, 6)), (2, (2, 6)), (4, (1, 6))]
        """
        if (
            isinstance(chunk_rows, bool)
            or not isinstance(chunk_rows, (int, np.integer))
            or chunk_rows < 1
        ):
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        for s in range(0, self.n, int(chunk_rows)):
            a, h = self._a[s : s + chunk_rows], self._h[s : s + chunk_rows]
            h = _with_ones(h) if self._bias else h
            yield s, from_torch((a[:, :, None] * h[:, None, :]).reshape(a.shape[0], -1), self._info)


def _with_ones(h: Any) -> Any:
    """``[h, 1]``: a new (n, d + 1) tensor, filled in row chunks."""
    out = h.new_empty((h.shape[0], h.shape[1] + 1))
    out[:, -1] = 1
    for s, e in row_chunks(h.shape[0], h.shape[1] + 1):
        out[s:e, :-1] = h[s:e]
    return out


# ---------------------------------------------------------------------------------------------
# construction from model outputs


#: How gradient_embedding takes logits (strategies name their pool key instead).
_KIND_HINT = "pass kind='logits'"


def gradient_embedding(
    probs_or_logits: Any,
    features: Any,
    *,
    labels: Any = None,
    bias: bool = False,
    kind: str = "auto",
) -> GradientEmbedding:
    """Last-layer cross-entropy gradient embeddings of a pool, kept factored.

    ``g_i = (p_i - t_i) ⊗ h_i`` where ``p_i`` are the predicted class probabilities, ``h_i`` the
    penultimate features (extended by a 1 with ``bias=True``) and ``t_i`` the target: the one-hot
    hypothetical label ``argmax p_i`` (BADGE, Ash et al. 2020, §3), a given label, or a label
    distribution ``P_i`` (then ``g_i`` is the expected gradient ``E_{y~P_i}[g_i(y)]``, as in the
    Sparse Approximation of Shen et al., eq. 14).

    Parameters
    ----------
    probs_or_logits : array of shape (n, C)
        Probabilities or logits (see ``kind``); numpy, torch (CPU/CUDA) or cupy. Logits may be
        -inf for a masked class (probability 0) where a row keeps a finite logit.
    features : array of shape (n, d)
        Penultimate features on the same device (any framework: the embedding is in this one).
        Its dtype (float32, float16, bfloat16, float64 on the CPU) is the storage dtype of both
        factors.
    labels : None, int array (n,), or float array (n, C)
        ``None``: hypothetical labels ``argmax p`` (ties to the lowest class). Integer labels in
        ``[0, C)``. A row-stochastic label distribution.
    bias : bool, default False
        Include the gradient of the bias (``h`` gets a trailing 1). Either way the embedding
        stores ``features`` itself where that is contiguous (no copy, as with
        :class:`GradientEmbedding`; the bias column is implicit: the kernels read a 1, and
        ``.H`` makes ``[h, 1]`` when asked): do not change ``features`` while the embedding is
        in use.
    kind : {"auto", "probs", "logits"}
        ``"probs"`` requires values in [0, 1] with rows summing to 1 within a tolerance set by
        the storage dtype (1e-3 for float32 / float64, 2⁻⁹ for float16, 2⁻⁶ for bfloat16);
        ``"logits"`` applies a softmax; ``"auto"`` takes logits when any value is outside [0, 1]
        and probabilities otherwise, so values all in [0, 1] whose rows do not sum to 1 raise
        ``ValueError``: pass ``kind="logits"`` for logits that happen to lie in [0, 1].

    Returns
    -------
    GradientEmbedding

    Examples
    --------
    >>> import numpy as np, fastal
    >>> p = np.array([[0.7, 0.2, 0.1]], dtype=np.float32)
    >>> h = np.array([[1.0, 2.0]], dtype=np.float32)
    >>> emb = fastal.gradient_embedding(p, h)
    >>> emb.A.astype(float).round(3).tolist(), emb.dense().shape
    ([[-0.3, 0.2, 0.1]], (1, 6))
    """
    return _gradient_embedding(probs_or_logits, features, labels=labels, bias=bias, kind=kind)


def _gradient_embedding(
    probs_or_logits: Any,
    features: Any,
    *,
    labels: Any = None,
    bias: bool = False,
    kind: str = "auto",
    name: str = "probs_or_logits",
    logits_hint: str = _KIND_HINT,
) -> GradientEmbedding:
    """:func:`gradient_embedding`, with the caller's name for the probabilities and its way to
    take logits in the messages (a strategy's pool key)."""
    torch = import_torch()
    pinfo = check_matrix(probs_or_logits, name)
    finfo = check_matrix(features, "features")
    check_same_device(finfo, "features", pinfo, name)  # the embedding is in features' framework
    n, C = pinfo.shape
    check_classes(C, name, pinfo.shape)
    if finfo.shape[0] != n:
        raise ValueError(
            f"features must have one row per row of {name} ({n}), got shape {finfo.shape}"
        )
    kind = check_choice(kind, "kind", ("auto", "probs", "logits"))
    if not isinstance(bias, (bool, np.bool_)):
        raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
    p_in = as_torch(probs_or_logits, pinfo)
    h_in = as_torch(features, finfo)
    acc = acc_dtype(
        "float64" if pinfo.dtype == "float64" and finfo.dtype == "float64" else "float32"
    )
    if kind == "probs" and not bool(torch_isfinite_rows(p_in).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    if kind != "probs" and not bool(torch_logit_rows_ok(p_in).all()):  # -inf: logits, masked
        raise ValueError(f"{name} contains NaN or Inf {MASKED_LOGITS}")
    if not bool(torch_isfinite_rows(h_in).all()):
        raise ValueError("features contains NaN or Inf")
    is_probs = _probabilities(p_in, kind, acc, name, logits_hint=logits_hint)
    target = _target(labels, n, C, pinfo, acc, name)

    store = h_in.dtype
    A = torch.empty((n, C), dtype=store, device=p_in.device)
    # H is the features themselves, the bias column implicit: no copy of the largest array
    H = h_in.contiguous()
    for s, e in row_chunks(n, C):  # p's temporaries are C wide; H's rows are copied as they are
        p = p_in[s:e].to(acc)
        if not is_probs:
            p = torch.softmax(p, dim=1)
        if target is None:  # hypothetical label: argmax p, first maximum on ties
            a = p.clone()
            rows = torch.arange(p.shape[0], device=p.device)
            a[rows, p.argmax(1)] -= 1
        elif target.dtype == torch.int64:
            a = p.clone()
            rows = torch.arange(p.shape[0], device=p.device)
            a[rows, target[s:e]] -= 1
        else:
            a = p - target[s:e].to(acc)
        A[s:e] = a.to(store)
    return GradientEmbedding._from_torch(A, H, finfo, bool(bias))


def _probabilities(
    p: Any, kind: str, acc: Any, name: str, storage: Any = None, logits_hint: str = _KIND_HINT
) -> bool:
    """Whether ``p`` holds probabilities (validated) rather than logits.

    Probabilities are values in [0, 1] whose rows sum to 1 within a tolerance that depends on the
    dtype they were *stored* in (``storage``, default ``p.dtype``; pass it when ``p`` is an upcast
    copy): ``max(1e-3, 2 eps(storage))``, i.e. 1e-3 for float32 / float64, 2⁻⁹ ≈ 0.00195 for
    float16 and 2⁻⁶ ≈ 0.0156 for bfloat16 (:func:`fastal._validate.prob_sum_tol`). Rounding a
    normalised row to the storage dtype moves its sum by at most eps / 2, so softmax outputs cast
    to float16 / bfloat16 pass, while unnormalised rows still fail. The sums are taken in ``acc``.
    """
    if kind == "logits":
        return False
    torch = import_torch()
    storage = p.dtype if storage is None else storage
    tol = prob_sum_tol(storage)
    in_range, sums_ok = True, True
    for s, e in row_chunks(p.shape[0], p.shape[1]):
        c = p[s:e].to(acc)
        lo, hi = torch.aminmax(c)  # NaN propagates: out of range, as the comparisons read it
        in_range &= bool(lo >= 0) and bool(hi <= 1)
        sums_ok &= bool(((c.sum(1) - 1).abs() <= tol).all())
    if kind == "probs":
        if not in_range:
            raise ValueError(f"{name} must hold probabilities in [0, 1]; {logits_hint} for logits")
        if not sums_ok:
            raise ValueError(
                f"{name} rows must sum to 1 (within {tol:.3g} for {_dtype_name(storage)} storage); "
                f"{logits_hint} for logits"
            )
        return True
    if in_range and not sums_ok:
        raise ValueError(
            f"{name} has all values in [0, 1] but rows that do not sum to 1: normalise the "
            "probabilities, or pass kind='logits' if these are logits"
        )
    return in_range


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _wide_unsigned(arr: np.ndarray, C: int) -> np.ndarray:
    """Unsigned class labels as int64, refusing those that int64 would wrap."""
    if arr.size and int(arr.max()) >= C:
        raise ValueError(f"labels must be classes in [0, {C}), got values up to {int(arr.max())}")
    return arr.astype(np.int64)


def _target(
    labels: Any, n: int, C: int, pinfo: ArrayInfo, acc: Any, name: str = "probs_or_logits"
) -> Any:
    """None (hypothetical labels), an int64 tensor (n,) or a float tensor (n, C) on p's device."""
    torch = import_torch()
    if labels is None:
        return None
    device = "cpu" if pinfo.device == "cpu" else f"cuda:{pinfo.device_index}"
    if _interop.is_array(labels):
        linfo = _interop.describe(labels, "labels")
        if linfo.device != pinfo.device:
            raise ValueError(f"labels is on {linfo.where} but {name} is on {pinfo.where}")
        if not linfo.dtype.startswith(("int", "uint", "float", "bfloat", "bool")):
            raise TypeError(
                "labels must be integer classes or a float label distribution, "
                f"got dtype {linfo.dtype}"
            )
        lt = as_torch(labels, linfo).to(device)
        if linfo.dtype in ("uint16", "uint32", "uint64") and len(linfo.shape) == 1:  # no torch min
            lt = torch.as_tensor(_wide_unsigned(_interop.host_numpy(labels), C), device=device)
    else:
        arr = host_values(labels, "labels", "class indices or a label distribution")
        if arr.dtype.kind == "u" and arr.ndim == 1:
            arr = _wide_unsigned(arr, C)
        lt = torch.as_tensor(arr, device=device)
    if lt.dtype == torch.bool:
        raise TypeError(
            "labels must be integer classes or a float label distribution, got booleans"
        )
    if lt.ndim == 1:
        if lt.is_floating_point() or lt.is_complex():
            got = str(lt.dtype).removeprefix("torch.")
            raise TypeError(
                f"1-D labels must be integer classes, got dtype {got} (a label distribution is "
                "2-D, (n, C))"
            )
        if lt.shape[0] != n:
            raise ValueError(f"labels must have {n} entries (one per row), got {lt.shape[0]}")
        if n and (int(lt.min()) < 0 or int(lt.max()) >= C):
            raise ValueError(
                f"labels must be classes in [0, {C}), got values in [{int(lt.min())}, "
                f"{int(lt.max())}]"
            )
        return lt.to(torch.int64)
    if lt.ndim == 2:
        if not lt.is_floating_point():
            raise TypeError(f"2-D labels must be a float label distribution, got dtype {lt.dtype}")
        if tuple(lt.shape) != (n, C):
            raise ValueError(
                f"labels as a distribution must have shape ({n}, {C}), got {tuple(lt.shape)}"
            )
        la = lt.to(acc)
        if not bool(torch.isfinite(la).all()) or bool(((la < 0) | (la > 1)).any()):
            raise ValueError("labels as a distribution must hold finite values in [0, 1]")
        tol = prob_sum_tol(lt.dtype)
        if bool(((la.sum(1) - 1).abs() > tol).any()):
            raise ValueError(
                f"labels as a distribution must have rows summing to 1 (within {tol:.3g} for "
                f"{_dtype_name(lt.dtype)})"
            )
        return la
    raise ValueError(
        f"labels must be 1-D classes (n,) or a 2-D distribution (n, C), got {lt.ndim}-D"
    )
