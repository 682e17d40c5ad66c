"""Batched Gram eigenvalues (``fastal.gram_min_eig``, the CRC score) against the float64 numpy
reference :func:`reference.gram_min_eig_ref` (``np.linalg.eigvalsh`` on the explicit Gram matrix).

- λ⁺_min and the spectra for sizes |S| from 1 to ~300 (1024 in the slow cases), on both sides of
  the Gram matrix (|S| <= D: ``Z_S Z_Sᵀ``; |S| > D: ``Z_Lᵀ Z_L + Z_gᵀ Z_g``), float32 and float64
  storage, numpy and torch-CPU.
- Both sides give the same λ⁺_min on the same Gram matrix (zero columns appended to Z move it from
  the D side to the |S| side without changing ``Z_S Z_Sᵀ``).
- Rank deficiency (|S| > rank), duplicated rows (Proposition 2: a zero eigenvalue, skipped by
  λ⁺_min), nearly singular sets, all-zero rows, empty L, G = 1, exact power-of-two rescaling.
- Invariants: spectra non-negative and ascending; a group's score does not depend on the batch.
- Errors name the argument.

Tolerances: the kernel computes in float64 from the stored values for both dtypes, so float32 input
is held to the float64 tolerance against the reference on the stored (upcast) values. Eigenvalues
of a backward-stable method carry an absolute error ~ eps · λ_max, hence the ``atol`` term.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    CPU_BACKENDS,
    backend_dtype_params,
    backend_of,
    to_backend,
    to_numpy,
    upcast,
)
from numpy.testing import assert_allclose, assert_array_equal
from reference import gram_min_eig_ref

import fastal

PARAMS = backend_dtype_params(dtypes=("float64", "float32"), backends=CPU_BACKENDS)
EPS = np.finfo(np.float64).eps
RTOL = 1e-8  # relative, for well-conditioned λ⁺_min (both dtypes: float64 compute)
ATOL = 64 * EPS  # times the largest eigenvalue (per group)


def make_case(
    n: int, D: int, m_lab: int, n_groups: int, G: int, seed: int, rank: int | None = None
):
    """Gaussian Z (n, D), or with a rank: the product of two small-integer factors (exact in
    float32, so the stored matrix has exactly that rank); a random labeled set and groups disjoint
    from it."""
    rng = np.random.default_rng(seed)
    if rank is None:
        Z = rng.normal(size=(n, D))
    else:
        Z = rng.integers(-3, 4, size=(n, rank)) @ rng.integers(-3, 4, size=(rank, D))
        Z = Z.astype(np.float64)
    perm = rng.permutation(n)
    lab = np.sort(perm[:m_lab])
    rest = perm[m_lab:]
    groups = np.stack([rng.choice(rest, size=G, replace=False) for _ in range(n_groups)])
    return Z, lab, groups


def assert_eigs_close(got, want, lmax, rtol=RTOL, atol=ATOL) -> None:
    """|got - want| <= rtol |want| + atol λ_max, elementwise (λ_max per group, broadcast)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    lmax = np.asarray(lmax, dtype=np.float64).reshape(-1, *([1] * (want.ndim - 1)))
    err = np.abs(got - want)
    bound = rtol * np.abs(want) + atol * lmax
    assert (err <= bound).all(), f"max excess {np.max(err - bound):.3e}; got {got}, want {want}"


def run(Z, lab, groups, backend="numpy", dtype="float64", **kw):
    Zb = to_backend(Z, backend, dtype)
    return fastal.gram_min_eig(Zb, lab, groups, **kw), upcast(Zb)


# ---------------------------------------------------------------------------------------------
# against the reference

# (n, D, |L|, G): |S| = |L| + G from 1 to ~300; the side is min(|S|, D)
SIZES = [
    (10, 4, 0, 1),  # |S| = 1: a 1 x 1 matrix
    (10, 4, 1, 1),  # |S| = 2
    (20, 3, 0, 2),  # |S| = 2 < D... = 3: S side
    (30, 5, 2, 3),  # |S| = 5 = D: S side (ties go to |S|)
    (40, 6, 4, 3),  # |S| = 7 > D = 6: D side
    (60, 16, 10, 2),
    (80, 50, 30, 1),  # G = 1
    (200, 64, 40, 20),  # D side, 64 x 64
    (300, 130, 100, 20),  # S side, 120 x 120
    (300, 100, 150, 20),  # D side, 100 x 100
    (500, 300, 180, 20),  # S side, 200 x 200
    (700, 64, 300, 5),  # D side with a big labeled set
    (900, 400, 280, 20),  # S side, 300 x 300
]


@pytest.mark.parametrize(("backend", "dtype"), PARAMS)
@pytest.mark.parametrize(
    ("n", "D", "m_lab", "G"), SIZES, ids=[f"n{n}-D{D}-L{m}-G{g}" for n, D, m, g in SIZES]
)
def test_matches_reference(n, D, m_lab, G, backend, dtype):
    Z, lab, groups = make_case(n, D, m_lab, 6, G, seed=n + D + m_lab + G)
    (lam, spectra), Zs = run(Z, lab, groups, backend, dtype, return_all=True)
    want, want_spectra = gram_min_eig_ref(Zs, lab, groups)
    assert backend_of(lam) == backend
    assert backend_of(spectra) == backend
    lam, spectra = to_numpy(lam), to_numpy(spectra)
    assert lam.dtype == np.float64
    assert lam.shape == (groups.shape[0],)
    assert spectra.dtype == np.float64
    assert spectra.shape == (groups.shape[0], min(m_lab + G, D))
    lmax = want_spectra[:, -1]
    assert_eigs_close(lam, want, lmax)
    assert_eigs_close(spectra, np.maximum(want_spectra, 0), lmax, rtol=1e-9)
    assert (spectra >= 0).all()
    assert (np.diff(spectra, axis=1) >= 0).all()
    # return_all does not change the scores of the same method; "auto" may pick the low-rank
    # method without return_all, equal to rounding
    Zb = to_backend(Z, backend, dtype)
    assert_array_equal(to_numpy(fastal.gram_min_eig(Zb, lab, groups, method="tridiagonal")), lam)
    assert_allclose(to_numpy(fastal.gram_min_eig(Zb, lab, groups)), lam, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("D", "m_lab", "G"), [(1100, 1004, 20), (1024, 1500, 20)], ids=["S-side-1024", "D-side-1024"]
)
def test_matches_reference_1024(D, m_lab, G):
    Z, lab, groups = make_case(m_lab + 2 * G, D, m_lab, 1, G, seed=D)
    lam, spectra = fastal.gram_min_eig(Z, lab, groups, return_all=True)
    want, want_spectra = gram_min_eig_ref(Z, lab, groups)
    assert spectra.shape == (1, 1024)
    assert_eigs_close(lam, want, want_spectra[:, -1])
    assert_eigs_close(spectra, np.maximum(want_spectra, 0), want_spectra[:, -1], rtol=1e-9)


def test_hand_worked():
    Z = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 0.0]])
    lam, spectra = fastal.gram_min_eig(Z, [0], [[1], [3], [2]], return_all=True)
    # {0, 1}: diag(1, 4); {0, 3}: rows parallel, eigenvalues 0 and 10; {0, 2}: [[1, 1], [1, 2]]
    golden = (3 - np.sqrt(5)) / 2, (3 + np.sqrt(5)) / 2
    assert_allclose(spectra, [[1, 4], [0, 10], golden], rtol=1e-14, atol=1e-14)
    assert_allclose(lam, [1, 10, golden[0]], rtol=1e-14)
    # |S| = 3 > D = 2: the D side, Z_Sᵀ Z_S = [[2, 1], [1, 5]] for {0, 1, 2}
    lam = fastal.gram_min_eig(Z, [0], [[1, 2]])
    assert_allclose(lam, [(7 - np.sqrt(13)) / 2], rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# both sides


@pytest.mark.parametrize(
    ("D", "m_lab", "G", "pad"), [(5, 8, 2, 10), (20, 30, 5, 20), (64, 100, 20, 60), (7, 0, 12, 6)]
)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_both_sides_give_the_same_eigenvalues(D, m_lab, G, pad, dtype):
    """Zero columns leave ``Z_S Z_Sᵀ`` unchanged but move |S| = |L| + G from > D to <= D."""
    Z, lab, groups = make_case(m_lab + 8 * G, D, m_lab, 8, G, seed=D + G)
    Z = to_backend(Z, "numpy", dtype)
    Zpad = np.concatenate([Z, np.zeros((Z.shape[0], pad), dtype=Z.dtype)], axis=1)
    size = m_lab + G
    assert D < size <= D + pad
    rtol = 1e-12
    lam_d, spec_d = fastal.gram_min_eig(Z, lab, groups, rtol=rtol, return_all=True)
    lam_s, spec_s = fastal.gram_min_eig(Zpad, lab, groups, rtol=rtol, return_all=True)
    assert spec_d.shape == (8, D)
    assert spec_s.shape == (8, size)
    lmax = spec_d[:, -1]
    assert_eigs_close(lam_s, lam_d, lmax)
    # the |S| side has size - D extra zeros at the bottom of its spectrum
    assert_eigs_close(spec_s[:, size - D :], spec_d, lmax, rtol=1e-9)
    assert (spec_s[:, : size - D] <= ATOL * lmax[:, None]).all()
    # and both agree with the reference computed on either side
    for side in ("S", "D"):
        want, _ = gram_min_eig_ref(upcast(Z), lab, groups, rtol=rtol, side=side)
        assert_eigs_close(lam_d, want, lmax)


# ---------------------------------------------------------------------------------------------
# rank deficiency, duplicates, near singularity


@pytest.mark.parametrize(("n", "D", "m_lab", "G", "rank"), [
    (60, 10, 12, 4, 6),     # D side, rank 6 < D = 10 < |S| = 16
    (60, 30, 8, 4, 5),      # S side, rank 5 < |S| = 12 <= D
    (300, 80, 150, 20, 40), # D side, big
    (200, 150, 60, 20, 50), # S side, big
    (50, 8, 3, 2, 1),       # rank 1: a single positive eigenvalue
])  # fmt: skip
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rank_deficient(n, D, m_lab, G, rank, dtype):
    Z, lab, groups = make_case(n, D, m_lab, 5, G, seed=rank, rank=rank)
    (lam, spectra), Zs = run(Z, lab, groups, "numpy", dtype, return_all=True)
    want, want_spectra = gram_min_eig_ref(Zs, lab, groups)
    lmax = want_spectra[:, -1]
    assert_eigs_close(lam, want, lmax, rtol=1e-7)
    size = min(m_lab + G, D)
    assert (spectra[:, : size - rank] <= ATOL * lmax[:, None]).all()  # the zeros
    assert (lam >= spectra[:, size - rank] * (1 - 1e-7)).all()  # λ⁺_min is past them
    assert (lam > 1e-6 * lmax).all()


@pytest.mark.parametrize(("D", "m_lab"), [(12, 5), (12, 30)], ids=["full-rank-S-side", "D-side"])
def test_duplicates_proposition_2(D, m_lab):
    """A group repeating a labeled row (or two identical new rows) has an exact zero eigenvalue at
    full rank (Proposition 2: λ_min = 0); λ⁺_min skips it and scores the rest of the spectrum."""
    rng = np.random.default_rng(D + m_lab)
    n = m_lab + 20
    Z = rng.normal(size=(n, D))
    lab = np.arange(m_lab)
    Z[m_lab] = Z[0]  # a copy of a labeled row
    Z[m_lab + 2] = Z[m_lab + 1]  # an identical pair in the pool
    groups = np.array([[m_lab, m_lab + 5], [m_lab + 1, m_lab + 2], [m_lab + 3, m_lab + 4]])
    lam, spectra = fastal.gram_min_eig(Z, lab, groups, return_all=True)
    want, want_spectra = gram_min_eig_ref(Z, lab, groups)
    lmax = want_spectra[:, -1]
    assert_eigs_close(lam, want, lmax)
    if m_lab + 2 <= D:  # the |S| side at full rank: duplicates make the plain λ_min zero
        assert (spectra[:2, 0] <= ATOL * lmax[:2]).all()
        assert spectra[2, 0] > 1e-3 * lmax[2]
        assert (lam[:2] >= spectra[:2, 1] * (1 - 1e-9)).all()


def nearly_singular_case(delta: float):
    """Group rows that are labeled rows plus a perturbation of size delta: λ_min ~ delta²."""
    rng = np.random.default_rng(7)
    D, m_lab = 40, 10
    Z = rng.normal(size=(30, D))
    lab = np.arange(m_lab)
    Z[m_lab] = Z[0] + delta * rng.normal(size=D)
    Z[m_lab + 1] = Z[1] + delta * rng.normal(size=D)
    groups = np.array([[m_lab, m_lab + 2], [m_lab + 1, m_lab + 3], [m_lab + 4, m_lab + 5]])
    return Z, lab, groups


@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-7])
def test_nearly_singular(delta):
    Z, lab, groups = nearly_singular_case(delta)
    lam = fastal.gram_min_eig(Z, lab, groups, rtol=1e-15)
    want, spectra = gram_min_eig_ref(Z, lab, groups, rtol=1e-15)
    assert want[0] < 10 * delta**2 * Z.shape[1]
    # absolute accuracy eps · λ_max: the relative accuracy of λ_min degrades as delta² / λ_max
    assert_eigs_close(lam, want, spectra[:, -1], rtol=1e-6)


def test_zero_rows_and_all_zero_matrices():
    Z = np.zeros((6, 3))
    Z[1] = [1.0, 2.0, 2.0]
    lam, spectra = fastal.gram_min_eig(Z, [0], [[2], [1], [3]], return_all=True)
    assert_array_equal(lam, [0.0, 9.0, 0.0])  # no positive eigenvalue: 0.0
    assert_array_equal(spectra[0], [0.0, 0.0])
    assert_allclose(spectra[1], [0.0, 9.0], atol=1e-15)
    lam = fastal.gram_min_eig(Z, None, [[0, 2, 3, 4]])  # D side, all zero
    assert_array_equal(lam, [0.0])


# Z whose Gram over all four rows is diag(1, 1e-4, 1e-10, 4); L = rows 0 and 3, one group {1, 2};
# (rtol, λ⁺_min) pairs. λ_max itself is always above rtol · λ_max (rtol < 1).
THRESHOLD_Z = np.diag([1.0, 1e-2, 1e-5, 2.0])
THRESHOLD_LAB, THRESHOLD_GROUPS = [0, 3], [[1, 2]]
THRESHOLD_CASES = [
    (None, 1e-10),
    (0.0, 1e-10),
    (1e-12, 1e-10),
    (1e-8, 1e-4),
    (0.2, 1.0),
    (0.3, 4.0),
    (0.999, 4.0),
]


def test_rtol_sets_the_zero_threshold():
    for rtol, want in THRESHOLD_CASES:
        got = fastal.gram_min_eig(THRESHOLD_Z, THRESHOLD_LAB, THRESHOLD_GROUPS, rtol=rtol)
        # absolute accuracy ~ eps · λ_max = 4 eps
        assert_allclose(got, [want], rtol=1e-12, atol=16 * EPS, err_msg=f"rtol={rtol}")


def test_default_rtol_is_max_of_set_size_and_width():
    """|S| = 4 rows of width D = 100, Gram diag(1, 0.5, 40 eps, 2): 40 eps = 20 eps · λ_max is
    below the default threshold max(4, 100) · eps · λ_max (it counts as zero, λ⁺_min = 0.5) and
    above min(4, 100) · eps · λ_max; with rtol = 0 it is the smallest positive eigenvalue."""
    tiny = 40 * EPS
    Z = np.zeros((4, 100))
    Z[0, 0], Z[1, 1], Z[2, 2], Z[3, 3] = 1.0, np.sqrt(0.5), np.sqrt(tiny), np.sqrt(2.0)
    got = fastal.gram_min_eig(Z, [0, 3], [[1, 2]])
    assert_allclose(got, [0.5], rtol=1e-12)
    # absolute accuracy ~ eps · λ_max, as in test_rtol_sets_the_zero_threshold
    assert_allclose(fastal.gram_min_eig(Z, [0, 3], [[1, 2]], rtol=0.0), [tiny], atol=2 * EPS)


# ---------------------------------------------------------------------------------------------
# shapes, frameworks, invariants


@pytest.mark.parametrize(("backend", "dtype"), PARAMS)
def test_empty_labeled_and_single_member_groups(backend, dtype):
    Z, _, groups = make_case(50, 6, 0, 10, 1, seed=3)
    for labeled in (None, [], np.empty(0, np.int64)):
        (lam, spectra), Zs = run(Z, labeled, groups, backend, dtype, return_all=True)
        assert to_numpy(spectra).shape == (10, 1)
        assert_allclose(to_numpy(lam), (Zs[groups[:, 0]] ** 2).sum(1), rtol=1e-14)
    Z, _, groups = make_case(50, 6, 0, 10, 4, seed=4)
    (lam, _), Zs = run(Z, None, groups, backend, dtype, return_all=True)
    want, spectra = gram_min_eig_ref(Zs, None, groups)
    assert_eigs_close(to_numpy(lam), want, spectra[:, -1])


def test_index_inputs_of_any_integer_kind():
    Z, lab, groups = make_case(40, 5, 4, 3, 2, seed=5)
    want = fastal.gram_min_eig(Z, lab, groups)
    for lab_in, grp_in in [
        (lab.tolist(), groups.tolist()),
        (lab.astype(np.int32), groups.astype(np.int32)),
        (torch.from_numpy(lab), torch.from_numpy(groups)),
        (lab, np.asfortranarray(groups)),
    ]:
        assert_array_equal(fastal.gram_min_eig(Z, lab_in, grp_in), want)


def test_scores_do_not_depend_on_the_batch():
    """Each group is solved by one thread alone: same bits whatever the batch or its order."""
    Z, lab, groups = make_case(400, 30, 20, 64, 5, seed=11)
    lam = fastal.gram_min_eig(Z, lab, groups)
    order = np.random.default_rng(0).permutation(64)
    assert_array_equal(fastal.gram_min_eig(Z, lab, groups[order]), lam[order])
    assert_array_equal(fastal.gram_min_eig(Z, lab, groups[5:6]), lam[5:6])
    # groups may share indices
    shared = np.repeat(groups[:1], 3, axis=0)
    assert_array_equal(fastal.gram_min_eig(Z, lab, shared), np.repeat(lam[:1], 3))


def test_power_of_two_scaling_is_exact():
    Z, lab, groups = make_case(60, 8, 10, 4, 3, seed=12)
    lam, spectra = fastal.gram_min_eig(Z, lab, groups, return_all=True)
    for k in (250, -250, 20):  # 250: rescaled inside (entries > 2^240); 20: as is
        lam_k, spec_k = fastal.gram_min_eig(Z * 2.0**k, lab, groups, return_all=True)
        assert_allclose(lam_k, lam * 2.0 ** (2 * k), rtol=1e-14)
        assert_allclose(spec_k, spectra * 2.0 ** (2 * k), rtol=1e-13, atol=1e-13 * 2.0 ** (2 * k))


def test_non_contiguous_and_torch_views():
    Z, lab, groups = make_case(40, 12, 5, 3, 3, seed=13)
    want = fastal.gram_min_eig(np.ascontiguousarray(Z[:, ::2]), lab, groups)
    assert_array_equal(fastal.gram_min_eig(Z[:, ::2], lab, groups), want)
    got = fastal.gram_min_eig(torch.from_numpy(Z)[:, ::2], lab, groups)
    assert isinstance(got, torch.Tensor)
    assert got.dtype == torch.float64
    assert_array_equal(got.numpy(), want)


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("return_all", [False, True])
def test_16_bit_z_is_read_as_its_float32_copy(dtype, return_all):
    """ntk_features of float16 features is float16, and gram_min_eig refused it (CRC took it)."""
    import torch

    Z, lab, groups = make_case(40, 6, 3, 2, 3, seed=4)
    low = torch.from_numpy(Z).to(getattr(torch, dtype))
    got = fastal.gram_min_eig(low, lab, groups, return_all=return_all)
    want = fastal.gram_min_eig(low.float(), lab, groups, return_all=return_all)
    for g, w in zip(got, want, strict=True) if return_all else [(got, want)]:
        assert g.dtype == torch.float64
        assert_array_equal(g.numpy(), w.numpy())
    if dtype == "float16":  # numpy in, numpy out
        got = fastal.gram_min_eig(Z.astype(np.float16), lab, groups)
        assert_array_equal(got, fastal.gram_min_eig(Z.astype(np.float16).astype(np.float32), lab,
                                                    groups))  # fmt: skip
    low[7, 1] = float("nan")
    with pytest.raises(ValueError, match=r"^Z contains NaN or Inf in 1 row\(s\), first in row 7"):
        fastal.gram_min_eig(low, lab, groups)


def test_rejects_bad_input():
    Z, lab, groups = make_case(30, 4, 3, 2, 2, seed=0)
    a, b, c = np.setdiff1d(np.arange(30), lab)[:3].tolist()
    cases = [
        (dict(Z=Z[:, 0]), ValueError, "Z must be 2-D"),
        (dict(Z=Z.astype(np.int64)), TypeError, "Z must have dtype"),
        (dict(Z=[[1.0, 2.0]]), TypeError, "Z must be a numpy array"),
        (dict(labeled=[0, 0]), ValueError, "labeled has duplicate"),
        (dict(labeled=[30]), ValueError, "labeled has indices out of range"),
        (dict(labeled=[[0]]), ValueError, "labeled must be 1-D"),
        (dict(labeled=np.array([0.5])), TypeError, "labeled must hold integer"),
        (dict(groups=None), ValueError, "groups must be a 2-D"),
        (dict(groups=groups[0]), ValueError, "groups must be 2-D"),
        (dict(groups=np.empty((0, 2), np.int64)), ValueError, "groups is empty"),
        (dict(groups=np.empty((3, 0), np.int64)), ValueError, "groups is empty"),
        (dict(groups=groups.astype(np.float64)), TypeError, "groups must hold integer"),
        (dict(groups=groups > 0), TypeError, "groups must hold integer"),
        (
            dict(groups=[[a, 30]]),
            ValueError,
            r"groups has indices out of range \[0, 30\): groups\[0, 1\] = 30",
        ),
        (dict(groups=[[a, -1]]), ValueError, "groups has indices out of range"),
        (dict(groups=[[a, int(lab[1])]]), ValueError, r"groups overlaps labeled: groups\[0, 1\]"),
        (dict(groups=[[a, b], [c, c]]), ValueError, rf"groups\[1\] holds index {c} twice"),
        (dict(rtol=-1e-3), ValueError, r"rtol must be in \[0, 1\)"),
        (dict(rtol=1.0), ValueError, r"rtol must be in \[0, 1\)"),
        (dict(rtol=float("nan")), ValueError, r"rtol must be in \[0, 1\)"),
        (dict(rtol="1e-3"), TypeError, "rtol must be a real number"),
        (dict(rtol=True), TypeError, "rtol must be a real number"),
        (dict(return_all="yes"), TypeError, "return_all must be a bool"),
    ]
    for change, exc, match in cases:
        kw = {"Z": Z, "labeled": lab, "groups": groups, **change}
        with pytest.raises(exc, match=match):
            fastal.gram_min_eig(kw.pop("Z"), kw.pop("labeled"), kw.pop("groups"), **kw)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rejects_non_finite(bad, backend):
    Z, lab, groups = make_case(30, 4, 3, 2, 2, seed=1)
    Z[17, 2] = bad
    with pytest.raises(ValueError, match=r"Z contains NaN or Inf in 1 row.*first in row 17"):
        fastal.gram_min_eig(to_backend(Z, backend), lab, groups)


def test_kernel_validates_on_its_own():
    """The compiled entry point checks indices too (it can be called without the Python layer)."""
    Z, lab, groups = make_case(30, 4, 3, 2, 2, seed=2)
    a = int(np.setdiff1d(np.arange(30), lab)[0])
    k = fastal._ext.cpu.gram_min_eig_float64
    with pytest.raises(ValueError, match=r"groups\[0, 1\] = .* is in labeled"):
        k(Z, lab, np.array([[a, lab[0]]]), 1e-12)
    with pytest.raises(ValueError, match=rf"groups\[0\] holds index {a} twice"):
        k(Z, lab, np.array([[a, a]]), 1e-12)
    with pytest.raises(ValueError, match=r"groups\[0, 0\] = 99 is out of range"):
        k(Z, lab, np.array([[99, a]]), 1e-12)
    with pytest.raises(ValueError, match="labeled has duplicate indices"):
        k(Z, np.array([1, 1]), groups, 1e-12)
    with pytest.raises(ValueError, match="rtol must be in"):
        k(Z, lab, groups, -1.0)
    with pytest.raises(TypeError):
        k(Z.astype(np.float32), lab, groups, 1e-12)  # no silent casts


@pytest.mark.parametrize("G", [1, 2, 5, 40])
def test_device_group_check_agrees_with_the_host_check(G):
    """int64 CUDA groups are checked on the device (csrc/common/group_check.h, one row per
    thread); its host build must flag exactly the rows the host check rejects: range, overlap,
    duplicates."""
    from fastal.gram import _check_groups_host

    check = fastal._ext.cpu.gram_groups_valid
    rng = np.random.default_rng(G)
    n, lab = 90, np.array([2, 9, 30, 31, 77], dtype=np.int64)
    free = np.setdiff1d(np.arange(n), lab)
    good = np.stack([rng.choice(free, G, replace=False) for _ in range(6)])
    assert check(good, n, lab).all()
    _check_groups_host(good, n, lab)
    values = [n, n + 7, -1, *map(int, lab), *([int(good[3, 0])] if G > 1 else [])]
    for value in values:
        for col in sorted({0, G - 1}):
            bad = good.copy()
            bad[3, col] = value
            if col == 0 and G > 1 and value == int(good[3, 0]):
                continue  # not a change
            with pytest.raises(ValueError, match=r"^groups\b") as err:
                _check_groups_host(bad, n, lab)
            assert "groups[3" in str(err.value)  # the row changed
            assert_array_equal(check(bad, n, lab), np.arange(6) != 3)
            if value in lab:  # without labeled, an overlap is no error
                assert check(bad, n, lab[:0]).all()
    assert check(good, n, np.array([], dtype=np.int64)).all()


def test_docstring_example():
    import doctest

    import fastal.gram

    result = doctest.testmod(
        fastal.gram, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 0
    assert result.failed == 0


# -- columns far below the largest entry ---------------------------------------------------------


def wide_range_case(kind: str, exponent: int):
    """(Z, labeled, groups): CRC's rows √3 [h, 1] with h ~ 2^exponent ("bias"), or one O(1) column
    beside columns ~ 2^exponent ("columns"). The peak is O(1), so no rescaling applies, and the
    D-side matrix's first column is far below its diagonal."""
    rng = np.random.default_rng(1)
    h = rng.normal(size=(40, 3)) * 2.0**exponent
    if kind == "bias":
        Z = np.sqrt(3) * np.c_[h, np.ones(40)]
    else:
        Z = np.c_[h, rng.normal(size=40)]
    return Z, [0, 1], [[2, 3, 4], [5, 6, 7], [8, 9, 10]]


@pytest.mark.parametrize("method", ["tridiagonal", "lowrank"])
@pytest.mark.parametrize("kind", ["bias", "columns"])
@pytest.mark.parametrize("exponent", [-200, -255, -260, -300, -520, -700, -1000])
def test_columns_far_below_the_diagonal(kind, exponent, method):
    """The Householder vector was v[0] = x[0] - alpha with beta = 2 / vᵀv: past 2^-256 of the
    diagonal beta² overflowed and λ⁺_min came out as noise ~2^exponent, or inf. Normalised as
    LAPACK's (v[0] = 1, beta in [1, 2]) the tiny directions fall under the zero threshold."""
    Z, lab, groups = wide_range_case(kind, exponent)
    want, spectra = gram_min_eig_ref(Z, lab, groups)
    got = fastal.gram_min_eig(Z, lab, groups, method=method)
    assert_allclose(got, want, rtol=1e-12)
    if method == "tridiagonal":
        lam, spec = fastal.gram_min_eig(Z, lab, groups, return_all=True)
        assert_allclose(lam, want, rtol=1e-12)
        assert_allclose(spec[:, -1], spectra[:, -1], rtol=1e-12)  # λ_max was lost too


@pytest.mark.parametrize("peak", [2.0**-1030, 5e-324])
def test_a_subnormal_peak_is_refused(peak):
    """Its rescaling factor (2^1030) is past float64: it became inf, the rows NaN, and the
    scores silently 0. The eigenvalues (~peak²) cannot be float64 numbers: refused."""
    Z = np.zeros((10, 3))
    Z[:, 0] = peak
    with pytest.raises(ValueError, match="do not fit float64"):
        fastal.gram_min_eig(Z, [0], [[1, 2], [3, 4]])


def test_subnormal_eigenvalues_are_refused():
    """Z near 1e-160 has eigenvalues near 1e-320: subnormal, a few bits left (relative errors of
    6e-3 were returned). Down to where they are normal numbers they are exact to rounding."""
    Z = np.random.default_rng(0).normal(size=(30, 3))
    want = fastal.gram_min_eig(Z, [0], [[1, 2], [3, 4]])
    got = fastal.gram_min_eig(Z * 1e-152, [0], [[1, 2], [3, 4]])
    assert_allclose(got / 1e-152 / 1e-152, want, rtol=1e-12)
    with pytest.raises(ValueError, match="do not fit float64"):
        fastal.gram_min_eig(Z * 1e-160, [0], [[1, 2], [3, 4]])


@pytest.mark.parametrize("method", ["tridiagonal", "lowrank"])
@pytest.mark.parametrize("exponent", [-300, -505, -510])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_tiny_rows_beside_ordinary_ones_get_their_own_scale(method, exponent, backend):
    """Rows of S near 2^exponent while other rows of Z are ordinary: the peak of all of Z called
    for no rescaling, so their Gram entries were subnormal and the groups scored 0 or lost
    precision. They are computed again on their own rows, rescaled: exactly 2^(2 exponent) times
    the scores of the unscaled rows (a power of two), unless that leaves float64's normal range,
    where the group scores 0. A group of ordinary rows beside them keeps its score."""
    Z = np.random.default_rng(0).normal(size=(20, 5))
    lab, groups = [7], [[1, 2, 3], [4, 5, 6], [8, 9, 10]]
    tiny = Z.copy()
    tiny[1:8] *= 2.0**exponent  # the labeled row and the first two groups
    want = fastal.gram_min_eig(Z, lab, groups, method=method)
    arg = tiny if backend == "numpy" else torch.from_numpy(tiny)
    got = to_numpy(fastal.gram_min_eig(arg, lab, groups, method=method))
    scaled = want[:2] * 2.0 ** (2 * exponent)
    fits = scaled >= np.finfo(np.float64).tiny
    assert_allclose(got[:2][fits], scaled[fits], rtol=1e-12)
    assert_array_equal(got[:2][~fits], 0.0)
    assert exponent != -510 or fits.tolist() == [False, True]  # both branches are exercised
    assert got[2] == fastal.gram_min_eig(tiny, lab, groups[2:], method=method)[0]


@pytest.mark.parametrize("method", ["tridiagonal", "lowrank"])
def test_small_rows_in_a_call_rescaled_for_huge_ones_get_their_own_scale(method):
    """Rows near 2^-230 are above the rescaling bound, but a call rescaled for rows near 2^300
    scales them to 2^-530: the group scored exactly 0 (found by review). Computed again on its
    own rows it is 2^-460 times the score at scale 1, as is the huge group 2^600 times its."""
    Z = np.random.default_rng(0).normal(size=(20, 5))
    want = fastal.gram_min_eig(Z, [], [[1, 2, 3], [4, 5, 6]], method=method)
    Z[1:4] *= 2.0**300
    Z[4:7] *= 2.0**-230
    got = fastal.gram_min_eig(Z, [], [[1, 2, 3], [4, 5, 6]], method=method)
    assert_allclose(got, want * [2.0**600, 2.0**-460], rtol=1e-12)


@pytest.mark.parametrize("exponent", [-300, -510])
def test_row_readers_redo_tiny_groups_as_gram_min_eig_does(exponent):
    """min_eig_of_rows (CRC's path for a Z made group by group) gives gram_min_eig's values bit
    for bit, tiny groups included."""
    from fastal.gram import StoredRows, min_eig_of_rows
    from fastal.ntk import ntk_rows

    h = np.random.default_rng(2).normal(size=(20, 5))
    h[1:8] *= 2.0**exponent
    lab, groups = np.array([7]), np.array([[1, 2, 3], [4, 5, 6], [8, 9, 10]])
    want = fastal.gram_min_eig(h, lab, groups)
    assert want[0] > 0.0
    assert_array_equal(min_eig_of_rows(StoredRows(h), lab, groups), want)
    want_ntk = fastal.gram_min_eig(fastal.ntk_features(h, 3), lab, groups)
    assert_array_equal(min_eig_of_rows(ntk_rows(h, 3), lab, groups), want_ntk)


def test_tiny_groups_that_do_not_fit_together_are_done_one_by_one():
    """Two tiny groups: one whose eigenvalues (2^-1018) fit float64 and one whose (~2^-1060) do
    not. Together they fail, so each is computed on its own scale: the first exactly, the second
    0 (its spectrum too, with return_all)."""
    Z = np.random.default_rng(1).normal(size=(12, 4))
    Z[0:3] = 2.0 * np.eye(3, 4) * 2.0**-510
    Z[3:6] *= 2.0**-530
    groups = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    want, want_spec = fastal.gram_min_eig(Z[6:], [], [[0, 1, 2]], return_all=True)
    for method in ("tridiagonal", "lowrank"):
        got = fastal.gram_min_eig(Z, [], groups, method=method)
        assert_allclose(got[0], 2.0**-1018, rtol=1e-14)
        assert got[1] == 0.0
    got, spec = fastal.gram_min_eig(Z, [], groups, return_all=True)
    assert_allclose(got[0], 2.0**-1018, rtol=1e-14)
    assert got[1] == 0.0
    assert got[2] == want[0]
    assert_allclose(spec[0], [2.0**-1018] * 3, rtol=1e-14)
    assert_array_equal(spec[1], 0.0)
    assert_array_equal(spec[2], want_spec[0])


_SUBNORMAL_GROUPS = r"""
import numpy as np, fastal
Z = np.array([[1e-160, 0, 0, 0], [0, 2e-160, 0, 0], [0, 0, 3e-160, 0], [0, 0, 0, 1e-161],
              [1, .5, 0, 0], [.3, 2, 1, 0], [1, 1, 1, 1], [2, 0, 1, 0], [0, 1, 0, 1],
              [1, 2, 3, 4.]])
out = []
cases = (([0], [[4, 5, 6], [1, 2, 3], [7, 8, 9]]), ([], [[1]]),
         ([0], [[1, 2], [4, 5], [7, 8]]))
for lab, grp in cases:
    for method in ("tridiagonal", "lowrank"):
        out.append(fastal.gram_min_eig(Z, lab, grp, method=method).tolist())
print(repr(out))
"""


def test_a_subnormal_group_scores_zero_without_corrupting_memory():
    """A group whose whole Gram matrix is subnormal (rows ~1e-160 beside ordinary ones, so no
    rescaling applies): the low-rank kernel's per-group scale 2^1062 was inf, the NaNs sent a
    2 x 2 pivot past the last row, and the process aborted ("double free or corruption"). Such a
    matrix has no eigenvalue with relative precision: 0.0 by both methods. In a subprocess, so
    that a regression fails here rather than killing the test run."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _SUBNORMAL_GROUPS], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    tri_a, low_a, tri_b, low_b, tri_c, low_c = eval(run.stdout)
    assert tri_a[1] == low_a[1] == 0.0
    assert tri_b == low_b == [0.0]
    assert tri_c[0] == low_c[0] == 0.0
    assert_allclose(low_a, tri_a, rtol=1e-10)
    assert_allclose(low_c, tri_c, rtol=1e-10)
    assert min(tri_a[0], tri_a[2], tri_c[1], tri_c[2]) > 0.1
