"""CRC (Kong et al., Alg. 1) and the trace-NTK features, against float64 numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import AVAILABLE_CUDA_BACKENDS, indices_to_backend, to_backend, to_numpy
from numpy.testing import assert_allclose, assert_array_equal

import fastal
from fastal.strategies import CRC, get

RTOL = 1e-10


def lambda_min_pos_ref(Z: np.ndarray, S: np.ndarray, rtol) -> float:
    """Smallest eigenvalue above rtol * largest of Z_S Z_Sᵀ (via the smaller side), float64;
    ``rtol=None``: max(|S|, D) eps, the kernel's default."""
    ZS = Z[S].astype(np.float64)
    K = ZS @ ZS.T if ZS.shape[0] <= ZS.shape[1] else ZS.T @ ZS
    ev = np.linalg.eigvalsh(K)
    rtol = max(ZS.shape) * np.finfo(np.float64).eps if rtol is None else rtol
    pos = ev[ev > rtol * ev[-1]]
    return float(pos[0]) if pos.size else 0.0


def holds_duplicate_ref(Z: np.ndarray, lab: np.ndarray, group: np.ndarray) -> bool:
    """Proposition 2's degenerate multiset: a row of the group with the features of a labeled row
    or of another row of the group."""
    rows = [tuple(Z[i]) for i in group]
    return len(set(rows)) < len(rows) or any(r == tuple(Z[j]) for r in rows for j in lab)


def crc_ref(Z, labeled, Q, G, seed, rtol=RTOL, max_groups=None, zeros="duplicates"):
    """Alg. 1 literally: a seeded random partition of the unlabeled rows into groups of G (the
    remainder left out), score λ⁺_min(L ∪ group), the Q/G best groups (ties to the earlier one).
    ``zeros="duplicates"``: a group holding a duplicate scores 0."""
    n = Z.shape[0]
    lab = np.asarray(labeled, dtype=np.int64)
    rest = np.setdiff1d(np.arange(n), lab)
    perm = np.random.default_rng(seed).permutation(rest)
    k = perm.size // G
    groups = perm[: k * G].reshape(k, G)
    if max_groups is not None:
        groups = groups[:max_groups]
    return best_groups_ref(Z, lab, groups, Q, rtol, zeros)


def best_groups_ref(Z, lab, groups, Q, rtol=RTOL, zeros="duplicates"):
    """Score every group by λ⁺_min(L ∪ group) and take the Q/G best (ties to the earlier one).
    ``zeros="duplicates"``: going down the groups in that order, one holding a duplicate (of a
    labeled row, of a row of its own or of a row of a group taken before it) scores 0 instead and
    ranks after every group that does not, until Q/G groups are taken."""
    G = groups.shape[1]
    scores = np.array([lambda_min_pos_ref(Z, np.concatenate([lab, g]), rtol) for g in groups])
    degenerate = set()
    if zeros == "duplicates":
        taken = [Z[j] for j in lab]
        kept = 0
        for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
            if kept == Q // G:
                break
            if holds_duplicate_ref(Z, lab, groups[i]) or any(
                np.array_equal(Z[j], t) for j in groups[i] for t in taken
            ):
                scores[i] = 0.0
                degenerate.add(i)
                continue
            taken += [Z[j] for j in groups[i]]
            kept += 1
    best = sorted(range(len(scores)), key=lambda i: (i in degenerate, -scores[i], i))[: Q // G]
    return groups[best].reshape(-1), scores


@pytest.mark.parametrize(("n", "D", "n_lab", "Q", "G", "seed"), [
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
    sel = CRC(group_size=2, max_groups=7, rtol=RTOL).select(
        torch.from_numpy(Z), 4, labeled=[0, 1], seed=9
    )
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
    np.testing.assert_array_equal(
        skip.indices, crc_ref(Z, labeled, 4, G, seed, None, zeros="skip")[0]
    )
    assert set(skip.indices.tolist()) & (set(copies.tolist()) | {39, 40})


def test_a_row_equal_up_to_the_sign_of_zero_is_a_duplicate():
    """Row 1 is labeled row 0 with -0.0 for 0.0: their Gram [[1, 1], [1, 1]] has λ⁺_min = 2 once
    its 0 is skipped, above row 2's (2.25 - √1.0625) / 2; the duplicate rule scores it 0 and
    row 2 is picked."""
    Z = np.array([[0.0, 1.0], [-0.0, 1.0], [1.0, 0.5]])
    sel = CRC(group_size=1).select({"ntk_features": Z}, 1, labeled=[0], seed=0)
    groups = sel.diagnostics["groups"][:, 0]
    scores = dict(zip(groups.tolist(), sel.diagnostics["scores"].tolist(), strict=True))
    assert_array_equal(sel.indices, [2])
    assert scores[1] == 0.0
    assert_allclose(scores[2], (2.25 - np.sqrt(1.0625)) / 2, rtol=1e-12)
    assert_array_equal(groups[sel.diagnostics["degenerate_groups"]], [1])


@pytest.mark.parametrize("seed", range(8))
def test_a_degenerate_group_ranks_after_a_group_scoring_zero(seed):
    """Rows 0 and 1 are equal and row 2 is all zeros (λ⁺_min = 0: no positive eigenvalue). The
    second copy's group scores 0 like row 2's; it must not win that tie on its index."""
    Z = np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]])
    sel = CRC(group_size=1).select({"ntk_features": Z}, 2, seed=seed)
    assert sorted(sel.indices.tolist()) in ([0, 2], [1, 2])
    assert_array_equal(sel.indices, crc_ref(Z, [], 2, 1, seed)[0])


@pytest.mark.parametrize(("G", "Q"), [(1, 4), (2, 20), (5, 15)])
@pytest.mark.parametrize("seed", range(4))
def test_no_two_chosen_groups_share_a_point(G, Q, seed):
    """Points 0..39 appear twice in the pool: with ``zeros="duplicates"`` a group repeating a row of
    a better group already taken scores 0, so no point is picked twice. Groups of the same points
    score the same up to rounding, so the picks are checked by what defines them rather than against
    crc_ref."""
    rng = np.random.default_rng(seed)
    point = np.concatenate([np.arange(120), np.arange(40)])  # the point each row is
    Z = rng.normal(size=(120, 60))[point]
    labeled = [0, 1, 2, 3]
    sel = CRC(group_size=G).select(Z, Q, labeled=labeled, seed=seed)
    points = point[np.asarray(sel.indices)]
    assert np.unique(points).size == Q
    assert not set(points.tolist()) & set(labeled)  # and no copy of a labeled row
    d = sel.diagnostics
    chosen, scores = d["chosen_groups"], d["scores"]
    taken = set(labeled) | set(points.tolist())
    for g in d["degenerate_groups"]:
        assert scores[g] == 0
        mine = point[d["groups"][g]]
        assert set(mine.tolist()) & taken or np.unique(mine).size < G
    others = np.setdiff1d(np.arange(scores.size), np.concatenate([chosen, d["degenerate_groups"]]))
    assert scores[chosen].min() >= scores[others].max()


@pytest.mark.parametrize("G", [2, 4, 8, 16])
def test_duplicate_rule_on_relu_like_features_past_the_rank(G):
    """A unit silent on the labeled rows and most of the pool (a ReLU feature) and a dead one: the
    pool's rank is 11 of D = 12, every group of 4 or more adds a zero eigenvalue (|S| > 10), yet
    only the groups holding a copy of a labeled row score 0. The rule this replaced counted
    zeros against the pool's rank and scored every group 0 here at G = 8 and 16."""
    rng = np.random.default_rng(4)
    D = 12
    Z = rng.normal(size=(120, D))
    Z[:, 7] = 0  # dead
    Z[:, 3] = np.where(rng.random(120) < 0.2, np.abs(Z[:, 3]), 0.0)  # rarely active
    labeled = np.arange(6)
    Z[labeled, 3] = 0
    Z[6:12] = Z[labeled]  # copies of the labeled rows
    Q = 2 * G
    sel = CRC(group_size=G, rtol=RTOL).select(Z, Q, labeled=labeled, seed=G)
    want, scores = crc_ref(Z, labeled, Q, G, G)
    np.testing.assert_array_equal(sel.indices, want)
    groups, mine = sel.diagnostics["groups"], sel.diagnostics["scores"]
    for g in sel.diagnostics["degenerate_groups"]:
        assert set(groups[g]) & set(range(6, 12))
        assert mine[g] == 0
    clean = [g for g in range(len(groups)) if not set(groups[g]) & set(range(6, 12))]
    assert (scores[clean] > 0).all()  # no group without a copy scores 0
    assert not set(sel.indices.tolist()) & set(range(6, 12))


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
    sel = CRC(group_size=2, rtol=RTOL).select(
        {"features": h, "probs": p}, 4, labeled=[0, 1], seed=4
    )
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


def balanced_groups_ref(probs, labeled, G, seed):
    """The balanced partition as the CRC docstring states the draw: pseudo-class = the first column
    of a row's largest probability; one generator from the seed permutes the unlabeled rows
    (ascending) of class 0, then of class 1, ...; group i is the i-th run of G / C rows of every
    class, classes in order, while every class still fills a run; the rows left over in any class
    are left out."""
    n, C = probs.shape
    pseudo = [int(np.flatnonzero(row == row.max())[0]) for row in probs]
    taken = {int(i) for i in np.asarray(labeled, dtype=np.int64)}
    unlabeled = [i for i in range(n) if i not in taken]
    rng = np.random.default_rng(seed)
    members = [np.array([i for i in unlabeled if pseudo[i] == c], dtype=np.int64) for c in range(C)]
    queues = [list(rng.permutation(m)) for m in members]  # class 0 first
    per, groups = G // C, []
    while all(len(q) >= per for q in queues):
        groups.append([q.pop(0) for q in queues for _ in range(per)])
    return np.array(groups, dtype=np.int64).reshape(-1, G)


def balanced_crc_ref(Z, probs, labeled, Q, G, seed, rtol=RTOL, zeros="duplicates"):
    """CRC on the balanced partition: (picks, scores, groups)."""
    groups = balanced_groups_ref(probs, labeled, G, seed)
    picks, scores = best_groups_ref(Z, np.asarray(labeled, dtype=np.int64), groups, Q, rtol, zeros)
    return picks, scores, groups


def probs_with_labels(rng, labels, C):
    """Random probability rows whose argmax is ``labels`` (the largest entry swapped into place)."""
    p = rng.dirichlet(np.ones(C), labels.size)
    top = p.argmax(1)
    rows = np.arange(labels.size)
    p[rows, top], p[rows, labels] = p[rows, labels], p[rows, top]
    return p


def check_balanced(sel, Z, probs, labeled, Q, G, seed, rtol=RTOL, zeros="duplicates"):
    """Picks and groups exactly, scores to rounding, against the float64 reference; with
    ``"duplicates"`` the scores are compared where the code has decided degeneracy (the groups it
    checked, and those the reference finds non-degenerate; the others keep their plain λ⁺_min)."""
    want, scores, groups = balanced_crc_ref(Z, probs, labeled, Q, G, seed, rtol, zeros)
    assert_array_equal(sel.diagnostics["groups"], groups)
    assert sel.diagnostics["n_groups"] == groups.shape[0]
    assert_array_equal(sel.indices, want)
    mine = sel.diagnostics["scores"]
    same = np.ones(scores.size, bool)
    if zeros == "duplicates":
        same = scores > 0
        same[sel.diagnostics["degenerate_groups"]] = True
    np.testing.assert_allclose(mine[same], scores[same], rtol=1e-7, atol=1e-12)
    assert not set(sel.indices.tolist()) & set(np.asarray(labeled).tolist())
    return want, scores


@pytest.mark.parametrize(("n", "d", "C", "G", "Q", "n_lab", "seed"), [
    (90, 4, 3, 6, 12, 0, 0),     # no labeled set; |S| = 6 > D = 5: the D side, forced zeros
    (90, 4, 3, 6, 12, 7, 1),     # labeled rows leave every class
    (120, 8, 4, 4, 12, 5, 2),    # G / C = 1
    (100, 12, 2, 4, 8, 3, 3),    # |S| = 7 < D = 13: the |S| side
    (100, 12, 2, 4, 8, 3, 4),
    (75, 3, 3, 9, 9, 2, 5),      # Q = G: the best single group
])  # fmt: skip
def test_balanced_crc_matches_reference(n, d, C, G, Q, n_lab, seed):
    """balanced=True from "features" + "probs": the groups, picks and scores of a plain numpy
    reference that rebuilds the pseudo-class partition from the seed and the ntk features."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, d))
    p = rng.dirichlet(np.ones(C), n)
    labeled = rng.choice(n, n_lab, replace=False)
    pool = {"features": h, "probs": p}
    sel = CRC(group_size=G, balanced=True, rtol=RTOL).select(pool, Q, labeled, seed=seed)
    Z = np.sqrt(C) * np.c_[h, np.ones(n)]
    check_balanced(sel, Z, p, labeled, Q, G, seed)
    for g in sel.diagnostics["groups"]:
        assert np.bincount(p[g].argmax(1), minlength=C).tolist() == [G // C] * C


@pytest.mark.parametrize("seed", range(3))
def test_balanced_small_pseudo_class_limits_the_groups(seed):
    """A pseudo-class with 7 rows, 2 of them labeled: ⌊5 / (G / C)⌋ groups, the rest of every
    class (the small one's last row included) left out; a budget past them, or a class with no
    unlabeled row, is refused."""
    rng = np.random.default_rng(seed)
    n, C = 60, 3
    labels = np.r_[np.zeros(27, int), np.ones(26, int), np.full(7, 2)]
    rng.shuffle(labels)
    p = probs_with_labels(rng, labels, C)
    h = rng.normal(size=(n, 5))
    Z = np.sqrt(C) * np.c_[h, np.ones(n)]
    small = np.flatnonzero(labels == 2)
    labeled = np.r_[small[:2], np.flatnonzero(labels == 0)[:3]]
    pool = {"features": h, "probs": p}
    for G, Q, k in ((6, 12, 2), (3, 9, 5)):
        sel = CRC(group_size=G, balanced=True, rtol=RTOL).select(pool, Q, labeled, seed=seed)
        check_balanced(sel, Z, p, labeled, Q, G, seed)
        assert sel.diagnostics["n_groups"] == k
        with pytest.raises(ValueError, match=f"only {k} full groups"):
            CRC(group_size=G, balanced=True).select(pool, (k + 1) * G, labeled, seed=seed)
    with pytest.raises(ValueError, match=r"only 0 full groups.*pseudo-class 2 has 0 unlabeled"):
        CRC(group_size=3, balanced=True).select(pool, 3, np.union1d(labeled, small), seed=seed)


def test_balanced_needs_valid_probabilities_and_says_what_limits_the_groups():
    """The pseudo-labels come from argmax, which would file a NaN row under the NaN's column and
    accept values outside [0, 1] or unnormalised rows: all are refused, as for every probs input
    (float16 softmax rows, within 2 eps of 1, pass). Without balanced=True only the number of
    columns is used, and they are refused all the same (an upstream bug the user should hear of).
    A class too small for the budget, or max_groups, is named in the error."""
    rng = np.random.default_rng(0)
    h = rng.normal(size=(30, 4))
    p = rng.dirichlet(np.ones(3), 30)
    nan, big, half = p.copy(), p.copy(), p.copy()
    nan[4, 1], big[4, 1] = np.nan, 7.0
    half[4] *= 0.5  # in [0, 1], sums to 0.5
    not_probs = r"^probs must hold probabilities in \[0, 1\] with rows summing to 1 \(within 0.001"
    for q, match in ((nan, r"^probs contains NaN or Inf in 1 row\(s\), first at row 4"),
                     (big, not_probs), (half, not_probs)):  # fmt: skip
        for balanced in (True, False):
            with pytest.raises(ValueError, match=match):
                CRC(group_size=3, balanced=balanced).select({"features": h, "probs": q}, 3)
    z = np.log(p)
    z[5, 0] = np.inf
    with pytest.raises(ValueError, match=r"^logits contains NaN or Inf in 1 row\(s\), first at"):
        CRC(group_size=3, balanced=True).select({"features": h, "logits": z}, 3)
    p16 = torch.softmax(torch.from_numpy(z[:, ::-1].copy()).clamp(max=5), 1).half()
    assert (p16.double().sum(1) - 1).abs().max() > 1e-4  # rounded, yet within 2 eps of 1
    CRC(group_size=3, balanced=True).select({"features": h, "probs": p16}, 3, seed=0)
    labels = np.r_[np.zeros(14, int), np.ones(14, int), np.full(2, 2)]
    q = probs_with_labels(rng, labels, 3)
    with pytest.raises(ValueError, match=r"each group takes 1 of every pseudo-class's rows, and "
                                         r"pseudo-class 2 has 2 unlabeled rows"):  # fmt: skip
        CRC(group_size=3, balanced=True).select({"features": h, "probs": q}, 9, seed=0)
    with pytest.raises(
        ValueError, match=r"^max_groups = 2 caps the groups below the 3 that budget"
    ):
        CRC(group_size=3, max_groups=2).select({"features": h, "probs": p}, 9, seed=0)


@pytest.mark.parametrize("key", ["probs", "logits"])
def test_balanced_ties_go_first(key):
    """Rows with tied top probabilities take the first tied class (numpy's argmax), and groups
    with tied scores go to the earlier one: orthonormal features score every group exactly 1, so
    the picks are the first Q / G groups of the partition ("ntk_features" with "probs" or
    "logits", whose argmax is the same)."""
    n, C = 45, 3
    rng = np.random.default_rng(7)
    p = rng.dirichlet(np.ones(C), n)
    p[::4] = [0.4, 0.4, 0.2]  # class 0
    p[1::4] = [0.2, 0.4, 0.4]  # class 1
    p[2::9] = 1 / 3  # class 0
    Z = np.eye(n)
    labeled = [3, 7, 10]
    pool = {"ntk_features": Z, key: np.log(p) if key == "logits" else p}
    sel = CRC(group_size=3, balanced=True, rtol=RTOL).select(pool, 9, labeled, seed=11)
    check_balanced(sel, Z, p, labeled, 9, 3, 11)
    assert_array_equal(sel.diagnostics["chosen_groups"], [0, 1, 2])
    assert (sel.diagnostics["scores"] == 1.0).all()


@pytest.mark.parametrize("seed", range(4))
def test_balanced_zeros_modes_match_reference(seed):
    """Copies of labeled rows (same features, hence the same pseudo-class) at |S| <= D: the
    duplicate rule scores their groups 0 and picks none, "skip" scores them on a row fewer; both
    as the reference does on the balanced partition."""
    rng = np.random.default_rng(seed)
    n, C, d, n_lab = 60, 3, 29, 10
    h = rng.normal(size=(n, d))
    p = rng.dirichlet(np.ones(C), n)
    labeled = np.arange(n_lab)
    copies = np.arange(n_lab, 2 * n_lab)
    h[copies], p[copies] = h[labeled], p[labeled]
    Z = np.sqrt(C) * np.c_[h, np.ones(n)]
    pool = {"features": h, "probs": p}
    sel = CRC(group_size=3, balanced=True).select(pool, 6, labeled, seed=seed)
    check_balanced(sel, Z, p, labeled, 6, 3, seed, rtol=None)
    groups = sel.diagnostics["groups"]
    assert not set(sel.indices.tolist()) & set(copies.tolist())
    for g in sel.diagnostics["degenerate_groups"]:
        assert set(groups[g]) & set(copies.tolist())
    skip = CRC(group_size=3, balanced=True, zeros="skip").select(pool, 6, labeled, seed=seed)
    check_balanced(skip, Z, p, labeled, 6, 3, seed, rtol=None, zeros="skip")
    assert skip.diagnostics["degenerate_groups"].size == 0
    assert set(skip.indices.tolist()) & set(copies.tolist())


def test_balanced_one_class_is_the_plain_partition():
    """With one column of probabilities every row is one pseudo-class: the balanced partition is
    the plain seeded one (the same single permutation), max_groups included."""
    rng = np.random.default_rng(8)
    h = rng.normal(size=(50, 4))
    Z = np.c_[h, np.ones(50)]
    pool = {"features": h, "probs": np.ones((50, 1))}
    for max_groups in (None, 6):
        crc = CRC(group_size=2, balanced=True, max_groups=max_groups, rtol=RTOL)
        sel = crc.select(pool, 4, [0, 5], seed=2)
        want, scores = crc_ref(Z, [0, 5], 4, 2, 2, max_groups=max_groups)
        assert_array_equal(sel.indices, want)
        np.testing.assert_allclose(sel.diagnostics["scores"], scores, rtol=1e-7, atol=1e-12)


def test_a_zero_budget_returns_the_same_diagnostics_keys_empty():
    Z = np.random.default_rng(0).normal(size=(20, 3))
    some, none = (CRC(group_size=2).select(Z, b, labeled=[0], seed=0) for b in (4, 0))
    assert set(none.diagnostics) == set(some.diagnostics)
    assert none.indices.shape == (0,)
    assert none.diagnostics["groups"].shape == (0, 2)
    assert all(v.size == 0 for k, v in none.diagnostics.items() if k != "n_groups")


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
    # at construction, not at the first select (loop.run had trained a round by then)
    with pytest.raises(ValueError, match=r"^rtol must be in \[0, 1\), got 2.0"):
        CRC(rtol=2.0)
    with pytest.raises(ValueError, match=r"^rtol must be in \[0, 1\), got nan"):
        CRC(rtol=float("nan"))
    with pytest.raises(TypeError, match=r"^rtol must be a real number"):
        CRC(rtol="1e-6")
    assert CRC(rtol=np.float32(0.5)).rtol == 0.5
    with pytest.raises(ValueError, match=r"^max_groups = 1 caps"):
        CRC(group_size=4, max_groups=1).select(Z, 8)
    bad = Z.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"Z|NaN"):
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


def test_bias_false_uses_the_features_without_the_constant_column():
    """A last layer without a bias: the trace NTK is C h·h', ntk_features(bias=False)."""
    rng = np.random.default_rng(2)
    h, p = rng.normal(size=(80, 6)), rng.dirichlet(np.ones(3), 80)
    sel = CRC(group_size=2, bias=False).select({"features": h, "probs": p}, 6, [0, 1, 2], seed=1)
    Z = fastal.ntk_features(h, 3, bias=False)
    want = CRC(group_size=2).select({"ntk_features": Z}, 6, [0, 1, 2], seed=1)
    np.testing.assert_array_equal(sel.indices, want.indices)
    np.testing.assert_allclose(sel.diagnostics["scores"], want.diagnostics["scores"], rtol=1e-12)
    with_bias = CRC(group_size=2).select({"features": h, "probs": p}, 6, [0, 1, 2], seed=1)
    assert not np.allclose(with_bias.diagnostics["scores"], want.diagnostics["scores"])
    with pytest.raises(TypeError, match="bias must be a bool"):
        CRC(bias="no")


@pytest.mark.parametrize("rtol", [1.0, -1e-9, True, False])
def test_crc_refuses_rtol_out_of_range_or_a_bool(rtol):
    with pytest.raises((ValueError, TypeError), match=r"^rtol must be"):
        CRC(rtol=rtol)


def test_a_zero_budget_has_the_dtypes_of_any_other():
    Z = np.random.default_rng(0).normal(size=(20, 3))
    some, none = (CRC(group_size=2).select(Z, b, labeled=[0], seed=0) for b in (4, 0))
    assert none.indices.dtype == some.indices.dtype
    assert none.diagnostics["n_groups"] == 0
    for k, v in some.diagnostics.items():
        if k != "n_groups":
            assert none.diagnostics[k].dtype == v.dtype, k
    assert type(none.indices) is type(some.indices)
    torch_none = CRC(group_size=2).select(torch.from_numpy(Z), 0, labeled=[0], seed=0)
    assert isinstance(torch_none.indices, torch.Tensor)
