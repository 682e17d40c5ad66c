"""Entropy, Margin, LeastConfidence and EGL score the pool in row tiles (bounded temporaries): the
tiled scores and picks have the bits of one block, and the tiled input checks raise what the
checks on the whole pool raise.

- Tiny tiles (64 rows, the fewest) and a few hundred values equal one block exactly, for numpy and
  torch, float64 / float32 / float16 / bfloat16, probs and logits, row- and column-major tensors
  (torch's row sums of a column-major tensor vectorise across rows: see ``_row_tiles``).
- EGL's float64 redo of the rows whose ``|h|²`` overflows float32, in tiles too.
- A bad row sum in the first tile and a NaN in a later one: the NaN's message, as on the whole.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastal.strategies.egl as egl
import fastal.strategies.uncertainty as unc
from fastal.strategies import EGL, Entropy, LeastConfidence, Margin

ONE_BLOCK = 1 << 40
TINY = [1, 700]  # 64 rows per tile (the fewest), and a few hundred values
SCORES = [Entropy, Margin, LeastConfidence]
DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _array(a, backend, dtype, layout="C"):
    """``a`` as numpy or torch of ``dtype``; layout "F": a column-major torch tensor."""
    t = torch.from_numpy(np.ascontiguousarray(a)).to(DTYPES[dtype])
    if layout == "F":
        t = t.t().contiguous().t()
    return t.numpy() if backend == "numpy" else t


def _select(strategy, pool, budget=5, labeled=(1, 3)):
    sel = strategy.select(pool, budget, list(labeled))
    return np.asarray(sel.indices), torch.as_tensor(sel.diagnostics["scores"])


def _same_bits_at_every_tile(monkeypatch, module, run):
    monkeypatch.setattr(module, "_TILE_VALUES", ONE_BLOCK)
    idx, scores = run()
    assert scores.dtype == torch.float64
    for values in TINY:
        monkeypatch.setattr(module, "_TILE_VALUES", values)
        idx_t, scores_t = run()
        assert np.array_equal(idx_t, idx)
        assert torch.equal(scores_t, scores)


CASES = [
    ("numpy", "float64", "C"),
    ("numpy", "float32", "C"),
    ("numpy", "float16", "C"),
    ("torch", "float32", "C"),
    ("torch", "bfloat16", "C"),
    ("torch", "float64", "F"),
    ("torch", "float32", "F"),
]


@pytest.mark.parametrize(("n", "C"), [(301, 7), (257, 3), (200, 100), (129, 2)])
@pytest.mark.parametrize("key", ["probs", "logits"])
@pytest.mark.parametrize(("backend", "dtype", "layout"), CASES)
@pytest.mark.parametrize("strategy", SCORES)
def test_uncertainty_tiles_give_the_bits_of_one_block(
    monkeypatch, strategy, backend, dtype, layout, key, n, C
):
    rng = np.random.default_rng(n * C)
    z = rng.normal(size=(n, C)) * 3
    p = _softmax(z)
    p[p < 0.01] = 0  # 0 log 0
    p /= p.sum(1, keepdims=True)
    pool = {key: _array(p if key == "probs" else z, backend, dtype, layout)}
    assert len(unc._row_tiles(n, 1 // C)) > 1
    _same_bits_at_every_tile(monkeypatch, unc, lambda: _select(strategy(), pool))


@pytest.mark.parametrize(("n", "C", "d"), [(301, 10, 6), (257, 3, 130), (200, 100, 2)])
@pytest.mark.parametrize("key", ["probs", "logits"])
@pytest.mark.parametrize(("backend", "dtype", "layout"), CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_egl_tiles_give_the_bits_of_one_block(
    monkeypatch, bias, backend, dtype, layout, key, n, C, d
):
    rng = np.random.default_rng(n + C + d)
    z = rng.normal(size=(n, C)) * 3
    h = rng.normal(size=(n, d)) * 2
    first = _softmax(z) if key == "probs" else z
    pool = {
        key: _array(first, backend, dtype, layout),
        "features": _array(h, backend, dtype, layout),
    }
    assert len(unc._row_tiles(n, 1 // max(C, d))) > 1
    _same_bits_at_every_tile(monkeypatch, egl, lambda: _select(EGL(bias=bias), pool))


@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("overflowing", [1, 2, 70, 150])
def test_egl_float64_redo_of_overflowing_rows_in_tiles(monkeypatch, overflowing, layout):
    n, d = 301, 9
    rng = np.random.default_rng(overflowing)
    h = rng.normal(size=(n, d))
    rows = rng.choice(n, overflowing, replace=False)
    h[rows] *= 1e19  # |h|² overflows float32, not float64
    pool = {
        "logits": torch.from_numpy(rng.normal(size=(n, 4))).float(),
        "features": _array(h, "torch", "float32", layout),
    }
    _same_bits_at_every_tile(monkeypatch, egl, lambda: _select(EGL(), pool))
    assert set(_select(EGL(), pool, overflowing, labeled=())[0]) == set(rows)


def test_egl_wide_rows_never_sum_alone(monkeypatch):
    # a one-row tile of >= 32768 values is summed by two threads: the last row joins its tile
    n, d = 65, 40000
    rng = np.random.default_rng(0)
    pool = {
        "logits": rng.normal(size=(n, 2)),
        "features": rng.normal(size=(n, d)).astype(np.float32),
    }
    _same_bits_at_every_tile(monkeypatch, egl, lambda: _select(EGL(), pool))


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 129, 1000])
@pytest.mark.parametrize("rows", [0, 1, 64, 100, 640, ONE_BLOCK])
def test_row_tiles_cover_the_rows_on_64_row_boundaries(n, rows):
    tiles = unc._row_tiles(n, rows)
    assert [s for s, _ in tiles[1:]] == [e for _, e in tiles[:-1]]
    assert (tiles[0][0], tiles[-1][1]) == (0, n)
    assert all(s % 64 == 0 and (e - s >= 2 or n == 1) for s, e in tiles)


def _bad(rng, n, C):
    """Probability rows with a bad sum in the first row, and a copy with a NaN in the last row."""
    p = _softmax(rng.normal(size=(n, C)))
    p[0, 0] += 0.01
    q = p.copy()
    q[n - 1, 0] = np.nan
    return p, q


@pytest.mark.parametrize("values", [1, ONE_BLOCK])
def test_tiled_checks_raise_what_the_whole_raises(monkeypatch, values):
    monkeypatch.setattr(unc, "_TILE_VALUES", values)
    monkeypatch.setattr(egl, "_TILE_VALUES", values)
    n, C = 300, 4
    rng = np.random.default_rng(0)
    bad_sum, bad_nan = _bad(rng, n, C)
    out_of_range = _softmax(rng.normal(size=(n, C)))
    out_of_range[n - 1] = [1.5, -0.5, 0, 0]
    both = bad_sum.copy()
    both[n - 1] = out_of_range[n - 1]
    H = rng.normal(size=(n, 3))
    H_nan = H.copy()
    H_nan[n - 1, 2] = np.nan
    big_logits = rng.normal(size=(n, C))
    big_logits[n - 1, 0] = 1e300  # float64, not float32: accepted with float32 features
    sums = "probs rows must sum to 1"
    in_range = r"probs must hold probabilities in \[0, 1\]"
    for strategy in SCORES:
        for pool, message in [
            ({"probs": bad_sum}, sums),
            ({"probs": bad_nan}, "probs contains NaN or Inf"),
            ({"probs": both}, in_range),
            ({"logits": bad_nan}, "logits contains NaN or Inf"),
        ]:
            with pytest.raises(ValueError, match=message):
                strategy().select(pool, 3)
    with pytest.raises(ValueError, match="probs contains NaN or Inf"):
        Margin().select({"probs": np.full((n, 1), np.nan)}, 3)
    with pytest.raises(ValueError, match="probs must have at least 2 classes"):
        Margin().select({"probs": np.ones((n, 1))}, 3)
    for pool, message in [
        ({"probs": bad_sum, "features": H}, sums),
        ({"probs": bad_nan, "features": H}, "probs and features must be finite"),
        ({"probs": bad_sum, "features": H_nan}, "probs and features must be finite"),
        ({"probs": both, "features": H}, in_range),
        ({"probs": bad_sum, "features": np.full((n, 3), 1e160)}, sums),
        (
            {"logits": big_logits[:, :2] * 0, "features": np.full((n, 3), 1e160)},
            "overflows float64",
        ),
        ({"probs": bad_sum, "features": H[:-1]}, "features must have 300 rows"),
    ]:
        with pytest.raises(ValueError, match=message):
            EGL().select(pool, 3)
    # finite float64 logits past float32's range: their rows are scored in float64, not refused
    sel = EGL().select({"logits": big_logits, "features": H.astype(np.float32)}, 3)
    assert np.isfinite(np.asarray(sel.diagnostics["scores"])).all()
