"""Expected gradient length (Settles, Craven & Ray 2008) for a softmax last layer, closed form."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _interop
from .._torch_arrays import (
    MASKED_LOGITS,
    as_torch,
    from_torch,
    torch_isfinite_rows,
    torch_logit_rows_ok,
)
from .._validate import (
    check_bool,
    check_budget,
    check_classes,
    check_matrix,
    check_same_device,
    make_rng,
)
from ..gradients import _probabilities
from .base import LOGITS_KEY, Selection, Strategy, pool_field, register, unlabeled_rows
from .uncertainty import _row_tiles, _top_rows

#: feature values per row tile (4 MiB float32): the whole-pool finiteness mask and ``h * h`` were
#: 1.7x the float32 features
_TILE_VALUES = 1 << 20


@register
class EGL(Strategy):
    """Expected gradient length: the points whose label would change the model most.

    For cross-entropy on a last linear layer the gradient for label ``y`` is ``(p - e_y) ⊗ h``, so
    the expected squared gradient length over the model's own predictive distribution is
    ``|h|² Σ_y p_y |p - e_y|² = |h|² (1 - |p|²)`` (``|h|² + 1`` with the bias gradient): EGL as
    Kong et al. define it for their baseline (CRC paper, §5: ``E_y ||∇_θ H(y, f_θ(x))||²``).
    ``squared=False`` ranks by the expected length itself, Settles et al.'s original,
    ``|h| Σ_y p_y |p - e_y|`` (``sqrt(|h|² + 1)`` with the bias); the two rankings can differ. The
    ``budget`` unlabeled points with the largest score are selected, ties to the lowest index.

    Parameters
    ----------
    bias : bool, default False
        Include the bias gradient.
    squared : bool, default True
        Expected squared gradient length (True) or expected gradient length (False).

    The pool is a mapping with ``"probs"`` (or ``"logits"``) and ``"features"``. ``diagnostics``
    holds ``"scores"`` for every row of the pool, float64: ``|h|²`` is summed in float32 (float64
    for float64 input) and, for rows where that overflows (``|h| ≳ 1.8e19``) or falls below
    float32's normal range (``|h| ≲ 1e-19``), again in float64, so large and tiny features rank
    correctly instead of scoring ``inf`` or 0. ``1 - |p|² = Σ_y p_y (1 - p_y)`` is summed from
    non-negative terms, the top class's probability read as 1 minus the sum of the others (stored
    rows sum to 1 only to their dtype's rounding, which ``p_max`` carries in full while the small
    probabilities of a confident row keep their relative precision), so confident rows keep their
    small scores instead of cancelling to 0: in float32 (float64 for float64 input), and again in
    float64 for the rows whose float32 value is below 2^-100 (a float32 softmax of a logit gap
    past ~88 underflows to 0). Checks and scores run in row tiles: no temporary the size of the
    features or probabilities.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.strategies import EGL
    >>> probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]])
    >>> pool = {"probs": probs, "features": np.ones((3, 2))}
    >>> EGL().select(pool, 2).indices.tolist()
    [1, 2]
    """

    name = "egl"
    requires = ("probs", "features")

    def __init__(self, *, bias: bool = False, squared: bool = True) -> None:
        self.bias = check_bool(bias, "bias")
        self.squared = check_bool(squared, "squared")

    def select(self, pool: Any, budget: int, labeled: Any = None, *, seed: Any = None) -> Selection:
        import torch

        if not isinstance(pool, Mapping):
            raise TypeError(
                "pool must be a mapping with 'probs' (or 'logits') and 'features', "
                f"got {type(pool).__name__}"
            )
        make_rng(seed)  # deterministic scores use no seed; a bad one is still an error
        probs_key = "probs" if "probs" in pool else "logits"
        P = pool_field(pool, "probs", "logits")
        H = pool_field(pool, "features")
        pinfo = check_matrix(P, probs_key)
        check_classes(pinfo.shape[1], probs_key, pinfo.shape)
        hinfo = check_matrix(H, "features")
        check_same_device(hinfo, "features", pinfo, probs_key)
        if hinfo.shape[0] != pinfo.shape[0]:
            raise ValueError(
                f"features must have {pinfo.shape[0]} rows like {probs_key}, got {hinfo.shape}"
            )
        n = pinfo.shape[0]
        _, rest = unlabeled_rows(n, labeled, like=pinfo)
        budget = check_budget(budget, rest.size)
        acc = torch.float64 if pinfo.dtype == hinfo.dtype == "float64" else torch.float32
        hacc = torch.float64 if hinfo.dtype == "float64" else torch.float32
        p_in, h_in = as_torch(P, pinfo), as_torch(H, hinfo)
        C, d = pinfo.shape[1], hinfo.shape[1]
        # row tiles: no n x d temporary (mask, h * h) and no n x C copy
        tiles = _row_tiles(n, _TILE_VALUES // max(C, d))
        hsq = torch.empty(n, dtype=torch.float64, device=h_in.device)
        finite = None  # on the device until all tiles are checked (one synchronisation)
        for s, e in tiles:
            h = h_in[s:e].to(hacc).contiguous()  # one summation order whatever the strides
            rows_ok = torch_logit_rows_ok if probs_key == "logits" else torch_isfinite_rows
            ok = rows_ok(p_in[s:e]).all() & torch_isfinite_rows(h).all()
            finite = ok if finite is None else finite & ok
            # |h|² in float32 (float64 features: float64); out-of-range rows are redone below
            hsq[s:e] = (h * h).sum(1)
        if not bool(finite):
            masked = f" {MASKED_LOGITS}" if probs_key == "logits" else ""
            raise ValueError(f"{probs_key} and features must be finite{masked}")
        kind = "probs" if probs_key == "probs" else "logits"
        is_probs = _probabilities(p_in, kind, acc, probs_key, pinfo.dtype, LOGITS_KEY)
        out_of_range = ~torch.isfinite(hsq)
        if hacc == torch.float32:  # |h|² below float32's normal range: 0 or a few bits
            out_of_range |= hsq < float(torch.finfo(torch.float32).tiny)
        over = torch.nonzero(out_of_range).flatten()
        if over.numel():  # rows whose |h|² left float32's range: again in float64
            for s, e in _row_tiles(over.numel(), _TILE_VALUES // d):
                rows = over[s:e]
                hsq[rows] = h_in[rows].to(torch.float64).square().sum(1)
            if not bool(torch.isfinite(hsq).all()):
                raise ValueError(
                    "features has rows whose squared norm overflows float64: scale it down"
                )
        if not self.bias:
            _refuse_underflow(hsq, h_in, rest)
        hsq += 1.0 if self.bias else 0.0
        scores = hsq if self.squared else hsq.sqrt_()
        spread = _spread if self.squared else _expected_distance
        spreads = torch.empty_like(scores)
        for s, e in tiles:
            spreads[s:e] = spread(p_in[s:e], is_probs, acc)
        if acc != torch.float64:  # one synchronisation for the rows float32 may have lost
            _confident_rows_in_float64(spreads, spread, p_in, is_probs)
        scores *= spreads
        # highest first, ties to the lowest index (a stable sort of -score over the ascending
        # candidates), without sorting the whole pool
        indices = _interop.host_numpy(_top_rows(scores, rest, budget)).astype(np.int64)
        return Selection(
            _interop.to_framework(indices, hinfo),  # a mixed pool: features' framework
            {"scores": from_torch(scores, hinfo)},
        )


def _refuse_underflow(hsq: Any, h_in: Any, rest: np.ndarray) -> None:
    """Refused when every unlabeled row's float64 |h|² is below the normal range while one is not
    0: the scores are 0 or a few bits (float64 features near 1e-165 took the lowest indices). A
    tiny row beside normal ones ranks after them whatever its bits, so it is taken as it is
    (scaling the pool up would overflow the normal rows)."""
    import torch

    cand = torch.from_numpy(rest).to(hsq.device)
    tiny = float(torch.finfo(torch.float64).tiny)
    if not cand.numel() or float(hsq[cand].max()) >= tiny:
        return
    for s, e in _row_tiles(cand.numel(), _TILE_VALUES // h_in.shape[1]):  # no gathered copy
        rows = cand[s:e]
        nonzero = rows[h_in[rows].abs().amax(1) > 0]
        if nonzero.numel():
            raise ValueError(
                f"features has rows whose squared norm underflows float64, and no unlabeled "
                f"row's does not (row {int(nonzero[0])}): scale it up (the ranking does not "
                "depend on the scale)"
            )


#: A row whose spread computed in float32 is below this is computed again in float64: its small
#: probabilities (e^-gap of the logits) may have underflowed (the softmax of a logit gap past ~88
#: is 0 in float32, and every such row scored 0).
_FLOAT32_SPREAD_FLOOR = 2.0**-100


def _confident_rows_in_float64(spreads: Any, spread: Any, p: Any, is_probs: bool) -> None:
    """Recompute in float64, in place, the ``spreads`` that float32 may have lost: below
    ``_FLOAT32_SPREAD_FLOOR``, or not finite (float64 logits past float32's range). Such
    confident rows are few, so float32 keeps its speed on the rest."""
    import torch

    redo = torch.nonzero(~(spreads >= _FLOAT32_SPREAD_FLOOR)).flatten()
    if not redo.numel():
        return
    for s, e in _row_tiles(redo.numel(), _TILE_VALUES // max(p.shape[1], 1)):
        rows = redo[s:e]
        spreads[rows] = spread(p[rows], is_probs, torch.float64)


def _expected_distance(p: Any, is_probs: bool, acc: Any) -> Any:
    """``Σ_y p_y |p - e_y|`` per row (float64 out), each ``|p - e_y|²`` summed from non-negative
    terms: ``Σ_{k≠y} p_k² + (1 - p_y)²``, with the top class's ``1 - p_y`` read as the others' sum
    (a confident row keeps its small distance to its own class; see :func:`_spread`)."""
    import torch

    p = p.to(acc).contiguous()
    if not is_probs:
        p = torch.softmax(p, dim=1)
    top = p.argmax(1, keepdim=True)
    others = p.scatter(1, top, 0.0)
    rest = others.sum(1, keepdim=True)  # 1 - p_top
    p_top = 1 - rest
    others_sq = (others * others).sum(1, keepdim=True)
    # y = top: the others' squares and (1 - p_top)²; y ≠ top: all squares but p_y², and (1 - p_y)²
    to_top = (others_sq + rest * rest).sqrt()
    but_y = (others_sq - others * others + p_top * p_top).clamp_min(0)
    to_other = (but_y + (1 - others) ** 2).sqrt()
    total = (others * to_other).sum(1) + (p_top * to_top).squeeze(1)
    return total.clamp_min(0).to(torch.float64)


def _spread(p: Any, is_probs: bool, acc: Any) -> Any:
    """``1 - |p|² = Σ_y p_y (1 - p_y)`` per row (float64 out), with the top class's probability
    taken as 1 minus the others' sum: the small probabilities of a confident row carry its score
    and are stored to full relative precision, ``p_max`` only to the dtype's absolute rounding
    (float32 probs round it to 1.0 from ~1 - 6e-8; ``1 - |p|²`` as written then cancelled to 0,
    and float32 logits with a gap of 17 scored every row 0). Every term is non-negative, so
    ``acc`` (float32 unless the inputs are float64) loses nothing to cancellation."""
    import torch

    p = p.to(acc).contiguous()  # one summation order whatever the strides
    if not is_probs:
        p = torch.softmax(p, dim=1)
    others = p.scatter(1, p.argmax(1, keepdim=True), 0.0)
    rest = others.sum(1)
    return ((others * (1 - others)).sum(1) + (1 - rest) * rest).clamp_min(0).to(torch.float64)
