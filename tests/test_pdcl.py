"""Primal-dual constrained learning (ALLY, Alg. 1): the Lagrangian and dual step against float64
formulas, and the behaviour of the trainer on a convex problem.

The convex case is least squares with three shifted targets and ε = 0.3 (per-sample squared error):
the unconstrained fit violates those constraints, a feasible fit exists, and at the constrained
optimum only (some of) the shifted points' constraints are active, so complementary slackness says
λ > 0 only there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn
from torch.utils.data import TensorDataset

from fastal.pdcl import DUALS_ATTR, PAPER_EPS, DualVariables, PrimalDualTrainer, per_sample_loss

SHIFTED = [3, 11, 27]


def _regression_problem(n: int = 40) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 2, generator=g)
    y = X @ torch.tensor([1.0, -2.0]) + 0.1 * torch.randn(n, generator=g)
    y[SHIFTED] += 0.8
    return TensorDataset(X, y)


def _full_batch(eps, **kw) -> PrimalDualTrainer:
    # converged from all of 30 initialisations tried (η_p = 0.05, η_d = 0.5 diverged from 5)
    opts = dict(
        eps=eps, lr_primal=0.03, lr_dual=0.3, iterations=600, batch_size=40, optimizer="sgd"
    )
    return PrimalDualTrainer(**{**opts, **kw})


def _linear(seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(2, 1)


def test_lagrangian_and_dual_step_match_the_formulas():
    rng = np.random.default_rng(1)
    n = 7
    eps = rng.uniform(0.1, 1.0, n)
    duals = DualVariables(n, eps, lr_dual=0.3, dtype=torch.float64)
    lam = np.zeros(n)
    for _ in range(4):
        ell = rng.uniform(0, 2, n)
        ell2 = rng.uniform(0, 2, n)
        idx = rng.choice(n, 4, replace=False)
        got = duals.lagrangian(torch.tensor(ell[idx]), torch.tensor(idx), torch.tensor(ell2[idx]))
        assert_allclose(
            float(got), np.mean(ell[idx] + lam[idx] * (ell2[idx] - eps[idx])), rtol=1e-12
        )
        duals.step(torch.tensor(ell2))
        lam = np.maximum(lam + 0.3 * (ell2 - eps), 0)
        assert_allclose(duals.value.numpy(), lam, rtol=1e-12, atol=1e-15)
        assert (duals.value >= 0).all()


def test_regression_loss_is_the_mean_over_outputs():
    out = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    y = torch.tensor([[0.0, 0.0], [1.0, 3.0], [3.0, 1.0]])
    assert_allclose(per_sample_loss(out, y, "regression").numpy(), [2.5, 5.0, 2.0])
    out3 = torch.arange(12.0).reshape(3, 2, 2)
    assert_allclose(
        per_sample_loss(out3, torch.zeros(3, 2, 2), "regression").numpy(),
        (out3**2).reshape(3, -1).mean(1).numpy(),
    )


def test_classification_loss_is_the_cross_entropy_per_row():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    p = torch.softmax(logits, 1)
    want = [-float(torch.log(p[0, 1])), -float(torch.log(p[1, 0]))]
    assert_allclose(per_sample_loss(logits, y, "classification").numpy(), want, rtol=1e-12)


def test_lagrangian_is_differentiable_in_the_losses():
    duals = DualVariables(3, 0.5, lr_dual=1.0)
    duals.value = torch.tensor([0.0, 1.0, 3.0])
    losses = torch.tensor([0.2, 0.4, 0.6], requires_grad=True)
    duals.lagrangian(losses, torch.arange(3)).backward()
    # d/dℓ_i mean(ℓ + λ(ℓ - ε)) = (1 + λ_i) / B
    assert_allclose(losses.grad.numpy(), np.array([1.0, 2.0, 4.0]) / 3, rtol=1e-6)


def test_constraint_violations_shrink_and_duals_sit_on_active_constraints():
    ds = _regression_problem()
    X, y = ds.tensors
    A = torch.cat([X, torch.ones(len(X), 1)], 1).double()
    w = torch.linalg.lstsq(A, y[:, None].double()).solution
    unconstrained = ((A @ w)[:, 0] - y.double()) ** 2
    assert unconstrained.max() > 0.3  # the unconstrained optimum violates ε

    trainer = _full_batch(0.3)
    model = trainer(_linear(), ds, task="regression", seed=0)
    lam = trainer.duals_.numpy()
    with torch.no_grad():
        slack = (per_sample_loss(model(X), y, "regression") - 0.3).numpy()
    hist = trainer.history_
    assert hist.max_slack[-1] < 0.01 < hist.max_slack[0]  # (almost) feasible at the end
    assert hist.violated[-1] <= hist.violated[0]
    assert (lam >= 0).all()
    assert min(hist.mean_dual) >= 0
    support = np.flatnonzero(lam > 0)
    assert support.size > 0
    assert set(support) <= set(SHIFTED)  # λ concentrates on the shifted points ...
    assert (slack[support] > -0.02).all()  # ... whose constraints are active
    assert (slack[lam == 0] < 0.01).all()
    assert_allclose(getattr(model, DUALS_ATTR).numpy(), lam)


def test_a_very_loose_epsilon_leaves_every_dual_at_zero():
    trainer = _full_batch(100.0, iterations=20)
    model = trainer(_linear(), _regression_problem(), task="regression", seed=0)
    assert (model.fastal_duals == 0).all()
    assert max(trainer.history_.max_dual) == 0


def test_auto_epsilon_is_the_factor_times_the_unconstrained_training_loss():
    ds = _regression_problem()
    free = _full_batch(1e9, iterations=30)  # λ stays 0: the Lagrangian is the plain mean loss
    torch.manual_seed(5)
    free(torch.nn.Linear(2, 1), ds, task="regression", seed=3)
    auto = _full_batch("auto", iterations=30, eps_factor=1.2)
    torch.manual_seed(5)
    auto(torch.nn.Linear(2, 1), ds, task="regression", seed=3)
    assert_allclose(auto.eps_.numpy(), np.full(40, 1.2 * free.history_.loss[-1]), rtol=1e-5)


def test_paper_defaults_and_classification():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 3, generator=g)
    y = (X[:, 0] + 0.5 * torch.randn(60, generator=g) > 0).long()
    trainer = PrimalDualTrainer(iterations=15)
    model = trainer(torch.nn.Linear(3, 2), TensorDataset(X, y), task="classification", seed=0)
    assert_allclose(trainer.eps_.numpy(), PAPER_EPS["classification"])
    assert model.fastal_duals.shape == (60,)
    assert (model.fastal_duals >= 0).all()
    assert not model.training
    # Hard (misclassified) points carry the largest duals.
    with torch.no_grad():
        loss = per_sample_loss(model(X), y, "classification")
    top = torch.argsort(model.fastal_duals, descending=True)[:5]
    assert loss[top].mean() > loss.mean()


def test_per_sample_epsilon_and_custom_secondary_loss():
    ds = _regression_problem()
    eps = torch.full((40,), 100.0)
    eps[5] = 0.0  # only row 5 is constrained, to an impossible zero error
    calls = []

    def absolute_error(out, yb):
        calls.append(len(yb))
        return (out[:, 0] - yb).abs()

    trainer = _full_batch(eps, iterations=10, secondary_loss=absolute_error)
    model = trainer(_linear(), ds, task="regression", seed=0)
    assert calls
    assert np.flatnonzero(model.fastal_duals.numpy() > 0).tolist() == [5]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": "tight"}, "eps must be"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"lr_dual": 0}, "lr_dual"),
        ({"lr_primal": float("nan")}, "lr_primal"),
        ({"iterations": 0}, "iterations"),
        ({"primal_steps": -1}, "primal_steps"),
        ({"eps_factor": -1.1}, "eps_factor"),
        ({"momentum": -0.5}, "momentum must be >= 0"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
    ],
)
def test_bad_trainer_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrimalDualTrainer(**kwargs)


def test_bad_dual_variable_arguments():
    with pytest.raises(ValueError, match="eps must be a scalar or have shape"):
        DualVariables(3, [0.1, 0.2], 0.1)
    with pytest.raises(ValueError, match="eps must be finite"):
        DualVariables(2, float("inf"), 0.1)
    with pytest.raises(ValueError, match="n must be"):
        DualVariables(0, 0.1, 0.1)
    duals = DualVariables(3, 0.1, 0.1)
    with pytest.raises(ValueError, match="one loss per labeled sample"):
        duals.step(torch.zeros(2))
    with pytest.raises(ValueError, match="1-D of one shape"):
        duals.lagrangian(torch.zeros(2), torch.arange(2), torch.zeros(3))
    with pytest.raises(ValueError, match="secondary contains NaN or Inf"):
        duals.step(torch.tensor([0.1, float("nan"), 0.2]))
    assert_allclose(duals.value.numpy(), 0.0)  # λ untouched by the refused step
    with pytest.raises(ValueError, match=r"idx must hold positions in the labeled set \[0, 3\)"):
        duals.lagrangian(torch.zeros(2), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="idx must hold one integer position per loss"):
        duals.lagrangian(torch.zeros(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="idx must hold one integer position per loss"):
        duals.lagrangian(torch.zeros(2), torch.tensor([0.0, 1.0]))
    with pytest.raises(RuntimeError, match="diverged"):
        _full_batch(0.0, lr_primal=50.0, iterations=50)(
            _linear(), _regression_problem(), task="regression"
        )
    with pytest.raises(ValueError, match="task"):
        PrimalDualTrainer(iterations=1)(
            torch.nn.Linear(2, 1), _regression_problem(), task="ranking"
        )


@pytest.mark.parametrize("eps", [-0.1, [0.2, -0.5, 0.1], np.array([0.1, -1e-9, 0.2])])
def test_negative_epsilon_is_refused(eps):
    """ε is the level of a constraint on a non-negative loss: a negative one is infeasible."""
    with pytest.raises(ValueError, match=r"^eps must be >= 0"):
        PrimalDualTrainer(eps=eps)
    with pytest.raises(ValueError, match=r"^eps must be >= 0"):
        DualVariables(3, eps, lr_dual=0.1)


def test_epsilon_forms_checked_at_construction():
    with pytest.raises(ValueError, match=r"^eps must be finite"):
        PrimalDualTrainer(eps=float("nan"))
    with pytest.raises(ValueError, match=r"^eps must be a scalar or 1-D"):
        PrimalDualTrainer(eps=np.zeros((2, 2)))
    with pytest.raises(TypeError, match=r"^eps must be a number, an array"):
        PrimalDualTrainer(eps=object())
    assert PrimalDualTrainer(eps=0.0).eps == 0.0
    assert PrimalDualTrainer(eps=torch.tensor([0.1, 0.2])).eps is not None


def test_regression_targets_of_shape_n_1_are_one_target_per_row():
    """(B,) outputs against (B, 1) targets broadcast to B x B: PDCL trained on a wrong loss."""
    out = torch.tensor([1.0, 2.0, 3.0])
    assert_allclose(per_sample_loss(out, out[:, None], "regression").numpy(), 0.0)
    with pytest.raises(ValueError, match=r"have shape \(3, 2\) but the model's outputs \(3,\)"):
        per_sample_loss(out, torch.ones(3, 2), "regression")
    data = _regression_problem()
    X, y = data.tensors

    class Flat(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x)[:, 0]

    def trained(targets):
        torch.manual_seed(0)
        model = Flat(2, 1)
        _full_batch(0.05, iterations=50)(model, TensorDataset(X, targets), task="regression")
        return model.weight.detach().clone()

    torch.testing.assert_close(trained(y[:, None]), trained(y))


def test_the_trainer_casts_inputs_to_the_model_dtype():
    """float64 rows reached a float32 model as torch's 'mat1 and mat2 must have the same dtype'."""
    X, y = _regression_problem().tensors
    for model, rows in ((_linear(), X.double()), (_linear().double(), X)):
        _full_batch(0.05, iterations=5)(model, TensorDataset(rows, y), task="regression")


# -- second fuzz audit (session 31) -----------------------------------------------------------


def _classification(n: int = 12):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.arange(n) % 2


def test_per_sample_eps_as_a_numpy_array():
    """'if self.eps == "auto"' compared the array elementwise: a documented per-sample eps array
    was refused with numpy's 'truth value ... is ambiguous'."""
    X, y = _classification()
    eps = np.linspace(0.05, 0.3, 12)
    got = PrimalDualTrainer(eps=eps, iterations=3)
    got(_linear_classifier(), TensorDataset(X, y))
    want = PrimalDualTrainer(eps=eps.tolist(), iterations=3)
    want(_linear_classifier(), TensorDataset(X, y))
    assert_allclose(got.eps_.numpy(), eps.astype(np.float32))
    assert_allclose(got.duals_.numpy(), want.duals_.numpy())


def _linear_classifier():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        (torch.tensor([0.5, 1.0] * 6), ValueError, r"^dataset labels must hold integer class "),
        (torch.tensor([0, 1] * 5 + [3, 0]), ValueError, r"^dataset labels has class labels "
         r"outside \[0, 2\) \(the model returns 2 logits\): e.g. 3$"),
        (torch.tensor([0, 1] * 5 + [-1, 0]), ValueError, r"^dataset labels has negative class"),
    ],
)  # fmt: skip
def test_classification_labels_are_checked(labels, error, match):
    """0.5 was truncated to class 0 and trained on; 3 of 2 logits was torch's IndexError."""
    X, _ = _classification()
    with pytest.raises(error, match=match):
        PrimalDualTrainer(iterations=2)(_linear_classifier(), TensorDataset(X, labels))


def test_inputs_and_regression_targets_must_be_finite():
    X, y = _regression_problem().tensors
    bad_y = y.clone()
    bad_y[4] = float("nan")
    with pytest.raises(ValueError, match=r"^dataset holds NaN or Inf regression targets in 1 "
                       r"row\(s\), first at row 4$"):  # fmt: skip
        _full_batch(0.3, iterations=2)(_linear(), TensorDataset(X, bad_y), task="regression")
    bad_x = X.clone()
    bad_x[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"^dataset holds NaN or Inf inputs in 1 row\(s\), first "
                       r"at row 2$"):  # fmt: skip
        _full_batch(0.3, iterations=2)(_linear(), TensorDataset(bad_x, y), task="regression")


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, "float32"])
def test_dual_variables_need_a_floating_dtype(dtype):
    """An int64 dtype truncated eps = 0.5 to 0."""
    with pytest.raises(TypeError, match=r"^dtype must be a floating torch dtype, got"):
        DualVariables(3, 0.5, 1.0, dtype=dtype)
    assert DualVariables(3, 0.5, 1.0, dtype=torch.float64).eps.tolist() == [0.5] * 3


def test_secondary_loss_must_be_callable():
    with pytest.raises(TypeError, match=r"^secondary_loss must be callable, got int$"):
        PrimalDualTrainer(secondary_loss=5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(eps="a"), TypeError, r"^eps must be a number or an array of them, got 'a'$"),
        (dict(eps=None), TypeError, r"^eps must be a number or an array of them, got None$"),
        (dict(eps=0.1, device="nope"), ValueError, r"^device must be a torch.device or a device "),
    ],
)  # fmt: skip
def test_dual_variables_name_their_bad_arguments(kwargs, error, match):
    """torch's 'new(): invalid data type' and its device-string RuntimeError came through."""
    with pytest.raises(error, match=match):
        DualVariables(3, lr_dual=1.0, **kwargs)


def test_dual_variables_take_numpy_secondary_losses_and_name_non_tensor_losses():
    duals = DualVariables(3, 0.1, 1.0)
    duals.step(np.array([0.5, 0.0, 0.2]))  # was: 'numpy.ndarray' object has no attribute 'detach'
    assert_allclose(duals.value.numpy(), [0.4, 0.0, 0.1], rtol=1e-6)
    with pytest.raises(TypeError, match=r"^losses must be a torch tensor, got ndarray$"):
        duals.lagrangian(np.ones(3), [0, 1, 2])
    with pytest.raises(TypeError, match=r"^secondary must be a torch tensor, got list$"):
        duals.lagrangian(torch.ones(3), [0, 1, 2], secondary=[1.0, 1.0, 1.0])


def test_the_trainer_checks_model_and_device_before_moving_the_model():
    X, y = _classification()
    with pytest.raises(TypeError, match=r"^model must be an nn.Module, got function$"):
        PrimalDualTrainer(iterations=1)(_linear_classifier, TensorDataset(X, y))
    with pytest.raises(ValueError, match=r"^device must be a torch.device or a device string"):
        PrimalDualTrainer(iterations=1)(_linear_classifier(), TensorDataset(X, y), device="nope")


@pytest.mark.parametrize(
    ("seed", "error"), [(-1, ValueError), (2**64, ValueError), (1.5, TypeError)]
)
def test_training_seeds_are_checked_by_name(seed, error):
    """fit passed 2**64 on to torch ("Overflow when unpacking long long"); the primal-dual trainer
    checked nothing: -1 was taken and 1.5 truncated to 1."""
    from fastal.loop import fit

    X = torch.randn(12, 3)
    data = TensorDataset(X, (X[:, 0] > 0).long())
    model = nn.Sequential(nn.Linear(3, 2))
    for train in (fit, PrimalDualTrainer()):
        with pytest.raises(error, match=r"^seed must be"):
            train(model, data, seed=seed)


def test_the_dual_head_refuses_batches_of_one_row():
    from fastal.ally import fit_dual_head

    with pytest.raises(ValueError, match=r"^batch_size must be >= 2"):
        fit_dual_head(torch.randn(10, 4), torch.rand(10), batch_size=1)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_training_runs_inside_a_callers_no_grad_or_inference_mode(context):
    """fit and the primal-dual trainer failed there with torch's "does not require grad"."""
    from fastal.loop import fit

    X = torch.randn(30, 3)
    data = TensorDataset(X, (X[:, 0] > 0).long())
    for train in (fit, PrimalDualTrainer(iterations=2)):
        model = nn.Sequential(nn.Linear(3, 2))
        before = model[0].weight.detach().clone()
        with context():
            train(model, data, seed=0)
        assert not torch.equal(model[0].weight, before)


def test_a_model_built_in_inference_mode_is_refused_by_name():
    from fastal.loop import fit

    X = torch.randn(12, 3)
    with torch.inference_mode():
        model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"created under torch\.inference_mode"):
        fit(model, TensorDataset(X, (X[:, 0] > 0).long()), seed=0)
