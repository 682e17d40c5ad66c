"""Whether an allocation fits: the memory available on a device, container limits included.

Used before allocations large enough to swap for hours or get the process killed.
"""

from __future__ import annotations

import os
from typing import Any

#: Allocations below this many bytes are not compared with the available memory (so featurizing
#: an augmented minibatch asks the system nothing).
MEMORY_CHECK_MIN = 1 << 28


def available_bytes(device: Any) -> int | None:
    """Bytes a new allocation on ``device`` can take now without swapping; None when unknown.

    CUDA: the driver's free memory plus what PyTorch's caching allocator holds unused. CPU: the
    machine's ``psutil.virtual_memory().available`` where psutil is installed, else Linux's
    ``MemAvailable`` (free memory plus the page cache the kernel can drop), else the physical
    memory (a bound that only refuses what can never fit); the smaller of that and what this
    process's memory cgroup leaves (:func:`cgroup_available_bytes`: a container's limit, which
    the machine-wide figures do not see).
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free) + int(cached)
    if device.type != "cpu":
        return None
    machine = machine_available_bytes()
    group = cgroup_available_bytes()
    known = [b for b in (machine, group) if b is not None]
    return min(known) if known else None


def machine_available_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


#: Memory cgroup limits at or above this are "no limit" (cgroup v1 writes 2^63 rounded to a page).
NO_LIMIT = 1 << 60


def cgroup_available_bytes(
    root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup"
) -> int | None:
    """What the memory cgroups of this process leave before their limits, or None (no limit, or
    no cgroup file to read): the smallest over the process's cgroup and its ancestors of
    ``limit - (usage - inactive file cache)`` (the cache the kernel reclaims before it refuses, as
    container runtimes count a working set). cgroup v2 (``memory.max``, ``memory.current``,
    ``inactive_file``) and v1 (``memory.limit_in_bytes``, ``memory.usage_in_bytes``,
    ``total_inactive_file``); the cgroup's path comes from ``self_cgroup``, and a path not mounted
    under ``root`` (a container that sees only its own cgroup) is read at the mount's top."""
    try:
        with open(self_cgroup, encoding="utf-8", errors="replace") as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
    except OSError:
        return None
    layouts = []  # (mount, path within it, limit file, usage file, inactive key)
    for _, controllers, path in entries:
        if controllers == "":
            layouts.append((root, path, "memory.max", "memory.current", "inactive_file"))
        elif "memory" in controllers.split(","):
            layouts.append((os.path.join(root, "memory"), path, "memory.limit_in_bytes",
                            "memory.usage_in_bytes", "total_inactive_file"))  # fmt: skip
    best = None
    for mount, path, limit_file, usage_file, inactive_key in layouts:
        path = path.removesuffix(" (deleted)")
        parts = [p for p in path.split("/") if p]
        if ".." in parts:  # not a path below the mount: read its top only
            parts = []
        chain = [os.path.join(mount, *parts[:i]) for i in range(len(parts) + 1)]
        for here in chain if os.path.isdir(chain[-1]) else [mount]:
            room = cgroup_room(here, limit_file, usage_file, inactive_key)
            if room is not None:
                best = room if best is None else min(best, room)
    return best


def cgroup_room(directory: str, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    """``limit - (usage - inactive file cache)`` of one cgroup directory, None when unlimited or
    unreadable."""
    try:
        with open(os.path.join(directory, limit_file)) as f:
            text = f.read().strip()
        if text == "max" or not 0 <= int(text) < NO_LIMIT:  # v1 writes -1 for "no limit" too
            return None
        limit = int(text)
        with open(os.path.join(directory, usage_file)) as f:
            usage = int(f.read().strip())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    inactive = 0
    try:
        with open(os.path.join(directory, "memory.stat")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    inactive = int(value)
                    break
    except (OSError, ValueError):
        pass
    return max(0, limit - max(0, usage - inactive))


def refuse_unless_it_fits(nbytes: int, device: Any, what: str, hint: str) -> None:
    """ValueError when ``nbytes`` (an estimate of what is about to be allocated) exceeds the
    memory available on ``device`` (:func:`available_bytes`): filled later, such an allocation
    would swap for hours or get the process killed with no message. ``what`` needs the bytes;
    ``hint`` says what to lower."""
    if nbytes < MEMORY_CHECK_MIN:
        return
    available = available_bytes(device)
    if available is None or nbytes <= available:
        return
    import torch

    device = torch.device(device)
    where = "the CPU" if device.type == "cpu" else str(device)
    raise ValueError(
        f"{what} would need {nbytes / 2**30:.2f} GiB but {where} has {available / 2**30:.2f} GiB "
        f"available: {hint}"
    )
