"""CRC's pool-sized work goes in row blocks (bounded temporaries): ``ntk_features`` fills its
output block by block, and ``gram_min_eig`` scans host ``Z`` for NaN / Inf and its peak by blocks
and rescales only the rows it reads. The blocked code gives the bits of one block, and of the code
before it (kept here as ``_before_*``), and its checks raise the same messages.

- ``ntk_features``: every float dtype, with and without the bias column, numpy and torch (also a
  transposed view): the output equal in value, dtype, shape and strides.
- ``gram_min_eig``: the λ⁺_min values and spectra of every method, at magnitudes that take the
  power-of-two rescaling (the peak in a row no group reads included) or that fail to fit float64.
- ``CRC.select``: the picks and every diagnostic.
- Bad input: NaN / Inf in a later block, overflow of √C h, both at once: the one block's message.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fastal
import fastal.gram as gram
import fastal.ntk as ntk
import fastal.strategies.crc as crc_module
from fastal.strategies import CRC

ONE_BLOCK = 1 << 40
TINY = [1, 20]  # values per block: one row per block, and a few rows


# -- the code before the blocks, verbatim but for the names -------------------------------------


def _before_ntk_features(features, n_classes, *, bias=True):
    from fastal._torch_arrays import as_torch, from_torch
    from fastal._validate import check_matrix

    info = check_matrix(features, "features")
    h = as_torch(features, info)
    if not bool(torch.isfinite(h).all()):
        raise ValueError("features contains NaN or Inf")
    if bias:
        h = torch.cat([h, torch.ones((h.shape[0], 1), dtype=h.dtype, device=h.device)], 1)
    root_c = math.sqrt(n_classes)
    out = (h * root_c).contiguous()
    if not bool(torch.isfinite(out).all()):
        peak = float(h.abs().max())
        raise ValueError(
            f"features times √n_classes overflows {info.dtype}: |features| reaches {peak:.3g} and "
            f"√C = {root_c:.3g}; rescale them, or pass a wider dtype"
        )
    return from_torch(out, info)


def _before_host_peak(Zh):
    peak = float(np.max(np.abs(Zh))) if Zh.size else 0.0
    if not np.isfinite(peak):
        bad = ~np.isfinite(Zh).all(axis=1)
        raise ValueError(
            f"Z contains NaN or Inf in {int(bad.sum())} row(s), first in row {int(np.argmax(bad))}"
        )
    return peak


def _before_call_rows(src, scale, lab, grp, in_place):
    Zh = src.whole  # the whole of Z, scaled, read in place with the caller's indices
    return (Zh if scale == 1.0 else Zh * Zh.dtype.type(scale)), lab, grp


def _use_code_before(monkeypatch):
    monkeypatch.setattr(ntk, "ntk_features", _before_ntk_features)
    monkeypatch.setattr(gram, "_host_peak", _before_host_peak)
    monkeypatch.setattr(gram, "_call_rows", _before_call_rows)
    monkeypatch.setattr(crc_module, "_NTK_ON_DEMAND", False)  # √C [h, 1] made whole


def _outcome(fn, *args, **kwargs):
    """("ok", result) or ("error", type, message)."""
    try:
        return ("ok", fn(*args, **kwargs))
    except (ValueError, TypeError) as err:
        return ("error", type(err), str(err))


def _assert_same_bits(a, b):
    assert type(a) is type(b)
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same_bits(x, y)
        return
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype
        assert a.strides == b.strides
        assert np.array_equal(a, b, equal_nan=True)
        return
    assert a.dtype == b.dtype
    assert a.shape == b.shape
    assert a.stride() == b.stride()
    assert torch.equal(a, b)


def _assert_same_outcome(got, want):
    assert got[0] == want[0], (got, want)
    if got[0] == "error":
        assert got[1:] == want[1:]
    else:
        _assert_same_bits(got[1], want[1])


# -- ntk_features --------------------------------------------------------------------------------


def _features(dtype, backend, n=53, d=7, seed=0):
    rng = np.random.default_rng(seed)
    h = torch.from_numpy(rng.normal(size=(n, d)) * 3).to(getattr(torch, dtype))
    if backend == "numpy":
        return h.numpy()
    if backend == "torch-transposed":
        return h.T.contiguous().T  # a column-major view
    return h


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("dtype", "backend"),
    [(dt, be) for dt in ("float64", "float32", "float16") for be in ("numpy", "torch")]
    + [("bfloat16", "torch"), ("float32", "torch-transposed")],
)
def test_ntk_features_blocks_give_the_bits_of_one_block(monkeypatch, dtype, backend, bias):
    h = _features(dtype, backend)
    want = _before_ntk_features(h, 10, bias=bias)
    for chunk in [ONE_BLOCK, *TINY]:
        monkeypatch.setattr(ntk, "_CHUNK_VALUES", chunk)
        if chunk in TINY:
            assert ntk._chunk_rows(h.shape[1] + bias) < h.shape[0]
        _assert_same_bits(fastal.ntk_features(h, 10, bias=bias), want)


def _bad_features():
    """(h, n_classes, bias) whose check fails in a later block than the first."""
    f32 = np.random.default_rng(1).normal(size=(40, 5)).astype(np.float32)
    nan_late, inf_late, over_late, over_then_nan = (f32.copy() for _ in range(4))
    nan_late[37, 2] = np.nan
    inf_late[29, 0] = -np.inf
    over_late[33, 4] = -3e38
    over_then_nan[2, 1] = 3e38  # the overflow comes first, the NaN's message wins (as before)
    over_then_nan[38, 0] = np.nan
    half = torch.full((30, 3), 0.5, dtype=torch.float16)
    half[25, 1] = 0.25
    return [
        (nan_late, 4, True),
        (inf_late, 4, False),
        (over_late, 4, True),
        (over_late, 4, False),
        (over_then_nan, 4, True),
        (torch.from_numpy(over_late), 9, True),
        (half, 10**10, True),  # √C = 1e5 overflows float16 in the bias column: the peak is 1
        (half, 10**11, False),  # 0.5 √C overflows: the peak of h alone, 0.5
    ]


@pytest.mark.parametrize("case", range(8))
def test_ntk_features_blocked_checks_raise_what_the_whole_raises(monkeypatch, case):
    h, C, bias = _bad_features()[case]
    want = _outcome(_before_ntk_features, h, C, bias=bias)
    assert want[0] == "error"
    for chunk in [ONE_BLOCK, *TINY]:
        monkeypatch.setattr(ntk, "_CHUNK_VALUES", chunk)
        assert _outcome(fastal.ntk_features, h, C, bias=bias) == want


# -- gram_min_eig --------------------------------------------------------------------------------


def _gram_case(dtype, magnitude, n=60, D=9, seed=3):
    """Z, labeled, groups; ``magnitude`` puts the peak in row n - 1, which no group reads."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, D))
    Z[7] = Z[3]  # a duplicate: an exact zero eigenvalue
    kind, value = magnitude
    if kind == "all":
        Z *= value
    elif kind == "unread row":
        Z[n - 1] = value
    Z = Z.astype(dtype)
    lab = np.array([5, 11, 2])
    rest = rng.permutation(np.setdiff1d(np.arange(n - 1), lab))
    return Z, lab, rest[:50].reshape(10, 5)


MAGNITUDES = [
    ("all", 1.0),
    ("all", 2.0**250),  # rescaled by 2^-251
    ("all", 1e-250),  # rescaled up
    ("unread row", 1e-30),  # (no rescaling: the peak is that of the others)
    ("all", 1e200),  # eigenvalues past float64: refused
]


@pytest.mark.parametrize(
    "kw",
    [
        {"method": "tridiagonal"},
        {"method": "tridiagonal", "return_all": True},
        {"method": "lowrank"},
        {},
        {"rtol": 0.0},
    ],
)
@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_gram_blocks_give_the_bits_of_the_code_before(monkeypatch, magnitude, kw):
    Z, lab, groups = _gram_case("float64", magnitude)
    calls = [(Z, lab, groups), (torch.from_numpy(Z), lab.tolist(), torch.from_numpy(groups))]
    with monkeypatch.context() as before:
        _use_code_before(before)
        want = [_outcome(fastal.gram_min_eig, *args, **kw) for args in calls]
    for chunk in [ONE_BLOCK, *TINY]:
        monkeypatch.setattr(gram, "_CHUNK_VALUES", chunk)
        for args, w in zip(calls, want, strict=True):
            _assert_same_outcome(_outcome(fastal.gram_min_eig, *args, **kw), w)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gram_blocks_float32_and_no_labeled(monkeypatch, dtype):
    Z, _, groups = _gram_case(dtype, ("all", 1.0))
    with monkeypatch.context() as before:
        _use_code_before(before)
        want = fastal.gram_min_eig(Z, None, groups, return_all=True)
    for chunk in [ONE_BLOCK, *TINY]:
        monkeypatch.setattr(gram, "_CHUNK_VALUES", chunk)
        _assert_same_bits(fastal.gram_min_eig(Z, None, groups, return_all=True), want)


@pytest.mark.parametrize("value", [1e80, 1e250, 1e-300])
@pytest.mark.parametrize(
    "kw", [{"method": "tridiagonal", "return_all": True}, {"method": "lowrank"}]
)
def test_gram_a_huge_row_no_group_reads_changes_nothing(value, kw):
    """The rows read set the rescaling. With the whole Z's peak, one row of 1e80 that no group
    reads scaled the others to ~1e-80, whose Gram squares underflowed: wrong λ, no error."""
    Z, lab, groups = _gram_case("float64", ("unread row", value))
    plain = Z.copy()
    plain[-1] = 0.0
    _assert_same_outcome(
        _outcome(fastal.gram_min_eig, Z, lab, groups, **kw),
        _outcome(fastal.gram_min_eig, plain, lab, groups, **kw),
    )


@pytest.mark.parametrize("method", ["tridiagonal", "lowrank"])
def test_gram_rescaling_copies_only_the_rows_read(monkeypatch, method):
    """Each call gets a copy of the rows it reads only (labeled first, then its groups' rows),
    scaled by the peak of the rows read, with its indices renumbered into that copy."""
    Z, lab, groups = _gram_case("float64", ("all", 2.0**250))
    Z[-1] *= 2.0**40  # a larger row that no group reads: the rows read set the scale
    monkeypatch.setattr(gram, "_GATHER_VALUES", 3 * Z.shape[1] * groups.shape[1])  # 3 per call
    call_rows, seen = gram._call_rows, []

    def spy(src, scale, lab_c, grp_c, in_place):
        seen.append((lab_c, grp_c, call_rows(src, scale, lab_c, grp_c, in_place)))
        return seen[-1][2]

    monkeypatch.setattr(gram, "_call_rows", spy)
    fastal.gram_min_eig(Z, lab, groups, method=method)
    scale = 2.0 ** -np.frexp(np.abs(Z[np.unique(np.r_[lab, groups.ravel()])]).max())[1]
    assert [g.shape[0] for _, g, _ in seen] == [3, 3, 3, 1]
    assert np.array_equal(np.concatenate([g for _, g, _ in seen]), groups)
    for lab_c, grp_c, (Zc, lab_r, grp_r) in seen:
        rows = np.r_[lab_c, grp_c.ravel()]
        assert lab_c.size == (lab.size if method == "tridiagonal" else 0)
        assert Zc.shape == (rows.size, Z.shape[1])
        assert np.array_equal(rows[lab_r], lab_c)
        assert np.array_equal(rows[grp_r], grp_c)
        assert np.array_equal(Zc, Z[rows] * scale)


@pytest.mark.parametrize("chunk", [*TINY, ONE_BLOCK])
def test_gram_nan_in_a_later_block_names_the_rows(monkeypatch, chunk):
    """NaN / Inf anywhere in Z is refused, in rows no group reads too (as before)."""
    monkeypatch.setattr(gram, "_CHUNK_VALUES", chunk)
    Z, lab, groups = _gram_case("float64", ("all", 1.0))
    Z[41, 3], Z[44, 0], Z[59, 8] = np.nan, np.inf, -np.inf  # row 59: read by no group
    want = "Z contains NaN or Inf in 3 row(s), first in row 41"
    assert _outcome(_before_host_peak, Z) == ("error", ValueError, want)
    assert _outcome(fastal.gram_min_eig, Z, lab, groups) == ("error", ValueError, want)
    one = np.zeros_like(Z)
    one[59, 8] = np.nan
    msg = "Z contains NaN or Inf in 1 row(s), first in row 59"
    assert _outcome(fastal.gram_min_eig, one, lab, groups) == ("error", ValueError, msg)


# -- CRC.select ----------------------------------------------------------------------------------


def _crc_outcome(pool, budget, labeled, **kw):
    out = _outcome(CRC(**kw).select, pool, budget, labeled, seed=4)
    if out[0] == "ok":
        sel = out[1]
        return ("ok", (sel.indices, tuple(sel.diagnostics.items())))
    return out


def _assert_same_crc(got, want):
    assert got[0] == want[0], (got, want)
    if got[0] == "error":
        assert got[1:] == want[1:]
        return
    _assert_same_bits(got[1][0], want[1][0])
    assert [k for k, _ in got[1][1]] == [k for k, _ in want[1][1]]
    for (_, a), (_, b) in zip(got[1][1], want[1][1], strict=True):
        if isinstance(a, np.ndarray):
            _assert_same_bits(a, b)
        else:
            assert a == b


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [("float32", 1.0), ("float64", 1.0), ("float64", 2.0**-260), ("float64", 1e200)],
)
@pytest.mark.parametrize("balanced", [False, True])
def test_crc_select_blocks_give_the_picks_of_the_code_before(monkeypatch, dtype, scale, balanced):
    rng = np.random.default_rng(9)
    n, d, C = 203, 6, 4
    X = (rng.normal(size=(n, d)) * scale).astype(dtype)
    X[17] = X[30]  # a duplicate: Proposition 2's zero
    P = rng.dirichlet(np.ones(C), size=n)
    pool = {"features": X, "probs": P}
    labeled = [0, 30, 99]
    kw = {"group_size": 4, "balanced": balanced}
    with monkeypatch.context() as before:
        _use_code_before(before)
        want = _crc_outcome(pool, 12, labeled, **kw)
    if scale == 1e200:
        assert want[0] == "error"
    for chunk in [ONE_BLOCK, *TINY]:
        monkeypatch.setattr(ntk, "_CHUNK_VALUES", chunk)
        monkeypatch.setattr(gram, "_CHUNK_VALUES", chunk)
        _assert_same_crc(_crc_outcome(pool, 12, labeled, **kw), want)
        _assert_same_crc(_crc_outcome(X, 12, labeled, group_size=4), _before_pool(monkeypatch, X))


def _before_pool(monkeypatch, X):
    with monkeypatch.context() as before:
        _use_code_before(before)
        return _crc_outcome(X, 12, [0, 30, 99], group_size=4)


def test_crc_select_nan_in_a_later_block(monkeypatch):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 3)).astype(np.float32)
    X[47, 1] = np.nan
    P = np.full((50, 2), 0.5)
    with monkeypatch.context() as before:
        _use_code_before(before)
        want = _crc_outcome({"features": X, "probs": P}, 5, None, group_size=5)
    assert want[:2] == ("error", ValueError)
    for chunk in [ONE_BLOCK, *TINY]:
        monkeypatch.setattr(ntk, "_CHUNK_VALUES", chunk)
        monkeypatch.setattr(gram, "_CHUNK_VALUES", chunk)
        assert _crc_outcome({"features": X, "probs": P}, 5, None, group_size=5) == want
