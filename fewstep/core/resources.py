"""Memory and disk a job needs, checked before it allocates: a clear refusal instead of the OOM killer."""

from __future__ import annotations

import ctypes
import gc
import os
import shutil
from pathlib import Path

from fewstep.core.errors import UserError

GIB = 1024**3


class ResourceError(UserError, MemoryError):
    """A job that cannot fit this machine's free memory or disk; the message gives the estimate and the way out."""


def available_memory() -> int:
    """Bytes the kernel says a new allocation can get without swapping (MemAvailable); sysconf elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def resident_memory() -> int:
    """This process's resident set size in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def return_freed_memory() -> int:
    """Collect garbage and hand freed heap pages back to the kernel (glibc keeps them otherwise, so a process that
    freed several GB of tensors would still hold them); -> the resident set size after."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator decides
        pass
    return resident_memory()


def free_disk(path: str | Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def require_memory(needed: int, what: str, hint: str = "") -> None:
    """Refuse up front when `needed` bytes exceed the memory available now."""
    have = available_memory()
    if needed > have:
        raise ResourceError(f"{what} needs about {gib(needed)} of memory, this machine has {gib(have)} available"
                            + (f"; {hint}" if hint else ""))  # fmt: skip


def require_disk(needed: int, path: str | Path, what: str) -> None:
    """Refuse up front when `needed` bytes exceed the free space where `path` will be written."""
    have = free_disk(path)
    if needed > have:
        raise ResourceError(f"{what} needs about {gib(needed)} of disk at {path}, {gib(have)} is free there; "
                            "free some space or write elsewhere")  # fmt: skip
