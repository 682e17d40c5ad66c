"""Sparse Approximation (issue 4): IHT selection and the top-b kernel against what users write.

``iht``         ``SparseApprox(solver="iht")`` end to end from (logits, features): factored Φ, the
                fused row-wise kernels and ``fastal.iht_threshold``.
``torch_dense`` the same algorithm (Alg. 2 with line search and de-bias) written plainly in torch:
                Φ materialised as a (C·dh, n) float32 matrix, ``Φw`` and ``Φᵀr`` as full mat-vecs
                (8 passes over Φ per iteration), the proximal step by ``torch.topk``. Skipped where
                Φ would exceed ``FASTAL_BENCH_MEM_GB`` (default 8).
``torch_dense_sparse`` the same port written with care for sparsity: Φ stored by rows (n, C·dh),
                and the six products per iteration whose vector is supported on at most 2b rows
                (``Φw``, ``Φ(w - w_prev)``, ``Φu`` over S, ``(Φᵀr)[S]``) computed on those rows
                only: 2 passes over Φ per iteration (``Φᵀr`` and ``Φg`` along the dense gradient).
                The same supports as ``torch_dense`` up to float32 rounding.
``topb``        ``fastal.iht_threshold`` against ``np.argpartition`` (+ the sort of the b winners)
                and ``torch.topk`` on the same scores, CPU; on a GPU ``torch.topk`` on the device.

Sizes by ``FASTAL_BENCH``: tiny (CI smoke), medium (n = 50k; top-b n = 10⁶), full (n ∈ {50k, 1M},
C ∈ {10, 100}, b ∈ {1000, 10000}; top-b n = 10⁷, b = 10⁵). ``extra_info`` carries the sizes and, for
fastal cases, ``speedup_vs_<peer>`` measured earlier in the same session; ``iht`` also reports
``overlap_with_<peer>`` (shared picks / b: they run the same algorithm, so a low overlap would
make the speed ratio meaningless) and ``fallback`` (the top-σ safeguard replaced the result).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastal
import fastal._sparse_cuda as sparse_cuda
from fastal.strategies import SparseApprox

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]

PRESET = os.environ.get("FASTAL_BENCH", "tiny").strip().lower() or "tiny"
SELECT = {
    "tiny": [(2000, 10, 32, 100)],
    "medium": [(50_000, 10, 512, 1000), (50_000, 10, 512, 3000)],
    "full": [(n, C, 512, b) for n in (50_000, 1_000_000) for C in (10, 100) for b in (1000, 10_000)]
    + [(50_000, 10, 512, 3000)],
}[PRESET]
TOPB = {
    "tiny": [(100_000, 1000)],
    "medium": [(1_000_000, 10_000)],
    "full": [(10_000_000, 100_000)],
}[PRESET]
ITERS = 5 if PRESET == "tiny" else 50  # SparseApprox's default T (5 for the CI smoke run)
MEM_GB = float(os.environ.get("FASTAL_BENCH_MEM_GB", "8"))
_TIMES: dict = {}
_PICKS: dict = {}


def _pool(n: int, C: int, d: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    H = rng.normal(size=(n, d)).astype(np.float32)
    W = rng.normal(size=(d, C)).astype(np.float32) * (3 / np.sqrt(d))
    return {"logits": H @ W, "features": H}


def _timed(benchmark, fn, rounds: int = 1):
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)


def torch_dense_iht(
    logits, H, b: int, T: float, alpha: float, beta: float, iters: int, sparse: bool = False
):
    """Alg. 2 on a materialised Φ: what a straightforward torch port looks like (``sparse``: the
    careful one, see the module docstring)."""
    import torch

    z = torch.from_numpy(logits).double()
    h = torch.from_numpy(H)
    n = h.shape[0]
    p, P = torch.softmax(z, 1), torch.softmax(z / T, 1)
    A = (p - P).float()
    C, dh = A.shape[1], h.shape[1]
    # built a block of rows at a time: the peak is Φ itself, not two copies of it
    rows = torch.empty((n, C * dh)) if sparse else None
    cols = None if sparse else torch.empty((C * dh, n))
    for s in range(0, n, 4096):
        block = (A[s : s + 4096, :, None] * h[s : s + 4096, None, :]).reshape(-1, C * dh) / b
        if sparse:
            rows[s : s + 4096] = block
        else:
            cols[:, s : s + 4096] = block.T
    v = (rows.sum(0) if sparse else cols.sum(1)).double() * (b / n)
    dist = ((P * P).sum(1, keepdim=True) - 2 * P + 1).clamp_min(0).sqrt()
    sigma = h.double().norm(dim=1) * (P * dist).sum(1) / n

    def phi(x):  # Φx
        if sparse:
            nz = x.nonzero().squeeze(1)
            if nz.numel() <= 2 * b:
                return (x[nz].float() @ rows[nz]).double()
            return (x.float() @ rows).double()
        return (cols @ x.float()).double()

    def phi_t(r, on=None):  # Φᵀr (on the rows ``on`` only, where the port is careful)
        if sparse:
            return (rows @ r.float() if on is None else rows[on] @ r.float()).double()
        full = (cols.T @ r.float()).double()
        return full if on is None else full[on]

    def resid(w):
        return phi(w) - v

    def grad(w, r, on=None):
        return 2 * phi_t(r, on) + 2 * beta * ((w if on is None else w[on]) - 1)

    def ls(u, w, r):
        pu = phi(u)
        den = float((pu * pu).sum() + beta * (u * u).sum())
        return float((r * pu).sum() + beta * ((w - 1) * u).sum()) / den if den > 0 else 0.0

    w = torch.zeros(n, dtype=torch.float64)
    zz = w.clone()
    S = None
    for _ in range(iters):
        w_prev = w
        r = resid(zz)
        g = grad(zz, r)
        s = zz - ls(g, zz, r) * g
        score = 0.5 * (-s).clamp_min(0) ** 2 - alpha * sigma**2
        S = torch.topk(-score, b).indices
        w = torch.zeros_like(s)
        w[S] = s[S].clamp_min(0)
        r = resid(w)
        u = torch.zeros_like(w)
        u[S] = grad(w, r, S)
        w = (w - ls(u, w, r) * u).clamp_min(0)
        d = w - w_prev
        zz = w - ls(d, w, resid(w)) * d
    return S


def _rounds(n: int, C: int) -> int:
    """Best of 3 where a round is short (a cold first call pays page faults), for fastal and the
    torch ports alike; one round for the largest pools."""
    return 3 if n * C < 10**7 else 1


@pytest.mark.parametrize("impl", ["torch_dense", "torch_dense_sparse", "iht"])
@pytest.mark.parametrize(
    ("n", "C", "d", "b"), SELECT, ids=[f"n{n}-C{C}-d{d}-b{b}" for n, C, d, b in SELECT]
)
def test_sparse_select(benchmark, impl, n, C, d, b):
    benchmark.group = f"sparse/cpu/n={n}/C={C}/d={d}/b={b}"
    pool = _pool(n, C, d)
    T = 1.5
    key = (n, C, d, b)
    if impl.startswith("torch_dense"):
        gb = n * C * d * 4 / 2**30
        if gb > MEM_GB:
            pytest.skip(f"materialised Φ needs {gb:.1f} GB > FASTAL_BENCH_MEM_GB={MEM_GB}")
        sparse = impl == "torch_dense_sparse"
        support = _timed(
            benchmark,
            lambda: torch_dense_iht(
                pool["logits"], pool["features"], b, T, 1e-8, 1e-4, ITERS, sparse=sparse
            ),
            rounds=_rounds(n, C),
        )
        _PICKS[(key, impl)] = set(support.tolist())
    else:
        strategy = SparseApprox(solver="iht", temperature=T, iters=ITERS)
        sel = _timed(benchmark, lambda: strategy.select(pool, b), rounds=_rounds(n, C))
        assert len(set(sel.indices.tolist())) == b
        _PICKS[(key, impl)] = set(sel.indices.tolist())
        benchmark.extra_info["fallback"] = bool(sel.diagnostics["fallback"])
    # benchmark.stats is None with --benchmark-disable
    seconds = benchmark.stats.stats.min if benchmark.stats else float("nan")
    _TIMES[(key, impl)] = seconds
    benchmark.extra_info.update(n=n, C=C, d=d, b=b, iters=ITERS, seconds=seconds, impl=impl)
    for peer in ("torch_dense", "torch_dense_sparse"):
        if impl == "iht" and (key, peer) in _TIMES:
            benchmark.extra_info[f"speedup_vs_{peer}"] = _TIMES[(key, peer)] / seconds
            # the same algorithm in float32 mat-vecs: supports agree up to rounding-level ties
            shared = _PICKS[(key, impl)] & _PICKS[(key, peer)]
            benchmark.extra_info[f"overlap_with_{peer}"] = len(shared) / b


@pytest.mark.parametrize("impl", ["argpartition", "torch_topk", "fastal"])
@pytest.mark.parametrize(("n", "b"), TOPB, ids=[f"n{n}-b{b}" for n, b in TOPB])
def test_topb_cpu(benchmark, impl, n, b):
    import torch

    benchmark.group = f"topb/cpu/n={n}/b={b}"
    rng = np.random.default_rng(0)
    s = rng.normal(size=n).astype(np.float32)
    sigma = rng.random(n).astype(np.float32)
    alpha = 0.5

    def scores():
        s64, g64 = s.astype(np.float64), sigma.astype(np.float64)
        neg = np.maximum(-s64, 0)
        return 0.5 * (neg * neg) - alpha * (g64 * g64)

    if impl == "argpartition":  # scores, partition, order the winners: what numpy users write

        def run():
            sc = scores()
            part = np.argpartition(sc, b - 1)[:b]
            return part[np.lexsort((part, sc[part]))]
    elif impl == "torch_topk":
        st, gt = torch.from_numpy(s), torch.from_numpy(sigma)

        def run():
            s64, g64 = st.double(), gt.double()
            neg = (-s64).clamp_min(0)
            return torch.topk(-(0.5 * neg * neg - alpha * g64 * g64), b).indices
    else:

        def run():
            return fastal.iht_threshold(s, sigma, b, alpha)[0]

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    # benchmark.stats is None with --benchmark-disable
    seconds = benchmark.stats.stats.min if benchmark.stats else float("nan")
    _TIMES[(("topb", n, b), impl)] = seconds
    benchmark.extra_info.update(n=n, b=b, seconds=seconds, impl=impl)
    if impl == "fastal":
        for peer in ("argpartition", "torch_topk"):
            if (("topb", n, b), peer) in _TIMES:
                benchmark.extra_info[f"speedup_vs_{peer}"] = (
                    _TIMES[(("topb", n, b), peer)] / seconds
                )


# fastal: the default implementation; fastal_launches / fastal_fused: each one forced (the launch
# sequence of csrc/cuda/topb.cu, the cooperative kernel of topb_fused.cu)
_TOPB_IMPLS = {"fastal": -1, "fastal_launches": 0, "fastal_fused": 1}


@pytest.mark.parametrize("impl", ["torch_topk", *_TOPB_IMPLS])
@pytest.mark.parametrize(("n", "b"), TOPB, ids=[f"n{n}-b{b}" for n, b in TOPB])
def test_topb_cuda(benchmark, monkeypatch, impl, n, b):
    import torch

    if not torch.cuda.is_available() or not fastal.cuda_available():
        pytest.skip("needs a CUDA GPU and fastal built with its CUDA module")
    benchmark.group = f"topb/cuda/n={n}/b={b}"
    g = torch.Generator(device="cuda").manual_seed(0)
    s = torch.randn(n, device="cuda", generator=g)
    sigma = torch.rand(n, device="cuda", generator=g)
    alpha = 0.5

    if impl == "torch_topk":

        def run():
            neg = (-s).clamp_min(0)
            out = torch.topk(-(0.5 * neg * neg - alpha * sigma * sigma), b).indices
            torch.cuda.synchronize()
            return out
    else:
        monkeypatch.setattr(sparse_cuda, "TOPB_IMPL", _TOPB_IMPLS[impl])

        def run():
            out = fastal.iht_threshold(s, sigma, b, alpha)[0]
            torch.cuda.synchronize()
            return out

    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=2)
    # benchmark.stats is None with --benchmark-disable
    seconds = benchmark.stats.stats.min if benchmark.stats else float("nan")
    _TIMES[(("topb-cuda", n, b), impl)] = seconds
    benchmark.extra_info.update(
        n=n, b=b, seconds=seconds, impl=impl, device=torch.cuda.get_device_name()
    )
    if impl.startswith("fastal") and (("topb-cuda", n, b), "torch_topk") in _TIMES:
        benchmark.extra_info["speedup_vs_torch_topk"] = (
            _TIMES[(("topb-cuda", n, b), "torch_topk")] / seconds
        )
