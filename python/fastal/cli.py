"""The ``fastal`` command line.

``fastal demo`` runs an active-learning experiment (the main job); ``fastal select`` (also what a
bare ``fastal`` runs) picks points to label from pool arrays in ``.npy`` files.

This module holds the two commands, the parser and :func:`main`; :mod:`fastal._cli_io` reads the
files and checks the options before any work, :mod:`fastal._cli_select` knows the pool arrays, what
each strategy reads and the pieces of the report.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

from . import strategies
from ._cli_io import (
    _DEMO_FILES,
    _DIGITS_N_LABELED,
    _DIGITS_ROWS,
    _as_input,
    _check_device,
    _check_fits,
    _check_out_file,
    _check_out_folder,
    _check_out_not_an_input,
    _digits_pool,
    _load_npy,
    _Stdout,
)
from ._cli_select import (
    _ALTERNATIVES,
    _OUT_OF_MEMORY,
    _POOL_ARRAYS,
    _TORCH_FREE,
    _covering_radius,
    _dtype_name,
    _ignored,
    _labels_form,
    _missing,
    _option_hint,
    _report_dtype,
    _rows,
    _rows_read_line,
    _strategy_kwargs,
)
from ._io import save_npy_atomic

__all__ = ["build_parser", "main", "save_npy_atomic"]

_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _temperature_given(temperature) -> bool:
    """A temperature other than 1 (``--option temperature=T``): P = softmax(z / T) differs from
    the predictions without a fit."""
    return temperature not in (None, "auto", 1.0)


class _StoreNamingOption(argparse.Action):
    """Store the value and the option it came with (``--features`` or its alias
    ``--embeddings``), so that messages name what the user typed."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_option", option_string)


def _typed(args: argparse.Namespace, key: str, default: str) -> str:
    """The option the user gave ``key`` with, or ``default``."""
    return getattr(args, f"{key}_option", None) or default


def cmd_select(args: argparse.Namespace) -> int:
    cls = strategies.get(args.strategy)
    # the arguments first: a bad --out or --device must not cost a long selection
    digits = all(getattr(args, key) is None for key, _, _ in _POOL_ARRAYS)
    if args.seed < 0:
        raise SystemExit(f"fastal: --seed must be >= 0, got {args.seed}")
    strategy_kwargs = _strategy_kwargs(cls, args)
    try:  # here, not after the arrays are read: a bad --option must cost nothing
        strategy = cls(**strategy_kwargs)
    except (ValueError, TypeError) as err:
        raise SystemExit(f"fastal: {args.strategy}: {err}") from None
    typed = {key: _typed(args, key, option) for key, option, _ in _POOL_ARRAYS}  # as the user
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
    for key, _, _ in _POOL_ARRAYS:
        path = getattr(args, key)
        if path is not None:
            arrays[key] = _load_npy(path, typed[key])
    if digits:
        n_labeled = _DIGITS_N_LABELED if args.n_labeled is None else args.n_labeled
        X, targets, labeled = _digits_pool(args.seed, n_labeled)
        arrays["features"] = X
        source = "scikit-learn digits (bundled)"
    else:
        source = ", ".join(f"{typed[k]} {getattr(args, k)}" for k in arrays)
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
    missing = _missing(args.strategy, strategy.requires, set(arrays))
    if missing:
        options = " / ".join(
            " or ".join(opt for k, opt, _ in _POOL_ARRAYS if k in _ALTERNATIVES.get(m, (m,)))
            for m in missing
        )
        rows = "one row per pool point"
        if "duals" in missing:
            rows = "one row per labeled row for --duals, per pool point otherwise"
        raise SystemExit(
            f"fastal: strategy {args.strategy!r} needs {', '.join(missing)}: pass {options} (.npy "
            f"files with {rows}); to compute them from a torch model use fastal.torch.select, "
            "or see `fastal demo`"
        )
    n = _rows(arrays, typed)
    if n == 0:  # random would otherwise pick nothing from nothing and succeed
        raise SystemExit("fastal: the pool arrays have no rows")
    readers = ("bilevel", "sparse_approx") if "logits" in arrays else ("bilevel",)
    if "labeled_targets" in arrays and args.strategy not in readers:
        raise SystemExit(
            f"fastal: --labels is read by bilevel (the labeled rows' targets) and by sparse_approx "
            f"with --logits (its temperature fit); {args.strategy!r}{_labels_form(args, arrays)} "
            "would ignore it"
        )
    ignored = _ignored(args.strategy, strategy.requires, set(arrays))
    if ignored:
        raise SystemExit(
            f"fastal: strategy {args.strategy!r} would ignore "
            f"{', '.join(typed[a] for a in ignored)}: pass only the arrays it reads"
        )
    gives = {
        "labeled_targets": "the classes of the labeled rows",
        "duals": "one value per labeled row",
    }
    for key, what in gives.items():
        if key in arrays and not len(labeled):
            raise SystemExit(
                f"fastal: {typed[key]} gives {what}, in --labeled order, but no labeled set "
                "was given: pass --labeled too"
            )
    if (
        args.strategy == "sparse_approx"
        and "mc_probs" not in arrays
        and not _temperature_given(strategy.temperature)
        and not ("logits" in arrays and "labeled_targets" in arrays)
    ):
        raise SystemExit(
            "fastal: sparse_approx needs its label distribution P (eq. 14): pass --logits with "
            "--labeled and --labels (the labeled rows' classes) to fit its temperature, "
            "--option temperature=T, or --mc-probs for its Bayesian form; without them P equals "
            "the predictions and the selection is only the top-b sigma"
        )
    budget = args.budget if args.budget is not None else min(100, n - len(labeled))
    if args.budget is None and args.strategy == "crc":  # a multiple of its group size
        G = strategy.group_size
        budget -= budget % G
        if budget == 0:
            raise SystemExit(
                f"fastal: crc takes whole groups of {G} rows and the pool has only "
                f"{n - len(labeled)} unlabeled: it needs at least {G}"
            )
    for key, a in arrays.items():
        if args.dtype and np.issubdtype(a.dtype, np.floating):
            _check_fits(a, args.dtype, typed.get(key, key))
    if "labeled_targets" in arrays and "logits" in arrays and len(labeled):
        lab = np.asarray(labeled)
        if np.issubdtype(lab.dtype, np.integer) and ((lab >= 0) & (lab < n)).all():
            # Sparse Approximation's temperature="auto" fits T on the labeled rows' logits
            arrays["labeled_logits"] = arrays["logits"][lab]
    pool_arrays = {
        k: _as_input(v, args.dtype, args.device) if np.issubdtype(v.dtype, np.floating) else v
        for k, v in arrays.items()
    }
    # features alone go in as a bare array (what every features-only strategy takes)
    pool = pool_arrays["features"] if set(arrays) == {"features"} else dict(pool_arrays)
    if not strategy.requires:
        pool = {"n": n}
    if args.strategy not in _TORCH_FREE:
        import torch  # noqa: F401  (imported on first use otherwise: ~1 s inside the time below)
    start = time.perf_counter()
    try:
        sel = strategy.select(pool, budget, labeled if len(labeled) else None, seed=args.seed)
    except (ValueError, TypeError) as err:
        message = str(err).replace(strategies.base.LOGITS_KEY, "pass them as --logits")
        raise SystemExit(f"fastal: {message}{_option_hint(message, arrays, typed)}") from None
    except MemoryError:
        raise SystemExit(_OUT_OF_MEMORY) from None
    except RuntimeError as err:  # torch's allocators say it so
        if "out of memory" in str(err) or "allocate" in str(err):
            raise SystemExit(f"{_OUT_OF_MEMORY} ({str(err).splitlines()[0]})") from None
        raise
    seconds = time.perf_counter() - start
    # the selection checked them: int64 for the report's index arithmetic (uint64 with int64
    # gives float64, which cannot index)
    labeled = np.asarray(labeled).astype(np.int64)
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
        before = f"{diag['initial_radius']:.5g}" if len(labeled) else "none (nothing labeled)"
        print(f"  covering radius: {before} -> {diag['final_radius']:.5g} "
              "(labeled only -> labeled + picks)")  # fmt: skip
        if budget and len(X) > 1:
            rng = np.random.default_rng(args.seed)
            unlabeled = np.setdiff1d(np.arange(len(X)), labeled)
            rand = rng.choice(unlabeled, size=budget, replace=False)
            # in the space the strategy covered: the gradient embedding for coreset_gradients
            space = (
                strategies.base.gradient_pool(pool, bias=strategy.bias)
                if getattr(strategy, "embedding", "features") == "gradients"
                else _report_dtype(X, args.dtype)
            )
            try:  # the picks are saved: the report must not fail the command
                radius = f"{_covering_radius(space, np.concatenate([labeled, rand])):.5g}"
            except (ValueError, TypeError) as err:
                radius = f"not computed ({err})"
            print(f"  same budget picked at random: radius {radius}")
        if budget:
            print(_rows_read_line(diag, asked=not args.no_prune))
    if "greedy_radius" in diag and budget:  # robust k-center: its certificate
        proof = "proven optimal" if diag["optimal"] else "not proven optimal"
        print(f"  robust radius: {diag['radius']:.5g} with {len(diag['outliers'])} outlier(s) "
              f"left uncovered ({proof}); greedy: {diag['greedy_radius']:.5g}")  # fmt: skip
    if targets is not None and budget:
        covered = len(np.unique(targets[picks]))
        print(f"  classes among the picks: {covered} of {len(np.unique(targets))}")
    print(f"  time: {1e3 * seconds:.1f} ms")
    shown = ", ".join(str(i) for i in picks[:10]) + (", ..." if budget > 10 else "")
    print(f"  picks: [{shown}]")
    if args.out is not None:
        print(f"  wrote {budget} indices to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    # the arguments first: a bad one must not cost a whole experiment
    least = {"seeds": 1, "rounds": 0, "budget": 1, "initial": 1, "steps": 1, "threads": 0}
    for name, low in least.items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise SystemExit(f"fastal: --{name} must be >= {low}, got {value}")
    cores = os.cpu_count() or 1
    if args.threads and args.threads > 4 * cores:  # BLAS crashed starting 100,000 threads
        raise SystemExit(
            f"fastal: --threads must be at most {4 * cores} (4 x this machine's {cores} cores), "
            f"got {args.threads}"
        )
    _check_device(args.device)

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
        _, planned, _ = demo.plan_demo(
            args.dataset, names, initial=args.initial, rounds=rounds, budget=args.budget
        )
    except (ValueError, ImportError) as err:
        raise SystemExit(f"fastal: {err}") from None
    # after the arguments: a refused run leaves no empty folder behind
    out = _check_out_folder(args.out, _DEMO_FILES)
    say = _Stdout()  # every line below: a closed pipe must not stop the run before its files
    ally = (
        f"; ALLY's by primal-dual training ({demo.ALLY_DUAL_STEPS} dual steps)"
        if "ally" in planned
        else ""
    )
    say(
        f"fastal demo: {args.dataset}, {seeds} seed{'s' * (seeds > 1)}, "
        f"{args.initial} initial labels + {rounds} rounds of {args.budget}, "
        f"MLP trained from scratch each round (<= {steps} Adam steps{ally}), "
        f"device {args.device}"
    )
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
    dem.add_argument(
        "--strategies",
        help="comma-separated names (default: random,entropy,coreset,badge,"
        "sparse_approx,crc,bilevel; diabetes: random,coreset,ally)",
    )
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
    dem.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: fastest for the tiny model; 0 keeps torch's)",
    )
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
    sel.add_argument(
        "--embeddings",
        "--features",
        dest="features",
        action=_StoreNamingOption,
        metavar="NPY",
        help="pool embeddings / features, an (n, d) .npy file (default: digits pixels)",
    )
    sel.add_argument("--probs", metavar="NPY", help="class probabilities, an (n, C) .npy file")
    sel.add_argument("--logits", metavar="NPY", help="logits, an (n, C) .npy file")
    sel.add_argument(
        "--mc-probs",
        dest="mc_probs",
        metavar="NPY",
        help="MC-dropout probabilities, a (T, n, C) .npy file",
    )
    sel.add_argument(
        "--duals", metavar="NPY", help="ALLY: dual variables of the labeled rows, an (m,) .npy file"
    )
    sel.add_argument(
        "--dual-predictions",
        dest="dual_predictions",
        metavar="NPY",
        help="ALLY: predicted dual variables of every pool row, an (n,) .npy file",
    )
    sel.add_argument("--labels", dest="labeled_targets", metavar="NPY",
                     help="the classes of the labeled rows, an (m,) integer .npy file in --labeled "
                     "order: bilevel's labeled targets (pseudo-labels without it); with --logits, "
                     "sparse_approx fits its temperature on them")  # fmt: skip
    sel.add_argument(
        "--labeled",
        metavar="NPY",
        help="indices already labeled, a 1-D integer .npy file; with the default digits pool, "
        f"indices into its {_DIGITS_ROWS} rows, used in place of the random --n-labeled set",
    )
    sel.add_argument(
        "--budget",
        type=int,
        help="points to pick (default: 100, or every unlabeled point if fewer; for crc rounded "
        "down to a multiple of its group size, 20 unless --option group_size=...)",
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
    sel.add_argument("--option", action="append", dest="options", metavar="NAME=VALUE",
                     help="a setting of the strategy's constructor, e.g. group_size=10 (crc), "
                     "outliers=5 (robust_coreset), bias=True, solver=greedy (sparse_approx); "
                     "repeat for more. VALUE is a Python literal or a word")  # fmt: skip
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
