"""CUDA backend against the CPU backend: same picks, same distances, outputs on the input's device.

Every test here is marked ``cuda`` and skipped without a GPU or without ``fastal._cuda``.
On small-integer data both backends compute exactly, so picks (ties included) must be identical;
on generic data float32 accumulation in a different order may only flip genuine near-ties.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import (
    ATOL,
    AVAILABLE_CUDA_BACKENDS,
    CUDA_BACKENDS,
    GPU_PARAMS,
    RTOL,
    assert_argmin_valid,
    assert_indices_like,
    assert_same_until_near_tie,
    backend_of,
    dtype_of,
    gaussian,
    indices_to_backend,
    labeled_subset,
    mixture,
    reference,
    run,
    small_integers,
    to_backend,
    to_numpy,
    upcast,
)
from numpy.testing import assert_allclose, assert_array_equal

import fastal

pytestmark = pytest.mark.cuda


@functools.cache
def integer_case(n, d, n_labeled):
    X = small_integers(n, d, seed=n + d)
    labeled = labeled_subset(n, n_labeled, seed=1)
    budget = min(n - n_labeled, 100)
    return X, labeled, budget, reference(X, budget, labeled, 3)[0]


def on_cpu(X_gpu, dtype):
    """The same stored values as a torch-CPU array of the same dtype."""
    return to_backend(upcast(X_gpu), "torch-cpu", dtype)


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
@pytest.mark.parametrize(
    ("n", "d", "n_labeled"), [(1, 1, 0), (300, 7, 0), (2000, 33, 5), (5000, 128, 40)]
)
def test_integer_data_picks_equal_cpu_exactly(n, d, n_labeled, backend, dtype, prune):
    X, labeled, budget, ref_picks = integer_case(n, d, n_labeled)
    Xg = to_backend(X, backend, dtype)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    res = fastal.kcenter(Xg, budget, labeled=lab, seed=3, prune=prune)
    assert_indices_like(res.indices, Xg, budget)
    assert backend_of(res.radius) == backend_of(Xg)
    cpu_picks, cpu_radius = run(on_cpu(Xg, dtype), budget, labeled=labeled, seed=3, prune=prune)
    assert_array_equal(to_numpy(res.indices), cpu_picks)
    assert_allclose(to_numpy(res.radius), cpu_radius, rtol=RTOL[dtype])
    assert_array_equal(cpu_picks, ref_picks)


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
@pytest.mark.parametrize(
    ("n", "d", "n_labeled"), [(3000, 64, 0), (20_000, 128, 10), (100_003, 32, 1)]
)
def test_generic_data_picks_equal_cpu(n, d, n_labeled, backend, dtype, prune):
    X = gaussian(n, d, seed=d)
    labeled = labeled_subset(n, n_labeled, seed=2)
    budget = 64
    Xg = to_backend(X, backend, dtype)
    lab = None if labeled is None else indices_to_backend(labeled, backend)
    picks, radius = run(Xg, budget, labeled=lab, seed=5, prune=prune)
    Xc = on_cpu(Xg, dtype)
    cpu_picks, cpu_radius = run(Xc, budget, labeled=labeled, seed=5, prune=prune)
    assert_same_until_near_tie(upcast(Xc), picks, cpu_picks, labeled, rtol=1e-4)
    if np.array_equal(picks, cpu_picks):
        assert_allclose(radius, cpu_radius, rtol=RTOL[dtype])


@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_pruning_on_gpu(backend, dtype):
    Xg = to_backend(mixture(50_000, 32, 50, seed=0), backend, dtype)
    pruned = fastal.kcenter(Xg, 200, seed=1, prune=True)
    full = fastal.kcenter(Xg, 200, seed=1, prune=False)
    assert_array_equal(to_numpy(pruned.indices), to_numpy(full.indices))
    assert_array_equal(to_numpy(pruned.radius), to_numpy(full.radius))
    assert full.rows_read == full.rows_unpruned
    assert 3 * pruned.rows_read <= full.rows_read


@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_progress_and_budget_edge_cases(backend, dtype, capsys):
    Xg = to_backend(gaussian(500, 16, seed=4), backend, dtype)
    a = fastal.kcenter_greedy(Xg, 150, seed=2, progress=True)
    b = fastal.kcenter_greedy(Xg, 150, seed=2)
    capsys.readouterr()
    assert_array_equal(to_numpy(a), to_numpy(b))
    empty = fastal.kcenter_greedy(Xg, 0, seed=2)
    assert_indices_like(empty, Xg, 0)
    whole = to_numpy(fastal.kcenter_greedy(Xg, 497, labeled=indices_to_backend([0, 1, 2], backend)))
    assert_array_equal(np.sort(whole), np.arange(3, 500))


@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
@pytest.mark.parametrize(
    ("n", "m", "d"), [(1, 1, 1), (17, 33, 9), (1000, 300, 64), (2049, 515, 128)]
)
def test_min_distance_equals_cpu(n, m, d, backend, dtype):
    rng = np.random.default_rng(n + m + d)
    # integers: exact everywhere, ties included
    Xi = rng.integers(-2, 3, size=(n, d)).astype(np.float64)
    Yi = rng.integers(-2, 3, size=(m, d)).astype(np.float64)
    dist, index = fastal.min_distance(
        to_backend(Xi, backend, dtype), to_backend(Yi, backend, dtype)
    )
    assert backend_of(dist) == backend
    assert dtype_of(dist) == "float32"
    assert_indices_like(index, to_backend(Xi, backend, dtype), n)
    cpu_dist, cpu_index = fastal.min_distance(
        to_backend(Xi, "torch-cpu", dtype), to_backend(Yi, "torch-cpu", dtype)
    )
    assert_array_equal(to_numpy(index), to_numpy(cpu_index))
    assert_allclose(to_numpy(dist), to_numpy(cpu_dist), rtol=RTOL[dtype])
    # generic data
    Xg = to_backend(rng.normal(size=(n, d)), backend, dtype)
    Yg = to_backend(rng.normal(size=(m, d)), backend, dtype)
    dist, index = fastal.min_distance(Xg, Yg)
    assert_argmin_valid(
        upcast(Xg), upcast(Yg), to_numpy(dist), to_numpy(index), RTOL[dtype], ATOL[dtype]
    )


#: wide rows: lane groups of 8 to 32 threads per row (d = 256, 512, 1000: 1000 is not a whole
#: number of 16-byte vectors, so the scalar loads), d not a multiple of anything, and d past the
#: shared-memory centre (10,240 floats) so that the centre is read from global memory
WIDE_D = [256, 512, 1000, 2051, 10_300]


@pytest.mark.parametrize("d", WIDE_D)
@pytest.mark.parametrize(("backend", "dtype"), GPU_PARAMS)
def test_wide_rows_equal_cpu_exactly(backend, dtype, d):
    n, budget = 600, 40
    X = small_integers(n, d, seed=d)
    labeled = labeled_subset(n, 3, seed=d)
    Xg = to_backend(X, backend, dtype)
    lab = indices_to_backend(labeled, backend)
    cpu_picks, cpu_radius = run(on_cpu(Xg, dtype), budget, labeled=labeled, seed=3)
    for prune in (True, False):
        picks, radius = run(Xg, budget, labeled=lab, seed=3, prune=prune)
        assert_array_equal(picks, cpu_picks)
        assert_allclose(radius, cpu_radius, rtol=RTOL[dtype])
    dist, index = fastal.min_distance(Xg[:500], Xg[500:])
    cpu_dist, cpu_index = fastal.min_distance(on_cpu(Xg[:500], dtype), on_cpu(Xg[500:], dtype))
    assert_array_equal(to_numpy(index), to_numpy(cpu_index))
    assert_allclose(to_numpy(dist), to_numpy(cpu_dist), rtol=RTOL[dtype])
    assert_array_equal(pp_picks(Xg, lab), pp_picks(on_cpu(Xg, dtype), labeled))


def pp_picks(X, labeled) -> np.ndarray:
    return to_numpy(fastal.kmeans_pp(X, 30, seed=4, labeled=labeled))


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_validation(backend):
    X = gaussian(20, 3, seed=0)
    X[11, 2] = np.nan
    Xg = to_backend(X, backend, "float32")
    with pytest.raises(ValueError, match=r"^X contains NaN or Inf in 1 row\(s\), first at row 11"):
        fastal.kcenter_greedy(Xg, 2, seed=0)
    ok = to_backend(gaussian(20, 3, seed=0), backend, "float32")
    with pytest.raises(ValueError, match=r"^Y contains NaN or Inf"):
        fastal.min_distance(ok, Xg)
    with pytest.raises(ValueError, match=r"^Y is a numpy \(cpu\) array but X is"):
        fastal.min_distance(ok, gaussian(4, 3, seed=1).astype(np.float32))
    with pytest.raises(ValueError, match=r"^labeled is on numpy \(cpu\) but the data is on"):
        fastal.kcenter_greedy(ok, 2, labeled=np.array([1, 2]))
    with pytest.raises(
        TypeError, match=r"^X must have dtype .*float64 is supported on the CPU only"
    ):
        fastal.kcenter_greedy(to_backend(gaussian(20, 3, seed=0), "torch-cpu").cuda(), 2)


def test_torch_non_default_stream_and_non_contiguous():
    if "torch-cuda" not in AVAILABLE_CUDA_BACKENDS:
        pytest.skip("torch cannot see a CUDA device")
    import torch

    Xc = to_backend(gaussian(3000, 40, seed=9), "torch-cpu", "float16")
    Xg = Xc.cuda()
    expected = to_numpy(fastal.kcenter_greedy(Xg, 50, seed=1))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = fastal.kcenter_greedy(Xg.t().contiguous().t(), 50, seed=1)
    stream.synchronize()
    assert_array_equal(to_numpy(got), expected)
