"""The PyTorch layer of fastal: run a model over a pool and select from what it returns.

- :func:`pool_outputs` runs an ``nn.Module`` over a pool (Tensor, ndarray, Dataset or DataLoader)
  and returns only what was asked: ``"features"``, ``"logits"``, ``"probs"``, ``"mc_probs"`` (or
  ``"outputs"`` / ``"mc_outputs"`` for regression).
- :func:`needs_of` tells what a strategy reads (its ``requires``).
- :func:`select` computes what a strategy needs and calls it.

This package imports the real ``torch`` with absolute imports; its name only lives under
``fastal.`` (``import fastal.torch``), so it never shadows ``torch``.
"""

from __future__ import annotations

from .adapter import NEEDS, needs_of, pool_outputs, pool_size, select

__all__ = ["NEEDS", "needs_of", "pool_outputs", "pool_size", "select"]
