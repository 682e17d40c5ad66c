"""The fused CPU Lloyd step of ``fastal.kmeans`` (csrc/cpu/kmeans_lloyd.cpp): GEMM per chunk of
rows from torch's MKL or scipy's OpenBLAS inside fastal's threads, arg-min and float64 sums in the
same pass. It runs for float32 / float64 CPU input with ``k >= 32``; the tests in test_kmeans.py
use smaller ``k`` (the min-distance kernel), these use larger ones, against the float64 Lloyd
reference, with either BLAS.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from reference import kmeans_pp_ref, lloyd_ref
from test_kmeans import blobs

import fastal
from fastal import _blas, _ext, _lloyd, _lloyd_fused


def use_blas(monkeypatch, blas: str) -> None:
    """Force the MKL (skip if torch has none) or the OpenBLAS backend of the fused step."""
    if blas == "mkl":
        if not _blas._mkl_gemm("float64")[0]:
            pytest.skip("torch exposes no MKL GEMM on this platform")
        backend = _blas._mkl_gemm
    else:

        def backend(dtype):
            return _blas._openblas_gemm(dtype), 0

    monkeypatch.setattr(_lloyd_fused, "_gemm_backend", backend)


def integer_pool(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """Small-integer rows: every product and sum in the GEMM is exact, so any BLAS and the
    reference agree bit for bit, ties included."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(-20, 21, size=(k, d))
    return (centres[rng.integers(0, k, n)] + rng.integers(-2, 3, size=(n, d))).astype(np.float64)


@pytest.mark.parametrize("blas", ["mkl", "openblas"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("tol", [1e-4, 0.0])
def test_matches_lloyd_reference(monkeypatch, blas, dtype, tol):
    use_blas(monkeypatch, blas)
    X = integer_pool(3000, 12, 40, seed=1)
    init = X[kmeans_pp_ref(X, 40, 0)]
    res = fastal.kmeans(X.astype(dtype), 40, init=init.astype(dtype), tol=tol)
    ref = lloyd_ref(X, init, 300, tol)
    assert_array_equal(res.labels, ref["labels"])
    assert_allclose(res.centres, ref["centres"], rtol=1e-6 if dtype == "float32" else 1e-12)
    assert_allclose(res.inertia, ref["inertia"], rtol=1e-6 if dtype == "float32" else 1e-12)
    assert res.n_iter == ref["n_iter"]
    assert res.converged == ref["converged"]


@pytest.mark.parametrize("blas", ["mkl", "openblas"])
def test_gaussian_blobs_float32(monkeypatch, blas):
    use_blas(monkeypatch, blas)
    X = blobs(5000, 32, 50, seed=2).astype(np.float32)
    init = X[kmeans_pp_ref(X.astype(np.float64), 50, 1)]
    res = fastal.kmeans(X, 50, init=init, tol=0.0, max_iter=20)
    ref = lloyd_ref(X.astype(np.float64), init.astype(np.float64), 20, 0.0)
    assert (np.asarray(res.labels) == ref["labels"]).mean() > 0.999
    assert_allclose(res.inertia, ref["inertia"], rtol=1e-4)


def test_fused_step_equals_the_separate_passes():
    """One fused step against the torch GEMM assignment and the segmented-sum kernel."""
    X = integer_pool(2000, 20, 64, seed=3).astype(np.float32)
    info = fastal._validate.check_matrix(X, "X")
    xt = torch.from_numpy(X)
    centres = xt[:64].clone()
    xsq = _lloyd._row_sqnorms(xt, torch.float32)
    step = _lloyd_fused._fused_lloyd(info, 64)
    assert step is not None
    labels, dist2, sums, counts = step(xt, xsq, centres)
    want_labels, want_dist2 = _lloyd._assign(xt, centres, info, xsq)
    want_sums, want_counts = _lloyd._segment_means(xt, want_labels, 64)
    assert_array_equal(labels.numpy(), want_labels.numpy())
    assert_allclose(dist2.numpy(), want_dist2.numpy(), rtol=1e-6, atol=1e-3)
    assert_array_equal(sums.numpy(), want_sums.numpy())
    assert_array_equal(counts.numpy(), want_counts.numpy())
    assert counts.sum() == 2000


def test_when_the_fused_step_runs():
    X = np.zeros((100, 8), dtype=np.float32)
    info = fastal._validate.check_matrix(X, "X")
    assert _lloyd_fused._fused_lloyd(info, 32) is not None
    assert _lloyd_fused._fused_lloyd(info, 31) is None  # small k: the min-distance kernel
    half = fastal._validate.check_matrix(X.astype(np.float16), "X")
    assert _lloyd_fused._fused_lloyd(half, 64) is not None  # widened to float32 in the kernel
    # however large k x d: past a size the kernel adds the rows in a second pass (test_lloyd_sums)
    wide = fastal._validate.check_matrix(np.zeros((4, 4096), dtype=np.float32), "X")
    assert _lloyd_fused._fused_lloyd(wide, 20_000) is not None


@pytest.mark.parametrize("blas", ["mkl", "openblas"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [16, 23, 256, 256 * 3 + 13])
def test_step_ties_go_to_the_lowest_centre(monkeypatch, blas, dtype, n):
    """Every centre appears twice (and the last pair three times): each row is equally close to
    the copies, so the arg-min must give the first; n covers whole and partial SIMD groups of
    rows and a partial last chunk. Exact against a float64 numpy reference."""
    use_blas(monkeypatch, blas)
    rng = np.random.default_rng(n)
    base = rng.integers(-4, 5, size=(20, 6)).astype(np.float64)
    centres = np.repeat(base, 2, axis=0)
    centres = np.vstack([centres, base[-1:]])  # 41 centres: 38, 39 and 40 are copies
    X = rng.integers(-6, 7, size=(n, 6)).astype(np.float64)
    d2 = ((X[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    info = fastal._validate.check_matrix(X.astype(dtype), "X")
    xt = torch.from_numpy(X.astype(dtype))
    step = _lloyd_fused._fused_lloyd(info, centres.shape[0])
    assert step is not None
    xsq = _lloyd._row_sqnorms(xt, xt.dtype)
    labels, dist2, sums, counts = step(xt, xsq, torch.from_numpy(centres.astype(dtype)))
    assert_array_equal(labels.numpy(), d2.argmin(1))  # numpy: the first minimum
    assert np.all(labels.numpy() % 2 == 0)
    assert_allclose(dist2.numpy(), d2.min(1), rtol=0, atol=1e-9)
    want_sums = np.zeros_like(centres)
    np.add.at(want_sums, d2.argmin(1), X)
    assert_array_equal(sums.numpy(), want_sums)
    assert_array_equal(counts.numpy(), np.bincount(d2.argmin(1), minlength=centres.shape[0]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_labels_are_direct_distance_arg_mins_under_any_blas(monkeypatch, dtype):
    """Rows near 1e3 with unit gaps: the GEMM form rounds by more than the gaps (its arg-min alone
    put 192 of these float32 rows on a farther centre), so most labels are settled by direct
    distances: the float64 arg-min wherever the two nearest centres are apart by more than float32
    rounding, the same from either BLAS."""
    if not _blas._mkl_gemm("float64")[0]:
        pytest.skip("torch exposes no MKL GEMM on this platform")
    X = (blobs(1500, 16, 40, seed=6) + 1e3).astype(dtype)
    centres = torch.from_numpy(X[:64].copy())
    info = fastal._validate.check_matrix(X, "X")
    xt = torch.from_numpy(X)
    xsq = _lloyd._row_sqnorms(xt, xt.dtype)
    labels = {}
    for blas in ("mkl", "openblas"):
        use_blas(monkeypatch, blas)
        with _blas._one_blas_thread():
            step = _lloyd_fused._fused_lloyd(info, 64)
            labels[blas] = next(iter(step(xt, xsq, centres))).numpy()
    assert_array_equal(labels["mkl"], labels["openblas"])
    d2 = ((X.astype(np.float64)[:, None, :] - centres.numpy().astype(np.float64)[None]) ** 2).sum(
        -1
    )
    part = np.sort(d2, axis=1)
    clear = part[:, 1] - part[:, 0] > 1e-4 * part[:, 0]
    assert clear.mean() > 0.9
    assert_array_equal(labels["mkl"][clear], d2.argmin(1)[clear])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemm_backends_compute_products(dtype):
    import ctypes

    fn_type = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 13))
    openblas = _blas._openblas_gemm(dtype)
    assert openblas
    assert _blas._gemm_works(fn_type(openblas), dtype)
    mkl, local = _blas._mkl_gemm(dtype)
    assert (mkl == 0) == (local == 0)
    assert _blas._gemm_backend(dtype)[0] in (mkl or openblas, openblas)


@pytest.mark.parametrize("amd_avx512", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemm_backend_rule_and_override(monkeypatch, dtype, amd_avx512):
    """MKL where torch links it, OpenBLAS on AMD CPUs with AVX-512 or without MKL; FASTAL_GEMM
    forces one (MKL only where torch links it); a bad value is named."""
    choose = _blas._gemm_backend.__wrapped__  # not the per-process cached answer
    monkeypatch.setattr(_blas, "_amd_with_avx512", lambda: amd_avx512)
    openblas = (_blas._openblas_gemm(dtype), 0)
    mkl = _blas._mkl_gemm(dtype)
    monkeypatch.delenv("FASTAL_GEMM", raising=False)
    assert choose(dtype) == (mkl if mkl[0] and not amd_avx512 else openblas)
    monkeypatch.setenv("FASTAL_GEMM", "openblas")
    assert choose(dtype) == openblas
    monkeypatch.setenv("FASTAL_GEMM", " MKL ")
    assert choose(dtype) == mkl
    monkeypatch.setenv("FASTAL_GEMM", "atlas")
    with pytest.raises(ValueError, match="FASTAL_GEMM"):
        choose(dtype)


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        ("vendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512bw\n\nvendor_id\t: x", True),
        ("vendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512_bf16\n", False),
        ("vendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512f\n", False),
        ("", False),
    ],
)
def test_amd_with_avx512_reads_the_first_cpu(monkeypatch, cpuinfo, expected):
    import builtins
    import io

    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/cpuinfo":
            return io.StringIO(cpuinfo)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    assert _blas._amd_with_avx512() is expected


def test_kernel_rejects_bad_shapes():
    kernel = _ext.cpu.kmeans_lloyd_step_float64
    X = np.zeros((10, 4))
    gemm = _blas._openblas_gemm("float64")
    with pytest.raises(ValueError, match="xsq must have shape"):
        kernel(X, np.zeros(9), np.zeros((3, 4)), gemm, 0)
    with pytest.raises(ValueError, match="centres must have shape"):
        kernel(X, np.zeros(10), np.zeros((3, 5)), gemm, 0)
    with pytest.raises(ValueError, match="gemm_address"):
        kernel(X, np.zeros(10), np.zeros((3, 4)), 0, 0)
