"""The files, devices and streams of the ``fastal`` command.

Reading a pool array from a ``.npy`` file (mapped, never unpickled) or the bundled digits; the
checks that run before any work, so that a bad argument does not cost a long selection or a whole
experiment: the ``--out`` file of ``fastal select`` and the ``--out`` folder of ``fastal demo``
(writable, not a folder or a device, not an input), ``--device`` and a ``--dtype`` cast that would
overflow; the cast to the kernels' input; and the demo's printing, which goes on past a reader that
left. :func:`fastal.cli.cmd_select` and :func:`fastal.cli.cmd_demo` call them.
"""

from __future__ import annotations

import builtins
import math
import os
import sys
from pathlib import Path

import numpy as np

from . import _interop
from ._io import check_replaceable, check_writable_folder

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
    """scikit-learn's bundled 8x8 digits as a pool: features in [0, 1], labels, labeled set."""
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


def _check_out_not_an_input(out: str, inputs: list[str]) -> None:
    """Refuse an ``--out`` that would replace one of the input files."""
    for path in inputs:
        if os.path.realpath(out) == os.path.realpath(path):
            raise SystemExit(f"fastal: --out {out} is also an input file; name another file")


#: the largest finite value and the smallest normal one of each --dtype
_DTYPE_MAX = {
    "float16": 65504.0, "bfloat16": 3.3895313892515355e38, "float32": 3.4028234663852886e38,
}  # fmt: skip
_DTYPE_TINY = {"float16": 2.0**-14, "bfloat16": 2.0**-126, "float32": 2.0**-126}


def _check_fits(a: np.ndarray, dtype: str, option: str) -> None:
    """Refuse a --dtype cast that would turn finite values into Inf (reported later as if the
    file held Inf), or a whole array into zeros and subnormals (the selection would run on
    nothing, with no error)."""
    limit, tiny = _DTYPE_MAX.get(dtype), _DTYPE_TINY.get(dtype)
    if limit is None or not a.size or np.finfo(a.dtype).max <= limit:
        return
    # max |a| as max(max a, -min a), NaN skipped (0 when all are NaN): no pool-sized temporary
    # (np.abs of a float64 pool was as large as the pool, np.isnan a bool copy)
    hi, lo = float(np.fmax.reduce(a, axis=None)), float(np.fmin.reduce(a, axis=None))
    largest = 0.0 if math.isnan(hi) else max(hi, -lo)
    if math.isinf(largest):  # -inf logits (masked classes) are taken: judge the finite values
        finite = np.where(np.isfinite(a), a, np.nan)  # a copy, only where a file holds an inf
        hi, lo = float(np.fmax.reduce(finite, axis=None)), float(np.fmin.reduce(finite, axis=None))
        largest = 0.0 if math.isnan(hi) else max(hi, -lo)
    if np.isfinite(largest) and largest > limit:
        raise SystemExit(
            f"fastal: --dtype {dtype} overflows {option}: it holds values up to {largest:.4g}, "
            f"beyond {dtype}'s {limit:.4g}; scale it or pick a wider --dtype"
        )
    if 0 < largest < tiny:
        raise SystemExit(
            f"fastal: --dtype {dtype} underflows {option}: its largest magnitude is {largest:.4g}, "
            f"below {dtype}'s smallest normal value {tiny:.4g}; scale it or pick a wider --dtype"
        )


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
