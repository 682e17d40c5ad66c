"""Sparse Approximation on bad and extreme input: parameters and pools refused with errors that
name the argument, non-finite inputs, 16-bit probabilities, and scales where float32 squares or the
line search would overflow or underflow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import to_numpy
from numpy.testing import assert_allclose, assert_array_equal
from reference import softmax_ref, sparse_problem_factored_ref
from test_sparse import factored_reference, logits_pool

import fastal
import fastal.strategies

SparseApprox = fastal.strategies.get("sparse_approx")


# ---------------------------------------------------------------------------------------------
# bad input to the strategy


def test_strategy_rejects_bad_parameters():
    pool = logits_pool(20, 3, 2, seed=0)
    for kwargs, exc, match in (
        ({"solver": "lasso"}, ValueError, "solver"),
        ({"alpha": -1.0}, ValueError, "alpha"),
        ({"beta": -1e-3}, ValueError, "beta"),
        ({"alpha": np.nan}, ValueError, "alpha"),
        ({"iters": 0}, ValueError, "iters"),
        ({"iters": -3}, ValueError, "iters"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": -2.0}, ValueError, "temperature"),
        ({"tau": -1.0}, ValueError, "tau"),
        ({"tau": 0.0}, ValueError, "tau"),
        ({"prox": "Exact"}, ValueError, "prox"),
        ({"safeguard": 1}, TypeError, "safeguard"),
        ({"safeguard": "yes"}, TypeError, "safeguard"),
    ):
        with pytest.raises(exc, match=match):
            SparseApprox(**kwargs).select(pool, 3)


_N = 20


_POOL = logits_pool(_N, 3, 2, seed=0)


_LZ = {"labeled_targets": np.zeros(10, dtype=np.int64)}


_P = softmax_ref(_POOL["logits"])


#: (id, pool, budget, labeled, exception, message pattern)
BAD_POOLS = [
    ("budget-over-pool", _POOL, _N + 1, None, ValueError, "budget"),
    ("budget-over-unlabeled", _POOL, _N - 1, [0, 1], ValueError, "budget"),
    (
        "features-rows-differ",
        {"logits": _POOL["logits"], "features": _POOL["features"][:-1]},
        3,
        None,
        ValueError,
        "features",
    ),
    ("features-missing", {"logits": _POOL["logits"]}, 3, None, ValueError, "features"),
    ("logits-missing", {"features": _POOL["features"]}, 3, None, ValueError, "logits"),
    (
        "label-probs-shape",
        {
            "probs": softmax_ref(_POOL["logits"]),
            "features": _POOL["features"],
            "label_probs": np.ones((_N, 4)) / 4,
        },
        3,
        None,
        ValueError,
        "label_probs",
    ),
    (
        "labeled-logits-C-differs",
        dict(_POOL, labeled_logits=np.zeros((10, 4)), **_LZ),
        3,
        None,
        ValueError,
        "labeled_logits",
    ),
    (
        "labeled-logits-C-differs-probs",
        {"probs": _P, "features": _POOL["features"], "labeled_logits": np.zeros((10, 4)), **_LZ},
        3,
        None,
        ValueError,
        "labeled_logits must have 3 classes like probs",
    ),
    ("losses-without-probs", {"losses": np.ones((3, _N, 3))}, 3, None, ValueError, "probs"),
    (
        "losses-probs-C-differs",
        {"losses": np.ones((3, _N, 3)), "probs": np.ones((_N, 4)) / 4},
        3,
        None,
        ValueError,
        "probs",
    ),
    ("mc-probs-not-3d", {"mc_probs": np.ones((_N, 3)) / 3}, 3, None, ValueError, "mc_probs"),
    ("mc-probs-sum-3", {"mc_probs": np.ones((4, _N, 3))}, 3, None, ValueError, "mc_probs"),
    ("mc-probs-int", {"mc_probs": np.zeros((4, _N, 3), np.int64)}, 3, None, TypeError, "mc_probs"),
    (
        "losses-int",
        {"losses": np.ones((3, _N, 3), np.int64), "probs": _P},
        3,
        None,
        TypeError,
        "losses",
    ),
    (
        "losses-probs-nan",
        {"losses": np.ones((3, _N, 3)), "probs": _P * np.nan},
        3,
        None,
        ValueError,
        "probs",
    ),
    (
        "losses-probs-sum",
        {"losses": np.ones((3, _N, 3)), "probs": _P * 2},
        3,
        None,
        ValueError,
        "probs",
    ),
    (
        "probs-not-probs",
        {"probs": _POOL["logits"], "features": _POOL["features"]},
        3,
        None,
        ValueError,
        "probs",
    ),
    (
        "label-probs-nan",
        {"probs": _P, "features": _POOL["features"], "label_probs": _P * np.nan},
        3,
        None,
        ValueError,
        "label_probs",
    ),
    (
        "label-probs-huge",  # finite, and once a segfault in the top-b step
        {"probs": _P, "features": _POOL["features"], "label_probs": np.full((_N, 3), -1e200)},
        3,
        None,
        ValueError,
        "label_probs",
    ),
    ("labeled-duplicates", _POOL, 3, [1, 1], ValueError, "labeled"),
    ("bare-array", _POOL["features"], 3, None, TypeError, "pool"),
]


@pytest.mark.parametrize(
    ("pool", "budget", "labeled", "exc", "match"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_POOLS],
)
def test_strategy_rejects_bad_pools(pool, budget, labeled, exc, match):
    with pytest.raises(exc, match=match):
        SparseApprox().select(pool, budget, labeled)


@pytest.mark.parametrize("solver", ["iht", "greedy"])
def test_16_bit_probabilities_are_accepted(solver):
    """Softmax outputs stored in bfloat16 / float16 sum to 1 only within their rounding."""
    pool = logits_pool(60, 5, 4, seed=3)
    probs = torch.from_numpy(softmax_ref(pool["logits"]))
    label_probs = torch.from_numpy(softmax_ref(pool["logits"] / 2.0))
    for dtype in (torch.bfloat16, torch.float16):
        sel = SparseApprox(solver=solver).select(
            {"probs": probs.to(dtype), "label_probs": label_probs.to(dtype),
             "features": torch.from_numpy(pool["features"]).to(dtype)},
            5,
        )  # fmt: skip
        assert np.unique(to_numpy(sel.indices)).size == 5


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("key", ["logits", "features"])
def test_strategy_rejects_non_finite_inputs(key, dtype, bad):
    pool = {k: v.astype(dtype) for k, v in logits_pool(20, 3, 2, seed=0).items()}
    pool[key][4, 1] = bad
    if key == "logits" and bad == -np.inf:  # a masked class: taken (tests/test_masked_classes.py)
        pool[key][4, :] = bad  # but not a row of masked classes only
    with pytest.raises(ValueError, match=key):
        SparseApprox(temperature=2.0).select(pool, 3)


@pytest.mark.parametrize("labeled", [None, [1]])
def test_factored_sigma_of_huge_float32_features(labeled):
    """Finite float32 features whose row norm overflows float32 (|h| ~ 1e22) are accepted, and their
    sigma comes from a float64 norm, not from an overflowed float32 one."""
    pool = logits_pool(6, 3, 2, seed=1)
    pool["features"] = pool["features"].astype(np.float32)
    pool["features"][2] = [3e21, -4e21]
    rows = np.setdiff1d(np.arange(6), labeled or [])
    _, _, sigma, _ = SparseApprox(temperature=2.0, bias=False)._factored_problem(
        pool, torch.from_numpy(rows), 2
    )
    ref_pool = {k: v.astype(np.float64) for k, v in pool.items()}
    _, _, sigma_ref = factored_reference(ref_pool, rows, 2, 2.0, bias=False)
    assert np.isfinite(to_numpy(sigma)).all()
    assert_allclose(to_numpy(sigma), sigma_ref, rtol=1e-5)


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [("float32", 1e-25), ("float32", 1e-40), ("float64", 1e-140), ("float64", 1e200)],
)
def test_factored_sigma_of_tiny_and_huge_features(dtype, scale):
    """Rows whose squares underflow (float32 near 1e-23 had norm 0: every sigma 0, the top-b sigma
    ties went to the lowest indices) or overflow float64 get sigma from norms taken after dividing
    each row by its largest magnitude; an all-zero row keeps sigma 0."""
    pool = logits_pool(8, 3, 5, seed=2)
    pool["features"] = (pool["features"] * scale).astype(dtype)
    pool["features"][3] = 0
    rows = np.arange(8)
    _, _, sigma, _ = SparseApprox(temperature=2.0, bias=False)._factored_problem(
        pool, torch.from_numpy(rows), 2
    )
    ref_pool = {k: v.astype(np.float64) for k, v in pool.items()}
    ref_pool["features"] = ref_pool["features"] / scale  # the reference at scale 1, then scaled
    _, _, sigma_ref = factored_reference(ref_pool, rows, 2, 2.0, bias=False)
    assert_allclose(to_numpy(sigma) / scale, sigma_ref, rtol=1e-6)
    assert to_numpy(sigma)[3] == 0


def test_tiny_float32_features_pick_as_their_float64_copy():
    rng = np.random.default_rng(0)
    H, p = rng.normal(size=(30, 70)) * 1e-25, rng.dirichlet(np.ones(3), 30)
    pool = {"logits": np.log(p), "labeled_logits": np.log(p[[0]]), "labeled_targets": [1]}
    want = SparseApprox().select({**pool, "features": H.astype(np.float32).astype(np.float64)}, 4,
                                 [0])  # fmt: skip
    got = SparseApprox().select({**pool, "features": H.astype(np.float32)}, 4, [0])
    assert_array_equal(got.indices, want.indices)
    assert not np.array_equal(got.indices, [1, 2, 3, 4])  # the lowest indices: what went wrong


@pytest.mark.parametrize("scale", [1e-150, 1e-300])
def test_features_too_small_for_float64_are_refused(scale):
    """The objective's terms are squares of sigma's scale: they underflowed, and IHT took the
    lowest indices (with alpha = beta = 0 the refusal said 'overflowed')."""
    pool = logits_pool(30, 3, 6, seed=3)
    pool["features"] = pool["features"] * scale
    for kw in ({}, {"alpha": 0.0, "beta": 0.0}):
        with pytest.raises(ValueError, match=r"features are too small for float64.*beta by s\*\*2 "
                           r".*greedy's picks do not change, IHT's may"):  # fmt: skip
            SparseApprox(temperature=2.0, **kw).select(pool, 4)


@pytest.mark.parametrize("bias", [False, True])
def test_a_one_hot_label_distribution_is_named_not_the_features(bias):
    """Logits of 800 at temperature 2: sigma underflows through P's spread, not |h| (with the bias
    |h| >= 1); the refusal blamed the features."""
    rng = np.random.default_rng(0)
    logits = np.zeros((40, 3))
    logits[np.arange(40), rng.integers(0, 3, 40)] = 800
    pool = {"features": rng.normal(size=(40, 5)), "logits": logits}
    with pytest.raises(ValueError, match=r"^the label distribution P is one-hot to rounding .*"
                       r"raise the temperature or lower the scale of logits"):  # fmt: skip
        SparseApprox(temperature=2.0, bias=bias).select(pool, 4)


def test_math_sanity_of_the_factored_reference():
    """The reference's Φ column is (1/b) a ⊗ h, v the column mean times b, sigma the formula."""
    p = np.array([[0.7, 0.2, 0.1]])
    P = np.array([[0.5, 0.3, 0.2]])
    H = np.array([[2.0, -1.0]])
    Phi, v, sigma = sparse_problem_factored_ref(p, P, H, b=2)
    a = p[0] - P[0]
    assert_allclose(Phi[:, 0], np.outer(a, H[0]).ravel() / 2)
    assert_allclose(v, np.outer(a, H[0]).ravel())
    expected = math.sqrt(5) * sum(P[0, y] * np.linalg.norm(P[0] - np.eye(3)[y]) for y in range(3))
    assert_allclose(sigma, [expected])


@pytest.mark.parametrize("solver", ["iht", "greedy"])
@pytest.mark.parametrize("c", [1e-60, 1e-80, 2.0**-350, 2.0**-380, 1e60])
def test_the_line_search_neither_underflows_nor_overflows(solver, c):
    """With β = 0 (and α = 0) the objective is homogeneous in the features' scale c, so the picks
    and weights are those at c = 1 and the objective is c² times theirs. |Φu|² goes like c⁶: below
    ~1e-51 it underflowed to 0, the line search returned μ = 0, and IHT returned the first b
    candidates with weights 0. Φu itself goes like c³: at 2^-350 it was subnormal and at 2^-380
    zero, and De-bias returned a residual r - μ Φu from it (off by 1e-3 and by 172 %), which
    misled the later picks (greedy's objective 6.5x worse at 2^-380)."""
    rng = np.random.default_rng(0)
    logits, H = rng.normal(size=(60, 4)), rng.normal(size=(60, 5))
    kw = {"solver": solver, "alpha": 0.0, "beta": 0.0, "temperature": 2.0, "safeguard": False}
    want = SparseApprox(**kw).select({"logits": logits, "features": H}, 8)
    got = SparseApprox(**kw).select({"logits": logits, "features": H * c}, 8)
    assert_array_equal(got.indices, want.indices)
    assert_allclose(got.diagnostics["selected_weights"], want.diagnostics["selected_weights"],
                    rtol=1e-6, atol=1e-9)  # fmt: skip
    got_f = np.asarray(got.diagnostics["objective"]) / c / c
    assert_allclose(got_f, want.diagnostics["objective"], rtol=1e-6)


@pytest.mark.parametrize("solver", ["iht", "greedy"])
@pytest.mark.parametrize("exponent", [-50, -40, 30, 63])
def test_float32_features_far_from_1_take_float64_products(solver, exponent):
    """Φ's products run in float32 for float32 features and reach their cube: features near 2^-50
    gave weights off by 0.8 and objectives off by 1 %, near 2^62 other picks, silently (a scale
    audit). Outside the safe range the products run in float64: with β scaled by s² (and α = 0
    for IHT, whose top-b step does not scale otherwise) the picks are those at scale 1 (the
    float32 run's, which equal the float64 run's here) and the objective s² times theirs."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 4)).astype(np.float32)
    H = rng.normal(size=(200, 16)).astype(np.float32)
    s = 2.0**exponent
    alpha = 1e-2 if solver == "greedy" else 0.0
    kw = {"solver": solver, "alpha": alpha, "temperature": 2.0, "safeguard": False}
    want = SparseApprox(beta=0.1, **kw).select({"logits": logits, "features": H}, 8, [0, 1])
    want64 = SparseApprox(beta=0.1, **kw).select(
        {"logits": logits.astype(np.float64), "features": H.astype(np.float64)}, 8, [0, 1]
    )
    assert_array_equal(want.indices, want64.indices)  # the premise: no near tie between dtypes
    got = SparseApprox(beta=0.1 * s * s, **kw).select(
        {"logits": logits, "features": H * np.float32(s)}, 8, [0, 1]
    )
    assert_array_equal(got.indices, want.indices)
    got_f = np.asarray(got.diagnostics["objective"]) / s / s
    assert_allclose(got_f, want64.diagnostics["objective"], rtol=1e-9)


@pytest.mark.parametrize("c", [1e-110, 1e-150])
def test_the_line_search_recomputes_a_phi_u_that_underflowed(c):
    """Below features of ~1e-103 Φu (∝ c³, u ∝ c²) is exactly 0 in float64 although u is not:
    the line search skipped the step (μ = 0). The minimiser scales as 1 / c²."""
    from fastal.sparse import DensePhi, SparseProblem

    E = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 10)))

    def mu(scale):
        Ec = E * scale
        zeros = torch.zeros(10, dtype=torch.float64)
        problem = SparseProblem(DensePhi(Ec, 3), Ec.sum(1) / 10, zeros, 3, 0.0, 0.0)
        u = problem.grad_f1(zeros)
        return problem.line_search(u, zeros), float(problem.phi.apply(u).abs().max())

    want, _ = mu(1.0)
    got, phi_u = mu(c)
    assert phi_u == 0.0  # the case at hand
    assert_allclose(got * c * c, want, rtol=1e-12)


def test_the_public_solvers_check_their_problem():
    """fastal.sparse's SparseProblem, solve_greedy and top_b_sigma are public: greedy with b > n
    returned a duplicate index, a NaN σ gave top_b_sigma an empty set, and a float32 DensePhi a
    torch dtype error naming nothing."""
    from fastal.sparse import DensePhi, SparseProblem, solve_greedy, top_b_sigma

    G = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 4)))
    v, sigma = G.sum(1) / 4, torch.ones(4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^b must be in \[0, 4\] \(the columns of phi\), got 5$"):
        solve_greedy(SparseProblem(DensePhi(G, 5), v, sigma, 5, 0.0, 0.0), 1.0)
    with pytest.raises(TypeError, match=r"^b must be an integer, got float$"):
        SparseProblem(DensePhi(G, 2), v, sigma, 2.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"^alpha must be finite and >= 0, got -1.0$"):
        SparseProblem(DensePhi(G, 2), v, sigma, 2, -1.0, 0.0)
    with pytest.raises(TypeError, match=r"^sigma must be a float64 torch tensor, got torch.float"):
        SparseProblem(DensePhi(G, 2), v, sigma.float(), 2, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"^sigma must have shape \(4,\), got \(3,\)$"):
        SparseProblem(DensePhi(G, 2), v, sigma[:3], 2, 0.0, 0.0)
    bad = torch.tensor([1.0, math.nan, 1.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^sigma contains NaN or Inf$"):
        SparseProblem(DensePhi(G, 2), v, bad, 2, 0.0, 0.0)
    with pytest.raises(TypeError, match=r"^a DensePhi's G must be float64 .*got torch.float32$"):
        SparseProblem(DensePhi(G.float(), 2), v, sigma, 2, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"^sigma contains NaN or Inf$"):
        top_b_sigma(torch.tensor([0.5, math.nan, 0.2]), 2)
    with pytest.raises(ValueError, match=r"^b must be an integer in \[0, 3\], got 4$"):
        top_b_sigma(torch.tensor([0.5, 0.1, 0.2]), 4)
    whole = solve_greedy(SparseProblem(DensePhi(G, 4), v, sigma, 4, 0.0, 0.0), 1.0)
    assert sorted(whole.selected.tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("source", ["mc_probs", "losses"])
def test_a_bayesian_pool_refuses_the_factored_settings(source):
    """bias, a float temperature and label_probs shape the factored Φ only: a Bayesian pool
    returned the plain selection with them, saying nothing."""
    rng = np.random.default_rng(0)
    mc = rng.dirichlet(np.ones(3), size=(4, 25))
    pool = {"mc_probs": mc} if source == "mc_probs" else {"losses": -np.log(mc), "probs": mc[0]}
    plain = SparseApprox().select(pool, 5)
    assert plain.indices.shape == (5,)
    auto = SparseApprox(temperature="auto").select(pool, 5)
    assert auto.indices.tolist() == plain.indices.tolist()
    for kwargs, extra, said in [
        ({"bias": True}, {}, r"bias=True"),
        ({"temperature": 5.0}, {}, r"temperature=5\.0"),
        ({}, {"label_probs": mc.mean(0)}, r"pool\['label_probs'\]"),
    ]:
        with pytest.raises(ValueError, match=rf"^{said} apply to the non-Bayesian form .*"
                           rf"\(pool\['{source}'\]\) has no use for them"):  # fmt: skip
            SparseApprox(**kwargs).select({**pool, **extra}, 5)


@pytest.mark.parametrize("solver", ["greedy", "iht"])
def test_losses_whose_sigma_overflows_get_the_named_message(solver):
    """σ of losses ~1e306 is Inf: the problem's own check said 'sigma contains NaN or Inf', which
    names nothing the user passed; the strategy names losses and what to do."""
    mc = np.random.default_rng(0).dirichlet(np.ones(3), size=(4, 25))
    pool = {"losses": -np.log(mc) * 1e306, "probs": mc[0]}
    with pytest.raises(ValueError, match=r"^the Sparse Approximation objective is not finite .*"
                       r"rescale losses or lower alpha / beta$"):  # fmt: skip
        SparseApprox(solver=solver).select(pool, 4)
