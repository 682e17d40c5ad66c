"""CUDA kernels for factored pools (GradientEmbedding) and k-means++ against the CPU backend.

Every test here is marked ``cuda`` and skipped without a GPU or without ``fastal._cuda``. The CPU
copy of a GPU embedding holds the same stored factors, and both backends accumulate in float32, so:

- on small-integer factors every distance is exact on both (no rounding anywhere): k-center picks,
  min-distance results and k-means++ picks must be identical to each other and to the float64
  references, ties and zero-total draws included;
- on generic data the two backends sum in different orders: k-center picks must still be
  identical on well-separated data, k-means++ picks on float32 for the first 20 picks, and the
  picks must always be valid (distinct, in range, never labeled).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    AVAILABLE_CUDA_BACKENDS,
    CUDA_BACKENDS,
    GPU_PARAMS,
    assert_indices_like,
    assert_pp_same_until_near_tie,
    backend_of,
    copies_pool,
    dtype_of,
    gaussian,
    indices_to_backend,
    labeled_subset,
    mixture,
    small_integers,
    to_backend,
    to_numpy,
    upcast,
)
from numpy.testing import assert_allclose, assert_array_equal
from reference import kcenter_greedy_ref, kmeans_pp_ref, min_distance_ref, softmax_ref

import fastal
from fastal import strategies

pytestmark = pytest.mark.cuda


# ---------------------------------------------------------------------------------------------
# data


def integer_factors(n: int, C: int, dh: int, seed: int, high: int = 2):
    """Integer factors in [-high, high]: exact in every storage dtype, and every factored distance
    (sums of products far below 2^24) is exact in float32 accumulation."""
    rng = np.random.default_rng(seed)
    A = rng.integers(-high, high + 1, size=(n, C)).astype(np.float64)
    H = rng.integers(-high, high + 1, size=(n, dh)).astype(np.float64)
    return A, H


def separated_factors(n: int, C: int, dh: int, clusters: int, seed: int):
    """Cross-entropy gradients of a well-separated pool: features from a Gaussian mixture,
    A = softmax(logits) - onehot(argmax)."""
    rng = np.random.default_rng(seed)
    p = softmax_ref(rng.normal(size=(n, C)) * 2.0)
    A = p.copy()
    A[np.arange(n), p.argmax(1)] -= 1.0
    return A, mixture(n, dh, clusters, seed=seed, spread=0.3)


def embedding(A, H, backend: str, dtype: str):
    return fastal.GradientEmbedding(to_backend(A, backend, dtype), to_backend(H, backend, dtype))


def on_cpu(emb, dtype: str):
    """The same stored factors as a torch-CPU embedding of the same dtype."""
    return fastal.GradientEmbedding(
        to_backend(upcast(emb.A), "torch-cpu", dtype), to_backend(upcast(emb.H), "torch-cpu", dtype)
    )


def exact_dense(emb) -> np.ndarray:
    """The materialised gradient matrix of the stored factors in float64 (products exact)."""
    A, H = upcast(emb.A), upcast(emb.H)
    return (A[:, :, None] * H[:, None, :]).reshape(A.shape[0], -1)


def first_pick(n: int, seed) -> int:
    return int(np.random.default_rng(seed).integers(n))


def lab_arg(labeled, backend: str):
    return None if labeled is None else indices_to_backend(labeled, backend)


def assert_valid(picks: np.ndarray, n: int, k: int, labeled) -> None:
    assert picks.shape == (k,)
    assert ((picks >= 0) & (picks < n)).all(), picks
    assert np.unique(picks).size == k, "picks are not distinct"
    if labeled is not None:
        assert not np.isin(picks, labeled).any(), "a labeled row was picked"


def assert_same_picks(got, expected, G64: np.ndarray, labeled) -> None:
    """Identical picks; on failure, report the float64 gap of the first differing step (a genuine
    near-tie there would explain it, anything else is a bug)."""
    got, expected = np.asarray(got), np.asarray(expected)
    if np.array_equal(got, expected):
        return
    t = int(np.flatnonzero(got != expected)[0])
    centres = [] if labeled is None else list(labeled)
    centres += list(expected[:t])
    d2 = np.full(G64.shape[0], np.inf)
    for c in centres:
        d2 = np.minimum(d2, np.sum((G64 - G64[c]) ** 2, axis=1))
    d2[centres] = -np.inf
    top = np.sort(d2)[::-1][:2]
    pytest.fail(
        f"picks differ at step {t}: {got[t]} vs {expected[t]}; float64 squared distances of the "
        f"two farthest rows there: {top[0]:.9g}, {top[1]:.9g}"
    )


# ---------------------------------------------------------------------------------------------
# k-center greedy


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("n_labeled", [0, 7])
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_kcenter_integer_factors_equal_cpu_and_reference(backend, dtype, n_labeled, prune):
    n, budget = 700, 80
    A, H = integer_factors(n, 4, 6, seed=1)
    emb = embedding(A, H, backend, dtype)
    labeled = labeled_subset(n, n_labeled, seed=3)
    res = fastal.kcenter(emb, budget, labeled=lab_arg(labeled, backend), seed=5, prune=prune)
    assert_indices_like(res.indices, emb.A, budget)
    assert backend_of(res.radius) == backend
    assert dtype_of(res.radius) == "float32"
    cpu = fastal.kcenter(on_cpu(emb, dtype), budget, labeled=labeled, seed=5, prune=prune)
    first = first_pick(n, 5) if labeled is None else None
    ref_picks, ref_radius = kcenter_greedy_ref(exact_dense(emb), budget, labeled, first)
    assert_array_equal(to_numpy(res.indices), ref_picks)
    assert_array_equal(to_numpy(cpu.indices), ref_picks)
    assert_allclose(to_numpy(res.radius), ref_radius, rtol=1e-6)
    if labeled is not None:
        assert res.initial_radius == pytest.approx(cpu.initial_radius, rel=1e-6)
    if not prune:
        assert res.rows_read == res.rows_unpruned


#: (C, dh): lane groups of 16 and 32 threads per row (C = 1000, dh = 512, the design's shape),
#: factors that are not whole 16-byte vectors (1001, 515), and a centre too large for shared
#: memory (C + dh > 10,240 floats), read from global memory
WIDE_FACTORS = [(1000, 512), (1001, 515), (4, 10_300)]


@pytest.mark.parametrize(("C", "dh"), WIDE_FACTORS)
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_wide_factors_equal_cpu_exactly(backend, dtype, C, dh):
    n, budget = 400, 30
    A, H = integer_factors(n, C, dh, seed=C + dh, high=1)
    emb = embedding(A, H, backend, dtype)
    cpu_emb = on_cpu(emb, dtype)
    labeled = labeled_subset(n, 3, seed=C)
    lab = lab_arg(labeled, backend)
    cpu = fastal.kcenter(cpu_emb, budget, labeled=labeled, seed=5)
    for prune in (True, False):
        res = fastal.kcenter(emb, budget, labeled=lab, seed=5, prune=prune)
        assert_array_equal(to_numpy(res.indices), to_numpy(cpu.indices))
        assert_allclose(to_numpy(res.radius), to_numpy(cpu.radius), rtol=1e-6)
    assert_array_equal(pp(emb, 20, seed=6, labeled=lab), pp(cpu_emb, 20, seed=6, labeled=labeled))
    rows, rest = np.arange(300), np.arange(300, n)
    dist, index = fastal.min_distance(
        emb.subset(indices_to_backend(rows, backend)), emb.subset(indices_to_backend(rest, backend))
    )
    cpu_dist, cpu_index = fastal.min_distance(
        cpu_emb.subset(indices_to_backend(rows, "torch-cpu")),
        cpu_emb.subset(indices_to_backend(rest, "torch-cpu")),
    )
    assert_array_equal(to_numpy(index), to_numpy(cpu_index))
    assert_allclose(to_numpy(dist), to_numpy(cpu_dist), rtol=1e-6)


@pytest.mark.parametrize("n_labeled", [0, 5])
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_kcenter_well_separated_equals_cpu(backend, dtype, n_labeled):
    n, budget = 4000, 24
    A, H = separated_factors(n, 10, 48, clusters=budget + n_labeled, seed=11)
    emb = embedding(A, H, backend, dtype)
    labeled = labeled_subset(n, n_labeled, seed=4)
    res = fastal.kcenter(emb, budget, labeled=lab_arg(labeled, backend), seed=2)
    cpu = fastal.kcenter(on_cpu(emb, dtype), budget, labeled=labeled, seed=2)
    assert_same_picks(to_numpy(res.indices), to_numpy(cpu.indices), exact_dense(emb), labeled)
    # the factored form errs relative to the norms: radii agree to float32 accumulation of C + dh
    assert_allclose(to_numpy(res.radius), to_numpy(cpu.radius), rtol=1e-4)


@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_kcenter_pruning_is_exact_on_gpu(backend, dtype):
    A, H = separated_factors(30_000, 10, 32, clusters=40, seed=12)
    emb = embedding(A, H, backend, dtype)
    pruned = fastal.kcenter(emb, 150, seed=1, prune=True)
    full = fastal.kcenter(emb, 150, seed=1, prune=False)
    assert_array_equal(to_numpy(pruned.indices), to_numpy(full.indices))
    assert_array_equal(to_numpy(pruned.radius), to_numpy(full.radius))
    assert full.rows_read == full.rows_unpruned
    assert pruned.rows_read < full.rows_read


@pytest.mark.parametrize("C", [10, 16])
@pytest.mark.parametrize("n_labeled", [7, 12])
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_copies_of_labeled_rows_are_at_zero(backend, dtype, n_labeled, C):
    """Near a copy the factored expansion is rounding noise, not 0: without the recompute of
    factored.cuh, k-center picked copies of labeled rows and k-means++ drew them (the CPU had the
    same bug in its register blocks: tests/test_badge_egl.py). C = 16 reads 16-bit centres in
    their plane layout."""
    copies = 40
    probs, feats, n_big = copies_pool(C, 64, n_labeled, copies, seed=3)
    pool = {"probs": to_backend(probs, backend, "float32"),
            "features": to_backend(feats, backend, dtype)}  # fmt: skip
    emb = fastal.gradient_embedding(pool["probs"], pool["features"])
    lab = indices_to_backend(np.arange(0, n_big, copies + 1), backend)
    dist, _ = fastal.min_distance(emb, emb.subset(lab))
    assert not to_numpy(dist)[:n_big].any()
    for prune in (True, False):
        picks = to_numpy(fastal.kcenter(emb, 30, labeled=lab, prune=prune).indices)
        assert (picks >= n_big).all(), picks
    assert (pp(emb, 100, labeled=lab, seed=1) >= n_big).all()
    picks = to_numpy(strategies.CoreSetGradients().select(pool, 30, lab).indices)
    assert (picks >= n_big).all(), picks


@pytest.mark.parametrize("C", [10, 16])
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_copies_of_picked_rows_are_not_picked(backend, dtype, C):
    """Within one selection too: once a row is a centre its copies are at 0 (the fused pass of
    k-center, pruned or not, and the k-means++ pass), so no two picks are copies."""
    copies, distinct = 30, 12
    probs, feats, n_big = copies_pool(C, 64, distinct, copies, seed=4)
    emb = fastal.gradient_embedding(to_backend(probs, backend, "float32"),
                                    to_backend(feats, backend, dtype))  # fmt: skip
    source = lambda picks: picks[picks < n_big] // (copies + 1)  # noqa: E731
    for prune in (True, False):
        picks = to_numpy(fastal.kcenter(emb, 40, seed=0, prune=prune).indices)
        assert_array_equal(np.sort(source(picks)), np.arange(distinct))
    drawn = source(pp(emb, 200, seed=2))
    assert np.unique(drawn).size == drawn.size, drawn


# ---------------------------------------------------------------------------------------------
# min distance


@pytest.mark.parametrize(("n", "m"), [(1, 1), (17, 3000), (2049, 300), (70_000, 100)])
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_min_distance_integer_factors_exact(backend, dtype, n, m):
    A, H = integer_factors(n + m, 5, 7, seed=n + m)
    X = embedding(A[:n], H[:n], backend, dtype)
    Y = embedding(A[n:], H[n:], backend, dtype)
    dist, index = fastal.min_distance(X, Y)
    assert backend_of(dist) == backend
    assert dtype_of(dist) == "float32"
    assert_indices_like(index, X.A, n)
    cpu_dist, cpu_index = fastal.min_distance(on_cpu(X, dtype), on_cpu(Y, dtype))
    ref_dist, ref_index = min_distance_ref(exact_dense(X), exact_dense(Y))
    assert_array_equal(to_numpy(index), ref_index)
    assert_array_equal(to_numpy(index), to_numpy(cpu_index))
    assert_allclose(to_numpy(dist), ref_dist, rtol=1e-6)
    assert_allclose(to_numpy(dist), to_numpy(cpu_dist), rtol=1e-6)


#: tolerance of factored squared distances, in units of the largest squared norm (cancellation)
FACTORED_ATOL = {"float32": 2e-5, "float16": 2e-5, "bfloat16": 2e-5}


@pytest.mark.parametrize(("n", "m"), [(33, 2500), (3000, 257)])
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_min_distance_generic_agrees_with_cpu(backend, dtype, n, m):
    rng = np.random.default_rng(n)
    logits, feats = rng.normal(size=(n + m, 8)) * 2.0, rng.normal(size=(n + m, 40))
    emb = fastal.gradient_embedding(
        to_backend(logits, backend, "float32"), to_backend(feats, backend, dtype), kind="logits"
    )
    X = emb.subset(indices_to_backend(np.arange(n), backend))
    Y = emb.subset(indices_to_backend(np.arange(n, n + m), backend))
    dist, index = (to_numpy(v) for v in fastal.min_distance(X, Y))
    cpu_dist, cpu_index = (
        to_numpy(v) for v in fastal.min_distance(on_cpu(X, dtype), on_cpu(Y, dtype))
    )
    GX, GY = exact_dense(X), exact_dense(Y)
    scale = float(max(np.max(np.sum(GX**2, 1)), np.max(np.sum(GY**2, 1))))
    atol = FACTORED_ATOL[dtype] * scale
    assert_allclose(dist**2, cpu_dist**2, rtol=0, atol=atol)
    d2 = np.stack([np.sum((GY - g) ** 2, axis=1) for g in GX])  # (n, m), float64 direct form
    best = d2.min(axis=1)
    assert_allclose(dist**2, best, rtol=0, atol=atol)
    clear = np.sort(d2, axis=1)[:, 1] - best > 2 * atol
    assert clear.mean() > 0.5  # the comparison below covers most rows
    assert_array_equal(index[clear], cpu_index[clear])
    assert_array_equal(index[clear], np.argmin(d2, axis=1)[clear])
    assert (d2[np.arange(n), index] <= best + atol).all()


# ---------------------------------------------------------------------------------------------
# k-means++


def pp(X, k, **kw) -> np.ndarray:
    return to_numpy(fastal.kmeans_pp(X, k, **kw))


@pytest.mark.parametrize("first", ["random", "norm"])
@pytest.mark.parametrize("n_labeled", [0, 6])
@pytest.mark.parametrize("case", ["varied", "duplicates"])
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_kmeans_pp_integer_data_equals_reference(backend, dtype, case, n_labeled, first):
    """Exact distances, integer weights, exact float64 sums: every pick equals the reference, on a
    dense matrix and on a factored embedding; with few distinct rows ("duplicates": 9 dense rows,
    a few dozen distinct gradients) the draws after those are all picked have zero total."""
    n, k = 600, 60
    labeled = labeled_subset(n, n_labeled, seed=8)
    dup = case == "duplicates"
    X = small_integers(n, 2, seed=3, high=1) if dup else small_integers(n, 5, seed=3, high=2)
    Xg = to_backend(X, backend, dtype)
    got = fastal.kmeans_pp(Xg, k, seed=4, first=first, labeled=lab_arg(labeled, backend))
    assert_indices_like(got, Xg, k)
    assert_array_equal(to_numpy(got), kmeans_pp_ref(X, k, 4, first=first, labeled=labeled))

    A, H = integer_factors(n, 2, 2, seed=5, high=1) if dup else integer_factors(n, 4, 5, seed=5)
    emb = embedding(A, H, backend, dtype)
    got = fastal.kmeans_pp(emb, k, seed=6, first=first, labeled=lab_arg(labeled, backend))
    assert_indices_like(got, emb.A, k)
    expected = kmeans_pp_ref(exact_dense(emb), k, 6, first=first, labeled=labeled)
    assert_array_equal(to_numpy(got), expected)
    cpu = pp(on_cpu(emb, dtype), k, seed=6, first=first, labeled=labeled)
    assert_array_equal(cpu, expected)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_kmeans_pp_large_integer_pool_equals_reference(backend):
    """More than 1024 tiles of 256 rows: the sampler's segments hold several tiles each."""
    n, k = 300_000, 30
    X = small_integers(n, 3, seed=7, high=3)
    labeled = labeled_subset(n, 3, seed=11)
    for lab in (None, labeled):
        got = pp(to_backend(X, backend, "float32"), k, seed=9, labeled=lab_arg(lab, backend))
        assert_array_equal(got, kmeans_pp_ref(X, k, 9, labeled=lab))


@pytest.mark.parametrize("n_labeled", [0, 10])
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_kmeans_pp_factored_agrees_with_cpu(backend, dtype, n_labeled):
    n, k = 5000, 64
    rng = np.random.default_rng(21)
    probs = softmax_ref(rng.normal(size=(n, 10)) * 2.0)
    feats = rng.normal(size=(n, 64))
    emb = fastal.gradient_embedding(
        to_backend(probs, backend, "float32"), to_backend(feats, backend, dtype)
    )
    labeled = labeled_subset(n, n_labeled, seed=9)
    got = pp(emb, k, seed=3, first="norm", labeled=lab_arg(labeled, backend))
    assert_valid(got, n, k, labeled)
    cpu = pp(on_cpu(emb, dtype), k, seed=3, first="norm", labeled=labeled)
    assert_valid(cpu, n, k, labeled)
    if dtype == "float32":  # both follow the float64 reference up to draws near a boundary
        expected, margins = kmeans_pp_ref(exact_dense(emb), 20, 3, "norm", labeled, margins=True)
        assert_pp_same_until_near_tie(got[:20], expected, margins, rtol=1e-4)
        assert_pp_same_until_near_tie(cpu[:20], expected, margins, rtol=1e-4)


@pytest.mark.parametrize("n_labeled", [0, 10])
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_kmeans_pp_dense_agrees_with_cpu(backend, dtype, n_labeled):
    n, k = 20_000, 64
    X = gaussian(n, 48, seed=13)
    Xg = to_backend(X, backend, dtype)
    labeled = labeled_subset(n, n_labeled, seed=10)
    got = pp(Xg, k, seed=5, labeled=lab_arg(labeled, backend))
    assert_valid(got, n, k, labeled)
    cpu = pp(to_backend(upcast(Xg), "torch-cpu", dtype), k, seed=5, labeled=labeled)
    assert_valid(cpu, n, k, labeled)
    if dtype == "float32":
        expected, margins = kmeans_pp_ref(upcast(Xg), 20, 5, labeled=labeled, margins=True)
        assert_pp_same_until_near_tie(got[:20], expected, margins, rtol=1e-4)
        assert_pp_same_until_near_tie(cpu[:20], expected, margins, rtol=1e-4)


@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_reproducible(backend, dtype):
    A, H = separated_factors(3000, 6, 20, clusters=10, seed=14)
    emb = embedding(A, H, backend, dtype)
    Xg = to_backend(gaussian(3000, 20, seed=15), backend, dtype)
    for X in (emb, Xg):
        assert_array_equal(pp(X, 50, seed=7), pp(X, 50, seed=7))
        assert_array_equal(
            to_numpy(fastal.kcenter_greedy(X, 50, seed=7)),
            to_numpy(fastal.kcenter_greedy(X, 50, seed=7)),
        )


@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_duplicate_heavy_pool_gives_distinct_picks(backend, dtype):
    """A pool of 12 distinct generic rows repeated 250 times each: once they are all centres every
    weight is (about) 0, and the picks must stay distinct and valid."""
    A, H = separated_factors(12, 7, 16, clusters=3, seed=16)
    rows = np.random.default_rng(16).permutation(np.repeat(np.arange(12), 250))
    emb = embedding(A[rows], H[rows], backend, dtype)
    n, k = rows.size, 200
    labeled = np.arange(0, 40, 4)
    for lab in (None, labeled):
        assert_valid(pp(emb, k, seed=1, labeled=lab_arg(lab, backend)), n, k, lab)
        picks = to_numpy(fastal.kcenter_greedy(emb, k, seed=1, labeled=lab_arg(lab, backend)))
        assert_valid(picks, n, k, lab)
    Xg = to_backend(gaussian(12, 9, seed=17, duplicates=False)[rows], backend, dtype)
    assert_valid(pp(Xg, k, seed=2), n, k, None)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_progress_and_k_zero(backend, capsys):
    A, H = separated_factors(800, 5, 12, clusters=8, seed=18)
    emb = embedding(A, H, backend, "float32")
    Xg = to_backend(gaussian(800, 12, seed=19), backend, "float32")
    for X in (emb, Xg):
        assert_array_equal(pp(X, 150, seed=3, progress=True), pp(X, 150, seed=3))
        empty = fastal.kmeans_pp(X, 0, seed=3)
        assert_indices_like(empty, Xg, 0)
        whole = pp(X, 797, labeled=indices_to_backend([0, 1, 2], backend), seed=4)
        assert_array_equal(np.sort(whole), np.arange(3, 800))
    a = fastal.kcenter_greedy(emb, 150, seed=2, progress=True)
    assert_array_equal(to_numpy(a), to_numpy(fastal.kcenter_greedy(emb, 150, seed=2)))
    capsys.readouterr()


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_overflow_and_non_finite_are_reported(backend):
    A, H = integer_factors(50, 3, 4, seed=20)
    big = embedding(A, H * 1e19, backend, "float32")  # |H_i|^2 ~ 1e38: distances overflow
    with pytest.raises(ValueError, match="overflow"):
        fastal.kcenter_greedy(big, 3, seed=0)
    with pytest.raises(ValueError, match="overflow"):
        fastal.kmeans_pp(big, 3, seed=0)
    X = gaussian(50, 4, seed=21) * 1e19
    with pytest.raises(ValueError, match="overflow"):
        fastal.kmeans_pp(to_backend(X, backend, "float32"), 3, seed=0)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_underflow_is_refused_on_gpu(backend):
    """Factors at 1e-12 (|g|² ~ 1e-48) and dense rows 1e-25 apart: every float32 distance is 0,
    so each entry point refuses, as on the CPU (tests/test_underflow.py)."""
    A, H = integer_factors(40, 3, 4, seed=24)
    tiny = embedding(A * 1e-12, H * 1e-12, backend, "float32")
    dense = to_backend(np.array([[0.0], [1.0], [2.0], [10.0]]) * 1e-25, backend, "float32")
    calls = [
        lambda: fastal.kcenter_greedy(tiny, 3, seed=0),
        lambda: fastal.kmeans_pp(tiny, 3, seed=0),
        lambda: fastal.min_distance(tiny, tiny.subset([0, 3])),
        lambda: fastal.kcenter_greedy(dense, 2, seed=0),
        lambda: fastal.kmeans_pp(dense, 2, seed=0),
        lambda: fastal.kmeans(dense, 2, seed=0),
        lambda: fastal.min_distance(dense, dense[:2]),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"underflow float32; .* or pass float64 on the CPU"):
            call()
    fastal.kcenter_greedy(embedding(A, H, backend, "float32"), 3, seed=0)


def test_torch_non_default_stream():
    if "torch-cuda" not in AVAILABLE_CUDA_BACKENDS:
        pytest.skip("torch cannot see a CUDA device")
    torch = pytest.importorskip("torch")
    A, H = separated_factors(3000, 8, 24, clusters=12, seed=22)
    emb = embedding(A, H, "torch-cuda", "float16")
    Xg = to_backend(gaussian(3000, 24, seed=23), "torch-cuda", "float16")

    def run():
        return [
            pp(emb, 40, seed=1),
            pp(Xg, 40, seed=1),
            to_numpy(fastal.kcenter_greedy(emb, 40, seed=1)),
        ]

    expected = run()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = run()
    stream.synchronize()
    for g, e in zip(got, expected, strict=True):
        assert_array_equal(g, e)
