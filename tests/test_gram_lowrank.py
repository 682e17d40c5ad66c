"""``fastal.gram_min_eig(..., method="lowrank")``: the shared-eigendecomposition method against the
float64 numpy reference (``np.linalg.eigvalsh`` on the explicit Gram matrix) and against the
tridiagonal method, on both sides of the Gram matrix.

The tests of the method's hard cases run twice (``impl``): the CPU kernel (C++, Laguerre, one
group per thread) and the CUDA route (fastal/_gram_lowrank_torch.py: batched torch, every group by
multisection at once), the latter on CPU tensors; test_gram_lowrank_torch.py has that route's own
tests.

The cases that stress it are those where the per-group matrix is a small change of the shared
one: eigenvalues of the labeled part that repeat (coinciding poles), that are exactly zero (a
rank-deficient or duplicated labeled set), group rows in the labeled span (Proposition 2's
duplicates), nearly singular sets, and scores near the zero threshold. Tolerances as in
test_gram.py: ``rtol`` relative plus ``64 eps · λ_max`` absolute.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CPU_BACKENDS, backend_dtype_params, backend_of, to_backend, to_numpy, upcast
from numpy.testing import assert_allclose
from reference import gram_min_eig_ref
from test_gram import (
    SIZES,
    THRESHOLD_CASES,
    THRESHOLD_GROUPS,
    THRESHOLD_LAB,
    THRESHOLD_Z,
    assert_eigs_close,
    make_case,
    nearly_singular_case,
)

import fastal
from fastal import gram as gram_module
from fastal._gram_lowrank_torch import gram_min_eig_lowrank_torch

PARAMS = backend_dtype_params(dtypes=("float64", "float32"), backends=CPU_BACKENDS)


IMPLS = ("kernel", "torch")


def lowrank(Z, lab, groups, impl="kernel", **kw):
    """The CPU kernel through fastal.gram_min_eig, or the CUDA route's function on CPU tensors
    (numpy in, numpy out; rtol resolved as gram.py does)."""
    if impl == "kernel":
        return fastal.gram_min_eig(Z, lab, groups, method="lowrank", **kw)
    Z = np.asarray(upcast(Z))
    lab = np.asarray([] if lab is None else lab, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    rtol = kw.get("rtol")
    if rtol is None:
        rtol = max(lab.size + groups.shape[1], Z.shape[1]) * float(np.finfo(np.float64).eps)
    out = gram_min_eig_lowrank_torch(torch.from_numpy(Z), lab, torch.from_numpy(groups), rtol)
    assert out.dtype == torch.float64
    assert out.shape == (groups.shape[0],)
    return out.numpy()


def check(Z, lab, groups, rtol=1e-8, impl="kernel", **kw):
    """The low-rank scores against the reference and the tridiagonal method."""
    got = to_numpy(lowrank(Z, lab, groups, impl, **kw))
    want, spectra = gram_min_eig_ref(upcast(Z), lab, groups, rtol=kw.get("rtol"))
    lmax = spectra[:, -1]
    assert_eigs_close(got, want, lmax, rtol=rtol)
    tri = to_numpy(fastal.gram_min_eig(Z, lab, groups, method="tridiagonal", **kw))
    assert_eigs_close(got, tri, lmax, rtol=rtol)
    return got, want, spectra


@pytest.mark.parametrize(("backend", "dtype"), PARAMS)
@pytest.mark.parametrize(
    ("n", "D", "m_lab", "G"), SIZES, ids=[f"n{n}-D{D}-L{m}-G{g}" for n, D, m, g in SIZES]
)
def test_matches_reference(n, D, m_lab, G, backend, dtype):
    Z, lab, groups = make_case(n, D, m_lab, 6, G, seed=n + D + m_lab + G)
    Zb = to_backend(Z, backend, dtype)
    got = lowrank(Zb, lab, groups)
    assert backend_of(got) == backend
    assert to_numpy(got).dtype == np.float64
    assert to_numpy(got).shape == (6,)
    check(Zb, lab, groups)


@pytest.mark.parametrize(
    ("D", "m_lab", "G"),
    [(256, 400, 20), (128, 300, 64), (300, 200, 20), (200, 60, 100), (96, 40, 50)],
    ids=["D-side-256", "D-side-G64", "S-side-220", "S-side-G100", "S-side-wide-group"],
)
@pytest.mark.parametrize("impl", IMPLS)
def test_large_matrices(D, m_lab, G, impl):
    Z, lab, groups = make_case(m_lab + 4 * G, D, m_lab, 4, G, seed=D + G)
    check(Z.astype(np.float32), lab, groups, impl=impl)


RANK_CASES = [
    (60, 10, 12, 4, 6),      # D side, rank 6 < D
    (60, 30, 8, 4, 5),       # S side, rank 5 < |S|
    (300, 80, 150, 20, 40),  # D side, big: 40 zero eigenvalues in Λ too
    (200, 150, 60, 20, 50),  # S side, big: Λ has 10 zeros
    (50, 8, 3, 2, 1),        # rank 1
]  # fmt: skip


def duplicates_case(D: int, m_lab: int):
    """Group rows that repeat a labeled row or each other (Proposition 2)."""
    rng = np.random.default_rng(D + m_lab)
    Z = rng.normal(size=(m_lab + 20, D))
    lab = np.arange(m_lab)
    Z[m_lab] = Z[0]
    Z[m_lab + 2] = Z[m_lab + 1]
    groups = np.array([[m_lab, m_lab + 5], [m_lab + 1, m_lab + 2], [m_lab + 3, m_lab + 4]])
    return Z, lab, groups


def repeated_poles_case(D: int):
    """Orthonormal labeled rows (some repeated): Λ takes one or two values many times (coinciding
    poles), and groups aligned with the labeled rows or not."""
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    # L: 24 orthonormal rows and 6 of them again; on the S side (D = 60) |S| = 33 <= D
    Z = np.concatenate([Q[:24], Q[:6], 3.0 * Q[:6], rng.normal(size=(40, D))])
    lab = np.arange(30)
    groups = np.array([[30, 31, 32], [33, 34, 35], [36, 37, 38], [30, 36, 40], [41, 42, 43]])
    return Z, lab, groups


def random_case(seed: int):
    """Many shapes: both sides, G from 1 to 12, full rank or a low integer rank (exact zero
    eigenvalues in Λ and in K), and groups repeating labeled rows."""
    rng = np.random.default_rng(1000 + seed)
    D = int(rng.integers(2, 40))
    m_lab = int(rng.integers(1, 60))
    G = int(rng.integers(1, 13))
    n = m_lab + 4 * G + 8
    rank = None if seed % 3 else int(rng.integers(1, D + 1))
    Z, lab, groups = make_case(n, D, m_lab, 4, G, seed=seed, rank=rank)
    if seed % 4 == 1:  # a group row that copies a labeled row (Proposition 2)
        Z[groups[0, 0]] = Z[lab[0]]
    return Z, lab, groups


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("n", "D", "m_lab", "G", "rank"), RANK_CASES)
def test_rank_deficient(n, D, m_lab, G, rank, impl):
    """Λ has exact zero eigenvalues (poles at 0); K has a cluster of zeros below the threshold."""
    Z, lab, groups = make_case(n, D, m_lab, 5, G, seed=rank, rank=rank)
    got, _, spectra = check(Z, lab, groups, rtol=1e-7, impl=impl)
    assert (got > 1e-6 * spectra[:, -1]).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("D", "m_lab"), [(12, 5), (12, 30), (40, 20)])
def test_duplicates_proposition_2(D, m_lab, impl):
    """Group rows that repeat a labeled row or each other: the zero eigenvalue is skipped."""
    check(*duplicates_case(D, m_lab), impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("D", [24, 60], ids=["D-side", "S-side"])
def test_repeated_shared_eigenvalues(D, impl):
    check(*repeated_poles_case(D), impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_duplicated_labeled_rows(impl):
    """A labeled set with repeated rows (the S side's K_LL is singular: poles at 0)."""
    rng = np.random.default_rng(2)
    D = 50
    Z = rng.normal(size=(80, D))
    Z[1] = Z[0]
    Z[3] = Z[2]
    lab = np.arange(10)
    groups = np.arange(10, 70).reshape(12, 5)
    check(Z, lab, groups, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-7])
def test_nearly_singular(delta, impl):
    Z, lab, groups = nearly_singular_case(delta)
    got = lowrank(Z, lab, groups, impl, rtol=1e-15)
    want, spectra = gram_min_eig_ref(Z, lab, groups, rtol=1e-15)
    assert want[0] < 10 * delta**2 * Z.shape[1]
    assert_eigs_close(got, want, spectra[:, -1], rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_rows_and_thresholds(impl):
    Z = np.zeros((6, 3))
    Z[1] = [1.0, 2.0, 2.0]
    assert_allclose(lowrank(Z, [0], [[2], [1], [3]], impl), [0.0, 9.0, 0.0], atol=1e-14)
    for rtol, want in THRESHOLD_CASES:
        got = lowrank(THRESHOLD_Z, THRESHOLD_LAB, THRESHOLD_GROUPS, impl, rtol=rtol)
        assert_allclose(got, [want], rtol=1e-12, atol=16 * np.finfo(float).eps, err_msg=str(rtol))


def test_power_of_two_scaling():
    Z, lab, groups = make_case(200, 64, 100, 4, 10, seed=12)
    lam = lowrank(Z, lab, groups)
    for k in (250, -250, 20):
        assert_allclose(lowrank(Z * 2.0**k, lab, groups), lam * 2.0 ** (2 * k), rtol=1e-12)


def test_torch_input_and_batch_independence():
    Z, lab, groups = make_case(400, 64, 80, 16, 10, seed=11)
    lam = lowrank(Z, lab, groups)
    got = lowrank(torch.from_numpy(Z), torch.from_numpy(lab), groups)
    assert isinstance(got, torch.Tensor)
    assert_allclose(got.numpy(), lam, rtol=0)
    order = np.random.default_rng(0).permutation(16)
    assert_allclose(lowrank(Z, lab, groups[order]), lam[order], rtol=0)


def test_auto_picks_by_cost():
    cheaper = gram_module._cheaper_method
    assert cheaper(2048, 20, 1024, 100, False) == "lowrank"
    assert cheaper(512, 20, 256, 300, False) == "lowrank"
    assert cheaper(30, 20, 16, 1000, False) == "tridiagonal"  # a 16 x 16 matrix
    assert cheaper(2048, 20, 1024, 100, True) == "tridiagonal"  # spectra need the reduction
    assert cheaper(0, 20, 1024, 100, False) == "tridiagonal"  # nothing shared
    # auto agrees with both methods
    Z, lab, groups = make_case(700, 256, 400, 5, 20, seed=3)
    auto = fastal.gram_min_eig(Z, lab, groups)
    assert_allclose(auto, lowrank(Z, lab, groups), rtol=0)
    assert_allclose(auto, fastal.gram_min_eig(Z, lab, groups, method="tridiagonal"), rtol=1e-10)


def test_bad_method():
    Z, lab, groups = make_case(30, 4, 3, 2, 2, seed=0)
    with pytest.raises(ValueError, match=r"^method must be 'auto', 'tridiagonal' or 'lowrank'"):
        fastal.gram_min_eig(Z, lab, groups, method="qr")
    with pytest.raises(ValueError, match="return_all=True needs method='tridiagonal'"):
        fastal.gram_min_eig(Z, lab, groups, method="lowrank", return_all=True)
    # the usual input errors still come first and name their argument
    with pytest.raises(ValueError, match="groups overlaps labeled"):
        fastal.gram_min_eig(Z, lab, [[lab[0], 29]], method="lowrank")


def test_kernel_validates_on_its_own():
    from fastal import _ext

    kernel = _ext.cpu.gram_min_eig_lowrank_float64
    Z = np.random.default_rng(0).normal(size=(10, 4))
    lam, basis = np.ones(4), np.eye(4)
    with pytest.raises(ValueError, match="out of range"):
        kernel(Z, np.array([[0, 10]]), basis, lam, False, 1e-12)
    with pytest.raises(ValueError, match="basis must be"):
        kernel(Z, np.array([[0, 1]]), np.eye(3), lam, False, 1e-12)
    with pytest.raises(ValueError, match="the D side needs m = D"):
        kernel(Z, np.array([[0, 1]]), np.eye(3, 4), np.ones(3), False, 1e-12)


@pytest.mark.parametrize("seed", range(48))
@pytest.mark.parametrize("impl", IMPLS)
def test_random_configurations(seed, impl):
    Z, lab, groups = random_case(seed)
    got = to_numpy(lowrank(Z, lab, groups, impl))
    want, spectra = gram_min_eig_ref(Z, lab, groups)
    assert_eigs_close(got, want, spectra[:, -1], rtol=1e-7)
