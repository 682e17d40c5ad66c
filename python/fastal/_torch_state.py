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
