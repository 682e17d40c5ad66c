"""The CUDA IHT top-b kernel (csrc/cuda/topb.cu) against the CPU kernel, bit for bit.

Every test runs both implementations (``impl``): the launch sequence of topb.cu and the fused
cooperative kernel of topb_fused.cu, selected through ``fastal._sparse_cuda.TOPB_IMPL``.

Both compute the float64 score (the paper's ``0.5 [-s]_+^2 - alpha sigma^2`` or the exact rule's
``-0.5 [s]_+^2 - alpha sigma^2``) from the same float32 values with the same roundings and
order the support by (score, index), so on float32 input the support (order included) and ``w`` must
be identical, ties and signed zeros included. Every test is marked ``cuda`` and is skipped without a
GPU or without ``fastal._cuda``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import CUDA_BACKENDS, backend_of, dtype_of, to_backend, to_numpy
from numpy.testing import assert_array_equal

import fastal
import fastal._sparse_cuda as sparse_cuda

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True, params=[0, 1], ids=["launches", "fused"])
def impl(request, monkeypatch):
    """The implementation fastal.iht_threshold uses in this test (the binding's ``impl``)."""
    monkeypatch.setattr(sparse_cuda, "TOPB_IMPL", request.param)
    return request.param


def cpu_kernel(s32: np.ndarray, g32: np.ndarray, b: int, alpha: float, rule: str = "paper"):
    return fastal._ext.cpu.iht_threshold_float32(s32, g32, b, alpha, exact=rule == "exact")


def assert_same_as_cpu(support, w, s32, g32, b, alpha, rule="paper") -> None:
    ref_support, ref_w = cpu_kernel(s32, g32, b, alpha, rule)
    got_support, got_w = to_numpy(support), to_numpy(w)
    assert got_support.dtype == np.int64
    assert got_w.dtype == np.float32
    assert_array_equal(got_support, ref_support)
    assert_array_equal(got_w.view(np.uint32), ref_w.view(np.uint32))  # bit for bit


def on_device(a32: np.ndarray, backend: str):
    return to_backend(a32, backend, "float32")


def gpu(s32, g32, b, alpha, backend, rule="paper"):
    return fastal.iht_threshold(
        on_device(s32, backend), on_device(g32, backend), b, alpha, rule=rule
    )


@functools.cache
def normal_case(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + n)
    s = rng.normal(size=n).astype(np.float32)
    sigma = (np.abs(rng.normal(size=n)) * 0.5).astype(np.float32)
    return s, sigma


@functools.cache
def tied_case(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Few distinct values: most scores are shared by thousands of rows."""
    rng = np.random.default_rng(seed + 7 * n)
    s = (rng.integers(-4, 5, size=n) * 0.25).astype(np.float32)
    sigma = (rng.integers(0, 3, size=n) * 0.5).astype(np.float32)
    return s, sigma


def budgets(n: int) -> list[int]:
    return sorted({0, 1, min(n, 2), n // 3, n // 2, max(0, n - 1), n})


def test_kernel_is_built():
    assert hasattr(fastal._ext.cuda, "iht_threshold"), "fastal._cuda lacks iht_threshold"


SIZES = [1, 2, 7, 255, 256, 1023, 1024, 4095, 4096, 4097, 12289, 100_003, 1_000_000]


@pytest.mark.parametrize("rule", ["paper", "exact"])
@pytest.mark.parametrize("alpha", [0.0, 1e-8, 0.3, 10.0])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("n", SIZES)
def test_random_scores_match_cpu(n, backend, alpha, rule):
    s32, g32 = normal_case(n)
    for b in budgets(n):
        support, w = gpu(s32, g32, b, alpha, backend, rule)
        assert_same_as_cpu(support, w, s32, g32, b, alpha, rule)


@pytest.mark.parametrize("rule", ["paper", "exact"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("n", [64, 5000, 300_001])
def test_heavy_ties_match_cpu(n, backend, alpha, rule):
    s32, g32 = tied_case(n)
    for b in (*budgets(n), n // 7, n // 5 + 3):
        support, w = gpu(s32, g32, b, alpha, backend, rule)
        assert_same_as_cpu(support, w, s32, g32, b, alpha, rule)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("n", [10, 4097, 1_000_003])
def test_all_scores_equal_take_the_first_b(n, backend):
    for s32, g32, alpha in (
        (np.full(n, 2.0, np.float32), np.zeros(n, np.float32), 0.7),  # every score +0
        (np.full(n, -1.5, np.float32), np.ones(n, np.float32), 0.25),  # every score 0.875
    ):
        for b in budgets(n):
            support, w = gpu(s32, g32, b, alpha, backend)
            assert_array_equal(to_numpy(support), np.arange(b))
            assert_same_as_cpu(support, w, s32, g32, b, alpha)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_special_values_match_cpu(backend):
    """Signed zeros, subnormals, the float32 extremes, and an alpha that overflows to -inf."""
    tiny = np.float32(1e-45)
    vals = np.array(
        [0.0, -0.0, tiny, -tiny, 1e-30, -1e-30, 3.4e38, -3.4e38, 1.0, -1.0, 2.5, -2.5],
        dtype=np.float32,
    )
    rng = np.random.default_rng(11)
    n = 20_000
    s32 = vals[rng.integers(vals.size, size=n)]
    g32 = vals[rng.integers(vals.size, size=n)]
    for alpha in (0.0, 1e-300, 1.0, 1e300):
        for b in (0, 1, 37, 5000, n - 1, n):
            for rule in ("paper", "exact"):
                support, w = gpu(s32, g32, b, alpha, backend, rule)
                assert_same_as_cpu(support, w, s32, g32, b, alpha, rule)


def test_more_than_2_24_rows():
    """Indices beyond float32's exact integers and 4096 tiles of 4096 rows; ties at the boundary."""
    torch = pytest.importorskip("torch")
    n = (1 << 24) + 4099
    rng = np.random.default_rng(24)
    s32 = (rng.integers(-1000, 1000, size=n) * 0.125).astype(np.float32)
    g32 = np.zeros(n, np.float32)
    g32[-5000:] = 1.0  # the lowest scores at the far end of the array
    s, g = torch.from_numpy(s32).cuda(), torch.from_numpy(g32).cuda()
    for b in (3, 100_000, n - 10):
        support, w = fastal.iht_threshold(s, g, b, 0.5)
        assert_same_as_cpu(support, w, s32, g32, b, 0.5)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_outputs_in_the_input_framework(backend):
    s32, g32 = normal_case(1000)
    s = on_device(s32, backend)
    support, w = fastal.iht_threshold(s, on_device(g32, backend), 10, 0.3)
    assert backend_of(support) == backend_of(w) == backend
    assert dtype_of(support) == "int64"
    assert dtype_of(w) == "float32"
    assert tuple(support.shape) == (10,)
    assert tuple(w.shape) == (1000,)


def test_non_contiguous_torch_input():
    torch = pytest.importorskip("torch")
    s32, g32 = normal_case(20_001)
    s = torch.from_numpy(np.repeat(s32, 2)).cuda()[::2]
    g = torch.from_numpy(np.repeat(g32, 2)).cuda()[::2]
    assert not s.is_contiguous()
    support, w = fastal.iht_threshold(s, g, 321, 0.3)
    assert_same_as_cpu(support, w, s32, g32, 321, 0.3)


def test_non_default_torch_stream():
    """The inputs are produced on a side stream behind a long sleep; the kernel must wait for them
    (it runs on torch's current stream) and its outputs are ready after that stream syncs."""
    torch = pytest.importorskip("torch")
    s32, g32 = normal_case(1_000_000, seed=5)
    s_host, g_host = torch.from_numpy(s32).pin_memory(), torch.from_numpy(g32).pin_memory()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)
        s = s_host.to("cuda", non_blocking=True) * 1.0
        g = g_host.to("cuda", non_blocking=True) * 1.0
        support, w = fastal.iht_threshold(s, g, 5000, 0.3)
    side.synchronize()
    assert_same_as_cpu(support, w, s32, g32, 5000, 0.3)


def test_non_default_cupy_stream():
    cupy = pytest.importorskip("cupy")
    s32, g32 = normal_case(1_000_000, seed=6)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        s = cupy.asarray(s32) * 1.0
        g = cupy.asarray(g32) * 1.0
        support, w = fastal.iht_threshold(s, g, 5000, 0.3)
    stream.synchronize()
    assert_same_as_cpu(support, w, s32, g32, 5000, 0.3)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("n", [1000, 600_011])
def test_scores_over_many_binades_match_cpu(n, backend):
    """Scores from 1e-30 to 1e30 in magnitude, both signs: the candidates' keys span more than
    32 bits, so the fused kernel keeps them whole (its 'wide' sort) instead of as offsets."""
    rng = np.random.default_rng(n)
    s32 = (rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-30, 30, n)).astype(np.float32)
    g32 = (10.0 ** rng.uniform(-15, 15, n)).astype(np.float32)
    for rule in ("paper", "exact"):
        for b in (1, n // 10, n // 2, n - 1):
            support, w = gpu(s32, g32, b, 0.5, backend, rule)
            assert_same_as_cpu(support, w, s32, g32, b, 0.5, rule)


def test_repeated_runs_agree():
    """A race between the passes' blocks would show as runs that differ."""
    torch = pytest.importorskip("torch")
    s32, g32 = tied_case(3_000_017, seed=3)
    s, g = torch.from_numpy(s32).cuda(), torch.from_numpy(g32).cuda()
    first_support, first_w = fastal.iht_threshold(s, g, 77_777, 1.0)
    for _ in range(5):
        support, w = fastal.iht_threshold(s, g, 77_777, 1.0)
        assert torch.equal(support, first_support)
        assert torch.equal(w, first_w)
    assert_same_as_cpu(first_support, first_w, s32, g32, 77_777, 1.0)


def test_binding_writes_every_output(impl):
    """Called directly on poisoned outputs: every support slot and every w entry is written."""
    torch = pytest.importorskip("torch")
    s32, g32 = normal_case(50_000, seed=9)
    s, g = torch.from_numpy(s32).cuda(), torch.from_numpy(g32).cuda()
    for b in (0, 1, 4096, 50_000):
        support = torch.full((b,), -7, dtype=torch.int64, device="cuda")
        w = torch.full((50_000,), float("nan"), dtype=torch.float32, device="cuda")
        counts = fastal._ext.cuda.iht_threshold(
            s.data_ptr(), g.data_ptr(), 50_000, b, 0.3, support.data_ptr(), w.data_ptr(),
            s.device.index, torch.cuda.current_stream().cuda_stream, impl=impl,
        )  # fmt: skip
        assert counts == (0, -1, 0, -1)
        torch.cuda.synchronize()
        assert_same_as_cpu(support, w, s32, g32, b, 0.3)


def test_binding_rejects_bad_sizes():
    torch = pytest.importorskip("torch")
    s = torch.zeros(10, device="cuda")
    support = torch.zeros(11, dtype=torch.int64, device="cuda")
    call = functools.partial(fastal._ext.cuda.iht_threshold, s.data_ptr(), s.data_ptr(), 10)
    tail = (support.data_ptr(), s.data_ptr(), s.device.index, 0)
    with pytest.raises(ValueError, match=r"^b must be"):
        call(11, 0.1, *tail)
    with pytest.raises(ValueError, match=r"^b must be"):
        call(-1, 0.1, *tail)
    with pytest.raises(ValueError, match=r"^alpha must be"):
        call(2, -1.0, *tail)
    with pytest.raises(ValueError, match=r"^alpha must be"):
        call(2, float("nan"), *tail)
    with pytest.raises(ValueError, match=r"^s_ptr is a null pointer"):
        fastal._ext.cuda.iht_threshold(0, s.data_ptr(), 10, 2, 0.1, *tail)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_rejects_non_finite(backend, bad):
    s32, g32 = normal_case(5000, seed=2)
    s_bad, g_bad = s32.copy(), g32.copy()
    s_bad[3], s_bad[4000] = bad, bad
    g_bad[4999] = bad
    for b in (0, 2, 4990):  # b = 0 selects nothing but still checks
        with pytest.raises(
            ValueError, match=r"^s contains NaN or Inf at 2 position\(s\), first at 3"
        ):
            gpu(s_bad, g32, b, 0.1, backend)
        with pytest.raises(
            ValueError, match=r"^sigma contains NaN or Inf at 1 position\(s\), first at 4999"
        ):
            gpu(s32, g_bad, b, 0.1, backend)
        with pytest.raises(ValueError, match=r"^s contains NaN or Inf at 2 position"):
            gpu(s_bad, g_bad, b, 0.1, backend)  # s is reported first
    support, _ = gpu(s32, g32, 2, 0.1, backend)  # the context stays usable
    assert tuple(support.shape) == (2,)


def test_binding_counts_non_finite_entries(impl):
    """The first digit pass counts NaN / Inf in s and sigma (warp ballots, the first index as a
    maximum of n - i) and the binding returns them after its synchronisation."""
    torch = pytest.importorskip("torch")
    n = 1_000_003
    s32, g32 = normal_case(n, seed=8)
    bad_s = [5, 77_777, n - 1]
    bad_g = [999_000, 999_001]
    s32[bad_s] = [np.nan, np.inf, -np.inf]
    g32[bad_g] = np.nan
    s, g = torch.from_numpy(s32).cuda(), torch.from_numpy(g32).cuda()
    stream = torch.cuda.current_stream().cuda_stream
    for b in (0, 1, 100_000):
        support = torch.empty(b, dtype=torch.int64, device="cuda")
        w = torch.empty(n, dtype=torch.float32, device="cuda")
        got = fastal._ext.cuda.iht_threshold(
            s.data_ptr(), g.data_ptr(), n, b, 0.3, support.data_ptr(), w.data_ptr(), 0, stream,
            impl=impl,
        )  # fmt: skip
        assert got == (3, 5, 2, 999_000)
