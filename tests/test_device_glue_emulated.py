"""Python glue of the CUDA paths, run on the CPU with stand-ins: a fake ``fastal._cuda`` and an
embedding that says it lives on ``cuda:0``. No kernel runs; what is checked comes before one (the
arguments' names in refusals), which CI would otherwise first see on a GPU."""

from __future__ import annotations

import contextlib
import dataclasses
import types

import numpy as np
import pytest

import fastal
from fastal import _ext, _interop
from fastal._seeding import _kmeans_pp


@pytest.fixture
def on_a_fake_gpu(monkeypatch):
    """A fake CUDA module whose finiteness scan finds nothing; device and stream scopes off."""
    fake = types.SimpleNamespace(count_nonfinite_rows=lambda *a: (0, -1))
    monkeypatch.setattr(_ext, "cuda", fake)
    monkeypatch.setattr(_interop, "device_scope", lambda info, name: contextlib.nullcontext())
    monkeypatch.setattr(_interop, "cuda_stream", lambda info: 0)

    def move(emb):
        emb._info = dataclasses.replace(emb._info, device="cuda", device_index=0)
        return emb

    return move


def test_kmeans_pp_on_cuda_names_the_callers_argument(on_a_fake_gpu):
    """BADGE's and KMeansSampling's "features": the CUDA path said "X" whatever the caller."""
    A = np.array([[0.5, -0.5], [-0.5, 0.5], [0.25, -0.25]], np.float32)
    H = np.array([[3e19, 1.0], [1.0, 2.0], [2.0, 1.0]], np.float32)  # |H_0|² overflows float32
    emb = on_a_fake_gpu(fastal.GradientEmbedding(A, H))
    with pytest.raises(ValueError, match=r"^distances between rows of features overflow float32"):
        _kmeans_pp(emb, 2, seed=0, first="norm", name="features")
