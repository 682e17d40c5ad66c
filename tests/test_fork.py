"""fastal in a forked child: GNU OpenMP's team threads do not survive fork, so the child's first
parallel region used to wait for them forever (multiprocessing's "fork" start method, DataLoader
workers). The child now runs the kernels on one thread, with the same results, under GNU OpenMP
and LLVM's libomp (a clang build, whose fork handler must not call the runtime: it hung), and so do
torch's CPU ops, which fastal's k-means uses."""

import multiprocessing as mp
import warnings

import numpy as np
import pytest
import torch

import fastal
from fastal import _ext

pytestmark = pytest.mark.skipif(
    "fork" not in mp.get_all_start_methods(), reason="needs the fork start method"
)


def _child(X, labeled, out):
    picks = fastal.kcenter_greedy(X, 7, labeled=labeled)
    lloyd = fastal.kmeans(X, 4, seed=0, max_iter=3).centres
    out.put((picks, lloyd, _ext.cpu.in_forked_child(), _ext.cpu.num_threads()))


def test_kernels_run_in_a_forked_child_after_the_parent_used_its_threads():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60_000, 16)).astype(np.float32)  # large enough for a parallel team
    labeled = np.arange(5)
    picks = fastal.kcenter_greedy(X, 7, labeled=labeled)
    lloyd = fastal.kmeans(X, 4, seed=0, max_iter=3).centres
    assert not _ext.cpu.in_forked_child()

    ctx = mp.get_context("fork")
    out = ctx.Queue()
    with warnings.catch_warnings():  # Python >= 3.12 warns about fork in a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        child = ctx.Process(target=_child, args=(X, labeled, out))
        child.start()
    try:
        got = out.get(timeout=60)  # a regression hangs the child: fail instead of waiting forever
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
    child_picks, child_lloyd, forked, threads = got
    assert forked
    assert threads == 1
    np.testing.assert_array_equal(child_picks, picks)
    np.testing.assert_allclose(child_lloyd, lloyd, rtol=1e-5, atol=1e-6)


def _torch_child(out):
    x = torch.arange(400_000, dtype=torch.float64).reshape(-1, 8)
    out.put((float(x.sub(x[0]).sum()), torch.get_num_threads()))


def test_torch_runs_in_a_forked_child_after_the_parent_used_its_threads():
    x = torch.arange(400_000, dtype=torch.float64).reshape(-1, 8)
    expected = float(x.sub(x[0]).sum())  # large enough for torch's OpenMP team

    ctx = mp.get_context("fork")
    out = ctx.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        child = ctx.Process(target=_torch_child, args=(out,))
        child.start()
    try:
        got = out.get(timeout=60)
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
    assert got == (expected, 1)
