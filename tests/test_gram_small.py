"""The CUDA kernel's two paths for Gram matrices of order <= 32, built for the host, against the
float64 numpy reference :func:`reference.gram_min_eig_ref` and the CPU kernel (``path``):

- ``thread``: one matrix per thread (csrc/common/gram_small.h;
  ``fastal._cpu.gram_min_eig_small_*``), over the same interleaved workspace as on the GPU;
- ``warp``: one matrix per warp, lane i owning row i (csrc/common/gram_warp.h;
  ``fastal._cpu.gram_min_eig_warp_*``), on a warp emulated by 32 coroutines that switch at every
  shuffle, vote and __syncwarp (csrc/cpu/simt_emulation.h).

The GPU runs these same sources, so these CPU tests check their formation, reduction and search on
every machine; ``test_cuda_gram.py`` checks the device builds against the CPU where there is a GPU.
Tolerances as in ``test_gram.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from reference import gram_min_eig_ref
from test_gram import (
    ATOL,
    THRESHOLD_CASES,
    THRESHOLD_GROUPS,
    THRESHOLD_LAB,
    THRESHOLD_Z,
    assert_eigs_close,
    make_case,
    nearly_singular_case,
)

import fastal

EPS = np.finfo(np.float64).eps


PATHS = ["thread", "warp"]


def _warp_emulation_available() -> bool:
    """The warp emulation needs glibc's ucontext; without it the warp hook raises saying so."""
    try:
        fastal._ext.cpu.gram_min_eig_warp_float64(np.ones((2, 1)), np.zeros(0, np.int64),
                                                  np.array([[0]]), 0.0)  # fmt: skip
    except ValueError as err:
        if "ucontext" in str(err):
            return False
        raise
    return True


WARP_EMULATION = _warp_emulation_available()


@pytest.fixture(params=PATHS)
def path(request) -> str:
    if request.param == "warp" and not WARP_EMULATION:
        pytest.skip("the warp emulation needs glibc's ucontext")
    return request.param


def small(Z, lab, groups, rtol=None, return_all=True, slots=64, dtype="float64", path="thread"):
    """The host build of a small-matrix path; rtol as gram.py resolves it."""
    Z = np.ascontiguousarray(Z, dtype=dtype)
    lab = np.asarray([] if lab is None else lab, dtype=np.int64)
    groups = np.ascontiguousarray(groups, dtype=np.int64)
    if rtol is None:
        rtol = max(lab.size + groups.shape[1], Z.shape[1]) * EPS
    if path == "warp":
        return getattr(fastal._ext.cpu, f"gram_min_eig_warp_{dtype}")(
            Z, lab, groups, rtol, return_all
        )
    kernel = getattr(fastal._ext.cpu, f"gram_min_eig_small_{dtype}")
    return kernel(Z, lab, groups, rtol, return_all, slots)


# (n, D, |L|, G): every order from 1 to 32 is reached on one side or the other
SIZES = [(10, 4, 0, 1), (10, 4, 1, 1), (20, 3, 0, 2), (30, 5, 2, 3), (40, 6, 4, 3)]
SIZES += [(80, 40, m, g) for m, g in [(0, 8), (3, 6), (10, 6), (16, 1), (20, 12), (2, 30)]]
SIZES += [(80, d, 10, 20) for d in (7, 9, 13, 16, 24, 31, 32)]  # D side
SIZES += [(120, 64, m, 32 - m) for m in (0, 11)]  # S side, order 32


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    ("n", "D", "m_lab", "G"), SIZES, ids=[f"n{n}-D{D}-L{m}-G{g}" for n, D, m, g in SIZES]
)
def test_matches_reference_and_cpu_kernel(n, D, m_lab, G, dtype, path):
    Z, lab, groups = make_case(n, D, m_lab, 9, G, seed=n + D + m_lab + G)
    Zs = Z.astype(dtype).astype(np.float64)  # the stored values
    lam, spectra = small(Z, lab, groups, dtype=dtype, path=path)
    want, want_spectra = gram_min_eig_ref(Zs, lab, groups)
    lmax = want_spectra[:, -1]
    assert lam.dtype == np.float64
    assert lam.shape == (9,)
    assert spectra.shape == (9, min(m_lab + G, D))
    assert_eigs_close(lam, want, lmax)
    assert_eigs_close(spectra, np.maximum(want_spectra, 0), lmax, rtol=1e-9)
    assert (spectra >= 0).all()
    assert (np.diff(spectra, axis=1) >= 0).all()
    cpu, cpu_spectra = fastal.gram_min_eig(Z.astype(dtype), lab, groups, method="tridiagonal",
                                           return_all=True)  # fmt: skip
    assert_allclose(lam, cpu, rtol=1e-10, atol=ATOL * lmax.max())
    assert_allclose(spectra, cpu_spectra, rtol=1e-9, atol=ATOL * lmax.max())
    # return_all does not change the scores
    assert_array_equal(small(Z, lab, groups, return_all=False, dtype=dtype, path=path), lam)


@pytest.mark.parametrize(("D", "G"), [(16, 20), (5, 37), (32, 9), (1, 3), (24, 64)])
def test_warp_path_stages_many_group_rows(D, G):
    """The one-warp path's D side stages the group's rows 8 at a time and checks them 32 at a
    time: G past one stage or one warp, and not a multiple of either."""
    if not WARP_EMULATION:
        pytest.skip("the warp emulation needs glibc's ucontext")
    Z, lab, groups = make_case(D + 2 + 6 * G, D, D + 2, 6, G, seed=D * 100 + G)
    lam, spectra = small(Z, lab, groups, path="warp")
    want, want_spectra = gram_min_eig_ref(Z, lab, groups)
    lmax = want_spectra[:, -1]
    assert_eigs_close(lam, want, lmax)
    assert_eigs_close(spectra, np.maximum(want_spectra, 0), lmax, rtol=1e-9)
    bad = groups.copy()
    bad[3, G - 1] = Z.shape[0]  # the last element, past the first 32 when G > 32
    lam = small(Z, lab, bad, return_all=False, path="warp")
    assert np.isnan(lam[3])
    assert not np.isnan(np.delete(lam, 3)).any()


@pytest.mark.parametrize("slots", [1, 2, 5, 64, 1000])
def test_any_number_of_slots(slots):
    """Slots are interleaved (element i of slot s at i * slots + s) and taken grid-stride: 23
    groups over 1 to 1000 slots (capped at the groups) agree with the reference."""
    Z, lab, groups = make_case(100, 20, 4, 23, 12, seed=3)
    lam, spectra = small(Z, lab, groups, slots=slots)
    want, want_spectra = gram_min_eig_ref(Z, lab, groups)
    assert_eigs_close(lam, want, want_spectra[:, -1])
    assert_eigs_close(spectra, np.maximum(want_spectra, 0), want_spectra[:, -1], rtol=1e-9)


@pytest.mark.parametrize(
    ("n", "D", "m_lab", "G", "rank"),
    [(60, 10, 12, 4, 6), (60, 30, 8, 4, 5), (50, 8, 3, 2, 1), (80, 32, 20, 12, 7)],
)
def test_rank_deficient(n, D, m_lab, G, rank, path):
    Z, lab, groups = make_case(n, D, m_lab, 5, G, seed=rank, rank=rank)
    lam, spectra = small(Z, lab, groups, path=path)
    want, want_spectra = gram_min_eig_ref(Z, lab, groups)
    lmax = want_spectra[:, -1]
    assert_eigs_close(lam, want, lmax, rtol=1e-7)
    size = min(m_lab + G, D)
    assert (spectra[:, : size - rank] <= ATOL * lmax[:, None]).all()  # the zeros
    assert (lam >= spectra[:, size - rank] * (1 - 1e-7)).all()  # λ⁺_min is past them


def test_duplicates_score_past_their_zero(path):
    """Proposition 2: a group repeating a labeled row has an exact zero eigenvalue, which λ⁺_min
    skips."""
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(25, 12))
    lab = np.arange(5)
    Z[5] = Z[0]
    Z[7] = Z[6]
    groups = np.array([[5, 10], [6, 7], [8, 9]])
    lam, spectra = small(Z, lab, groups, path=path)
    want, want_spectra = gram_min_eig_ref(Z, lab, groups)
    assert_eigs_close(lam, want, want_spectra[:, -1])
    assert (spectra[:2, 0] <= ATOL * want_spectra[:2, -1]).all()


@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-7])
def test_nearly_singular(delta, path):
    Z, lab, groups = nearly_singular_case(delta)
    lam, _ = small(Z, lab, groups, rtol=1e-15, path=path)
    want, spectra = gram_min_eig_ref(Z, lab, groups, rtol=1e-15)
    assert_eigs_close(lam, want, spectra[:, -1], rtol=1e-6)


def test_zero_matrices_and_the_rtol_rule(path):
    Z = np.zeros((6, 3))
    Z[1] = [1.0, 2.0, 2.0]
    lam, spectra = small(Z, [0], [[2], [1], [3]], path=path)
    assert_array_equal(lam, [0.0, 9.0, 0.0])
    assert_array_equal(spectra[0], [0.0, 0.0])
    assert_array_equal(small(Z, None, [[0, 2, 3, 4]], return_all=False, path=path), [0.0])  # D side
    for rtol, want in THRESHOLD_CASES:
        got = small(
            THRESHOLD_Z, THRESHOLD_LAB, THRESHOLD_GROUPS, rtol=rtol, return_all=False, path=path
        )
        assert_allclose(got, [want], rtol=1e-9)


def test_indices_out_of_range_give_nan(path):
    """No reads out of bounds: the group with a bad index (or every group, for a bad labeled
    index) scores NaN, as on the GPU; gram.py rejects such input before any kernel runs."""
    Z, lab, groups = make_case(40, 10, 2, 3, 3, seed=0)
    bad = groups.copy()
    bad[1, 2] = 40
    lam, spectra = small(Z, lab, bad, path=path)
    assert np.isnan(lam[1])
    assert np.isnan(spectra[1]).all()
    want, _ = gram_min_eig_ref(Z, lab, groups[[0, 2]])
    assert_allclose(lam[[0, 2]], want, rtol=1e-8)
    lam = small(Z, [0, -1], groups, return_all=False, path=path)
    assert np.isnan(lam).all()
    Z, lab, groups = make_case(40, 4, 6, 3, 3, seed=1)  # D side: labeled only in the shared part
    assert not np.isnan(small(Z, lab, groups, return_all=False, path=path)).any()
    lab[2] = 40
    assert np.isnan(small(Z, lab, groups, return_all=False, path=path)).all()


def test_rejects_orders_above_32():
    Z, lab, groups = make_case(80, 40, 20, 2, 13, seed=0)  # order 33
    for path in PATHS if WARP_EMULATION else ["thread"]:
        with pytest.raises(ValueError, match="orders up to 32, got 33"):
            small(Z, lab, groups, path=path)
    with pytest.raises(ValueError, match="slots must be >= 1"):
        small(Z, lab, groups[:, :12], slots=0)


@pytest.mark.parametrize("kind", ["bias", "columns"])
@pytest.mark.parametrize("exponent", [-255, -300, -520, -1000])
def test_columns_far_below_the_diagonal(kind, exponent, path):
    """The one-thread and warp paths share the normalised reflector (test_gram.py's case)."""
    from test_gram import wide_range_case

    Z, lab, groups = wide_range_case(kind, exponent)
    want, want_spectra = gram_min_eig_ref(Z, lab, groups)
    lam, spectra = small(Z, lab, groups, path=path)
    assert_allclose(lam, want, rtol=1e-12)
    assert_allclose(spectra[:, -1], want_spectra[:, -1], rtol=1e-12)
