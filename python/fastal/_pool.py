"""The pools the distance kernels take, checked: finite, rows not so close that their squared
distances underflow (the spread), and for the CPU kernels the tuple ``(X,)`` or ``(A, H, sqnorm,
bias)`` of a GradientEmbedding. Shared by k-center, min-distance, k-means++ and k-means.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _ext, _interop
from ._interop import ArrayInfo
from ._validate import check_matrix
from .gradients import GradientEmbedding

ACC = {"float64": "float64", "float32": "float32", "float16": "float32", "bfloat16": "float32"}


def _check_finite_cpu(arr: np.ndarray, info: ArrayInfo, name: str) -> float:
    """Refuse NaN / Inf; returns the rows' spread max |x_ij - x_0j| (the same pass)."""
    count, first, spread = getattr(_ext.cpu, f"count_nonfinite_rows_{info.dtype}")(arr)
    if count:
        raise ValueError(f"{name} contains NaN or Inf in {count} row(s), first at row {first}")
    return spread


#: log2 of the least spread S of a pool (largest |x_ij - x_0j|) whose distances down to the
#: accumulation dtype's resolution of it (S·2^-24 float32, S·2^-53 float64) have squares above
#: its smallest normal number (2^-126, 2^-1022): (S·2^-24)² >= 2^-126 for S >= 2^-39. Closer rows
#: of an accepted pool differ by less than that resolution of its scale and may read 0 apart.
#: (2^-60 and 2^-500 kept only the largest squares normal: a cluster 2^-20 wide in a pool of
#: spread 2^-55 read as one point, its radius 0, silently.)
_MIN_SPREAD_LOG2 = {"float32": -39, "float64": -458}


def check_spread(spread: float, dtype: str, name: str, *, cuda: bool = False) -> None:
    """Refuse rows that differ, but by so little that their squared distances underflow: every
    distance 0 and the picks arbitrary (float32 rows at 1e-25), or close rows read as one (a
    cluster 2^-20 wide in float32 rows at 2^-55). ``cuda``: the pool is on a GPU, where float64
    is not taken (the hint says to move it)."""
    acc = ACC[dtype]
    if 0.0 < spread < 2.0 ** _MIN_SPREAD_LOG2[acc]:
        hint = "" if acc == "float64" else " or pass float64"
        hint += " on the CPU" if hint and cuda else ""
        raise ValueError(
            f"the rows of {name} differ by at most {spread:.3g}, below 2^{_MIN_SPREAD_LOG2[acc]}: "
            f"squared distances at that scale (at {acc}'s resolution of it) underflow {acc}; "
            f"scale {name} up{hint}"
        )


def embedding_spread(emb: GradientEmbedding, name: str = "X") -> float:
    """What :func:`check_spread` judges for a GradientEmbedding: a bound ``2 max_i |g_i|_∞`` on
    how far its rows differ, or inf (no pass) while its largest ``|g_i|²`` is clear of underflow.

    Raises a ValueError naming ``name`` where one factor's squares underflow while the gradients
    do not (``A ~ 1e-24`` beside features ``~ 1e14`` in float32): the kernels work from
    ``|A_i|²``, ``|H_i|²`` and their dot products, so every distance read 0, silently."""
    acc = ACC[emb.dtype]
    if float(emb._peaks[2]) >= 2.0 ** (2 * _MIN_SPREAD_LOG2[acc]):
        return float("inf")
    spread = 2.0 * emb._largest_entry()
    a_max, h_max = (float(v) for v in emb._peaks[:2].cpu())
    smallest_normal = float(np.finfo(acc).tiny)
    if spread >= 2.0 ** _MIN_SPREAD_LOG2[acc] and min(a_max, h_max) < smallest_normal:
        raise ValueError(
            f"the factors of {name} are too unbalanced for {acc}: the squares of the smaller "
            "one underflow while the gradients do not; pass float64 probabilities and features"
            + ("" if acc == "float64" else " (float64 factors)")
        )
    return spread


def spread_torch(xt: Any, dtype: str) -> float:
    """The spread max |x_ij - x_0j| of a torch tensor (CUDA pools, which the CPU scan does not
    see), in row tiles."""
    import torch

    acc = torch.float64 if ACC[dtype] == "float64" else torch.float32
    x0 = xt[0].to(acc)
    spread = torch.zeros((), dtype=acc, device=xt.device)
    step = max(1, (1 << 21) // max(1, xt.shape[1]))
    for s in range(0, xt.shape[0], step):
        spread = torch.maximum(spread, (xt[s : s + step].to(acc) - x0).abs().amax())
    return float(spread)


def check_spread_torch(xt: Any, dtype: str, name: str) -> None:
    """:func:`check_spread` of a torch tensor's :func:`spread_torch`."""
    check_spread(spread_torch(xt, dtype), dtype, name, cuda=xt.device.type != "cpu")


def check_finite_cuda(ptr: int, info: ArrayInfo, name: str) -> None:
    n, d = info.shape
    count, first = _ext.cuda.count_nonfinite_rows(
        info.dtype, ptr, n, d, info.device_index, _interop.cuda_stream(info)
    )
    if count:
        raise ValueError(f"{name} contains NaN or Inf in {count} row(s), first at row {first}")


def pool_info(X: Any, name: str = "X") -> ArrayInfo:
    """ArrayInfo of a dense matrix or of a GradientEmbedding (shape: the materialised one)."""
    if isinstance(X, GradientEmbedding):
        i = X.info
        return ArrayInfo(i.framework, i.device, i.device_index, i.dtype, X.shape)
    return check_matrix(X, name)


def torch_cpu_info(t: Any) -> ArrayInfo:
    return ArrayInfo("torch", "cpu", None, str(t.dtype).removeprefix("torch."), tuple(t.shape))


def cpu_pool(X: Any, info: ArrayInfo, name: str = "X", spreads: list | None = None) -> tuple:
    """What the CPU kernels take: ``(X,)`` checked finite, or ``(A, H, sqnorm, bias)`` of an
    embedding (``bias``: H's trailing 1 is implicit, not stored); either refused when its rows are
    too close together (:func:`check_spread`). With ``spreads`` the spread is appended to it for
    the caller to judge instead (X against Y in min_distance)."""
    if isinstance(X, GradientEmbedding):
        X._check_distances_fit(name)  # the kernels clamp an overflowed (NaN) distance to 0
        a, h = X._a, X._h  # finite by construction
        pool = (
            _interop.host_storage(a, torch_cpu_info(a)),
            _interop.host_storage(h, torch_cpu_info(h)),
            X._sqnorm.numpy(),
            X._bias,
        )
        spread = embedding_spread(X, name)
    else:
        pool = (_interop.host_storage(X, info),)
        spread = _check_finite_cpu(pool[0], info, name)
    if spreads is None:
        check_spread(spread, info.dtype, name)
    else:
        spreads.append(spread)
    return pool
