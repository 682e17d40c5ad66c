"""Bad inputs found by a fuzz audit (session 17): each was silently wrong, crashed, or raised from
deep inside numpy / torch without naming the argument."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

import fastal
from fastal import _ext, strategies
from fastal.strategies import CRC, Random, SparseApprox

RNG = np.random.default_rng(0)


# -- gram_min_eig / CRC: eigenvalues outside float64 -------------------------------------------


def _three_rows(scale: float) -> np.ndarray:
    Z = np.zeros((4, 3))
    Z[0], Z[1], Z[2] = [1, 0, 0], [0, 1, 0], [0, 0, 2]
    return Z * scale


@pytest.mark.parametrize("kwargs", [{}, {"rtol": 0.0}, {"return_all": True}])
def test_gram_eigenvalues_past_float64_are_refused(kwargs):
    """|Z| = 1e200 gives eigenvalues near 1e400; the rescaled kernel used to return inf (and NaN
    spectra) because scale² underflowed to 0."""
    Z = _three_rows(1.0)
    Z[0, 0] = 1e200
    with pytest.raises(ValueError, match=r"^the eigenvalues of Z Zᵀ do not fit float64: \|Z\|"):
        fastal.gram_min_eig(Z, [0], [[1, 2]], **kwargs)
    with pytest.raises(ValueError, match="do not fit float64"):  # underflow: 1e-600
        fastal.gram_min_eig(_three_rows(1e-300), [0], [[1, 2]])


@pytest.mark.parametrize("scale", [1e100, 1e-140, 2.0**300])
def test_gram_rescaling_keeps_representable_eigenvalues(scale):
    Z = _three_rows(scale)
    mins, spectra = fastal.gram_min_eig(Z, [0], [[1, 2]], return_all=True)
    want = np.linalg.eigvalsh((Z[:3] / scale) @ (Z[:3] / scale).T) * scale * scale
    np.testing.assert_allclose(mins, [want.min()], rtol=1e-12)
    np.testing.assert_allclose(np.sort(spectra[0]), np.sort(want), rtol=1e-12)


def test_crc_names_the_features_when_their_gram_overflows():
    P = np.full((40, 3), 1 / 3)
    X = RNG.normal(size=(40, 4)) * 1e200
    with pytest.raises(ValueError, match=r"^pool\['features'\] \(times √C\): the eigenvalues"):
        CRC(group_size=5).select({"features": X, "probs": P}, 5, seed=0)
    with pytest.raises(ValueError, match=r"^pool: the eigenvalues"):
        CRC(group_size=5).select(X, 5, seed=0)


def test_crc_balanced_is_a_real_bool_and_probs_are_checked_without_it():
    with pytest.raises(TypeError, match=r"^balanced must be a bool"):
        CRC(balanced="no")
    X = RNG.normal(size=(40, 4))
    P = np.full((40, 3), 1 / 3)
    P[3, 0] = np.nan
    with pytest.raises(
        ValueError, match=r"^probs contains NaN or Inf in 1 row\(s\), first at row 3"
    ):
        CRC(group_size=5).select({"features": X, "probs": P}, 5, seed=0)


# -- ntk_features: overflow of √C h ------------------------------------------------------------


@pytest.mark.parametrize(
    "h", [np.array([[3e38, 1.0]], np.float32), torch.tensor([[4e4, 1.0]], dtype=torch.float16)]
)
def test_ntk_features_refuses_overflow(h):
    with pytest.raises(ValueError, match=r"^features times √n_classes overflows float(32|16)"):
        fastal.ntk_features(h, 4)


def test_ntk_features_takes_a_huge_class_count():
    out = fastal.ntk_features(np.ones((1, 2)), 10**40)
    np.testing.assert_allclose(out, [[1e20, 1e20, 1e20]])


# -- SparseApprox ------------------------------------------------------------------------------


def _factored_pool(scale: float, dtype=np.float32):
    L = RNG.normal(size=(40, 3)).astype(dtype)
    X = (RNG.normal(size=(40, 4)) * scale).astype(dtype)
    return {"logits": L, "features": X}


@pytest.mark.parametrize("solver", ["greedy", "iht"])
def test_sparse_approx_refuses_an_objective_that_overflows(solver):
    """The greedy solver used to return the first b rows with NaN weights; IHT raised from the
    top-b kernel about its internal score."""
    pool = _factored_pool(1e200, np.float64)
    with pytest.raises(
        ValueError, match=r"^the Sparse Approximation objective is not finite .* features"
    ):
        SparseApprox(solver=solver, temperature=2.0).select(pool, 5)
    SparseApprox(solver=solver, temperature=2.0).select(_factored_pool(1.0, np.float64), 5)


@pytest.mark.parametrize("solver", ["greedy", "iht"])
def test_sparse_approx_float32_features_near_1e30_select_as_their_float64_copy(solver):
    """They were refused (the float32 products overflowed); their products now run in float64,
    where the objective (~1e60) fits: the picks are those of the float64 copy."""
    pool = _factored_pool(1e30)
    pool64 = {k: v.astype(np.float64) for k, v in pool.items()}
    got = SparseApprox(solver=solver, temperature=2.0).select(pool, 5)
    want = SparseApprox(solver=solver, temperature=2.0).select(pool64, 5)
    np.testing.assert_array_equal(got.indices, want.indices)


def test_sparse_approx_iht_overflow_is_named_before_the_top_b_step(monkeypatch):
    """On a GPU the score crosses to the top-b kernel in float32 (what _iht_torch does for a CUDA
    tensor, emulated here): its refusal named its own argument ``s``, not the overflow."""
    from fastal import _sparse_solve
    from fastal.sparse import iht_threshold

    def as_on_a_gpu(s, sigma, b, alpha, rule):
        return iht_threshold(s.float(), sigma.float(), b, alpha, rule=rule)

    monkeypatch.setattr(_sparse_solve, "_iht_torch", as_on_a_gpu)
    with pytest.raises(ValueError, match=r"^the Sparse Approximation objective is not finite"):
        # float64 features at 1e40: σ fits float64 (the CPU selects) but not the kernel's float32
        SparseApprox(solver="iht", temperature=2.0).select(_factored_pool(1e40, np.float64), 5)


@pytest.mark.parametrize("solver", ["greedy", "iht"])
def test_sparse_approx_is_scale_free_where_the_line_search_overflows(solver):
    """Scaling the features by k scales Φ, v and sigma by k. The line search's |Φ∇f1|² grows like k⁶
    and overflowed from k ~ 1e51: μ = 0 skipped every step and the selection silently changed.
    (β |w - 1|² does not scale, so only scales where it is negligible compare.)"""
    pool = _factored_pool(1.0, np.float64)

    def select(k):
        pool_k = dict(pool, features=pool["features"] * k)
        sel = SparseApprox(solver=solver, temperature=2.0).select(pool_k, 5)
        return np.asarray(sel.indices), np.asarray(sel.diagnostics["objective"]) / k**2

    base_indices, base_f = select(1e30)
    for k in (1e60, 1e90):
        indices, f = select(k)
        assert_array_equal(indices, base_indices)
        assert_allclose(f, base_f, rtol=1e-9)


def test_sparse_approx_bayesian_needs_two_samples_and_a_class():
    mc = RNG.dirichlet(np.ones(3), (5, 40)).astype(np.float32)
    for bad in (mc[:0], mc[:1]):
        with pytest.raises(ValueError, match=r"^mc_probs must hold m >= 2 posterior samples"):
            SparseApprox(solver="greedy").select({"mc_probs": bad}, 5)
    with pytest.raises(ValueError, match=r"^mc_probs must hold C >= 1 classes"):
        SparseApprox().select({"mc_probs": np.zeros((5, 40, 0), np.float32)}, 5)
    P = np.full((40, 3), 1 / 3, np.float32)
    with pytest.raises(ValueError, match=r"^losses must hold m >= 2"):
        SparseApprox().select({"losses": np.zeros((0, 40, 3), np.float32), "probs": P}, 5)
    losses = RNG.normal(size=(5, 40, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"^probs must have shape \(40, 3\) like losses\[0\]"):
        SparseApprox().select({"losses": losses, "probs": P[:39]}, 5)


def test_sparse_approx_names_the_labeled_arrays():
    pool = _factored_pool(1.0)
    with pytest.raises(TypeError, match=r"^bias must be a bool"):
        SparseApprox(bias="no")
    bad_logits = dict(
        pool, labeled_logits=np.full((5, 3), np.nan), labeled_targets=np.zeros(5, int)
    )
    with pytest.raises(ValueError, match=r"^labeled_logits contains NaN or Inf"):
        SparseApprox().select(bad_logits, 5)
    bad_targets = dict(pool, labeled_logits=pool["logits"][:5], labeled_targets=np.full(5, 7))
    with pytest.raises(ValueError, match=r"^labeled_targets must be classes in \[0, 3\)"):
        SparseApprox().select(bad_targets, 5)
    with pytest.raises(TypeError, match=r"^targets must hold integer classes"):
        fastal.fit_temperature(pool["logits"], ["a"] * 40)


# -- index and label arrays --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labeled", "match"),
    [
        ([1, [2]], r"^labeled must hold integer indices \(an array, tensor, list or range\): "),
        ({1, 2}, r"^labeled must hold integer indices, got set$"),
        ((i for i in range(2)), r"^labeled must hold integer indices, got generator$"),
        ("12", r"^labeled must hold integer indices, got dtype <U2$"),
        ([None, None], r"^labeled must hold integer indices, got an entry of type NoneType "
                       r"\(None\)$"),
        ([1, None], r"got an entry of type NoneType \(None\)$"),
        (np.array([0, 1], dtype=object), r"got dtype object \(entries of type int\): cast it"),
        # numpy reads True as 1 among numbers: [True, 2] would have been rows 1 and 2
        ([True, 2], r"^labeled must hold integer indices, got a boolean entry \(True\) among"),
        ((3, np.True_), r"got a boolean entry \(True\) among numbers$"),
    ],
)  # fmt: skip
def test_labeled_that_is_not_an_index_array(labeled, match):
    with pytest.raises(TypeError, match=match):
        fastal.kcenter_greedy(RNG.normal(size=(10, 3)), 2, labeled=labeled)


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        ([[3, 2**70]], r"^groups must hold integer indices, got an integer beyond 64 bits "
                       r"\(1180591620717411303424\)$"),
        ([[3, 4], [5, True]], r"^groups must hold integer indices, got a boolean entry \(True\)"),
    ],
)  # fmt: skip
def test_groups_with_entries_numpy_would_misread(groups, match):
    with pytest.raises(TypeError, match=match):
        fastal.gram_min_eig(RNG.normal(size=(10, 4)), [0], groups)


def test_unsigned_indices_are_not_wrapped():
    X = RNG.normal(size=(10, 3))
    with pytest.raises(ValueError, match=r"out of range \[0, 10\): e\.g\. 9223372036854775809$"):
        fastal.kcenter_greedy(X, 2, labeled=np.array([2**63 + 1], np.uint64))
    with pytest.raises(ValueError, match=r"groups\[0, 0\] = 9223372036854775809$"):
        fastal.gram_min_eig(X, [0], np.array([[2**63 + 1, 2]], np.uint64))
    with pytest.raises(TypeError, match=r"^groups must hold integer indices"):
        fastal.gram_min_eig(X, [0], [[1, 2], [3]])
    picks = fastal.kcenter_greedy(X, 2, labeled=np.array([3], np.uint32), seed=0)
    np.testing.assert_array_equal(picks, fastal.kcenter_greedy(X, 2, labeled=[3], seed=0))


def test_gradient_labels_of_unsigned_and_non_numeric_dtypes():
    P = RNG.dirichlet(np.ones(3), 30)
    X = RNG.normal(size=(30, 4))
    y = RNG.integers(0, 3, 30)
    want = fastal.gradient_embedding(P, X, labels=y).dense()
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        got = fastal.gradient_embedding(P, X, labels=y.astype(dtype)).dense()
        np.testing.assert_array_equal(got, want)
    with pytest.raises(
        ValueError, match=r"^labels must be classes in \[0, 3\), got values up to 5"
    ):
        fastal.gradient_embedding(P, X, labels=np.full(30, 5, np.uint64))
    for bad in (["a"] * 30, [None] * 30):
        with pytest.raises(
            TypeError, match=r"^labels must hold class indices or a label distribution"
        ):
            fastal.gradient_embedding(P, X, labels=bad)


# -- Random, counts, and the raw k-center kernel ------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "error", "match"),
    [
        (np.array(5), ValueError, "^pool must be a pool size, or an array with a row axis"),
        (torch.tensor(5), ValueError, "^pool must be a pool size, or an array with a row axis"),
        ({"n": 10.7}, TypeError, r"^pool\['n'\] must be an integer pool size, got 10.7"),
        ({"n": True}, TypeError, r"^pool\['n'\] must be an integer pool size, got True"),
        ({"n": None}, TypeError, r"^pool\['n'\] must be an integer pool size, got None"),
    ],
)
def test_random_pool_sizes(pool, error, match):
    with pytest.raises(error, match=match):
        Random().select(pool, 2, seed=0)
    assert Random().select({"n": np.int64(10)}, 2, seed=0).indices.size == 2


def test_counts_name_what_they_count():
    with pytest.raises(ValueError, match=r"^k = 31 is larger than the rows of X \(30 points\)"):
        fastal.kmeans(RNG.normal(size=(30, 2)), 31, seed=0)
    with pytest.raises(ValueError, match=r"^b = 11 is larger than the length of s \(10 points\)"):
        fastal.iht_threshold(np.zeros(10), np.zeros(10), 11, 0.1)


def test_raw_kcenter_steps_check_the_state_they_index_with():
    """The private kernel indexed centre distances by near[i] unchecked (SIGSEGV)."""
    X = np.zeros((20, 3), np.float32)
    args = (np.zeros(3, np.int64), 0, np.zeros(3, np.int64), np.zeros(3, np.float32), True, 0, 1)
    with pytest.raises(ValueError, match=r"^near\[0\] = 1000000000 is not -1 or a centre position"):
        _ext.cpu.kcenter_steps_float32(
            (X,), np.zeros(20, np.float32), np.full(20, 10**9, np.int64), *args
        )
    centres = np.array([0, 99, 0], np.int64)
    picks = np.array([0, 1, 2], np.int64)
    with pytest.raises(ValueError, match=r"^centres\[1\] = 99 is out of range for 20 rows"):
        _ext.cpu.kcenter_steps_float32(
            (X,),
            np.zeros(20, np.float32),
            np.full(20, -1, np.int64),
            centres,
            0,
            picks,
            np.zeros(3, np.float32),
            False,
            2,
            3,
        )


# -- second fuzz audit (session 31): strategy pools, names and flags ----------------------------


def test_a_strategy_name_must_be_a_string():
    with pytest.raises(TypeError, match=r"^a strategy name must be a str, got list$"):
        strategies.get(["coreset"])  # was: unhashable type: 'list'


@pytest.mark.parametrize("strategy", [strategies.BADGE(), strategies.CoreSetGradients(),
                                      strategies.CoreSet(embedding="gradients")])  # fmt: skip
def test_gradient_strategies_name_both_probs_and_logits(strategy):
    with pytest.raises(ValueError, match=r"^pool needs one of 'probs', 'logits'; it has 'feat"):
        strategy.select({"features": RNG.normal(size=(10, 3))}, 2, seed=0)


@pytest.mark.parametrize("strategy", [strategies.CoreSet(), strategies.RobustKCenter()])
def test_k_center_strategies_name_the_features(strategy):
    bad = RNG.normal(size=(10, 3))
    bad[4, 1] = np.nan
    nan_message = r"^features contains NaN or Inf in 1 row\(s\), first at row 4"
    with pytest.raises(ValueError, match=nan_message):
        strategy.select({"features": bad}, 2, seed=0)
    huge = RNG.normal(size=(10, 3)).astype(np.float32) * np.float32(1e30)
    if isinstance(strategy, strategies.CoreSet):  # RobustKCenter works in float64
        with pytest.raises(ValueError, match=r"^distances between rows of features overflow"):
            strategy.select({"features": huge}, 2, seed=0)
    with pytest.raises(ValueError, match=r"^features must be 2-D"):
        strategy.select({"features": np.zeros(10)}, 2, seed=0)
    # a bare array, and the public functions, still say X
    with pytest.raises(ValueError, match=r"^X contains NaN or Inf"):
        fastal.kcenter_greedy(bad, 2, seed=0)
    with pytest.raises(ValueError, match=r"^X contains NaN or Inf"):
        fastal.robust_kcenter(bad, 2, seed=0)


def test_robust_kcenter_size_refusal_names_the_features():
    with pytest.raises(ValueError, match=r"^features is too large for robust_kcenter: 30 "):
        strategies.RobustKCenter(max_points=5).select({"features": RNG.normal(size=(30, 2))}, 2)


@pytest.mark.parametrize(
    "call",
    [
        lambda X, progress: fastal.kcenter_greedy(X, 2, seed=0, progress=progress),
        lambda X, progress: fastal.kcenter(X, 2, seed=0, progress=progress),
        lambda X, progress: fastal.kmeans_pp(X, 2, seed=0, progress=progress),
        lambda X, progress: fastal.kmeans(X, 2, seed=0, progress=progress),
    ],
)
def test_progress_must_be_a_bool(call):
    """A non-bool progress ('no') was read as true and showed a bar."""
    X = RNG.normal(size=(20, 3))
    for progress in ("no", 1, None):
        message = rf"^progress must be a bool \(True or False\), got {progress!r}$"
        with pytest.raises(TypeError, match=message):
            call(X, progress)
    call(X, np.False_)


# -- the CLI ------------------------------------------------------------------------------------


def _fastal(tmp_path, *argv, stdout=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "fastal", *argv], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, cwd=tmp_path, check=False)  # fmt: skip


def test_cli_float64_pool_beyond_float32_reports_and_writes(tmp_path):
    """The report measured a random pick's radius in float32: a float64 pool of 1e30 overflowed
    there, after the selection and before --out was written."""
    np.save(tmp_path / "X.npy", RNG.normal(size=(40, 4)) * 1e30)
    res = _fastal(tmp_path, "select", "--embeddings", "X.npy", "--budget", "3", "--out", "p.npy")
    assert res.returncode == 0, res.stderr
    assert "same budget picked at random" in res.stdout
    assert np.load(tmp_path / "p.npy").shape == (3,)


def test_cli_refuses_out_that_is_an_input_and_labels_without_labeled(tmp_path):
    np.save(tmp_path / "X.npy", RNG.normal(size=(40, 4)))
    np.save(tmp_path / "L.npy", RNG.normal(size=(40, 3)))
    np.save(tmp_path / "y.npy", np.array([0, 1, 2]))
    res = _fastal(tmp_path, "select", "--embeddings", "X.npy", "--budget", "3", "--out", "./X.npy")
    assert res.returncode == 1
    assert "--out ./X.npy is also an input file" in res.stderr
    assert np.load(tmp_path / "X.npy").shape == (40, 4)
    res = _fastal(tmp_path, "select", "--strategy", "sparse_approx", "--logits", "L.npy",
                  "--embeddings", "X.npy", "--labels", "y.npy", "--budget", "3")  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "fastal: --labels gives the classes of the labeled rows, in --labeled order, but no "
        "labeled set was given: pass --labeled too"
    )


def test_cli_says_which_option_an_api_name_means(tmp_path):
    np.save(tmp_path / "X3.npy", RNG.normal(size=(40, 4, 2)))
    res = _fastal(tmp_path, "select", "--embeddings", "X3.npy", "--budget", "3")
    assert res.returncode == 1
    assert res.stderr.strip().endswith("(features is the --embeddings array)"), res.stderr


def test_cli_output_into_a_closed_pipe(tmp_path):
    """`fastal select ... | head -1`: the picks are written and no BrokenPipeError traceback."""
    np.save(tmp_path / "X.npy", RNG.normal(size=(40, 4)))
    cmd = [sys.executable, "-m", "fastal", "select", "--embeddings", "X.npy", "--budget", "30",
           "--out", "p.npy"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err
    assert "BrokenPipe" not in err
    assert np.load(tmp_path / "p.npy").shape == (30,)


def test_cli_refuses_labels_a_strategy_would_ignore(tmp_path):
    np.save(tmp_path / "X.npy", RNG.normal(size=(40, 4)))
    np.save(tmp_path / "P.npy", np.full((40, 3), 1 / 3))
    np.save(tmp_path / "lab.npy", np.array([0, 1, 2]))
    np.save(tmp_path / "y.npy", np.array([0, 1, 2]))
    for argv in (
        ("--strategy", "coreset", "--embeddings", "X.npy"),
        ("--strategy", "sparse_approx", "--embeddings", "X.npy", "--probs", "P.npy"),
    ):
        res = _fastal(tmp_path, "select", *argv, "--labeled", "lab.npy", "--labels", "y.npy",
                      "--budget", "3")  # fmt: skip
        assert res.returncode == 1
        assert res.stderr.startswith("fastal: --labels is read by bilevel"), res.stderr
        assert "would ignore it" in res.stderr


def test_cli_ally_message_says_duals_are_per_labeled_row(tmp_path):
    np.save(tmp_path / "X.npy", RNG.normal(size=(40, 4)))
    res = _fastal(
        tmp_path, "select", "--strategy", "ally", "--embeddings", "X.npy", "--budget", "3"
    )
    assert res.returncode == 1
    assert "one row per labeled row for --duals, per pool point otherwise" in res.stderr


def test_float64_overflow_advice_does_not_ask_for_float64():
    X = np.array([[1e200, 0.0], [-1e200, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"overflow float64: scale X down$"):
        fastal.kcenter_greedy(X, 2, labeled=[0])


def test_cli_prints_library_warnings_as_one_line(tmp_path):
    np.save(tmp_path / "X.npy", RNG.normal(size=(40, 4)))
    np.save(tmp_path / "lab.npy", np.arange(10))
    np.save(tmp_path / "duals.npy", np.zeros(10))  # every dual 0: ALLY warns
    res = _fastal(tmp_path, "select", "--strategy", "ally", "--embeddings", "X.npy", "--labeled",
                  "lab.npy", "--duals", "duals.npy", "--budget", "3")  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("fastal: warning: ALLY: every dual"), lines


# -- word options given an array or a list -------------------------------------------------------

_X = np.random.default_rng(0).standard_normal((20, 3))
_P = np.full((20, 3), 1 / 3)
WORD_OPTIONS = {
    "rule": lambda v: fastal.iht_threshold(_X[:, 0].copy(), np.abs(_X[:, 1]), 3, 0.5, rule=v),
    "method": lambda v: fastal.gram_min_eig(_X, [0], [[1]], method=v),
    "kind": lambda v: fastal.gradient_embedding(_P, _X, kind=v),
    "first": lambda v: fastal.kmeans_pp(_X, 2, first=v),
    "zeros": lambda v: CRC(zeros=v),
    "solver": lambda v: SparseApprox(solver=v),
    "prox": lambda v: SparseApprox(prox=v),
    "embedding": lambda v: strategies.CoreSet(embedding=v),
}


@pytest.mark.parametrize("value", [["paper"], np.array(["auto", "x"]), np.zeros(2), 3])
@pytest.mark.parametrize("name", list(WORD_OPTIONS))
def test_a_word_option_given_something_else_is_refused_by_name(name, value):
    """An array raised numpy's "truth value of an array ... is ambiguous", a list (against a
    dict of rules) "unhashable type": neither named the argument."""
    with pytest.raises(ValueError, match=rf"^{name} must be '\w+'(, '\w+')* or '\w+', got "):
        WORD_OPTIONS[name](value)


def test_a_word_option_is_kept_as_a_plain_str():
    """A numpy str or a StrEnum member is taken, and stored as the str it stands for."""
    import enum

    class Prox(enum.StrEnum):
        EXACT = "exact"

    assert type(SparseApprox(prox=np.str_("exact")).prox) is str
    assert type(SparseApprox(prox=Prox.EXACT).prox) is str
    assert repr(CRC(zeros=np.str_("skip")).zeros) == "'skip'"


def test_sparse_approx_passes_other_errors_through(monkeypatch):
    """Only the non-finite IHT score is reworded as an overflow upstream."""
    from fastal.strategies import sparse_approx

    def fails(*args, **kwargs):
        raise ValueError("something else")

    monkeypatch.setattr(sparse_approx, "solve_iht", fails)
    with pytest.raises(ValueError, match=r"^something else$"):
        SparseApprox(solver="iht", temperature=2.0).select(_factored_pool(1.0), 5)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_row_finiteness_is_per_row_on_every_path(dtype):
    """bfloat16 takes torch's path (numpy has no bfloat16), the others numpy's."""
    import torch

    from fastal._torch_arrays import torch_isfinite_rows

    t = torch.ones(4, 3, dtype=getattr(torch, dtype))
    t[2, 1] = float("nan")
    assert torch_isfinite_rows(t).tolist() == [True, True, False, True]
