"""CUDA kernels on a pool of more than 2^32 values: row offsets must be computed in 64 bits.

5 · 2^20 rows of 1024 float16 values (10 GiB on the device; skipped with less free memory). Far
rows are planted past element 2^31 (a signed 32-bit offset wraps) and past 2^32 (an unsigned one
does), so k-center greedy picks them only if it reads them at the right address, and
min_distance must give their exact distances. The CPU kernels were checked at this size by hand
(session 16); the pool is too large for CI.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastal

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.cuda, pytest.mark.slow]

N, D = 5 << 20, 1024
# row -> the value of all its columns, in the order k-center must pick them from row 0
PLANTED = {N - 1: 8.0, (1 << 22) + 7: -6.0, (1 << 21) + 5: 4.0}


@pytest.fixture(scope="module")
def pool():
    if not fastal.cuda_available():
        pytest.skip("needs a CUDA GPU and fastal built with its CUDA module")
    free, _ = torch.cuda.mem_get_info()
    if free < 14 * 2**30:
        pytest.skip(f"needs 14 GiB of free device memory, {free / 2**30:.1f} GiB free")
    gen = torch.Generator(device="cuda").manual_seed(0)
    X = torch.empty((N, D), dtype=torch.float16, device="cuda")
    X.normal_(0.0, 0.01, generator=gen)
    for row, value in PLANTED.items():
        X[row] = value
    assert N * D > 2**32
    assert min(PLANTED) * D > 2**31
    assert max(PLANTED) * D > 2**32
    yield X
    del X
    torch.cuda.empty_cache()


@pytest.mark.parametrize("prune", [True, False])
def test_kcenter_picks_rows_past_2_to_the_32(pool, prune):
    picks, radius = fastal.kcenter_greedy(pool, 3, labeled=[0], prune=prune, return_radius=True)
    assert picks.device == pool.device
    assert picks.dtype == torch.int64
    assert picks.tolist() == list(PLANTED)
    # after the three far rows only the noise is left: about 0.45 from row 0, far below them
    assert float(radius[-1]) < 1.0 < float(radius[-2])


def test_min_distance_to_rows_past_2_to_the_32(pool):
    rows = torch.tensor(list(PLANTED), device=pool.device)
    dist, nearest = fastal.min_distance(pool, pool[rows])
    assert dist.shape == (N,)
    assert nearest.shape == (N,)
    assert dist[rows].tolist() == [0.0, 0.0, 0.0]
    assert nearest[rows].tolist() == [0, 1, 2]
    # a sample of rows, last ones included, against float64 on the same stored values
    sample = torch.cat([torch.arange(0, N, 9973, device=pool.device), rows - 1])
    want = torch.cdist(pool[sample].double(), pool[rows].double()).min(dim=1)
    np.testing.assert_allclose(dist[sample].cpu().numpy(), want.values.cpu().numpy(), rtol=2e-3)
    assert torch.equal(nearest[sample], want.indices)
