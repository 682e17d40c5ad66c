"""Long CPU selections stay interruptible: the kernels run without the GIL, so their steps are
split into calls of bounded work (ops._INTERRUPT_WORK; ops._INTERRUPT_PAIRS for min-distance) and
Ctrl-C is seen between calls."""

import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import fastal
from fastal import _ext, ops


class _CountingKernel:
    """Wraps a steps kernel: counts its calls and the steps they were given (t0, t1: its last
    two arguments), before each call, so an interrupt raised as a call returns cannot hide it."""

    def __init__(self, kernel, on_first_call=None):
        self.kernel, self.on_first_call = kernel, on_first_call
        self.calls = self.steps = 0

    def __call__(self, *args):
        self.calls += 1
        self.steps += args[-1] - args[-2]
        if self.calls == 1 and self.on_first_call is not None:
            self.on_first_call()
        return self.kernel(*args)


def _pool(n=3000, d=16):
    return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("labeled", [None, np.arange(4)])
def test_kcenter_steps_run_in_bounded_calls_with_the_same_picks(monkeypatch, labeled):
    X = _pool()
    whole = fastal.kcenter(X, 60, labeled=labeled, seed=1)
    counter = _CountingKernel(_ext.cpu.kcenter_steps_float32)
    monkeypatch.setattr(_ext.cpu, "kcenter_steps_float32", counter)
    monkeypatch.setattr(ops, "_INTERRUPT_WORK", 7 * X.size)  # 7 steps per call
    split = fastal.kcenter(X, 60, labeled=labeled, seed=1)
    assert counter.calls == 9  # ceil(60 / 7)
    assert counter.steps == 60
    assert_array_equal(split.indices, whole.indices)
    assert_array_equal(split.radius, whole.radius)
    assert split.rows_read == whole.rows_read


class _CountingCalls:
    """Wraps a kernel: counts its calls and the rows of X (its first argument's first array)."""

    def __init__(self, kernel):
        self.kernel, self.calls, self.rows = kernel, 0, []

    def __call__(self, pool, *args):
        self.calls += 1
        self.rows.append(pool[0].shape[0])
        return self.kernel(pool, *args)


@pytest.mark.parametrize("factored", [False, True])
def test_min_distance_runs_in_bounded_calls_with_the_same_result(monkeypatch, factored):
    X = _pool(5000, 24)
    Y = X[::97] * 1.5
    if factored:
        X = fastal.GradientEmbedding(X[:, :4], X[:, 4:])
        Y = fastal.GradientEmbedding(Y[:, :4], Y[:, 4:])
    dtype = "float32"
    whole = fastal.min_distance(X, Y)
    counter = _CountingCalls(getattr(_ext.cpu, f"min_sqdist_to_set_{dtype}"))
    monkeypatch.setattr(_ext.cpu, f"min_sqdist_to_set_{dtype}", counter)
    monkeypatch.setattr(ops, "_INTERRUPT_PAIRS", 1)  # the floor: 1024 rows per call
    split = fastal.min_distance(X, Y)
    assert counter.rows == [1024] * 4 + [904]
    assert_array_equal(split[0], whole[0])
    assert_array_equal(split[1], whole[1])


@pytest.mark.parametrize("factored", [False, True])
def test_kcenter_start_from_a_labeled_set_runs_in_bounded_calls(monkeypatch, factored):
    """The distances to the labeled set come from the same bounded min-distance calls; the
    picks, radii, initial radius and rows read do not change."""
    X = _pool(5000, 24)
    if factored:
        X = fastal.GradientEmbedding(X[:, :4], X[:, 4:])
    labeled = np.arange(0, 5000, 50)
    whole = fastal.kcenter(X, 30, labeled=labeled)
    counter = _CountingCalls(_ext.cpu.min_sqdist_to_set_float32)
    monkeypatch.setattr(_ext.cpu, "min_sqdist_to_set_float32", counter)
    monkeypatch.setattr(ops, "_INTERRUPT_PAIRS", 1)
    split = fastal.kcenter(X, 30, labeled=labeled)
    assert counter.calls == 5
    assert_array_equal(split.indices, whole.indices)
    assert_array_equal(split.radius, whole.radius)
    assert split.initial_radius == whole.initial_radius
    assert split.rows_read == whole.rows_read


def test_kmeans_pp_start_from_a_labeled_set_runs_in_bounded_calls(monkeypatch):
    X = _pool(5000, 24)
    labeled = np.arange(0, 5000, 50)
    whole = fastal.kmeans_pp(X, 30, labeled=labeled, seed=2)
    counter = _CountingCalls(_ext.cpu.min_sqdist_to_set_float32)
    monkeypatch.setattr(_ext.cpu, "min_sqdist_to_set_float32", counter)
    monkeypatch.setattr(ops, "_INTERRUPT_PAIRS", 1)
    split = fastal.kmeans_pp(X, 30, labeled=labeled, seed=2)
    assert counter.calls == 5
    assert_array_equal(split, whole)


def test_kmeans_pp_steps_run_in_bounded_calls_with_the_same_picks(monkeypatch):
    X = _pool()
    whole = fastal.kmeans_pp(X, 40, seed=3)
    counter = _CountingKernel(_ext.cpu.kmeanspp_steps_float32)
    monkeypatch.setattr(_ext.cpu, "kmeanspp_steps_float32", counter)
    monkeypatch.setattr(ops, "_INTERRUPT_WORK", 10 * X.size)
    split = fastal.kmeans_pp(X, 40, seed=3)
    assert counter.calls >= 4
    assert_array_equal(split, whole)


_CTRL_C_SCRIPT = r"""
import signal, sys, threading
import numpy as np
import fastal
from fastal import _ext, ops

kernel, calls = _ext.cpu.kcenter_steps_float32, []
def counting(*args):
    calls.append(args[-1] - args[-2])
    return kernel(*args)
_ext.cpu.kcenter_steps_float32 = counting
X = np.random.default_rng(0).standard_normal((50_000, 64)).astype(np.float32)
ops._INTERRUPT_WORK = X.size  # one step per call
budget = 5000
# Python keeps SIGINT ignored when it starts so (a background job of a non-interactive shell)
signal.signal(signal.SIGINT, signal.default_int_handler)
main = threading.main_thread().ident
timer = threading.Timer(0.2, signal.pthread_kill, args=(main, signal.SIGINT))
timer.start()
try:
    fastal.kcenter(X, budget, seed=0)
except KeyboardInterrupt:
    timer.join()
    print(len(calls), sum(calls))
    sys.exit(0 if 0 < sum(calls) < budget else 1)
timer.join()
sys.exit("not interrupted after %d steps" % sum(calls))
"""


def test_ctrl_c_stops_a_long_kcenter_between_calls():
    """SIGINT from another thread while the kernels run (without the GIL): KeyboardInterrupt
    between two calls, long before the budget is done. In a fresh interpreter that installs
    Python's SIGINT handler itself: a test run started as a background job of a non-interactive
    shell inherits SIGINT ignored, which Python keeps, and the signal then does nothing."""
    run = subprocess.run(
        [sys.executable, "-c", _CTRL_C_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    calls, steps = map(int, run.stdout.split())
    assert calls == steps  # one step per call: the selection was split


class _CountingGroups:
    """Wraps a Gram kernel: counts its calls and the groups (its 2-D int64 argument) given."""

    def __init__(self, kernel):
        self.kernel, self.calls, self.groups = kernel, 0, 0

    def __call__(self, *args):
        self.calls += 1
        self.groups += next(
            a for a in args if getattr(a, "ndim", 0) == 2 and a.dtype == np.int64
        ).shape[0]
        return self.kernel(*args)


@pytest.mark.parametrize(
    ("method", "return_all"), [("tridiagonal", False), ("tridiagonal", True), ("lowrank", False)]
)
def test_gram_groups_run_in_bounded_calls_with_the_same_values(monkeypatch, method, return_all):
    from fastal import gram

    rng = np.random.default_rng(5)
    Z = rng.standard_normal((400, 24))
    labeled = np.arange(10)
    groups = 10 + rng.permutation(390)[:300].reshape(-1, 5)  # 60 groups of 5: |S| = 15 < D
    whole = fastal.gram_min_eig(Z, labeled, groups, method=method, return_all=return_all)
    name = "gram_min_eig_lowrank_float64" if method == "lowrank" else "gram_min_eig_float64"
    counter = _CountingGroups(getattr(_ext.cpu, name))
    monkeypatch.setattr(_ext.cpu, name, counter)
    monkeypatch.setattr(gram, "_INTERRUPT_WORK", 1.0)  # as few groups per call as allowed
    split = fastal.gram_min_eig(Z, labeled, groups, method=method, return_all=return_all)
    assert counter.calls > 1
    assert counter.groups == len(groups)
    if return_all:
        assert_array_equal(split[0], whole[0])
        assert_array_equal(split[1], whole[1])
    else:
        assert_array_equal(split, whole)
