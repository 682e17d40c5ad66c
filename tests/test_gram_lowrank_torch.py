"""The CUDA route of ``gram_min_eig(..., method="lowrank")`` (fastal/_gram_lowrank_torch.py:
batched torch on the array's device, every group narrowed at once by multisection on the same
Haynsworth counts as the CPU kernel), run here on CPU tensors: the cases of its own. The method's
hard cases (rank deficiency, duplicates, coinciding poles, near singularity, thresholds, random
shapes) run for both implementations in test_gram_lowrank.py.

On CUDA, gram.py checks and rescales Z first; these tests call the function directly with gram.py's
default ``rtol``. Tolerances as in test_gram.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose
from reference import gram_min_eig_ref
from test_gram import SIZES, assert_eigs_close, make_case
from test_gram_lowrank import lowrank as lowrank_any

import fastal
from fastal import _gram_lowrank_torch as lowrank_torch


def lowrank(Z, lab, groups, **kw):
    return lowrank_any(Z, lab, groups, "torch", **kw)


def check(Z, lab, groups):
    """Against the reference and, with a labeled set, the CPU's low-rank kernel."""
    got = lowrank(Z, lab, groups)
    want, spectra = gram_min_eig_ref(np.asarray(Z, dtype=np.float64), lab, groups)
    lmax = spectra[:, -1]
    assert_eigs_close(got, want, lmax, rtol=1e-8)
    if lab is not None and len(lab):
        cpu = fastal.gram_min_eig(Z, lab, groups, method="lowrank")
        assert_eigs_close(got, cpu, lmax, rtol=1e-8)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    ("n", "D", "m_lab", "G"), SIZES, ids=[f"n{n}-D{D}-L{m}-G{g}" for n, D, m, g in SIZES]
)
def test_matches_reference(n, D, m_lab, G, dtype):
    Z, lab, groups = make_case(n, D, m_lab, 6, G, seed=n + D + m_lab + G)
    check(Z.astype(dtype), lab, groups)


def test_zero_groups_and_empty_labeled():
    """Groups whose rows are all zero score 0 and are never counted (no 0 / 0); with nothing
    labeled, Λ is zero (D side) or empty (S side)."""
    Z = np.zeros((6, 3))
    Z[1] = [1.0, 2.0, 2.0]
    assert_allclose(lowrank(Z, None, [[0, 2, 3, 4], [1, 2, 3, 4]]), [0.0, 9.0], rtol=1e-12)
    Z, _, groups = make_case(60, 4, 0, 5, 6, seed=4)  # D side, nothing shared: Λ = 0
    check(Z, None, groups)
    Z, _, groups = make_case(60, 30, 0, 5, 6, seed=5)  # S side, m = 0
    check(Z, None, groups)


def test_chunks_give_the_same_scores(monkeypatch):
    """Groups are processed in chunks bounded by CHUNK_BYTES (3 groups here). Each group's
    brackets depend on its own counts only; batched BLAS may round a product differently in
    another batch, so the scores agree to rounding, not to the bit."""
    Z, lab, groups = make_case(400, 64, 80, 23, 10, seed=11)
    whole = lowrank(Z, lab, groups)
    monkeypatch.setattr(lowrank_torch, "CHUNK_BYTES", 3 * 8 * lowrank_torch.SHIFTS * 10 * 64 * 2)
    assert_allclose(lowrank(Z, lab, groups), whole, rtol=1e-12)


def test_cuda_auto_threshold():
    """On CUDA, "auto" takes the low-rank route only from CUDA_LOWRANK_MIN_ORDER on, with groups
    of at most CUDA_LOWRANK_MAX_G rows (test_cuda_gram.py checks the choice on a GPU)."""
    assert fastal.gram.CUDA_LOWRANK_MIN_ORDER == 512
    assert fastal.gram.CUDA_LOWRANK_MAX_G == 32
    assert fastal.gram._cheaper_method(2048, 20, 1024, 200, False) == "lowrank"
    assert fastal.gram._cheaper_method(512, 20, 256, 300, False) == "lowrank"  # CPU only
