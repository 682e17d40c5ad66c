"""CRC (Kong et al., Alg. 1) and the trace-NTK features, against float64 numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import AVAILABLE_CUDA_BACKENDS, indices_to_backend, to_backend, to_numpy
from numpy.testing import assert_array_equal

import fastal
from fastal.strategies import CRC, get

RTOL = 1e-10


def lambda_min_pos_ref(Z: np.ndarray, S: np.ndarray, rtol, forced: int | None = None) -> float:
    """Smallest eigenvalue above rtol * largest of Z_S Z_Sᵀ (via the smaller side), float64;
    ``rtol=None``: max(|S|, D) eps, the kernel's default. With ``forced`` (the zeros every set of
    this size has), 0.0 when the matrix has more zeros than that (Proposition 2: duplicates score
    zero)."""
    ZS = Z[S].astype(np.float64)
    K = ZS @ ZS.T if ZS.shape[0] <= ZS.shape[1] else ZS.T @ ZS
    ev = np.linalg.eigvalsh(K)
    rtol = max(ZS.shape) * np.finfo(np.float64).eps if rtol is None else rtol
    pos = ev[ev > rtol * ev[-1]]
    if forced is not None and ev.size - pos.size > forced:
        return 0.0
    return float(pos[0]) if pos.size else 0.0


def forced_zeros_ref(Z: np.ndarray, size: int, rtol) -> int:
    """max(0, m - r): m = min(size, D), r = rank of all of Z (eigenvalues of ZᵀZ above rtol * max;
    ``rtol=None``: max(n, D) eps)."""
    ev = np.linalg.eigvalsh(Z.T.astype(np.float64) @ Z.astype(np.float64))
    rtol = max(Z.shape) * np.finfo(np.float64).eps if rtol is None else rtol
    rank = int((ev > rtol * ev[-1]).sum()) if ev[-1] > 0 else 0
    return max(0, min(size, Z.shape[1]) - rank)


def crc_ref(Z, labeled, Q, G, seed, rtol=RTOL, max_groups=None, zeros="structural"):
    """Alg. 1 literally: a seeded random partition of the unlabeled rows into groups of G (the
    remainder left out), score λ⁺_min(L ∪ group), the Q/G best groups (ties to the earlier one).
    ``zeros="structural"``: a group with more zero eigenvalues than its size forces scores 0."""
    n = Z.shape[0]
    lab = np.asarray(labeled, dtype=np.int64)
    rest = np.setdiff1d(np.arange(n), lab)
    perm = np.random.default_rng(seed).permutation(rest)
    k = perm.size // G
    groups = perm[: k * G].reshape(k, G)
    if max_groups is not None:
        groups = groups[:max_groups]
    forced = forced_zeros_ref(Z, lab.size + G, rtol) if zeros == "structural" else None
    scores = np.array([lambda_min_pos_ref(Z, np.concatenate([lab, g]), rtol, forced) for g in groups])
    best = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: Q // G]
    return groups[best].reshape(-1), scores


@pytest.mark.parametrize("n,D,n_lab,Q,G,seed", [
    (40, 6, 3, 4, 2, 0),     # |S| = 5 < D: the |S| x |S| side
    (60, 4, 5, 6, 3, 1),     # |S| = 8 > D: the D x D side
    (80, 10, 0, 5, 5, 2),    # no labeled set
    (50, 7, 4, 3, 1, 3),     # G = 1
])  # fmt: skip
def test_crc_matches_reference(n, D, n_lab, Q, G, seed):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, D))
    labeled = rng.choice(n, n_lab, replace=False)
    sel = CRC(group_size=G, rtol=RTOL).select(Z, Q, labeled=labeled, seed=seed)
    want, scores = crc_ref(Z, labeled, Q, G, seed)
    np.testing.assert_array_equal(sel.indices, want)
    np.testing.assert_allclose(sel.diagnostics["scores"], scores, rtol=1e-7, atol=1e-12)
    assert len(set(sel.indices.tolist())) == Q
    assert not set(sel.indices.tolist()) & set(labeled.tolist())


def test_crc_max_groups_and_torch_input():
    rng = np.random.default_rng(5)
    Z = rng.normal(size=(70, 5))
    sel = CRC(group_size=2, max_groups=7, rtol=RTOL).select(torch.from_numpy(Z), 4, labeled=[0, 1], seed=9)
    want, _ = crc_ref(Z, [0, 1], 4, 2, 9, max_groups=7)
    assert isinstance(sel.indices, torch.Tensor)
    np.testing.assert_array_equal(sel.indices.numpy(), want)
    assert sel.diagnostics["n_groups"] == 7


@pytest.mark.cuda
@pytest.mark.parametrize("backend", list(AVAILABLE_CUDA_BACKENDS) or ["torch-cuda"])
def test_crc_on_cuda_matches_cpu(backend):
    """Z on a GPU: the labeled and group indices go to the device with it; the CPU's picks."""
    if backend not in AVAILABLE_CUDA_BACKENDS:
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(300, 40)).astype(np.float32)
    labeled = rng.choice(300, 50, replace=False)
    cpu = CRC(group_size=5, rtol=RTOL).select(Z, 20, labeled=labeled, seed=1)
    Zg = to_backend(Z, backend, "float32")
    lab_g = indices_to_backend(labeled, backend)  # indices live with the data
    gpu = CRC(group_size=5, rtol=RTOL).select(Zg, 20, labeled=lab_g, seed=1)
    np.testing.assert_array_equal(to_numpy(gpu.indices), cpu.indices)
    np.testing.assert_allclose(gpu.diagnostics["scores"], cpu.diagnostics["scores"], rtol=1e-9)


def test_gram_min_eig_skips_the_zero_of_a_duplicate():
    """The kernel's λ⁺_min skips every zero: an identical pair is scored on one row fewer."""
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(30, 3))
    Z[20] = Z[21]  # an identical pair in the pool
    lab = np.arange(5)
    same = fastal.gram_min_eig(Z, lab, np.array([[20, 21]]), rtol=RTOL)
    ref = lambda_min_pos_ref(Z, np.r_[lab, 20, 21], RTOL)
    np.testing.assert_allclose(same, [ref], rtol=1e-8)


@pytest.mark.parametrize("seed", range(8))
def test_duplicates_score_zero_at_full_rank(seed):
    """Proposition 2: with |S| <= D, a group holding a copy of a labeled point (or two identical
    points) has a singular Gram matrix and scores 0, so CRC picks no copy while distinct groups
    remain. Skipping every zero ("skip", plain λ⁺_min) scores such a group on a row fewer, which
    tends to win: that rule picks copies here."""
    rng = np.random.default_rng(seed)
    D, n_lab, G = 30, 10, 2
    Z = rng.normal(size=(41, D))
    labeled = np.arange(n_lab)
    copies = np.arange(n_lab, 2 * n_lab)
    Z[copies] = Z[labeled]  # ten copies of the labeled rows
    Z[40] = Z[39]  # and an identical pair
    sel = CRC(group_size=G).select(Z, 4, labeled=labeled, seed=seed)
    want, _ = crc_ref(Z, labeled, 4, G, seed, rtol=None)
    np.testing.assert_array_equal(sel.indices, want)
    picks = set(sel.indices.tolist())
    assert not picks & set(copies.tolist())
    assert not {39, 40} <= picks
    groups = sel.diagnostics["groups"]
    for g in sel.diagnostics["degenerate_groups"]:
        assert set(groups[g]) & set(copies.tolist()) or {39, 40} <= set(groups[g])
        assert sel.diagnostics["scores"][g] == 0
    skip = CRC(group_size=G, zeros="skip").select(Z, 4, labeled=labeled, seed=seed)
    assert skip.diagnostics["degenerate_groups"].size == 0
    np.testing.assert_array_equal(skip.indices, crc_ref(Z, labeled, 4, G, seed, None, zeros="skip")[0])
    assert set(skip.indices.tolist()) & (set(copies.tolist()) | {39, 40})


def test_structural_rule_picks_like_the_reference():
    """Copies of labeled rows and a rank-deficient pool (two dead feature columns: every set
    larger than the rank has forced zeros, which are skipped), against the float64 reference."""
    rng = np.random.default_rng(4)
    D = 12
    Z = rng.normal(size=(90, D))
    Z[:, [3, 7]] = 0  # rank 10: sets of 11 or more have forced zeros
    labeled = np.arange(6)
    Z[6:12] = Z[labeled]
    for G, Q in ((2, 6), (4, 8), (8, 16)):  # |S| = 8 (no forced zero), 10 (none), 14 (2 forced)
        sel = CRC(group_size=G, rtol=RTOL).select(Z, Q, labeled=labeled, seed=G)
        want, scores = crc_ref(Z, labeled, Q, G, G)
        np.testing.assert_array_equal(sel.indices, want)
        mine = sel.diagnostics["scores"]
        checked = sel.diagnostics["degenerate_groups"]
        np.testing.assert_array_equal(mine[checked], 0.0)
        np.testing.assert_array_equal(scores[checked], 0.0)
        if G == 8:  # forced zeros only: nothing is degenerate
            assert checked.size == 0 and (scores > 0).all()


def test_ntk_features_gram_is_trace_ntk():
    rng = np.random.default_rng(1)
    h = rng.normal(size=(6, 4))
    Z = fastal.ntk_features(h, 5)
    np.testing.assert_allclose(Z @ Z.T, 5 * (h @ h.T + 1), rtol=1e-12)
    Zb = fastal.ntk_features(h, 5, bias=False)
    np.testing.assert_allclose(Zb @ Zb.T, 5 * (h @ h.T), rtol=1e-12)


def test_ntk_jacobian_equals_last_layer_features_for_a_linear_model():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    J = fastal.ntk_features_jacobian(model, x)
    Z = fastal.ntk_features(x, 3)
    torch.testing.assert_close(J @ J.T, Z @ Z.T)
    Jw = fastal.ntk_features_jacobian(model, x, params=["weight"], chunk=3)
    torch.testing.assert_close(Jw @ Jw.T, 3 * (x @ x.T))


def test_crc_from_features_and_probs_uses_last_layer_ntk():
    rng = np.random.default_rng(2)
    h = rng.normal(size=(50, 4))
    p = rng.dirichlet(np.ones(3), 50)
    sel = CRC(group_size=2, rtol=RTOL).select({"features": h, "probs": p}, 4, labeled=[0, 1], seed=4)
    want, _ = crc_ref(np.sqrt(3) * np.c_[h, np.ones(50)], [0, 1], 4, 2, 4)
    np.testing.assert_array_equal(sel.indices, want)


def test_balanced_groups_hold_each_pseudo_class():
    rng = np.random.default_rng(3)
    h = rng.normal(size=(90, 4))
    p = rng.dirichlet(np.ones(3), 90)
    pseudo = p.argmax(1)
    sel = CRC(group_size=6, balanced=True).select({"features": h, "probs": p}, 12, seed=0)
    for g in sel.diagnostics["groups"]:
        assert np.bincount(pseudo[g], minlength=3).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="group_size"):
        CRC(group_size=4, balanced=True).select({"features": h, "probs": p}, 4, seed=0)
    with pytest.raises(ValueError, match="probs"):
        CRC(group_size=3, balanced=True).select(h, 3, seed=0)


def test_bad_input():
    Z = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match="multiple of group_size"):
        CRC(group_size=3).select(Z, 4)
    with pytest.raises(ValueError, match="budget"):
        CRC(group_size=1).select(Z, 21)
    with pytest.raises(ValueError, match="group_size"):
        CRC(group_size=0)
    with pytest.raises(ValueError, match="zeros"):
        CRC(zeros="all")
    with pytest.raises(ValueError, match="full groups"):
        CRC(group_size=4, max_groups=1).select(Z, 8)
    bad = Z.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="Z|NaN"):
        CRC(group_size=2).select(bad, 2)
    assert get("crc") is CRC


# ---------------------------------------------------------------------------------------------
# low-precision inputs (audit §4) and row-count mismatches (§7); no message names the internal Z


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("balanced", [False, True])
def test_low_precision_features_and_probs(dtype, balanced):
    """float16 / bfloat16 features are widened to float32 on purpose (the Gram is float64): the
    picks are those of the same stored values given as float32."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(90, 3, generator=g), 1).to(getattr(torch, dtype))
    h = torch.randn(90, 5, generator=g).to(p.dtype)
    crc = CRC(group_size=3, balanced=balanced)
    sel = crc.select({"probs": p, "features": h}, 6, [0, 1], seed=0)
    ref = crc.select({"probs": p.float() / p.float().sum(1, keepdim=True), "features": h.float()},
                     6, [0, 1], seed=0)  # fmt: skip
    assert_array_equal(to_numpy(sel.indices), to_numpy(ref.indices))
    assert isinstance(sel.indices, torch.Tensor)
    for pool in ({"ntk_features": h}, h):  # given NTK features: widened the same way
        got = CRC(group_size=3).select(pool, 6, [0, 1], seed=0)
        want = CRC(group_size=3).select(h.float(), 6, [0, 1], seed=0)
        assert_array_equal(to_numpy(got.indices), to_numpy(want.indices))


def test_errors_name_what_the_user_passed():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(20, 3))
    for pool, name in (({"ntk_features": Z.astype(np.int64)}, "ntk_features"),
                       (Z.astype(np.int64), "pool"),
                       ({"features": Z.astype(np.int64), "probs": rng.dirichlet(np.ones(3), 20)},
                        "features")):  # fmt: skip
        with pytest.raises(TypeError, match=f"^{name} must have dtype") as err:
            CRC(group_size=2).select(pool, 2)
        assert "Z" not in str(err.value)
    bad = Z.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"^ntk_features contains NaN or Inf in 1 row"):
        CRC(group_size=2).select({"ntk_features": bad}, 2)


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize(("n_probs", "n_features"), [(30, 40), (40, 30)])
def test_probs_and_features_row_counts_must_agree(balanced, n_probs, n_features):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), n_probs)
    for key in ("features", "ntk_features"):
        pool = {key: rng.normal(size=(n_features, 4)), "probs": probs}
        with pytest.raises(ValueError, match=f"probs and {key} must have one row per pool point"):
            CRC(group_size=3, balanced=balanced).select(pool, 6)
