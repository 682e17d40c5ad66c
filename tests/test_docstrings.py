"""The examples in the public docstrings run and print what they say (on the installed package)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "fastal._ext",
    "fastal.strategies.base",
    "fastal.strategies.sparse_settings",
    "fastal.bilevel.outer",
    "fastal.ops",
    "fastal.gradients",
    "fastal.kmeans",
    "fastal.strategies.coreset",
    "fastal.strategies.badge",
    "fastal.strategies.egl",
    "fastal.strategies.kmeans_sampling",
    "fastal.sparse",
    "fastal._sparse_phi",
    "fastal._sparse_solve",
    "fastal.gram",
    "fastal.ntk",
    "fastal.strategies.crc",
    "fastal.strategies.sparse_approx",
    "fastal.strategies.uncertainty",
    "fastal.torch.adapter",
    "fastal.loop",
    "fastal.pdcl",
    "fastal.ally",
    "fastal.strategies.ally",
    "fastal.bilevel.kernels",
    "fastal.bilevel.inner",
    "fastal.bilevel.greedy",
    "fastal.strategies.bilevel",
    "fastal.robust_kcenter",
    "fastal.strategies.robust_kcenter",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
