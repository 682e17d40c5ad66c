"""Sparse Approximation's label temperature: a float temperature on logits and probs pools
(P = softmax(log p / T)), ``temperature="auto"`` fitted on the labeled logits, the limits of tiny
and huge T, P = p warning, and ``fastal.fit_temperature`` recovering a planted temperature and
agreeing with :func:`reference.fit_temperature_ref`."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import to_numpy
from numpy.testing import assert_allclose, assert_array_equal
from reference import (
    fit_temperature_ref,
    softmax_ref,
    sparse_problem_factored_ref,
    temperature_nll_ref,
    top_scores_ref,
    unlabeled_rows,
)
from test_sparse import (
    DEFAULTS,
    P_IS_P,
    assert_same_solution,
    factored_reference,
    logits_pool,
    solve_ref,
)

import fastal
import fastal.strategies

SparseApprox = fastal.strategies.get("sparse_approx")


@pytest.mark.parametrize("solver", ["greedy", "iht"])
def test_probs_with_label_probs_equals_logits_with_temperature(solver):
    n, b, T = 30, 5, 1.7
    pool = logits_pool(n, 3, 4, seed=8)
    a = SparseApprox(solver=solver, temperature=T).select(pool, b, [0, 1])
    probs_pool = {
        "probs": softmax_ref(pool["logits"]),
        "label_probs": softmax_ref(pool["logits"] / T),
        "features": pool["features"],
    }
    c = SparseApprox(solver=solver).select(probs_pool, b, [0, 1])
    assert_array_equal(to_numpy(c.indices), to_numpy(a.indices))
    assert_allclose(c.diagnostics["weights"], a.diagnostics["weights"], rtol=1e-9, atol=1e-12)
    assert c.diagnostics["temperature"] is None
    # label_probs beside logits too (it was ignored there: P came from T = 1)
    logits_pool_P = {**pool, "label_probs": probs_pool["label_probs"]}
    d = SparseApprox(solver=solver).select(logits_pool_P, b, [0, 1])
    assert_array_equal(to_numpy(d.indices), to_numpy(a.indices))
    assert_allclose(d.diagnostics["weights"], a.diagnostics["weights"], rtol=1e-9, atol=1e-12)
    assert d.diagnostics["temperature"] is None
    with pytest.raises(ValueError, match=r"temperature=1\.7 and pool\['label_probs'\]"):
        SparseApprox(solver=solver, temperature=T).select(logits_pool_P, b, [0, 1])


def tempered_ref(p, T: float) -> np.ndarray:
    """``softmax(log p / T)`` in float64, ``p = 0`` giving 0 (log 0 = -inf)."""
    with np.errstate(divide="ignore"):
        return softmax_ref(np.log(np.asarray(p, dtype=np.float64)) / T)


@pytest.mark.parametrize("solver", ["greedy", "iht"])
@pytest.mark.parametrize("T", [0.5, 1.7, 3.0])
def test_probs_pool_applies_a_float_temperature(solver, T):
    """A probs pool with a float temperature uses P = softmax(log p / T), the P of the logits pool
    with the same T (it was once silently P = p): same selection, weights and T."""
    n, b = 30, 5
    pool = logits_pool(n, 3, 4, seed=8)
    probs_pool = {"probs": softmax_ref(pool["logits"]), "features": pool["features"]}
    a = SparseApprox(solver=solver, temperature=T).select(pool, b, [0, 1])
    c = SparseApprox(solver=solver, temperature=T).select(probs_pool, b, [0, 1])
    assert c.diagnostics["temperature"] == T
    assert_array_equal(to_numpy(c.indices), to_numpy(a.indices))
    assert_allclose(c.diagnostics["weights"], a.diagnostics["weights"], rtol=1e-9, atol=1e-12)
    # and the reference problem with P = softmax(log p / T)
    rows = unlabeled_rows(n, [0, 1])
    p = probs_pool["probs"][rows]
    Phi, v, sigma = sparse_problem_factored_ref(p, tempered_ref(p, T), pool["features"][rows], b)
    a_, be = DEFAULTS[("factored", solver)]
    expected = solve_ref(Phi, v, sigma, b, solver, a_, be)
    assert_same_solution(c, rows, expected, Phi, v, sigma, a_, be)


@pytest.mark.parametrize("T", [0.05, 0.5, 4.0])
def test_probs_temperature_with_zero_probabilities(T):
    """Exact zeros in p stay zeros in P (no NaN from log 0), the rest is softmax(log p / T), and
    confident rows (p_max = 1 - 1e-15) or tiny subnormal p do not overflow."""
    rng = np.random.default_rng(1)
    n, C = 12, 4
    p = softmax_ref(rng.normal(size=(n, C)) * 2)
    p[0] = [0.0, 0.25, 0.0, 0.75]
    p[1] = [1.0, 0.0, 0.0, 0.0]
    p[2] = [1 - 1e-15, 1e-15, 0.0, 0.0]
    p[3] = [1.0 - 5e-324, 5e-324, 0.0, 0.0]
    H = rng.normal(size=(n, 3))
    rows = np.arange(n)
    phi, v, sigma, T_got = SparseApprox(temperature=T)._factored_problem(
        {"probs": p, "features": H}, torch.from_numpy(rows), 3
    )
    assert T_got == T
    P = tempered_ref(p, T)
    assert (P[p == 0] == 0).all()
    A = to_numpy(phi.A)
    assert np.isfinite(A).all()
    assert (A[p == 0] == 0).all()
    assert_allclose(A, p - P, rtol=1e-12, atol=1e-15)
    _, v_ref, sigma_ref = sparse_problem_factored_ref(p, P, H, 3)
    assert_allclose(to_numpy(v).ravel(), v_ref, rtol=1e-12, atol=1e-15)
    assert_allclose(to_numpy(sigma), sigma_ref, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("key", ["logits", "probs"])
@pytest.mark.parametrize("T", [1e-6, 1e-300, 1e-320])
def test_tiny_temperature_gives_the_one_hot_limit(key, T):
    """A tiny temperature gives P = onehot(argmax) (the T -> 0 limit), not NaN: z / T used to
    overflow before softmax subtracted the row maximum (inf - inf) at T = 1e-320."""
    rng = np.random.default_rng(3)
    n, C = 16, 4
    z = rng.normal(size=(n, C)) * 3
    values = z if key == "logits" else softmax_ref(z)
    H = rng.normal(size=(n, 3))
    rows = np.arange(n)
    phi, _, sigma, T_got = SparseApprox(temperature=T)._factored_problem(
        {key: values, "features": H}, torch.from_numpy(rows), 3
    )
    assert T_got == T
    P = np.eye(C)[z.argmax(1)]
    assert_allclose(to_numpy(phi.A), softmax_ref(z) - P, rtol=1e-12, atol=1e-15)
    assert_allclose(to_numpy(sigma), 0, atol=1e-15)  # a one-hot P has no spread


def test_large_temperature_divides_before_it_subtracts():
    """T >= 1 divides first: a row spread past float64 (z - max = -inf) still gets the tempered
    probabilities, and T = 1 is softmax(z) bit for bit."""
    from fastal.strategies.sparse_approx import _tempered_softmax

    z = torch.tensor([[1.5e308, -1.5e308, 0.0]], dtype=torch.float64)
    expected = softmax_ref(np.array([[1.5, -1.5, 0.0]]))
    assert_allclose(_tempered_softmax(z, 1e308).numpy(), expected, rtol=1e-12)
    w = torch.randn(5, 4, dtype=torch.float64)
    assert torch.equal(_tempered_softmax(w, 1.0), torch.softmax(w, 1))


@pytest.mark.parametrize("solver", ["greedy", "iht"])
def test_probs_pool_auto_temperature_fits_on_labeled_logits(solver):
    """temperature="auto" with a probs pool and labeled logits/targets: T fitted on the labeled
    logits (Guo et al.), applied as softmax(log p / T); the result of the logits pool."""
    n, C, b = 40, 4, 5
    pool = logits_pool(n, C, 3, seed=13)
    rng = np.random.default_rng(14)
    lz = rng.normal(size=(300, C)) * 3
    pool["labeled_logits"] = lz
    pool["labeled_targets"] = (softmax_ref(lz / 2.0).cumsum(1) < rng.random((300, 1))).sum(1)
    T = fastal.fit_temperature(lz, pool["labeled_targets"])
    probs_pool = {k: val for k, val in pool.items() if k != "logits"}
    probs_pool["probs"] = softmax_ref(pool["logits"])
    a = SparseApprox(solver=solver).select(pool, b)
    c = SparseApprox(solver=solver).select(probs_pool, b)
    assert a.diagnostics["temperature"] == c.diagnostics["temperature"] == T
    assert_array_equal(to_numpy(c.indices), to_numpy(a.indices))
    assert_allclose(c.diagnostics["weights"], a.diagnostics["weights"], rtol=1e-9, atol=1e-12)
    p = probs_pool["probs"]
    Phi, v, sigma = sparse_problem_factored_ref(p, tempered_ref(p, T), pool["features"], b)
    a_, be = DEFAULTS[("factored", solver)]
    expected = solve_ref(Phi, v, sigma, b, solver, a_, be)
    assert_same_solution(c, np.arange(n), expected, Phi, v, sigma, a_, be)


def test_probs_pool_float_temperature_and_label_probs_is_an_error():
    pool = logits_pool(20, 3, 2, seed=8)
    probs = softmax_ref(pool["logits"])
    probs_pool = {"probs": probs, "label_probs": probs, "features": pool["features"]}
    with pytest.raises(ValueError, match=r"temperature=2\.0 and pool\['label_probs'\].*pass one"):
        SparseApprox(temperature=2.0).select(probs_pool, 3)
    # "auto" and None leave P to label_probs (here equal to p: the P = p warning)
    for temperature in ("auto", None):
        with pytest.warns(UserWarning, match=P_IS_P):
            sel = SparseApprox(temperature=temperature).select(probs_pool, 3)
        assert sel.diagnostics["temperature"] is None


@pytest.mark.parametrize(
    ("case", "temperature"),
    [("logits", 1.0), ("logits", "auto"), ("logits", None), ("probs", "auto"), ("probs", 1.0),
     ("probs", None)],
)  # fmt: skip
def test_label_distribution_equal_to_predictions_warns(case, temperature):
    """P = p (T = 1, no label_probs): every expected gradient is 0, Φ = 0 and the selection is the
    top-b sigma; a UserWarning says so. Any other temperature gives no warning."""
    pool = logits_pool(20, 3, 2, seed=8)
    if case == "probs":
        pool = {"probs": softmax_ref(pool["logits"]), "features": pool["features"]}
    with pytest.warns(UserWarning, match=P_IS_P) as record:
        SparseApprox(temperature=temperature).select(pool, 3)
    assert record[0].filename == __file__  # points at the caller of select
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SparseApprox(temperature=1.5).select(pool, 3)


@pytest.mark.parametrize("solver", ["greedy", "iht"])
def test_temperature_one_is_top_sigma_with_unit_weights(solver):
    """Hand-worked: with T = 1 (or probs without label_probs) P = p, so a_j = 0, Φ = 0, v = 0 and
    f1 = β|w - 1|². Greedy: every candidate has τ ∇f1 = -2βτ, the pick is the largest sigma (ties
    lowest), the line search along e_j lands on w_j = 1 and De-bias has a zero gradient. IHT: the
    gradient step gives s = 1 everywhere, the threshold keeps the b largest sigma. Both: top-b sigma
    in descending sigma order, w = 1 on it, f = β (n_u - b) - alpha Σ_S sigma². That is also the
    safeguard's candidate, at the same f: the solver's result stays (no fallback). Each warns that
    P = p."""
    n, b, alpha, beta = 25, 4, 0.7, 0.01
    pool = logits_pool(n, 3, 2, seed=9)
    labeled = [3, 11]
    rows = unlabeled_rows(n, labeled)
    _, _, sigma = factored_reference(pool, rows, b, 1.0)
    top = top_scores_ref(sigma, b)
    expected_f = beta * (rows.size - b) - alpha * float(np.sum(sigma[top] ** 2))
    probs = softmax_ref(pool["logits"])
    for strat_pool in (
        pool,
        {"probs": probs, "features": pool["features"]},
        {"probs": probs, "label_probs": probs, "features": pool["features"]},
    ):
        # temperature "auto" without labeled logits means T = 1
        with pytest.warns(UserWarning, match=P_IS_P):
            sel = SparseApprox(solver=solver, alpha=alpha, beta=beta).select(strat_pool, b, labeled)
        assert_array_equal(to_numpy(sel.indices), rows[top])
        w = np.zeros(rows.size)
        w[top] = 1.0
        assert_allclose(sel.diagnostics["weights"], w, rtol=1e-12, atol=1e-12)
        assert_allclose(sel.diagnostics["selected_weights"], np.ones(b), rtol=1e-12)
        assert_allclose(sel.diagnostics["objective"][-2:], expected_f, rtol=1e-12)
        assert sel.diagnostics["fallback"] is False
        T_diag = None if "label_probs" in strat_pool else 1.0
        assert sel.diagnostics["temperature"] == T_diag


def test_auto_temperature_fits_on_the_labeled_logits():
    n, C, b = 40, 4, 5
    pool = logits_pool(n, C, 3, seed=13)
    rng = np.random.default_rng(14)
    lz = rng.normal(size=(300, C)) * 3
    P = softmax_ref(lz / 2.0)
    pool["labeled_logits"] = lz
    pool["labeled_targets"] = (P.cumsum(1) < rng.random((300, 1))).sum(1)
    T = fastal.fit_temperature(lz, pool["labeled_targets"])
    for solver in ("greedy", "iht"):
        sel = SparseApprox(solver=solver).select(pool, b)
        assert sel.diagnostics["temperature"] == T
        a, be = DEFAULTS[("factored", solver)]
        rows = np.arange(n)
        Phi, v, sigma = factored_reference(pool, rows, b, T)
        expected = solve_ref(Phi, v, sigma, b, solver, a, be)
        assert_same_solution(sel, rows, expected, Phi, v, sigma, a, be)
    # a float temperature wins over the labeled logits
    assert SparseApprox(temperature=3.0).select(pool, b).diagnostics["temperature"] == 3.0


# ---------------------------------------------------------------------------------------------
# temperature scaling


def planted(n: int, C: int, T0: float, seed: int):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, C)) * 3
    P = softmax_ref(z / T0)
    targets = (P.cumsum(1) < rng.random((n, 1))).sum(1)  # inverse-CDF draw from P
    return z, np.minimum(targets, C - 1).astype(np.int64)


@pytest.mark.parametrize("T0", [0.5, 2.0])
def test_fit_temperature_recovers_a_planted_temperature(T0):
    z, t = planted(20000, 5, T0, seed=int(T0 * 10))
    T = fastal.fit_temperature(z, t)
    assert isinstance(T, float)
    assert abs(T - T0) <= 0.05 * T0, (T, T0)
    T_ref = fit_temperature_ref(z, t)
    assert_allclose(T, T_ref, rtol=1e-3)
    # and it is (numerically) the minimiser: no worse than the reference's
    assert temperature_nll_ref(z, t, T) <= temperature_nll_ref(z, t, T_ref) + 1e-9


def test_fit_temperature_backends_agree():
    z, t = planted(2000, 4, 1.3, seed=3)
    T = fastal.fit_temperature(z, t)
    assert fastal.fit_temperature(torch.from_numpy(z), torch.from_numpy(t)) == pytest.approx(
        T, rel=1e-12
    )
    T32 = fastal.fit_temperature(z.astype(np.float32), t.astype(np.int32))
    assert pytest.approx(fit_temperature_ref(z.astype(np.float32), t), rel=1e-3) == T32


def test_fit_temperature_stays_in_its_bounds():
    """Targets always the arg-max: the NLL falls as T -> 0, so T is the lower bound 1e-2.
    Targets always the arg-min: it falls as T -> inf, so T is the upper bound 1e2."""
    z = np.random.default_rng(4).normal(size=(500, 4))
    T = fastal.fit_temperature(z, z.argmax(1))
    assert pytest.approx(1e-2, rel=1e-2) == T
    T = fastal.fit_temperature(z, z.argmin(1))
    assert pytest.approx(1e2, rel=1e-2) == T
    assert fit_temperature_ref(z, z.argmin(1)) == pytest.approx(1e2, rel=1e-6)
    # finite logits so large that z / T overflows float64: the same bounds, not inf <= inf noise
    # (0.0556 and 0.01 before the NLL was computed divided by the logits' scale)
    for scale in (1e306, 1e308):
        big = z / np.abs(z).max() * scale
        assert pytest.approx(1e-2, rel=1e-2) == fastal.fit_temperature(big, z.argmax(1))
        assert pytest.approx(1e2, rel=1e-2) == fastal.fit_temperature(big, z.argmin(1))


def test_fit_temperature_rejects_bad_input():
    z, t = planted(50, 3, 1.0, seed=5)
    with pytest.raises(ValueError, match="targets"):
        fastal.fit_temperature(z, t[:-1])
    with pytest.raises(ValueError, match="targets"):
        fastal.fit_temperature(z, np.full(50, 3))
    with pytest.raises(ValueError, match="targets"):
        fastal.fit_temperature(z, np.full(50, -1))
    half = t.astype(np.float64)
    half[7] = 0.5
    with pytest.raises(TypeError, match=r"got float64 values that are not whole numbers: e.g. 0.5"):
        fastal.fit_temperature(z, half)
    with pytest.raises(TypeError, match="targets must hold integer classes, got dtype complex128"):
        fastal.fit_temperature(z, t.astype(np.complex128))  # (host_values' refusal)
    with pytest.raises(ValueError, match="logits"):
        fastal.fit_temperature(z[:, 0], t)
    bad = z.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="logits"):
        fastal.fit_temperature(bad, t)


def test_fit_temperature_takes_whole_number_float_and_bool_targets():
    """Refused before, while fastal.loop takes such labels; a bfloat16 refusal said float32."""
    z, t = planted(60, 3, 1.5, seed=6)
    T = fastal.fit_temperature(z, t)
    for whole in (t.astype(np.float64), torch.tensor(t, dtype=torch.bfloat16)):
        assert fastal.fit_temperature(z, whole) == T
    binary = t % 2 == 1
    assert fastal.fit_temperature(z[:, :2], binary) == fastal.fit_temperature(z[:, :2], t % 2)
    half = torch.tensor(t, dtype=torch.bfloat16)
    half[0] = 0.5
    with pytest.raises(TypeError, match="got bfloat16 values that are not whole numbers"):
        fastal.fit_temperature(z, half)
    huge = t.astype(np.float64)
    huge[0] = 1e20  # past int64: checked before the cast, which would wrap it (and warn)
    with pytest.raises(ValueError, match=r"must be classes in \[0, 3\), got values in \[0, 1000"):
        fastal.fit_temperature(z, huge)


@pytest.mark.parametrize("offset", [1e12, 1e15, 1e16])
def test_a_shared_offset_of_every_logit_does_not_move_the_temperature(offset):
    """softmax ignores a row's offset; the NLL subtracted z_y / T from logsumexp(z / T) after the
    division, and logits near 1e15 moved T by 4 % (2.5 % at 1e16). The gaps z - z_y of the
    offset logits are exact, so T is that of the gaps themselves."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 5)) * 3
    y = rng.integers(0, 5, 500)
    z[np.arange(500), y] += 2
    shifted = z + offset
    assert fastal.fit_temperature(shifted, y) == fastal.fit_temperature(shifted - offset, y)


def test_a_temperature_at_the_bound_is_the_bound_exactly():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(50, 3))
    y = z.argmax(1)  # every target ranked first: the NLL falls all the way to T -> 0
    assert fastal.fit_temperature(z, y) == 0.01


def test_fit_temperature_reads_the_logits_in_row_chunks(monkeypatch):
    """No whole float64 copy (two lived through the search: 7x float32 logits at its peak):
    float64 row chunks; tiny chunks give the same T up to the summation order, and a NaN or a
    -inf target in a late chunk is still found."""
    from fastal import _torch_arrays

    rng = np.random.default_rng(4)
    z = (rng.normal(size=(500, 7)) * 3).astype(np.float32)
    y = rng.integers(0, 7, 500)
    z[np.arange(500), y] += 2
    whole = fastal.fit_temperature(z, y)
    monkeypatch.setattr(_torch_arrays, "_CHUNK_VALUES", 64)
    assert len(_torch_arrays.row_chunks(500, 7)) > 50
    # near its minimum the NLL is flat: a summation order moves T by up to ~sqrt(eps)
    assert fastal.fit_temperature(z, y) == pytest.approx(whole, rel=1e-6)
    z[480, 3] = np.nan
    with pytest.raises(ValueError, match="contains NaN or Inf"):
        fastal.fit_temperature(z, y)
    z[480, 3] = 0.0
    z[490, y[490]] = -np.inf
    with pytest.raises(ValueError, match="-inf at the target class of row 490"):
        fastal.fit_temperature(z, y)


def test_fit_temperature_takes_a_last_chunk_one_row_longer(monkeypatch):
    """_row_chunks joins a one-row tail to the chunk before: the float64 buffer sized to the
    first chunk was resized by torch.sub(out=...), with a warning (an error under -W error)."""
    from fastal import _torch_arrays

    monkeypatch.setattr(_torch_arrays, "_CHUNK_VALUES", 70)  # 10 rows of 7: 31 rows = 3 chunks + 1
    rng = np.random.default_rng(5)
    z, y = rng.normal(size=(31, 7)), rng.integers(0, 7, 31)
    assert max(e - s for s, e in _torch_arrays.row_chunks(31, 7)) == 11
    T = fastal.fit_temperature(z, y)
    monkeypatch.setattr(_torch_arrays, "_CHUNK_VALUES", 1 << 20)
    assert pytest.approx(fastal.fit_temperature(z, y), rel=1e-6) == T


def test_fit_temperature_finds_huge_logits_in_an_early_chunk(monkeypatch):
    from fastal import _torch_arrays

    rng = np.random.default_rng(4)
    z = rng.normal(size=(500, 7)) * 3
    y = rng.integers(0, 7, 500)
    z[:5] = z[:5] / np.abs(z[:5]).max() * 1e308  # huge rows in the first chunk only
    y = z.argmin(1)  # the NLL falls towards T = 1e2
    whole = fastal.fit_temperature(z, y)
    assert whole == pytest.approx(1e2, rel=1e-2)
    monkeypatch.setattr(_torch_arrays, "_CHUNK_VALUES", 64)
    assert fastal.fit_temperature(z, y) == pytest.approx(whole, rel=1e-6)


def test_fit_temperature_of_huge_logits_sums_every_chunk(monkeypatch):
    from fastal import _torch_arrays

    rng = np.random.default_rng(4)
    z = rng.normal(size=(500, 7)) * 3
    y = rng.integers(0, 7, 500)
    z[np.arange(500), y] += 2
    z[:250] = z[:250] * 1e305  # the huge rows pull T one way, the others another
    whole = fastal.fit_temperature(z, y)
    monkeypatch.setattr(_torch_arrays, "_CHUNK_VALUES", 64)
    assert fastal.fit_temperature(z, y) == pytest.approx(whole, rel=1e-6)


def test_fit_temperature_of_a_hugely_negative_target():
    """|z| judges the scale: a target at -1e307 beside logits near 0 made (z - z_y) / T overflow."""
    z = np.random.default_rng(4).normal(size=(500, 4))
    big = -np.abs(z) / np.abs(z).max() * 1e307  # every logit <= 0: max(z) is not the scale
    assert pytest.approx(1e2, rel=1e-2) == fastal.fit_temperature(big, big.argmin(1))
