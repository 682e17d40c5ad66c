"""The CUDA route of ``gram_min_eig(..., method="lowrank")`` (fastal/_gram_lowrank_torch.py:
batched torch on the array's device, every group narrowed at once by multisection on the same
Haynsworth counts as the CPU kernel), run here on CPU tensors against the float64 numpy reference
and the CPU's low-rank kernel, on the cases that stress the method (see test_gram_lowrank.py).

On CUDA, gram.py checks and rescales Z first; these tests call the function directly with gram.py's
default ``rtol``. Tolerances as in test_gram.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
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
from fastal import _gram_lowrank_torch as lowrank_torch

EPS = np.finfo(np.float64).eps


def lowrank(Z, lab, groups, rtol=None):
    Z = np.asarray(Z)
    lab = np.asarray([] if lab is None else lab, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    if rtol is None:
        rtol = max(lab.size + groups.shape[1], Z.shape[1]) * EPS
    out = lowrank_torch.gram_min_eig_lowrank_torch(
        torch.from_numpy(Z), lab, torch.from_numpy(groups), rtol
    )
    assert out.dtype == torch.float64 and out.shape == (groups.shape[0],)
    return out.numpy()


def check(Z, lab, groups, rtol=1e-8, **kw):
    """Against the reference and the CPU's low-rank kernel (Laguerre, one group per thread)."""
    got = lowrank(Z, lab, groups, **kw)
    Zs = np.asarray(Z, dtype=np.float64)
    want, spectra = gram_min_eig_ref(Zs, lab, groups, rtol=kw.get("rtol"))
    lmax = spectra[:, -1]
    assert_eigs_close(got, want, lmax, rtol=rtol)
    if lab is not None and len(lab):
        cpu = fastal.gram_min_eig(Z, lab, groups, method="lowrank", **kw)
        assert_eigs_close(got, cpu, lmax, rtol=rtol)
    return got, want, spectra


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    ("n", "D", "m_lab", "G"), SIZES, ids=[f"n{n}-D{D}-L{m}-G{g}" for n, D, m, g in SIZES]
)
def test_matches_reference(n, D, m_lab, G, dtype):
    Z, lab, groups = make_case(n, D, m_lab, 6, G, seed=n + D + m_lab + G)
    check(Z.astype(dtype), lab, groups)


@pytest.mark.parametrize(
    ("D", "m_lab", "G"),
    [(256, 400, 20), (128, 300, 64), (300, 200, 20), (96, 40, 50)],
    ids=["D-side-256", "D-side-G64", "S-side-220", "S-side-wide-group"],
)
def test_large_matrices(D, m_lab, G):
    Z, lab, groups = make_case(m_lab + 4 * G, D, m_lab, 4, G, seed=D + G)
    check(Z.astype(np.float32), lab, groups)


@pytest.mark.parametrize(("n", "D", "m_lab", "G", "rank"), [
    (60, 10, 12, 4, 6), (60, 30, 8, 4, 5), (300, 80, 150, 20, 40), (200, 150, 60, 20, 50),
    (50, 8, 3, 2, 1),
])  # fmt: skip
def test_rank_deficient(n, D, m_lab, G, rank):
    """Exact zero eigenvalues in Λ (poles at 0) and a cluster of zeros in K below the threshold."""
    Z, lab, groups = make_case(n, D, m_lab, 5, G, seed=rank, rank=rank)
    got, _, spectra = check(Z, lab, groups, rtol=1e-7)
    assert (got > 1e-6 * spectra[:, -1]).all()


@pytest.mark.parametrize(("D", "m_lab"), [(12, 5), (12, 30), (40, 20)])
def test_duplicates_proposition_2(D, m_lab):
    rng = np.random.default_rng(D + m_lab)
    Z = rng.normal(size=(m_lab + 20, D))
    lab = np.arange(m_lab)
    Z[m_lab] = Z[0]
    Z[m_lab + 2] = Z[m_lab + 1]
    groups = np.array([[m_lab, m_lab + 5], [m_lab + 1, m_lab + 2], [m_lab + 3, m_lab + 4]])
    check(Z, lab, groups)


@pytest.mark.parametrize("D", [24, 60], ids=["D-side", "S-side"])
def test_repeated_shared_eigenvalues(D):
    """Coinciding poles: Λ takes one or two values many times."""
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    Z = np.concatenate([Q[:24], Q[:6], 3.0 * Q[:6], rng.normal(size=(40, D))])
    lab = np.arange(30)
    groups = np.array([[30, 31, 32], [33, 34, 35], [36, 37, 38], [30, 36, 40], [41, 42, 43]])
    check(Z, lab, groups)


@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-7])
def test_nearly_singular(delta):
    Z, lab, groups = nearly_singular_case(delta)
    got = lowrank(Z, lab, groups, rtol=1e-15)
    want, spectra = gram_min_eig_ref(Z, lab, groups, rtol=1e-15)
    assert_eigs_close(got, want, spectra[:, -1], rtol=1e-6)


def test_zero_rows_empty_labeled_and_thresholds():
    Z = np.zeros((6, 3))
    Z[1] = [1.0, 2.0, 2.0]
    assert_allclose(lowrank(Z, [0], [[2], [1], [3]]), [0.0, 9.0, 0.0], atol=1e-14)
    assert_allclose(lowrank(Z, None, [[0, 2, 3, 4], [1, 2, 3, 4]]), [0.0, 9.0], rtol=1e-12)
    Z, _, groups = make_case(60, 4, 0, 5, 6, seed=4)  # D side, nothing shared: Λ = 0
    check(Z, None, groups)
    Z, _, groups = make_case(60, 30, 0, 5, 6, seed=5)  # S side, m = 0
    check(Z, None, groups)
    for rtol, want in THRESHOLD_CASES:
        got = lowrank(THRESHOLD_Z, THRESHOLD_LAB, THRESHOLD_GROUPS, rtol=rtol)
        assert_allclose(got, [want], rtol=1e-12, atol=16 * EPS, err_msg=str(rtol))


def test_chunks_give_the_same_scores(monkeypatch):
    """Groups are processed in chunks bounded by CHUNK_BYTES (3 groups here). Each group's
    brackets depend on its own counts only; batched BLAS may round a product differently in
    another batch, so the scores agree to rounding, not to the bit."""
    Z, lab, groups = make_case(400, 64, 80, 23, 10, seed=11)
    whole = lowrank(Z, lab, groups)
    monkeypatch.setattr(lowrank_torch, "CHUNK_BYTES", 3 * 8 * lowrank_torch.SHIFTS * 10 * 64 * 2)
    assert_allclose(lowrank(Z, lab, groups), whole, rtol=1e-12)


@pytest.mark.parametrize("seed", range(24))
def test_random_configurations(seed):
    rng = np.random.default_rng(1000 + seed)
    D = int(rng.integers(2, 40))
    m_lab = int(rng.integers(1, 60))
    G = int(rng.integers(1, 13))
    n = m_lab + 4 * G + 8
    rank = None if seed % 3 else int(rng.integers(1, D + 1))
    Z, lab, groups = make_case(n, D, m_lab, 4, G, seed=seed, rank=rank)
    if seed % 4 == 1:  # a group row that copies a labeled row (Proposition 2)
        Z[groups[0, 0]] = Z[lab[0]]
    got = lowrank(Z, lab, groups)
    want, spectra = gram_min_eig_ref(Z, lab, groups)
    assert_eigs_close(got, want, spectra[:, -1], rtol=1e-7)


def test_cuda_auto_threshold():
    """On CUDA, "auto" takes the low-rank route only from CUDA_LOWRANK_MIN_ORDER on."""
    assert fastal.gram.CUDA_LOWRANK_MIN_ORDER == 512
    assert fastal.gram._cheaper_method(2048, 20, 1024, 200, False) == "lowrank"
    assert fastal.gram._cheaper_method(512, 20, 256, 300, False) == "lowrank"  # CPU only
