"""The elementwise passes of :mod:`fastal.gradients` and :mod:`fastal._torch_arrays` run in row
chunks sized in values, not rows (scale review, finding 8): 32768-row chunks made temporaries
proportional to the width (1.1 GB of ``isfinite`` temporaries at d = 4096). Each chunk now holds
about ``_CHUNK_VALUES`` values (at least one row), and the chunked results equal those of one
block bit for bit.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import torch

import fastal

grad = sys.modules["fastal.gradients"]
arrays = sys.modules["fastal._torch_arrays"]
BOUND = arrays._CHUNK_VALUES  # values per chunk (8 MiB widened to float64)


@pytest.fixture
def chunk_sizes(monkeypatch):
    """Values per call of ``torch.isfinite`` or ``numpy.isfinite`` (the CPU's finiteness pass) and
    ``Tensor.to`` (each chunk's first temporary)."""
    sizes = {"isfinite": [], "to": []}
    isfinite, np_isfinite, to = torch.isfinite, np.isfinite, torch.Tensor.to

    def rec_isfinite(t, *args, **kwargs):
        sizes["isfinite"].append(t.numel())
        return isfinite(t, *args, **kwargs)

    def rec_np_isfinite(x, *args, **kwargs):
        sizes["isfinite"].append(np.size(x))
        return np_isfinite(x, *args, **kwargs)

    def rec_to(t, *args, **kwargs):
        sizes["to"].append(t.numel())
        return to(t, *args, **kwargs)

    monkeypatch.setattr(torch, "isfinite", rec_isfinite)
    monkeypatch.setattr(np, "isfinite", rec_np_isfinite)
    monkeypatch.setattr(torch.Tensor, "to", rec_to)
    return sizes


def wide(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_wide_matrices_are_read_in_chunks_of_bounded_values(chunk_sizes):
    n, d = 1536, 8192  # 32768-row chunks would be the whole 12.6M values at once
    H = wide(n, d)
    A = wide(n, 4, seed=1)
    emb = fastal.GradientEmbedding(A, H)  # torch_isfinite_rows, then _init
    assert max(chunk_sizes["isfinite"]) <= BOUND + d
    assert max(chunk_sizes["to"]) <= BOUND + d
    emb._largest_entry()
    assert max(chunk_sizes["to"]) <= BOUND + d
    chunk_sizes["to"].clear()
    probs = torch.full((n, d), 1.0 / d)  # rows of width 8192 summing to 1 exactly
    assert grad._probabilities(probs, "probs", torch.float32, "probs")
    assert max(chunk_sizes["to"]) <= BOUND + d


@pytest.mark.parametrize("values", [1, 100, 5000])
def test_chunked_results_equal_one_block(monkeypatch, values):
    rng = np.random.default_rng(values)
    n, C, d = 301, 7, 129
    logits = rng.normal(size=(n, C)).astype(np.float32) * 3
    feats = rng.normal(size=(n, d)).astype(np.float32)
    feats[5] = np.inf  # found by the chunked finiteness test, whichever chunk holds it
    monkeypatch.setattr(arrays, "_CHUNK_VALUES", 1 << 40)
    with pytest.raises(ValueError, match="features contains NaN or Inf"):
        fastal.gradient_embedding(logits, feats, kind="logits")
    feats[5] = 1.0
    one = fastal.gradient_embedding(logits, feats, kind="logits", bias=True)
    ref = (one.A.copy(), one.H.copy(), one.sqnorm.copy(), one._largest_entry())
    monkeypatch.setattr(arrays, "_CHUNK_VALUES", values)
    bad = feats.copy()
    bad[5] = np.inf
    with pytest.raises(ValueError, match="features contains NaN or Inf"):
        fastal.gradient_embedding(logits, bad, kind="logits")
    emb = fastal.gradient_embedding(logits, feats, kind="logits", bias=True)
    for got, want in zip((emb.A, emb.H, emb.sqnorm, emb._largest_entry()), ref, strict=True):
        np.testing.assert_array_equal(got, want)
    probs = torch.softmax(torch.from_numpy(logits).double(), 1)
    assert grad._probabilities(probs, "auto", torch.float64, "p")
    probs[250] *= 0.99  # one bad row sum, in a late chunk
    with pytest.raises(ValueError, match="rows must sum to 1"):
        grad._probabilities(probs, "probs", torch.float64, "p")


@pytest.mark.parametrize(("n", "width"), [(1, 10**7), (2, 10**7), (5, 1), (10, 3), (1000, 4096)])
def test_row_chunks_cover_the_rows_once(monkeypatch, n, width):
    monkeypatch.setattr(arrays, "_CHUNK_VALUES", 1 << 14)
    chunks = arrays.row_chunks(n, width)
    assert chunks[0][0] == 0
    assert chunks[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    rows = max(1, (1 << 14) // width)  # rows per chunk; one row when a row is wider than that
    assert all(rows + 1 >= e - s >= min(rows, n) for s, e in chunks[:-1])
    assert rows + 1 >= chunks[-1][1] - chunks[-1][0] >= min(2, n)  # a one-row tail joins
