"""``fastal.ntk_features_jacobian``: trace-NTK features over the last k layers (CRC, Kong et al.,
§3.1 and §3.3), against an explicit float64 autograd loop.

The reference computes, per sample and per class, the gradient of the logit with respect to the
selected parameters (named by hand, so the definition of a "layer" is checked too), and sums over
the classes: ``K_ij = Σ_c <∂f_c(x_i)/∂θ, ∂f_c(x_j)/∂θ>``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal

import fastal
from fastal.strategies import CRC

nn = torch.nn
D_IN, H1, H2, C = 4, 5, 6, 3


def mlp(bias: bool = True, batchnorm: bool = False, seed: int = 0) -> nn.Sequential:
    """Linear-ReLU-Linear-ReLU-Linear (float64); with ``batchnorm`` a BatchNorm1d after the first
    Linear, with random affine parameters and running statistics away from (0, 1)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(D_IN, H1, bias=bias)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(H1))
    layers += [nn.ReLU(), nn.Linear(H1, H2, bias=bias), nn.ReLU(), nn.Linear(H2, C, bias=bias)]
    model = nn.Sequential(*layers).double()
    if batchnorm:
        bn = model[1]
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
        model.train()
        for _ in range(3):
            model(2.0 * torch.randn(16, D_IN, dtype=torch.float64) + 1.0)
    return model


def layer_names(bias: bool, batchnorm: bool) -> list[list[str]]:
    """The parameterised modules, in order, each with its parameter names (written by hand)."""
    mods = ["0", "1", "3", "5"] if batchnorm else ["0", "2", "4"]
    out = []
    for m in mods:
        own = ["weight", "bias"] if (bias or (batchnorm and m == "1")) else ["weight"]
        out.append([f"{m}.{p}" for p in own])
    return out


def last_k_names(bias: bool, batchnorm: bool, k: int) -> list[str]:
    return [n for layer in layer_names(bias, batchnorm)[-k:] for n in layer]


def jacobian_ref(model: nn.Module, x: torch.Tensor, names: list[str]) -> torch.Tensor:
    """(n, C, P) float64: ∂f_c(x_i)/∂θ over ``names``, one sample and one class at a time, in eval
    mode, on a copy of the model."""
    ref = copy.deepcopy(model).double().eval()
    named = dict(ref.named_parameters())
    theta = [named[n] for n in names]
    rows = []
    for i in range(x.shape[0]):
        z = ref(x[i : i + 1].double())[0]
        per_class = []
        for c in range(z.shape[0]):
            grads = torch.autograd.grad(z[c], theta, retain_graph=True, allow_unused=True)
            flat = [
                torch.zeros(t.numel(), dtype=torch.float64) if g is None else g.reshape(-1)
                for g, t in zip(grads, theta, strict=True)
            ]
            per_class.append(torch.cat(flat))
        rows.append(torch.stack(per_class))
    return torch.stack(rows)


def trace_ntk_ref(model: nn.Module, x: torch.Tensor, names: list[str]) -> torch.Tensor:
    """K_ij = Σ_c <∂f_c(x_i)/∂θ, ∂f_c(x_j)/∂θ>, float64."""
    G = jacobian_ref(model, x, names)
    return torch.einsum("icp,jcp->ij", G, G)


def inputs(n: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


VARIANTS = [(True, False), (False, False), (True, True), (False, True)]
IDS = ["bias", "no-bias", "bn-bias", "bn-no-bias"]


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize(("bias", "batchnorm"), VARIANTS, ids=IDS)
def test_last_k_gram_matches_autograd_loop(bias, batchnorm, k):
    model = mlp(bias, batchnorm)
    x = inputs()
    J = fastal.ntk_features_jacobian(model, x, last_k=k, chunk=3)
    names = last_k_names(bias, batchnorm, k)
    assert J.dtype == torch.float64
    P = sum(dict(model.named_parameters())[n].numel() for n in names)
    assert J.shape == (x.shape[0], C * P)
    torch.testing.assert_close(J @ J.T, trace_ntk_ref(model, x, names), rtol=1e-12, atol=1e-12)
    # the documented layout: class-major, parameters in named_parameters() order
    torch.testing.assert_close(J, jacobian_ref(model, x, names).reshape(x.shape[0], -1))


@pytest.mark.parametrize(("bias", "batchnorm"), VARIANTS, ids=IDS)
def test_last_k_equals_params_by_name_and_all_layers_equal_default(bias, batchnorm):
    model = mlp(bias, batchnorm)
    x = inputs()
    for k in (1, 2):
        a = fastal.ntk_features_jacobian(model, x, last_k=k)
        b = fastal.ntk_features_jacobian(model, x, params=last_k_names(bias, batchnorm, k))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    n_layers = len(layer_names(bias, batchnorm))
    full = fastal.ntk_features_jacobian(model, x, last_k=n_layers)
    torch.testing.assert_close(full, fastal.ntk_features_jacobian(model, x), rtol=0, atol=0)


@pytest.mark.parametrize(("bias", "batchnorm"), VARIANTS, ids=IDS)
def test_last_k_1_equals_last_layer_features(bias, batchnorm):
    model = mlp(bias, batchnorm)
    x = inputs(9)
    J = fastal.ntk_features_jacobian(model, x, last_k=1)
    with torch.no_grad():
        h = copy.deepcopy(model).eval()[:-1](x)  # penultimate features, eval mode
    Z = fastal.ntk_features(h, C, bias=bias)
    torch.testing.assert_close(J @ J.T, Z @ Z.T, rtol=1e-12, atol=1e-12)


def test_float32_model_and_chunk_invariance():
    model = mlp(True, True).float()
    x = inputs(10).float()
    J = fastal.ntk_features_jacobian(model, x, last_k=2, chunk=4)
    assert J.dtype == torch.float32
    J1 = fastal.ntk_features_jacobian(model, x, last_k=2, chunk=1)
    torch.testing.assert_close(J, J1)
    K = trace_ntk_ref(model, x, last_k_names(True, True, 2))
    torch.testing.assert_close((J.double() @ J.double().T), K, rtol=1e-5, atol=1e-5)


def test_float32_inputs_are_cast_to_a_float64_model():
    model = mlp(True, False)
    x64 = inputs(6).float().double()  # exactly representable in float32
    J = fastal.ntk_features_jacobian(model, x64.float(), last_k=2)
    assert J.dtype == torch.float64
    same = fastal.ntk_features_jacobian(model, x64, last_k=2)
    torch.testing.assert_close(J, same, rtol=0, atol=0)
    K = trace_ntk_ref(model, x64, last_k_names(True, False, 2))
    torch.testing.assert_close(J @ J.T, K, rtol=1e-12, atol=1e-12)


def test_float64_inputs_are_cast_to_a_float32_model():
    model = mlp(True, False).float()
    x = inputs(5)
    J = fastal.ntk_features_jacobian(model, x, last_k=1)
    assert J.dtype == torch.float32
    torch.testing.assert_close(J, fastal.ntk_features_jacobian(model, x.float(), last_k=1))


def test_frozen_parameters_are_not_layers():
    model = mlp(True, False)
    x = inputs()
    model[4].bias.requires_grad_(False)  # last layer: only its weight is trainable
    J = fastal.ntk_features_jacobian(model, x, last_k=1)
    torch.testing.assert_close(J @ J.T, trace_ntk_ref(model, x, ["4.weight"]))
    model[4].weight.requires_grad_(False)  # last layer frozen: the last parameterised one is "2"
    J = fastal.ntk_features_jacobian(model, x, last_k=1)
    torch.testing.assert_close(J @ J.T, trace_ntk_ref(model, x, ["2.weight", "2.bias"]))
    with pytest.raises(ValueError, match=r"last_k must be at most .* \(2: '0', '2'\), got 3"):
        fastal.ntk_features_jacobian(model, x, last_k=3)


class HeadFirst(nn.Module):
    """Registers its head before its body: "last" is the registration order, not forward's."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))  # on the root: first
        self.head = nn.Linear(H1, C).double()
        self.body = nn.Linear(D_IN, H1).double()

    def forward(self, x):
        return self.head(torch.tanh(self.scale * self.body(x)))


def test_registration_order_and_root_parameters():
    torch.manual_seed(3)
    model = HeadFirst()
    x = inputs()
    for k, names in [
        (1, ["body.weight", "body.bias"]),
        (2, ["head.weight", "head.bias", "body.weight", "body.bias"]),
        (3, ["scale", "head.weight", "head.bias", "body.weight", "body.bias"]),
    ]:
        J = fastal.ntk_features_jacobian(model, x, last_k=k)
        torch.testing.assert_close(J @ J.T, trace_ntk_ref(model, x, names))


@pytest.mark.parametrize("batchnorm", [False, True], ids=["mlp", "bn"])
def test_mode_is_restored_and_buffers_untouched(batchnorm):
    model = mlp(True, batchnorm)
    x = inputs()
    model.train()
    model[2].eval()  # mixed modes come back as they were
    modes = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    J = fastal.ntk_features_jacobian(model, x, last_k=3)
    assert [m.training for m in model.modules()] == modes
    for k, v in model.named_buffers():
        torch.testing.assert_close(v, buffers[k], rtol=0, atol=0)
    # the NTK is taken in eval mode: the same as on a model already in eval mode
    model.eval()
    torch.testing.assert_close(J, fastal.ntk_features_jacobian(model, x, last_k=3), rtol=0, atol=0)
    assert not any(m.training for m in model.modules())


def test_a_module_shared_under_two_names_keeps_its_parameters():
    """functional_call put plain tensors back into a module reachable under two attribute names
    (self.b = self.a): an optimizer built before the call stopped training that layer."""

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = self.a
            self.c = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))

    torch.manual_seed(0)
    model = Tied()
    before = {name: p for name, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fastal.ntk_features_jacobian(model, torch.randn(4, 3))
    for name, p in model.named_parameters():
        assert p is before[name]
        assert isinstance(p, torch.nn.Parameter)
    start = model.a.weight.detach().clone()
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert not torch.equal(model.a.weight, start)


def test_mode_is_restored_on_error():
    model = mlp(True, True)
    model.train()
    with pytest.raises(ValueError, match="the model cannot take inputs of shape"):
        fastal.ntk_features_jacobian(model, torch.randn(3, D_IN + 1, dtype=torch.float64), last_k=1)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("k", [0, -1, 4, 1.0, True, "1"])
def test_bad_last_k(k):
    model = mlp(True, False)
    with pytest.raises(ValueError, match="last_k"):
        fastal.ntk_features_jacobian(model, inputs(), last_k=k)


def test_last_k_too_large_lists_the_layers():
    with pytest.raises(ValueError, match=r"at most the number of parameterised modules .*\(4: "):
        fastal.ntk_features_jacobian(mlp(True, True), inputs(), last_k=5)


def test_params_and_last_k_are_exclusive():
    with pytest.raises(ValueError, match="params and last_k"):
        fastal.ntk_features_jacobian(mlp(), inputs(), params=["4.weight"], last_k=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"params": "4.weight"}, "params"),
        ({"params": []}, "params"),
        ({"params": ["nope"]}, "params"),
        ({"chunk": 0}, "chunk"),
    ],
)
def test_other_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fastal.ntk_features_jacobian(mlp(), inputs(), **kwargs)


def test_bad_model_inputs_and_outputs():
    with pytest.raises(TypeError, match="inputs"):
        fastal.ntk_features_jacobian(mlp(), inputs().numpy(), last_k=1)
    with pytest.raises(TypeError, match="model"):
        fastal.ntk_features_jacobian(lambda x: x, inputs(), last_k=1)
    with pytest.raises(ValueError, match="inputs"):
        fastal.ntk_features_jacobian(mlp(), inputs()[:0], last_k=1)
    flat = nn.Sequential(mlp(), nn.Flatten(0))  # (batch * C,): not (batch, C)
    with pytest.raises(ValueError, match=r"\(batch, C\)"):
        fastal.ntk_features_jacobian(flat, inputs(), last_k=1)


def crc_on_gram_ref(K: np.ndarray, labeled, groups: np.ndarray, Q: int, rtol: float) -> np.ndarray:
    """Alg. 1 on the given groups, float64, from the Gram K itself: λ⁺_min of K[S, S], the Q / G
    best groups (ties to the earlier group)."""
    scores = []
    for g in groups:
        S = np.concatenate([np.asarray(labeled), g])
        ev = np.linalg.eigvalsh(K[np.ix_(S, S)])
        pos = ev[ev > rtol * ev[-1]]
        scores.append(pos[0] if pos.size else 0.0)
    best = np.lexsort((np.arange(len(scores)), -np.asarray(scores)))[: Q // groups.shape[1]]
    return groups[best].reshape(-1)


@pytest.mark.parametrize(("bias", "batchnorm"), VARIANTS, ids=IDS)
def test_crc_runs_on_last_k_features(bias, batchnorm):
    model = mlp(bias, batchnorm)
    x = inputs(40, seed=5)
    labeled, Q, G, rtol = [0, 1, 2], 4, 2, 1e-10
    J = fastal.ntk_features_jacobian(model, x, last_k=2)
    with torch.no_grad():
        probs = torch.softmax(copy.deepcopy(model).eval()(x), 1)
    sel = CRC(group_size=G, rtol=rtol, zeros="skip").select(
        {"ntk_features": J, "probs": probs}, Q, labeled=labeled, seed=7
    )
    K = trace_ntk_ref(model, x, last_k_names(bias, batchnorm, 2)).numpy()
    want = crc_on_gram_ref(K, labeled, np.asarray(sel.diagnostics["groups"]), Q, rtol)
    assert_array_equal(np.asarray(sel.indices), want)
    # default settings: a valid selection
    sel = CRC(group_size=G).select({"ntk_features": J}, Q, labeled=labeled, seed=7)
    idx = np.asarray(sel.indices)
    assert np.unique(idx).size == idx.size == Q
    assert not set(idx.tolist()) & set(labeled)


def test_crc_last_k_1_picks_as_last_layer_features():
    """Same Gram, same groups (same seed): the same picks as from √C [h, 1]."""
    model = mlp(True, False)
    x = inputs(40, seed=6)
    J = fastal.ntk_features_jacobian(model, x, last_k=1)
    with torch.no_grad():
        h = model[:-1](x)
    Z = fastal.ntk_features(h, C)
    crc = CRC(group_size=2, rtol=1e-10, zeros="skip")
    a = crc.select({"ntk_features": J}, 6, labeled=[0, 1], seed=3)
    b = crc.select({"ntk_features": Z}, 6, labeled=[0, 1], seed=3)
    assert_array_equal(np.asarray(a.indices), np.asarray(b.indices))


def test_a_callers_autocast_does_not_reach_the_jacobian():
    """last_k=2 under a bfloat16 CPU autocast failed in jacrev (BFloat16 against Float)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    X = torch.randn(10, 4)
    want = fastal.ntk_features_jacobian(model, X, last_k=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fastal.ntk_features_jacobian(model, X, last_k=2)
    assert torch.equal(got, want)
