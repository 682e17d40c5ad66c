"""The two implementations of the factored Φ products, and Sparse Approximation on a GPU.

``fastal.sparse.FactoredPhi`` runs its row-wise products (``apply``, ``adjoint``,
``grad_apply``) in the C++ kernels when its factors are CPU tensors of the kernels' dtypes, and
in torch row tiles otherwise (``_kernel is None``): that is the path of CUDA tensors, which the CPU
suite never takes by itself. Here the torch path is forced on the CPU (the ``torch_path`` fixture
sets ``FactoredPhi._use_kernels`` to False) and compared with the kernel path:

- the products themselves, over more than one row tile, for dense, sparse and zero ``u`` and for
  a subset of rows: within ``1e-12`` (float64) / ``2e-5`` (float32) of the same product taken
  with absolute values (the scale of the rounding);
- whole ``SparseApprox`` selections (both solvers, float32 and float64 pools, with and without
  labeled rows, with the bias feature, defaults and alpha = 0): identical picks in the same
  order, and weights and objective trace within 1e-12 (float64) / 1e-4 and 1e-7 (float32)
  relative. In float32 the two paths sum in different orders (measured: weights within 6e-6), so
  picks could part at a float32 near-tie; these pools have none, and a parting here means a real
  difference.

The CUDA test (marked ``cuda``, skipped without a GPU) runs ``SparseApprox`` on torch-CUDA (and
cupy) logits/features and ``mc_probs`` and must pick exactly what the CPU picks from the same
float32 values. Besides float64 sums taken in another order, the GPU differs from the CPU in two
ways: the factored products run in torch (float32, another summation order), and IHT rounds ``s``
and ``sigma`` to float32 before its top-b step. Picks can then part only at a near-tie, so the
data are checked (on the CPU, in this suite) to be well separated: the selections are unchanged
when every input is perturbed by 1e-5 relative (about 80 float32 ulps, far more than any of these
differences), and the GPU pipeline emulated on the CPU (torch products + float32 top-b inputs)
picks the same.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    AVAILABLE_CUDA_BACKENDS,
    CUDA_BACKENDS,
    assert_indices_like,
    indices_to_backend,
    stored,
    to_backend,
    to_numpy,
)
from numpy.testing import assert_allclose, assert_array_equal
from reference import softmax_ref

import fastal._sparse_solve as sparse_solve
import fastal.strategies
from fastal.sparse import FactoredPhi

SparseApprox = fastal.strategies.get("sparse_approx")

#: |torch path - kernel path| <= TOL * (the same product on |A|, |H|, |R|, |u|)
OP_TOL = {"float64": 1e-12, "float32": 2e-5}
#: weights (relative to their largest) and objective trace (relative) of whole selections
W_RTOL = {"float64": 1e-12, "float32": 1e-4}
F_RTOL = {"float64": 1e-12, "float32": 1e-7}


@pytest.fixture
def torch_path(monkeypatch) -> list:
    """Every FactoredPhi made while the fixture is active uses its torch tiles; returns them."""
    made = []
    real = FactoredPhi.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(FactoredPhi, "_use_kernels", False)
    monkeypatch.setattr(FactoredPhi, "__init__", init)
    return made


@pytest.fixture
def kernel_spy(monkeypatch) -> list:
    """The FactoredPhi objects made while the fixture is active (to check they use the kernels)."""
    made = []
    real = FactoredPhi.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(FactoredPhi, "__init__", init)
    return made


# ---------------------------------------------------------------------------------------------
# the products


def factors(n: int, C: int, dh: int, dtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    A = torch.from_numpy(rng.normal(size=(n, C))).to(getattr(torch, dtype))
    H = torch.from_numpy(rng.normal(size=(n, dh))).to(getattr(torch, dtype))
    return A, H


def assert_close_to(got, expected, bound, tol: float, what: str) -> None:
    got, expected, bound = (
        t.numpy() if isinstance(t, torch.Tensor) else t for t in (got, expected, bound)
    )
    err = np.abs(got - expected)
    worst = float((err - tol * bound).max())
    assert worst <= 1e-300, f"{what}: max |torch - kernel| - tol * bound = {worst:.3g}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    ("n", "C", "dh"),
    [
        # float32 blocked kernels: classes in register groups (t = R h: AVX-512 5, 2, 1, AVX2
        # 2, 1; M += coef h: AVX-512 5, 4, 2, 1, AVX2 4, 2, 1), columns in stripes (AVX-512 64
        # then 16, AVX2 16 then 8) and a scalar tail, rows in fours then singly (blocks of 32)
        (2 * FactoredPhi._TILE + 1234, 5, 12),  # three row tiles, the last partial; dh < 16
        (5001, 6, 40),  # 16-column stripes plus a tail; a last block of 9 rows
        (3000, 7, 40),  # 5 + 2 classes (AVX2: 2 + 2 + 2 + 1 and 4 + 2 + 1)
        (3000, 3, 72),  # 2 + 1 classes; a 64-column stripe plus a tail (AVX2: 4 x 16 + 8)
        (2003, 10, 80),  # 5 + 5 classes; a 64- and a 16-column stripe; a last block of 19 rows
        (1500, 9, 16),  # 5 + 2 + 2 and 5 + 4 classes; dh one AVX-512 vector
    ],
)
def test_factored_products_torch_tiles_equal_the_kernels(dtype, n, C, dh):
    b = 37
    A, H = factors(n, C, dh, dtype)
    kern = FactoredPhi(A, H, b)
    assert kern._kernel is not None
    tiles = FactoredPhi(A, H, b)
    tiles._kernel = None
    bound = FactoredPhi(A.abs(), H.abs(), b)  # kernel path, on absolute values
    tol = OP_TOL[dtype]
    rng = np.random.default_rng(1)

    dense = torch.from_numpy(rng.normal(size=n) * (rng.random(n) < 0.7))  # 30% zeros
    sparse_u = torch.zeros(n, dtype=torch.float64)  # few non-zeros: the torch path's sparse branch
    sparse_u[rng.choice(n, size=50, replace=False)] = torch.from_numpy(rng.normal(size=50))
    run_u = torch.zeros(n, dtype=torch.float64)  # a third of the rows in one run, 5 scattered:
    run_u[100 : 100 + n // 3] = 1.5  # the torch path's tiles, a row tile with a zero tail
    run_u[rng.choice(n, size=5, replace=False)] = -0.5
    for name, u in (
        ("dense", dense),
        ("sparse", sparse_u),
        ("zero", torch.zeros(n, dtype=torch.float64)),
        ("ones", torch.ones(n, dtype=torch.float64)),
        ("a run", run_u),
    ):
        got, expected = tiles.apply(u), kern.apply(u)
        assert got.dtype == expected.dtype == torch.float64
        assert got.shape == (C, dh)
        assert_close_to(got, expected, bound.apply(u.abs()), tol, f"apply, {name} u")

    R = torch.from_numpy(rng.normal(size=(C, dh)))
    rows = torch.from_numpy(np.sort(rng.choice(n, size=300, replace=False)))
    for name, r in (("all", None), ("rows", rows), ("unsorted rows", rows.flip(0))):
        got, expected = tiles.adjoint(R, r), kern.adjoint(R, r)
        assert got.dtype == expected.dtype == torch.float64
        assert got.shape == (n if r is None else r.numel(),)
        assert_close_to(got, expected, bound.adjoint(R.abs(), r), tol, f"adjoint, {name}")

    z = torch.from_numpy(rng.random(n) * (rng.random(n) < 0.1))
    for beta in (0.0, 0.3):
        (g, M), (g_k, M_k) = tiles.grad_apply(R, z, beta), kern.grad_apply(R, z, beta)
        g_bound = 2 * bound.adjoint(R.abs()) + 2 * beta * (z - 1).abs()
        assert_close_to(g, g_k, g_bound, tol, f"grad_apply g, beta={beta}")
        # M = Phi g with g itself rounded: bound with |g| plus g's own error bound
        assert_close_to(
            M, M_k, bound.apply(g_k.abs() + tol * g_bound), tol, f"grad_apply M, beta={beta}"
        )
        # De-bias's form: g on a row subset (any order) and Φ of g scattered there
        for name, r in (("rows", rows), ("unsorted rows", rows.flip(0))):
            g_r, M_r = tiles.grad_apply(R, z, beta, r)
            gk_r, Mk_r = kern.grad_apply(R, z, beta, r)
            assert g_r.shape == gk_r.shape == (r.numel(),)
            assert_close_to(g_r, gk_r, g_bound[r], tol, f"grad_apply g, {name}, beta={beta}")
            assert_close_to(g_r, g_k[r], g_bound[r], tol, f"grad_apply g, {name} vs all rows")
            u = torch.zeros(n, dtype=torch.float64)
            u[r] = gk_r
            bound_u = bound.apply(u.abs() + tol * g_bound * (u != 0))
            assert_close_to(M_r, Mk_r, bound_u, tol, f"grad_apply M, {name}, beta={beta}")
            assert_close_to(Mk_r, kern.apply(u), bound_u, tol, f"grad_apply M, {name} vs apply")


# ---------------------------------------------------------------------------------------------
# whole selections


def logits_pool(n: int, C: int, d: int, dtype: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "logits": (rng.normal(size=(n, C)) * 2).astype(dtype),
        "features": rng.normal(size=(n, d)).astype(dtype),
    }


POOL_N = FactoredPhi._TILE + 3000  # more than one row tile, labeled rows or not


#: (labeled rows, bias feature, alpha, beta): defaults as they are, and alpha = 0 (the selection
#: then follows the representation term |v - Phi w|^2 rather than top-sigma)
SETTINGS = [
    pytest.param(False, False, None, None, id="unlabeled-defaults"),
    pytest.param(True, True, None, None, id="labeled-bias-defaults"),
    pytest.param(True, False, 0.0, 1e-3, id="labeled-a0-b1e-3"),
    pytest.param(False, True, 0.0, 1e-3, id="unlabeled-bias-a0-b1e-3"),
]


@pytest.mark.parametrize(("labeled", "bias", "alpha", "beta"), SETTINGS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("solver", ["iht", "greedy"])
def test_selection_on_torch_tiles_equals_the_kernel_path(
    solver, dtype, labeled, bias, alpha, beta, torch_path, monkeypatch
):
    pool = logits_pool(POOL_N, 5, 8, dtype, seed=3)
    lab = np.arange(0, POOL_N, 97) if labeled else None
    budget = 40 if solver == "iht" else 12
    strategy = SparseApprox(
        solver=solver, alpha=alpha, beta=beta, bias=bias, temperature=2.0, iters=20
    )

    got = strategy.select(pool, budget, lab)
    assert torch_path
    assert all(phi._kernel is None for phi in torch_path)
    monkeypatch.undo()  # the kernel path from here on
    expected = strategy.select(pool, budget, lab)

    assert_array_equal(to_numpy(got.indices), to_numpy(expected.indices))
    w, w_k = got.diagnostics["weights"], expected.diagnostics["weights"]
    assert_allclose(w, w_k, rtol=0, atol=W_RTOL[dtype] * np.abs(w_k).max())
    assert_allclose(
        got.diagnostics["objective"], expected.diagnostics["objective"], rtol=F_RTOL[dtype]
    )


def test_the_kernel_path_is_the_default_on_the_cpu(kernel_spy):
    """The comparison above is between two paths: without the fixture the CPU uses the kernels."""
    SparseApprox(temperature=2.0, iters=2).select(logits_pool(300, 3, 4, "float32", 0), 5)
    assert kernel_spy
    assert all(phi._kernel is not None for phi in kernel_spy)


# ---------------------------------------------------------------------------------------------
# the GPU: well-separated data, the CPU emulation of its pipeline, and the CUDA run itself

GPU_N, GPU_BUDGET = 400, 10
GPU_LABELED = list(range(0, GPU_N, 23))
FORMS = ("factored", "bayesian")


def gpu_pools(seed: int = 0, n: int = GPU_N, C: int = 4, d: int = 16, m: int = 8) -> dict:
    """float32 pools: (logits, features) and MC-dropout-like ``mc_probs`` (m, n, C)."""
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, C)) * 2).astype(np.float32)
    features = rng.normal(size=(n, d)).astype(np.float32)
    z = rng.normal(size=(1, n, C)) * 2 + rng.normal(size=(m, n, C)) * 1.5
    mc = softmax_ref(z.reshape(m * n, C)).reshape(m, n, C).astype(np.float32)
    return {"factored": {"logits": logits, "features": features}, "bayesian": {"mc_probs": mc}}


def perturbed(pool: dict, rng: np.random.Generator, eps: float) -> dict:
    """Every input times ``1 + eps N(0, 1)`` (probabilities renormalised), stored as float32."""
    out = {}
    for key, v in pool.items():
        x = v.astype(np.float64) * (1 + eps * rng.normal(size=v.shape))
        if key == "mc_probs":
            x /= x.sum(-1, keepdims=True)
        out[key] = x.astype(np.float32)
    return out


def gpu_strategy(solver: str, form: str):
    # a temperature shapes the factored form's P only (a Bayesian pool refuses one)
    return SparseApprox(solver=solver, temperature=2.0 if form == "factored" else None)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("solver", ["iht", "greedy"])
def test_gpu_data_are_well_separated(solver, form):
    """The premise of the CUDA test: perturbing every input by 1e-5 relative (about 80 float32
    ulps) never changes the picks or their order."""
    pool = gpu_pools()[form]
    strategy = gpu_strategy(solver, form)
    expected = to_numpy(strategy.select(pool, GPU_BUDGET, GPU_LABELED).indices)
    rng = np.random.default_rng(99)
    for _ in range(4):
        got = strategy.select(perturbed(pool, rng, 1e-5), GPU_BUDGET, GPU_LABELED)
        assert_array_equal(to_numpy(got.indices), expected)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("solver", ["iht", "greedy"])
def test_gpu_pipeline_emulated_on_the_cpu(solver, form, torch_path, monkeypatch):
    """What CUDA tensors go through, on the CPU: the torch tiles for Phi, and IHT's top-b step on
    ``s`` and ``sigma`` rounded to float32 (``solve_iht`` on a GPU); same picks as the CPU."""
    pool = gpu_pools()[form]
    strategy = gpu_strategy(solver, form)
    rounded = []
    real_step = sparse_solve._iht_torch

    def float32_step(s, sigma, b, alpha, rule):
        rounded.append(s.dtype)
        return real_step(s.to(torch.float32), sigma.to(torch.float32), b, alpha, rule)

    monkeypatch.setattr(sparse_solve, "_iht_torch", float32_step)
    got = strategy.select(pool, GPU_BUDGET, GPU_LABELED)
    assert bool(rounded) == (solver == "iht")
    assert bool(torch_path) == (form == "factored")
    monkeypatch.undo()
    expected = strategy.select(pool, GPU_BUDGET, GPU_LABELED)
    assert_array_equal(to_numpy(got.indices), to_numpy(expected.indices))
    w, w_k = got.diagnostics["weights"], expected.diagnostics["weights"]
    assert_allclose(w, w_k, rtol=0, atol=W_RTOL["float32"] * np.abs(w_k).max())


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("solver", ["iht", "greedy"])
@pytest.mark.parametrize(
    "backend", [pytest.param(b, marks=pytest.mark.cuda, id=b) for b in CUDA_BACKENDS]
)
def test_sparse_approx_on_cuda_arrays_equals_the_cpu(backend, solver, form):
    """torch-CUDA (or cupy) logits/features or mc_probs, float32: the picks (order included)
    equal those of the CPU on the same values. The data are well separated
    (test_gpu_data_are_well_separated), so the GPU's torch products and float32 top-b inputs
    cannot move them; weights and objective agree within float32 tolerance."""
    if backend not in AVAILABLE_CUDA_BACKENDS:
        pytest.skip(f"{backend} is not available here")
    pool = gpu_pools()[form]
    strategy = gpu_strategy(solver, form)
    on_gpu = {key: to_backend(v, backend, "float32") for key, v in pool.items()}
    got = strategy.select(on_gpu, GPU_BUDGET, GPU_LABELED)
    assert_indices_like(got.indices, next(iter(on_gpu.values())), GPU_BUDGET)
    expected = strategy.select(pool, GPU_BUDGET, GPU_LABELED)
    assert_array_equal(to_numpy(got.indices), to_numpy(expected.indices))
    assert got.diagnostics["form"] == expected.diagnostics["form"] == form
    w, w_k = to_numpy(got.diagnostics["weights"]), expected.diagnostics["weights"]
    assert_allclose(w, w_k, rtol=0, atol=W_RTOL["float32"] * np.abs(w_k).max())
    assert_allclose(got.diagnostics["objective"], expected.diagnostics["objective"], rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_factored_kernels_reject_rows_out_of_range(dtype):
    """The compiled products check their row subsets themselves (a bad index must not read
    outside A and H)."""
    n, C, dh = 50, 3, 8
    A, H = factors(n, C, dh, dtype)
    R = np.zeros((C, dh))
    z = np.zeros(n)
    adjoint = getattr(fastal._ext.cpu, f"factored_adjoint_{dtype}")
    grad_apply = getattr(fastal._ext.cpu, f"factored_grad_apply_{dtype}")
    for bad in (n, -1):
        rows = np.array([0, bad], dtype=np.int64)
        with pytest.raises(ValueError, match=rf"^rows\[1\] = {bad} is out of range"):
            adjoint(A.numpy(), H.numpy(), R, 1.0, rows)
        with pytest.raises(ValueError, match=rf"^rows\[1\] = {bad} is out of range"):
            grad_apply(A.numpy(), H.numpy(), R, 1.0, z, 0.0, rows)


@pytest.mark.parametrize(
    "backend", [pytest.param(b, marks=pytest.mark.cuda, id=b) for b in CUDA_BACKENDS]
)
def test_fit_temperature_on_cuda_logits_equals_the_cpu(backend):
    """Its chunk sums and flags reduced on the device (27b1804): the same T as the CPU's, up to
    the rounding of the NLL near its flat minimum; -inf (a masked class) taken there too."""
    if backend not in AVAILABLE_CUDA_BACKENDS:
        pytest.skip(f"{backend} is not available here")
    rng = np.random.default_rng(3)
    y = rng.integers(0, 7, 3000)
    z = rng.normal(size=(3000, 7))
    z[np.arange(3000), y] += 1.5
    masked = rng.random(z.shape) < 0.05
    masked[np.arange(3000), y] = False  # a target is never masked
    z[masked] = -np.inf
    for dtype in ("float32", "float16"):
        T = fastal.fit_temperature(to_backend(z, backend, dtype), indices_to_backend(y, backend))
        assert_allclose(T, fastal.fit_temperature(stored(z, dtype), y), rtol=1e-6)
