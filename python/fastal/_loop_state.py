"""The bookkeeping of :func:`fastal.loop.run`: its arguments and its resumable state.

The checks of the task, the counts, the budgets, the initial labeled set, the options ``run``
passes itself and the indices a strategy returns; then the state file: the labeled set in
labeling order, the table so far and the run's settings, written atomically as ``.npz`` after
every round (:func:`_save_state`) and read back by ``resume=`` (:func:`_load_state`), which
refuses a damaged file or one saved by another run. :func:`fastal.loop.run` calls them, and
:func:`fastal.loop.fit` the checks of the task and the counts.
"""

from __future__ import annotations

import json
import numbers
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ._io import save_npz_atomic
from ._validate import scalar_int

_STATE_VERSION = 1


#: The options of fastal.torch.select that run sets itself (select_options may not).
_RUN_OWNS = frozenset({"labeled", "labels", "seed", "task", "device", "batch_size", "collate_fn"})


def _stable_repr(value: Any) -> str | None:
    """``repr(value)`` when it names the settings only (no object address, which would differ in
    the resumed process), else None (not compared)."""
    text = repr(sorted(value.items())) if isinstance(value, dict) else repr(value)
    return None if " at 0x" in text else text


def _budgets(budget: Any, rounds: int | None) -> list[int]:
    budget = scalar_int(budget)  # np.array(30), torch.tensor(30): one budget
    if isinstance(budget, numbers.Integral) and not isinstance(budget, bool):
        if rounds is None:
            raise ValueError("rounds is needed with a single int budget")
        budgets = [int(budget)] * _count(rounds, "rounds")
    elif (
        isinstance(budget, (str, bytes))
        or not isinstance(budget, Iterable)
        or getattr(budget, "shape", None) == ()  # a 0-d float array: not a sequence either
    ):
        raise TypeError(f"budget must be an int or a sequence of ints, got {type(budget).__name__}")
    else:
        budgets = [_count(b, "every budget") for b in budget]
        if rounds is not None and _count(rounds, "rounds") != len(budgets):
            raise ValueError(f"budget has {len(budgets)} entries but rounds = {rounds}")
    if any(b < 1 for b in budgets):
        raise ValueError(f"every budget must be >= 1, got {budgets}")
    return budgets


def _check_task(task: Any) -> None:
    from ._validate import check_choice

    check_choice(task, "task", ("classification", "regression"))


def _count(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    return int(v)


def _initial(initial: Any, n: int, seed: int) -> np.ndarray:
    from ._validate import check_indices

    if isinstance(initial, numbers.Integral) and not isinstance(initial, bool):
        k = int(initial)
        if not 1 <= k <= n:
            raise ValueError(f"initial must be between 1 and the pool size {n}, got {k}")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed)]))
        return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
    lab = check_indices(initial, n, "initial")  # its messages: a set or generator named
    if lab.size == 0:
        raise ValueError("initial must name at least one row")
    return lab


def _check_picks(picks: np.ndarray, labeled: np.ndarray, budget: int, n: int, name: str) -> None:
    if picks.dtype.kind not in "iu":  # 50.9 would have labeled row 50
        raise RuntimeError(f"strategy {name} returned indices of dtype {picks.dtype}, not integers")
    picks = picks.astype(np.int64)
    if picks.shape != (budget,):
        raise RuntimeError(
            f"strategy {name} returned {picks.shape} indices for a budget of {budget}"
        )
    if picks.size and (picks.min() < 0 or picks.max() >= n):
        raise RuntimeError(f"strategy {name} returned indices outside the pool [0, {n})")
    if np.unique(picks).size != picks.size or np.isin(picks, labeled).any():
        raise RuntimeError(f"strategy {name} returned a duplicate or already labeled index")


def _save_state(
    path: Any, meta: dict, labeled: np.ndarray, added: np.ndarray, rows: list[dict]
) -> None:
    metric = "accuracy" if meta["task"] == "classification" else "mse"
    cols = {c: np.array([r[c] for r in rows], dtype=np.float64) for c in
            ("n_labeled", metric, "train_seconds", "select_seconds")}  # fmt: skip
    save_npz_atomic(
        path,
        meta=np.array(json.dumps(meta)),
        labeled=labeled.astype(np.int64),
        added=added.astype(np.int64),
        **{f"row_{k}": v for k, v in cols.items()},
    )


def _load_state(path: Any, meta: dict) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    if not Path(path).exists():
        raise FileNotFoundError(f"resume: no saved run at {path}")
    metric = "accuracy" if meta["task"] == "classification" else "mse"
    names = ("n_labeled", metric, "train_seconds", "select_seconds")
    try:
        # np.load leaves its file open when the zip is damaged: hold the file here
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            saved = json.loads(str(z["meta"]))
            labeled, added = z["labeled"], z["added"]
            # the columns there are: a run of the other task misses this one's metric, which
            # the comparison of the settings below names (task), not a KeyError
            cols = {c: z[f"row_{c}"] for c in names if f"row_{c}" in z.files}
    except _UNREADABLE as err:
        why = f"{type(err).__name__}: {err}"
        raise ValueError(f"resume: {path} is not a saved fastal run ({why})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"resume: {path} is not a saved fastal run (its meta is not a mapping)")
    for key in ("version", "seed", "strategy", "n", "task", "initial", "budgets"):
        if key == "budgets" and _extends(saved.get(key), meta[key]):
            continue
        if saved.get(key) != meta[key]:
            raise ValueError(
                f"resume: the run saved at {path} has {key} = {saved.get(key)!r}, this one "
                f"{meta[key]!r}"
            )
    if len(cols) < len(names):
        missing = ", ".join(f"row_{c}" for c in names if c not in cols)
        raise ValueError(f"resume: {path} is not a saved fastal run (no {missing})")
    # saved by newer runs only; a setting that cannot be told apart (None) is not compared
    for key, what in _RESUME_CHECKS.items():
        if saved.get(key) is not None and meta[key] is not None and saved[key] != meta[key]:
            raise ValueError(f"resume: the run saved at {path} had {what}; start a new checkpoint")
    n_rows = cols["n_labeled"].size
    budgets = saved["budgets"]  # meta's, or the first of them
    first = meta["initial"] if isinstance(meta["initial"], int) else len(meta["initial"])
    expected = first + sum(budgets[:n_rows])  # each round but the last labels its budget
    labeled = _saved_indices(labeled, meta["n"], path, "labeled")
    added = _saved_indices(added, len(budgets) + 1, path, "added", unique=False)
    if any(c.shape != (n_rows,) for c in cols.values()) or n_rows > len(budgets) + 1:
        raise ValueError(f"resume: {path} has a table of inconsistent length")
    if labeled.size != expected or added.size != labeled.size:
        raise ValueError(
            f"resume: {path} holds {labeled.size} labeled rows ({added.size} rounds of labeling) "
            f"after {n_rows} rounds; {expected} expected"
        )
    rows = [
        {
            "round": i,
            "n_labeled": int(cols["n_labeled"][i]),
            metric: float(cols[metric][i]),
            "train_seconds": float(cols["train_seconds"][i]),
            "select_seconds": float(cols["select_seconds"][i]),
        }
        for i in range(n_rows)
    ]
    if len(budgets) < len(meta["budgets"]) and n_rows == len(budgets) + 1:
        # a finished run given more rounds: its last round only evaluated; it runs again (the
        # same model under the round's seed) and now selects
        rows.pop()
    return labeled, added, rows


def _extends(saved: Any, budgets: list[int]) -> bool:
    """``saved`` (a run's budgets) is a proper prefix of ``budgets``: more rounds of the run."""
    return isinstance(saved, list) and len(saved) < len(budgets) and saved == budgets[: len(saved)]


#: What reading a damaged or foreign state file raises (a .npy: no context manager, TypeError).
_UNREADABLE = (OSError, ValueError, KeyError, AttributeError, TypeError, EOFError,
               zipfile.BadZipFile)  # fmt: skip

#: What a resumed run must share with the saved one beyond its settings, and how to say it.
_RESUME_CHECKS = {
    "pool": "another pool (its labels or inputs, or their order, differ: the saved indices would "
    "name other rows)",
    "test": "another test set",
    "strategy_params": "other strategy settings",
    "select_options": "other select_options",
}


def _saved_indices(
    values: np.ndarray, n: int, path: Any, name: str, *, unique: bool = True
) -> np.ndarray:
    from ._validate import check_indices

    try:
        return check_indices(values, n, name, unique=unique)
    except (TypeError, ValueError) as err:
        raise ValueError(f"resume: {path} is not a consistent saved run: {err}") from None
