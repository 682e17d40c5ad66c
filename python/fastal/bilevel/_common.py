"""Shared pieces of the bilevel modules: the kernel type, pool-pass chunking, small checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _interop
from .._torch_arrays import as_torch
from .._validate import (
    prob_sum_tol,
)

Kernel = Callable[[Any, Any], Any]

#: Elements per chunk of the row-batched pool passes (bounds temporaries to ~ 32 MB of float64).
_CHUNK_ELEMS = 1 << 22
#: Multiply-adds per Hessian-vector product below which the inner problem runs on one thread.
_SMALL_WORK = 1 << 22
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
    (:func:`fastal._torch_arrays.torch_isfinite_rows`): ``torch.isfinite`` of a whole tensor
    allocates |t| and two masks, 1.75 times a float32 tensor."""
    from .._torch_arrays import torch_isfinite_rows

    return bool(torch_isfinite_rows(t).all())


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
