"""``fastal.kmeans`` and the BADGE, EGL and KMeansSampling strategies on CUDA inputs, against the
CPU run on the same stored values.

Every test here is marked ``cuda`` and skipped without a GPU or without ``fastal._cuda``. The data
are chosen so that the GPU and the CPU must agree exactly where the issue asks for it:

- k-means runs on small-integer blobs on a grid (every coordinate an integer of magnitude <= 193,
  exact in every storage dtype). The blobs are far apart (centres >= 64 apart, rows within 2 of
  their blob centre), so no assignment is near a tie and the labels must be equal on both
  backends. Integer rows alone would not make the rest exact: centres are means, and the GEMM
  assignment (``torch.addmm`` on CUDA for ``k >= 32`` in float32, the fused BLAS step on the CPU)
  computes ``|c|^2 - 2 x.c + |x|^2`` with norms ~10^5 times the distances, so non-integer centres
  would leave a cancellation error of ~1e-3 per row that the two backends make differently. So
  every row's noise comes with its negation in the same blob (:func:`grid_blobs`): once the
  clusters are the blobs, every centre is an integer (the float64 sums are exact), every product
  and sum of the GEMM is an integer below 2^24 (exact in float32, in any order, even with TF32:
  the factors have <= 8 significant bits), and labels, centres and inertia are exactly the
  reference's. Only the min-distance kernel path rounds: CUDA returns the distance and squares
  it again (relative error ~2^-23 per row). Mini-batch centres are running means, rounded to
  float32 after every batch: there the centres agree to that rounding.
- BADGE and EGL run on dyadic probabilities (multiples of 1/8, summing to exactly 1) and integer
  features: gradients, factored distances, D^2 weights and EGL scores are all exact in float32
  accumulation, so the picks must equal the CPU's and the float64 references', ties included.
- KMeansSampling runs on the k-means blobs (less some labeled rows, so the centres are no longer
  integers): the same clusters on both, and the nearest member of each is picked from float64
  distances to float32 centres that are equal on both backends (float64 sums of the same rows).

Outputs must come back in the input's framework and on its device (``assert_indices_like``), with
``labeled`` given on the device.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    GPU_PARAMS,
    assert_indices_like,
    backend_of,
    dtype_of,
    indices_to_backend,
    labeled_subset,
    to_backend,
    to_numpy,
    upcast,
)
from numpy.testing import assert_allclose, assert_array_equal
from reference import (
    assign_ref,
    badge_ref,
    egl_ref,
    kmeans_pp_ref,
    lloyd_ref,
    top_scores_ref,
)

import fastal
from fastal import strategies

pytestmark = pytest.mark.cuda

#: the k-means paths: k < 32 assigns with the min-distance kernel, k >= 32 (float32) by GEMM
KS = (8, 40)

BADGE = strategies.get("badge")
EGL = strategies.get("egl")
KMEANS = strategies.get("kmeans")


# ---------------------------------------------------------------------------------------------
# data and helpers


def grid_blobs(n: int, k: int, seed: int, d: int = 4, step: int = 64, noise: int = 1):
    """``(X, blob)``: ``k`` blob centres at distinct points of the grid ``step * {-3..3}^d``, row
    ``i`` in blob ``i % k`` (rows ``0..k-1`` are one per blob), plus integer noise in
    ``[-noise, noise]``; row ``i + n/2`` has the noise of row ``i`` negated (``n/2`` is a multiple
    of ``k``: the same blob), so every blob's mean is its integer grid centre.

    Centres differ by >= ``step`` in some coordinate, so every row is within ``noise * sqrt(d)``
    of its blob's mean and more than ``step - 2 noise sqrt(d)`` from any other: no assignment is
    near a tie. Coordinates are integers of magnitude <= 3 step + noise (193 <= 256: exact in
    bfloat16), squared norms <= 4 * 193^2 < 2^24 (exact in float32)."""
    if n % (2 * k):
        raise ValueError(f"n must be a multiple of 2k = {2 * k}, got {n}")
    rng = np.random.default_rng(seed)
    codes = rng.choice(7**d, size=k, replace=False)
    centres = step * (np.stack(np.unravel_index(codes, (7,) * d), axis=1) - 3)
    blob = np.arange(n) % k
    half = rng.integers(-noise, noise + 1, size=(n // 2, d))
    X = centres[blob] + np.vstack([half, -half])
    return X.astype(np.float64), blob


def same_partition(labels: np.ndarray, blob: np.ndarray) -> bool:
    """Whether ``labels`` groups the rows exactly as ``blob`` does (up to renaming)."""
    pairs = np.unique(np.stack([labels, blob]), axis=1)
    return pairs.shape[1] == np.unique(labels).size == np.unique(blob).size


def on_cpu(x, dtype: str):
    """The same stored values as a torch-CPU array of the same dtype."""
    return to_backend(upcast(x), "torch-cpu", dtype)


def lab_arg(labeled, backend: str):
    return None if labeled is None else indices_to_backend(labeled, backend)


def gemm_path(dtype: str, k: int) -> bool:
    return dtype == "float32" and k >= 32


def assert_lloyd_exact(res, cpu, ref, k: int, dtype: str) -> None:
    """Device run, CPU run and float64 reference on integer centres: labels, centres, iteration
    count equal; inertia equal on the GEMM path, to 1e-6 relative on the kernel path (CUDA
    squares the rounded distance)."""
    for run in (res, cpu):
        assert_array_equal(to_numpy(run.labels), ref["labels"])
        assert_array_equal(upcast(run.centres), ref["centres"])
        assert (run.n_iter, run.converged) == (ref["n_iter"], ref["converged"])
    assert cpu.inertia == ref["inertia"]  # the CPU kernel returns squared distances: exact too
    if gemm_path(dtype, k):
        assert res.inertia == ref["inertia"]
    else:  # per row at most 1.5 * 2^-23 relative
        assert res.inertia == pytest.approx(ref["inertia"], rel=1e-6)


def dyadic_pool(n: int, C: int, d: int, seed: int, high: int = 2):
    """``(probs, features)``: probabilities in multiples of 1/8 summing to exactly 1 (argmax ties
    and one-hot rows included) and integer features in ``[-high, high]``. Every gradient entry
    is a multiple of 1/8 of magnitude <= 2, so factored distances, D^2 weights and EGL scores are
    exact in float32 (and the stored values in every dtype)."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(8, rng.dirichlet(np.ones(C), size=n))
    probs = counts / 8.0
    feats = rng.integers(-high, high + 1, size=(n, d)).astype(np.float64)
    return probs, feats


def on_device(probs, feats, backend: str, dtype: str) -> dict:
    """The ``{"probs", "features"}`` pool stored in ``dtype`` on the GPU backend."""
    return {
        "probs": to_backend(probs, backend, dtype),
        "features": to_backend(feats, backend, dtype),
    }


# ---------------------------------------------------------------------------------------------
# fastal.kmeans: Lloyd


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_lloyd_from_given_centres_equals_cpu(backend, dtype, k):
    """Initial centres: one row per blob. More than one GEMM tile of rows (8192)."""
    n = 12_000
    X, blob = grid_blobs(n, k, seed=k)
    Xg = to_backend(X, backend, dtype)
    init = to_backend(X[:k], backend, dtype)
    res = fastal.kmeans(Xg, k, init=init)
    assert backend_of(res.centres) == backend
    assert dtype_of(res.centres) == "float32"
    assert_indices_like(res.labels, Xg, n)
    assert tuple(res.centres.shape) == (k, X.shape[1])
    cpu = fastal.kmeans(on_cpu(Xg, dtype), k, init=on_cpu(init, dtype))
    ref = lloyd_ref(X, X[:k], 300, 1e-4)
    # row j of the initial centres lies in blob j: the labels are the blobs themselves
    assert_array_equal(ref["labels"], blob)
    assert ref["converged"]
    assert_lloyd_exact(res, cpu, ref, k, dtype)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_lloyd_from_kmeans_pp_equals_cpu(backend, dtype, k):
    """init="k-means++" from a seed: the seeding (exact D^2 on integer rows) draws the reference's
    rows on both backends, here one per blob, and Lloyd then finds the blobs."""
    n = 6000
    X, blob = grid_blobs(n, k, seed=100 + k)
    Xg = to_backend(X, backend, dtype)
    res = fastal.kmeans(Xg, k, seed=3)
    assert_indices_like(res.labels, Xg, n)
    cpu = fastal.kmeans(on_cpu(Xg, dtype), k, seed=3)
    picks = kmeans_pp_ref(X, k, 3)
    hit = np.sort(blob[picks])
    assert_array_equal(hit, np.arange(k), err_msg="the seeding missed a blob: pick another seed")
    ref = lloyd_ref(X, X[picks], 300, 1e-4)
    assert same_partition(ref["labels"], blob)
    assert_lloyd_exact(res, cpu, ref, k, dtype)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_lloyd_relocates_empty_clusters_like_cpu(backend, dtype, k):
    """Two initial centres far outside the data get no rows: after one iteration they are the
    rows farthest from their centres (the CUDA update is ``index_add_`` + ``bincount`` and a
    stable sort). The initial centres are integers, so the first distances are exact on both
    backends, with many exact ties among the farthest rows (lowest row first); the new centres
    are integers too (blob means and rows), and the final assignment, where a relocated row and
    its blob's mean compete, has exact ties as well (lowest centre first)."""
    n = 2964  # a multiple of 2 (k - 2) for k = 8 and k = 40
    X, _ = grid_blobs(n, k - 2, seed=200 + k)
    far = np.array([[1000.0, 1000.0, 1000.0, 1000.0], [-1000.0, 0.0, 0.0, -1000.0]])
    init = np.vstack([X[: k - 2], far])  # integers (1000 = 125 * 8): exact in every dtype
    Xg = to_backend(X, backend, dtype)
    res = fastal.kmeans(Xg, k, init=to_backend(init, backend, dtype), max_iter=1)
    cpu = fastal.kmeans(on_cpu(Xg, dtype), k, init=on_cpu(init, dtype), max_iter=1)
    ref = lloyd_ref(X, init, 1, 1e-4)
    _, d2 = assign_ref(X, init)
    farthest = np.lexsort((np.arange(n), -d2))[:2]
    assert_array_equal(ref["centres"][-2:], X[farthest])
    assert np.sum(d2 == d2[farthest[1]]) > 1  # the second farthest is a tie broken by row
    assert_lloyd_exact(res, cpu, ref, k, dtype)


# ---------------------------------------------------------------------------------------------
# fastal.kmeans: mini-batch


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_minibatch_reproducible_from_seed(backend, dtype, k):
    """The same seed gives the same run on the device, bit for bit (the float64 ``index_add_``
    sums integer rows: exact in any order). The seeding and the batches come from the seed's
    numpy stream, so the CPU run starts from the same rows and visits the same batches: the same
    clusters (the blobs) and, after whole epochs, every row counted equally often, the blob means
    (integers) up to the float32 rounding of the running mean after each of <= 8 * 12 batches."""
    n = 6000
    X, blob = grid_blobs(n, k, seed=300 + k)
    picks = kmeans_pp_ref(X, k, 6)  # the seeding of seed=6
    hit = np.sort(blob[picks])
    assert_array_equal(hit, np.arange(k), err_msg="the seeding missed a blob: pick another seed")
    Xg = to_backend(X, backend, dtype)
    a = fastal.kmeans(Xg, k, seed=6, minibatch=512, max_iter=8)
    b = fastal.kmeans(Xg, k, seed=6, minibatch=512, max_iter=8)
    assert_indices_like(a.labels, Xg, n)
    assert backend_of(a.centres) == backend
    assert_array_equal(to_numpy(a.labels), to_numpy(b.labels))
    assert_array_equal(upcast(a.centres), upcast(b.centres))
    assert (a.inertia, a.n_iter, a.converged) == (b.inertia, b.n_iter, b.converged)
    labels = to_numpy(a.labels)
    assert same_partition(labels, blob)
    cpu = fastal.kmeans(on_cpu(Xg, dtype), k, seed=6, minibatch=512, max_iter=8)
    assert_array_equal(labels, to_numpy(cpu.labels))
    means = np.stack([X[labels == j].mean(axis=0) for j in range(k)])
    assert_array_equal(means, np.round(means))
    assert_allclose(upcast(a.centres), means, rtol=1e-5, atol=1e-4)
    assert_allclose(upcast(a.centres), upcast(cpu.centres), rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# BADGE


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n_labeled", [0, 9])
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_badge_mapping_pool_equals_cpu_and_reference(backend, dtype, n_labeled, bias):
    n, budget = 3000, 60
    probs, feats = dyadic_pool(n, 5, 6, seed=1)
    pool = on_device(probs, feats, backend, dtype)
    labeled = labeled_subset(n, n_labeled, seed=2)
    sel = BADGE(bias=bias).select(pool, budget, lab_arg(labeled, backend), seed=4)
    assert_indices_like(sel.indices, pool["features"], budget)
    cpu_pool = {key: on_cpu(v, dtype) for key, v in pool.items()}
    cpu = BADGE(bias=bias).select(cpu_pool, budget, labeled, seed=4)
    expected = badge_ref(probs, feats, budget, labeled, 4, bias=bias)
    assert_array_equal(to_numpy(sel.indices), expected)
    assert_array_equal(to_numpy(cpu.indices), expected)


@pytest.mark.parametrize("n_labeled", [0, 9])
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_badge_gradient_embedding_pool_equals_cpu(backend, dtype, n_labeled):
    """A GradientEmbedding with integer factors (exact distances), on the device."""
    n, budget = 2500, 50
    rng = np.random.default_rng(6)
    A = rng.integers(-2, 3, size=(n, 4)).astype(np.float64)
    H = rng.integers(-2, 3, size=(n, 7)).astype(np.float64)
    emb = fastal.GradientEmbedding(to_backend(A, backend, dtype), to_backend(H, backend, dtype))
    labeled = labeled_subset(n, n_labeled, seed=7)
    sel = BADGE().select(emb, budget, lab_arg(labeled, backend), seed=8)
    assert_indices_like(sel.indices, emb.A, budget)
    cpu_emb = fastal.GradientEmbedding(on_cpu(emb.A, dtype), on_cpu(emb.H, dtype))
    cpu = BADGE().select(cpu_emb, budget, labeled, seed=8)
    rows = np.arange(n) if labeled is None else np.setdiff1d(np.arange(n), labeled)
    dense = (A[rows, :, None] * H[rows, None, :]).reshape(rows.size, -1)
    expected = rows[kmeans_pp_ref(dense, budget, 8, first="norm")]
    assert_array_equal(to_numpy(sel.indices), expected)
    assert_array_equal(to_numpy(cpu.indices), expected)


# ---------------------------------------------------------------------------------------------
# EGL


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n_labeled", [0, 25])
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_egl_equals_cpu_and_reference(backend, dtype, n_labeled, bias):
    """Exact scores with many exact ties: the device's stable sort must keep the lowest index."""
    n, budget = 5000, 300
    probs, feats = dyadic_pool(n, 4, 5, seed=9)
    pool = on_device(probs, feats, backend, dtype)
    labeled = labeled_subset(n, n_labeled, seed=10)
    sel = EGL(bias=bias).select(pool, budget, lab_arg(labeled, backend))
    assert_indices_like(sel.indices, pool["features"], budget)
    scores = sel.diagnostics["scores"]
    assert backend_of(scores) == backend
    assert dtype_of(scores) == "float64"
    expected_scores = egl_ref(probs, feats, bias)
    assert_array_equal(to_numpy(scores), expected_scores)
    expected = top_scores_ref(expected_scores, budget, labeled)
    assert np.unique(expected_scores[expected]).size < budget  # ties are in play
    cpu = EGL(bias=bias).select({key: on_cpu(v, dtype) for key, v in pool.items()}, budget, labeled)
    assert_array_equal(to_numpy(sel.indices), expected)
    assert_array_equal(to_numpy(cpu.indices), expected)


# ---------------------------------------------------------------------------------------------
# KMeansSampling


@pytest.mark.parametrize("form", ["array", "mapping"])
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_kmeans_sampling_equals_cpu(backend, dtype, k, form):
    """budget = number of blobs: one pick per blob, the same rows as on the CPU."""
    n = 4000
    X, blob = grid_blobs(n, k, seed=400 + k)
    Xg = to_backend(X, backend, dtype)
    labeled = labeled_subset(n, 30, seed=k)
    lab = lab_arg(labeled, backend)
    pool = Xg if form == "array" else {"features": Xg}
    sel = KMEANS().select(pool, k, lab, seed=2)
    assert_indices_like(sel.indices, Xg, k)
    cpu_X = on_cpu(Xg, dtype)
    cpu = KMEANS().select(cpu_X if form == "array" else {"features": cpu_X}, k, labeled, seed=2)
    idx = to_numpy(sel.indices)
    hit = np.sort(blob[to_numpy(cpu.indices)])
    assert_array_equal(hit, np.arange(k), err_msg="the seeding missed a blob: pick a seed")
    assert_array_equal(idx, to_numpy(cpu.indices))
    assert not np.isin(idx, labeled).any()
    # Each pick is a nearest member of its blob to the blob's float64 mean, up to the float32
    # rounding of the centres (which splits exact float64 ties between mirrored rows, so the
    # picks need not be kmeans_sampling_ref's: e.g. 3 of 40 differ here).
    free = np.setdiff1d(np.arange(n), labeled)
    for p in idx:
        members = free[blob[free] == blob[p]]
        d2 = np.sum((X[members] - X[members].mean(axis=0)) ** 2, axis=1)
        assert np.sum((X[p] - X[members].mean(axis=0)) ** 2) <= d2.min() + 1e-4
    assert sel.diagnostics["n_iter"] == cpu.diagnostics["n_iter"]
    if not gemm_path(dtype, k):
        assert sel.diagnostics["inertia"] == pytest.approx(cpu.diagnostics["inertia"], rel=2e-6)


def test_flipped_cupy_pool_is_copied_not_aborted():
    """``cp.flip`` gives negative strides, which torch 2.13's DLPack import aborts the process
    on; fastal makes cupy arrays contiguous before handing them to torch."""
    cupy = pytest.importorskip("cupy")

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    p = rng.dirichlet(np.ones(4), 300).astype(np.float32)
    flipped, flipped_p = cupy.flip(cupy.asarray(X), 0), cupy.flip(cupy.asarray(p), 0)
    dist, _ = fastal.min_distance(flipped, cupy.asarray(X[:5]))
    np.testing.assert_allclose(to_numpy(dist), fastal.min_distance(X[::-1], X[:5])[0], atol=1e-4)
    fastal.kmeans(flipped, 3, seed=0)  # reaches torch.from_dlpack on the flipped array
    got = strategies.Entropy().select({"probs": flipped_p}, 5).indices
    assert_array_equal(to_numpy(got), strategies.Entropy().select({"probs": p[::-1]}, 5).indices)


@pytest.mark.parametrize("backend", ["torch-cuda", "cupy"])
@pytest.mark.parametrize("exponent", [-50, 40])
def test_sparse_approx_float32_features_far_from_1_equal_the_cpus(backend, exponent):
    """Outside [2^-24, 2^24] Φ's products run in float64 on a device copy of the features, as on
    the CPU: greedy's picks equal the CPU's, the objective to float64 rounding."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 4))
    feats = rng.normal(size=(200, 16)) * 2.0**exponent
    kw = {"solver": "greedy", "temperature": 2.0, "beta": 0.1 * 4.0**exponent}
    want = strategies.SparseApprox(**kw).select(
        {"logits": logits.astype(np.float32), "features": feats.astype(np.float32)}, 8, [0, 1]
    )
    pool = {"logits": to_backend(logits, backend, "float32"),
            "features": to_backend(feats, backend, "float32")}  # fmt: skip
    got = strategies.SparseApprox(**kw).select(pool, 8, [0, 1])
    assert backend_of(got.indices) == backend
    assert_array_equal(to_numpy(got.indices), want.indices)
    assert_allclose(got.diagnostics["objective"], want.diagnostics["objective"], rtol=1e-9)


def test_sparse_approx_refuses_features_on_another_device():
    import torch

    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(50, 3)).astype(np.float32)).cuda()
    features = np.ones((50, 4), np.float32)
    with pytest.raises(ValueError, match=r"^features is on numpy \(cpu\) but logits is on torch"):
        strategies.SparseApprox().select({"logits": logits, "features": features}, 3)


@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
@pytest.mark.parametrize("name", ["entropy", "margin", "least_confidence", "bald"])
def test_uncertainty_scores_on_the_device_equal_the_cpus(name, backend, dtype):
    """The scores with the probability checks on the scored tiles (session 36): on the device the
    tiles' check is one flag read once, and BALD's agreement test gathers the near-zero rows."""
    rng = np.random.default_rng(7)
    T, n, C = 4, 700, 5
    mc = rng.dirichlet(np.ones(C), size=(T, n)).astype(np.float32)
    mc[:, :20] = mc[:1, :20]  # rows whose passes agree: BALD scores them exactly 0
    pool = {"mc_probs": mc} if name == "bald" else {"probs": mc[0]}
    cls = strategies.get(name)
    cpu = cls().select({k: to_backend(v, "torch-cpu", dtype) for k, v in pool.items()}, 9, [3, 5])
    dev = {k: to_backend(v, backend, dtype) for k, v in pool.items()}
    sel = cls().select(dev, 9, indices_to_backend([3, 5], backend))
    assert_indices_like(sel.indices, next(iter(dev.values())), 9)
    assert_array_equal(to_numpy(sel.indices), to_numpy(cpu.indices))
    assert_allclose(to_numpy(sel.diagnostics["scores"]), to_numpy(cpu.diagnostics["scores"]),
                    rtol=1e-12, atol=1e-15)  # fmt: skip
    if name == "bald":
        assert (to_numpy(sel.diagnostics["scores"])[:20] == 0).all()
    bad = {k: v.copy() for k, v in pool.items()}
    next(iter(bad.values()))[..., 600, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN|finite probabilities"):
        cls().select({k: to_backend(v, backend, dtype) for k, v in bad.items()}, 9)


@pytest.mark.parametrize("name", ["badge", "egl", "coreset_gradients", "crc", "sparse_approx"])
def test_mixed_torch_and_cupy_pools_on_one_device(name):
    """torch probabilities beside cupy features on one GPU: the picks of an all-torch pool, the
    indices in the features' framework (CPU: tests/test_gradients.py)."""
    pytest.importorskip("cupy")
    rng = np.random.default_rng(3)
    P = rng.dirichlet(np.ones(4), 80).astype(np.float32)
    X = rng.normal(size=(80, 6)).astype(np.float32)
    key = "logits" if name == "sparse_approx" else "probs"
    values = np.log(P) if key == "logits" else P
    kw = {"group_size": 2} if name == "crc" else {"temperature": 2.0} if key == "logits" else {}
    cls = strategies.get(name)
    scores = to_backend(values, "torch-cuda", "float32")
    want = cls(**kw).select({key: scores, "features": to_backend(X, "torch-cuda", "float32")}, 4,
                            seed=0)  # fmt: skip
    got = cls(**kw).select({key: scores, "features": to_backend(X, "cupy", "float32")}, 4, seed=0)
    assert backend_of(got.indices) == "cupy"
    assert_array_equal(to_numpy(got.indices), to_numpy(want.indices))
