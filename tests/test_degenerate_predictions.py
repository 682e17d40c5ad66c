"""Predictions that carry no information are refused, not ranked: one class (a softmax over one
column is 1 on every row, so every score and every gradient ``p - e_y`` is the same and the picks
were the first rows) and one Monte-Carlo pass (BALD's disagreement is 0 everywhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fastal
import fastal.torch as ft
from fastal.strategies import BALD, SparseApprox, get

rng = np.random.default_rng(0)
ONE_LOGIT = rng.normal(size=(30, 1))
FEATURES = rng.normal(size=(30, 4))
ONE_CLASS = "must have at least 2 classes, got shape"


@pytest.mark.parametrize("name", ["entropy", "margin", "least_confidence"])
@pytest.mark.parametrize("key", ["probs", "logits"])
def test_uncertainty_scores_refuse_one_class(name, key):
    values = np.ones((30, 1)) if key == "probs" else ONE_LOGIT
    with pytest.raises(ValueError, match=f"^{key} {ONE_CLASS} \\(30, 1\\)"):
        get(name)().select({key: values}, 3)


@pytest.mark.parametrize("name", ["egl", "badge", "coreset_gradients", "bilevel", "sparse_approx"])
def test_gradient_strategies_refuse_one_class(name):
    strategy = SparseApprox(temperature=2.0) if name == "sparse_approx" else get(name)()
    with pytest.raises(ValueError, match=f"^logits {ONE_CLASS}"):
        strategy.select({"logits": ONE_LOGIT, "features": FEATURES}, 3, seed=0)


def test_gradient_embedding_refuses_one_class():
    with pytest.raises(ValueError, match=f"^probs_or_logits {ONE_CLASS}"):
        fastal.gradient_embedding(ONE_LOGIT, FEATURES)


@pytest.mark.parametrize("strategy", [BALD(), SparseApprox()])
def test_mc_probabilities_of_one_class_are_refused(strategy):
    with pytest.raises(ValueError, match=f"^mc_probs {ONE_CLASS} \\(3, 30, 1\\)"):
        strategy.select({"mc_probs": np.ones((3, 30, 1))}, 3)


def test_sparse_approx_takes_bayesian_losses_of_one_output():
    """Losses are not probabilities: one output per sample can vary (a regression loss)."""
    losses = rng.random(size=(4, 30, 1))
    sel = SparseApprox().select({"losses": losses, "probs": np.ones((30, 1))}, 3)
    assert len(set(sel.indices.tolist())) == 3


def test_bald_refuses_one_pass():
    with pytest.raises(ValueError, match=r"^mc_probs must hold T >= 2 Monte-Carlo passes"):
        BALD().select({"mc_probs": np.full((1, 30, 2), 0.5)}, 3)


def test_select_refuses_one_mc_sample_before_the_pass():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    X = torch.randn(20, 4)
    with pytest.raises(ValueError, match=r"^mc_samples must be >= 2 for 'bald'"):
        ft.select("bald", model, X, 3, mc_samples=1, seed=0, progress=False)
    assert not calls
    assert len(ft.select("bald", model, X, 3, mc_samples=2, seed=0, progress=False).indices) == 3
