"""Expected gradient length (Settles, Craven & Ray 2008) for a softmax last layer, in closed form."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _interop
from .._validate import check_bool, check_budget, check_matrix, check_same_place
from ..gradients import _probabilities, as_torch, from_torch
from .base import Selection, Strategy, pool_field, register, unlabeled_rows


@register
class EGL(Strategy):
    """Expected gradient length: the points whose label would change the model most.

    For cross-entropy on a last linear layer the gradient for label ``y`` is ``(p - e_y) ⊗ h``, so
    the expected squared gradient length over the model's own predictive distribution is
    ``|h|² Σ_y p_y |p - e_y|² = |h|² (1 - |p|²)`` (``|h|² + 1`` with the bias gradient). The
    ``budget`` unlabeled points with the largest score are selected, ties to the lowest index.

    Parameters
    ----------
    bias : bool, default False
        Include the bias gradient.

    The pool is a mapping with ``"probs"`` (or ``"logits"``) and ``"features"``. ``diagnostics``
    holds ``"scores"`` for every row of the pool, float64: ``|h|²`` is summed in float32 (float64
    for float64 input) and, for rows where that overflows (``|h| ≳ 1.8e19``), again in float64, so
    large features rank correctly instead of all scoring ``inf``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.strategies import EGL
    >>> pool = {"probs": np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]]), "features": np.ones((3, 2))}
    >>> EGL().select(pool, 2).indices.tolist()
    [1, 2]
    """

    name = "egl"
    requires = ("probs", "features")

    def __init__(self, *, bias: bool = False) -> None:
        self.bias = check_bool(bias, "bias")

    def select(self, pool: Any, budget: int, labeled: Any = None, *, seed: Any = None) -> Selection:
        import torch

        if not isinstance(pool, Mapping):
            raise TypeError(
                "pool must be a mapping with 'probs' (or 'logits') and 'features', "
                f"got {type(pool).__name__}"
            )
        probs_key = "probs" if "probs" in pool else "logits"
        P = pool_field(pool, "probs", "logits")
        H = pool_field(pool, "features")
        pinfo = check_matrix(P, probs_key)
        hinfo = check_matrix(H, "features")
        check_same_place(hinfo, "features", pinfo, probs_key)
        if hinfo.shape[0] != pinfo.shape[0]:
            raise ValueError(f"features must have {pinfo.shape[0]} rows like {probs_key}, got {hinfo.shape}")
        n = pinfo.shape[0]
        lab, rest = unlabeled_rows(n, labeled, like=pinfo)
        budget = check_budget(budget, rest.size)
        acc = torch.float64 if pinfo.dtype == hinfo.dtype == "float64" else torch.float32
        p = as_torch(P, pinfo).to(acc)
        h = as_torch(H, hinfo).to(torch.float64 if hinfo.dtype == "float64" else torch.float32)
        if not bool(torch.isfinite(p).all()) or not bool(torch.isfinite(h).all()):
            raise ValueError(f"{probs_key} and features must be finite")
        kind = "probs" if probs_key == "probs" else "logits"
        if not _probabilities(p, kind, acc, probs_key, storage=pinfo.dtype):
            p = torch.softmax(p, dim=1)
        # |h|² in float32 (float64 features: float64); rows that overflow are summed in float64
        hsq = (h * h).sum(1).to(torch.float64)
        over = ~torch.isfinite(hsq)
        if bool(over.any()):
            hsq[over] = h[over].to(torch.float64).square().sum(1)
            if not bool(torch.isfinite(hsq).all()):
                raise ValueError(
                    "features has rows whose squared norm overflows float64: scale it down"
                )
        hsq += 1.0 if self.bias else 0.0
        scores = hsq * (1 - (p * p).sum(1)).clamp_min(0).to(torch.float64)
        cand = torch.from_numpy(rest).to(scores.device)
        # stable sort of -score over ascending candidates: ties keep the lowest index first
        order = torch.sort(-scores[cand], stable=True).indices[:budget]
        indices = _interop.host_numpy(cand[order]).astype(np.int64)
        return Selection(
            _interop.to_framework(indices, pinfo),
            {"scores": from_torch(scores, pinfo)},
        )
