"""min_distance(X, Y): distances and arg-min against the float64 reference, every backend/dtype.

The CPU kernel keeps rows of X hot while tiles of Y (256 KiB in the accumulation type, i.e.
65536 // d rows for float32, 32768 // d for float64) stream by, and goes parallel above
n * m * d = 2**15. With AVX-512 and m >= 8 it works in register blocks of 6 rows x 4 centres,
96 rows per task, whole vectors of 16 (float64: 8) lanes then a masked tail; otherwise in blocks
of 16 rows, one pair at a time. The shapes below straddle all of these boundaries.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    ATOL,
    RTOL,
    assert_argmin_valid,
    assert_indices_like,
    backend_dtype_params,
    backend_of,
    dtype_of,
    indices_to_backend,
    to_backend,
    to_numpy,
    upcast,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from reference import min_distance_ref

import fastal
from fastal import _ext

PARAMS = backend_dtype_params()


def tile_rows(d: int, dtype: str) -> int:
    return max(1, (256 * 1024) // (d * (8 if dtype == "float64" else 4)))


def call(X, Y):
    dist, index = fastal.min_distance(X, Y)
    assert backend_of(dist) == backend_of(X)
    assert_indices_like(index, X, X.shape[0])
    assert dtype_of(dist) == ("float64" if dtype_of(X) == "float64" else "float32")
    assert tuple(dist.shape) == (X.shape[0],)
    return to_numpy(dist), to_numpy(index)


SHAPES = [  # (n, m, d)
    (1, 1, 1),
    (1, 7, 3),
    (9, 1, 5),
    (5, 4, 1),
    (15, 16, 7),
    (16, 17, 8),
    (17, 15, 9),
    (31, 33, 15),
    (32, 32, 16),
    (33, 31, 17),
    (48, 5, 33),
    (100, 100, 64),
    (200, 50, 300),
    (6, 10, 16),  # one register block of rows; centres 8 + 2
    (7, 12, 15),
    (95, 8, 9),  # the fewest centres that take register blocks
    (96, 11, 17),  # one task of rows exactly
    (97, 7, 31),  # one centre too few for register blocks
    (101, 9, 8),
]


@pytest.mark.parametrize(("backend", "dtype"), PARAMS)
@pytest.mark.parametrize(("n", "m", "d"), SHAPES, ids=[f"n{n}-m{m}-d{d}" for n, m, d in SHAPES])
def test_random_data_matches_reference(n, m, d, backend, dtype):
    rng = np.random.default_rng(n * 1000 + m * 10 + d)
    X = to_backend(rng.normal(size=(n, d)), backend, dtype)
    Y = to_backend(rng.normal(size=(m, d)) * 1.5, backend, dtype)
    dist, index = call(X, Y)
    X64, Y64 = upcast(X), upcast(Y)
    if dtype == "float64":  # generic float64 data has no near-ties: exact indices
        ref_dist, ref_index = min_distance_ref(X64, Y64)
        assert_array_equal(index, ref_index)
        assert_allclose(dist, ref_dist, rtol=RTOL[dtype], atol=ATOL[dtype])
    else:
        assert_argmin_valid(X64, Y64, dist, index, RTOL[dtype], ATOL[dtype])


@pytest.mark.parametrize(("backend", "dtype"), PARAMS)
@pytest.mark.parametrize("d", [1, 64, 256, 300])
def test_tile_boundaries(d, backend, dtype):
    """m one below, at and one above one and two Y tiles; n around blocks of 16 rows. Integer
    data, exact in every dtype, with duplicated Y rows so the tie rule is exercised too."""
    tile = tile_rows(d, dtype)
    # d = 1: tiles of tens of thousands of rows; test m around 16 instead
    ms = [15, 16, 17] if tile > 5000 else [tile - 1, tile, tile + 1, 2 * tile + 1]
    rng = np.random.default_rng(d)
    for m in ms:
        n = 33 if m > 100 else 47
        Y = rng.integers(-2, 3, size=(m, d)).astype(np.float64)
        Y[m - 1] = Y[0]  # a tie across tiles: index 0 must win
        X = rng.integers(-2, 3, size=(n, d)).astype(np.float64)
        X[0] = Y[m - 1]
        dist, index = call(to_backend(X, backend, dtype), to_backend(Y, backend, dtype))
        ref_dist, ref_index = min_distance_ref(X, Y)
        assert index[0] == 0
        assert dist[0] == 0
        assert_array_equal(index, ref_index, err_msg=f"m={m} (tile {tile})")
        assert_allclose(dist, ref_dist, rtol=RTOL[dtype], atol=ATOL[dtype])


@pytest.mark.parametrize(("backend", "dtype"), PARAMS)
def test_ties_go_to_the_lowest_index(backend, dtype):
    # X row 0 = (0, 0): Y rows 1 and 2 both at distance 1, row 3 a copy of row 1: index 1.
    # X row 1 = (2, 0): Y rows 0 = (2, 0) and 4 = (2, 0) are exact copies: index 0, distance 0.
    # X row 2 = (5, 5): nearest is row 5 = (4, 4); row 6 = (6, 6) ties at sqrt 2 with row 5: 5.
    Y = np.array([[2, 0], [1, 0], [0, 1], [1, 0], [2, 0], [4, 4], [6, 6]], dtype=np.float64)
    X = np.array([[0, 0], [2, 0], [5, 5]], dtype=np.float64)
    dist, index = call(to_backend(X, backend, dtype), to_backend(Y, backend, dtype))
    assert_array_equal(index, [1, 0, 5])
    assert_allclose(dist, [1.0, 0.0, np.sqrt(2)], rtol=RTOL[dtype])


@pytest.mark.parametrize(("backend", "dtype"), PARAMS)
def test_docstring_example(backend, dtype):
    X = to_backend(np.array([[0.0], [3.0]]), backend, dtype)
    Y = to_backend(np.array([[1.0], [4.0]]), backend, dtype)
    dist, index = call(X, Y)
    assert dist.tolist() == [1.0, 1.0]
    assert index.tolist() == [0, 1]


@pytest.mark.parametrize(("backend", "dtype"), PARAMS)
def test_x_rows_in_y_are_at_distance_zero(backend, dtype):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 12))
    rows = np.array([7, 3, 7, 39])  # Y holds a repeated row: the first copy (index 0) wins
    Xb = to_backend(X, backend, dtype)
    Yb = Xb[indices_to_backend(rows, backend)]
    dist, index = call(Xb, Yb)
    assert_array_equal(dist[rows], 0)
    assert_array_equal(index[rows], [0, 1, 0, 3])


@pytest.mark.parametrize("backend", ["numpy", "torch-cpu"])
def test_float16_subnormals_and_extremes(backend):
    """float16 storage at its limits: subnormals (down to 2**-24) and the largest finite value
    are widened exactly, and float32 accumulation neither underflows nor overflows here."""
    tiny = 2.0**-24
    X = np.array([[tiny, 0.0], [3 * tiny, -tiny], [65504.0, -65504.0], [1e-5, 2e-5]])
    Y = np.array([[0.0, 0.0], [65504.0, 0.0], [4 * tiny, 0.0]])
    Xb, Yb = to_backend(X, backend, "float16"), to_backend(Y, backend, "float16")
    dist, index = call(Xb, Yb)
    ref_dist, ref_index = min_distance_ref(upcast(Xb), upcast(Yb))
    assert_array_equal(index, ref_index)
    assert_allclose(dist, ref_dist, rtol=RTOL["float16"], atol=0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    m=st.integers(1, 40),
    d=st.integers(1, 20),
    data=st.data(),
)
def test_property_float64_exact(n, m, d, data):
    """Exactly representable data (multiples of 1/4): distances and indices match exactly."""

    def matrix(rows):
        cells = data.draw(st.lists(st.integers(-40, 40), min_size=rows * d, max_size=rows * d))
        return np.array(cells, dtype=np.float64).reshape(rows, d) / 4

    X, Y = matrix(n), matrix(m)
    dist, index = fastal.min_distance(X, Y)
    ref_dist, ref_index = min_distance_ref(X, Y)
    assert_array_equal(index, ref_index)
    assert_array_equal(dist, ref_dist)


# ---------------------------------------------------------------------------------------------
# overflow (audit §5)


@pytest.mark.parametrize(
    ("dtype", "scale"), [("float32", 1e30), ("float32", 1e20), ("float64", 1e200)]
)
def test_overflowing_nearest_distance_raises(dtype, scale):
    rng = np.random.default_rng(0)
    Y = (rng.normal(size=(100, 2)) * scale).astype(dtype)
    with pytest.raises(ValueError, match=f"distances between rows of X and Y overflow {dtype}"):
        fastal.min_distance(Y, Y[:3])


def test_overflow_of_a_farther_row_is_harmless():
    """Only a nearest distance that overflowed makes the result wrong: a far row of Y whose
    distance overflows does not change the minimum, and is not an error."""
    X = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 1.0]], dtype=np.float32)
    Y = np.array([[3e19, -3e19], [0.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    dist, index = fastal.min_distance(X, Y)
    ref_dist, ref_index = min_distance_ref(X.astype(float), Y.astype(float))
    assert_array_equal(index, ref_index)
    assert_allclose(dist, ref_dist, rtol=1e-6)


def test_overflowing_gradient_embedding_raises():
    rng = np.random.default_rng(0)
    A = (rng.normal(size=(30, 3)) * 1e-15).astype(np.float32)
    H = (rng.normal(size=(30, 4)) * 1e24).astype(np.float32)
    emb = fastal.GradientEmbedding(A, H)
    with pytest.raises(ValueError, match="overflow float32"):
        fastal.min_distance(emb, emb.subset([0, 1]))


@pytest.mark.parametrize("m", [1, 8])  # streaming rows (m < 8) and AVX-512 register blocks
def test_near_copies_of_tiny_gradients_are_accurate(m):
    """Near copies of a confident row (|g|^2 = 1e-8): squared distances ~1e-14, i.e. 1e-6 of
    |g_i|^2 + |g_c|^2, where the expansion's rounding (~(C + dh) u s ~ 1e-13) swamps them. The
    cancellation-free form (rows.h, FactoredRows::near_copy) must be taken: its error bound
    e (|dA| |H_i| + |A_c| |dH|)^2 is within e s here. Checked against the materialised float64
    rows; a test of `bound <= s` instead of `bound * bound <= s` rejected it whenever s < bound <
    sqrt(s), i.e. for every near copy of a gradient this small."""
    rng = np.random.default_rng(5)
    n, C, dh = 200, 10, 24
    a0 = rng.normal(size=C) * 1e-4 / np.sqrt(C)
    h0 = rng.normal(size=dh) / np.sqrt(dh)
    spread = 1 + 1e-3 * rng.normal(size=(n, 1))
    A = a0[None] * spread + 1e-7 * rng.normal(size=(n, C)) / np.sqrt(C)
    H = h0[None] + 1e-3 * rng.normal(size=(n, dh)) / np.sqrt(dh)
    A, H = A.astype(np.float32), H.astype(np.float32)
    emb = fastal.GradientEmbedding(A, H)
    centres = np.arange(m) * 7
    dist, _ = fastal.min_distance(emb, emb.subset(centres))
    G = np.einsum("ic,ik->ick", A.astype(np.float64), H.astype(np.float64)).reshape(n, -1)
    d2 = ((G[:, None, :] - G[centres][None]) ** 2).sum(-1)
    want = np.sqrt(d2.min(1))
    others = np.setdiff1d(np.arange(n), centres)
    assert_allclose(np.asarray(dist)[others], want[others], rtol=2e-2)
    assert not np.asarray(dist)[centres].any()


@pytest.mark.parametrize("m", [3, 9])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_overflowed_rows_still_get_the_first_centre(dtype, m):
    """Every row gets an index in [0, m), ties to the lowest, even when all its distances are
    +inf: min_distance refuses such a row, but k-center and k-means++ copy the index into their
    pruning state before their own overflow check (an index of -1 there reads out of bounds).
    m = 3 runs the streaming loop; m = 9 the AVX-512 register blocks where those are built. The
    portable build's `arg < 0` clause in `offer` (distances.cpp) had no test."""
    big = 1e30 if dtype == "float32" else 1e300  # (2 big)^2 overflows the accumulation dtype
    rng = np.random.default_rng(0)
    C = rng.normal(size=(m, 4)).astype(dtype)
    X = rng.normal(size=(20, 4)).astype(dtype)
    far = np.arange(0, 20, 3)
    X[far] = big  # these rows overflow against every centre; the others do not
    dist2, index = getattr(_ext.cpu, f"min_sqdist_to_centres_{dtype}")(X, C)
    assert np.isinf(dist2[far]).all()
    assert_array_equal(index[far], 0)  # all +inf: a tie, to the lowest index
    near = np.setdiff1d(np.arange(20), far)
    d2 = ((X[near, None, :].astype(np.float64) - C[None].astype(np.float64)) ** 2).sum(-1)
    assert_array_equal(index[near], d2.argmin(1))
