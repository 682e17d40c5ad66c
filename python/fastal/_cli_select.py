"""What ``fastal select`` knows about pool arrays and strategies, and the pieces of its report.

The table of the pool arrays the command reads (option, what each holds, what can stand in for
another), which of them a strategy needs or would ignore, the pool size they agree on, the
strategy's keyword arguments from the options, the hint that maps a library message back to a
command-line option; and for the report: the dtype its distances use, the covering radius, the
share of rows read. :func:`fastal.cli.cmd_select` calls them (and ``tests/test_cli.py`` checks
``_TORCH_FREE``).
"""

from __future__ import annotations

import argparse
import ast
import inspect

import numpy as np

from . import ops


def _report_dtype(X: np.ndarray, selected: str | None) -> np.ndarray:
    """X for the report's distances, in the precision the selection ran in: float64 when X is
    float64 or --dtype float64 asked for it (float32 could overflow where the selection did
    not), else float32 (the values of a 16-bit --dtype rounded to it, then widened); no copy
    when X already is that."""
    wide = X.dtype == np.float64 or selected == "float64"
    if selected in ("float16", "bfloat16"):  # the values the selection saw: rounded, then widened
        import torch

        rounded = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        return rounded.to(getattr(torch, selected)).float().numpy()
    return X.astype(np.float64 if wide else np.float32, copy=False)


def _option_hint(message: str, arrays: dict, typed: dict | None = None) -> str:
    """`` (X is the --embeddings array)`` when a library message names an array by its API name,
    or the command-line way out of a limit whose remedies are Python arguments."""
    if "too large for robust_kcenter" in message:
        return (
            " (on the command line: --option max_points=N, or --strategy coreset; candidates= "
            "is an array: fastal.strategies.RobustKCenter(candidates=...) from Python)"
        )
    first = message.split(" ", 1)[0].strip("'\",:")
    if first == "labeled":
        return " (the --labeled array)"
    options = {**_OPTION_OF, **(typed or {})}  # the option the user typed (--features)
    if first in ("X", "pool", "features") and "features" in arrays:
        said = options["features"]
        return "" if said == f"--{first}" else f" ({first} is the {said} array)"
    if first in options and first in arrays and options[first] != f"--{first}":
        return f" ({first} is the {options[first]} array)"
    return ""


_OUT_OF_MEMORY = (
    "fastal: out of memory during the selection: try --dtype float16 (half the pool's bytes), a "
    "smaller pool, or fastal's Python API on a GPU"
)


def _rows_read_line(diag: dict, asked: bool = True) -> str:
    """The share of an unpruned run's row reads that the k-center steps made. A pruned run also
    reads each new centre's distance to the earlier ones, so on data where the test skips little
    (small, unclustered pools) the share exceeds 100%: say why rather than print it bare. Pruning
    ``asked`` for (no --no-prune) steps aside for short rows: say so, not a bare "off"."""
    fraction = diag["rows_read_fraction"]
    state = "on" if diag["pruned"] else "off"
    if not diag["pruned"] and asked:
        state = "off: rows under 256 bytes cost less to read than the test"
    if diag["pruned"] and fraction > 1:
        state = "on; its centre-to-centre reads outweighed the rows it skipped"
    return f"  rows read: {100 * fraction:.1f}% of an unpruned run (pruning {state})"


def _covering_radius(X, centres: np.ndarray) -> float:
    dist, _ = ops.min_distance(X, X.subset(centres) if hasattr(X, "subset") else X[centres])
    return float(np.max(np.asarray(dist, dtype=np.float64)))


#: pool arrays `fastal select` reads: (key, option, what the array holds)
_POOL_ARRAYS = (
    ("features", "--embeddings", "(n, d) embeddings / penultimate features"),
    ("probs", "--probs", "(n, C) class probabilities"),
    ("logits", "--logits", "(n, C) logits"),
    ("mc_probs", "--mc-probs", "(T, n, C) Monte-Carlo dropout probabilities"),
    ("duals", "--duals", "(m,) dual variables of the labeled rows, in --labeled order (ALLY)"),
    ("dual_predictions", "--dual-predictions", "(n,) predicted dual variables (ALLY)"),
    ("labeled_targets", "--labels", "(m,) classes of the labeled rows, in --labeled order"),
)
#: the command-line option of each pool array
_OPTION_OF = {key: option for key, option, _ in _POOL_ARRAYS}
#: arrays with one row per labeled point, not per pool point
_LABELED_ARRAYS = ("duals", "labeled_targets", "labeled_logits")
#: what can stand in for a required array (strategies accept probs or logits alike)
_ALTERNATIVES = {
    "features": ("features",),
    "probs": ("probs", "logits"),
    "logits": ("logits", "probs"),
    "mc_probs": ("mc_probs",),
    "duals": ("duals", "dual_predictions"),
}


def _missing(name: str, requires: tuple[str, ...], given: set[str]) -> list[str]:
    """Required arrays not given (Sparse Approximation's Bayesian form needs only mc_probs)."""
    if name == "sparse_approx" and "mc_probs" in given:
        return []
    return [r for r in requires if not any(a in given for a in _ALTERNATIVES.get(r, (r,)))]


def _ignored(name: str, requires: tuple[str, ...], given: set[str]) -> list[str]:
    """Pool arrays given that the strategy would not read (refused like --labels: a user who
    passes an array expects it to count). random reads none but takes its pool size from any."""
    if not requires:
        return []
    if name == "sparse_approx" and "mc_probs" in given:  # the Bayesian form reads nothing else
        return [a for a in sorted(given) if a != "mc_probs"]
    read = {a for r in requires for a in _ALTERNATIVES.get(r, (r,))} | {"labeled_targets"}
    ignored = [a for a in sorted(given) if a not in read]
    if "duals" in given and "dual_predictions" in given:  # ALLY takes the predictions as given
        ignored.append("duals")
    if "probs" in given and "logits" in given:  # Sparse Approximation reads logits, others probs
        ignored.append("probs" if name == "sparse_approx" else "logits")
    return ignored


def _labels_form(args: argparse.Namespace, arrays: dict) -> str:
    """Which form of sparse_approx would ignore --labels: " with --mc-probs" or " with --probs"."""
    if args.strategy != "sparse_approx":
        return ""
    return " with --mc-probs" if "mc_probs" in arrays else " with --probs"


#: strategies that select from numpy pools without importing torch (tests/test_cli.py checks it)
_TORCH_FREE = ("random", "coreset", "robust_coreset")


def _strategy_kwargs(cls: type, args: argparse.Namespace) -> dict:
    params = inspect.signature(cls).parameters
    kwargs = {}
    if "prune" in params:
        kwargs["prune"] = not args.no_prune
    elif args.no_prune:
        raise SystemExit(f"fastal: strategy {cls.name!r} has no pruning to turn off (--no-prune)")
    if "progress" in params:
        kwargs["progress"] = args.progress
    if args.time_limit is not None:
        if "time_limit" not in params:
            raise SystemExit(f"fastal: strategy {cls.name!r} takes no --time-limit")
        if not 0 < args.time_limit < float("inf"):
            raise SystemExit(
                f"fastal: --time-limit must be > 0 seconds and finite, got {args.time_limit}"
            )
        kwargs["time_limit"] = args.time_limit
    for item in args.options or ():
        name, value = _option(item, cls, params)
        if name in _FLAGGED:
            raise SystemExit(f"fastal: {name} has its own flag: {_FLAGGED[name]}, not --option")
        if name in kwargs:
            raise SystemExit(f"fastal: --option {name} is given twice")
        kwargs[name] = value
    return kwargs


#: constructor settings with a flag of their own
_FLAGGED = {"prune": "--no-prune", "progress": "--progress", "time_limit": "--time-limit"}


def _option(item: str, cls: type, params) -> tuple[str, object]:
    """``NAME=VALUE`` of ``--option``: a keyword of the strategy's constructor and a Python
    literal (a number, True / False / None, a quoted string, a list), or else the word itself
    (``solver=greedy``)."""
    name, sep, text = item.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name:
        raise SystemExit(f"fastal: --option takes NAME=VALUE, got {item!r}")
    if name not in params or name.startswith("_"):
        names = ", ".join(p for p in params if p not in _FLAGGED) or "none"
        raise SystemExit(f"fastal: strategy {cls.name!r} has no option {name!r} (its options: "
                         f"{names})")  # fmt: skip
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        value = text.strip()
    return name, value


def _dtype_name(a) -> str:
    """The storage dtype's name, numpy's or torch's (bfloat16 goes through torch)."""
    return a.dtype.name if isinstance(a.dtype, np.dtype) else str(a.dtype).removeprefix("torch.")


def _rows(arrays: dict[str, np.ndarray], typed: dict | None = None) -> int:
    """The pool size all arrays agree on (mc_probs along axis 1); ``typed``: the option each
    array was given with."""
    sizes = {}
    for key, a in arrays.items():
        if key in _LABELED_ARRAYS:
            continue
        axis = 1 if key == "mc_probs" else 0
        option = (typed or _OPTION_OF)[key]
        if a.ndim <= axis:
            raise SystemExit(f"fastal: {option} has shape {a.shape}: no row axis")
        sizes[option] = a.shape[axis]
    if not sizes:
        given = [opt for k, opt, _ in _POOL_ARRAYS if k in arrays]
        verb = "give" if len(given) > 1 else "gives"
        raise SystemExit(
            f"fastal: {' and '.join(given)} {verb} one value per labeled row, not the pool: pass "
            "the pool too (--embeddings, --probs, --logits, ...)"
        )
    if len(set(sizes.values())) > 1:
        rows = ", ".join(f"{option} {size}" for option, size in sizes.items())
        raise SystemExit(f"fastal: the pool arrays disagree on the number of rows: {rows}")
    return next(iter(sizes.values()))
