"""k-means takes the rows' squared norms over the whole pool only where a step reads them (scale
review, finding 7): the fused CPU Lloyd step. Mini-batches take their own batch's norms, so a
mini-batch fit computes the pool's once, for its final assignment, after the epochs; without the
fused step (CUDA, no BLAS) nothing reads them and they are not computed.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import fastal
from fastal import _interop, _lloyd, _lloyd_fused

km = sys.modules["fastal.kmeans"]  # fastal.kmeans is also the function


def blobs(n=3000, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4, size=(50, d))
    return (centres[rng.integers(0, 50, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.fixture
def events(monkeypatch):
    """("norms", rows) per ``_row_sqnorms`` call, "epochs" / "epochs done" around the epochs."""
    log = []
    norms, minibatch = _lloyd._row_sqnorms, km._minibatch

    def rec_norms(xt, dtype):
        log.append(("norms", xt.shape[0]))
        return norms(xt, dtype)

    def rec_minibatch(*args, **kwargs):
        log.append("epochs")
        out = minibatch(*args, **kwargs)
        log.append("epochs done")
        return out

    # the pool's norms are taken in fastal.kmeans._kmeans, a batch's in fastal._lloyd._assign
    monkeypatch.setattr(km, "_row_sqnorms", rec_norms)
    monkeypatch.setattr(_lloyd, "_row_sqnorms", rec_norms)
    monkeypatch.setattr(km, "_minibatch", rec_minibatch)
    return log


@pytest.mark.parametrize("labeled", [False, True])
def test_minibatch_takes_the_pool_norms_after_the_epochs(events, labeled):
    X = blobs()
    n, k = X.shape[0], 40
    fused = _lloyd_fused._fused_lloyd(_interop.describe(X, "X"), k) is not None
    exclude = np.arange(0, n, 10) if labeled else None
    km._kmeans(X, k, seed=0, minibatch=256, max_iter=3, exclude=exclude)
    whole = [i for i, e in enumerate(events) if e == ("norms", n)]
    assert len(whole) == int(fused)  # once, for the final assignment through the fused step
    assert all(i > events.index("epochs done") for i in whole)
    assert ("norms", 256) in events or not fused  # each batch its own


@pytest.mark.parametrize("minibatch", [None, 256])
def test_no_pool_norms_without_the_fused_step(monkeypatch, events, minibatch):
    monkeypatch.setattr(km, "_fused_lloyd", lambda info, k: None)  # as on CUDA or without BLAS
    X = blobs(seed=1)
    res = fastal.kmeans(X, 40, seed=0, minibatch=minibatch, max_iter=5)  # the GEMM path
    assert not [e for e in events if isinstance(e, tuple)]
    assert res.labels.shape == (X.shape[0],)
    assert np.isfinite(res.inertia)
