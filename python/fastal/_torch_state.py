"""One process-wide lock for the torch state fastal changes while it works.

torch's default random generator, a model's train / eval flags and its forward hooks belong to the
whole process, not to the thread that changes them. Two threads in fastal at once (a serving
process, a data-loader thread) would otherwise mix their seeded streams, see each other's hooks and
restore each other's flags. Every seeded region (:func:`forked_rng`) and every pass of
:func:`fastal.torch.pool_outputs` holds :data:`LOCK`, so across threads they run one at a time.
It is re-entrant: a seeded region may call another (the loop trains under a seed, ALLY seeds its
dual head). Code outside fastal that draws from torch's default generator meanwhile still shares
its stream: use an explicit ``torch.Generator`` there.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

LOCK = threading.RLock()


def rng_devices(device: Any) -> list[int]:
    """The CUDA device indices whose generators ``fork_rng`` must save for ``device``."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return []
    return [dev.index if dev.index is not None else torch.cuda.current_device()]


@contextlib.contextmanager
def forked_rng(device: Any, seed: int | None = None) -> Iterator[None]:
    """``torch.random.fork_rng`` for ``device`` (then its generator and the CPU's seeded with
    ``seed`` unless None), holding :data:`LOCK`: the caller's generator state comes back
    afterwards and no other fastal thread draws from it meanwhile."""
    import torch

    devices = rng_devices(device)
    with LOCK, torch.random.fork_rng(devices=devices):
        if seed is not None:
            # the CPU generator and the saved device's only: torch.manual_seed would reseed every
            # CUDA device, and those not saved would stay changed
            torch.default_generator.manual_seed(int(seed))
            for index in devices:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(int(seed))
        yield


@contextlib.contextmanager
def own_numerics(device: Any, *, grad: bool = False) -> Iterator[None]:
    """fastal's own torch arithmetic on ``device``, whatever the caller's context: autocast off
    (a caller's ``torch.autocast`` trained ALLY's dual head in bfloat16 and moved its picks), and
    with ``grad`` gradients on, inference mode lifted (training inside the caller's
    ``torch.no_grad()`` failed with torch's "does not require grad")."""
    import torch

    kind = torch.device(device).type
    with contextlib.ExitStack() as stack:
        if kind in ("cpu", "cuda"):
            stack.enter_context(torch.autocast(kind, enabled=False))
        if grad:
            stack.enter_context(grad_on())
        yield


@contextlib.contextmanager
def grad_on() -> Iterator[None]:
    """Gradients on for training inside a caller's ``torch.no_grad()`` or inference mode (which
    ``enable_grad`` alone does not lift); the caller's autocast, if any, still applies."""
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        yield
