"""Atomic file writes (stdlib only, so the torch-free runtime can use them too).

Temp file in the same directory, fsync, rename: a crash or a full disk leaves the previous file intact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: os.umask can only be read by setting it


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` then atomically move tmp_path to `path` (fsync'd, same directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp_path = Path(tmp)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual permissions
        write(tmp_path)
        os.fsync(fd)  # the same inode `write` filled through its own handle
        os.close(fd)
        fd = -1
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if fd >= 0:
            os.close(fd)
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
