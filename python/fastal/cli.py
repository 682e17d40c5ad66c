"""The ``fastal`` command line: ``fastal select`` (the default) picks points to label."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import ops, strategies

_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _load_npy(path: str, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SystemExit(f"fastal: {what} file not found: {path}") from None
    except (ValueError, EOFError, OSError) as err:  # pickled object arrays, empty/corrupt files
        raise SystemExit(f"fastal: cannot read {what} from {path}: {err}") from None


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` through a temporary file and a rename: never a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _digits_pool(seed: int, n_labeled: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits as a pool: pixel features in [0, 1], labels, labeled set."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    labeled = np.random.default_rng(seed).choice(len(X), size=n_labeled, replace=False)
    return X, digits.target, np.sort(labeled)


def _as_input(X: np.ndarray, dtype: str | None, device: str):
    """The pool as the kernels should see it: cast and moved on purpose, as asked."""
    if device == "cpu" and dtype in (None, "float32", "float64", "float16"):
        return X.astype(dtype or X.dtype, copy=False)
    import torch

    t = torch.from_numpy(np.ascontiguousarray(X))
    return t.to(device=device, dtype=getattr(torch, dtype) if dtype else t.dtype)


def _covering_radius(X, centres: np.ndarray) -> float:
    dist, _ = ops.min_distance(X, X[centres])
    return float(np.max(np.asarray(dist, dtype=np.float64)))


def cmd_select(args: argparse.Namespace) -> int:
    targets = None
    if args.embeddings is None:
        X, targets, labeled = _digits_pool(args.seed, args.n_labeled)
        source = "scikit-learn digits (bundled)"
    else:
        X = _load_npy(args.embeddings, "embeddings")
        labeled = _load_npy(args.labeled, "labeled") if args.labeled else np.empty(0, np.int64)
        source = args.embeddings
    budget = args.budget if args.budget is not None else min(100, len(X) - len(labeled))
    pool = _as_input(X, args.dtype, args.device)
    strategy = strategies.get(args.strategy)(prune=not args.no_prune, progress=args.progress)
    start = time.perf_counter()
    try:
        sel = strategy.select(pool, budget, labeled if len(labeled) else None, seed=args.seed)
    except (ValueError, TypeError) as err:
        raise SystemExit(f"fastal: {err}") from None
    seconds = time.perf_counter() - start
    picks = np.asarray(sel.indices.cpu() if hasattr(sel.indices, "cpu") else sel.indices)
    diag = sel.diagnostics

    dtype = args.dtype or X.dtype.name
    print(f"fastal select: {args.strategy} on {source}")
    print(f"  pool {X.shape[0]} x {X.shape[1]} ({dtype}, {args.device}), {len(labeled)} labeled, "
          f"budget {budget}")  # fmt: skip
    print(f"  covering radius: {diag['initial_radius']:.4f} -> {diag['final_radius']:.4f} "
          "(labeled only -> labeled + picks)")  # fmt: skip
    if budget and len(X) > 1:
        rng = np.random.default_rng(args.seed)
        unlabeled = np.setdiff1d(np.arange(len(X)), labeled)
        rand = rng.choice(unlabeled, size=budget, replace=False)
        print(f"  same budget picked at random: radius "
              f"{_covering_radius(X.astype(np.float32), np.concatenate([labeled, rand])):.4f}")  # fmt: skip
    print(f"  rows read: {100 * diag['rows_read_fraction']:.1f}% of an unpruned run "
          f"(pruning {'on' if diag['pruned'] else 'off'})")  # fmt: skip
    if targets is not None and budget:
        covered = len(np.unique(targets[picks]))
        print(f"  classes among the picks: {covered} of {len(np.unique(targets))}")
    print(f"  time: {1e3 * seconds:.1f} ms")
    shown = ", ".join(str(i) for i in picks[:10]) + (", ..." if budget > 10 else "")
    print(f"  picks: [{shown}]")
    if args.out:
        save_npy_atomic(args.out, picks.astype(np.int64))
        print(f"  wrote {budget} indices to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastal",
        description="Fast batch active-learning selection. With no command, runs `fastal select` "
        "on the digits pool that ships with scikit-learn.",
    )
    sub = parser.add_subparsers(dest="command")
    sel = sub.add_parser("select", help="pick points to label from a pool of embeddings")
    sel.add_argument("--strategy", default="coreset", choices=strategies.available())
    sel.add_argument("--embeddings", help="pool embeddings, an (n, d) .npy file (default: digits)")
    sel.add_argument("--labeled", help="indices already labeled, a 1-D integer .npy file")
    sel.add_argument("--budget", type=int, help="points to pick (default: 100)")
    sel.add_argument("--out", help="write the picked indices here (.npy, int64, atomically)")
    sel.add_argument("--seed", type=int, default=0, help="seed (first centre, digits labeled set)")
    sel.add_argument("--n-labeled", type=int, default=20, help="digits only: size of the labeled set")
    sel.add_argument("--dtype", choices=_DTYPES, help="cast the embeddings to this storage dtype")
    sel.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (CUDA goes through torch)")
    sel.add_argument("--no-prune", action="store_true", help="disable triangle-inequality pruning")
    sel.add_argument("--progress", action="store_true", help="show a progress bar")
    sel.set_defaults(func=cmd_select)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["select", *argv]
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
