"""One torch thread for small CPU work.

Tiny matrix products and small-network training steps gain nothing from a second intra-op thread,
and on a busy machine waking it costs more than the work: on the shared 2-core development machine
a 10 × 20 × 4 product took 5 ms with two threads and 8 µs with one, and a 128-wide MLP step was
ten times slower. The previous setting is restored afterwards.

Only the main thread lowers it. ``torch.set_num_threads`` changes a process-wide default as well as
the calling thread's count, and a thread takes that default at its first torch operation: were
worker threads to lower and restore it too, one could save another's lowered value and leave the
default at one thread for the rest of the process. Blocks in other threads run unchanged.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def one_thread_if_small(device: Any, work: float = 0.0, below: float = math.inf) -> Iterator[None]:
    """Run the block with one torch thread when ``device`` is the CPU, ``work < below`` and this is
    the main thread."""
    import torch

    if (
        getattr(device, "type", "cpu") != "cpu"
        or work >= below
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
