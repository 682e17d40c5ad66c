"""The ``fastal`` command line.

``fastal demo`` runs an active-learning experiment (the main job); ``fastal select`` (also what a
bare ``fastal`` runs) picks points to label from pool arrays in ``.npy`` files.
"""

from __future__ import annotations

import argparse
import builtins
import inspect
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import _interop, ops, strategies
from ._io import check_replaceable, check_writable_folder, save_npy_atomic

__all__ = ["build_parser", "main", "save_npy_atomic"]

_DTYPES = ("float32", "float16", "bfloat16", "float64")


_NPY_MAGIC = b"\x93NUMPY"
#: rows of scikit-learn's bundled digits, the default pool of `fastal select`
_DIGITS_ROWS = 1797
#: the labeled set drawn at random from the digits when neither --labeled nor --n-labeled is given
_DIGITS_N_LABELED = 20


def _load_npy(path: str, option: str) -> np.ndarray:
    """The array in the .npy file ``path`` (no pickles), or a ``fastal:`` exit naming ``option``."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
            if magic != _NPY_MAGIC:
                if magic.startswith(b"PK"):  # np.savez / np.savez_compressed: a zip of .npy files
                    raise SystemExit(
                        f"fastal: {option} {path} is an .npz archive; {option} takes a .npy file "
                        f"holding one array: np.save('x.npy', np.load('{path}')['<name>'])"
                    )
                what = "it is empty" if not magic else "it does not start with the .npy header"
                raise SystemExit(
                    f"fastal: {option} {path} is not a .npy file ({what}); write it with np.save"
                )
            f.seek(0)
            try:  # mapped, not read: the kernels page a large pool in as they go (copy-on-write:
                # writable for torch, and the file is never changed)
                arr = np.load(path, mmap_mode="c", allow_pickle=False)
            except ValueError:  # what cannot be mapped (empty or object arrays): read, or say why
                arr = np.load(f, allow_pickle=False)
    except FileNotFoundError:
        raise SystemExit(f"fastal: {option} file not found: {path}") from None
    except (ValueError, EOFError, OSError) as err:  # object arrays, truncated files, folders
        raise SystemExit(f"fastal: cannot read {option} from {path}: {err}") from None
    except MemoryError:
        raise SystemExit(f"fastal: {option} {path} does not fit in memory") from None
    if arr.dtype.names is not None:
        raise SystemExit(
            f"fastal: {option} {path} holds a structured array ({arr.dtype}); save a plain "
            "numeric array"
        )
    return _interop.native_order(arr)  # a file written on a big-endian machine


def _digits_pool(seed: int, n_labeled: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits as a pool: pixel features in [0, 1], labels, labeled set."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    labeled = np.random.default_rng(seed).choice(len(X), size=n_labeled, replace=False)
    return X, digits.target, np.sort(labeled)


def _check_out_file(out: str) -> None:
    """Refuse an ``--out`` file that cannot be written, before any selection runs."""
    if not out:
        raise SystemExit("fastal: --out must name a file, got ''")
    path = Path(out)
    if path.is_dir() or out.endswith(("/", os.sep)):
        raise SystemExit(
            f"fastal: --out {out} is a folder; name a file in it, e.g. {path / 'picks.npy'}"
        )
    try:  # a device (/dev/null) or a pipe would be replaced by the atomic rename
        check_replaceable(path)
    except OSError as err:
        raise SystemExit(
            f"fastal: --out {out}: {err.strerror}; name a file (leave --out out to only print)"
        ) from None
    path = Path(os.path.realpath(path))  # a symlink is written through: its target's folder
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise SystemExit(f"fastal: --out {out}: {folder} {what}")
    try:
        check_writable_folder(folder)
    except OSError as err:
        raise SystemExit(
            f"fastal: --out {out}: cannot create a file in {folder}: {err.strerror or err}"
        ) from None


def _check_out_folder(out: str, names: tuple[str, ...]) -> Path:
    """The ``--out`` folder of ``fastal demo``, created and checked writable before the run."""
    if not out:
        raise SystemExit("fastal: --out must name a folder, got ''")
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SystemExit(f"fastal: --out {out} is a file, not a folder") from None
    except OSError as err:
        raise SystemExit(
            f"fastal: --out {out}: cannot create the folder: {err.strerror or err}"
        ) from None
    try:
        check_writable_folder(folder)
    except OSError as err:
        raise SystemExit(
            f"fastal: --out {out}: cannot create a file in the folder: {err.strerror or err}"
        ) from None
    for name in names:
        if (folder / name).is_dir():
            raise SystemExit(f"fastal: --out {out}: {folder / name} is a folder, where a file goes")
    return folder


def _check_device(device: str) -> None:
    """Refuse a ``--device`` torch cannot parse or with no CUDA behind it, before any work."""
    if device == "cpu":
        return
    import torch

    from . import _ext

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise SystemExit(f"fastal: --device must be cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cpu":
        return
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else " built without CUDA")
        raise SystemExit(
            f"fastal: --device {device}: torch sees no CUDA device ({build}); use --device cpu"
        )
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise SystemExit(
            f"fastal: --device {device}: {count} CUDA device{'s' * (count > 1)} visible "
            f"(cuda:0 to cuda:{count - 1})"
        )
    if _ext.cuda is None:
        raise SystemExit(f"fastal: --device {device}: {_ext.REBUILD_HINT}")


def _as_input(X: np.ndarray, dtype: str | None, device: str):
    """The pool as the kernels should see it: cast and moved on purpose, as asked."""
    if device == "cpu" and dtype in (None, "float32", "float64", "float16"):
        return X.astype(dtype or X.dtype, copy=False)
    import torch

    t = torch.from_numpy(np.ascontiguousarray(X))
    return t.to(device=device, dtype=getattr(torch, dtype) if dtype else t.dtype)


def _report_dtype(X: np.ndarray, selected: str | None) -> np.ndarray:
    """X for the report's distances, in the precision the selection ran in: float64 when X is
    float64 or --dtype float64 asked for it (float32 could overflow where the selection did
    not), else float32 (the 16-bit dtypes widened); no copy when X already is that."""
    wide = X.dtype == np.float64 or selected == "float64"
    return X.astype(np.float64 if wide else np.float32, copy=False)


def _option_hint(message: str, arrays: dict) -> str:
    """`` (X is the --embeddings array)`` when a library message names an array by its API name,
    or the command-line way out of a limit whose remedies are Python arguments."""
    if "too large for robust_kcenter" in message:
        return (
            " (the command line has no --candidates or --max-points: use --strategy coreset, or "
            "fastal.strategies.RobustKCenter(candidates=..., max_points=...) from Python)"
        )
    first = message.split(" ", 1)[0].strip("'\",:")
    if first == "labeled":
        return " (the --labeled array)"
    if first in ("X", "pool", "features") and "features" in arrays:
        return f" ({first} is the --embeddings array)"
    options = {key: option for key, option, _ in _POOL_ARRAYS}
    if first in options and first in arrays and options[first] != f"--{first}":
        return f" ({first} is the {options[first]} array)"
    return ""


_OUT_OF_MEMORY = (
    "fastal: out of memory during the selection: try --dtype float16 (half the pool's bytes), a "
    "smaller pool, or fastal's Python API on a GPU"
)


def _rows_read_line(diag: dict) -> str:
    """The share of an unpruned run's row reads that the k-center steps made. A pruned run also
    reads each new centre's distance to the earlier ones, so on data where the test skips little
    (small, unclustered pools) the share exceeds 100%: say why rather than print it bare."""
    fraction = diag["rows_read_fraction"]
    state = "on" if diag["pruned"] else "off"
    if diag["pruned"] and fraction > 1:
        state = "on; its centre-to-centre reads outweighed the rows it skipped"
    return f"  rows read: {100 * fraction:.1f}% of an unpruned run (pruning {state})"


def _check_out_not_an_input(out: str, inputs: list[str]) -> None:
    """Refuse an ``--out`` that would replace one of the input files."""
    for path in inputs:
        if os.path.realpath(out) == os.path.realpath(path):
            raise SystemExit(f"fastal: --out {out} is also an input file; name another file")


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
_ALTERNATIVES = {"features": ("features",), "probs": ("probs", "logits"), "logits": ("logits", "probs"),
                 "mc_probs": ("mc_probs",), "duals": ("duals", "dual_predictions")}  # fmt: skip


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
        if not args.time_limit > 0:
            raise SystemExit(f"fastal: --time-limit must be > 0 seconds, got {args.time_limit}")
        kwargs["time_limit"] = args.time_limit
    return kwargs


def cmd_select(args: argparse.Namespace) -> int:
    cls = strategies.get(args.strategy)
    # the arguments first: a bad --out or --device must not cost a long selection
    digits = all(getattr(args, key) is None for key, _, _ in _POOL_ARRAYS)
    if args.seed < 0:
        raise SystemExit(f"fastal: --seed must be >= 0, got {args.seed}")
    strategy_kwargs = _strategy_kwargs(cls, args)
    if args.n_labeled is not None:
        if not digits:
            raise SystemExit(
                "fastal: --n-labeled draws a labeled set of the default digits pool; with pool "
                "arrays pass the labeled indices as --labeled"
            )
        if args.labeled is not None:
            raise SystemExit(
                "fastal: --labeled and --n-labeled both give the labeled set; pass one of them"
            )
        if not 0 <= args.n_labeled <= _DIGITS_ROWS:
            raise SystemExit(
                f"fastal: --n-labeled must be between 0 and {_DIGITS_ROWS} (the digits pool), "
                f"got {args.n_labeled}"
            )
    if args.out is not None:
        _check_out_file(args.out)
        inputs = [getattr(args, key) for key, _, _ in _POOL_ARRAYS] + [args.labeled]
        _check_out_not_an_input(args.out, [p for p in inputs if p is not None])
    _check_device(args.device)

    targets = None
    arrays: dict[str, np.ndarray] = {}
    for key, option, _ in _POOL_ARRAYS:
        path = getattr(args, key)
        if path is not None:
            arrays[key] = _load_npy(path, option)
    if digits:
        n_labeled = _DIGITS_N_LABELED if args.n_labeled is None else args.n_labeled
        X, targets, labeled = _digits_pool(args.seed, n_labeled)
        arrays["features"] = X
        source = "scikit-learn digits (bundled)"
    else:
        source = ", ".join(f"{_OPTION_OF[k]} {getattr(args, k)}" for k in arrays)
    if args.labeled is not None:  # the digits too: indices into its rows, in place of --n-labeled
        labeled = _load_npy(args.labeled, "--labeled")
        if labeled.ndim != 1:
            raise SystemExit(
                f"fastal: --labeled must be 1-D (m,) integer indices, got shape {labeled.shape}"
            )
        if not labeled.size:  # np.save of an empty list: float64, but nothing to index with
            labeled = np.empty(0, np.int64)
    elif not digits:
        labeled = np.empty(0, np.int64)
    missing = _missing(args.strategy, cls.requires, set(arrays))
    if missing:
        options = " / ".join(
            " or ".join(opt for k, opt, _ in _POOL_ARRAYS if k in _ALTERNATIVES.get(m, (m,)))
            for m in missing
        )
        rows = "one row per pool point"
        if "duals" in missing:
            rows = "one row per labeled row for --duals, per pool point otherwise"
        raise SystemExit(
            f"fastal: strategy {args.strategy!r} needs {', '.join(missing)}: pass {options} (.npy files with "
            f"{rows}); to compute them from a torch model use fastal.torch.select, "
            "or see `fastal demo`"
        )
    n = _rows(arrays)
    if n == 0:  # random would otherwise pick nothing from nothing and succeed
        raise SystemExit("fastal: the pool arrays have no rows")
    readers = ("bilevel", "sparse_approx") if "logits" in arrays else ("bilevel",)
    if "labeled_targets" in arrays and args.strategy not in readers:
        raise SystemExit(
            f"fastal: --labels is read by bilevel (the labeled rows' targets) and by sparse_approx "
            f"with --logits (its temperature fit); {args.strategy!r}{_labels_form(args, arrays)} "
            "would ignore it"
        )
    ignored = _ignored(args.strategy, cls.requires, set(arrays))
    if ignored:
        options = dict((key, option) for key, option, _ in _POOL_ARRAYS)
        raise SystemExit(
            f"fastal: strategy {args.strategy!r} would ignore "
            f"{', '.join(options[a] for a in ignored)}: pass only the arrays it reads"
        )
    gives = {
        "labeled_targets": "the classes of the labeled rows",
        "duals": "one value per labeled row",
    }
    for key, what in gives.items():
        if key in arrays and not len(labeled):
            raise SystemExit(
                f"fastal: {_OPTION_OF[key]} gives {what}, in --labeled order, but no labeled set "
                "was given: pass --labeled too"
            )
    if (
        args.strategy == "sparse_approx"
        and "mc_probs" not in arrays
        and not ("logits" in arrays and "labeled_targets" in arrays)
    ):
        raise SystemExit(
            "fastal: sparse_approx needs its label distribution P (eq. 14): pass --logits with "
            "--labeled and --labels (the labeled rows' classes) to fit its temperature, or "
            "--mc-probs for its Bayesian form; without them P equals the predictions and the "
            "selection is only the top-b sigma"
        )
    budget = args.budget if args.budget is not None else min(100, n - len(labeled))
    if args.budget is None and args.strategy == "crc":  # a multiple of its group size, 20
        budget -= budget % 20
        if budget == 0:
            raise SystemExit(
                f"fastal: crc takes whole groups of 20 rows and the pool has only "
                f"{n - len(labeled)} unlabeled: it needs at least 20"
            )
    for key, a in arrays.items():
        if args.dtype and np.issubdtype(a.dtype, np.floating):
            _check_fits(a, args.dtype, _OPTION_OF.get(key, key))
    if "labeled_targets" in arrays and "logits" in arrays and len(labeled):
        lab = np.asarray(labeled)
        if np.issubdtype(lab.dtype, np.integer) and ((lab >= 0) & (lab < n)).all():
            # Sparse Approximation's temperature="auto" fits T on the labeled rows' logits
            arrays["labeled_logits"] = arrays["logits"][lab]
    pool_arrays = {k: _as_input(v, args.dtype, args.device) if np.issubdtype(v.dtype, np.floating) else v
                   for k, v in arrays.items()}  # fmt: skip
    # features alone go in as a bare array (what every features-only strategy takes)
    pool = pool_arrays["features"] if set(arrays) == {"features"} else dict(pool_arrays)
    if not cls.requires:
        pool = {"n": n}
    strategy = cls(**strategy_kwargs)
    if args.strategy not in _TORCH_FREE:
        import torch  # noqa: F401  (imported on first use otherwise: ~1 s inside the time below)
    start = time.perf_counter()
    try:
        sel = strategy.select(pool, budget, labeled if len(labeled) else None, seed=args.seed)
    except (ValueError, TypeError) as err:
        message = str(err).replace(strategies.base.LOGITS_KEY, "pass them as --logits")
        raise SystemExit(f"fastal: {message}{_option_hint(message, arrays)}") from None
    except MemoryError:
        raise SystemExit(_OUT_OF_MEMORY) from None
    except RuntimeError as err:  # torch's allocators say it so
        if "out of memory" in str(err) or "allocate" in str(err):
            raise SystemExit(f"{_OUT_OF_MEMORY} ({str(err).splitlines()[0]})") from None
        raise
    seconds = time.perf_counter() - start
    picks = np.asarray(sel.indices.cpu() if hasattr(sel.indices, "cpu") else sel.indices)
    diag = sel.diagnostics
    if args.out is not None:  # before the report: nothing in it may cost the picks
        try:
            save_npy_atomic(args.out, picks.astype(np.int64))
        except OSError as err:  # checked before the selection; the disk can still fill up
            raise SystemExit(f"fastal: --out {args.out}: cannot write: {err}") from None

    print(f"fastal select: {args.strategy} on {source}")
    shapes = ", ".join(
        f"{k} {'x'.join(map(str, v.shape))} ({_dtype_name(pool_arrays[k])})"
        for k, v in arrays.items()
        if k != "labeled_logits"  # derived from --logits, not an input
    )
    print(f"  pool of {n}: {shapes} on {args.device}; {len(labeled)} labeled, budget {budget}")
    if "initial_radius" in diag and not np.isfinite(diag["final_radius"]):
        print("  covering radius: undefined (no labeled points and no picks)")
    elif "initial_radius" in diag:
        X = arrays["features"]
        before = f"{diag['initial_radius']:.4f}" if len(labeled) else "none (nothing labeled)"
        print(f"  covering radius: {before} -> {diag['final_radius']:.4f} "
              "(labeled only -> labeled + picks)")  # fmt: skip
        if budget and len(X) > 1:
            rng = np.random.default_rng(args.seed)
            unlabeled = np.setdiff1d(np.arange(len(X)), labeled)
            rand = rng.choice(unlabeled, size=budget, replace=False)
            # in the space the strategy covered: the gradient embedding for coreset_gradients
            space = (
                strategies.base.gradient_pool(pool, bias=strategy.bias)
                if args.strategy == "coreset_gradients"
                else _report_dtype(X, args.dtype)
            )
            try:  # the picks are saved: the report must not fail the command
                radius = f"{_covering_radius(space, np.concatenate([labeled, rand])):.4f}"
            except (ValueError, TypeError) as err:
                radius = f"not computed ({err})"
            print(f"  same budget picked at random: radius {radius}")
        if budget:
            print(_rows_read_line(diag))
    if "greedy_radius" in diag and budget:  # robust k-center: its certificate
        proof = "proven optimal" if diag["optimal"] else "not proven optimal"
        print(f"  robust radius: {diag['radius']:.4f} with {len(diag['outliers'])} outlier(s) "
              f"left uncovered ({proof}); greedy: {diag['greedy_radius']:.4f}")  # fmt: skip
    if targets is not None and budget:
        covered = len(np.unique(targets[picks]))
        print(f"  classes among the picks: {covered} of {len(np.unique(targets))}")
    print(f"  time: {1e3 * seconds:.1f} ms")
    shown = ", ".join(str(i) for i in picks[:10]) + (", ..." if budget > 10 else "")
    print(f"  picks: [{shown}]")
    if args.out is not None:
        print(f"  wrote {budget} indices to {args.out}")
    return 0


#: the largest finite value of each --dtype
_DTYPE_MAX = {
    "float16": 65504.0, "bfloat16": 3.3895313892515355e38, "float32": 3.4028234663852886e38,
}  # fmt: skip


def _check_fits(a: np.ndarray, dtype: str, option: str) -> None:
    """Refuse a --dtype cast that would turn finite values into Inf (reported later as if the
    file held Inf)."""
    limit = _DTYPE_MAX.get(dtype)
    if limit is None or not a.size or np.finfo(a.dtype).max <= limit:
        return
    largest = float(np.nanmax(np.abs(a)))
    if np.isfinite(largest) and largest > limit:
        raise SystemExit(
            f"fastal: --dtype {dtype} overflows {option}: it holds values up to {largest:.4g}, "
            f"beyond {dtype}'s {limit:.4g}; scale it or pick a wider --dtype"
        )


def _dtype_name(a) -> str:
    """The storage dtype's name, numpy's or torch's (bfloat16 goes through torch)."""
    return a.dtype.name if isinstance(a.dtype, np.dtype) else str(a.dtype).removeprefix("torch.")


def _rows(arrays: dict[str, np.ndarray]) -> int:
    """The pool size all arrays agree on (mc_probs along axis 1)."""
    sizes = {}
    for key, a in arrays.items():
        if key in _LABELED_ARRAYS:
            continue
        axis = 1 if key == "mc_probs" else 0
        option = _OPTION_OF[key]
        if a.ndim <= axis:
            raise SystemExit(f"fastal: {option} has shape {a.shape}: no row axis")
        sizes[option] = a.shape[axis]
    if not sizes:
        given = " and ".join(opt for k, opt, _ in _POOL_ARRAYS if k in arrays)
        raise SystemExit(
            f"fastal: {given} give one value per labeled row, not the pool: pass the pool too "
            "(--embeddings, --probs, --logits, ...)"
        )
    if len(set(sizes.values())) > 1:
        rows = ", ".join(f"{option} {size}" for option, size in sizes.items())
        raise SystemExit(f"fastal: the pool arrays disagree on the number of rows: {rows}")
    return next(iter(sizes.values()))


#: files `fastal demo` writes in its --out folder
_DEMO_FILES = ("results.csv", "learning_curves.png")


class _Stdout:
    """print, until the reader of stdout leaves (`fastal demo | head`): then the lines are dropped
    and the run goes on to write its files."""

    def __init__(self) -> None:
        self.gone = False

    def __call__(self, *values: object) -> None:
        if self.gone:
            return
        try:
            builtins.print(*values, flush=True)
        except BrokenPipeError:
            self.gone = True  # Python would report the pipe again when it flushes at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def cmd_demo(args: argparse.Namespace) -> int:
    # the arguments first: a bad one must not cost a whole experiment
    least = {"seeds": 1, "rounds": 0, "budget": 1, "initial": 1, "steps": 1, "threads": 0}
    for name, low in least.items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise SystemExit(f"fastal: --{name} must be >= {low}, got {value}")
    _check_device(args.device)
    out = _check_out_folder(args.out, _DEMO_FILES)

    import torch

    from . import demo

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        seeds, rounds, steps = 1, 2, 60
    else:
        seeds, rounds, steps = 3, 5, 300
    seeds = args.seeds if args.seeds is not None else seeds
    rounds = args.rounds if args.rounds is not None else rounds
    steps = args.steps if args.steps is not None else steps
    names = (
        [s.strip() for s in args.strategies.split(",") if s.strip()]
        if args.strategies is not None
        else None
    )
    try:  # before the header: a bad argument is the one line printed
        demo.plan_demo(args.dataset, names, initial=args.initial, rounds=rounds, budget=args.budget)
    except (ValueError, ImportError) as err:
        raise SystemExit(f"fastal: {err}") from None
    say = _Stdout()  # every line below: a closed pipe must not stop the run before its files
    say(f"fastal demo: {args.dataset}, {seeds} seed{'s' * (seeds > 1)}, {args.initial} initial labels + "
          f"{rounds} rounds of {args.budget}, MLP trained from scratch each round (<= {steps} Adam steps), "
          f"device {args.device}")  # fmt: skip
    res = demo.run_demo(
        args.dataset, names, seeds=seeds, rounds=rounds, budget=args.budget, initial=args.initial,
        max_steps=steps, device=args.device, log=say,
    )  # fmt: skip
    for name, note in res.skipped.items():
        say(f"  note: {name} {note}")
    d = res.data
    say()
    what = (
        "accuracy" if d.task == "classification" else "MSE (standardised target; lower is better)"
    )
    say(f"{d.name}: test {what} vs labels, mean ± std over {seeds} seed{'s' * (seeds > 1)} "
          f"(pool {d.pool[0].shape[0]}, test {d.test[0].shape[0]})")  # fmt: skip
    say(res.table())
    if d.task == "classification":
        say(f"(chance: {d.chance:.3f}; AUC: trapezoid over the label counts / label range)")
    else:
        say("(AUC: trapezoid over the label counts / label range)")
    csv, png = (out / name for name in _DEMO_FILES)
    try:
        res.to_csv(csv)
        res.plot(png)
    except OSError as err:  # checked before the run; the disk can still fill up
        raise SystemExit(f"fastal: --out {args.out}: cannot write: {err}") from None
    say(f"wrote {csv} and {png} ({res.seconds:.1f} s)")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fastal")
    except PackageNotFoundError:  # run from a source tree
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    from .demo import DATASETS

    parser = argparse.ArgumentParser(
        prog="fastal",
        allow_abbrev=False,  # an abbreviation would change meaning when an option is added
        description="Fast batch active-learning selection. `fastal demo` runs an active-learning "
        "experiment with several strategies; `fastal select` (also what `fastal` with no command "
        "runs) picks points to label from pool arrays, by default on the scikit-learn digits.",
    )
    parser.add_argument("--version", action="version", version=f"fastal {_version()}")
    sub = parser.add_subparsers(dest="command")
    dem = sub.add_parser(
        "demo",
        allow_abbrev=False,
        help="run an active-learning experiment: accuracy vs labels per strategy",
    )
    dem.add_argument("--dataset", default="digits", choices=DATASETS)
    dem.add_argument("--strategies", help="comma-separated names (default: random,entropy,coreset,badge,"
                     "sparse_approx,crc,bilevel; diabetes: random,coreset,ally)")  # fmt: skip
    dem.add_argument("--rounds", type=int, help="selection rounds, >= 0 (default 5; --quick 2)")
    dem.add_argument("--seeds", type=int, help="seeds per strategy, >= 1 (default 3; --quick 1)")
    dem.add_argument("--budget", type=int, default=30, help="labels per round, >= 1 (default 30)")
    dem.add_argument(
        "--initial", type=int, default=20, help="initial random labels, >= 1 (default 20)"
    )
    dem.add_argument(
        "--steps", type=int, help="max training steps per round, >= 1 (default 300; --quick 60)"
    )
    dem.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    dem.add_argument("--threads", type=int, default=1,
                     help="torch CPU threads (default 1: fastest for the tiny model; 0 keeps torch's)")  # fmt: skip
    dem.add_argument("--out", default="fastal-demo",
                     help="folder for results.csv and learning_curves.png (default fastal-demo; "
                     "created, and checked writable, before the run)")  # fmt: skip
    dem.add_argument(
        "--quick", action="store_true", help="reduced setting for CI: 1 seed, 2 rounds, 60 steps"
    )
    dem.set_defaults(func=cmd_demo)

    sel = sub.add_parser(
        "select", allow_abbrev=False, help="pick points to label from pool arrays (.npy)"
    )
    sel.add_argument("--strategy", default="coreset", choices=strategies.available())
    sel.add_argument("--embeddings", "--features", dest="features",
                     help="pool embeddings / features, an (n, d) .npy file (default: digits pixels)")  # fmt: skip
    sel.add_argument("--probs", help="class probabilities, an (n, C) .npy file")
    sel.add_argument("--logits", help="logits, an (n, C) .npy file")
    sel.add_argument(
        "--mc-probs", dest="mc_probs", help="MC-dropout probabilities, a (T, n, C) .npy file"
    )
    sel.add_argument("--duals", help="ALLY: dual variables of the labeled rows, an (m,) .npy file")
    sel.add_argument("--dual-predictions", dest="dual_predictions",
                     help="ALLY: predicted dual variables of every pool row, an (n,) .npy file")  # fmt: skip
    sel.add_argument("--labels", dest="labeled_targets",
                     help="the classes of the labeled rows, an (m,) integer .npy file in --labeled "
                     "order: bilevel's labeled targets (pseudo-labels without it); with --logits, "
                     "sparse_approx fits its temperature on them")  # fmt: skip
    sel.add_argument(
        "--labeled",
        help="indices already labeled, a 1-D integer .npy file; with the default digits pool, "
        f"indices into its {_DIGITS_ROWS} rows, used in place of the random --n-labeled set",
    )
    sel.add_argument(
        "--budget",
        type=int,
        help="points to pick (default: 100, or every unlabeled point if fewer; for crc rounded "
        "down to a multiple of its group size, 20)",
    )
    sel.add_argument(
        "--out",
        help="write the picked indices to this file (.npy, int64, atomically; its folder must "
        "exist, checked before the selection runs)",
    )
    sel.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed, >= 0, of every random draw (first centre, k-means++, random picks, CRC "
        "groups, the digits labeled set, the report's random baseline; default 0)",
    )
    sel.add_argument(
        "--n-labeled",
        type=int,
        help=f"default digits pool only: size of a random labeled set, 0 to {_DIGITS_ROWS} "
        f"(default {_DIGITS_N_LABELED}); not with --labeled",
    )
    sel.add_argument("--dtype", choices=_DTYPES, help="cast the float arrays to this storage dtype")
    sel.add_argument(
        "--device", default="cpu", help="cpu, cuda or cuda:N (CUDA goes through torch)"
    )
    sel.add_argument("--no-prune", action="store_true", help="disable triangle-inequality pruning")
    sel.add_argument("--progress", action="store_true",
                     help="show a progress bar (coreset, coreset_gradients, kmeans, badge, "
                     "bilevel, sparse_approx, crc, ally; the others are one pass)")  # fmt: skip
    sel.add_argument("--time-limit", type=float, dest="time_limit", metavar="SECONDS",
                     help="robust_coreset: stop the exact solver after this long and keep the "
                     "best solution found (Ctrl-C waits for the solver's step)")  # fmt: skip
    sel.set_defaults(func=cmd_select)
    return parser


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings as one ``fastal: warning:`` line (not the warning's source line)."""
    print(f"fastal: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["select", *argv]
    args = parser.parse_args(argv)
    shown, warnings.showwarning = warnings.showwarning, _warning_line
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (--out is as it was)
        print("fastal: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fastal select | head`: the reader left; the picks file is written
        # Python would report the pipe again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    raise SystemExit(main())
