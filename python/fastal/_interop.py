"""numpy / torch / cupy arrays <-> what the compiled kernels take.

CPU arrays cross into ``fastal._cpu`` through the buffer protocol as C-contiguous numpy arrays of
the exact storage dtype (float16 and bfloat16 as ``uint16`` views, since numpy has no bfloat16).
CUDA arrays cross into ``fastal._cuda`` as raw device pointers plus the framework's current stream.
Non-contiguous or non-native-byte-order inputs are copied here, on purpose, never reinterpreted.
Outputs are created in the input's framework and on its device.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Storage dtypes the distance kernels accept.
FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")
#: Storage dtypes accepted on CUDA devices (float64 is CPU-only).
CUDA_FLOAT_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ArrayInfo:
    """Where an array lives and what it holds."""

    framework: str  # "numpy" | "torch" | "cupy"
    device: str  # "cpu" | "cuda"
    device_index: int | None
    dtype: str  # canonical numpy-style name, e.g. "float32", "bfloat16", "int64"
    shape: tuple[int, ...]

    @property
    def where(self) -> str:
        if self.device == "cpu":
            return f"{self.framework} (cpu)"
        return f"{self.framework} (cuda:{self.device_index})"


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")  # not imported yet: x cannot be a tensor (subclasses included)
    return torch is not None and isinstance(x, torch.Tensor)


def _is_cupy(x: Any) -> bool:
    cupy = sys.modules.get("cupy")  # not imported yet: x cannot be a cupy array
    return cupy is not None and isinstance(x, cupy.ndarray)


def is_array(x: Any) -> bool:
    """True for numpy arrays, torch tensors and cupy arrays (whatever their device)."""
    return isinstance(x, np.ndarray) or _is_torch(x) or _is_cupy(x)


def _refuse_masked(x: np.ma.MaskedArray, name: str) -> None:
    # the kernels read the data under the mask: a masked entry would be used as it stands
    if np.ma.is_masked(x):
        raise ValueError(
            f"{name} is a masked array with masked entries ({int(np.ma.count_masked(x))}), which "
            f"fastal would read as their stored values: fill them ({name}.filled(value)) or drop "
            "those rows first"
        )


def describe(x: Any, name: str) -> ArrayInfo:
    """Classify ``x`` or raise ``TypeError`` naming ``name``."""
    if isinstance(x, np.ma.MaskedArray):
        _refuse_masked(x, name)
    if isinstance(x, np.ndarray):
        return ArrayInfo("numpy", "cpu", None, x.dtype.name, tuple(x.shape))
    if _is_torch(x):
        _check_plain_tensor(x, name)
        dtype = str(x.dtype).removeprefix("torch.")
        if x.device.type == "cpu":
            return ArrayInfo("torch", "cpu", None, dtype, tuple(x.shape))
        if x.device.type == "cuda":
            return ArrayInfo("torch", "cuda", x.device.index, dtype, tuple(x.shape))
        raise TypeError(
            f"{name} is a torch tensor on device {x.device}; fastal supports cpu and cuda"
        )
    if _is_cupy(x):
        return ArrayInfo("cupy", "cuda", x.device.id, x.dtype.name, tuple(x.shape))
    raise TypeError(
        f"{name} must be a numpy array, a torch tensor or a cupy array, got {type(x).__name__}"
    )


def _check_plain_tensor(x: Any, name: str) -> None:
    """Refuse tensors whose memory is not their values: sparse and nested layouts, and subclasses
    that dispatch their own operations (``MaskedTensor``: its masked entries would be read as
    stored). Plain subclasses (``nn.Parameter``, ``nn.Buffer``, ``as_subclass``) pass."""
    import torch

    if x.is_nested:
        raise TypeError(f"{name} is a nested torch tensor; fastal needs a dense (strided) one")
    if x.layout != torch.strided:
        raise TypeError(
            f"{name} is a torch tensor with layout {x.layout}; fastal needs a dense (strided) one, "
            f"e.g. {name}.to_dense()"
        )
    if type(x).__torch_dispatch__ is not torch.Tensor.__torch_dispatch__:
        if type(x).__name__ == "MaskedTensor":
            raise ValueError(
                f"{name} is a torch MaskedTensor, whose masked entries fastal would read as their "
                f"stored values: fill them ({name}.get_data().masked_fill(~{name}.get_mask(), "
                "value)) or drop those rows first"
            )
        raise TypeError(
            f"{name} is a {type(x).__name__}, a torch tensor subclass with its own dispatch; pass "
            "a plain tensor"
        )


def native_order(arr: np.ndarray) -> np.ndarray:
    """``arr`` itself, or a copy in native byte order (torch and the kernels take no other)."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def host_storage(x: Any, info: ArrayInfo) -> np.ndarray:
    """A C-contiguous numpy view (or deliberate copy) of a CPU array, as the kernels store it."""
    if info.framework == "torch":
        t = x.detach().resolve_neg().resolve_conj()  # a lazy negation is not in the memory
        if not t.is_contiguous():
            t = t.contiguous()
        if info.dtype == "bfloat16":
            import torch

            return t.view(torch.int16).numpy().view(np.uint16)
        arr = t.numpy()
    else:
        arr = np.ascontiguousarray(native_order(x))
    if info.dtype in ("float16", "bfloat16"):
        return arr.view(np.uint16)
    return arr


def cuda_pointer(x: Any, info: ArrayInfo) -> tuple[Any, int]:
    """(contiguous array kept alive by the caller, its device pointer)."""
    if info.framework == "torch":
        t = x.detach().resolve_neg().resolve_conj()  # the kernels read memory, not lazy negation
        if not t.is_contiguous():
            t = t.contiguous()
        return t, int(t.data_ptr())
    import cupy

    a = cupy.ascontiguousarray(x)
    return a, int(a.data.ptr)


def device_scope(info: ArrayInfo, name: str) -> Any:
    """A context that makes the array's GPU the framework's current device (a no-op on the CPU);
    for a CUDA array it first checks that fastal has its CUDA module (the error names ``name``).

    CuPy runs its own operations (copies, gathers, ``.get()``) on the current device, not the
    operand's: without this, an array on ``cuda:1`` while ``cuda:0`` is current would fail or run
    on the wrong stream."""
    if info.device != "cuda":
        return contextlib.nullcontext()
    from . import _ext

    _ext.require_cuda(name)
    if info.framework == "torch":
        import torch

        return torch.cuda.device(info.device_index)
    import cupy

    return cupy.cuda.Device(info.device_index)


def key_radius(cuda: Any, key: int) -> float:
    """The distance packed (squared) in a k-center key; 0 for key 0, which no row wrote (every
    row of the pool is labeled)."""
    if key == 0:
        return 0.0
    return float(np.sqrt(max(0.0, cuda.key_value(key))))


def cuda_stream(info: ArrayInfo) -> int:
    """The framework's current stream on the array's device, as a raw handle."""
    if info.framework == "torch":
        import torch

        return int(torch.cuda.current_stream(info.device_index).cuda_stream)
    import cupy

    with cupy.cuda.Device(info.device_index):
        return int(cupy.cuda.get_current_stream().ptr)


def host_numpy(x: Any, name: str = "the array") -> np.ndarray:
    """Any array-like (list, numpy, torch on any device, cupy) as a plain numpy array on the host,
    in native byte order; masked entries are refused (the message names ``name``)."""
    if isinstance(x, np.ma.MaskedArray):
        _refuse_masked(x, name)
        x = np.ma.getdata(x)
    if isinstance(x, np.ndarray):
        arr = x
    elif _is_torch(x):
        _check_plain_tensor(x, name)
        arr = x.detach().cpu().resolve_neg().resolve_conj().numpy()
    elif _is_cupy(x):
        arr = x.get()
    else:
        arr = np.asarray(x)
    return native_order(arr)


def wrap_host(arr: np.ndarray, like: ArrayInfo) -> Any:
    """A numpy result as the caller's CPU framework."""
    if like.framework == "torch":
        import torch

        return torch.from_numpy(arr)
    return arr


def empty(like: ArrayInfo, shape: tuple[int, ...], dtype: str) -> Any:
    """An uninitialised array in the caller's framework and device."""
    if like.framework == "numpy":
        return np.empty(shape, dtype=dtype)
    if like.framework == "torch":
        import torch

        device = "cpu" if like.device == "cpu" else f"cuda:{like.device_index}"
        return torch.empty(shape, dtype=getattr(torch, dtype), device=device)
    import cupy

    with cupy.cuda.Device(like.device_index):
        return cupy.empty(shape, dtype=dtype)


def to_framework(arr: np.ndarray, like: ArrayInfo) -> Any:
    """A small host numpy array moved to the caller's framework and device."""
    if like.device == "cpu":
        return wrap_host(arr, like)
    if like.framework == "torch":
        import torch

        return torch.from_numpy(arr).to(f"cuda:{like.device_index}")
    import cupy

    with cupy.cuda.Device(like.device_index):
        return cupy.asarray(arr)
