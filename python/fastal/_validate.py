"""Argument checks shared by the public functions; every message names the argument."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from . import _interop
from ._interop import ArrayInfo

#: Argument names whose columns are classes: (n, C) in check_matrix's messages, not (n, d).
_CLASS_COLUMNS = frozenset(
    ("probs", "logits", "probs_or_logits", "labeled_logits", "label_probs", "targets")
)


def check_matrix(
    X: Any,
    name: str = "X",
    *,
    dtypes: tuple[str, ...] = _interop.FLOAT_DTYPES,
    cuda_dtypes: tuple[str, ...] = _interop.CUDA_FLOAT_DTYPES,
) -> ArrayInfo:
    """A non-empty 2-D floating array of a supported framework, dtype and device.

    ``dtypes`` are accepted on the CPU, ``cuda_dtypes`` on a CUDA device.
    """
    info = _interop.describe(X, name)  # refuses sparse, nested and masked tensors too
    cols = "C" if name in _CLASS_COLUMNS else "d"
    if len(info.shape) != 2:
        raise ValueError(f"{name} must be 2-D (n, {cols}), got shape {info.shape}")
    if info.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has shape {info.shape}, need at least one row")
    if info.shape[1] == 0:
        raise ValueError(f"{name} has no columns: shape {info.shape}, need {cols} >= 1")
    allowed = cuda_dtypes if info.device == "cuda" else dtypes
    if info.dtype not in allowed:
        cpu_only = info.dtype == "float64" and info.device == "cuda"
        hint = " (float64 is supported on the CPU only)" if cpu_only else ""
        raise TypeError(
            f"{name} must have dtype {', '.join(allowed)} on {info.device}{hint}; got "
            f"{info.dtype}. "
            f"Cast it on purpose, e.g. {name}.astype(np.float32) or {name}.float()"
        )
    return info


def check_same_place(info: ArrayInfo, name: str, ref: ArrayInfo, ref_name: str) -> None:
    if (info.framework, info.device, info.device_index) != (
        ref.framework,
        ref.device,
        ref.device_index,
    ):
        raise ValueError(
            f"{name} is a {info.where} array but {ref_name} is {ref.where}; pass both alike"
        )


def check_same_device(info: ArrayInfo, name: str, ref: ArrayInfo, ref_name: str) -> None:
    """Two arrays read together on one device; their frameworks may differ (torch probabilities
    from a model beside cached numpy features), since both are read through torch views."""
    if (info.device, info.device_index) != (ref.device, ref.device_index):
        raise ValueError(
            f"{name} is a {info.where} array but {ref_name} is {ref.where}; pass both on one device"
        )


def check_budget(
    budget: Any, available: int, name: str = "budget", pool: str = "the unlabeled pool"
) -> int:
    """An integer in ``[0, available]``; ``pool`` says in messages what ``available`` counts."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
        budget = _zero_dim_integer(budget, name)
    budget = int(budget)
    if budget < 0:
        raise ValueError(f"{name} must be >= 0, got {budget}")
    if budget > available:
        raise ValueError(f"{name} = {budget} is larger than {pool} ({available} points)")
    return budget


def _zero_dim_integer(value: Any, name: str) -> int:
    """A 0-d integer numpy array or tensor (``np.array(5)``, ``torch.tensor(5)``: what a budget
    computed with numpy or torch often is) as an int; anything else is refused."""
    out = scalar_int(value)
    if out is value:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    return out


def scalar_int(value: Any) -> Any:
    """``value`` as an int when it is a 0-d integer numpy array or tensor, else ``value``."""
    dtype = str(getattr(value, "dtype", "")).removeprefix("torch.")
    if getattr(value, "shape", None) == () and dtype.startswith(("int", "uint")):
        return int(value)
    return value


def host_values(values: Any, name: str, what: str = "numbers", kinds: str = "biuf") -> np.ndarray:
    """An array-like of numbers as host numpy; ragged lists, sets, generators, strings and dtypes
    of another numpy ``kind`` than ``kinds`` are a ``TypeError`` naming ``name`` (numpy would make
    the first ones object or string arrays). A bfloat16 tensor, which numpy cannot hold, arrives
    as float32 (exactly) where floats are wanted."""
    if "f" in kinds and str(getattr(values, "dtype", "")) == "torch.bfloat16":
        values = values.float()
    if _interop.is_array(values) or isinstance(values, np.ma.MaskedArray):
        _interop.describe(values, name)  # masked entries, sparse or nested tensors: named refusals
    try:
        arr = _interop.host_numpy(values) if not isinstance(values, range) else np.asarray(values)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must hold {what} (an array, tensor, list or range): {err}"
        ) from None
    if arr.dtype.kind not in kinds:
        if arr.dtype.kind != "O":
            got = f"dtype {arr.dtype}"
        elif arr.ndim and arr.size:
            got = _odd_entry(arr)
        else:
            got = type(values).__name__
        raise TypeError(f"{name} must hold {what}, got {got}")
    if arr.dtype.kind in "iuf" and isinstance(values, (list, tuple)):
        _refuse_mixed_bools(values, name, what)
    return arr


def _odd_entry(arr: np.ndarray) -> str:
    """What made numpy build an object array: the first entry that is not a number, or an integer
    beyond 64 bits."""
    for v in arr.flat:
        if not isinstance(v, numbers.Number):
            return f"an entry of type {type(v).__name__} ({str(v)[:40]})"
        if isinstance(v, numbers.Integral) and not -(2**63) <= int(v) < 2**64:
            return f"an integer beyond 64 bits ({v})"
    return f"dtype object (entries of type {type(arr.flat[0]).__name__}): cast it to a number dtype"


def _refuse_mixed_bools(values: list | tuple, name: str, what: str) -> None:
    """numpy reads True as 1 in a list of numbers: labeled=[True, 2] would pick row 1."""
    stack = [values]
    while stack:
        for v in stack.pop():
            if isinstance(v, (list, tuple)):
                stack.append(v)
            elif isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name} must hold {what}, got a boolean entry ({v}) among numbers")


def _refuse_huge_ints(indices: Any, n: int, name: str) -> None:
    """A list of Python ints with one beyond int64 becomes a float or object array in numpy: name
    the out-of-range entry rather than the dtype numpy picked."""
    if not isinstance(indices, (list, tuple)) or not indices:
        return
    first = indices[0]
    if not isinstance(first, numbers.Integral) or isinstance(first, bool):
        return
    try:
        if np.asarray(indices).dtype.kind in "iub":
            return
    except (TypeError, ValueError, OverflowError):  # ragged: host_values names it
        return
    if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in indices):
        bad = next(int(v) for v in indices if not 0 <= int(v) < n)
        raise ValueError(f"{name} has indices out of range [0, {n}): e.g. {bad}")


def _integer_vector(arr: np.ndarray, name: str) -> np.ndarray:
    """``arr`` (host values of some indices) refused unless a 1-D integer array (empty: int64)."""
    if arr.dtype == np.bool_:
        raise TypeError(
            f"{name} must hold integer indices, got a boolean mask; use np.flatnonzero(mask)"
        )
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer indices, got dtype {arr.dtype}")
    return arr


def check_index_values(indices: Any, name: str) -> np.ndarray:
    """1-D non-negative integer indices as host numpy, checked before the pool's size is known (an
    option given to a strategy's constructor); :func:`check_indices` bounds them at select."""
    arr = _integer_vector(host_values(indices, name, "integer indices"), name)
    if arr.size and arr.dtype.kind == "i" and int(arr.min()) < 0:
        raise ValueError(f"{name} has negative indices: e.g. {int(arr.min())}")
    return arr


def check_indices(
    indices: Any, n: int, name: str, *, like: ArrayInfo | None = None, unique: bool = True
) -> np.ndarray:
    """In-range (and, unless ``unique=False``, unique) integer indices as int64 numpy (host).

    ``None`` means none.
    """
    if indices is None:
        return np.empty(0, dtype=np.int64)
    if _interop.is_array(indices):
        info = _interop.describe(indices, name)  # refuses devices fastal cannot read
        if like is not None and info.device != like.device:
            raise ValueError(f"{name} is on {info.where} but the data is on {like.where}")
    _refuse_huge_ints(indices, n, name)
    arr = _integer_vector(host_values(indices, name, "integer indices"), name)
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) >= n:  # before int64 could wrap it
        raise ValueError(f"{name} has indices out of range [0, {n}): e.g. {int(arr.max())}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)  # the bindings take contiguous int64 only
    if arr.size:
        bad = (arr < 0) | (arr >= n)
        if bad.any():
            raise ValueError(
                f"{name} has indices out of range [0, {n}): e.g. {int(arr[np.argmax(bad)])}"
            )
        if unique and _has_duplicates(arr, n):
            uniq, counts = np.unique(arr, return_counts=True)
            raise ValueError(
                f"{name} has duplicate indices: e.g. {int(uniq[np.argmax(counts > 1)])}"
            )
    return arr


def _has_duplicates(arr: np.ndarray, n: int) -> bool:
    """Whether the in-range int64 ``arr`` repeats a value: an O(n) mask of ``n`` bytes (a sort of a
    million indices took ~0.2 s) when that is no larger than ``arr`` itself, else a sort of it."""
    if arr.size * 8 < n:  # the mask would outgrow the indices (a size-1e9 pool, few labels)
        s = np.sort(arr)
        return bool((s[1:] == s[:-1]).any())
    seen = np.zeros(n, dtype=bool)
    seen[arr] = True
    return int(np.count_nonzero(seen)) != arr.size


def make_rng(seed: Any, name: str = "seed") -> np.random.Generator:
    """``numpy.random.default_rng(seed)`` with errors that name the argument."""
    if isinstance(seed, bool):
        raise TypeError(f"{name} must be None, a non-negative int or a numpy Generator, got bool")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as err:
        raise type(err)(
            f"{name} must be None, a non-negative int or a numpy Generator, got {seed!r}"
        ) from None


#: Smallest tolerance on the row sums of probabilities (float32 and float64 storage).
PROB_SUM_TOL = 1e-3

#: Machine epsilon of the floating storage dtypes, by name.
_EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}


def prob_sum_tol(dtype: Any) -> float:
    """Tolerance on ``|Σ_c p_c - 1|`` for probability rows stored in ``dtype``.

    ``max(1e-3, 2 eps(dtype))``: 1e-3 for float32 and float64, 2⁻⁹ ≈ 0.00195 for float16 and
    2⁻⁶ ≈ 0.0156 for bfloat16. ``dtype`` is a name (``"bfloat16"``), a numpy dtype or a torch dtype.

    Rounding non-negative entries that sum to 1 to a dtype of unit roundoff ``u = eps / 2`` moves
    the row sum by at most ``u``, whatever the number of classes; a softmax evaluated in that
    dtype (exponentials, normaliser and quotients rounded) measured below ``0.75 eps`` for
    C = 2 … 10⁴. So softmax outputs cast to float16 / bfloat16 pass with room, while rows that
    are not normalised (logits, unnormalised scores, sums off by more than 2 eps) are refused.
    """
    name = str(dtype).removeprefix("torch.")
    return max(PROB_SUM_TOL, 2.0 * _EPS.get(name, 0.0))


def check_choice(value: Any, name: str, choices: Any) -> str:
    """``value`` as a plain str if it is one of the strings ``choices`` (a numpy str, a StrEnum
    member), else a ValueError naming ``name`` (a membership test of an array or a list raised
    numpy's "truth value is ambiguous" or "unhashable type" instead)."""
    if isinstance(value, str) and value in choices:
        return str.__str__(value)
    words = [repr(c) for c in choices]
    listed = f"{', '.join(words[:-1])} or {words[-1]}" if len(words) > 1 else words[0]
    got = repr(value) if isinstance(value, str) else f"{value!r:.60}"
    raise ValueError(f"{name} must be {listed}, got {got}")


def check_bool(value: Any, name: str) -> bool:
    """A real bool (``True``, ``False`` or a numpy bool) as a bool; the message names ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r}")
    return bool(value)


def check_positive_int(value: Any, name: str) -> int:
    """An integer >= 1 (not a bool), as an int; the message names the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_classes(C: int, name: str, shape: tuple) -> None:
    """A classifier's predictions (probabilities, logits, MC probabilities) of ``shape`` have
    ``C >= 2`` classes: a softmax over one class is 1 on every row, every score and gradient
    would be the same and the picks would be the first rows, silently."""
    if C < 2:
        raise ValueError(
            f"{name} must have at least 2 classes, got shape {tuple(shape)}: for a single-logit "
            "binary model pass the logits [0, z] (probabilities [1 - p, p])"
        )


def real_to_float(value: numbers.Real, name: str) -> float:
    """``float(value)``; a value past the float range (a Python int of 400 digits, a Fraction)
    raises a ValueError naming ``name``, not float()'s OverflowError naming nothing."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be finite, got a value too large for a float") from None


def _number(
    value: Any, name: str, *, minimum: float | None = None, positive: bool = False
) -> float:
    """A finite real number (not a bool), optionally >= minimum or > 0, as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = real_to_float(value, name)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return v
