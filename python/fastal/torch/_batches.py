"""How ``fastal.torch`` reads a pool batch by batch and writes the model's outputs.

The pool's size (refusing DataLoaders that would drop or reorder rows), its batches as model
inputs (tensors and arrays sliced, Datasets through a DataLoader, moved and cast to the model's
device and dtype), the call of the model on one batch, and :class:`_Writer`, which copies each
batch's outputs into tensors preallocated at the first batch; also the per-pass contexts
(autocast, the seeded generator, the progress bar, the note naming a failing batch's rows).
Private: :func:`fastal.torch.adapter.pool_outputs` and ``select`` call them.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, SequentialSampler

from .. import _interop
from .._torch_state import forked_rng
from ._checks import INTEGER_INPUTS_HINT, _integer_dtype_error


def _refuse_non_pools(data: Any) -> None:
    """A string has a length and items, a dict a length and keys: the DataLoader would have read
    them as a pool of characters or failed on key 0."""
    if isinstance(data, (str, bytes, bytearray, Mapping)):
        hint = (
            ": a mapping of per-row tensors goes in as a Dataset whose rows are mappings"
            if isinstance(data, Mapping)
            else ""
        )
        raise TypeError(
            "data must be a torch Tensor, a numpy array, a list of rows, a Dataset or a "
            f"DataLoader, got {type(data).__name__}{hint}"
        )
    if _inputs_and_labels(data):  # read as a pool of two rows, it failed in torch.stack
        raise TypeError(
            f"data looks like an (inputs, labels) pair, shapes {tuple(data[0].shape)} and "
            f"{tuple(data[1].shape)}: a pool is unlabeled, pass the inputs alone (labels of "
            "labeled rows go in labels=)"
        )


def _inputs_and_labels(data: Any) -> bool:
    """A 2-sequence of a batch of inputs and a 1-D label vector as long: ``(X, y)`` (two rows of
    a pool would have one shape; ragged rows, e.g. two (1, T_i) clips, have no 1-D second)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        return False
    x, y = data
    arrays = (torch.Tensor, np.ndarray)
    if not (isinstance(x, arrays) and isinstance(y, arrays)) or x.ndim < 2 or y.ndim != 1:
        return False
    return x.shape[0] == y.shape[0] and x.shape[1:] != y.shape[1:]


def _plain_numbers(data: Any) -> Any:
    """A (nested) list or tuple of plain numbers as a numpy array (the DataLoader would collate
    its rows into columns); anything else as it is."""
    _refuse_non_pools(data)
    if not isinstance(data, (list, tuple)) or not data:
        return data
    first = data[0]
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    if isinstance(first, (torch.Tensor, np.ndarray)) or not isinstance(first, numbers.Number):
        return data
    try:
        arr = np.asarray(data)
    except (TypeError, ValueError):
        return data  # ragged, e.g. (x, y) pairs: read as a Dataset
    return arr if arr.dtype.kind in "biuf" and arr.ndim >= 1 else data


def _size_or_none(data: Any) -> int | None:
    """Rows of the pool, or None when only a pass over it can tell (an IterableDataset)."""
    from .adapter import pool_size  # (the adapter imports this module)

    _refuse_non_pools(data)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return pool_size(data)  # its own refusal (a sparse or meta tensor) names data
    try:
        return pool_size(data)
    except TypeError:
        return None


def _count_rows(data: Any, options: Mapping[str, Any]) -> int:
    """Rows of a pool of unknown size (an IterableDataset) for a strategy that reads no model
    output (random): one pass over the data, without the model."""
    workers = options.get("num_workers", 0)
    _known_size(data, workers)
    batches = _batches(
        data, options.get("batch_size", 256), workers, torch.device("cpu"),
        options.get("batch_fn"), torch.float32, options.get("collate_fn"),
    )  # fmt: skip
    rows = sum(_rows(x) for x in batches)
    if rows == 0:
        raise ValueError("data is empty: the pool needs at least one row")
    return rows


def _outputs_rows(pool: Mapping[str, torch.Tensor]) -> int:
    key, t = next(iter(pool.items()))
    return int(t.shape[1] if key.startswith("mc_") else t.shape[0])


def _known_size(data: Any, num_workers: int = 0) -> int | None:
    from .adapter import pool_size  # (the adapter imports this module)

    iterable = isinstance(getattr(data, "dataset", data), IterableDataset)
    workers = data.num_workers if isinstance(data, DataLoader) else num_workers
    if iterable and workers > 0:
        raise ValueError(
            f"data is an IterableDataset read with num_workers={workers}: each worker replays or "
            "shares the stream and their batches interleave, so row i would not be the stream's "
            "i-th row; read it with num_workers=0 (or pass a map-style Dataset)"
        )
    if isinstance(data, DataLoader):
        batches = data.batch_sampler
        if data.drop_last or getattr(batches, "drop_last", False):
            raise ValueError(
                "data is a DataLoader with drop_last=True: the last rows would get no outputs"
            )
        if batches is None and not iterable:
            raise ValueError(
                "data is a DataLoader with batch_size=None (no batching): the model would see one "
                "row at a time without a batch dimension; pass batch_size= (or the Dataset itself)"
            )
        if not iterable:
            _check_in_order(batches)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return pool_size(data)  # its own refusal (a sparse or meta tensor) names data
    try:
        return pool_size(data)
    except TypeError:
        if isinstance(data, (Dataset, DataLoader)):
            return None
        raise TypeError(
            "data must be a torch Tensor, a numpy array, a Dataset or a DataLoader, got "
            f"{type(data).__name__}"
        ) from None


def _check_in_order(batches: Any) -> None:
    """Refuse a batch sampler that may not give rows 0, 1, 2, ... in order. Only torch's own
    ``BatchSampler`` over a ``SequentialSampler`` is trusted unread: a subclass (length bucketing)
    may reorder the batches whatever its ``.sampler``."""
    sampler = getattr(batches, "sampler", None)
    if type(batches) is BatchSampler:
        if type(sampler) is SequentialSampler:
            return
        raise ValueError(
            f"data is a DataLoader with a {type(sampler).__name__}: rows would come out of "
            "order; pass a DataLoader with shuffle=False (or the Dataset itself)"
        )
    if isinstance(batches, (list, tuple)):
        if not _in_order(batches):
            raise ValueError(
                "data is a DataLoader whose batch_sampler does not give rows 0, 1, 2, ... "
                "in order: rows would come out of order"
            )
        return
    raise ValueError(
        f"data is a DataLoader with a custom batch_sampler ({type(batches).__name__}): fastal "
        "cannot tell that it gives rows 0, 1, 2, ... in order (bucketing samplers do not); pass "
        "a DataLoader with batch_size= and shuffle=False, or a list of in-order index lists"
    )


def _in_order(batches: Any) -> bool:
    """Whether a batch sampler without a ``.sampler`` (a list of index lists) yields 0, 1, 2, ...
    (it is iterated once here; a sampler that draws at random is not in order anyway)."""
    expected = 0
    for batch in batches:
        for i in batch:
            if int(i) != expected:
                return False
            expected += 1
    return True


def _to(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """``x`` (a tensor, or tensors in tuples, lists and mappings) on ``device``; floating tensors
    also cast to ``dtype`` when one is given (the rule of the numpy path)."""
    if isinstance(x, torch.Tensor):
        cast = dtype if dtype is not None and x.is_floating_point() else x.dtype
        return x.to(device, dtype=cast, non_blocking=True)
    if isinstance(x, (tuple, list)):
        moved = [_to(v, device, dtype) for v in x]
        return type(x)(*moved) if hasattr(x, "_fields") else type(x)(moved)  # NamedTuple
    if isinstance(x, Mapping):
        return {k: _to(v, device, dtype) for k, v in x.items()}
    return x


def _default_input(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    raise TypeError(
        f"cannot tell the model input in a batch of type {type(batch).__name__}: pass batch_fn= "
        "(e.g. batch_fn=lambda b: b['pixel_values'])"
    )


def _batches(
    data: Any,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    batch_fn: Any,
    model_dtype: torch.dtype,
    collate_fn: Any = None,
) -> Iterator[Any]:
    if isinstance(data, np.ndarray):
        cast = model_dtype if np.issubdtype(data.dtype, np.floating) else None
        for s in range(0, data.shape[0], batch_size):
            chunk = _interop.native_order(np.ascontiguousarray(data[s : s + batch_size]))
            t = torch.from_numpy(chunk if chunk.flags.writeable else chunk.copy())
            t = t.to(device=device, dtype=cast or t.dtype)
            yield t if batch_fn is None else _to(batch_fn(t), device, model_dtype)
        return
    if isinstance(data, torch.Tensor):
        for s in range(0, data.shape[0], batch_size):
            t = _to(data[s : s + batch_size], device, model_dtype)
            yield t if batch_fn is None else _to(batch_fn(t), device, model_dtype)
        return
    built = not isinstance(data, DataLoader)
    if built:
        data = DataLoader(
            data,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            collate_fn=collate_fn,  # None: torch's default
        )
    # Starting an iteration draws the workers' base seed from torch's generator: not the user's.
    with torch.random.fork_rng(devices=[]):
        batches = iter(data)
    fn = batch_fn or _default_input
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except RuntimeError as err:
            if built and collate_fn is None and "equal size" in str(err):
                raise ValueError(
                    "the rows differ in size, so torch's default collation cannot stack a "
                    "batch of them (rows of different lengths: text, speech); pass collate_fn= "
                    f"to pad them into one (torch: {str(err).splitlines()[0]})"
                ) from err
            raise
        yield _to(fn(batch), device, model_dtype)


def _call(model: nn.Module, x: Any) -> Any:
    if isinstance(x, tuple):
        return model(*x)
    if isinstance(x, Mapping):
        return model(**x)
    return model(x)


def _rows(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    values: Iterable = (
        x.values() if isinstance(x, Mapping) else x if isinstance(x, (tuple, list)) else ()
    )
    for v in values:
        if isinstance(v, torch.Tensor):
            return int(v.shape[0])
    raise TypeError(f"cannot tell the number of rows of a model input of type {type(x).__name__}")


def _autocast(dtype: torch.dtype | None, device: torch.device) -> Callable[[], Any]:
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type="cuda", dtype=dtype)


def _forked_rng(seed: int | None, device: torch.device) -> Any:
    return contextlib.nullcontext() if seed is None else forked_rng(device, seed)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(n: int | None, progress: bool) -> Any:
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=n, unit="rows", desc="fastal pool pass")


class _CurrentBatch:
    """The batch :func:`_naming_rows` reports on (set by the pass as it goes)."""

    inputs: Any = None


@contextlib.contextmanager
def _naming_rows(writer: _Writer) -> Iterator[_CurrentBatch]:
    """Adds to an error raised while a batch runs (the model's own, a shape mismatch) which rows
    of ``data`` that batch started at: a bare matmul error does not say it came from the pool;
    and, for integer inputs, that they reach the model as they are (a Linear's dtype error)."""
    current = _CurrentBatch()
    try:
        yield current
    except Exception as e:
        if hasattr(e, "add_note"):  # Python 3.11+
            e.add_note(f"(fastal: in the batch of data starting at row {writer.pos})")
            x = current.inputs
            if _integer_dtype_error(x, e):
                e.add_note(f"(fastal: the inputs are {x.dtype}: {INTEGER_INPUTS_HINT})")
        raise


class _Writer:
    """Copies each batch's outputs into tensors preallocated at the first batch (size known), or
    collects them when the pool size is unknown."""

    def __init__(self, n: int | None, device: torch.device, dtype: torch.dtype) -> None:
        self.n, self.device, self.dtype = n, device, dtype
        self.out: dict[str, torch.Tensor] = {}
        self.parts: dict[str, list[torch.Tensor]] = {}
        self.pos = 0

    def write(self, result: dict[str, torch.Tensor], rows: int) -> None:
        for key, t in result.items():
            if key == "features":
                t = t.reshape(rows, -1)
            axis = 1 if key.startswith("mc_") else 0
            if t.shape[axis] != rows:
                raise ValueError(f"{key} has {t.shape[axis]} rows for a batch of {rows}")
            if self.n is None:
                with torch.inference_mode(False):  # a copy that is not an inference tensor
                    part = torch.empty(t.shape, dtype=self.dtype, device=self.device)
                part.copy_(t)
                self.parts.setdefault(key, []).append(part)
                continue
            if key not in self.out:
                shape = list(t.shape)
                shape[axis] = self.n
                # not inference tensors (the pass runs in inference mode): users may edit the
                # outputs in place or train on them
                with torch.inference_mode(False):
                    self.out[key] = torch.empty(shape, dtype=self.dtype, device=self.device)
            dst = (
                self.out[key][:, self.pos : self.pos + rows]
                if axis
                else self.out[key][self.pos : self.pos + rows]
            )
            if dst.shape != t.shape:
                raise ValueError(
                    f"{key} has shape {tuple(t.shape)} in this batch, {tuple(dst.shape)} expected"
                )
            dst.copy_(t)
        self.pos += rows
        if self.n is not None and self.pos > self.n:
            raise ValueError(f"data gave more than its {self.n} rows")

    def result(self, needs: tuple[str, ...]) -> dict[str, torch.Tensor]:
        if self.n is None and self.pos == 0:
            raise ValueError("data is empty: the pool needs at least one row")
        if self.n is None:
            return {
                k: torch.cat(self.parts[k], dim=1 if k.startswith("mc_") else 0)
                for k in needs
                if k in self.parts
            }
        if self.pos != self.n:
            raise ValueError(f"data gave {self.pos} rows but has length {self.n}")
        return {k: self.out[k] for k in needs if k in self.out}
