"""Lloyd with Yinyang bounds (csrc/cpu/kmeans_bounded.cpp, ``kmeans(prune=True)``) and the label
rule both Lloyd kernels share (csrc/cpu/lloyd_tile.h): a row's label is its least direct squared
distance, the GEMM only filtering. The bounded steps must give the plain steps' labels, sums and
counts bit for bit, their bounds must hold against float64 distances, and the labels must not
depend on the BLAS.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from conftest import gaussian, mixture
from numpy.testing import assert_array_equal
from test_kmeans_fused import integer_pool, use_blas

import fastal
from fastal import _blas, _ext, _lloyd, _lloyd_fused
from fastal.strategies import KMeansSampling

kmeans_module = importlib.import_module("fastal.kmeans")


def lloyd_pair(X: np.ndarray, k: int, steps: int, seed: int = 0):
    """Lloyd iterations from k random rows, the plain fused step and the bounded one side by side
    on the same centres; yields (bounded, plain outputs, bounded outputs) after each step."""
    info = fastal._validate.check_matrix(X, "X")
    xt = torch.from_numpy(X)
    rng = np.random.default_rng(seed)
    centres = xt[torch.from_numpy(rng.choice(X.shape[0], k, replace=False))].clone()
    plain = _lloyd_fused._fused_lloyd(info, k)
    bounded = _lloyd_fused._BoundedLloyd(info, centres)
    xsq = _lloyd._row_sqnorms(xt, xt.dtype)
    with _blas._one_blas_thread():
        for _ in range(steps):
            want = tuple(plain(xt, xsq, centres))
            got = bounded.step(xt, xsq, centres)
            yield bounded, want, got, centres
            sums, counts = want[2], want[3]
            centres = _lloyd._relocate_empty(sums, counts, xt, want[1], xt.dtype)


POOLS = {
    "mixture": lambda: mixture(3000, 24, 30, seed=1),
    "gaussian": lambda: gaussian(2000, 16, seed=2),
    "integers": lambda: integer_pool(1500, 6, 40, seed=3),  # exact ties everywhere
    "offset": lambda: mixture(1200, 8, 20, seed=4) + 1e3,  # the GEMM's rounding dwarfs gaps
}


@pytest.mark.parametrize("blas", ["mkl", "openblas"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("pool", sorted(POOLS))
def test_bounded_steps_equal_the_plain_steps(monkeypatch, blas, dtype, pool):
    use_blas(monkeypatch, blas)
    X = POOLS[pool]().astype(dtype)
    for step in lloyd_pair(X, 64, steps=8):
        bounded, want, got, _ = step
        assert_array_equal(got[0].numpy(), want[0].numpy())
        assert_array_equal(got[1].numpy(), want[2].numpy())  # float64 sums, bit for bit
        assert_array_equal(got[2].numpy(), want[3].numpy())
    if pool == "mixture":  # the bounds must have spared work, or this test proves nothing
        assert bounded.computed < 0.5 * bounded.possible


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bounds_hold_against_float64_distances(dtype):
    X = mixture(2000, 12, 25, seed=5).astype(dtype)
    X64 = X.astype(np.float64)
    for bounded, _, got, centres in lloyd_pair(X, 48, steps=6):
        c = centres.numpy().astype(np.float64)
        dist = np.sqrt(((X64[:, None, :] - c[None]) ** 2).sum(-1))
        rows = np.arange(X.shape[0])
        labels = got[0].numpy()
        assert np.all(bounded.upper >= dist[rows, labels])
        others = dist.copy()
        others[rows, labels] = np.inf
        assert np.all(bounded.glower <= others.min(1))
        for g in range(bounded.t):
            members = bounded.group == g
            group_least = others[:, members].min(1)
            assert np.all(bounded.lower[:, g].astype(np.float64) - bounded.offset[g] <= group_least)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize("tol", [1e-4, 0.0])
def test_kmeans_prune_gives_the_unpruned_fit(dtype, framework, tol):
    X = mixture(4000, 20, 40, seed=7).astype(dtype)
    data = torch.from_numpy(X) if framework == "torch" else X
    fits = [fastal.kmeans(data, 80, seed=3, tol=tol, prune=p) for p in (True, False)]
    pruned, plain = fits
    assert_array_equal(np.asarray(pruned.labels), np.asarray(plain.labels))
    assert_array_equal(np.asarray(pruned.centres), np.asarray(plain.centres))
    assert (pruned.inertia, pruned.n_iter, pruned.converged) == (
        plain.inertia, plain.n_iter, plain.converged,
    )  # fmt: skip
    assert plain.distance_share == 1.0
    assert 0 < pruned.distance_share < 0.6


def test_empty_clusters_and_excluded_rows_keep_the_unpruned_fit():
    """Centres given twice leave clusters empty (ties go to the first copy), so the fit takes
    the relocation path; excluded rows (KMeansSampling's labeled ones) stay in the sums until
    taken out."""
    X = mixture(3000, 10, 30, seed=8).astype(np.float32)
    init = np.repeat(X[:20], 2, axis=0)[:40]
    exclude = np.arange(0, 3000, 7, dtype=np.int64)
    for kw in ({}, {"exclude": exclude}):
        fits = [
            kmeans_module._kmeans(X, 40, init=init, tol=0.0, prune=p, **kw) for p in (True, False)
        ]
        assert_array_equal(np.asarray(fits[0].labels), np.asarray(fits[1].labels))
        assert_array_equal(np.asarray(fits[0].centres), np.asarray(fits[1].centres))
        assert fits[0].n_iter == fits[1].n_iter


def test_kmeans_sampling_picks_are_unchanged_by_the_bounds(monkeypatch):
    X = mixture(3000, 16, 30, seed=9).astype(np.float32)
    labeled = np.arange(0, 3000, 10)
    picks = KMeansSampling().select(X, 64, labeled=labeled, seed=1).indices
    # the plain steps only
    monkeypatch.setattr(kmeans_module, "_BoundedLloyd", lambda info, centres: None)
    assert_array_equal(KMeansSampling().select(X, 64, labeled=labeled, seed=1).indices, picks)


def test_distance_share_where_the_bounds_do_not_apply():
    X = mixture(500, 4, 10, seed=10).astype(np.float32)
    assert fastal.kmeans(X, 10, seed=0).distance_share == 1.0  # k < 32: the min-distance kernel
    assert fastal.kmeans(X, 40, seed=0, prune=False).distance_share == 1.0
    assert fastal.kmeans(X, 40, seed=0, minibatch=64).distance_share is None
    # 16-bit rows go through the bounds too: their steps count the distances they computed (plain
    # and fresh bounded steps count n k each)
    assert fastal.kmeans(X.astype(np.float16), 40, seed=0).distance_share != 1.0


def test_prune_must_be_a_bool():
    with pytest.raises(TypeError, match="prune must be a bool"):
        fastal.kmeans(np.zeros((40, 2)), 2, prune="yes")


def test_kernel_rejects_bad_state():
    kernel = _ext.cpu.kmeans_lloyd_bounded_step_float64
    gemm = _blas._openblas_gemm("float64")
    n, d, k, t = 10, 4, 6, 2
    X, xsq, c = np.zeros((n, d)), np.zeros(n), np.zeros((k, d))
    group = np.array([0, 0, 0, 1, 1, 1], dtype=np.int32)

    def call(**over):
        args = dict(
            X=X, xsq=xsq, centres=c, shift=np.zeros(k), group=group, n_groups=t, fresh=False,
            labels=np.zeros(n, dtype=np.int64), upper=np.zeros(n, dtype=np.float32),
            glower=np.zeros(n, dtype=np.float32), lower=np.zeros((n, t), dtype=np.float32),
            offset=np.zeros(t), gemm_address=gemm,
        )  # fmt: skip
        args.update(over)
        return kernel(**args)

    call()  # the valid state runs
    with pytest.raises(ValueError, match=r"group\[5\] = 2"):
        call(group=np.array([0, 0, 0, 1, 1, 2], dtype=np.int32))
    with pytest.raises(ValueError, match=r"labels\[3\] = 6"):
        call(labels=np.array([0, 0, 0, 6, 0, 0, 0, 0, 0, 0], dtype=np.int64))
    with pytest.raises(ValueError, match=r"shift\[1\]"):
        call(shift=np.array([0, -1.0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="lower must have shape"):
        call(lower=np.zeros((n, t + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="n_groups"):
        call(n_groups=k + 1)
    with pytest.raises(ValueError, match="glower"):
        call(glower=np.zeros(n - 1, dtype=np.float32))
    with pytest.raises(ValueError, match="offset"):
        call(offset=np.zeros(t + 1))
    with pytest.raises(ValueError, match="gemm_address"):
        call(gemm_address=0)


def test_steps_where_the_bounds_settle_nothing_back_off_to_plain_steps(monkeypatch):
    """On Gaussian noise the first iterations move every row's bounds past use: a bounded step
    that computes (nearly) every distance is followed by plain steps (1, 2, 4, ...), then the
    bounds may start afresh. The fit is the unpruned one bit for bit either way."""
    calls = []
    step = _lloyd_fused._BoundedLloyd.step

    def counted(self, *args):
        calls.append(self.previous is None)  # fresh?
        return step(self, *args)

    monkeypatch.setattr(_lloyd_fused._BoundedLloyd, "step", counted)
    X = np.random.default_rng(3).normal(size=(6000, 16)).astype(np.float32)
    C0 = X[:200].copy()
    plain = fastal.kmeans(X, 200, init=C0, max_iter=12, tol=0.0, prune=False)
    monkeypatch.setattr(_lloyd_fused, "_BOUNDS_START", 0.0)  # retry whenever allowed
    pruned = fastal.kmeans(X, 200, init=C0, max_iter=12, tol=0.0)
    assert_array_equal(pruned.labels, plain.labels)
    assert_array_equal(pruned.centres, plain.centres)
    assert pruned.inertia == plain.inertia
    assert len(calls) < 12  # some steps ran plain
    assert sum(calls) >= 2  # ... and the bounds started afresh after them
    monkeypatch.setattr(_lloyd_fused, "_BOUNDS_GIVE_UP", 2.0)  # never give up: every step bounded
    calls.clear()
    again = fastal.kmeans(X, 200, init=C0, max_iter=12, tol=0.0)
    assert len(calls) == 12
    assert sum(calls) == 1
    assert_array_equal(again.labels, plain.labels)


def test_the_bounds_start_again_where_the_margins_say_they_would_settle_rows(monkeypatch):
    """A fresh bounded step costs up to ~1.5 plain ones: after a step that gave up, the bounds
    start again only once the last plain step's margins exceed the centres' moves on
    _BOUNDS_START of the rows. Over the first 12 iterations on Gaussian noise (d = 128, k = 100)
    they do not (retrying on the 1, 2, 4, ... schedule alone made such a fit ~1.4x slower
    than a plain one, session 38); on a mixture they start again after one plain step and stay."""
    calls = []
    step = _lloyd_fused._BoundedLloyd.step

    def counted(self, *args):
        calls.append(self.previous is None)
        return step(self, *args)

    monkeypatch.setattr(_lloyd_fused._BoundedLloyd, "step", counted)
    X = np.random.default_rng(3).normal(size=(10_000, 128)).astype(np.float32)
    noise = fastal.kmeans(X, 100, init=X[:100].copy(), max_iter=12, tol=0.0)
    assert calls == [True, False]  # the fresh step and the one that gave up
    assert noise.n_iter == 12
    M = mixture(3000, 16, 30, seed=9).astype(np.float32)
    calls.clear()
    clustered = fastal.kmeans(M, 64, seed=0, tol=0.0)
    assert calls[:2] == [True, False]  # the first moves are large: this one gave up
    assert len(calls) == clustered.n_iter - 1  # a plain step, then the bounds again for good
    assert clustered.distance_share < 0.5
    monkeypatch.setattr(_lloyd_fused, "_BOUNDS_START", 0.0)  # the schedule alone: retries
    calls.clear()
    again = fastal.kmeans(X, 100, init=X[:100].copy(), max_iter=12, tol=0.0)
    assert sum(calls) >= 2
    assert_array_equal(again.labels, noise.labels)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_the_plain_step_measures_each_rows_margin(dtype):
    """margin = the runner-up centre's distance minus the nearest's (from the GEMM tile, so to
    its rounding), against float64 distances; 0 for equal centres."""
    X = mixture(700, 12, 20, seed=11).astype(np.float32)
    xt = torch.from_numpy(X).to(getattr(torch, dtype))
    info = fastal._validate.check_matrix(xt, "X")
    X64 = xt.to(torch.float64).numpy()
    acc = torch.float64 if dtype == "float64" else torch.float32
    centres = xt[:40].to(acc) + 0.01
    xsq = _lloyd._row_sqnorms(xt, acc)
    margin = np.full(700, np.nan, dtype=np.float64 if dtype == "float64" else np.float32)
    with _blas._one_blas_thread():
        _lloyd_fused._fused_lloyd(info, 40)(xt, xsq, centres, margin=margin)
    c64 = centres.numpy().astype(np.float64)
    dist = np.sort(np.sqrt(((X64[:, None] - c64[None]) ** 2).sum(-1)), axis=1)
    scale = np.sqrt((X64**2).sum(1)).max() + np.sqrt((c64**2).sum(1)).max()
    atol = 1e-9 * scale if dtype == "float64" else 3e-3 * scale
    np.testing.assert_allclose(margin, dist[:, 1] - dist[:, 0], rtol=0, atol=atol)
    one = np.empty(700, dtype=margin.dtype)
    with _blas._one_blas_thread():
        _lloyd_fused._fused_lloyd(info, 32)(xt, xsq, centres[:1].expand(32, -1).clone(), margin=one)
    assert np.all(one == 0)  # 32 equal centres: the runner-up is as near as the nearest


def test_one_centre_has_no_runner_up():
    X = np.random.default_rng(1).normal(size=(300, 5)).astype(np.float32)
    xsq = (X.astype(np.float64) ** 2).sum(1).astype(np.float32)
    gemm, threads_local = _blas._gemm_backend("float32")
    margin = np.zeros(300, np.float32)
    labels, *_ = _ext.cpu.kmeans_lloyd_step_float32(
        X, xsq, X[:1].copy(), gemm, threads_local, margin=margin
    )
    assert np.all(labels == 0)
    assert np.all(np.isposinf(margin))


def test_the_margin_buffer_is_checked():
    """Each wrong buffer is named with its fault; one that shares memory with an input would be
    written while other threads read it (xsq has margin's dtype and shape: an easy mistake)."""
    X = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    xsq = (X.astype(np.float64) ** 2).sum(1).astype(np.float32)
    centres = X[:3].copy()
    gemm, threads_local = _blas._gemm_backend("float32")
    step = _ext.cpu.kmeans_lloyd_step_float32
    read_only = np.zeros(50, np.float32)
    read_only.flags.writeable = False
    for bad, match in (
        (np.zeros(50), r"^margin must have dtype float32, got float64$"),
        (np.zeros(50, ">f4"), r"^margin must have dtype float32, got >f4$"),
        (np.zeros(49, np.float32), r"^margin must have shape \(50,\)"),
        (np.zeros(100, np.float32)[::2], r"^margin must be C-contiguous$"),
        (read_only, r"^margin must be writable$"),
        (torch.zeros(50), r"^margin must be a numpy array or None, got Tensor$"),
        ([0.0] * 50, r"^margin must be a numpy array or None, got list$"),
        (xsq, r"^margin must not share memory with X, xsq or centres$"),
        (X.reshape(-1)[:50], r"^margin must not share memory with X, xsq or centres$"),
    ):
        before = xsq.copy(), X.copy()
        with pytest.raises(ValueError, match=match):
            step(X, xsq, centres, gemm, threads_local, margin=bad)
        assert_array_equal(xsq, before[0])
        assert_array_equal(X, before[1])
    shared = np.zeros(12 + 50, np.float32)
    shared[:12] = centres.reshape(-1)
    with pytest.raises(ValueError, match="must not share memory"):
        step(X, xsq, shared[:12].reshape(3, 4), gemm, threads_local, margin=shared[2:52])


def test_the_restart_test_adds_the_rows_own_centre_shift(monkeypatch):
    """Yinyang's global test settles a row when its margin exceeds its own centre's shift plus
    the largest shift: rows of a centre that moved stay open, the others settle."""
    X = mixture(400, 4, 8, seed=12).astype(np.float32)
    info = fastal._validate.check_matrix(X, "X")
    centres = torch.from_numpy(X[:32].copy())
    bounded = _lloyd_fused._BoundedLloyd(info, centres)
    assert bounded.use(centres)  # the first step goes through the bounds
    labels = torch.from_numpy(np.repeat([0, 1], 200))
    bounded.margin[:] = 1.0
    bounded.plain_step(centres, labels)
    moved = centres.clone()
    moved[0, 0] += 0.6  # rows of centre 0: 1.0 < 0.6 + 0.6, open; rows of centre 1: 1.0 > 0 + 0.6
    monkeypatch.setattr(_lloyd_fused, "_BOUNDS_START", 0.45)
    assert bounded.use(moved)  # half the rows settle
    monkeypatch.setattr(_lloyd_fused, "_BOUNDS_START", 0.55)
    assert not bounded.use(moved)
    bounded.plain_left = 1  # after a give-up: plain steps first, whatever the margins say
    monkeypatch.setattr(_lloyd_fused, "_BOUNDS_START", 0.0)
    assert not bounded.use(moved)


def test_open_rows_break_exact_ties_to_the_lowest_centre():
    """A row the bounds open (kmeans_bounded.cpp, open_row) starts from its old centre a; a
    centre j < a that moved to exactly the same distance must take it (ties to the lowest index,
    as the plain step). Integer data: every distance is exact. The pools of
    test_bounded_steps_equal_the_plain_steps never put a moved centre at an exact tie with an
    opened row's old centre, so dropping the tie clause passed them."""
    k = 32
    base = np.stack([10.0 * np.arange(k), np.zeros(k)], axis=1)
    special = base[:-1] + [6.0, 0.0]  # 6 from centre i, 4 from centre i + 1: label i + 1
    X = np.vstack([base - [1.0, 0.0], base, base + [1.0, 0.0], special])
    moved = base.copy()
    moved[::2, 0] += 2.0  # even centres step by +2: every special row now ties i with i + 1
    info = fastal._validate.check_matrix(X, "X")
    xt = torch.from_numpy(X)
    xsq = _lloyd._row_sqnorms(xt, xt.dtype)
    plain = _lloyd_fused._fused_lloyd(info, k)
    bounded = _lloyd_fused._BoundedLloyd(info, torch.from_numpy(base))
    with _blas._one_blas_thread():
        for c in (base, moved):
            centres = torch.from_numpy(c)
            want = tuple(plain(xt, xsq, centres))
            got = bounded.step(xt, xsq, centres)
            assert_array_equal(got[0].numpy(), want[0].numpy())
            assert_array_equal(got[1].numpy(), want[2].numpy())
            assert_array_equal(got[2].numpy(), want[3].numpy())
    assert_array_equal(got[0].numpy()[3 * k :], np.arange(k - 1))  # 4 = 4 or 6 = 6: centre i
    assert bounded.computed < bounded.possible  # the second step went through the bounds
