"""Bad input raises ValueError / TypeError naming the argument; odd-but-valid input works.

DESIGN.md: "Every public function validates shapes, dtypes, devices, finiteness and budgets and
raises ValueError/TypeError with a message that names the argument."
"""

from __future__ import annotations

import re
import sys
import types
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import CPU_BACKENDS, DTYPES, backend_dtype_params, supports, to_backend, to_numpy
from numpy.testing import assert_array_equal

import fastal
from fastal import _ext

CPU_PARAMS = backend_dtype_params(backends=CPU_BACKENDS)


def pool(n=10, d=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


def kc(X, budget=2, **kw):
    return fastal.kcenter_greedy(X, budget, **kw)


# ---------------------------------------------------------------------------------------------
# X: rank, size, type, dtype


@pytest.mark.parametrize("fn", ["kcenter", "min_distance_X", "min_distance_Y"])
@pytest.mark.parametrize(
    ("shape", "pattern"),
    [
        ((5,), r"must be 2-D"),
        ((), r"must be 2-D"),
        ((2, 3, 1), r"must be 2-D"),
        ((0, 3), r"is empty"),
        ((3, 0), r"has no columns"),
    ],
)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_shapes(fn, shape, pattern, backend):
    bad = to_backend(np.zeros(shape), backend, "float32")
    good = to_backend(np.zeros((4, 3)), backend, "float32")
    if fn == "kcenter":
        name, call = "X", lambda: kc(bad, 0)
    elif fn == "min_distance_X":
        name, call = "X", lambda: fastal.min_distance(bad, good)
    else:
        name, call = "Y", lambda: fastal.min_distance(good, bad)
    with pytest.raises(ValueError, match=rf"^{name} {pattern}"):
        call()


@pytest.mark.parametrize("bad_dtype", ["int64", "int32", "uint8", "complex128", "bool"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_unsupported_dtypes(bad_dtype, backend):
    a = np.ones((4, 3)).astype(bad_dtype)
    X = a if backend == "numpy" else torch.from_numpy(a)
    with pytest.raises(TypeError, match=rf"^X must have dtype .*got {bad_dtype}"):
        kc(X)
    with pytest.raises(TypeError, match=rf"^X must have dtype .*got {bad_dtype}"):
        fastal.min_distance(X, X)
    Y = np.ones((2, 3)) if backend == "numpy" else torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match=rf"^Y must have dtype .*got {bad_dtype}"):
        fastal.min_distance(Y, X)


@pytest.mark.parametrize("X", [[[0.0, 1.0], [2.0, 3.0]], ((1.0,),), 3.0, "X", None])
def test_not_an_array(X):
    with pytest.raises(TypeError, match=r"^X must be a numpy array, a torch tensor or a cupy"):
        kc(X, 0)
    with pytest.raises(TypeError, match=r"^Y must be a numpy array"):
        fastal.min_distance(np.zeros((2, 2)), X)


def test_torch_tensor_on_an_unsupported_device():
    X = torch.zeros(4, 3, device="meta")
    with pytest.raises(TypeError, match=r"^X is a torch tensor on device meta"):
        kc(X)


# ---------------------------------------------------------------------------------------------
# NaN / Inf


@pytest.mark.parametrize(("backend", "dtype"), CPU_PARAMS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(("rows", "col"), [([0], 0), ([6], 2), ([9], 1), ([3, 7], 0)])
def test_nonfinite_rows_are_reported(backend, dtype, bad, rows, col):
    X = pool(10, 3)
    X[rows, col] = bad
    Xb = to_backend(X, backend, dtype)
    Y = to_backend(pool(4, 3, seed=1), backend, dtype)
    msg = rf"^X contains NaN or Inf in {len(rows)} row\(s\), first at row {rows[0]}$"
    with pytest.raises(ValueError, match=msg):
        kc(Xb, 2, seed=0)
    with pytest.raises(ValueError, match=msg):
        kc(Xb, 2, labeled=[1, 2])
    with pytest.raises(ValueError, match=msg):
        fastal.min_distance(Xb, Y)
    with pytest.raises(ValueError, match=msg.replace("^X", "^Y")):
        fastal.min_distance(Y, Xb)


def test_nonfinite_checked_even_with_budget_zero():
    X = pool()
    X[5, 0] = np.nan
    with pytest.raises(ValueError, match=r"^X contains NaN or Inf .* first at row 5"):
        kc(X, 0, labeled=[0])


# ---------------------------------------------------------------------------------------------
# budget


@pytest.mark.parametrize(
    ("budget", "exc", "pattern"),
    [
        (-1, ValueError, r"^budget must be >= 0, got -1"),
        (True, TypeError, r"^budget must be an integer, got bool"),
        (np.bool_(False), TypeError, r"^budget must be an integer, got bool"),
        (2.0, TypeError, r"^budget must be an integer, got float"),
        (np.float32(2), TypeError, r"^budget must be an integer"),
        ("2", TypeError, r"^budget must be an integer, got str"),
        (None, TypeError, r"^budget must be an integer, got NoneType"),
        (11, ValueError, r"^budget = 11 is larger than the unlabeled pool \(10 points\)"),
        (np.array(2.0), TypeError, r"^budget must be an integer, got ndarray"),
        (np.array([2]), TypeError, r"^budget must be an integer, got ndarray"),
        (torch.tensor(2.0), TypeError, r"^budget must be an integer, got Tensor"),
        (torch.tensor(True), TypeError, r"^budget must be an integer, got Tensor"),
        (torch.tensor([2]), TypeError, r"^budget must be an integer, got Tensor"),
        (np.array(11), ValueError, r"^budget = 11 is larger than the unlabeled pool"),
    ],
)
def test_bad_budget(budget, exc, pattern):
    with pytest.raises(exc, match=pattern):
        kc(pool(), budget)


@pytest.mark.parametrize("budget", [np.array(3), np.array(3, np.uint8), torch.tensor(3),
                                    torch.tensor(3, dtype=torch.int32)])  # fmt: skip
def test_zero_dim_integer_budgets(budget):
    """What budget = (n * 0.1).astype(int) or a tensor's .sum() gives: refused before."""
    assert_array_equal(kc(pool(), budget, seed=0), kc(pool(), 3, seed=0))


def test_budget_larger_than_unlabeled_pool():
    with pytest.raises(
        ValueError, match=r"^budget = 8 is larger than the unlabeled pool \(7 points\)"
    ):
        kc(pool(), 8, labeled=[0, 4, 9])
    assert len(kc(pool(), 7, labeled=[0, 4, 9])) == 7


@pytest.mark.parametrize("budget", [np.int64(3), np.int32(3), np.uint8(3)])
def test_numpy_integer_budgets_are_fine(budget):
    assert_array_equal(kc(pool(), budget, seed=0), kc(pool(), 3, seed=0))


def test_prune_must_be_a_bool():
    with pytest.raises(TypeError, match=r"^prune must be a bool, got int"):
        kc(pool(), prune=1)
    with pytest.raises(TypeError, match=r"^prune must be a bool, got str"):
        kc(pool(), prune="yes")


# ---------------------------------------------------------------------------------------------
# labeled


@pytest.mark.parametrize(
    ("labeled", "exc", "pattern"),
    [
        ([10], ValueError, r"^labeled has indices out of range \[0, 10\): e\.g\. 10"),
        ([0, -1], ValueError, r"^labeled has indices out of range \[0, 10\): e\.g\. -1"),
        (np.array([3, 100]), ValueError, r"^labeled has indices out of range"),
        ([1, 4, 1], ValueError, r"^labeled has duplicate indices: e\.g\. 1"),
        (np.array([[1, 2]]), ValueError, r"^labeled must be 1-D, got shape \(1, 2\)"),
        (torch.tensor([[1], [2]]), ValueError, r"^labeled must be 1-D"),
        (3, ValueError, r"^labeled must be 1-D, got shape \(\)"),
        ([1.0, 2.0], TypeError, r"^labeled must hold integer indices, got dtype float64"),
        (np.array([1.5]), TypeError, r"^labeled must hold integer indices"),
        (torch.tensor([1.0]), TypeError, r"^labeled must hold integer indices"),
        (
            np.zeros(10, dtype=bool),
            TypeError,
            r"^labeled must hold integer indices, got a boolean mask",
        ),
        (torch.zeros(10, dtype=torch.bool), TypeError, r"^labeled .*boolean mask"),
        ([True, False], TypeError, r"^labeled .*boolean mask"),
        (["a"], TypeError, r"^labeled must hold integer indices"),
    ],
)
def test_bad_labeled(labeled, exc, pattern):
    with pytest.raises(exc, match=pattern):
        kc(pool(), 2, labeled=labeled)


@pytest.mark.parametrize(
    "labeled",
    [
        [2, 5],
        (2, 5),
        range(2, 8, 3),
        np.array([2, 5], dtype=np.int32),
        np.array([2, 5], dtype=np.uint16),
        np.array([2, 5], dtype=">i8"),
        torch.tensor([2, 5]),
        torch.tensor([2, 5], dtype=torch.int32),
    ],
    ids=["list", "tuple", "range", "int32", "uint16", "big-endian", "torch", "torch-int32"],
)
def test_labeled_in_any_integer_form(labeled):
    assert_array_equal(kc(pool(), 4, labeled=labeled), kc(pool(), 4, labeled=np.array([2, 5])))


@pytest.mark.parametrize(
    "empty", [[], np.array([], dtype=np.int64), np.array([]), torch.tensor([])]
)
def test_empty_labeled_means_none(empty):
    assert_array_equal(kc(pool(), 3, labeled=empty, seed=4), kc(pool(), 3, seed=4))


def test_labeled_unsorted_order_does_not_matter():
    a = kc(pool(50, 4), 10, labeled=[40, 3, 17])
    b = kc(pool(50, 4), 10, labeled=[3, 17, 40])
    assert_array_equal(a, b)


def test_labeled_on_an_unusable_device():
    """labeled on a device that is neither the data's nor readable: an error naming labeled.
    (A meta tensor holds no data; it must not crash with NotImplementedError.)"""
    lab = torch.tensor([1, 2], device="meta")
    with pytest.raises((ValueError, TypeError), match=r"^labeled"):
        kc(pool(), 2, labeled=lab)


# ---------------------------------------------------------------------------------------------
# min_distance: X and Y must agree


def test_min_distance_framework_mismatch():
    X = pool()
    with pytest.raises(ValueError, match=r"^Y is a torch \(cpu\) array but X is numpy \(cpu\)"):
        fastal.min_distance(X, torch.from_numpy(X))
    with pytest.raises(ValueError, match=r"^Y is a numpy \(cpu\) array but X is torch \(cpu\)"):
        fastal.min_distance(torch.from_numpy(X), X)


@pytest.mark.parametrize(
    ("backend", "dx", "dy"),
    [
        (b, dx, dy)
        for b in CPU_BACKENDS
        for dx, dy in [("float64", "float32"), ("float32", "float16"), ("float16", "bfloat16")]
        if supports(b, dx) and supports(b, dy)
    ],
)
def test_min_distance_dtype_mismatch(backend, dx, dy):
    X = to_backend(pool(), backend, dx)
    Y = to_backend(pool(3), backend, dy)
    with pytest.raises(TypeError, match=rf"^Y has dtype {dy} but X has {dx}"):
        fastal.min_distance(X, Y)


def test_min_distance_column_mismatch():
    with pytest.raises(ValueError, match=r"^Y must have 3 columns like X, got shape \(4, 2\)"):
        fastal.min_distance(pool(10, 3), pool(4, 2))


# ---------------------------------------------------------------------------------------------
# non-contiguous, read-only, byte-swapped, requires_grad: same picks as a contiguous copy


def layouts(X: np.ndarray):
    """(name, odd array, its contiguous equivalent), numpy and torch, with the same values."""
    Xt = np.ascontiguousarray(X.T)
    wide = np.repeat(X, 2, axis=1)
    tall = np.repeat(X, 3, axis=0)
    ro = X.copy()
    ro.setflags(write=False)
    out = [
        ("numpy-transposed", Xt.T, X),
        ("numpy-fortran", np.asfortranarray(X), X),
        ("numpy-row-stride", tall[::3], X),
        ("numpy-col-stride", wide[:, ::2], X),
        ("numpy-reversed-rows", X[::-1], np.ascontiguousarray(X[::-1])),
        ("numpy-big-endian", X.astype(X.dtype.newbyteorder(">")), X),
        ("numpy-read-only", ro, X),
        ("numpy-broadcast", np.broadcast_to(X[:1], X.shape), np.repeat(X[:1], len(X), axis=0)),
    ]
    T = torch.from_numpy(X)
    out += [
        ("torch-transposed", torch.from_numpy(Xt).t(), T),
        ("torch-row-stride", torch.from_numpy(tall)[::3], T),
        ("torch-col-stride", torch.from_numpy(wide)[:, ::2], T),
        ("torch-offset", torch.from_numpy(np.concatenate([X[:2], X]))[2:], T),
        ("torch-expand", T[:1].expand(*X.shape), T[:1].repeat(len(X), 1)),
    ]
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("labeled", [None, [3, 0]])
def test_odd_layouts_give_the_same_picks(dtype, labeled):
    X = pool(60, 5, seed=2).astype(dtype)
    Y = pool(7, 5, seed=3).astype(dtype)
    for name, odd, plain in layouts(X):
        expected = to_numpy(kc(plain, 20, labeled=labeled, seed=1))
        got = to_numpy(kc(odd, 20, labeled=labeled, seed=1))
        assert_array_equal(got, expected, err_msg=name)
        Yb = Y if isinstance(odd, np.ndarray) else torch.from_numpy(Y)
        for a, b in zip(fastal.min_distance(odd, Yb), fastal.min_distance(plain, Yb), strict=True):
            assert_array_equal(to_numpy(a), to_numpy(b), err_msg=name)
        # and as Y
        for a, b in zip(fastal.min_distance(Yb, odd), fastal.min_distance(Yb, plain), strict=True):
            assert_array_equal(to_numpy(a), to_numpy(b), err_msg=name)
    # the input was not modified in place
    assert X.flags.c_contiguous
    assert X.flags.writeable


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_torch_odd_layouts_low_precision(dtype):
    X = to_backend(pool(60, 6, seed=5), "torch-cpu", dtype)
    odds = (
        X.t().contiguous().t(),
        X.repeat_interleave(2, dim=1)[:, ::2],
        X.repeat_interleave(3, dim=0)[::3],
    )
    for odd in odds:
        assert not odd.is_contiguous()
        assert_array_equal(kc(odd, 15, seed=2), kc(X, 15, seed=2))
        assert_array_equal(fastal.min_distance(odd, X[:5])[1], fastal.min_distance(X, X[:5])[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_requires_grad_tensors_work(dtype):
    X = to_backend(pool(30, 4), "torch-cpu", dtype)
    Xg = X.clone().requires_grad_()
    picks, radius = fastal.kcenter_greedy(Xg, 5, labeled=[1], return_radius=True)
    assert not radius.requires_grad
    assert_array_equal(picks, fastal.kcenter_greedy(X, 5, labeled=[1]))
    dist, index = fastal.min_distance(Xg, Xg[:3])
    assert not dist.requires_grad
    ref = fastal.min_distance(X, X[:3])
    assert_array_equal(dist, ref[0])
    assert_array_equal(index, ref[1])


# ---------------------------------------------------------------------------------------------
# CUDA inputs without a GPU: a stand-in that describes itself like a cupy array


class _Device:
    id = 0


class FakeCupyArray:
    """Just enough of a cupy array for fastal's dispatch: device, dtype and shape. The
    ``fake_cupy`` fixture makes it ``cupy.ndarray``."""

    def __init__(self, shape, dtype="float32"):
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.device = _Device()


@pytest.fixture
def fake_cupy(monkeypatch):
    """A ``cupy`` module whose ``ndarray`` is FakeCupyArray (fastal recognises cupy arrays by
    ``isinstance(x, cupy.ndarray)`` once cupy is imported)."""
    module = types.ModuleType("cupy")
    module.ndarray = FakeCupyArray
    monkeypatch.setitem(sys.modules, "cupy", module)


def test_only_cupy_ndarray_is_taken_for_cupy(fake_cupy):
    """Classes of other modules named cupy-something (cupyx sparse matrices, a user's
    ``cupy_helpers``) are not cupy arrays."""
    Impostor = type("Impostor", (), {"__module__": "cupyx.scipy.sparse._csr", "shape": (3, 2)})
    with pytest.raises(TypeError, match=r"^X must be a numpy array, a torch tensor or a cupy"):
        kc(Impostor(), 1)


@pytest.fixture
def no_cuda_module(monkeypatch):
    monkeypatch.setattr(_ext, "cuda", None)


HINT = re.escape("FASTAL_CUDA=ON pip install")


def test_cuda_input_without_cuda_module_says_how_to_rebuild(no_cuda_module, fake_cupy):
    assert not fastal.cuda_available()
    X = FakeCupyArray((10, 3))
    with pytest.raises(RuntimeError, match=rf"^X is on a CUDA device\. .*{HINT}"):
        kc(X, 2, seed=0)
    with pytest.raises(RuntimeError, match=rf"^X is on a CUDA device\. .*{HINT}"):
        fastal.min_distance(X, FakeCupyArray((4, 3)))


def test_cuda_float64_is_rejected(fake_cupy):
    with pytest.raises(
        TypeError, match=r"^X must have dtype float32, float16, bfloat16 on cuda .*CPU only"
    ):
        kc(FakeCupyArray((10, 3), "float64"), 2)


def test_labeled_on_another_device(fake_cupy):
    with pytest.raises(
        ValueError, match=r"^labeled is on cupy \(cuda:0\) but the data is on numpy \(cpu\)"
    ):
        kc(pool(), 2, labeled=FakeCupyArray((2,), "int64"))
    with pytest.raises(
        ValueError, match=r"^labeled is on numpy \(cpu\) but the data is on cupy \(cuda:0\)"
    ):
        kc(FakeCupyArray((10, 3)), 2, labeled=np.array([1, 2]))


def test_min_distance_device_mismatch(fake_cupy):
    with pytest.raises(ValueError, match=r"^Y is a cupy \(cuda:0\) array but X is numpy \(cpu\)"):
        fastal.min_distance(pool().astype(np.float32), FakeCupyArray((4, 3)))
    with pytest.raises(ValueError, match=r"^Y is a numpy \(cpu\) array but X is cupy \(cuda:0\)"):
        fastal.min_distance(FakeCupyArray((4, 3)), pool().astype(np.float32))


@pytest.mark.parametrize("seed", ["x", -1, 1.5, True])
def test_bad_seed_is_named(seed):
    X = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises((TypeError, ValueError), match="seed"):
        fastal.kcenter_greedy(X, 2, seed=seed)


def test_float32_overflow_is_reported_not_returned_as_inf():
    X = np.array([[1e20], [0.0], [-1e20]], dtype=np.float32)
    with pytest.raises(ValueError, match="overflow float32"):
        fastal.kcenter_greedy(X, 1, labeled=[1])
    # float64 holds the same points fine
    assert fastal.kcenter_greedy(X.astype(np.float64), 1, labeled=[1]).tolist() == [0]


def test_float32_overflow_of_the_initial_distances_alone_is_reported():
    X = np.array([[0.0], [1.0], [2e19], [3e19]], dtype=np.float32)  # 4e38, 9e38 > float32 max
    with pytest.raises(ValueError, match="overflow float32"):
        fastal.kcenter_greedy(X, 1, labeled=[0])
    # float64 holds them: row 3 is the farthest from row 0
    assert fastal.kcenter_greedy(X.astype(np.float64), 1, labeled=[0]).tolist() == [3]


# ---------------------------------------------------------------------------------------------
# audit §9: sparse tensors and non-bool flags


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_torch_tensor_is_refused_by_name(layout):
    def to_sparse(t):
        return t.to_sparse() if layout == "coo" else t.to_sparse_csr()

    X = torch.randn(40, 8)
    sparse = to_sparse(X)
    with pytest.raises(TypeError, match=r"^X is a torch tensor with layout torch\.sparse_.*dense"):
        fastal.kcenter_greedy(sparse, 3)
    with pytest.raises(TypeError, match=r"^Y is a torch tensor with layout"):
        fastal.min_distance(X, to_sparse(X[:4]))
    with pytest.raises(TypeError, match=r"^X is a torch tensor with layout"):
        fastal.kmeans(sparse, 2)


@pytest.mark.parametrize("flag", [1, 0, "no", None])
def test_bool_flags_must_be_bools(flag):
    X = pool()
    with pytest.raises(TypeError, match=r"^return_radius must be a bool"):
        fastal.kcenter_greedy(X, 2, return_radius=flag)
    with pytest.raises(TypeError, match=r"^bias must be a bool"):
        fastal.ntk_features(X, 4, bias=flag)
    assert fastal.ntk_features(X, 4, bias=np.bool_(False)).shape == (10, 3)


# ---------------------------------------------------------------------------------------------
# the compiled module itself: a row of no values is refused (k-center sizes its chunks by d)


def _zero_column_calls(X):
    """One call of each CPU kernel on X, by name."""
    cpu = _ext.cpu
    z32, z64 = np.zeros(4, np.float32), np.zeros(4, np.int64)
    one64, one32 = np.zeros(1, np.int64), np.zeros(1, np.float32)
    return {
        "kcenter_init": lambda: cpu.kcenter_init_first_float32(
            (X,), 0, z32, z64, one64, one64.copy(), one32
        ),
        # divided by d before this check (SIGFPE)
        "kcenter_steps": lambda: cpu.kcenter_steps_float32(
            (X,), z32, z64, np.zeros(2, np.int64), 1, one64, one32, False, 0, 1
        ),
        "min_sqdist": lambda: cpu.min_sqdist_to_set_float32((X,), (X,)),
        "nonfinite": lambda: cpu.count_nonfinite_rows_float32(X),
        "segment_sum": lambda: cpu.segment_sum_float32(X, z64, 1),
    }


@pytest.mark.parametrize(
    "call", ["kcenter_init", "kcenter_steps", "min_sqdist", "nonfinite", "segment_sum"]
)
def test_cpu_kernels_reject_zero_columns(call):
    run = _zero_column_calls(np.zeros((4, 0), dtype=np.float32))[call]
    with pytest.raises(ValueError, match=r"X must have at least one column"):
        run()


@pytest.mark.parametrize("value", [2.0**127, 3.0e38, -3.3e38])
def test_bfloat16_values_past_2_127_are_finite(value):
    """count_nonfinite_rows tests a bfloat16's exponent field against 0x7f80; a mask without the
    exponent's low bit (0x7f00) also took every finite value of binary exponent 127 (|x| in
    [2^127, 3.39e38)) for NaN / Inf. Such a pool is refused, but for overflowing its distances,
    not as containing NaN or Inf; and the spread is the value."""
    X = torch.zeros((6, 3), dtype=torch.bfloat16)
    X[4, 1] = value
    x = X.view(torch.int16).numpy().view(np.uint16)
    count, first, spread = fastal._ext.cpu.count_nonfinite_rows_bfloat16(x)
    assert (count, first) == (0, -1)
    assert spread == abs(float(X[4, 1]))
    with pytest.raises(ValueError, match="overflow float32"):
        fastal.kcenter_greedy(X, 2, labeled=[0])
    X[2, 0] = float("inf")
    bits = X.view(torch.int16).numpy().view(np.uint16)
    count, first, _ = fastal._ext.cpu.count_nonfinite_rows_bfloat16(bits)
    assert (count, first) == (1, 2)


@pytest.mark.parametrize("case", range(30))
def test_duplicate_check_agrees_with_unique_on_both_paths(case):
    """check_indices finds repeats by a sort (few indices of a large pool) or an O(n) mask (many):
    both must say what np.unique says, with the smallest repeated index in the message."""
    from fastal._validate import check_indices

    rng = np.random.default_rng(case)
    n = int(rng.integers(1, 5000))
    size = int(rng.integers(1, n + 1)) if case % 2 else int(rng.integers(1, max(2, n // 8)))
    idx = rng.integers(0, n, size)
    uniq, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        smallest = int(uniq[np.argmax(counts > 1)])
        with pytest.raises(
            ValueError, match=rf"^labeled has duplicate indices: e\.g\. {smallest}$"
        ):
            check_indices(idx, n, "labeled")
    else:
        assert_array_equal(check_indices(idx, n, "labeled"), idx)
    distinct = rng.permutation(n)[:size]
    assert_array_equal(check_indices(distinct, n, "labeled"), distinct)
    assert_array_equal(
        check_indices(np.r_[distinct, distinct], n, "rows", unique=False), np.r_[distinct, distinct]
    )


HUGE = 10**400  # a Python int float() cannot hold: OverflowError, naming nothing, unless caught


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("alpha", lambda: fastal.iht_threshold(np.ones(2), np.ones(2), 1, HUGE)),
        ("alpha", lambda: fastal.strategies.SparseApprox(alpha=HUGE)),
        ("beta", lambda: fastal.strategies.SparseApprox(beta=HUGE)),
        ("tau", lambda: fastal.strategies.SparseApprox(tau=HUGE)),
        ("temperature", lambda: fastal.strategies.SparseApprox(temperature=HUGE)),
        ("rtol", lambda: fastal.gram_min_eig(pool(4, 2), [0], [[1, 2]], rtol=HUGE)),
        ("rtol", lambda: fastal.strategies.CRC(group_size=1, rtol=HUGE).select(pool(), 2)),
        ("outliers", lambda: fastal.robust_kcenter(pool(), 2, outliers=Fraction(HUGE, 3))),
    ],
)
def test_a_number_past_the_float_range_is_named(name, call):
    with pytest.raises(ValueError, match=rf"^{name} must be finite, got a value too large"):
        call()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fastal.gradient_embedding(np.ones(3), np.ones((3, 2))), "probs_or_logits"),
        (lambda: fastal.strategies.Entropy().select({"probs": np.ones(3)}, 1), "probs"),
    ],
)
def test_class_arrays_are_described_as_n_by_c(call, message):
    with pytest.raises(ValueError, match=rf"^{message} must be 2-D \(n, C\), got shape"):
        call()
