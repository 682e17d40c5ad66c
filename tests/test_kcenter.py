"""k-center greedy: exact agreement with the float64 reference, pruning, invariants, dtypes.

Tie rule under test (DESIGN.md, "Conventions"): the arg-max of the distance to the nearest centre
breaks ties to the lowest index. Where arithmetic is exact (float64 generic data never ties;
small-integer data is exact in every storage dtype) picks must equal the reference exactly.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import (
    CPU_BACKENDS,
    DEFAULT_PRUNE_MIN_ROW_BYTES,
    DTYPES,
    RTOL,
    assert_indices_like,
    assert_same_until_near_tie,
    assert_valid_greedy,
    backend_dtype_params,
    backend_of,
    dtype_of,
    first_centre,
    gaussian,
    half_pruned_pool,
    indices_to_backend,
    labeled_subset,
    mixture,
    reference,
    run,
    small_integers,
    stored,
    to_backend,
    to_numpy,
    upcast,
    with_duplicates,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from reference import covering_radius_ref, kcenter_greedy_ref

import fastal

CPU_PARAMS = backend_dtype_params(backends=CPU_BACKENDS)
LOW_PRECISION = ("float16", "bfloat16")


# ---------------------------------------------------------------------------------------------
# hand-worked cases


HAND_CASES = {
    # 1-D, labeled [0]: distances to 0 are 1, 2, 10 -> pick 3 (radius now max(1, 2) = 2);
    # then 2 (distance 2; radius 1).  The docstring example.
    "line": ([[0.0], [1.0], [2.0], [10.0]], 2, [0], None, [3, 2], [2.0, 1.0]),
    # 1-D with a tie: points 1, 2, 3 are all at 5 from the labeled 0; the lowest index, 1, wins.
    # Point 3 duplicates point 1, so it drops to 0; point 2 stays at min(5, 10) = 5: radius 5.
    # Next 2 (radius: only 3 is left, at 0), then the duplicate 3 itself (nothing left: 0).
    "tie-and-duplicate": ([[0.0], [5.0], [-5.0], [5.0]], 3, [0], None, [1, 2, 3], [5.0, 0.0, 0.0]),
    # Unit square plus its centre, no labeled set, first centre 0 (passed as `first`).
    # Squared distances to (0,0): 1, 1, 2, 0.5 -> radius sqrt 2, pick 3 = (1,1).
    # Then 1 and 2 tie at 1 (centre point stays at 0.5): radius 1, pick 1 (lowest index);
    # radius still 1 (point 2), pick 2; radius sqrt(0.5) (the centre point); pick 4; radius 0.
    "square": (
        [[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5]],
        5,
        None,
        0,
        [0, 3, 1, 2, 4],
        [np.sqrt(2), 1.0, 1.0, np.sqrt(0.5), 0.0],
    ),
    # Duplicated rows, labeled 2 = (3,4). Squared distances: 0 and 1 -> 25, 3 -> 0 (a copy of the
    # labeled point), 4 = (6,8) -> 25. Three-way tie at 25: pick 0. Then 1 drops to 0, 4 stays 25:
    # radius 5, pick 4; radius 0. Then 1 and 3 tie at 0: pick 1, then 3; radius stays 0.
    "duplicates": (
        [[0, 0], [0, 0], [3, 4], [3, 4], [6, 8]],
        4,
        [2],
        None,
        [0, 4, 1, 3],
        [5.0, 0.0, 0.0, 0.0],
    ),
    # Two points per cluster at 0, 100, 200 on a line, labeled 0. Distances 1, 100, 101, 200, 201:
    # pick 5 (201). Then 4 -> 1, 3 -> min(101, 100) = 100, 2 -> min(100, 101) = 100: radius 100,
    # 2 and 3 tie, pick 2; 3 drops to 1. Radius 1 with 1, 3, 4 all at 1: picks 1, 3, 4 in index
    # order, radius 1, 1, 0. (Rows 1, 4 are pruned when far centres arrive: same picks.)
    "clusters": (
        [[0.0], [1.0], [100.0], [101.0], [200.0], [201.0]],
        5,
        [0],
        None,
        [5, 2, 1, 3, 4],
        [100.0, 1.0, 1.0, 1.0, 0.0],
    ),
    # Every point identical: all distances 0 from the start, so picks go in index order,
    # skipping the labeled 4.
    "all-equal": (np.zeros((6, 3)), 5, [4], None, [0, 1, 2, 3, 5], [0.0] * 5),
    # A single point, no labeled set: it is the only possible pick; nothing is left: radius 0.
    "single": ([[7.0, -1.0]], 1, None, 0, [0], [0.0]),
    # Everything labeled but one: that one is picked.
    "last-one": ([[0.0], [1.0], [2.0]], 1, [2, 0], None, [1], [0.0]),
}


@pytest.mark.parametrize("name", list(HAND_CASES))
def test_reference_on_hand_worked_cases(name):
    X, budget, labeled, first, picks, radius = HAND_CASES[name]
    got_picks, got_radius = kcenter_greedy_ref(np.asarray(X, float), budget, labeled, first)
    assert_array_equal(got_picks, picks)
    assert_allclose(got_radius, radius, rtol=1e-15)


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize(("backend", "dtype"), CPU_PARAMS)
@pytest.mark.parametrize("name", list(HAND_CASES))
def test_hand_worked_cases(name, backend, dtype, prune):
    X, budget, labeled, first, picks, radius = HAND_CASES[name]
    X = np.asarray(X, dtype=np.float64)  # every value above is exact in every storage dtype
    seed = None
    if first is not None:  # find a seed whose first centre is `first`
        seed = next(s for s in range(1000) if first_centre(X.shape[0], s) == first)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    got_picks, got_radius = run(
        to_backend(X, backend, dtype), budget, labeled=lab, seed=seed, prune=prune
    )
    assert_array_equal(got_picks, picks)
    assert_allclose(got_radius, radius, rtol=RTOL[dtype])


# ---------------------------------------------------------------------------------------------
# random data, exact float64 (and float32) agreement

# (n, d, number labeled, budget): n from 1 to a few thousand, d from 1 to a few hundred.
RANDOM_CASES = [
    (1, 1, 0, 1),
    (2, 1, 0, 2),
    (2, 3, 1, 1),
    (5, 2, 0, 5),
    (17, 1, 3, 14),
    (33, 7, 0, 33),
    (64, 16, 5, 59),
    (100, 17, 0, 40),
    (257, 3, 10, 60),
    (500, 64, 1, 50),
    (1000, 9, 0, 80),
    (1000, 300, 20, 30),
    (3000, 33, 0, 50),
    (3000, 128, 200, 40),
]
CASE_IDS = [f"n{n}-d{d}-L{k}-b{b}" for n, d, k, b in RANDOM_CASES]


@functools.cache
def random_case(n, d, n_labeled, budget, seed, dtype="float64"):
    X = stored(gaussian(n, d, seed), dtype) if dtype != "float64" else gaussian(n, d, seed)
    labeled = labeled_subset(n, n_labeled, seed)
    ref_picks, ref_radius = reference(X, budget, labeled, seed)
    return X, labeled, ref_picks, ref_radius


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(("n", "d", "n_labeled", "budget"), RANDOM_CASES, ids=CASE_IDS)
def test_random_float64_matches_reference_exactly(n, d, n_labeled, budget, backend, prune):
    X, labeled, ref_picks, ref_radius = random_case(n, d, n_labeled, budget, 1)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    picks, radius = run(to_backend(X, backend), budget, labeled=lab, seed=1, prune=prune)
    assert_array_equal(picks, ref_picks)
    assert_allclose(radius, ref_radius, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(("n", "d", "n_labeled", "budget"), RANDOM_CASES, ids=CASE_IDS)
def test_random_float32_matches_reference(n, d, n_labeled, budget, backend, prune):
    """Generic float32 data: the reference sees the stored float32 values; accumulation is float32,
    so the picks equal the reference unless a step is a near-tie at float32 resolution."""
    X, labeled, ref_picks, ref_radius = random_case(n, d, n_labeled, budget, 2, "float32")
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    picks, radius = run(to_backend(X, backend, "float32"), budget, labeled=lab, seed=2, prune=prune)
    assert_same_until_near_tie(X, picks, ref_picks, labeled, rtol=1e-5)
    if np.array_equal(picks, ref_picks):
        assert_allclose(radius, ref_radius, rtol=RTOL["float32"], atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_first_centre_comes_from_the_seed(seed):
    X = gaussian(50, 4, 7)
    picks = to_numpy(fastal.kcenter_greedy(X, 3, seed=seed))
    assert picks[0] == first_centre(50, seed)
    gen_picks = to_numpy(fastal.kcenter_greedy(X, 3, seed=np.random.default_rng(seed)))
    assert_array_equal(gen_picks, picks)
    assert_array_equal(picks, reference(X, 3, None, seed)[0])


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize(("backend", "dtype"), CPU_PARAMS)
@pytest.mark.parametrize(
    ("n", "d", "n_labeled"),
    # d = 64, 100, 131: every SIMD loop of the row reductions (64-lane AVX-512 and its 16-lane and
    # bfloat16 32-block remainders, 32-lane AVX2) and the scalar tail
    [
        (40, 2, 0),
        (40, 2, 3),
        (300, 5, 0),
        (300, 40, 7),
        (1500, 3, 20),
        (200, 64, 0),
        (200, 100, 5),
        (150, 131, 0),
    ],
)
def test_integer_data_exact_in_every_dtype(n, d, n_labeled, backend, dtype, prune):
    """Small-integer coordinates: every dtype computes exactly, so ties are genuine and the
    lowest-index rule must reproduce the reference pick for pick (many ties and duplicates)."""
    X = small_integers(n, d, seed=n + d)
    labeled = labeled_subset(n, n_labeled, seed=3)
    budget = min(n - n_labeled, 60)
    ref_picks, ref_radius = reference(X, budget, labeled, 5)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    picks, radius = run(to_backend(X, backend, dtype), budget, labeled=lab, seed=5, prune=prune)
    assert_array_equal(picks, ref_picks)
    assert_allclose(radius, ref_radius, rtol=RTOL[dtype])


# ---------------------------------------------------------------------------------------------
# pruning


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("prune", [True, False])
def test_pools_out_of_cache_exact(dtype, prune):
    """Pools of 8 MiB or more take the prefetching loops (cpu/rows.h: 16-bit rows in every step,
    every dtype in pruned steps); small-integer data keeps every dtype exact, so the picks must
    equal the float64 reference's."""
    n, d = 70_000, 64  # 8.5 MiB of float16
    X = small_integers(n, d, seed=11)
    X[n // 2 :] = X[: n - n // 2]  # duplicates: ties that only the lowest-index rule resolves
    labeled = np.arange(0, n, 9_000)
    ref_picks, ref_radius = reference(X, 25, labeled, 0)
    picks, radius = run(to_backend(X, "torch-cpu", dtype), 25, labeled=labeled, seed=0, prune=prune)
    assert_array_equal(picks, ref_picks)
    assert_allclose(radius, ref_radius, rtol=RTOL[dtype])


@pytest.mark.parametrize(("backend", "dtype"), CPU_PARAMS)
@pytest.mark.parametrize("n_labeled", [0, 5])
def test_pruned_picks_identical_to_unpruned(backend, dtype, n_labeled):
    X = with_duplicates(mixture(3000, 12, 30, seed=4), np.random.default_rng(4))
    labeled = labeled_subset(3000, n_labeled, seed=4)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    Xb = to_backend(X, backend, dtype)
    pruned = fastal.kcenter(Xb, 150, labeled=lab, seed=9, prune=True)
    full = fastal.kcenter(Xb, 150, labeled=lab, seed=9, prune=False)
    assert_array_equal(to_numpy(pruned.indices), to_numpy(full.indices))
    assert_array_equal(to_numpy(pruned.radius), to_numpy(full.radius))  # bit for bit
    assert pruned.initial_radius == full.initial_radius
    assert full.rows_read == full.rows_unpruned
    assert pruned.rows_unpruned == full.rows_unpruned
    assert pruned.rows_read < full.rows_read


@pytest.mark.parametrize("dtype", DTYPES)
def test_pruning_reads_3x_fewer_rows_on_clustered_data(dtype):
    X = to_backend(mixture(10_000, 16, 50, seed=6), "torch-cpu", dtype)
    res = fastal.kcenter(X, 200, seed=0)
    assert res.rows_unpruned == sum(10_000 - t for t in range(1, 201))
    assert 3 * res.rows_read <= res.rows_unpruned, (res.rows_read, res.rows_unpruned)
    assert res.diagnostics["rows_read_fraction"] == pytest.approx(res.rows_read / res.rows_unpruned)


def test_rows_read_counts_the_centre_to_centre_distances():
    """A pruned step reads the pos earlier centres (labeled ones included) for d(c_new, a): those
    rows count. 50 tight, far-apart clusters of 20 with one labeled row each: a pass reads about
    the new centre's cluster only, so the count is dominated by sum(pos) = 9950 over 100 steps."""
    rng = np.random.default_rng(2)
    X = np.repeat(rng.normal(size=(50, 8)) * 100, 20, axis=0) + rng.normal(size=(1000, 8)) * 0.01
    labeled = np.arange(0, 1000, 20)
    res = fastal.kcenter(X, 100, labeled=labeled, seed=0)
    centre_rows = sum(50 + t for t in range(100))
    assert centre_rows <= res.rows_read < centre_rows + 100 * 40, res.rows_read
    full = fastal.kcenter(X, 100, labeled=labeled, seed=0, prune=False)
    assert_array_equal(res.indices, full.indices)


def test_a_chunk_that_the_test_mostly_keeps_is_read_whole():
    """A pruned step reads a chunk of rows whole, in order, when its test keeps at least
    kReadWholeShare (35 %) of them. Half the pool is tight clusters around far labeled rows (the
    test prunes them at every step), half a Gaussian blob that holds the picks (always kept),
    shuffled: each chunk keeps about half its rows, so every row is read, plus the earlier centres
    of the test, with the unpruned picks."""
    X, labeled = half_pruned_pool(150)
    res = fastal.kcenter(X, 50, labeled=labeled, seed=0)
    full = fastal.kcenter(X, 50, labeled=labeled, seed=0, prune=False)
    assert res.diagnostics["pruned"] is True
    assert_array_equal(res.indices, full.indices)
    assert_array_equal(res.radius, full.radius)
    assert res.rows_read == full.rows_read + sum(10 + t for t in range(50))


@pytest.mark.parametrize("dtype", DTYPES)
def test_pruning_steps_aside_when_the_centres_are_many(dtype):
    """With more earlier centres than a fifth of the pool, the centre-to-centre distances would
    cost more than pruning saves (19,000 labeled rows, 1,000 unlabeled: 18x slower per step
    before): those steps read every row, as unpruned ones do, and the picks are the same."""
    X = to_backend(mixture(3000, 8, 30, seed=5), "torch-cpu", dtype)
    labeled = np.arange(2500)
    res = fastal.kcenter(X, 100, labeled=labeled, seed=0)
    full = fastal.kcenter(X, 100, labeled=labeled, seed=0, prune=False)
    assert_array_equal(res.indices, full.indices)
    assert res.rows_read == full.rows_read == res.rows_unpruned
    # a labeled set small enough: the early steps prune (5 pos <= n), the later ones do not
    mid = fastal.kcenter(X, 400, labeled=np.arange(300), seed=0)
    mid_full = fastal.kcenter(X, 400, labeled=np.arange(300), seed=0, prune=False)
    assert_array_equal(mid.indices, mid_full.indices)
    assert mid.rows_read != mid_full.rows_read


@pytest.mark.parametrize("dtype", DTYPES)
def test_pruning_steps_aside_for_short_rows_on_the_cpu(dtype, monkeypatch):
    """By default the CPU prunes only rows of at least DEFAULT_PRUNE_MIN_ROW_BYTES: shorter rows
    cost less to read than the test that skips them. They are read as unpruned ones are, with the
    same picks, and the diagnostics say so; a row of exactly that many bytes prunes."""
    monkeypatch.setattr(fastal.ops, "_PRUNE_MIN_ROW_BYTES", DEFAULT_PRUNE_MIN_ROW_BYTES)
    itemsize = 8 if dtype == "float64" else 4 if dtype == "float32" else 2
    wide = DEFAULT_PRUNE_MIN_ROW_BYTES // itemsize
    for d, prunes in ((wide - 1, False), (wide, True)):
        X = to_backend(mixture(3000, d, 30, seed=7), "torch-cpu", dtype)
        res = fastal.kcenter(X, 100, seed=0)
        full = fastal.kcenter(X, 100, seed=0, prune=False)
        assert_array_equal(to_numpy(res.indices), to_numpy(full.indices))
        assert res.diagnostics["pruned"] is prunes
        assert full.diagnostics["pruned"] is False
        if prunes:
            assert res.rows_read < res.rows_unpruned
        else:
            assert res.rows_read == full.rows_read == res.rows_unpruned


def test_pruned_matches_unpruned_with_progress_chunks(capsys):
    """progress=True runs the steps in chunks; the picks must not change."""
    X = mixture(2000, 8, 20, seed=8)
    a = fastal.kcenter(X, 250, seed=3, progress=True)
    b = fastal.kcenter(X, 250, seed=3, progress=False, prune=False)
    capsys.readouterr()
    assert_array_equal(a.indices, b.indices)
    assert_array_equal(a.radius, b.radius)


def test_progress_covers_the_labeled_set(capsys):
    """The distances to a large labeled set (most of the time at 1M rows with 10k labeled) ran
    without a bar; in row ranges now, with the same picks."""
    X = mixture(5000, 8, 20, seed=9)
    labeled = np.arange(0, 5000, 7)
    a = fastal.kcenter(X, 30, labeled=labeled, progress=True)
    assert f"distances to {labeled.size} labeled rows" in capsys.readouterr().err
    b = fastal.kcenter(X, 30, labeled=labeled)
    assert_array_equal(a.indices, b.indices)
    assert_array_equal(a.radius, b.radius)


# ---------------------------------------------------------------------------------------------
# invariants


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize(("backend", "dtype"), CPU_PARAMS)
@pytest.mark.parametrize("n_labeled", [0, 1, 25])
def test_invariants(backend, dtype, n_labeled, prune):
    n, budget = 400, 120
    X64 = gaussian(n, 6, seed=10)
    labeled = labeled_subset(n, n_labeled, seed=10)
    Xb = to_backend(X64, backend, dtype)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    res = fastal.kcenter(Xb, budget, labeled=lab, seed=0, prune=prune)
    picks, radius = res.indices, res.radius

    assert_indices_like(picks, Xb, budget)
    assert backend_of(radius) == backend_of(Xb)
    assert dtype_of(radius) == ("float64" if dtype == "float64" else "float32")
    p = to_numpy(picks)
    assert len(set(p.tolist())) == budget
    assert ((p >= 0) & (p < n)).all()
    if labeled is not None:
        assert not np.isin(p, labeled).any()
    r = to_numpy(radius)
    assert (np.diff(r) <= 0).all(), "covering radius increased"
    assert r[0] <= res.initial_radius
    # the radius reported after each pick is the covering radius of labeled + picks so far
    Xs = upcast(Xb)
    lab_list = [] if labeled is None else list(labeled)
    for t in (0, budget // 2, budget - 1):
        expected = covering_radius_ref(Xs, lab_list + list(p[: t + 1]))
        assert_allclose(r[t], expected, rtol=RTOL[dtype], atol=1e-6)
    if labeled is None:
        assert res.initial_radius == np.inf
    else:
        assert_allclose(res.initial_radius, covering_radius_ref(Xs, labeled), rtol=RTOL[dtype])
    diag = res.diagnostics
    assert diag["final_radius"] == pytest.approx(float(r[-1]))
    assert diag["initial_radius"] == res.initial_radius


@pytest.mark.parametrize(("backend", "dtype"), CPU_PARAMS)
@pytest.mark.parametrize("labeled", [None, [1, 3]])
def test_budget_zero_returns_empty(backend, dtype, labeled):
    Xb = to_backend(gaussian(10, 3, seed=0), backend, dtype)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    picks = fastal.kcenter_greedy(Xb, 0, labeled=lab, seed=0)
    assert_indices_like(picks, Xb, 0)
    picks, radius = fastal.kcenter_greedy(Xb, 0, labeled=lab, return_radius=True)
    assert_indices_like(picks, Xb, 0)
    assert tuple(radius.shape) == (0,)


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize(("backend", "dtype"), CPU_PARAMS)
@pytest.mark.parametrize("labeled", [None, [0], [5, 2, 9]])
def test_budget_equal_to_the_unlabeled_pool(backend, dtype, labeled, prune):
    n = 50
    X = gaussian(n, 4, seed=11)
    Xb = to_backend(X, backend, dtype)
    budget = n - (0 if labeled is None else len(labeled))
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    picks, radius = run(Xb, budget, labeled=lab, seed=2, prune=prune)
    rest = np.setdiff1d(np.arange(n), [] if labeled is None else labeled)
    assert_array_equal(np.sort(picks), rest)
    assert radius[-1] == 0
    if dtype == "float64":
        assert_array_equal(picks, reference(X, budget, labeled, 2)[0])


def test_all_labeled_budget_zero():
    X = gaussian(4, 2, seed=0)
    res = fastal.kcenter(X, 0, labeled=[0, 1, 2, 3])
    assert res.indices.shape == (0,)
    assert res.initial_radius == 0.0
    assert res.diagnostics["final_radius"] == 0.0


# ---------------------------------------------------------------------------------------------
# float16 / bfloat16 storage


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize(("backend", "dtype"), backend_dtype_params(LOW_PRECISION, CPU_BACKENDS))
@pytest.mark.parametrize(("n", "d", "n_labeled", "budget"), [(800, 24, 0, 80), (2000, 100, 10, 40)])
def test_low_precision_picks_are_valid_greedy_choices(
    n, d, n_labeled, budget, backend, dtype, prune
):
    X = gaussian(n, d, seed=21)
    labeled = labeled_subset(n, n_labeled, seed=21)
    Xb = to_backend(X, backend, dtype)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    picks, radius = run(Xb, budget, labeled=lab, seed=4, prune=prune)
    Xs = upcast(Xb)  # the stored (rounded) values: what the kernel actually computes with
    if labeled is None:
        assert picks[0] == first_centre(n, 4)
    assert_valid_greedy(Xs, picks, labeled, rtol=1e-4)
    lab_list = [] if labeled is None else list(labeled)
    expected = [covering_radius_ref(Xs, lab_list + list(picks[: t + 1])) for t in (0, budget - 1)]
    assert_allclose(radius[[0, budget - 1]], expected, rtol=RTOL[dtype])

    # the float32 kernel on the same (upcast) values picks the same, up to near-ties
    p32, _ = run(to_backend(Xs, backend, "float32"), budget, labeled=lab, seed=4, prune=prune)
    assert_same_until_near_tie(Xs, picks, p32, labeled, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# hypothesis: exact float64 agreement on exactly representable data


@st.composite
def kcenter_problems(draw):
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 20))  # scalar tail, 4-wide and 16-wide vector paths
    # multiples of 1/4 in [-16, 16]: every distance is computed exactly, so exact agreement
    # (ties included) is a fair demand whatever the summation order
    cells = draw(st.lists(st.integers(-64, 64), min_size=n * d, max_size=n * d))
    X = np.array(cells, dtype=np.float64).reshape(n, d) / 4
    labeled = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    budget = draw(st.integers(0, n - len(labeled)))
    seed = draw(st.integers(0, 2**32 - 1))
    return X, labeled, budget, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=kcenter_problems(), prune=st.booleans(), backend=st.sampled_from(CPU_BACKENDS))
def test_property_float64_matches_reference(problem, prune, backend):
    X, labeled, budget, seed = problem
    lab = labeled or None
    picks, radius = run(to_backend(X, backend), budget, labeled=lab, seed=seed, prune=prune)
    ref_picks, ref_radius = reference(X, budget, lab, seed)
    assert_array_equal(picks, ref_picks)
    assert_allclose(radius, ref_radius, rtol=1e-15)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 300),
    d=st.integers(1, 40),
    k=st.integers(1, 10),
    data_seed=st.integers(0, 2**31),
    dtype=st.sampled_from(DTYPES),
)
def test_property_pruned_equals_unpruned(n, d, k, data_seed, dtype):
    X = to_backend(mixture(n, d, k, seed=data_seed), "torch-cpu", dtype)
    budget = min(n - 1, 30)
    a = fastal.kcenter(X, budget, seed=data_seed, prune=True)
    b = fastal.kcenter(X, budget, seed=data_seed, prune=False)
    assert_array_equal(to_numpy(a.indices), to_numpy(b.indices))
    assert_array_equal(to_numpy(a.radius), to_numpy(b.radius))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pruned_factored_kcenter_on_a_line_of_large_gradients(seed, dtype):
    """Gradients on a line, g_i = (a0 + t_i da) (x) h0, |g|^2 ~ 1: collinear rows make the
    triangle test tight (a row near the midpoint of its centre and the new one sits at the
    pruning boundary), and the factored distance's absolute rounding (~(C + dh) u |g|^2) is a few
    % of these squared distances (1e-4 .. 1e-2). The pruned picks must equal the unpruned ones
    (rows.h, FactoredRows::Pruner's e5 (s_i + s_a + s_c) margin)."""
    rng = np.random.default_rng(seed)
    n, C, dh = 5000, 16, 112  # (C + dh) * 4 bytes >= 256: the CPU prunes
    a0 = rng.normal(size=C)
    a0 /= np.linalg.norm(a0)
    da = rng.normal(size=C)
    da /= np.linalg.norm(da)
    h0 = rng.normal(size=dh)
    h0 /= np.linalg.norm(h0)
    t = rng.uniform(-0.1, 0.1, n)
    A = (a0[None] + t[:, None] * da[None]).astype(dtype)
    H = np.repeat(h0[None], n, 0).astype(dtype)
    emb = fastal.GradientEmbedding(A, H)
    a = fastal.kcenter(emb, 12, seed=seed, prune=True)
    b = fastal.kcenter(emb, 12, seed=seed, prune=False)
    assert a.diagnostics["pruned"]
    assert_array_equal(a.indices, b.indices)
    assert_array_equal(a.radius, b.radius)
