"""SparseApprox builds its problem in row chunks (bounded float64 temporaries): the chunked
builders give the bits of one block, and their input checks raise what the checks on the whole do.

- ``_bayesian_problem`` and ``_factored_problem`` with tiny chunks equal the one-block result
  exactly (``E`` with its layout, ``v``, ``σ``, ``A``), with ``n_u · C`` not a multiple of 64 so
  that torch's trailing partial vector block is exercised (see ``_row_chunks``).
- A bad row sum in the first chunk and a NaN in a later one: the NaN's message, as on the whole.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastal.strategies.sparse_approx as sa
from fastal.strategies import SparseApprox

ONE_BLOCK = 1 << 40
TINY = [1, 300]  # the fewest rows per chunk, and a few dozen


def _probs(rng, shape):
    p = rng.dirichlet(np.full(shape[-1], 0.5), size=shape[:-1])
    p[p < 0.02] = 0  # -log 0 is clamped; softmax(log 0 / T) = 0
    return p / p.sum(-1, keepdims=True)


def _rows(n, labeled):
    return torch.from_numpy(np.setdiff1d(np.arange(n), labeled))


def _assert_same_bits(a, b):
    assert a.dtype == b.dtype
    assert a.shape == b.shape
    assert a.stride() == b.stride()
    assert torch.equal(a, b)


@pytest.mark.parametrize("labeled", [[], [0, 5, 77]])
@pytest.mark.parametrize(("m", "n", "C"), [(5, 203, 3), (8, 101, 1), (3, 97, 37)])
@pytest.mark.parametrize("source", ["mc_probs", "losses"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_bayesian_chunks_give_the_bits_of_one_block(monkeypatch, backend, source, m, n, C, labeled):
    rng = np.random.default_rng(m * n + C)
    p = _probs(rng, (m, n, C)).astype(np.float32)
    if source == "mc_probs":
        pool = {"mc_probs": p}
    else:
        pool = {"losses": -np.log(p + 1e-3), "probs": _probs(rng, (n, C))}
    if backend == "torch":
        pool = {k: torch.from_numpy(v) for k, v in pool.items()}
    rows = _rows(n, labeled)
    monkeypatch.setattr(sa, "_CHUNK_VALUES", ONE_BLOCK)
    phi, v, sigma = sa._bayesian_problem(pool, rows, 4)
    for chunk in TINY:
        monkeypatch.setattr(sa, "_CHUNK_VALUES", chunk)
        assert len(sa._row_chunks(rows.numel(), C, m)) > 1
        phi_c, v_c, sigma_c = sa._bayesian_problem(pool, rows, 4)
        _assert_same_bits(phi_c.G, phi.G)
        _assert_same_bits(v_c, v)
        _assert_same_bits(sigma_c, sigma)


@pytest.mark.parametrize("labeled", [[], [1, 2, 150]])
@pytest.mark.parametrize(
    "case", ["logits-T2", "logits-auto", "probs-T0.5", "logits-label_probs", "probs-label_probs"]
)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_factored_chunks_give_the_bits_of_one_block(monkeypatch, dtype, case, labeled):
    n, C, d = 301, 7, 5
    rng = np.random.default_rng(n + len(case))
    z = rng.normal(size=(n, C)) * 3
    key = case.split("-")[0]
    first = z if key == "logits" else _probs(rng, (n, C))
    pool = {key: first.astype(dtype), "features": rng.normal(size=(n, d)).astype(dtype)}
    kw = {}
    if case.endswith("T2"):
        kw["temperature"] = 2.0
    elif case.endswith("T0.5"):
        kw["temperature"] = 0.5
    elif case.endswith("auto"):
        pool["labeled_logits"] = rng.normal(size=(20, C)) * 3
        pool["labeled_targets"] = rng.integers(0, C, 20)
    else:
        pool["label_probs"] = _probs(rng, (n, C))
    rows = _rows(n, labeled)
    monkeypatch.setattr(sa, "_CHUNK_VALUES", ONE_BLOCK)
    phi, v, sigma, T = SparseApprox(**kw)._factored_problem(pool, rows, 4)
    for chunk in TINY:
        monkeypatch.setattr(sa, "_CHUNK_VALUES", chunk)
        assert len(sa._row_chunks(rows.numel(), C)) > 1
        phi_c, v_c, sigma_c, T_c = SparseApprox(**kw)._factored_problem(pool, rows, 4)
        _assert_same_bits(phi_c.A, phi.A)
        _assert_same_bits(v_c, v)
        _assert_same_bits(sigma_c, sigma)
        assert T_c == T


@pytest.mark.parametrize(("n", "C", "m"), [(1, 3, 1), (3, 5, 2), (1000, 10, 8), (999, 37, 3)])
@pytest.mark.parametrize("chunk", [1, 700, ONE_BLOCK])
def test_row_chunks_cover_the_rows_on_64_value_boundaries(monkeypatch, n, C, m, chunk):
    monkeypatch.setattr(sa, "_CHUNK_VALUES", chunk)
    chunks = sa._row_chunks(n, C, m)
    assert [s for s, _ in chunks[1:]] == [e for _, e in chunks[:-1]]
    assert (chunks[0][0], chunks[-1][1]) == (0, n)
    assert all(s * C % 64 == 0 and e - s >= min(4, n) for s, e in chunks)


def _bad(rng, shape, n):
    """Probability rows with a bad sum in the first row and a NaN in the last one."""
    p = _probs(rng, shape)
    p[..., 0, 0] += 0.01
    q = p.copy()
    q[..., n - 1, 0] = np.nan
    return p, q


FINITE = "must hold finite probabilities in"
SUMS = "rows must sum to 1 over the classes"


@pytest.mark.parametrize("chunk", [1, ONE_BLOCK])
def test_chunked_checks_raise_what_the_whole_raises(monkeypatch, chunk):
    monkeypatch.setattr(sa, "_CHUNK_VALUES", chunk)
    n, C, m = 400, 4, 3
    rng = np.random.default_rng(0)
    H = rng.normal(size=(n, 2))
    p3, p3_nan = _bad(rng, (m, n, C), n)
    p2, p2_nan = _bad(rng, (n, C), n)
    good = _probs(rng, (n, C))
    losses = rng.gamma(2.0, 1.0, size=(m, n, C))
    losses_nan = losses.copy()
    losses_nan[0, n - 1, 0] = np.inf
    cases = [
        ({"mc_probs": p3}, {}, f"mc_probs {SUMS}"),
        ({"mc_probs": p3_nan}, {}, f"mc_probs {FINITE}"),
        ({"losses": losses_nan, "probs": p2}, {}, f"probs {SUMS}"),
        ({"losses": losses, "probs": p2_nan}, {}, f"probs {FINITE}"),
        ({"losses": losses_nan, "probs": good}, {}, "losses contains NaN or Inf"),
        ({"probs": p2, "features": H}, {"temperature": 2.0}, f"probs {SUMS}"),
        ({"probs": p2_nan, "features": H}, {"temperature": 2.0}, "probs and features must be"),
        ({"probs": p2, "features": H, "label_probs": p2_nan}, {}, f"probs {SUMS}"),
        ({"logits": good, "features": H, "label_probs": p2}, {}, f"label_probs {SUMS}"),
        ({"logits": good, "features": H, "label_probs": p2_nan}, {}, f"label_probs {FINITE}"),
    ]
    for pool, kw, message in cases:
        with pytest.raises(ValueError, match=message):
            SparseApprox(**kw).select(pool, 3)
