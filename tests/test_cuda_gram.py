"""The CUDA kernel of ``fastal.gram_min_eig`` (csrc/cuda/gram_eig.cu) against the CPU kernel and the
float64 numpy reference :func:`reference.gram_min_eig_ref`.

- λ⁺_min and the spectra on torch-CUDA (and cupy when installed), float32 and float64 ``Z``, both
  sides (|S| <= D: ``Z_S Z_Sᵀ``; |S| > D: ``Z_Lᵀ Z_L + Z_gᵀ Z_g``), orders 2 to 513 across the
  shared-memory path (up to 166 on an H100) and the global-memory path; 1024 in a slow case.
- The one-thread-per-matrix path of orders <= 32 agrees with the block path (forced through the
  private ``small_max``) and the CPU, more groups than slots included; its host build is checked
  on every machine by ``test_gram_small.py``.
- The block path's three memory paths (matrix in shared memory; matrix in global memory; matrix
  and vectors in global memory, forced through the private ``smem_limit``) give the same bits, and
  a group's score does not depend on the batch (more groups than resident blocks included).
- Rank deficiency and duplicated rows (λ⁺_min skips the zeros), zero matrices, empty L, G = 1,
  the rtol rule, exact power-of-two rescaling, outputs in the input's framework and device,
  non-default streams, NaN / Inf and the binding's own checks.

Every test is marked ``cuda`` and is skipped without a GPU or without ``fastal._cuda``.

Tolerances: both kernels compute in float64 from the same stored values, by backward-stable
reductions, so each eigenvalue carries an absolute error of a small multiple of
``size · eps · λ_max``: ``|got - want| <= 1e-9 |want| + 1e-10 λ_max`` per group.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import CUDA_BACKENDS, backend_of, dtype_of, to_numpy
from numpy.testing import assert_allclose, assert_array_equal
from reference import gram_min_eig_ref
from test_gram import THRESHOLD_CASES, THRESHOLD_GROUPS, THRESHOLD_LAB, THRESHOLD_Z

import fastal

pytestmark = pytest.mark.cuda

EPS = np.finfo(np.float64).eps
RTOL = 1e-9  # relative to each eigenvalue
ATOL = 1e-10  # relative to the group's λ_max
DTYPES = ("float32", "float64")


# ---------------------------------------------------------------------------------------------
# helpers


def on_device(a, backend: str, dtype: str | None = None):
    """A numpy array (any dtype; cast to ``dtype`` when given) on the GPU of ``backend``."""
    a = np.asarray(a)
    a = np.ascontiguousarray(a.astype(dtype) if dtype is not None else a.copy())
    if backend == "torch-cuda":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(a).to("cuda")
    if backend == "cupy":
        cupy = pytest.importorskip("cupy")
        return cupy.asarray(a)
    raise ValueError(f"not a CUDA backend: {backend!r}")


def gpu(Z, lab, groups, backend="torch-cuda", dtype="float64", **kw):
    """fastal.gram_min_eig on the device: Z in ``dtype``, indices as int64 device arrays."""
    lab_dev = None if lab is None else on_device(np.asarray(lab, np.int64), backend)
    grp_dev = on_device(np.asarray(groups, np.int64), backend)
    return fastal.gram_min_eig(on_device(Z, backend, dtype), lab_dev, grp_dev, **kw)


def cpu(Z, lab, groups, dtype="float64", **kw):
    """The CPU kernel this one ports (the tridiagonal method, whatever 'auto' would pick)."""
    kw.setdefault("method", "tridiagonal")
    return fastal.gram_min_eig(np.ascontiguousarray(Z.astype(dtype)), lab, groups, **kw)


def stored(Z, dtype: str) -> np.ndarray:
    """The values the kernels read: Z rounded to ``dtype``, as float64."""
    return Z.astype(dtype).astype(np.float64)


def assert_eigs_close(got, want, lmax, rtol=RTOL, atol=ATOL) -> None:
    """|got - want| <= rtol |want| + atol λ_max, elementwise (λ_max per group, broadcast)."""
    got, want = to_numpy(got).astype(np.float64), np.asarray(want, dtype=np.float64)
    lmax = np.asarray(lmax, dtype=np.float64).reshape(-1, *([1] * (want.ndim - 1)))
    err = np.abs(got - want)
    bound = rtol * np.abs(want) + atol * lmax
    assert (err <= bound).all(), f"max excess {np.max(err - bound):.3e}; got {got}, want {want}"


def threads_for(size: int) -> int:
    """Threads per block of gram_eig_kernel (gram_threads in gram_eig.cu)."""
    return 64 if size <= 32 else (128 if size <= 64 else 256)


def vector_bytes(size: int) -> int:
    """Shared memory of the work vectors of one block (kVectors * size + max(threads, size))."""
    return 8 * (7 * size + max(threads_for(size), size))


@functools.cache
def make_case(size: int, side: str, n_groups: int, seed: int = 0, rank: int | None = None):
    """Z (n, D) Gaussian (or of exactly that rank, small-integer factors: exact in float32), a
    labeled set and random groups disjoint from it, such that the matrix solved is size x size
    on the given side."""
    rng = np.random.default_rng(seed + 1000 * size + (side == "D"))
    G = max(1, min(8, size // 3))
    if side == "S":
        m_lab, D = size - G, size + 3 + size // 2
    else:
        D, m_lab = size, size - G + 1 + size // 4
    n = m_lab + n_groups * G + 5
    if rank is None:
        Z = rng.normal(size=(n, D))
    else:
        Z = (rng.integers(-3, 4, size=(n, rank)) @ rng.integers(-3, 4, size=(rank, D))).astype(
            np.float64
        )
    perm = rng.permutation(n)
    lab = np.sort(perm[:m_lab])
    rest = perm[m_lab:]
    groups = np.stack([rng.choice(rest, size=G, replace=False) for _ in range(n_groups)])
    assert min(m_lab + G, D) == size
    assert (m_lab + G <= D) == (side == "S")
    return Z, lab, groups


@functools.cache
def reference_of(size, side, n_groups, dtype, seed=0, rank=None):
    Z, lab, groups = make_case(size, side, n_groups, seed, rank)
    return gram_min_eig_ref(stored(Z, dtype), lab, groups)


def test_kernel_is_built():
    assert hasattr(fastal._ext.cuda, "gram_min_eig"), "fastal._cuda lacks gram_min_eig"
    assert hasattr(fastal._ext.cuda, "gram_scan"), "fastal._cuda lacks gram_scan"


# ---------------------------------------------------------------------------------------------
# against the CPU kernel and the reference

# orders across the shared-memory limit (166 with 256 threads on an H100's 227 KiB) and past it
SIZES = [2, 17, 64, 128, 166, 167, 200, 513]


@pytest.mark.parametrize("side", ["S", "D"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_matches_cpu_and_reference(backend, dtype, size, side):
    n_groups = 4 if size > 256 else 24
    Z, lab, groups = make_case(size, side, n_groups)
    want, want_spectra = reference_of(size, side, n_groups, dtype)
    lmax = want_spectra[:, -1]
    lam, spectra = gpu(Z, lab, groups, backend, dtype, return_all=True)
    assert backend_of(lam) == backend_of(spectra) == backend
    assert dtype_of(lam) == dtype_of(spectra) == "float64"
    assert tuple(lam.shape) == (n_groups,)
    assert tuple(spectra.shape) == (n_groups, size)
    cpu_lam, cpu_spectra = cpu(Z, lab, groups, dtype, return_all=True)
    assert_eigs_close(lam, cpu_lam, lmax)
    assert_eigs_close(lam, want, lmax)
    assert_eigs_close(spectra, cpu_spectra, lmax)
    assert_eigs_close(spectra, np.maximum(want_spectra, 0), lmax)
    spectra = to_numpy(spectra)
    assert (spectra >= 0).all()
    assert (np.diff(spectra, axis=1) >= 0).all()
    # return_all does not change the scores: the same operations either way ("auto" may take the
    # low-rank route from order 512 on without return_all)
    plain = gpu(Z, lab, groups, backend, dtype, method="tridiagonal")
    assert_array_equal(to_numpy(plain), to_numpy(lam))


@pytest.mark.slow
@pytest.mark.parametrize("side", ["S", "D"])
def test_matches_reference_1024(side):
    Z, lab, groups = make_case(1024, side, 2)
    want, want_spectra = reference_of(1024, side, 2, "float64")
    lam, spectra = gpu(Z, lab, groups, return_all=True)
    assert tuple(spectra.shape) == (2, 1024)
    assert_eigs_close(lam, want, want_spectra[:, -1])
    assert_eigs_close(spectra, np.maximum(want_spectra, 0), want_spectra[:, -1])
    assert_eigs_close(lam, cpu(Z, lab, groups), want_spectra[:, -1])


def test_hand_worked():
    Z = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 0.0]])
    lam, spectra = gpu(Z, [0], [[1], [3], [2]], return_all=True)
    # {0, 1}: diag(1, 4); {0, 3}: rows parallel, eigenvalues 0 and 10; {0, 2}: [[1, 1], [1, 2]]
    golden = (3 - np.sqrt(5)) / 2, (3 + np.sqrt(5)) / 2
    assert_allclose(to_numpy(spectra), [[1, 4], [0, 10], golden], rtol=1e-13, atol=1e-13)
    assert_allclose(to_numpy(lam), [1, 10, golden[0]], rtol=1e-13)
    # |S| = 3 > D = 2: the D side, Z_Sᵀ Z_S = [[2, 1], [1, 5]] for {0, 1, 2}
    assert_allclose(to_numpy(gpu(Z, [0], [[1, 2]])), [(7 - np.sqrt(13)) / 2], rtol=1e-13)


# ---------------------------------------------------------------------------------------------
# rank deficiency, duplicates, zeros, the threshold


@pytest.mark.parametrize("side", ["S", "D"])
@pytest.mark.parametrize("size", [12, 40, 150, 300])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rank_deficient(dtype, size, side):
    rank = size // 3
    Z, lab, groups = make_case(size, side, 6, seed=1, rank=rank)
    want, want_spectra = reference_of(size, side, 6, dtype, seed=1, rank=rank)
    lmax = want_spectra[:, -1]
    lam, spectra = gpu(Z, lab, groups, dtype=dtype, return_all=True)
    lam, spectra = to_numpy(lam), to_numpy(spectra)
    assert_eigs_close(lam, want, lmax)
    assert_eigs_close(lam, cpu(Z, lab, groups, dtype), lmax)
    assert (spectra[:, : size - rank] <= 1e-10 * lmax[:, None]).all()  # the zeros
    assert (lam >= spectra[:, size - rank] * (1 - 1e-9)).all()  # λ⁺_min is past them
    assert (lam > 1e-6 * lmax).all()


@pytest.mark.parametrize("size", [20, 150, 300])
def test_duplicates_proposition_2(size):
    """A group repeating a labeled row (or two identical new rows) has an exact zero eigenvalue at
    full rank (Proposition 2); λ⁺_min skips it and scores the rest of the spectrum."""
    rng = np.random.default_rng(size)
    D, m_lab = size + 10, size - 2
    Z = rng.normal(size=(m_lab + 20, D))
    lab = np.arange(m_lab)
    Z[m_lab] = Z[0]  # a copy of a labeled row
    Z[m_lab + 2] = Z[m_lab + 1]  # an identical pair in the pool
    groups = np.array([[m_lab, m_lab + 5], [m_lab + 1, m_lab + 2], [m_lab + 3, m_lab + 4]])
    lam, spectra = gpu(Z, lab, groups, return_all=True)
    lam, spectra = to_numpy(lam), to_numpy(spectra)
    want, want_spectra = gram_min_eig_ref(Z, lab, groups)
    lmax = want_spectra[:, -1]
    assert_eigs_close(lam, want, lmax)
    assert_eigs_close(lam, cpu(Z, lab, groups), lmax)
    assert (spectra[:2, 0] <= 1e-10 * lmax[:2]).all()
    assert spectra[2, 0] > 1e-6 * lmax[2]
    assert (lam[:2] >= spectra[:2, 1] * (1 - 1e-9)).all()


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_zero_rows_and_all_zero_matrices(backend):
    Z = np.zeros((6, 3))
    Z[1] = [1.0, 2.0, 2.0]
    lam, spectra = gpu(Z, [0], [[2], [1], [3]], backend, return_all=True)
    lam, spectra = to_numpy(lam), to_numpy(spectra)
    assert lam[0] == 0.0  # no positive eigenvalue: exactly 0.0
    assert lam[2] == 0.0
    assert_allclose(lam[1], 9.0, rtol=1e-14)
    assert_array_equal(spectra[0], [0.0, 0.0])
    assert_allclose(spectra[1], [0.0, 9.0], rtol=1e-14, atol=1e-14)
    assert_array_equal(to_numpy(gpu(Z, None, [[0, 2, 3, 4]], backend)), [0.0])  # D side, all zero


def test_rtol_sets_the_zero_threshold():
    Z, lab, grp = THRESHOLD_Z, THRESHOLD_LAB, THRESHOLD_GROUPS
    for rtol, want in THRESHOLD_CASES:
        got = to_numpy(gpu(Z, lab, grp, rtol=rtol))
        assert_allclose(got, [want], rtol=1e-12, atol=16 * EPS, err_msg=f"rtol={rtol}")
        assert_eigs_close(got, cpu(Z, lab, grp, rtol=rtol), [4.0])


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_labeled_and_single_member_groups(backend, dtype):
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(50, 6))
    groups = rng.choice(50, size=(10, 1), replace=False)
    Zs = stored(Z, dtype)
    for labeled in (None, [], "empty-device"):
        lab = on_device(np.empty(0, np.int64), backend) if labeled == "empty-device" else labeled
        lam, spectra = fastal.gram_min_eig(
            on_device(Z, backend, dtype), lab, on_device(groups, backend), return_all=True
        )
        assert tuple(spectra.shape) == (10, 1)  # 1 x 1 matrices
        assert_allclose(to_numpy(lam), (Zs[groups[:, 0]] ** 2).sum(1), rtol=1e-13)
        assert_allclose(to_numpy(spectra)[:, 0], to_numpy(lam), rtol=1e-13)
    groups = np.stack([rng.choice(50, size=4, replace=False) for _ in range(10)])
    lam = gpu(Z, None, groups, backend, dtype)
    want, spectra = gram_min_eig_ref(Zs, None, groups)
    assert_eigs_close(lam, want, spectra[:, -1])


# ---------------------------------------------------------------------------------------------
# memory paths, batches, determinism


def run_path(
    Z, lab, groups, smem_limit: int, return_all: bool = True, small_max: int = 0,
    warp_max: int = -1,
):  # fmt: skip
    """The CUDA branch directly, with the shared memory for the matrix capped at smem_limit;
    small_max = 0 (the default here) sends every order to the block path, 32 every order up to 32
    to the per-thread path, -1 lets the kernel choose; warp_max = 32 (with small_max = 0) sends
    every order up to 32 to the one-warp path."""
    from fastal import _interop
    from fastal._gram_cuda import gram_min_eig_cuda

    torch = pytest.importorskip("torch")
    Zd = torch.from_numpy(np.ascontiguousarray(Z)).to("cuda")
    info = _interop.describe(Zd, "Z")
    lab = np.asarray([] if lab is None else lab, dtype=np.int64)
    groups = np.ascontiguousarray(groups, dtype=np.int64)
    rtol = max(lab.size + groups.shape[1], Z.shape[1]) * EPS
    out = gram_min_eig_cuda(
        Zd, info, lab, groups, rtol, return_all, smem_limit=smem_limit, small_max=small_max,
        warp_max=warp_max,
    )  # fmt: skip
    return tuple(to_numpy(o) for o in out) if return_all else to_numpy(out)


@pytest.mark.parametrize("side", ["S", "D"])
@pytest.mark.parametrize("size", [2, 17, 64, 130, 166])
def test_memory_paths_give_the_same_bits(size, side):
    """Matrix in shared memory (auto, for these orders on an H100), matrix in global memory with
    the vectors in shared memory, and everything in global memory: the same operations."""
    Z, lab, groups = make_case(size, side, 24)
    auto = run_path(Z, lab, groups, -1)
    for limit in (vector_bytes(size), 0):
        got = run_path(Z, lab, groups, limit)
        assert_array_equal(got[0], auto[0])
        assert_array_equal(got[1], auto[1])
    want, want_spectra = reference_of(size, side, 24, "float64")
    assert_eigs_close(auto[0], want, want_spectra[:, -1])


@pytest.mark.parametrize("side", ["S", "D"])
@pytest.mark.parametrize("size", [1, 2, 5, 9, 16, 17, 24, 31, 32])
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_path_matches_block_path_and_cpu(dtype, size, side):
    """Orders <= 32 may run one matrix per thread: the same eigenvalues as the block path and the
    CPU kernel, to rounding (the two GPU paths reduce in different orders); the default choice
    (by order and number of groups) is one of the three."""
    Z, lab, groups = make_case(size, side, 40)
    want, want_spectra = reference_of(size, side, 40, dtype)
    lmax = want_spectra[:, -1]
    Zs = Z.astype(dtype)
    small = run_path(Zs, lab, groups, -1, small_max=32)
    block = run_path(Zs, lab, groups, -1, small_max=0)
    cpu_lam, cpu_spectra = cpu(
        Z,
        lab,
        groups,
        dtype,
        return_all=True,
        rtol=max(len(lab) + groups.shape[1], Z.shape[1]) * EPS,
    )
    for lam, spectra in (small, block):
        assert_eigs_close(lam, cpu_lam, lmax)
        assert_eigs_close(lam, want, lmax)
        assert_eigs_close(spectra, cpu_spectra, lmax)
        assert (np.diff(spectra, axis=1) >= 0).all()
        assert (spectra >= 0).all()
    assert_array_equal(run_path(Zs, lab, groups, -1, return_all=False, small_max=32), small[0])
    default = run_path(Zs, lab, groups, -1, small_max=-1)[0]
    warp = run_path(Zs, lab, groups, -1, small_max=0, warp_max=32)[0]
    assert any((default == path).all() for path in (small[0], block[0], warp))
    assert_array_equal(run_path(Zs, lab, groups, -1, small_max=size)[0], small[0])
    assert_array_equal(run_path(Zs, lab, groups, -1, small_max=size - 1)[0], block[0])


@pytest.mark.parametrize("side", ["S", "D"])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 9, 16, 17, 24, 31, 32])
@pytest.mark.parametrize("dtype", DTYPES)
def test_warp_path_matches_cpu_and_the_other_paths(dtype, size, side):
    """One warp per matrix (orders <= 32, each kCols instantiation: 8, 16, 32): the eigenvalues
    and spectra of the CPU kernel and of the float64 reference to rounding, the same bits with and
    without return_all, and the forced choice by order."""
    Z, lab, groups = make_case(size, side, 40)
    want, want_spectra = reference_of(size, side, 40, dtype)
    lmax = want_spectra[:, -1]
    Zs = Z.astype(dtype)
    warp = run_path(Zs, lab, groups, -1, small_max=0, warp_max=32)
    rtol = max(len(lab) + groups.shape[1], Z.shape[1]) * EPS
    cpu_lam, cpu_spectra = cpu(Z, lab, groups, dtype, return_all=True, rtol=rtol)
    assert_eigs_close(warp[0], cpu_lam, lmax)
    assert_eigs_close(warp[0], want, lmax)
    assert_eigs_close(warp[1], cpu_spectra, lmax)
    assert (np.diff(warp[1], axis=1) >= 0).all()
    assert (warp[1] >= 0).all()
    lam_only = run_path(Zs, lab, groups, -1, return_all=False, small_max=0, warp_max=32)
    assert_array_equal(lam_only, warp[0])
    assert_array_equal(run_path(Zs, lab, groups, -1, small_max=0, warp_max=size)[0], warp[0])
    block = run_path(Zs, lab, groups, -1, small_max=0, warp_max=size - 1)[0]
    assert_array_equal(block, run_path(Zs, lab, groups, -1, small_max=0)[0])


def test_warp_path_loops_over_more_groups_than_warps():
    """The one-warp path launches the resident blocks only and loops: 150,000 groups of order 3
    (D side) and 20,000 of order 16 (S side) agree with the CPU kernel."""
    rng = np.random.default_rng(4)
    Z = rng.normal(size=(5000, 3))
    groups = np.stack([rng.permutation(5000)[:4] for _ in range(8)])  # distinct within a row
    groups = np.concatenate([groups, rng.integers(0, 5000, size=(150_000, 1)).repeat(4, 1)])
    groups[8:, 1:] = (groups[8:, 1:] + np.arange(1, 4)) % 5000
    lam = run_path(Z, None, groups, -1, return_all=False, small_max=0, warp_max=32)
    want = cpu(Z, None, groups, rtol=4 * EPS)
    assert_allclose(lam, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    Z = rng.normal(size=(8 + 20_000 * 8, 32)).astype(np.float32)
    lab = np.arange(8)
    groups = (8 + rng.permutation(20_000 * 8)).reshape(20_000, 8)
    lam = run_path(Z, lab, groups, -1, return_all=False, small_max=0, warp_max=32)
    want = cpu(Z, lab, groups, "float32", rtol=32 * EPS)
    assert_allclose(lam, want, rtol=1e-7)


@pytest.mark.parametrize(("D", "G"), [(16, 20), (5, 37), (32, 9), (1, 3)])
def test_warp_path_d_side_with_many_group_rows(D, G):
    """The D side stages the group's rows 8 at a time: G past one stage, and not a multiple."""
    rng = np.random.default_rng(D * 100 + G)
    n_groups, m_lab = 300, D + 2
    Z = rng.normal(size=(m_lab + n_groups * G, D))
    lab = np.arange(m_lab)
    groups = (m_lab + rng.permutation(n_groups * G)).reshape(n_groups, G)
    lam, spectra = run_path(Z, lab, groups, -1, small_max=0, warp_max=32)
    want, want_spectra = cpu(Z, lab, groups, return_all=True, rtol=(m_lab + G) * EPS)
    lmax = want_spectra[:, -1]
    assert_eigs_close(lam, want, lmax)
    assert_eigs_close(spectra, want_spectra, lmax)


def test_small_path_loops_over_more_groups_than_slots():
    """The per-thread path bounds its slots (threads resident at once, 1 GiB of workspace) and
    loops over the groups: 150,000 groups of order 3 agree with the CPU kernel."""
    rng = np.random.default_rng(4)
    Z = rng.normal(size=(5000, 3))
    groups = np.stack([rng.permutation(5000)[:4] for _ in range(8)])  # distinct within a row
    groups = np.concatenate([groups, rng.integers(0, 5000, size=(150_000, 1)).repeat(4, 1)])
    groups[8:, 1:] = (groups[8:, 1:] + np.arange(1, 4)) % 5000
    lam = run_path(Z, None, groups, -1, return_all=False, small_max=32)
    want = cpu(Z, None, groups, rtol=4 * EPS)
    assert_allclose(lam, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


def test_more_groups_than_resident_blocks():
    """The global path bounds its blocks (GPU residency, 1 GiB of workspace) and loops over the
    groups: 3000 groups, more than fit at once, agree with the shared-memory path and the CPU."""
    Z, lab, groups = make_case(64, "D", 3000, seed=5)
    auto = run_path(Z, lab, groups, -1, return_all=False)
    looped = run_path(Z, lab, groups, 0, return_all=False)
    assert_array_equal(looped, auto)
    want, want_spectra = cpu(Z, lab, groups, return_all=True)
    assert_eigs_close(auto, want, want_spectra[:, -1])


@pytest.mark.parametrize("size", [30, 200])
def test_scores_do_not_depend_on_the_batch(size):
    """Each group is solved by one block alone: same bits whatever the batch or its order."""
    Z, lab, groups = make_case(size, "S", 64, seed=11)
    lam = to_numpy(gpu(Z, lab, groups))
    order = np.random.default_rng(0).permutation(64)
    assert_array_equal(to_numpy(gpu(Z, lab, groups[order])), lam[order])
    assert_array_equal(to_numpy(gpu(Z, lab, groups[5:6])), lam[5:6])
    shared = np.repeat(groups[:1], 3, axis=0)  # groups may share indices
    assert_array_equal(to_numpy(gpu(Z, lab, shared)), np.repeat(lam[:1], 3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_index_inputs_of_any_kind(dtype):
    torch = pytest.importorskip("torch")
    Z, lab, groups = make_case(17, "S", 5)
    want = to_numpy(gpu(Z, lab, groups, dtype=dtype))
    Zd = on_device(Z, "torch-cuda", dtype)
    for lab_in, grp_in in [
        (lab.tolist(), groups.tolist()),
        (torch.from_numpy(lab.astype(np.int32)).cuda(), torch.from_numpy(groups).cuda()),
    ]:
        assert_array_equal(to_numpy(fastal.gram_min_eig(Zd, lab_in, grp_in)), want)


# ---------------------------------------------------------------------------------------------
# framework, device, stream, scaling


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_outputs_in_the_input_framework(backend):
    Z, lab, groups = make_case(17, "D", 5)
    Zd = on_device(Z, backend, "float32")
    lam, spectra = fastal.gram_min_eig(
        Zd, on_device(lab, backend), on_device(groups, backend), return_all=True
    )
    for out in (lam, spectra):
        assert backend_of(out) == backend
        assert dtype_of(out) == "float64"
        if backend == "torch-cuda":
            assert out.device == Zd.device
        else:
            assert out.device.id == Zd.device.id
    assert tuple(lam.shape) == (5,)
    assert tuple(spectra.shape) == (5, 17)


def test_non_contiguous_torch_input():
    torch = pytest.importorskip("torch")
    Z, lab, groups = make_case(40, "S", 6)
    wide = np.repeat(Z, 2, axis=1)
    view = torch.from_numpy(wide).cuda()[:, ::2]
    assert not view.is_contiguous()
    got = fastal.gram_min_eig(view, lab.tolist(), groups.tolist())
    assert_array_equal(to_numpy(got), to_numpy(gpu(Z, lab, groups)))


def test_non_default_torch_stream():
    """Z is produced on a side stream behind a long sleep; the call runs on that (current)
    stream, so it must see the finished Z, and its outputs are ready once the stream syncs."""
    torch = pytest.importorskip("torch")
    Z, lab, groups = make_case(100, "D", 50, seed=7)
    host = torch.from_numpy(Z).pin_memory()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)
        Zd = host.to("cuda", non_blocking=True) * 1.0
        lam = fastal.gram_min_eig(Zd, lab.tolist(), groups.tolist())
    side.synchronize()
    assert_array_equal(to_numpy(lam), to_numpy(gpu(Z, lab, groups)))


def test_non_default_cupy_stream():
    cupy = pytest.importorskip("cupy")
    Z, lab, groups = make_case(100, "S", 50, seed=8)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        Zd = cupy.asarray(Z) * 1.0
        lam = fastal.gram_min_eig(Zd, lab.tolist(), groups.tolist())
    stream.synchronize()
    assert_array_equal(to_numpy(lam), to_numpy(gpu(Z, lab, groups)))


def test_power_of_two_scaling_is_exact():
    Z, lab, groups = make_case(30, "D", 4, seed=12)
    lam, spectra = (to_numpy(o) for o in gpu(Z, lab, groups, return_all=True))
    for k in (250, -250, 20):  # ±250: rescaled on the device (peak beyond 2^±240); 20: as is
        lam_k, spec_k = (to_numpy(o) for o in gpu(Z * 2.0**k, lab, groups, return_all=True))
        assert_allclose(lam_k, lam * 2.0 ** (2 * k), rtol=1e-14)
        assert_allclose(spec_k, spectra * 2.0 ** (2 * k), rtol=1e-13, atol=1e-13 * 2.0 ** (2 * k))


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_rejects_non_finite(backend, dtype, bad):
    Z, lab, groups = make_case(17, "S", 3, seed=1)
    Z = Z.copy()
    Z[17, 2] = bad
    with pytest.raises(ValueError, match=r"^Z contains NaN or Inf in 1 row\(s\), first in row 17"):
        gpu(Z, lab, groups, backend, dtype)
    Z[5, 0] = bad
    with pytest.raises(ValueError, match=r"^Z contains NaN or Inf in 2 row\(s\), first in row 5"):
        gpu(Z, lab, groups, backend, dtype)


def test_rejects_bad_dtypes_and_host_indices():
    torch = pytest.importorskip("torch")
    Z, lab, groups = make_case(17, "S", 3)
    Zd = torch.from_numpy(Z).cuda()
    with pytest.raises(TypeError, match=r"^Z must have dtype float32, float64 on cuda"):
        fastal.gram_min_eig(Zd.half(), lab.tolist(), groups.tolist())
    with pytest.raises(ValueError, match=r"^labeled is on numpy \(cpu\)"):
        fastal.gram_min_eig(Zd, lab, groups.tolist())
    with pytest.raises(ValueError, match=r"^groups is on numpy \(cpu\)"):
        fastal.gram_min_eig(Zd, lab.tolist(), groups)
    with pytest.raises(ValueError, match=r"groups overlaps labeled"):
        fastal.gram_min_eig(Zd, lab.tolist(), [[int(lab[0])] * groups.shape[1]])


def test_scan_checks_groups_like_the_host_build():
    """gram_scan's device check of groups flags the rows its host build flags (range, overlap
    with the sorted labeled set, duplicates), counted with the first such row, in the same
    synchronisation as the NaN scan of Z."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    n, G = 500, 6
    lab = np.sort(rng.choice(n, 40, replace=False))
    free = np.setdiff1d(np.arange(n), lab)
    groups = np.stack([rng.choice(free, G, replace=False) for _ in range(3000)])
    for row, col, value in [(7, 0, n), (100, 5, -3), (2999, 2, int(lab[4])), (1500, 3, None)]:
        groups[row, col] = groups[row, 0] if value is None else value
    want = fastal._ext.cpu.gram_groups_valid(groups, n, lab)
    assert (~want).sum() == 4
    Z = torch.zeros((n, 3), dtype=torch.float64, device="cuda")
    Z[11, 1] = float("nan")
    grpd, labd = torch.from_numpy(groups).cuda(), torch.from_numpy(lab).cuda()
    stream = torch.cuda.current_stream().cuda_stream
    _, count, first, bad, first_bad = fastal._ext.cuda.gram_scan(
        "float64", Z.data_ptr(), n, 3, 0, stream, grpd.data_ptr(), 3000, G, labd.data_ptr(), 40
    )
    assert (count, first, bad, first_bad) == (1, 11, 4, 7)
    ok = torch.from_numpy(groups[want]).cuda()
    out = fastal._ext.cuda.gram_scan(
        "float64", Z.data_ptr(), n, 3, 0, stream, ok.data_ptr(), int(want.sum()), G,
        labd.data_ptr(), 40,
    )  # fmt: skip
    assert out[3:] == (0, -1)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_device_groups_are_checked_in_place(backend):
    """int64 device groups are checked on the device and used without a copy; bad ones raise the
    host check's messages; other index kinds still take the host path."""
    Z, lab, groups = make_case(17, "S", 3)
    n = Z.shape[0]
    Zd = on_device(Z, backend, "float64")
    info = fastal._interop.describe(Zd, "Z")
    g = on_device(groups, backend)
    got, checked = fastal.gram._check_groups(g, n, lab, info)
    assert got is g
    assert not checked
    g32 = on_device(groups.astype(np.int32), backend)
    got, checked = fastal.gram._check_groups(g32, n, lab, info)
    assert isinstance(got, np.ndarray)
    assert checked
    labd = on_device(lab, backend)
    for value, match in [
        (n, r"^groups has indices out of range"),
        (-1, r"^groups has indices out of range"),
        (int(lab[0]), r"^groups overlaps labeled"),
        (int(groups[1, 1]), r"^groups\[1\] holds index .* twice"),
    ]:
        bad = groups.copy()
        bad[1, 0] = value
        with pytest.raises(ValueError, match=match):
            fastal.gram_min_eig(Zd, labd, on_device(bad, backend))
    want, spectra = cpu(Z, lab, groups, return_all=True)
    assert_eigs_close(fastal.gram_min_eig(Zd, labd, g), want, spectra[:, -1])


def test_methods_on_cuda():
    """Below order 512 "auto" is the CUDA kernel (the tridiagonal method)."""
    Z, lab, groups = make_case(64, "D", 6)
    lam = to_numpy(gpu(Z, lab, groups))
    assert_array_equal(to_numpy(gpu(Z, lab, groups, method="tridiagonal")), lam)


@pytest.mark.parametrize("side", ["S", "D"])
@pytest.mark.parametrize("size", [12, 64, 200])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_lowrank_on_cuda_matches_cpu(backend, dtype, size, side):
    """method="lowrank" on CUDA (batched torch on the device) against the CPU's low-rank kernel,
    the CUDA kernel and the reference; in the input's framework, float64."""
    Z, lab, groups = make_case(size, side, 24, seed=3)
    want, want_spectra = reference_of(size, side, 24, dtype, seed=3)
    lmax = want_spectra[:, -1]
    got = gpu(Z, lab, groups, backend, dtype, method="lowrank")
    assert backend_of(got) == backend
    assert dtype_of(got) == "float64"
    assert_eigs_close(got, want, lmax)
    assert_eigs_close(got, cpu(Z, lab, groups, dtype, method="lowrank"), lmax)
    kernel = gpu(Z, lab, groups, backend, dtype, method="tridiagonal")
    assert_eigs_close(got, to_numpy(kernel), lmax)


def test_auto_takes_lowrank_from_order_512():
    """From fastal.gram.CUDA_LOWRANK_MIN_ORDER on, "auto" takes the low-rank route when its
    operation count is lower (return_all still needs the kernel); rescaled inputs too."""
    Z, lab, groups = make_case(600, "D", 6, seed=2)
    auto = to_numpy(gpu(Z, lab, groups))
    assert_array_equal(auto, to_numpy(gpu(Z, lab, groups, method="lowrank")))
    lam, spectra = gpu(Z, lab, groups, return_all=True)
    assert_eigs_close(auto, to_numpy(lam), to_numpy(spectra)[:, -1])
    big = to_numpy(gpu(Z * 2.0**300, lab, groups, method="lowrank"))
    assert_allclose(big, auto * 2.0**600, rtol=1e-12)
    with pytest.raises(ValueError, match=r"groups overlaps labeled"):
        gpu(Z, lab, np.concatenate([groups[:, :-1], lab[:6, None]], 1), method="lowrank")
    # groups of more than 32 rows stay with the kernel (one eigvalsh call per matrix there)
    free = np.setdiff1d(np.arange(Z.shape[0]), lab)
    rng = np.random.default_rng(0)
    wide = np.stack([rng.choice(free, 40, replace=False) for _ in range(6)])
    assert fastal.gram._cheaper_method(len(lab), 40, Z.shape[1], 6, False) == "lowrank"
    assert_array_equal(
        to_numpy(gpu(Z, lab, wide)), to_numpy(gpu(Z, lab, wide, method="tridiagonal"))
    )


def binding_args(Z, lab, groups, lam, spectra=None, **change):
    """Keyword arguments of fastal._cuda.gram_min_eig for torch CUDA tensors."""
    import torch

    args = dict(
        dtype="float64", z_ptr=Z.data_ptr(), n=Z.shape[0], d=Z.shape[1],
        labeled_ptr=lab.data_ptr() if lab.numel() else 0, n_labeled=lab.numel(),
        groups_ptr=groups.data_ptr(), n_groups=groups.shape[0], G=groups.shape[1], rtol=1e-12,
        min_eig_ptr=lam.data_ptr(), spectra_ptr=0 if spectra is None else spectra.data_ptr(),
        device=Z.device.index, stream=torch.cuda.current_stream().cuda_stream,
    )  # fmt: skip
    args.update(change)
    return args


def test_binding_writes_every_output():
    torch = pytest.importorskip("torch")
    Z, lab, groups = make_case(40, "D", 7)
    Zd, labd, grpd = (torch.from_numpy(a).cuda() for a in (Z, lab, groups))
    lam = torch.full((7,), -7.0, dtype=torch.float64, device="cuda")
    spectra = torch.full((7, 40), float("nan"), dtype=torch.float64, device="cuda")
    fastal._ext.cuda.gram_min_eig(**binding_args(Zd, labd, grpd, lam, spectra))
    torch.cuda.synchronize()
    want, want_spectra = cpu(Z, lab, groups, rtol=1e-12, return_all=True)
    assert_eigs_close(lam, want, want_spectra[:, -1])
    assert_eigs_close(spectra, want_spectra, want_spectra[:, -1])


def test_binding_rejects_bad_arguments():
    torch = pytest.importorskip("torch")
    Z, lab, groups = make_case(17, "S", 3)
    Zd, labd, grpd = (torch.from_numpy(a).cuda() for a in (Z, lab, groups))
    lam = torch.empty(3, dtype=torch.float64, device="cuda")
    call = fastal._ext.cuda.gram_min_eig
    for change, match in [
        (dict(rtol=-1.0), r"^rtol must be in \[0, 1\)"),
        (dict(rtol=1.0), r"^rtol must be in \[0, 1\)"),
        (dict(rtol=float("nan")), r"^rtol must be in \[0, 1\)"),
        (dict(G=0), r"^G must be >= 1"),
        (dict(n_labeled=-1), r"^n_labeled must be in"),
        (dict(n=0), r"^n must be >= 1"),
        (dict(dtype="float16"), r"^dtype must be 'float32' or 'float64'"),
        (dict(z_ptr=0), r"^z_ptr is a null pointer"),
        (dict(groups_ptr=0), r"^groups_ptr is a null pointer"),
        (dict(min_eig_ptr=0), r"^min_eig_ptr is a null pointer"),
    ]:
        with pytest.raises(ValueError, match=match):
            call(**binding_args(Zd, labd, grpd, lam, **change))
    scan = fastal._ext.cuda.gram_scan
    with pytest.raises(ValueError, match=r"^dtype must be 'float32' or 'float64'"):
        scan("bfloat16", Zd.data_ptr(), 5, 5, Zd.device.index, 0)
    with pytest.raises(ValueError, match=r"^n_groups must be >= 0, got -1"):
        scan("float64", Zd.data_ptr(), 5, 5, Zd.device.index, 0, grpd.data_ptr(), -1, 2)
    with pytest.raises(ValueError, match=r"^G must be >= 1, got 0"):
        scan("float64", Zd.data_ptr(), 5, 5, Zd.device.index, 0, grpd.data_ptr(), 3, 0)
    with pytest.raises(ValueError, match=r"^groups_ptr is a null pointer"):
        scan("float64", Zd.data_ptr(), 5, 5, Zd.device.index, 0, 0, 3, 2)


def test_binding_out_of_range_indices_give_nan():
    """The compiled kernel never reads outside Z: a bad group index makes that group NaN, a bad
    labeled index every group; the context stays usable."""
    torch = pytest.importorskip("torch")
    Z, lab, groups = make_case(17, "S", 3)
    n = Z.shape[0]
    Zd = torch.from_numpy(Z).cuda()
    bad_groups = groups.copy()
    bad_groups[1, 0] = n
    lam = torch.empty(3, dtype=torch.float64, device="cuda")
    args = binding_args(Zd, torch.from_numpy(lab).cuda(), torch.from_numpy(bad_groups).cuda(), lam)
    fastal._ext.cuda.gram_min_eig(**args)
    got = to_numpy(lam)
    assert np.isnan(got[1])
    want = cpu(Z, lab, groups, rtol=1e-12)
    assert_allclose(got[[0, 2]], want[[0, 2]], rtol=1e-9)
    bad_lab = lab.copy()
    bad_lab[0] = -1
    # order 17: the per-thread path, the one-warp path, then the block path
    for small_max, warp_max in ((32, -1), (0, 32), (0, -1)):
        args = binding_args(Zd, torch.from_numpy(lab).cuda(), torch.from_numpy(bad_groups).cuda(),
                            lam, small_max=small_max, warp_max=warp_max)  # fmt: skip
        fastal._ext.cuda.gram_min_eig(**args)
        got = to_numpy(lam)
        assert np.isnan(got[1])
        assert_allclose(got[[0, 2]], want[[0, 2]], rtol=1e-9)
        args = binding_args(Zd, torch.from_numpy(bad_lab).cuda(), torch.from_numpy(groups).cuda(),
                            lam, small_max=small_max, warp_max=warp_max)  # fmt: skip
        fastal._ext.cuda.gram_min_eig(**args)
        assert np.isnan(to_numpy(lam)).all()
    assert_allclose(to_numpy(gpu(Z, lab, groups, rtol=1e-12)), want, rtol=1e-9)  # still fine


@pytest.mark.parametrize("kind", ["bias", "columns"])
@pytest.mark.parametrize("exponent", [-255, -300, -520, -1000])
def test_columns_far_below_the_diagonal_cuda(kind, exponent):
    """The block kernel's reflector is normalised as the CPU's (v[0] = 1): beta² no longer
    overflows when a column is far below the diagonal (test_gram.py's case)."""
    from test_gram import wide_range_case

    Z, lab, groups = wide_range_case(kind, exponent)
    want, _ = gram_min_eig_ref(Z, lab, groups)
    assert_allclose(to_numpy(gpu(Z, lab, groups, method="tridiagonal")), want, rtol=1e-10)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("return_all", [False, True])
def test_16_bit_z_is_read_as_its_float32_copy_cuda(backend, return_all):
    """float16 Z on the device: widened to float32 there, results in the caller's framework."""
    from test_gram import make_case

    Z, lab, groups = make_case(40, 6, 3, 2, 3, seed=4)
    got = gpu(Z, lab, groups, backend, "float16", return_all=return_all)
    want = gpu(Z.astype(np.float16), lab, groups, backend, "float32", return_all=return_all)
    for g, w in zip(got, want, strict=True) if return_all else [(got, want)]:
        assert backend_of(g) == backend_of(w)
        assert_array_equal(to_numpy(g), to_numpy(w))


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_16_bit_z_with_device_groups_on_the_lowrank_route_cuda(backend):
    """float16 Z goes to torch as float32; cupy groups must follow it there (the low-rank route
    reads them as a torch tensor: a cupy array has no .detach())."""
    from test_gram import make_case

    Z, lab, groups = make_case(40, 6, 3, 2, 3, seed=4)
    got = gpu(Z, lab, groups, backend, "float16", method="lowrank")
    want = gpu(Z.astype(np.float16), lab, groups, backend, "float32", method="lowrank")
    assert backend_of(got) == backend_of(want)
    assert_array_equal(to_numpy(got), to_numpy(want))


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("return_all", [False, True])
def test_tiny_rows_beside_ordinary_ones_get_their_own_scale_cuda(backend, return_all):
    """Groups of rows near 2^-510 beside ordinary rows: computed again on their own rows,
    rescaled, as on the CPU (one fits float64, one scores 0)."""
    Z = np.random.default_rng(0).normal(size=(20, 5))
    Z[1:8] *= 2.0**-510
    lab, groups = [7], [[1, 2, 3], [4, 5, 6], [8, 9, 10]]
    got = gpu(Z, lab, groups, backend, return_all=return_all)
    want = cpu(Z, lab, groups, return_all=return_all)
    lmax = cpu(Z, lab, groups, return_all=True)[1][:, -1]
    for g, w in zip(got, want, strict=True) if return_all else [(got, want)]:
        assert backend_of(g) == backend
        assert_eigs_close(g, w, lmax)
    mins = to_numpy(got[0] if return_all else got)
    assert mins[0] == 0.0
    assert mins[1] > 0.0


def test_a_subnormal_peak_is_refused_cuda():
    Z = np.zeros((10, 3))
    Z[:, 0] = 2.0**-1030
    with pytest.raises(ValueError, match="do not fit float64"):
        gpu(Z, [0], [[1, 2], [3, 4]])
