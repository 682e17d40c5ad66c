"""Logits of -inf (a masked class, probability 0), which fastal.torch.pool_outputs passes on,
are taken by the strategies that read logits and by fit_temperature: they refused them as
"NaN or Inf". A row needs a finite logit; NaN and +Inf are still refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal
from torch import nn

import fastal
import fastal.torch as ft
from fastal.strategies import SparseApprox, get

rng = np.random.default_rng(0)
LOGITS = rng.normal(size=(40, 2)) * 2
MASKED = np.c_[LOGITS, np.full(40, -np.inf)]  # a third class the model masks
FEATURES = rng.normal(size=(40, 4))
TARGETS = rng.integers(0, 2, 40)


@pytest.mark.parametrize("name", ["entropy", "margin", "least_confidence"])
def test_uncertainty_scores_of_masked_logits_are_those_without_the_class(name):
    want = get(name)().select({"logits": LOGITS}, 5).indices
    assert_array_equal(get(name)().select({"logits": MASKED}, 5).indices, want)


@pytest.mark.parametrize("name", ["badge", "egl", "coreset_gradients"])
def test_gradient_strategies_with_a_masked_class_pick_as_without_it(name):
    """The masked class has p = 0 and is never the hypothetical label: a zero column of A."""
    want = get(name)().select({"logits": LOGITS, "features": FEATURES}, 5, seed=0).indices
    got = get(name)().select({"logits": MASKED, "features": FEATURES}, 5, seed=0).indices
    assert_array_equal(got, want)


def test_sparse_approx_with_a_masked_class_is_the_problem_without_it():
    pool = {"logits": LOGITS, "features": FEATURES}
    want = SparseApprox(temperature=2.0).select(pool, 5)
    got = SparseApprox(temperature=2.0).select(dict(pool, logits=MASKED), 5)
    assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(
        got.diagnostics["weights"], want.diagnostics["weights"], rtol=1e-12, atol=1e-15
    )


def test_fit_temperature_ignores_a_masked_class():
    assert fastal.fit_temperature(MASKED, TARGETS) == fastal.fit_temperature(LOGITS, TARGETS)
    with pytest.raises(ValueError, match=r"-inf at the target class of row 0"):
        fastal.fit_temperature(MASKED, np.full(40, 2))
    for bad in (np.nan, np.inf):
        z = MASKED.copy()
        z[3, 0] = bad
        with pytest.raises(ValueError, match="contains NaN or Inf"):
            fastal.fit_temperature(z, TARGETS)


@pytest.mark.parametrize("name", ["entropy", "sparse_approx", "bilevel", "badge", "egl"])
def test_a_row_of_only_masked_classes_is_refused(name):
    z = MASKED.copy()
    z[7, :2] = -np.inf
    with pytest.raises(ValueError, match="masked class"):
        get(name)().select({"logits": z, "features": FEATURES}, 3, seed=0)


class MaskedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        z = self.head(x).clone()
        z[:, 2] = float("-inf")
        return z


@pytest.mark.parametrize("name", ["sparse_approx", "bilevel", "entropy"])
def test_select_runs_the_strategies_on_a_masking_model(name):
    torch.manual_seed(0)
    X = torch.randn(40, 4)
    sel = ft.select(name, MaskedHead(), X, 4, labeled=[0, 1, 2, 3], labels=[0, 1, 0, 1],
                    seed=0, progress=False)  # fmt: skip
    picks = sel.indices.tolist()
    assert len(set(picks)) == 4
    assert not set(picks) & {0, 1, 2, 3}
