"""CRC on the CPU reads the rows of ``√C [h, 1]`` as the Gram kernels need them (``NtkRows``),
never as an ``(n, D)`` copy of the pool: the picks, scores and every diagnostic equal, bit for bit,
those of the materialised ``ntk_features`` (the CUDA path, kept here behind ``_NTK_ON_DEMAND``),
for every feature dtype, both Gram methods, calls of a few groups each, balanced groups and the
duplicate rule; the checks raise the same messages; no whole-pool copy is made."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastal
import fastal.gram as gram
import fastal.ntk as ntk
import fastal.strategies.crc as crc_module
from fastal.ntk import NtkRows, ntk_rows
from fastal.strategies import CRC

FEATURE_DTYPES = ["float64", "float32", "float16", "bfloat16"]


def _pool(dtype, *, n=161, d=6, C=4, key="features", seed=0, contiguous=True):
    rng = np.random.default_rng(seed)
    h = torch.from_numpy(rng.normal(size=(n, d)) * 2).to(getattr(torch, dtype))
    h[17] = h[30]  # a duplicate of a labeled row: Proposition 2's zero
    h[41] = h[40]  # two equal unlabeled rows
    if not contiguous:
        h = h.T.contiguous().T
    if dtype in ("float64", "float32") and contiguous:
        h = h.numpy()
    return {key: h, "probs": rng.dirichlet(np.ones(C), size=n)}


def _outcome(pool, budget, labeled, **kw):
    try:
        sel = CRC(**kw).select(pool, budget, labeled, seed=3)
    except (ValueError, TypeError) as err:
        return ("error", type(err), str(err))
    return ("ok", sel.indices, sel.diagnostics)


def _materialised(monkeypatch, *args, **kw):
    with monkeypatch.context() as m:
        m.setattr(crc_module, "_NTK_ON_DEMAND", False)
        return _outcome(*args, **kw)


def _assert_same(got, want):
    assert got[0] == want[0], (got, want)
    if got[0] == "error":
        assert got[1:] == want[1:]
        return
    assert type(got[1]) is type(want[1])
    assert np.array_equal(np.asarray(got[1]), np.asarray(want[1]))
    assert list(got[2]) == list(want[2])
    for k in want[2]:
        a, b = got[2][k], want[2][k]
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype, k
            assert np.array_equal(a, b), k  # scores bit for bit
        else:
            assert a == b, k


@pytest.mark.parametrize("gather", [1 << 40, 1])  # one call, or one group per call
@pytest.mark.parametrize("key", ["features", "ntk_features"])
@pytest.mark.parametrize("dtype", FEATURE_DTYPES)
@pytest.mark.parametrize(
    ("labeled", "G", "budget", "d"),
    [
        ([0, 30, 99], 4, 12, 6),  # |S| = 7 = D: tridiagonal
        (list(range(0, 120, 2)), 2, 6, 40),  # |L| = 60 > D = 41: "auto" takes the low-rank method
        (None, 5, 10, 6),  # nothing labeled
    ],
)
def test_picks_and_scores_equal_the_materialised_features(monkeypatch, gather, key, dtype,
                                                          labeled, G, budget, d):  # fmt: skip
    monkeypatch.setattr(gram, "_GATHER_VALUES", gather)
    pool = _pool(dtype, key=key, d=d)
    want = _materialised(monkeypatch, pool, budget, labeled, group_size=G)
    assert want[0] == "ok"
    _assert_same(_outcome(pool, budget, labeled, group_size=G), want)


def test_the_low_rank_case_takes_the_low_rank_method():
    assert gram._cheaper_method(60, 2, 41, 50, False) == "lowrank"  # as in the test above
    assert gram._cheaper_method(3, 4, 7, 39, False) == "tridiagonal"


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("zeros", ["duplicates", "skip"])
@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("contiguous", [True, False])
def test_options_and_views(monkeypatch, bias, zeros, balanced, contiguous):
    pool = _pool("float32", contiguous=contiguous)
    kw = {"group_size": 4, "bias": bias, "zeros": zeros, "balanced": balanced, "max_groups": 9}
    want = _materialised(monkeypatch, pool, 8, [0, 30, 99], **kw)
    assert want[0] == "ok"
    _assert_same(_outcome(pool, 8, [0, 30, 99], **kw), want)


def test_no_whole_pool_copy(monkeypatch):
    """ntk_features is not called, and no read asks for more rows than one call's share or one
    batch of the duplicate rule's candidates."""
    pool = _pool("float16", n=400)
    labeled = [0, 30, 99]
    want = _materialised(monkeypatch, pool, 8, labeled, group_size=4)

    def refuse(*args, **kwargs):
        raise AssertionError("ntk_features made the whole (n, D) copy")

    monkeypatch.setattr(ntk, "ntk_features", refuse)
    monkeypatch.setattr(gram, "_GATHER_VALUES", 7 * 4 * 5)  # 5 groups of 4 rows, D = 7
    take, sizes = NtkRows.take, []

    def spy(self, rows):
        sizes.append(len(rows))
        return take(self, rows)

    monkeypatch.setattr(NtkRows, "take", spy)
    _assert_same(_outcome(pool, 8, labeled, group_size=4), want)
    # a Gram call reads the labeled rows and its 5 groups; the duplicate rule reads candidates
    # in batches of max(Q / G, 16) groups
    assert sizes
    assert max(sizes) <= max(len(labeled) + 5 * 4, 16 * 4) < 400


@pytest.mark.parametrize("dtype", FEATURE_DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("C", [1, 3, 10, 1000])
def test_rows_and_peak_are_those_of_ntk_features(dtype, bias, C):
    rng = np.random.default_rng(C)
    h = torch.from_numpy(rng.normal(size=(37, 5)) * 3).to(getattr(torch, dtype))
    wide = torch.float32 if dtype in ("float16", "bfloat16") else None
    want = fastal.ntk_features(h.float() if wide else h, C, bias=bias)
    reader = ntk_rows(h, C, bias=bias, dtype=wide)
    assert reader.shape == tuple(want.shape)
    assert reader.dtype == str(want.dtype).removeprefix("torch.")
    rows = np.array([36, 0, 5, 5, 12])
    got = reader.take(rows)
    assert got.flags.c_contiguous
    assert np.array_equal(got, want[rows].numpy())
    assert reader.peak() == float(want.abs().max())
    assert reader.whole is None


def test_peak_of_a_pool_of_zeros_and_of_an_empty_pool():
    assert ntk_rows(np.zeros((4, 3)), 9, bias=False).peak() == 0.0
    assert ntk_rows(np.zeros((4, 3)), 9).peak() == 3.0
    assert NtkRows(torch.zeros((0, 3)), None, False, torch.float32).peak() == 0.0


def _bad_pools():
    f32 = np.random.default_rng(1).normal(size=(40, 5)).astype(np.float32)
    nan_late, over = f32.copy(), f32.copy()
    nan_late[37, 2] = np.nan
    over[33, 4] = -3e38
    half = torch.full((40, 5), 0.5, dtype=torch.float16)
    probs = np.full((40, 4), 0.25)
    return [
        ({"features": nan_late, "probs": probs}, {}),
        ({"features": over, "probs": probs}, {}),
        ({"features": over, "probs": probs}, {"bias": False}),
        ({"features": half, "probs": np.full((40, 2), 0.5)}, {}),  # fine: the contrast
        ({"ntk_features": torch.from_numpy(nan_late).half(), "probs": probs}, {}),
        (torch.from_numpy(nan_late).bfloat16(), {}),
        ({"features": f32.astype(np.float64) * 1e200, "probs": probs}, {}),  # λ past float64
        ({"features": f32.astype(np.float64) * 1e-120, "probs": probs}, {"bias": False}),
    ]


@pytest.mark.parametrize("case", range(8))
def test_bad_and_extreme_pools_raise_what_the_materialised_path_raises(monkeypatch, case):
    pool, kw = _bad_pools()[case]
    want = _materialised(monkeypatch, pool, 5, [0], group_size=5, **kw)
    got = _outcome(pool, 5, [0], group_size=5, **kw)
    if case in (3, 7):  # 7: rescaled by a power of two
        assert want[0] == "ok"
    else:
        assert want[0] == "error"
    _assert_same(got, want)


def test_ntk_rows_refuses_device_tensors_and_checks_like_ntk_features():
    with pytest.raises(ValueError, match="n_classes must be a positive integer"):
        ntk_rows(np.ones((3, 2)), 0)
    with pytest.raises(TypeError, match="bias must be a bool"):
        ntk_rows(np.ones((3, 2)), 2, bias=1)
    with pytest.raises(ValueError, match="features times √n_classes overflows float16"):
        ntk_rows(torch.full((3, 2), 0.5, dtype=torch.float16), 10**11, bias=False)
    with pytest.raises(ValueError, match="reads host features"):
        NtkRows(torch.ones((3, 2), device="meta"), None, False, torch.float32)


def test_ntk_rows_in_a_narrower_dtype_says_overflow_not_nan():
    """A maximum past the narrower dtype was cast to it before the NaN / Inf check (it read as
    Inf): finite features were refused as containing NaN or Inf."""
    h = np.array([[1.0, -1e5], [2.0, 3.0]], np.float32)  # 1e5 > float16's 65504
    with pytest.raises(ValueError, match=r"overflows float16: \|features\| reaches 1e\+05"):
        ntk_rows(h, 1, dtype=torch.float16)
    assert ntk_rows(h, 1).peak() == 1e5
    assert ntk_rows(h[:, :1], 4, dtype=torch.float16).peak() == 4.0  # √4 * max(2, bias 1)
    h[0, 0] = np.nan
    with pytest.raises(ValueError, match="features contains NaN or Inf"):
        ntk_rows(h, 1, dtype=torch.float16)


@pytest.mark.parametrize("method", ["tridiagonal", "lowrank"])
def test_progress_bar_over_the_groups(monkeypatch, capsys, method):
    """A bar over the groups, one update per CPU call; the values do not change."""
    rng = np.random.default_rng(5)
    Z = rng.normal(size=(300, 12))
    lab = np.arange(20)
    groups = np.arange(20, 300).reshape(70, 4)
    want = fastal.gram_min_eig(Z, lab, groups, method=method)
    monkeypatch.setattr(gram, "_INTERRUPT_WORK", 1.0)  # one group per call
    got = fastal.gram_min_eig(Z, lab, groups, method=method, progress=True)
    err = capsys.readouterr().err
    assert "λ⁺_min" in err
    assert "70/70" in err
    assert np.array_equal(got, want)
    with pytest.raises(TypeError, match="progress must be a bool"):
        fastal.gram_min_eig(Z, lab, groups, progress=1)


def test_crc_progress(monkeypatch, capsys):
    pool = _pool("float32")
    want = _outcome(pool, 8, [0, 30, 99], group_size=4)
    got = _outcome(pool, 8, [0, 30, 99], group_size=4, progress=True)
    assert "39/39" in capsys.readouterr().err  # (161 - 3) // 4 groups
    _assert_same(got, want)
    got = _materialised(monkeypatch, _pool("float32", key="ntk_features"), 8, [0, 30, 99],
                        group_size=4, progress=True)  # fmt: skip
    assert "39/39" in capsys.readouterr().err
    with pytest.raises(TypeError, match="progress must be a bool"):
        CRC(progress="yes")


@pytest.mark.parametrize("lowrank", [False, True])
def test_gathered_calls_cap_the_rows_unless_the_labeled_part_dominates(monkeypatch, lowrank):
    """Gathered calls get about _GATHER_VALUES values of group rows; but where each call forms
    a large labeled part again (the tridiagonal kernel), never so few groups that it would cost
    more than an eighth of the call: then they are the calls of Z read in place."""
    monkeypatch.setattr(gram, "_GATHER_VALUES", 4 * 20 * 129)  # four groups of 20 at D = 129

    def sizes(m_lab, in_place):
        grp = np.zeros((500, 20), np.int64)
        chunks = gram._group_chunks(grp, np.arange(m_lab), 129, lowrank, in_place)
        return [c.shape[0] for c in chunks]

    assert sizes(2, False) == [4] * 125  # a small labeled part: the cap holds
    if lowrank:  # the basis is computed once on the host: only the cap
        assert sizes(20000, False) == [4] * 125
    else:  # |L| = 20000: 8 |L| D² / ((2/3) D³) = 9922 groups' work, more than all of them
        assert sizes(20000, False) == sizes(20000, True) == [500]
