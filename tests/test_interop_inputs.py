"""Unusual but legitimate inputs on the side paths of the interop layer: masked and byte-swapped
arrays, tensor subclasses and layouts, lazily negated tensors, read-only exports, torch's global
defaults. Each one is either read correctly or refused with a message naming the argument."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

import fastal
from fastal import _interop
from fastal.strategies import ALLY, BALD, CRC, BilevelCoreset, Entropy

MASKED = r"is a masked array with masked entries \(1\), which fastal would read"


def _pool(n=40, d=4, C=3, seed=0):
    rng = np.random.default_rng(seed)
    H = rng.normal(size=(n, d)).astype(np.float32)
    z = rng.normal(size=(n, C)).astype(np.float32)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return H, z, p


def test_cupy_array_with_negative_strides_is_copied_before_dlpack():
    """torch aborts the process on a DLPack tensor with negative strides (cp.flip(X), X[::-1]);
    fastal makes cupy arrays contiguous first. An emulated cupy module (its arrays export numpy's
    DLPack capsules) runs the real ``as_torch`` in a child process, which an abort would kill."""
    child = textwrap.dedent(
        """
        import sys, types, numpy as np
        cupy = types.ModuleType("cupy")
        class ndarray:
            def __init__(self, a):
                self._a, self.shape, self.dtype = a, a.shape, a.dtype
            def __dlpack__(self, *args, **kwargs):
                return self._a.__dlpack__()
            def __dlpack_device__(self):
                return self._a.__dlpack_device__()
        class Device:
            def __init__(self, index): pass
            def __enter__(self): return self
            def __exit__(self, *exc): return False
        cupy.ndarray = ndarray
        cupy.ascontiguousarray = lambda x: ndarray(np.ascontiguousarray(x._a))
        cupy.cuda = types.SimpleNamespace(Device=Device)
        sys.modules["cupy"] = cupy
        from fastal import _interop
        from fastal._torch_arrays import as_torch
        X = np.arange(12.0, dtype=np.float32).reshape(4, 3)[::-1, ::-1]
        info = _interop.ArrayInfo("cupy", "cuda", 0, "float32", X.shape)
        assert (as_torch(ndarray(X), info).numpy() == X).all()
        print("ok")
        """
    )
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ok", (r.stdout, r.stderr[-2000:])


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # this suite's "error"
def test_gradient_embedding_exports_are_read_only():
    """``emb.A``/``emb.H``/``emb.sqnorm`` are numpy views that may share the caller's memory
    (a read-only pool, a memmap): writing through them would change the input and leave sqnorm
    stale, so they are read-only."""
    H, _, p = _pool()
    H.flags.writeable = False
    emb = fastal.gradient_embedding(p, H)
    for arr in (emb.A, emb.H, emb.sqnorm):
        assert not arr.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1.0
    assert np.shares_memory(emb.H, H)
    direct = fastal.GradientEmbedding(p - np.eye(3, dtype=np.float32)[p.argmax(1)], H.copy())
    assert not direct.A.flags.writeable
    assert_allclose(emb.sqnorm, direct.sqnorm, rtol=1e-6)


def test_masked_entries_are_refused_on_side_inputs():
    H, _, _ = _pool()
    lab = np.arange(0, 40, 4)
    duals = np.ma.masked_array(np.linspace(0.1, 1.0, lab.size), mask=np.eye(1, lab.size, 3)[0])
    with pytest.raises(ValueError, match=r"^duals " + MASKED):
        ALLY(head_steps=5).select({"features": H, "duals": duals}, 3, lab, seed=0)
    pred = np.ma.masked_array(np.ones(40), mask=np.eye(1, 40, 7)[0])
    with pytest.raises(ValueError, match=r"^dual_predictions " + MASKED):
        ALLY().select({"features": H, "dual_predictions": pred}, 3, lab, seed=0)
    # without masked entries a masked array is its data
    plain = np.ma.masked_array(np.linspace(0.1, 1.0, lab.size))
    got = ALLY(head_steps=5).select({"features": H, "duals": plain}, 3, lab, seed=0).indices
    want = ALLY(head_steps=5).select({"features": H, "duals": plain.data}, 3, lab, seed=0).indices
    assert_array_equal(got, want)


def test_masked_data_and_labels_are_refused_by_the_torch_layer():
    from fastal import torch as ftorch

    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    H, _, _ = _pool()
    data = np.ma.masked_array(H, mask=np.zeros_like(H, dtype=bool))
    data.mask[2, 1] = True
    with pytest.raises(ValueError, match=r"^data " + MASKED):
        ftorch.select("entropy", model, data, 3)
    labels = np.ma.masked_array(np.zeros(4, dtype=np.int64), mask=[0, 1, 0, 0])
    with pytest.raises(ValueError, match=r"^labels " + MASKED):
        ftorch.select("badge", model, H, 3, [0, 1, 2, 3], labels=labels)


def test_byte_swapped_side_inputs_are_read_in_native_order():
    from fastal import torch as ftorch

    H, z, _ = _pool()
    lab = [0, 5, 9]
    targets = np.eye(3, dtype=np.float32)[[0, 2, 1]]
    pool = {"logits": z, "features": H}
    bilevel = BilevelCoreset(inner_iters=20, kernel="linear")
    want = bilevel.select(dict(pool, labeled_targets=targets), 3, lab, seed=0).indices
    swapped = targets.astype(">f4")
    got = bilevel.select(dict(pool, labeled_targets=swapped), 3, lab, seed=0).indices
    assert_array_equal(got, want)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    want = ftorch.select("badge", model, H, 3, lab, labels=[0, 2, 1], seed=0).indices
    got = ftorch.select(
        "badge", model, H.astype(">f4"), 3, lab, labels=np.array([0, 2, 1], ">i8"), seed=0
    ).indices
    assert_array_equal(got, want)


def test_bfloat16_labeled_targets_are_taken(tmp_path):
    H, z, _ = _pool()
    pool = {"logits": torch.from_numpy(z).bfloat16(), "features": torch.from_numpy(H).bfloat16()}
    targets = torch.eye(3)[[0, 2, 1]]
    bilevel = BilevelCoreset(inner_iters=20, kernel="linear")
    want = bilevel.select(dict(pool, labeled_targets=targets), 3, [0, 5, 9], seed=0).indices
    got = bilevel.select(
        dict(pool, labeled_targets=targets.bfloat16()), 3, [0, 5, 9], seed=0
    ).indices
    assert_array_equal(got, want)


def test_cli_reads_a_big_endian_file_as_bfloat16(tmp_path):
    H, _, _ = _pool(n=60, d=5)
    np.save(tmp_path / "be.npy", H.astype(">f4"))
    np.save(tmp_path / "le.npy", H)
    picks = []
    for name in ("be", "le"):
        out = tmp_path / f"{name}_picks.npy"
        r = subprocess.run(
            [sys.executable, "-m", "fastal", "select", "--embeddings",
             str(tmp_path / f"{name}.npy"), "--budget", "4", "--seed", "0", "--dtype", "bfloat16",
             "--out", str(out)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        picks.append(np.load(out))
    assert_array_equal(picks[0], picks[1])


def test_masked_tensor_and_dispatch_subclasses_are_refused():
    H, _, p = _pool()
    t = torch.from_numpy(H)
    mask = torch.ones_like(t, dtype=torch.bool)
    mask[3, 0] = False
    with pytest.warns(UserWarning, match="prototype"):
        mt = torch.masked.masked_tensor(t, mask)
    masked = r"is a torch MaskedTensor, whose masked entries fastal would read"
    with pytest.raises(ValueError, match=r"^features " + masked):
        fastal.ntk_features(mt, 3)
    with pytest.raises(ValueError, match=r"^features " + masked):
        CRC(group_size=2).select({"features": mt, "probs": torch.from_numpy(p)}, 2, seed=0)
    with pytest.raises(ValueError, match=r"^X " + masked):
        fastal.kcenter_greedy(mt, 2, seed=0)
    # plain subclasses still pass
    param = torch.nn.Parameter(t.clone())
    assert_array_equal(fastal.kcenter_greedy(param, 3, seed=0), fastal.kcenter_greedy(t, 3, seed=0))


def test_sparse_and_nested_tensors_are_named_everywhere():
    s = torch.tensor([0.5, -1.0, 2.0]).to_sparse()
    with pytest.raises(TypeError, match=r"^s is a torch tensor with layout torch.sparse_coo"):
        fastal.iht_threshold(s, s, 1, 0.1)
    mc = torch.full((2, 4, 3), 1 / 3).to_sparse()
    with pytest.raises(TypeError, match=r"^mc_probs is a torch tensor with layout torch.sparse"):
        BALD().select({"mc_probs": mc}, 1)
    H, _, p = _pool()
    labels = torch.zeros(40, dtype=torch.int64).to_sparse()
    with pytest.raises(TypeError, match=r"^labels is a torch tensor with layout torch.sparse"):
        fastal.gradient_embedding(torch.from_numpy(p), torch.from_numpy(H), labels=labels)
    with warnings.catch_warnings():  # torch's "prototype" warning comes once per process
        warnings.filterwarnings("ignore", message=".*nested tensors is in prototype")
        nested = torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(3, 3)])
    with pytest.raises(TypeError, match=r"^X is a nested torch tensor"):
        fastal.kcenter_greedy(nested, 1, seed=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lazily_negated_tensor_is_read_as_its_values(dtype):
    """``torch._neg_view`` (what ``conj().imag`` gives) keeps the un-negated memory and a flag.
    float64 matters: there ``.to(float64)`` is no copy and the flag reached ``.numpy()``."""
    H, _, _ = _pool()
    X = torch.from_numpy(H.astype(dtype))
    neg = torch._neg_view(-X)
    assert neg.is_neg()
    assert neg.is_contiguous()
    assert torch.equal(neg, X)
    assert_array_equal(fastal.kcenter_greedy(neg, 5, seed=0), fastal.kcenter_greedy(X, 5, seed=0))
    d_neg, i_neg = fastal.min_distance(neg, X[:3])
    d, i = fastal.min_distance(X, X[:3])
    assert_array_equal(i_neg, i)
    assert_allclose(d_neg, d)
    km_neg, km = fastal.kmeans(neg, 4, seed=0), fastal.kmeans(X, 4, seed=0)
    assert_array_equal(km_neg.labels, km.labels)
    assert_allclose(km_neg.inertia, km.inertia)
    rk_neg, rk = (fastal.robust_kcenter(t, 3, labeled=[0], outliers=1) for t in (neg, X))
    assert_array_equal(rk_neg.indices, rk.indices)
    assert rk_neg.radius == rk.radius


def test_host_numpy_resolves_a_negative_view():
    X = torch.arange(6.0).reshape(3, 2)
    neg = torch._neg_view(-X)
    assert neg.is_neg()
    assert_array_equal(_interop.host_numpy(neg), X.numpy())


def test_negated_view_labeled_indices():
    X = np.random.default_rng(0).normal(size=(12, 2))
    lab = torch._neg_view(-torch.tensor([0, 5]))
    want = fastal.kcenter_greedy(X, 3, labeled=[0, 5])
    assert_array_equal(fastal.kcenter_greedy(X, 3, labeled=lab), want)


def test_ally_does_not_follow_torch_global_defaults():
    """The dual head is built in float32 on the features' device whatever torch's default dtype
    or device (its initial weights, hence the picks, would otherwise change)."""
    H, _, _ = _pool(n=60)
    lab = np.arange(0, 60, 3)
    pool = {"features": H, "duals": np.linspace(0.0, 1.0, lab.size)}
    want = ALLY(head_steps=30).select(pool, 4, lab, seed=0).indices
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = ALLY(head_steps=30).select(pool, 4, lab, seed=0).indices
    finally:
        torch.set_default_dtype(old)
    assert_array_equal(got, want)
    torch.set_default_device("meta")
    try:
        got = ALLY(head_steps=30).select(pool, 4, lab, seed=0).indices
        logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
        T = fastal.fit_temperature(logits, np.array([0, 1, 1]))
    finally:
        torch.set_default_device(None)
    assert_array_equal(got, want)
    assert np.isfinite(T)
    assert T > 0


@pytest.mark.parametrize("big", [2**63, 2**64, -(2**63) - 1])
def test_python_ints_beyond_int64_are_out_of_range(big):
    X = np.random.default_rng(0).normal(size=(10, 2))
    out_of_range = rf"^labeled has indices out of range \[0, 10\): e.g. {big}"
    with pytest.raises(ValueError, match=out_of_range):
        fastal.kcenter_greedy(X, 2, labeled=[3, big])


def test_object_labels_are_named():
    H, _, p = _pool()
    with pytest.raises(TypeError, match=r"^labels must be integer classes .* got dtype object"):
        fastal.gradient_embedding(p, H, labels=np.zeros(40, dtype=object))


def test_entropy_of_masked_probs_without_masked_entries():
    _, _, p = _pool()
    got = Entropy().select({"probs": np.ma.masked_array(p)}, 5).indices
    assert_array_equal(got, Entropy().select({"probs": p}, 5).indices)


def test_read_only_arrays_pass_under_warnings_as_errors():
    """fastal dropped torch's "not writable" warning by a filter added at import, which filters
    set later (``warnings.simplefilter("error")``, pytest's per-test ones) come before: the first
    read-only pool raised it. A fresh interpreter: torch warns once per process."""
    code = (
        "import warnings, numpy as np, fastal; from fastal.strategies import get; "
        "warnings.simplefilter('error'); "  # set after fastal's filter, so it comes first
        "p = np.full((20, 4), 0.25, np.float32); p.setflags(write=False); "
        "h = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32); "
        "h.setflags(write=False); "
        "print(len(get('entropy')().select({'probs': p}, 3).indices), "
        "len(get('badge')().select({'probs': p, 'features': h}, 3, seed=0).indices))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["3", "3"]
