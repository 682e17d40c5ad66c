"""Spot timings of the Python layer's checks at n = 1M (not a pytest module: run it by hand).

Compare two trees by alternating runs, each pointed at its own ``python/`` (with the compiled
module copied in)::

    for i in 1 2 3; do for t in /tmp/before /tmp/after; do
        PYTHONPATH=$t/python python benchmarks/spot_python_layer.py; done; done

Prints the best of two runs per case, in seconds (benchmarks/RESULTS.md, session 32). Needs
about 2 GB of memory.
"""

from __future__ import annotations

import time

import numpy as np
import torch

import fastal
from fastal._validate import check_indices
from fastal.strategies import CoreSetGradients, Entropy, KMeansSampling


def best_of_two(run) -> float:
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    n = 1_000_000
    probs = rng.dirichlet(np.ones(100), size=n).astype(np.float32)
    feats = rng.normal(size=(n, 128)).astype(np.float32)
    p10 = rng.dirichlet(np.ones(10), size=n).astype(np.float32)
    perm = rng.permutation(n)
    labeled = np.arange(100)
    cases = {
        "entropy C=100": lambda: Entropy().select({"probs": probs}, 20),
        "coreset_gradients C=10 d=128 b=20": lambda: CoreSetGradients().select(
            {"probs": p10, "features": feats}, 20, labeled, seed=0
        ),
        "kmeans_sampling n=200k b=100 it=5": lambda: KMeansSampling(max_iter=5).select(
            feats[:200_000], 100, labeled[:50], seed=0
        ),
        "check_indices perm 1M": lambda: check_indices(perm, n, "labeled"),
    }
    times = {name: best_of_two(run) for name, run in cases.items()}
    print(fastal.__file__, "  ".join(f"{k}: {v:.3f}" for k, v in times.items()), flush=True)


if __name__ == "__main__":
    main()
