"""fastal from several Python threads, and inputs whose form hid a problem (thread-safety audit).

The kernels are reentrant; what needs care is process-wide state: torch's default generator, a
model's train / eval flags and hooks, torch's and OpenBLAS's thread counts.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import fastal
import fastal.torch as ft
from fastal import _threads
from fastal.strategies import ALLY, CRC, Entropy

REPEATS = 3


def _concurrently(fn, args):
    with ThreadPoolExecutor(4) as ex:
        return list(ex.map(fn, args))


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(32, 4)
    )


def test_pool_outputs_on_one_shared_model_from_threads():
    """Each pass hooks the feature layer and flips the dropout modules: concurrent passes over one
    model must not see each other's, and the user's train flag comes back."""
    model = _mlp()
    rng = np.random.default_rng(0)
    data = [torch.from_numpy(rng.normal(size=(300, 8)).astype(np.float32)) for _ in range(4)]

    def features_probs(i):
        out = ft.pool_outputs(model, data[i], ("features", "probs"), batch_size=32, progress=False)
        return out["features"], out["probs"]

    def mc(i):
        out = ft.pool_outputs(
            model, data[i], ("mc_probs",), mc_samples=3, seed=0, batch_size=32, progress=False
        )
        return (out["mc_probs"],)

    for fn in (features_probs, mc):
        model.train()
        serial = [fn(i) for i in range(4)]
        for _ in range(REPEATS):
            for got, want in zip(_concurrently(fn, range(4)), serial, strict=True):
                for g, w in zip(got, want, strict=True):
                    assert torch.equal(g, w)
        assert model.training
        assert model[2].training


def test_seeded_ally_from_threads_matches_serial_and_keeps_the_callers_generator():
    rng = np.random.default_rng(0)
    X = [rng.normal(size=(200, 6)).astype(np.float32) for _ in range(4)]
    lab = np.arange(30)

    def pick(i):
        pool = {"features": X[i], "duals": np.abs(X[i][lab, 0])}
        return ALLY(head_steps=40).select(pool, 5, lab, seed=0).indices

    serial = [pick(i) for i in range(4)]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for _ in range(REPEATS):
        for got, want in zip(_concurrently(pick, range(4)), serial, strict=True):
            np.testing.assert_array_equal(got, want)
    assert torch.equal(torch.get_rng_state(), state)


def _thread_count_of_a_new_thread() -> int:
    out = []

    def run():
        torch.ones(4).sum()  # a thread takes torch's default at its first operation
        out.append(torch.get_num_threads())

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0]


def test_one_thread_blocks_in_worker_threads_leave_the_default_alone(limit):
    """Overlapping blocks in two threads used to save each other's lowered count and leave torch's
    process-wide default at one thread."""
    default = _thread_count_of_a_new_thread()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with _threads.one_thread_if_small(torch.device("cpu")):
            seen["a"] = torch.get_num_threads()
            a_in.set()
            b_in.wait()
        a_out.set()

    def b():
        a_in.wait()
        with _threads.one_thread_if_small(torch.device("cpu")):
            b_in.set()
            a_out.wait()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _thread_count_of_a_new_thread() == default
    before = torch.get_num_threads()
    with _threads.one_thread_if_small(torch.device("cpu")):  # the main thread lowers it
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_main_threads_count_is_restored_after_the_block_and_after_an_error(two_threads, limit):
    with _threads.one_thread_if_small(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(KeyError), _threads.one_thread_if_small(torch.device("cpu")):
        raise KeyError("boom")
    assert torch.get_num_threads() == 2
    with _threads.one_thread_if_small(torch.device("cpu"), work=10.0, below=10.0):  # not small
        assert torch.get_num_threads() == 2
    with _threads.one_thread_if_small(torch.device("meta")):  # not the CPU
        assert torch.get_num_threads() == 2


@pytest.fixture(params=["thread-local", "global"])
def limit(request, monkeypatch):
    """Both ways of lowering the count: the calling thread's own (where torch links GNU OpenMP
    and MKL), and torch.set_num_threads in the main thread only (elsewhere)."""
    if request.param == "global":
        monkeypatch.setattr(_threads, "_thread_local_limits", lambda: None)
    elif _threads._thread_local_limits() is None:
        pytest.skip("torch does not link GNU OpenMP and MKL here")
    return request.param


def test_worker_threads_lower_their_own_count_or_none_and_leave_the_default(two_threads, limit):
    assert _thread_count_of_a_new_thread() == 2
    seen = []

    def work():
        with _threads.one_thread_if_small(torch.device("cpu")):
            seen.append(torch.get_num_threads())
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == ([1, 2] if limit == "thread-local" else [2, 2])  # global: the main thread only
    assert _thread_count_of_a_new_thread() == 2


def test_a_thread_that_starts_inside_a_block_takes_the_default(two_threads, limit):
    """torch.set_num_threads(1) in the main thread also lowers the default a thread takes at its
    first torch operation: a thread starting inside ALLY's dual-head training kept one torch
    thread for good (a concurrency audit). The thread-local limit leaves the default alone."""
    with _threads.one_thread_if_small(torch.device("cpu")):
        assert torch.get_num_threads() == 1
        inside = _thread_count_of_a_new_thread()
    assert inside == (2 if limit == "thread-local" else 1)


def test_ally_picks_in_a_worker_thread_are_the_main_threads():
    """With the thread-local limit the dual head trains on one thread in every thread: the picks
    and the head's loss are the main thread's bit for bit."""
    if _threads._thread_local_limits() is None:
        pytest.skip("torch does not link GNU OpenMP and MKL here")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 32)) * 3
    X = (centres[rng.integers(8, size=3000)] + rng.normal(size=(3000, 32))).astype(np.float32)
    lab = np.arange(0, 90, 3)
    pool = {"features": X, "duals": rng.random(lab.size).astype(np.float32)}

    def run():
        s = ALLY(head_steps=300).select(pool, 20, lab, seed=0)
        return s.indices.tolist(), s.diagnostics["head_train_mse"]

    main = run()
    with ThreadPoolExecutor(1) as ex:
        assert ex.submit(run).result() == main


def test_overlapping_kmeans_blas_limits_restore_the_original():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from fastal import _blas

    def blas():
        return [
            i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
        ]

    original = blas()
    first, second = _blas._one_blas_thread(), _blas._one_blas_thread()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first call ends while the second still runs
    assert all(n == 1 for n in blas())  # ... whose GEMMs must stay off OpenBLAS's own pool
    second.__exit__(None, None, None)
    assert blas() == original


def test_concurrent_kmeans_match_serial():
    rng = np.random.default_rng(0)
    X = [rng.normal(size=(3000, 16)).astype(np.float32) for _ in range(4)]

    def run(i):
        return fastal.kmeans(X[i], 40, seed=0, max_iter=5).centres

    serial = [run(i) for i in range(4)]
    for got, want in zip(_concurrently(run, range(4)), serial, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_ally_and_maximize_dual_inside_inference_mode():
    from fastal.ally import backbone, fit_dual_head, maximize_dual

    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 8)).astype(np.float32)
    lab = np.arange(30)
    pool = {"features": X, "duals": np.abs(X[lab, 0])}
    want = ALLY(head_steps=30).select(pool, 5, lab, seed=0).indices
    embed = backbone(_mlp().eval())  # a trained model; the selection code runs in inference mode
    with torch.inference_mode():
        np.testing.assert_array_equal(
            ALLY(head_steps=30).select(pool, 5, lab, seed=0).indices, want
        )
        Xt = torch.from_numpy(X)
        head = fit_dual_head(embed(Xt), Xt[:, 0].abs(), steps=50, seed=0)
        _, trace = maximize_dual(embed, head, torch.zeros(4, 8), steps=5)
    assert trace.shape == (6,)
    assert np.isfinite(trace).all()


def test_masked_arrays_with_masked_entries_are_refused():
    """The kernels read the stored values under a mask: refuse rather than use them."""
    X = np.ma.masked_array(np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32))
    np.testing.assert_array_equal(
        fastal.kcenter_greedy(X, 3, labeled=[0]), fastal.kcenter_greedy(X.data, 3, labeled=[0])
    )  # nothing masked: used as it is
    X[5, 2] = np.ma.masked
    with pytest.raises(ValueError, match=r"X is a masked array with masked entries \(1\)"):
        fastal.kcenter_greedy(X, 3, labeled=[0])
    P = np.ma.masked_array(np.full((10, 3), 1 / 3))
    P[2, 0] = np.ma.masked
    with pytest.raises(ValueError, match="masked"):
        Entropy().select({"probs": P}, 2)


def test_strided_index_arrays_reach_the_kernels():
    """Non-contiguous int64 index views (idx[::2], a torch view) used to fail in the bindings."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 5)).astype(np.float32)
    every = np.arange(0, 120, dtype=np.int64)
    lab_view, lab = every[:40:4], np.ascontiguousarray(every[:40:4])
    for view in (lab_view, torch.from_numpy(every)[:40:4]):
        np.testing.assert_array_equal(
            np.asarray(fastal.kmeans_pp(X, 5, labeled=view, seed=0)),
            np.asarray(fastal.kmeans_pp(X, 5, labeled=lab, seed=0)),
        )
    groups = np.arange(60, 100, dtype=np.int64).reshape(4, 10)
    np.testing.assert_array_equal(
        fastal.gram_min_eig(X, lab_view, groups), fastal.gram_min_eig(X, lab, groups)
    )
    pool = {"probs": rng.dirichlet(np.ones(3), 120), "features": X}
    np.testing.assert_array_equal(
        CRC(group_size=5).select(pool, 10, lab_view, seed=0).indices,
        CRC(group_size=5).select(pool, 10, lab, seed=0).indices,
    )


def test_torch_tensor_subclasses_are_torch_inputs():
    class Tagged(torch.Tensor):
        pass

    X = torch.randn(40, 3).as_subclass(Tagged)
    picks = fastal.kcenter_greedy(X, 4, labeled=[0])
    assert isinstance(picks, torch.Tensor)
    assert picks.dtype == torch.int64
    np.testing.assert_array_equal(
        picks.numpy(), fastal.kcenter_greedy(X.as_subclass(torch.Tensor), 4, labeled=[0]).numpy()
    )


def _blas_threads() -> list[int]:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def test_kmeans_blas_limit_holds_in_a_worker_thread_after_the_main_thread():
    """threadpoolctl >= 3.8 ignores every thread's OpenBLAS limit but its first setter's until
    that thread lets go: after a k-means in the main thread, one in a worker thread ran
    OpenBLAS's own pool inside fastal's OpenMP threads ("Detect OpenMP Loop" warnings)."""
    from fastal import _blas

    original = _blas_threads()
    with _blas._one_blas_thread():
        pass
    seen = []

    def work():
        with _blas._one_blas_thread():
            seen.append(_blas_threads())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen
    assert all(n == 1 for n in seen[0])
    assert _blas_threads() == original


def test_kmeans_blas_limit_is_restored_by_a_thread_other_than_its_setter():
    from fastal import _blas

    original = _blas_threads()
    first = _blas._one_blas_thread()
    first.__enter__()  # the main thread sets the limit
    second = _blas._one_blas_thread()
    t = threading.Thread(target=second.__enter__)
    t.start()
    t.join()
    first.__exit__(None, None, None)
    t = threading.Thread(target=lambda: second.__exit__(None, None, None))  # the last one out
    t.start()
    t.join()
    assert _blas_threads() == original


def test_the_thread_limit_switch_is_checked(monkeypatch):
    monkeypatch.setenv("FASTAL_THREAD_LIMIT", "sometimes")
    _threads._thread_local_limits.cache_clear()
    try:
        with pytest.raises(ValueError, match="FASTAL_THREAD_LIMIT must be"):
            _threads._thread_local_limits()
        monkeypatch.setenv("FASTAL_THREAD_LIMIT", "global")
        _threads._thread_local_limits.cache_clear()
        assert _threads._thread_local_limits() is None
    finally:
        monkeypatch.delenv("FASTAL_THREAD_LIMIT")
        _threads._thread_local_limits.cache_clear()
