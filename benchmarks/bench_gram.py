"""Batched Gram eigenvalues (issue 5, the CRC score): ``fastal.gram_min_eig`` against what users
would otherwise write, in the same run.

``fastal``         ``fastal.gram_min_eig(Z, labeled, groups)``: λ⁺_min per group (formation of the
                   Gram matrices included, the labeled part once per call); ``method="auto"``,
                   the method it picked in ``extra_info["method"]``.
``torch_eigvalsh`` the efficient torch version: the shared part once (``Z_L Z_Lᵀ`` or
                   ``Z_Lᵀ Z_L``), the per-group blocks by batched ``matmul``, the batch of Gram
                   matrices assembled and solved by batched ``torch.linalg.eigvalsh``, then the
                   threshold. In Z's dtype (float32) and, as ``torch_eigvalsh_f64``, in float64 (the
                   precision fastal computes in). Batches are chunked to ``FASTAL_BENCH_MEM_GB``
                   (default 4) of matrices.
``numpy_loop``     a loop over the groups: form the Gram matrix with numpy, ``np.linalg.eigvalsh``
                   (LAPACK), threshold. Timed on at most ``NUMPY_GROUPS`` groups (fewer for large
                   matrices: about 2e9 / size³) and extrapolated to the whole batch with a
                   one-group run as its set-up (the shared ``Z_Lᵀ Z_L``), as
                   :mod:`benchmarks._extrapolate` does (``extra_info["timed_groups"]``).

Cases ``(size, side, n_groups)``: ``size`` is the order of the Gram matrix actually solved,
``min(|S|, D)``. Side ``D`` (the CRC situation once ``|L| > D``): ``D = size``, ``|L| = 2 size``,
``G = 20``; side ``S``: ``|S| = size``, ``G = min(20, size / 2)``, ``D = 2 size``. Z is float32
Gaussian. Plus ``crc``: the CRC-shaped call of the issue, a pool of 50,000 points plus
``|L| = 500`` labeled, ``G = 20``, ``D = 129`` (the ``D x D`` side), 2,500 groups; and
``crc_select``: the whole ``CRC.select`` at that size (5,000 points in the tiny preset) against
the same acquisition written with torch (NTK features, partition, batched ``eigvalsh``, top groups).

Sizes by ``FASTAL_BENCH``: tiny (one small case, seconds; what CI runs), medium (sizes 16-256 and
the CRC case; minutes), full (sizes {16, 64, 128, 256, 512, 1024}, both sides, 10²-10⁴ groups).
``extra_info`` carries the case, ``seconds`` (min over the rounds) and, for fastal,
``speedup_vs_<peer>`` against the peers measured earlier in the session.

GPU cases (``gram/cuda/...``, skipped without a CUDA device and fastal's CUDA module): Z float32
on the device, ``fastal`` against the same batched ``torch.linalg.eigvalsh`` on the device in
float32 and float64 (the Gram matrices assembled exactly as for the CPU peer), every timed call
ending in ``torch.cuda.synchronize()``; kernels and cuSOLVER are warmed up on two groups first.
The cases follow the preset with more groups (a GPU needs thousands of matrices to fill):
tiny (size 32), medium (16-256 and CRC), full (sizes {16, 64, 128, 256, 512, 1024}, both sides).
The issue's target is ``speedup_vs_torch_eigvalsh`` >= 5. ``fastal`` is the default method; from
``fastal.gram.CUDA_LOWRANK_MIN_ORDER`` on that is the low-rank route when it counts fewer
operations, and ``fastal_tridiagonal`` times the CUDA kernel there as well.

Threads: fastal runs one group per OpenMP thread, torch / numpy use their own thread pools
(``extra_info["threads"]``, ``["torch_threads"]``). On a shared machine the wall clock is noisy;
``OMP_NUM_THREADS=1 ... --benchmark-timer=time.process_time`` compares single cores by CPU time.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

import fastal

from ._extrapolate import extrapolate, time_setup

PRESET = os.environ.get("FASTAL_BENCH", "tiny").strip().lower() or "tiny"
_GROUPS = {16: 10_000, 32: 5000, 64: 5000, 128: 1000, 256: 1000, 512: 100, 1024: 100}
CASES = {
    "tiny": [(32, "D", 200)],
    "medium": [(16, "D", 10_000), (32, "D", 5000), (64, "D", 2000), (128, "D", 1000),
               (256, "D", 300),
               (64, "S", 2000), (256, "S", 300), ("crc", "D", 2500)],
    "full": [(s, side, _GROUPS[s]) for s in (16, 64, 128, 256, 512, 1024) for side in ("D", "S")]
    + [("crc", "D", 2500)],
}[PRESET]  # fmt: skip
ROUNDS = 1 if PRESET == "tiny" else 3
NUMPY_GROUPS = {"tiny": 50, "medium": 200, "full": 200}[PRESET]
MEM_GB = float(os.environ.get("FASTAL_BENCH_MEM_GB", "4"))
G_CRC, L_CRC, D_CRC, POOL_CRC = 20, 500, 129, 50_000
_TIMES: dict = {}
_DATA: dict = {}
PEERS = ("torch_eigvalsh", "torch_eigvalsh_f64", "numpy_loop")


def case_shape(size, side: str, n_groups: int) -> dict:
    if size == "crc":
        return {"D": D_CRC, "m_lab": L_CRC, "G": G_CRC, "n": POOL_CRC + L_CRC}
    if side == "D":
        D, m_lab, G = size, 2 * size, 20
    else:
        G = min(20, size // 2)
        D, m_lab = 2 * size, size - G
    return {"D": D, "m_lab": m_lab, "G": G, "n": m_lab + n_groups * G}


def case_data(size, side: str, n_groups: int):
    """Z (float32), labeled, groups (disjoint, random) for the case; cached across impls."""
    key = (size, side, n_groups)
    if key not in _DATA:
        _DATA.clear()
        s = case_shape(size, side, n_groups)
        rng = np.random.default_rng(0)
        Z = rng.standard_normal((s["n"], s["D"]), dtype=np.float32)
        perm = rng.permutation(s["n"])
        lab = np.sort(perm[: s["m_lab"]])
        groups = perm[s["m_lab"] : s["m_lab"] + n_groups * s["G"]].reshape(n_groups, s["G"])
        _DATA[key] = (Z, lab.astype(np.int64), np.ascontiguousarray(groups, dtype=np.int64))
    return _DATA[key]


def default_rtol(m_lab: int, G: int, D: int) -> float:
    return max(m_lab + G, D) * float(np.finfo(np.float64).eps)


def torch_min_eig(Z, lab, groups, dtype, rtol: float):
    """λ⁺_min per group with torch: shared block once, batched matmul + batched eigvalsh."""
    import torch

    Zt = torch.as_tensor(Z).to(dtype)  # numpy (CPU cases) or a CUDA tensor (GPU cases)
    dev = Zt.device
    ZL = Zt[torch.as_tensor(lab, device=dev)]
    gi = torch.as_tensor(groups, device=dev)
    n_groups, G = groups.shape
    D, m_lab = Z.shape[1], len(lab)
    s_side = m_lab + G <= D
    size = m_lab + G if s_side else D
    shared = ZL @ ZL.T if s_side else ZL.T @ ZL
    itemsize = torch.finfo(dtype).bits // 8
    chunk = max(1, int(MEM_GB * 2**30 / (4 * size * size * itemsize)))  # batch + temporaries
    out = []
    for c in range(0, n_groups, chunk):
        Zg = Zt[gi[c : c + chunk]]  # (b, G, D)
        b = Zg.shape[0]
        if s_side:
            KgL = Zg @ ZL.T  # (b, G, |L|)
            K = torch.empty((b, size, size), dtype=dtype, device=dev)
            K[:, :m_lab, :m_lab] = shared
            K[:, m_lab:, :m_lab] = KgL
            K[:, :m_lab, m_lab:] = KgL.transpose(1, 2)
            K[:, m_lab:, m_lab:] = Zg @ Zg.transpose(1, 2)
        else:
            K = torch.baddbmm(shared.expand(b, D, D), Zg.transpose(1, 2), Zg)
        ev = torch.linalg.eigvalsh(K)  # ascending
        thr = rtol * ev[:, -1:]
        pos = torch.where(ev > thr, ev, torch.full_like(ev, float("inf"))).min(1).values
        out.append(torch.where(torch.isinf(pos), torch.zeros_like(pos), pos))
    return torch.cat(out)


def numpy_min_eig(Z, lab, groups, rtol: float):
    """The plain loop: per group, form the Gram matrix with numpy and call LAPACK's eigvalsh."""
    ZL = Z[lab]
    D, m_lab = Z.shape[1], len(lab)
    s_side = m_lab + groups.shape[1] <= D
    shared = ZL @ ZL.T if s_side else ZL.T @ ZL
    out = np.empty(groups.shape[0])
    for k, g in enumerate(groups):
        Zg = Z[g]
        if s_side:
            KgL = Zg @ ZL.T
            K = np.block([[shared, KgL.T], [KgL, Zg @ Zg.T]])
        else:
            K = shared + Zg.T @ Zg
        ev = np.linalg.eigvalsh(K)
        pos = ev[ev > rtol * ev[-1]]
        out[k] = pos[0] if pos.size else 0.0
    return out


def timing(run, times: list):
    """``run`` that also appends its own wall time to ``times`` (for --benchmark-disable, where
    pytest-benchmark keeps no stats)."""

    def timed():
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
        return out

    return timed


def _id(c) -> str:
    size, side, ng = c
    return (
        f"crc-n{POOL_CRC}-L{L_CRC}-G{G_CRC}-D{D_CRC}"
        if size == "crc"
        else f"size{size}-{side}-groups{ng}"
    )


@pytest.mark.parametrize("impl", [*PEERS, "fastal"])
@pytest.mark.parametrize(("size", "side", "n_groups"), CASES, ids=[_id(c) for c in CASES])
def test_gram_min_eig(benchmark, impl, size, side, n_groups):
    import torch

    key = (size, side, n_groups)
    shape = case_shape(size, side, n_groups)
    order = min(shape["m_lab"] + shape["G"], shape["D"])
    benchmark.group = f"gram/cpu/{_id(key)}"
    Z, lab, groups = case_data(size, side, n_groups)
    rtol = default_rtol(shape["m_lab"], shape["G"], shape["D"])
    timed_groups = n_groups
    if impl == "fastal":

        def run():
            return fastal.gram_min_eig(Z, lab, groups)
    elif impl.startswith("torch"):
        dtype = torch.float64 if impl.endswith("f64") else torch.float32

        def run():
            return torch_min_eig(Z, lab, groups, dtype, rtol)
    else:
        timed_groups = min(n_groups, NUMPY_GROUPS, max(3, int(2e9 / order**3)))
        sub = groups[:timed_groups]

        def run():
            return numpy_min_eig(Z, lab, sub, rtol)

    times: list[float] = []
    timed = timing(run, times)

    rounds = 1 if order >= 512 else ROUNDS  # minutes per round for the peers at 1024
    result = benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
    best = benchmark.stats.stats.min if benchmark.stats is not None else min(times)
    seconds, lower_bound = best, False
    if timed_groups < n_groups:  # the whole batch: the shared Z_Lᵀ Z_L once, not once per share
        setup = time_setup(lambda: numpy_min_eig(Z, lab, groups[:1], rtol))
        ext = extrapolate(best, setup, timed_groups, n_groups)
        seconds, lower_bound = ext["budget_s"], ext["lower_bound"]
    _TIMES[(key, impl)] = seconds
    benchmark.extra_info.update(
        size=order, side="S" if shape["m_lab"] + shape["G"] <= shape["D"] else "D",
        n_groups=n_groups, timed_groups=timed_groups, G=shape["G"], m_lab=shape["m_lab"],
        D=shape["D"], dtype="float32", impl=impl, seconds=seconds, lower_bound=lower_bound,
        method=(fastal.gram._cheaper_method(shape["m_lab"], shape["G"], shape["D"], n_groups,
                                            False) if impl == "fastal" else None),
        us_per_group=1e6 * seconds / n_groups, threads=fastal._ext.cpu.num_threads(),
        torch_threads=torch.get_num_threads(),
        loadavg=os.getloadavg()[0],
    )  # fmt: skip
    if impl == "fastal":
        lam = np.asarray(result)
        assert lam.shape == (n_groups,)
        assert (lam > 0).all()
        # the fastal scores agree with the float64 torch ones measured above (same rule)
        ref = _DATA.get(("ref", key))
        if ref is not None:
            np.testing.assert_allclose(lam, ref, rtol=1e-6)
        for peer in PEERS:
            if (key, peer) in _TIMES:
                benchmark.extra_info[f"speedup_vs_{peer}"] = _TIMES[(key, peer)] / seconds
    elif impl == "torch_eigvalsh_f64":
        _DATA[("ref", key)] = result.numpy()


#: CRC.select end to end (NTK features, random partition, scores, top groups): pool, features d
CRC_SELECT = {"tiny": [(5000, 128)], "medium": [(POOL_CRC, 128)], "full": [(POOL_CRC, 128)]}[PRESET]


def torch_crc_select(feats, probs, budget: int, lab: np.ndarray, seed: int):
    """CRC as a user would write it with torch: NTK features √C [h, 1], a seeded random partition
    of the unlabeled rows into groups of G, λ⁺_min per group by batched eigvalsh (float32, the
    shared block once: :func:`torch_min_eig`), the Q / G best groups."""
    import torch

    n, C = probs.shape
    Z = (np.sqrt(C) * np.c_[feats, np.ones(n, np.float32)]).astype(np.float32)
    rest = np.setdiff1d(np.arange(n), lab)
    perm = np.random.default_rng(seed).permutation(rest)
    groups = perm[: perm.size // G_CRC * G_CRC].reshape(-1, G_CRC)
    scores = torch_min_eig(Z, lab, groups, torch.float32, default_rtol(lab.size, G_CRC, Z.shape[1]))
    best = torch.argsort(-scores, stable=True)[: budget // G_CRC].numpy()
    return groups[best].reshape(-1)


@pytest.mark.parametrize("impl", ["torch_eigvalsh", "fastal"])
@pytest.mark.parametrize(
    ("pool_n", "d"), CRC_SELECT, ids=[f"n{n}-L{L_CRC}-d{d}" for n, d in CRC_SELECT]
)
def test_crc_select(benchmark, impl, pool_n, d):
    """Issue 5's "CRC acquisition for a 50k pool, |L| = 500, G = 20, D = 129 in seconds": the whole
    ``CRC.select`` from (features, probs), D = d + 1 with the bias column of the NTK features,
    against the same acquisition written with torch (:func:`torch_crc_select`)."""
    from fastal.strategies import CRC

    benchmark.group = f"crc_select/cpu/n{pool_n}"
    rng = np.random.default_rng(0)
    n = pool_n + L_CRC
    feats = rng.standard_normal((n, d), dtype=np.float32)
    probs = rng.dirichlet(np.ones(10), n).astype(np.float32)
    lab = np.arange(L_CRC)
    budget = 5 * G_CRC
    if impl == "fastal":
        strat, pool = CRC(group_size=G_CRC), {"features": feats, "probs": probs}

        def run():
            return strat.select(pool, budget, labeled=lab, seed=0).indices
    else:

        def run():
            return torch_crc_select(feats, probs, budget, lab, seed=0)

    times: list[float] = []
    timed = timing(run, times)

    picks = benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    assert np.unique(picks).size == budget
    assert (picks >= L_CRC).all()
    seconds = benchmark.stats.stats.min if benchmark.stats is not None else min(times)
    key = ("crc_select", pool_n, d)
    _TIMES[(key, impl)] = seconds
    benchmark.extra_info.update(
        n=n, m_lab=L_CRC, G=G_CRC, D=d + 1, budget=budget, impl=impl, seconds=seconds,
        threads=fastal._ext.cpu.num_threads(), torch_threads=torch_threads(),
        loadavg=os.getloadavg()[0],
    )  # fmt: skip
    if impl == "torch_eigvalsh":
        _DATA[("picks", key)] = np.asarray(picks)
    elif ("picks", key) in _DATA:  # the same groups: equal picks up to float32 near-ties
        shared = np.intersect1d(_DATA[("picks", key)], np.asarray(picks)).size
        benchmark.extra_info["picks_shared_with_torch"] = shared / budget
    if impl == "fastal" and (key, "torch_eigvalsh") in _TIMES:
        ratio = _TIMES[(key, "torch_eigvalsh")] / seconds
        benchmark.extra_info["speedup_vs_torch_eigvalsh"] = ratio


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------
# GPU: fastal's CUDA kernel against batched torch.linalg.eigvalsh on the device

_GROUPS_CUDA = {16: 20_000, 32: 10_000, 64: 10_000, 128: 5000, 256: 2000, 512: 500, 1024: 200}
CUDA_CASES = {
    "tiny": [(32, "D", 200)],
    "medium": [(16, "D", 20_000), (64, "D", 10_000), (128, "D", 5000), (256, "D", 2000),
               (64, "S", 10_000), (256, "S", 2000), ("crc", "D", 2500)],
    "full": [(s, side, _GROUPS_CUDA[s]) for s in (16, 32, 64, 128, 256, 512, 1024)
             for side in ("D", "S")] + [("crc", "D", 2500)],
}[PRESET]  # fmt: skip
CUDA_PEERS = ("torch_eigvalsh", "torch_eigvalsh_f64")
_DEVICE: dict = {}


def device_data(key, Z, lab, groups):
    """Z (float32) and the indices on the GPU, once per case."""
    import torch

    if key not in _DEVICE:
        _DEVICE.clear()
        torch.cuda.empty_cache()
        _DEVICE[key] = tuple(torch.from_numpy(a).cuda() for a in (Z, lab, groups))
    return _DEVICE[key]


@pytest.mark.parametrize("impl", [*CUDA_PEERS, "fastal", "fastal_tridiagonal", "fastal_warp"])
@pytest.mark.parametrize(("size", "side", "n_groups"), CUDA_CASES, ids=[_id(c) for c in CUDA_CASES])
def test_gram_min_eig_cuda(benchmark, monkeypatch, impl, size, side, n_groups):
    import torch

    if not torch.cuda.is_available() or not fastal.cuda_available():
        pytest.skip("needs a CUDA GPU and fastal built with its CUDA module")
    case = (size, side, n_groups)
    key = ("cuda", *case)
    shape = case_shape(size, side, n_groups)
    order = min(shape["m_lab"] + shape["G"], shape["D"])
    benchmark.group = f"gram/cuda/{_id(case)}"
    Z, lab, groups = case_data(size, side, n_groups)
    Zd, lab_d, grp_d = device_data(key, Z, lab, groups)
    rtol = default_rtol(shape["m_lab"], shape["G"], shape["D"])
    if impl.startswith("fastal"):
        # "fastal" is the default ("auto": the low-rank route from order 512 on when cheaper);
        # "fastal_tridiagonal" the CUDA kernel there, for comparison
        if impl == "fastal_tridiagonal" and order < fastal.gram.CUDA_LOWRANK_MIN_ORDER:
            pytest.skip("below CUDA_LOWRANK_MIN_ORDER 'auto' is the tridiagonal kernel")
        if impl == "fastal_warp":  # one warp per matrix forced (orders <= 32)
            if order > 32:
                pytest.skip("the one-warp path takes orders up to 32")
            # bound as its own name: `import fastal._gram_cuda` would make `fastal` local to this
            # function and every earlier use of it an UnboundLocalError
            from fastal import _gram_cuda

            monkeypatch.setattr(_gram_cuda, "WARP_MAX", 32)
        method = "tridiagonal" if impl == "fastal_tridiagonal" else "auto"

        def run(g=grp_d):
            out = fastal.gram_min_eig(Zd, lab_d, g, method=method)
            torch.cuda.synchronize()
            return out
    else:
        dtype = torch.float64 if impl.endswith("f64") else torch.float32

        def run(g=grp_d):  # the indices on the device, as fastal gets them
            out = torch_min_eig(Zd, lab_d, g, dtype, rtol)
            torch.cuda.synchronize()
            return out

    run(grp_d[:2])  # warm-up: kernels, cuSOLVER

    times: list[float] = []
    timed = timing(run, times)
    # one round where a round takes seconds: order >= 512, and the eigvalsh peers from order 64 on
    # (3-9 s a round on an H200 at orders 64-256, against 4 ms at order 16)
    rounds = 1 if order >= 512 or (not impl.startswith("fastal") and order >= 64) else ROUNDS
    result = benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
    seconds = benchmark.stats.stats.min if benchmark.stats is not None else min(times)
    _TIMES[(key, impl)] = seconds
    benchmark.extra_info.update(
        size=order, side="S" if shape["m_lab"] + shape["G"] <= shape["D"] else "D",
        n_groups=n_groups, timed_groups=n_groups, G=shape["G"], m_lab=shape["m_lab"],
        D=shape["D"], dtype="float32", impl=impl, seconds=seconds,
        us_per_group=1e6 * seconds / n_groups, device=torch.cuda.get_device_name(),
    )  # fmt: skip
    if impl.startswith("fastal"):
        lam = result.cpu().numpy()
        assert lam.shape == (n_groups,)
        assert (lam > 0).all()
        ref = _DATA.get(("cuda_ref", case))
        if ref is not None:  # the same rule as torch in float64 on the same matrices
            np.testing.assert_allclose(lam, ref, rtol=1e-6)
        for peer in CUDA_PEERS:
            if (key, peer) in _TIMES:
                benchmark.extra_info[f"speedup_vs_{peer}"] = _TIMES[(key, peer)] / seconds
    elif impl == "torch_eigvalsh_f64":
        _DATA[("cuda_ref", case)] = result.cpu().numpy()


def test_report_gram_renders(tmp_path):
    """report_gram.py reads bench_gram entries (and nothing else) into one row per case."""
    try:
        import report_gram
    except ImportError:  # imported as benchmarks.bench_gram
        from . import report_gram

    def entry(group, impl, secs):
        e = dict(size=1024, side="D", n_groups=200, D=1024, impl=impl, seconds=secs)
        return {"group": group, "extra_info": e}

    doc = {
        "benchmarks": [
            entry("gram/cuda/1024-D-200", "fastal", 0.1),
            entry("gram/cuda/1024-D-200", "torch_eigvalsh", 1.9),
            entry("gram/cuda/1024-D-200", "fastal_tridiagonal", 1.2),
            entry("kcenter/x", "fastal", 1.0),
            entry("gram/cuda/1024-D-200", "fastal_warp", 0.095),
        ]
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(doc))
    lines = report_gram.render(report_gram.load([str(path)])).splitlines()
    assert len(lines) == 3
    assert lines[2].split(" | ")[1:7] == ["1024, D", "200", "0.1", "1.2", "0.095", "1.9"]
    assert lines[2].rstrip(" |").endswith("19.0× | 20.0×")
