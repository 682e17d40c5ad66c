"""The CUDA fused top-b kernel's body (csrc/common/topb_fused.h) on emulated GPU threads
(``fastal._cpu.iht_threshold_fused_float32``: a grid of blocks of 256 coroutines that switch at
every warp, block and grid operation, csrc/cpu/simt_emulation.h), against the CPU kernel, bit for
bit: the support in (score, index) order and ``w``.

The GPU runs this same source (csrc/cuda/topb_fused.cu), so these tests check its digit passes,
its per-block counts, the index-ordered placement of the candidates and the sort's inputs on every
machine; ``test_cuda_topb.py`` checks the device build where there is a GPU. Grids of several
blocks, including blocks with no rows, exercise the grid barriers and the blocks' prefix sums.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import fastal


def _available() -> bool:
    try:
        fastal._ext.cpu.iht_threshold_fused_float32(np.ones(1, np.float32), np.ones(1, np.float32),
                                                    1, 0.5)  # fmt: skip
    except ValueError as err:
        if "ucontext" in str(err):
            return False
        raise
    return True


pytestmark = pytest.mark.skipif(not _available(), reason="the SIMT emulation needs glibc")


def scores(kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        s, g = rng.normal(size=n), np.abs(rng.normal(size=n)) * 0.5
    elif kind == "tied":  # a few distinct scores: the selection ends at a complete key
        s, g = rng.integers(-4, 5, n) * 0.25, rng.integers(0, 3, n) * 0.5
    elif kind == "equal":
        s, g = np.full(n, -1.5), np.ones(n)
    elif kind == "wide":  # keys spanning more than 32 bits: the 64-bit sort
        s = rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-30, 30, n)
        g = 10.0 ** rng.uniform(-15, 15, n)
    else:  # "clustered": one binade, the top 22 key bits shared: three digit passes or more
        s, g = -(1.0 + rng.uniform(0, 2.0**-12, n)), np.zeros(n)
    return s.astype(np.float32), g.astype(np.float32)


def check(s, g, b, alpha, exact, grid) -> None:
    support, w, bad = fastal._ext.cpu.iht_threshold_fused_float32(s, g, b, alpha, exact, grid)
    want_support, want_w = fastal._ext.cpu.iht_threshold_float32(s, g, b, alpha, exact=exact)
    assert bad == (0, -1, 0, -1)
    assert_array_equal(support, want_support)
    assert_array_equal(w.view(np.uint32), want_w.view(np.uint32))


@pytest.mark.parametrize("kind", ["normal", "tied", "equal", "wide"])
@pytest.mark.parametrize("n", [1, 2, 7, 300, 2049, 5000])
def test_matches_cpu_kernel(kind, n):
    s, g = scores(kind, n, seed=n)
    for b in sorted({1, min(n, 2), max(1, n // 3), max(1, n - 1), n}):
        for exact in (False, True):
            for grid in (1, 3):
                check(s, g, b, 0.5, exact, grid)


@pytest.mark.parametrize("kind", ["normal", "clustered", "tied"])
def test_many_rows_per_block_and_empty_blocks(kind):
    """40,000 rows over 4 blocks (several digit-pass iterations and write rounds per block), and
    100 rows over 9 blocks, some of which own no rows."""
    s, g = scores(kind, 40_000, seed=1)
    for b in (1, 777, 13_333, 39_999):
        check(s, g, b, 0.5, False, 4)
    s, g = scores(kind, 100, seed=2)
    for b in (1, 50, 100):
        check(s, g, b, 0.5, True, 9)


def test_counts_non_finite_entries():
    n = 3000
    s, g = scores("normal", n, seed=3)
    s[[5, 1777, n - 1]] = [np.nan, np.inf, -np.inf]
    g[[2999, 1000]] = np.nan
    for grid in (1, 3):
        _, _, bad = fastal._ext.cpu.iht_threshold_fused_float32(s, g, 10, 0.5, False, grid)
        assert bad == (3, 5, 2, 1000)


def test_rejects_bad_sizes():
    s = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="b must be in"):
        fastal._ext.cpu.iht_threshold_fused_float32(s, s, 0, 0.5)
    with pytest.raises(ValueError, match="b must be in"):
        fastal._ext.cpu.iht_threshold_fused_float32(s, s, 11, 0.5)
    with pytest.raises(ValueError, match="grid must be in"):
        fastal._ext.cpu.iht_threshold_fused_float32(s, s, 2, 0.5, False, 0)


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("grid", [1, 4])
def test_b_ends_inside_a_large_bin_of_one_key(exact, grid):
    """Four keys of ~10,000 rows each, all over kBinCandidates (8192): the digit passes run to the
    complete key and take the first `quota` rows of the last bin in index order (write_rows).
    The row just past the quota must be neither in the support nor weighted; with s > 0 in the
    bin its w shows it. The "tied" pools of test_many_rows_per_block_and_empty_blocks have bins
    under 8192 rows (the sort ranks them), so taking one row over the quota passed them."""
    rng = np.random.default_rng(11)
    n = 40_000
    s = np.where(rng.random(n) < 0.5, 0.5, -0.25).astype(np.float32)
    g = np.where(rng.random(n) < 0.5, 0.5, 0.0).astype(np.float32)
    for b in (5_000, 13_333, 25_000, 39_999):
        check(s, g, b, 0.5, exact, grid)
