"""Bad input to the torch layer, the bilevel coreset, ALLY and ``ntk_features_jacobian`` (fuzz
audit): a ``ValueError`` / ``TypeError`` naming the argument, never a raw error from inside torch
or numpy, and floating inputs of every kind cast to the model's dtype alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fastal
import fastal.torch as ft
from fastal.bilevel import Nystrom, linear_ntk
from fastal.strategies import ALLY, BilevelCoreset

N, D_IN, C = 12, 4, 3


def mlp(dropout: float = 0.0) -> nn.Sequential:
    """Float32 Linear-ReLU-[Dropout]-Linear with seeded weights."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        layers = [nn.Linear(D_IN, 8), nn.ReLU()]
        layers += [nn.Dropout(dropout)] if dropout else []
        return nn.Sequential(*layers, nn.Linear(8, C))


def x32() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).normal(size=(N, D_IN)).astype(np.float32))


def pool_pass(data=None, needs=("features", "probs"), model=None, **kw):
    model = mlp() if model is None else model
    return ft.pool_outputs(model, x32() if data is None else data, needs, progress=False, **kw)


# --- fastal.torch --------------------------------------------------------------------------------


def test_feature_layer_unknown_name_lists_the_submodules():
    with pytest.raises(ValueError, match=r"feature_layer 'nope' is not a submodule.*'0', '1', '2'"):
        pool_pass(feature_layer="nope")
    out = pool_pass(feature_layer="2")  # a valid name still works
    assert out["features"].shape == (N, 8)


@pytest.mark.parametrize(("arg", "value"), [("device", "foo"), ("output_device", "gpu9")])
def test_bad_device_strings_name_the_argument(arg, value):
    with pytest.raises(ValueError, match=rf"{arg} must be a torch.device or a device string.*"):
        pool_pass(**{arg: value})


def test_meta_devices_are_refused_before_the_model_moves():
    model = mlp()
    before = model[0].weight.detach().clone()
    with pytest.raises(
        ValueError, match="output_device must be the CPU or a CUDA device, got meta"
    ):
        pool_pass(model=model, output_device="meta")
    with pytest.raises(ValueError, match="device must be a device that holds data, got meta"):
        pool_pass(model=model, device="meta")
    assert model[0].weight.device.type == "cpu"
    assert torch.equal(model[0].weight, before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_output_device_without_cuda_names_the_argument():
    with pytest.raises(ValueError, match="output_device is cuda but CUDA is not available"):
        pool_pass(output_device="cuda")


def test_dtype_names_are_accepted_and_other_dtypes_refused():
    for name, want in (("float32", torch.float32), ("float64", torch.float64),
                       ("torch.bfloat16", torch.bfloat16)):  # fmt: skip
        assert pool_pass(dtype=name)["probs"].dtype == want
    for bad in (torch.int64, "int64", "nope", 5, np.float32):
        with pytest.raises(TypeError, match=r"dtype must be torch\.float32, torch\.float64"):
            pool_pass(dtype=bad)
    with pytest.raises(TypeError, match="dtype must be"):
        ft.select("entropy", mlp(), x32(), 2, dtype=torch.int64, progress=False)


def test_seeds_follow_one_rule():
    model, x = mlp(dropout=0.5), x32()
    with pytest.raises(TypeError, match="mc_seed must be None or a non-negative int, got 'x'"):
        ft.select("bald", model, x, 2, mc_seed="x", mc_samples=3, progress=False)
    with pytest.raises(ValueError, match=r"mc_seed must be None or an int in \[0, 2\*\*64\)"):
        ft.select("bald", model, x, 2, mc_seed=-1, mc_samples=3, progress=False)
    for strategy in ("bald", "random", "entropy"):  # the same rule whether or not it draws
        with pytest.raises(ValueError, match="seed must be None, a non-negative int"):
            ft.select(strategy, model, x, 2, seed=-1, mc_samples=3, progress=False)
        with pytest.raises(TypeError, match="seed must be None, a non-negative int"):
            ft.select(strategy, model, x, 2, seed="x", mc_samples=3, progress=False)
    with pytest.raises(ValueError, match=r"seed must be None or an int in \[0, 2\*\*64\)"):
        ft.select("bald", model, x, 2, seed=2**64, mc_samples=3, progress=False)
    with pytest.raises(TypeError, match="seed must be None or a non-negative int"):
        pool_pass(model=model, needs=("mc_probs",), seed="x", mc_samples=3)
    ft.select("bald", model, x, 2, seed=np.random.default_rng(0), mc_samples=3, progress=False)


def test_embed_fn_result_is_checked():
    with pytest.raises(TypeError, match=r"embed_fn must return a torch tensor of shape \(12, d\)"):
        pool_pass(embed_fn=lambda m, x: x.numpy())
    with pytest.raises(ValueError, match=r"embed_fn must return one row per input row.*\(1, 4\)"):
        pool_pass(embed_fn=lambda m, x: x[:1])
    with pytest.raises(TypeError, match="embed_fn must be callable"):
        pool_pass(embed_fn="body")


def _kinds():
    x = x32().numpy().astype(np.float64)
    y = torch.zeros(N, dtype=torch.int64)
    return {
        "numpy float64": x,
        "tensor float64": torch.from_numpy(x),
        "tensor float16": torch.from_numpy(x).half(),
        "TensorDataset float64": TensorDataset(torch.from_numpy(x), y),
        "DataLoader float64": DataLoader(TensorDataset(torch.from_numpy(x), y), batch_size=5),
        "list of rows": x.tolist(),
        "tuple of rows": tuple(map(tuple, x.tolist())),
    }


@pytest.mark.parametrize("kind", list(_kinds()))
def test_floating_inputs_of_every_kind_are_cast_to_the_model_dtype(kind):
    data = _kinds()[kind]
    want = pool_pass(batch_size=5)
    got = pool_pass(data, batch_size=5)
    tol = 2e-3 if "float16" in kind else 1e-6
    for key in want:
        assert got[key].dtype == torch.float32
        assert_allclose(got[key].numpy(), want[key].numpy(), rtol=tol, atol=tol, err_msg=key)


def test_integer_inputs_are_passed_as_they_are():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 5), nn.Flatten(), nn.Linear(10, C))
    ids = torch.randint(0, 10, (N, 2))
    for data in (ids, ids.numpy(), TensorDataset(ids)):
        assert pool_pass(data, ("probs",), model=model)["probs"].shape == (N, C)


def test_amp_is_checked_on_the_cpu_too():
    for bad in ("yes", 1, torch.float32):
        with pytest.raises(
            ValueError, match=r"amp must be a bool, torch\.float16 or torch\.bfloat16"
        ):
            pool_pass(amp=bad)
    pool_pass(amp=True)  # valid, ignored on the CPU


@pytest.mark.parametrize("labels", [["a", "b"], [None, None], [0.0, 1.0], [[0], [1, 2]]])
def test_labels_must_be_integer_class_indices(labels):
    with pytest.raises(TypeError, match="labels must hold integer class indices"):
        ft.select("sparse_approx", mlp(), x32(), 2, labeled=[0, 1], labels=labels, progress=False)


@pytest.mark.parametrize("strategy", ["sparse_approx", "entropy", "badge"])
def test_labels_out_of_range_name_labels(strategy):
    """Whenever the pass gives C (logits or probabilities), not only from logits."""
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\).*\[-1, 9\]"):
        ft.select(strategy, mlp(), x32(), 2, labeled=[0, 1], labels=[-1, 9], progress=False)
    sel = ft.select("sparse_approx", mlp(), x32(), 2, labeled=[0, 1], labels=[0, 2], progress=False)
    assert len(sel.indices) == 2


def test_a_label_equal_to_the_number_of_classes_is_refused():
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\).*\[0, 3\]"):
        ft.select("sparse_approx", mlp(), x32(), 2, labeled=[0, 1], labels=[0, 3], progress=False)


def test_the_largest_seed_is_taken():
    sel = ft.select("bald", mlp(dropout=0.5), x32(), 2, seed=2**64 - 1, mc_seed=2**63,
                    mc_samples=3, progress=False)  # fmt: skip
    assert len(sel.indices) == 2


def test_the_model_dtype_is_its_first_floating_parameter():
    class WithTable(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.arange(3), requires_grad=False)  # int64, listed first
            self.net = mlp()

        def forward(self, x):
            return self.net(x)

    x = np.random.default_rng(0).normal(size=(6, D_IN))  # float64: cast to the model's float32
    out = ft.pool_outputs(WithTable(), x, ("logits",), progress=False)
    assert out["logits"].dtype == torch.float32


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("abcdefghijkl", "got str$"),  # had a length: a pool of 12 characters
        (b"abcdefghijkl", "got bytes$"),
        ({"x": torch.zeros(N, D_IN)}, "got dict: a mapping of per-row tensors goes in as a "),
    ],
)  # fmt: skip
@pytest.mark.parametrize("call", ["select_random", "select_entropy", "pool_outputs", "pool_size"])
def test_strings_and_mappings_are_not_pools(data, match, call):
    """A string was read as a pool of characters ('random' picked among them); a dict gave a
    budget error about a pool of 1 point or the DataLoader's KeyError: 0."""
    prefix = r"^data must be a torch Tensor, a numpy array, a list of rows, a Dataset or a "
    prefix += "DataLoader, "
    calls = {
        "pool_outputs": lambda: pool_pass(data),
        "pool_size": lambda: ft.pool_size(data),
        "select_random": lambda: ft.select("random", mlp(), data, 2, seed=0, progress=False),
        "select_entropy": lambda: ft.select("entropy", mlp(), data, 2, seed=0, progress=False),
    }
    with pytest.raises(TypeError, match=prefix + match):
        calls[call]()


@pytest.mark.parametrize("needs", [None, 3, ["logits", 3], {"logits"}])
def test_needs_must_be_names(needs):
    with pytest.raises(TypeError, match=r"^needs must be a name or a list of names, got "):
        pool_pass(needs=needs)


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("mc_samples", 0, r"^mc_samples must be a positive integer, got 0$"),
        ("num_workers", -1, r"^num_workers must be a non-negative integer, got -1$"),
        ("num_workers", 1.5, r"^num_workers must be a non-negative integer, got 1.5$"),
        ("batch_size", True, r"^batch_size must be a positive integer, got True$"),
    ],
)
@pytest.mark.parametrize("strategy", ["random", "entropy"])
def test_pass_options_are_checked_whether_or_not_the_pass_uses_them(option, value, match, strategy):
    """mc_samples was only checked when needs had MC outputs, num_workers not at all, and a
    strategy without model outputs (random) skipped every check."""
    with pytest.raises(ValueError, match=match):
        ft.select(strategy, mlp(), x32(), 2, seed=0, progress=False, **{option: value})
    with pytest.raises(ValueError, match=match):
        pool_pass(needs=("logits",), **{option: value})


@pytest.mark.parametrize("strategy", ["random", "entropy"])
def test_select_refuses_an_unknown_option(strategy):
    """pool_outputs refused a typo, but 'random' never calls it: batchsize=4 was ignored."""
    with pytest.raises(TypeError, match=r"^select got unknown option\(s\) 'batchsize', 'devcie'"):
        ft.select(strategy, mlp(), x32(), 2, progress=False, batchsize=4, devcie="cpu")
    sel = ft.select(strategy, mlp(), x32(), 2, seed=0, progress=False, batch_size=4, mc_seed=1,
                    num_workers=0, output_device="cpu", task="classification")  # fmt: skip
    assert len(sel.indices) == 2


# --- BilevelCoreset ------------------------------------------------------------------------------


def bilevel_pool(n: int = 40):
    rng = np.random.default_rng(0)
    return {"logits": rng.normal(size=(n, C)), "features": rng.normal(size=(n, 5))}


def test_bilevel_precondition_must_be_a_bool():
    with pytest.raises(TypeError, match="precondition must be a bool"):
        BilevelCoreset(precondition="no")
    assert BilevelCoreset(precondition=np.bool_(False)).precondition is False


@pytest.mark.parametrize("depth", [1.5, -1, "x", True])
@pytest.mark.parametrize("kernel", ["ntk_last_layer", "relu_ntk"])
def test_bilevel_depth_is_a_non_negative_integer(depth, kernel):
    with pytest.raises(ValueError, match="depth must be a non-negative integer"):
        BilevelCoreset(kernel=kernel, depth=depth)


def test_bilevel_depth_zero_is_the_linear_kernel():
    assert BilevelCoreset(kernel="relu_ntk", depth=0).depth == 0


def test_bilevel_messages_name_the_pool_keys():
    pool = bilevel_pool()
    probs = np.random.default_rng(2).dirichlet(np.ones(C), 40)
    s = BilevelCoreset(landmarks=20)
    with pytest.raises(ValueError, match="probs rows must sum to 1"):
        s.select({"probs": probs * 0.5, "features": pool["features"]}, 3, [0, 1], seed=0)
    for bad in (np.full((2, C), 0.5), np.full((2, C), np.nan), -np.ones((2, C))):
        with pytest.raises(ValueError, match="labeled_targets"):
            s.select(dict(pool, labeled_targets=bad), 3, [0, 1], seed=0)
    with pytest.raises(TypeError, match="labeled_targets must hold classes or probabilities"):
        s.select(dict(pool, labeled_targets=["a", "b"]), 3, [0, 1], seed=0)
    with pytest.raises(TypeError, match="labeled_targets must be integer classes"):
        s.select(dict(pool, labeled_targets=[0.0, 1.0]), 3, [0, 1], seed=0)
    sel = s.select(dict(pool, labeled_targets=np.eye(C)[[0, 2]]), 3, [0, 1], seed=0)
    assert len(sel.indices) == 3


def test_bilevel_rcond_range():
    for rcond in (1.0, 1e10):
        with pytest.raises(ValueError, match=r"rcond must be in \[0, 1\).*every eigenvalue"):
            BilevelCoreset(rcond=rcond)
        with pytest.raises(ValueError, match=r"rcond must be in \[0, 1\)"):
            Nystrom(np.eye(3), linear_ntk, rcond=rcond)
    with pytest.raises(ValueError, match="rcond must be >= 0"):
        BilevelCoreset(rcond=-0.1)
    sel = BilevelCoreset(landmarks=20, rcond=0.5).select(bilevel_pool(), 3, [0, 1], seed=0)
    assert len(sel.indices) == 3


def test_bilevel_refuses_features_without_columns():
    pool = dict(bilevel_pool(), features=np.zeros((40, 0)))
    with pytest.raises(ValueError, match=r"features has no columns: shape \(40, 0\)"):
        BilevelCoreset(landmarks=20).select(pool, 3, [0, 1], seed=0)


def test_bilevel_labeled_targets_without_labeled_rows():
    pool = bilevel_pool()
    s = BilevelCoreset(landmarks=20)
    for labeled in (None, []):
        with pytest.raises(
            ValueError, match=r"labeled_targets must have one entry per labeled row \(0\), got 2"
        ):
            s.select(dict(pool, labeled_targets=np.array([0, 1])), 3, labeled, seed=0)
    empty = s.select(dict(pool, labeled_targets=np.empty(0, np.int64)), 3, None, seed=0)
    assert len(empty.indices) == 3


# --- ALLY ---------------------------------------------------------------------------------------


def ally_features():
    return np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("dual_predictions", np.ones(40) * (1 + 1j), "dtype complex128"),
        ("dual_predictions", torch.ones(40, dtype=torch.complex64), "dtype complex64"),
        ("dual_predictions", ["a"] * 40, "dtype <U1"),
        ("dual_predictions", [None] * 40, "an entry of type NoneType"),
        ("duals", "ab", "dtype <U2"),
        ("duals", [1.0, "x"], "dtype <U"),
        ("duals", [True, False], "dtype bool"),
    ],
)
def test_ally_values_must_be_real_numbers(key, value, match):
    with pytest.raises(TypeError, match=rf"{key} must hold real numbers, got {match}"):
        ALLY(head_steps=5).select({"features": ally_features(), key: value}, 3, [0, 1], seed=0)


def test_ally_duals_beyond_the_head_precision():
    for features in (ally_features(), ally_features().astype(np.float64)):
        pool = {"features": features, "duals": [1e300, 0.0, 1.0]}
        with pytest.raises(ValueError, match=r"duals reach 1e\+300, beyond what the dual head"):
            ALLY(head_steps=5).select(pool, 3, [0, 1, 2], seed=0)
    with pytest.raises(ValueError, match=r"duals reach 1e\+100, beyond .* in float32"):
        ALLY(head_steps=5).select({"features": ally_features(), "duals": [1e100, 0, 1]}, 3,
                                  [0, 1, 2], seed=0)  # fmt: skip
    pool = {"features": ally_features().astype(np.float64), "duals": [1e100, 0.0, 1.0]}
    sel = ALLY(head_steps=5).select(pool, 3, [0, 1, 2], seed=0)  # float64 holds them
    assert np.isfinite(sel.diagnostics["predicted_dual_max"])


# --- ntk_features_jacobian -----------------------------------------------------------------------


def test_jacobian_refuses_non_finite_inputs():
    x = x32()[:5].clone()
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="inputs contains NaN or Inf"):
        fastal.ntk_features_jacobian(mlp(), x, last_k=1)
    with pytest.raises(ValueError, match=r"inputs overflow the model's dtype torch\.float32"):
        fastal.ntk_features_jacobian(mlp(), torch.full((2, D_IN), 1e300, dtype=torch.float64))


def test_jacobian_refuses_non_finite_results():
    model = mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")  # the last layer's input, its Jacobian
    with pytest.raises(ValueError, match="Jacobian features contain NaN or Inf"):
        fastal.ntk_features_jacobian(model, x32()[:3], last_k=1)


def test_jacobian_params_must_be_names():
    with pytest.raises(TypeError, match="params must be an iterable of parameter names"):
        fastal.ntk_features_jacobian(mlp(), x32()[:3], params=3)
    with pytest.raises(TypeError, match="params must hold parameter names"):
        fastal.ntk_features_jacobian(mlp(), x32()[:3], params=[3])


def test_jacobian_casts_floating_inputs_like_the_pool_pass():
    x = x32()[:5]
    want = fastal.ntk_features_jacobian(mlp(), x, last_k=1)
    for cast in (torch.float64, torch.float16):
        got = fastal.ntk_features_jacobian(mlp(), x.to(cast), last_k=1)
        assert got.dtype == torch.float32
        tol = 5e-3 if cast == torch.float16 else 1e-6
        assert_allclose(got.numpy(), want.numpy(), rtol=tol, atol=tol)


def test_jacobian_inputs_of_a_shape_the_model_cannot_take():
    """torch's 'mat1 and mat2 shapes cannot be multiplied' came through as a RuntimeError."""
    with pytest.raises(ValueError, match=r"^the model cannot take inputs of shape \(3, 3\): mat1"):
        fastal.ntk_features_jacobian(mlp(), x32()[:3, :3], last_k=1)


def test_jacobian_integer_inputs():
    with pytest.raises(
        TypeError, match=r"inputs has dtype torch\.int64, which the model cannot take"
    ):
        fastal.ntk_features_jacobian(mlp(), torch.ones(3, D_IN, dtype=torch.int64), last_k=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 5), nn.Flatten(), nn.Linear(10, C))
    J = fastal.ntk_features_jacobian(model, torch.randint(0, 10, (4, 2)), last_k=1)
    assert J.shape == (4, C * (C * 10 + C))


def test_a_lazy_model_keeps_trainable_weights_after_a_pool_pass():
    """Under inference_mode a LazyLinear's first forward made its weights inference tensors, and
    training the model afterwards failed inside torch."""
    from fastal.loop import fit

    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, C))
    pool_pass(model=model, needs=("probs",))
    assert not model[0].weight.is_inference()
    y = torch.arange(N) % C
    fit(model, TensorDataset(x32(), y), max_steps=2)


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(D_IN, C)

    def forward(self, x):
        return self.head(x), x


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_fit_refuses_a_model_returning_a_tuple(task):
    from fastal.loop import fit

    y = torch.arange(N) % C if task == "classification" else torch.zeros(N)
    with pytest.raises(TypeError, match=r"^the model must return a tensor, got tuple"):
        fit(TupleOut(), TensorDataset(x32(), y), task=task, max_steps=2)


def test_fit_takes_a_model_with_batch_norm_in_train_mode():
    """The check of the labels against the model's classes runs one row through a copy of the
    model: in train mode batch norm refused it ("Expected more than 1 value per channel")."""
    from fastal.loop import fit

    model = nn.Sequential(nn.Linear(D_IN, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, C))
    fit(model, TensorDataset(x32(), torch.arange(N) % C), max_steps=2)
    assert int(model[1].num_batches_tracked) == 2  # the two steps, not the probe, trained it


@pytest.mark.parametrize("duals", [0.5, torch.tensor(0.5), "ab"])
def test_duals_must_be_one_dimensional(duals):
    with pytest.raises(TypeError, match=r"^duals must be a 1-D array"):
        ft.select(ALLY(), mlp(), x32(), 2, labeled=[0, 1], duals=duals, progress=False)


@pytest.mark.parametrize("pair", [tuple, list])
def test_an_inputs_and_labels_pair_is_not_a_pool_of_two_rows(pair):
    """``(X, y)``, as loop.run takes a labeled set, was read as a pool of two rows: "budget is
    larger than the unlabeled pool (2 points)" or torch.stack's error."""
    x, y = x32(), torch.arange(N) % C
    with pytest.raises(TypeError, match=r"^data looks like an \(inputs, labels\) pair"):
        ft.select("entropy", mlp(), pair([x, y]), 1, progress=False)
    with pytest.raises(TypeError, match=r"^data looks like an \(inputs, labels\) pair"):
        ft.pool_size(pair([x.numpy(), y.numpy()]))
    assert ft.pool_size(pair([x[0], x[1]])) == 2  # two rows of one shape are a pool


class HeadRegisteredFirst(nn.Module):
    """The head registered before the body: the last nn.Linear registered is the body's."""

    def __init__(self):
        super().__init__()
        self.cls = nn.Linear(8, C)
        self.body = nn.Sequential(nn.Linear(D_IN, 8), nn.ReLU())

    def forward(self, x):
        return self.cls(self.body(x))


def test_a_default_feature_layer_that_is_not_the_head_is_warned_about():
    """Its input (here the raw inputs) became the features, silently."""
    with pytest.warns(UserWarning, match=r"registered \('body.0'\), is not the last one the "
                      r"forward pass runs \('cls'\)"):  # fmt: skip
        out = pool_pass(model=HeadRegisteredFirst())
    assert out["features"].shape == (N, D_IN)  # what the warning is about
    out = pool_pass(model=HeadRegisteredFirst(), feature_layer="cls")  # the way out: no warning
    assert out["features"].shape == (N, 8)


def test_feature_layer_with_embed_fn_or_unused_is_still_checked():
    """feature_layer was ignored beside embed_fn, and not checked when features were not asked:
    a typo'd name passed."""
    with pytest.raises(ValueError, match="pass feature_layer= or embed_fn=, not both"):
        pool_pass(feature_layer="2", embed_fn=lambda m, x: x)
    with pytest.raises(ValueError, match="feature_layer 'nope' is not a submodule"):
        pool_pass(needs=("probs",), feature_layer="nope")


def test_a_feature_layer_that_never_runs_is_named():
    class TrainOnlyProjector(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = mlp()
            self.projector = nn.Linear(C, 4)  # the last Linear registered; used in training only

        def forward(self, x):
            return self.body(x)

    with pytest.raises(RuntimeError, match=r"Linear 'projector' did not run"):
        pool_pass(model=TrainOnlyProjector(), needs=("features",))


class SingleLogitBinary(nn.Module):
    """fastal's own advice for a BCE model: [0, z] as logits; the head has 1 output."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D_IN, 8), nn.ReLU())
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        z = self.head(self.body(x))
        return torch.cat([torch.zeros_like(z), z], 1)


class ReshapedRegression(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D_IN, 8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, x):
        return self.body(x).view(-1, 2, 2)


@pytest.mark.parametrize(("model", "needs", "task"), [
    (SingleLogitBinary, ("features", "probs"), "classification"),
    (ReshapedRegression, ("features", "outputs"), "regression"),
])  # fmt: skip
def test_heads_whose_width_differs_from_the_outputs_draw_no_warning(model, needs, task):
    """A width test warned about these (1 output against 2; a reshaped multi-output head): the
    test is now whether another nn.Linear runs after the default layer (pytest errors on any
    warning)."""
    out = pool_pass(model=model(), needs=needs, task=task)
    assert out["features"].shape == (N, 8)


def test_two_ragged_rows_are_a_pool_not_a_pair():
    """Two clips of shape (1, T_i): the (X, y) check is for a 1-D label vector only."""
    rows = [torch.zeros(1, 5), torch.zeros(1, 7)]
    assert ft.pool_size(rows) == 2


class TiedHead(nn.Module):
    """The head is F.linear on the embedding's weight (tied): the last nn.Linear is the body's."""

    def __init__(self, product):
        super().__init__()
        self.embed = nn.Parameter(torch.randn(C, 8))
        self.body = nn.Sequential(nn.Linear(D_IN, 8), nn.ReLU())
        self.product = product

    def forward(self, x):
        return self.product(self.body(x), self.embed)


@pytest.mark.parametrize(("product", "name"), [
    (lambda h, w: nn.functional.linear(h, w), "linear"),
    (lambda h, w: h @ w.T, "matmul"),
    (lambda h, w: torch.einsum("nd,cd->nc", h, w), "einsum"),
    (lambda h, w: -torch.cdist(h, w), "cdist"),
    (lambda h, w: torch.cosine_similarity(h[:, None], w[None], dim=-1), "cosine_similarity"),
])  # fmt: skip
def test_a_default_feature_layer_before_a_functional_head_is_warned_about(product, name):
    with pytest.warns(UserWarning, match=r"registered \('body.0'\), is followed by a product "
                      rf"outside an nn.Linear \({name}\)"):  # fmt: skip
        out = pool_pass(model=TiedHead(product))
    assert out["features"].shape == (N, D_IN)  # the raw inputs: what the warning is about
    out = pool_pass(model=TiedHead(product), embed_fn=lambda m, x: m.body(x))  # no warning
    assert out["features"].shape == (N, 8)


@pytest.mark.parametrize("model", [HeadRegisteredFirst, lambda: TiedHead(lambda h, w: h @ w.T)])
def test_a_default_layer_that_is_not_the_head_is_warned_about_for_features_alone(model):
    """Core-Set, k-means and robust k-center ask for the features alone: the pass stopped at the
    default layer, so nothing watched what ran after it, and k-center ran on the raw inputs."""
    with pytest.warns(UserWarning, match="it may not be the head"):
        out = pool_pass(model=model(), needs=("features",), batch_size=4)
    assert out["features"].shape == (N, D_IN)
    with pytest.warns(UserWarning, match="it may not be the head"):
        both = pool_pass(model=model(), needs=("features", "probs"), batch_size=4)
    assert torch.equal(out["features"], both["features"])


class FailingAfterTheFeatures(nn.Module):
    """Its code after the feature layer fails in eval mode (a head that is training-only)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(D_IN, 8)

    def forward(self, x):
        h = self.fc(x)
        if not self.training:
            raise NotImplementedError("the head runs in training only")
        return h


def test_features_alone_do_not_fail_on_what_runs_after_the_layer():
    """The first batch's pass runs through the model to watch the head: what fails after the
    features were taken was raised to a caller who asked for the features alone (a review)."""
    out = pool_pass(model=FailingAfterTheFeatures(), needs=("features",), batch_size=4)
    assert torch.equal(out["features"], x32())
    assert torch._C._len_torch_function_stack() == 0
    with pytest.raises(NotImplementedError, match="training only"):  # logits asked: raised
        pool_pass(model=FailingAfterTheFeatures(), needs=("features", "logits"))


def test_features_alone_from_a_layer_run_twice_are_its_first_call_on_every_batch():
    """The first batch's pass runs through the model (to watch the head), the others stop at the
    layer: the features are the input of its first call either way, and no 'ran more than once'.
    The second call is the head, which the features are not the input of: the warning says the
    layer runs more than once (it said 'followed by a product', which read as another head)."""
    model = SharedHead()
    with pytest.warns(UserWarning, match="runs more than once in a forward pass") as record:
        out = pool_pass(model=model, needs=("features",), batch_size=4)
    assert torch.equal(out["features"], x32())  # proj's first input: the raw rows
    assert len(record) == 1  # one warning, the first batch's
    assert torch._C._len_torch_function_stack() == 0


class PaddedEncoder(nn.Module):
    """A transformer with a padding mask: its fast path (nested tensors) leaves the padded
    positions at 0, the slow path computes them, and the mean over positions differs by ~0.3."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=True)
        self.fc = nn.Linear(8, C)

    def forward(self, x):
        h = self.enc(x, src_key_padding_mask=x.abs().sum(-1) == 0)
        return self.fc(h.mean(1))


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype")
def test_the_head_watch_leaves_the_first_batch_as_the_model_computes_it():
    """A function mode on the whole first forward turned the transformer's fast path off there:
    batch 0's logits differed from the model's (and from batch 1's way) by up to 0.29."""
    torch.manual_seed(0)
    x = torch.randn(8, 6, 8)
    x[:, 4:] = 0  # the last two positions are padding
    model = PaddedEncoder().eval()
    out = ft.pool_outputs(model, x, ("features", "logits"), progress=False, batch_size=4)
    with torch.inference_mode():
        expected = model(x)
    assert torch.equal(out["logits"], expected)
    assert torch._C._len_torch_function_stack() == 0


# -- the head watch, mutation-tested (products, fast paths, the mode stack) ----------------------


@pytest.mark.parametrize(("product", "name"), [
    (lambda h, w: torch.mm(h, w.T), "mm"),
    (lambda h, w: torch.addmm(torch.zeros(C), h, w.T), "addmm"),
    (lambda h, w: torch.bmm(h[None], w.T[None])[0], "bmm"),
    (lambda h, w: torch.tensordot(h, w, dims=([1], [1])), "tensordot"),
    (lambda h, w: torch.inner(h, w), "inner"),
    (lambda h, w: torch.Tensor.__rmatmul__(w.T, h), "__rmatmul__"),
    (lambda h, w: nn.functional.bilinear(h, h, w[:, None].expand(C, 8, 8).clone()), "bilinear"),
])  # fmt: skip
def test_more_functional_heads_are_warned_about(product, name):
    with pytest.warns(UserWarning, match=rf"followed by a product outside an nn.Linear \({name}\)"):
        pool_pass(model=TiedHead(product))


class ProjectedEncoder(nn.Module):
    """The input projection is the last nn.Linear registered and runs before a padded
    transformer (its fast path); the head is F.linear on a tied weight. The projection sees each
    row whole, (B, T·d): a per-position layer is refused as a feature layer."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=True)
        self.classes = nn.Parameter(torch.randn(C, 8))
        self.inp = nn.Linear(48, 48)

    def forward(self, x):
        h = self.inp(x.flatten(1)).view_as(x)
        h = self.enc(h, src_key_padding_mask=x.abs().sum(-1) == 0)
        return nn.functional.linear(h.mean(1), self.classes)


class ProjectedAttention(nn.Module):
    """The input projection (the last nn.Linear registered) runs before self-attention with a
    padding mask (MultiheadAttention's fast path runs no nn.Linear module); the head is F.linear
    on a tied weight, after the attention. The projection sees each row whole, (B, T·d)."""

    def __init__(self):
        super().__init__()
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.classes = nn.Parameter(torch.randn(C, 8))
        self.inp = nn.Linear(48, 48)

    def forward(self, x):
        h = self.inp(x.flatten(1)).view_as(x)
        h, _ = self.att(h, h, h, key_padding_mask=x.abs().sum(-1) == 0, need_weights=False)
        return nn.functional.linear(h.mean(1), self.classes)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype")
@pytest.mark.parametrize(("model", "warning"), [
    (ProjectedEncoder, r"is not the last one the forward pass runs \('enc.layers.0.linear2'\)"),
    (ProjectedAttention, r"is followed by a product outside an nn.Linear \(linear\)"),
])  # fmt: skip
def test_the_watch_is_off_inside_attention_after_the_default_layer(model, warning):
    """The default layer ('inp') runs before a padded transformer or attention: the watch is
    suspended there (their fast path stays on: the logits are the model's) and resumes after."""
    torch.manual_seed(0)
    x = torch.randn(8, 6, 8)
    x[:, 4:] = 0
    model = model().eval()
    with pytest.warns(UserWarning, match=r"\('inp'\), " + warning):
        out = ft.pool_outputs(model, x, ("features", "logits"), progress=False, batch_size=4)
    with torch.inference_mode():
        expected = model(x)
    assert torch.equal(out["logits"], expected)
    assert torch._C._len_torch_function_stack() == 0


class BodyProbe(nn.Module):
    """Records whether a function mode is on while the body (before the head) runs."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(D_IN, 8)
        self.head = nn.Linear(8, C)
        self.seen = []

    def forward(self, x):
        h = torch.relu(self.l1(x))
        self.seen.append(torch._C._len_torch_function_stack())
        return self.head(h)


def test_the_body_runs_unwatched():
    model = BodyProbe()
    pool_pass(model=model)
    assert model.seen
    assert set(model.seen) == {0}


class SharedHead(nn.Module):
    """The last nn.Linear registered runs twice in a forward (a shared projection)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(D_IN, D_IN)

    def forward(self, x):
        return self.proj(torch.relu(self.proj(x)))[:, :C]


def test_a_layer_run_twice_leaves_no_mode_on_the_stack():
    with pytest.raises(RuntimeError, match="ran more than once"):
        pool_pass(model=SharedHead())
    assert torch._C._len_torch_function_stack() == 0


class NoLinearRuns(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(D_IN, C))
        self.projector = nn.Linear(C, 4)  # training only

    def forward(self, x):
        return x @ self.w


def test_a_default_layer_that_never_runs_is_named_when_a_head_is_watched():
    with pytest.raises(RuntimeError, match=r"Linear 'projector' did not run"):
        pool_pass(model=NoLinearRuns(), needs=("features", "probs"))


class TokenHead(nn.Module):
    """A head applied per token, pooled after: its input is (B, T, d)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(4, 8)
        self.head = nn.Linear(8, C)

    def forward(self, x):
        return self.head(torch.relu(self.emb(x))).mean(1)


def test_a_feature_layer_that_runs_per_position_is_refused():
    """Its input flattened to (B, T·d) is not the last-layer gradient's factor (that is the pooled
    input): BADGE's embedding had the wrong width and its first pick was not the largest gradient.
    embed_fn= with the pooled input is the way, and logits alone need no feature layer."""
    torch.manual_seed(0)
    model, x = TokenHead().eval(), torch.randn(10, 5, 4)
    message = (r"^the feature layer Linear 'head' saw an input of shape \(10, 5, 8\): it runs per "
               r"position, not once per row; pass embed_fn=")  # fmt: skip
    with pytest.raises(ValueError, match=message):
        ft.pool_outputs(model, x, ("features", "probs"), progress=False)
    out = ft.pool_outputs(model, x, ("logits",), progress=False)
    assert out["logits"].shape == (10, C)
    pooled = ft.pool_outputs(
        model, x, ("features",), progress=False,
        embed_fn=lambda m, xb: torch.relu(m.emb(xb)).mean(1),
    )  # fmt: skip
    assert pooled["features"].shape == (10, 8)


def test_feature_layers_whose_input_is_one_position_per_row_are_flattened():
    """Only a Linear at several positions is refused: a Flatten's (B, C, 1, 1) input, a head on
    (B, 1, d), or a pooling block's (B, C, H, W) input flatten per row as before."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 4)
    flatten = nn.Flatten()
    model = nn.Sequential(
        nn.Conv2d(3, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), flatten, nn.Linear(5, C)
    ).eval()
    head_input = ft.pool_outputs(model, x, ("features",), progress=False)["features"]
    via_flatten = ft.pool_outputs(model, x, ("features",), progress=False, feature_layer=flatten)
    assert torch.equal(via_flatten["features"], head_input)
    assert head_input.shape == (6, 5)
    pooled = ft.pool_outputs(model, x, ("features",), progress=False, feature_layer=model[2])
    assert pooled["features"].shape == (6, 5 * 2 * 2)

    class OnePosition(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, C)

        def forward(self, z):
            return self.head(z.unsqueeze(1)).squeeze(1)

    out = ft.pool_outputs(OnePosition().eval(), torch.randn(6, 4), ("features",), progress=False)
    assert out["features"].shape == (6, 4)
