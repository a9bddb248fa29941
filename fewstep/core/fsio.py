"""Atomic file writes, and reads that refuse what is not a regular file (stdlib only, so the torch-free runtime
can use them too).

Temp file in the same directory, fsync, rename: a crash or a full disk leaves the previous file intact. A named
pipe, device or socket given where a file is expected would block a read forever (a FIFO) or never end (a
device): `require_regular_file` refuses them before anything opens them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from fewstep.core.errors import UserError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: os.umask can only be read by setting it
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"  # `.NAME.RANDOM.tmp`: what a kill during a write leaves behind
# safetensors (Rust `tempfile` crate) writes `.tmpXXXXXX` beside its target and renames it: a kill inside
# save_file leaves that name, not ours
_LIBRARY_TEMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class OutputWriteError(UserError, OSError):
    """An output could not be written (full disk, quota, permissions); the previous file is intact."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` then atomically move tmp_path to `path` (fsync'd, same directory).

    Raises OutputWriteError (naming the file and what to do) when the write fails; `path` is then unchanged.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise _write_error(path, e) from e
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        # fsync what is at tmp_path NOW: some writers (safetensors) replace the file rather than fill it
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp and safetensors create 0600; outputs get the usual mode
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power loss
        finally:
            os.close(dir_fd)
    except OutputWriteError:
        raise
    except OSError as e:
        raise _write_error(path, e) from e
    finally:
        tmp_path.unlink(missing_ok=True)


def _write_error(path: Path, e: OSError) -> OutputWriteError:
    why = "the disk is full" if e.errno in _NO_SPACE else (e.strerror or str(e))
    return OutputWriteError(
        e.errno,
        f"could not write {path}: {why}; the previous {path.name} (if any) is intact. "
        "Free space (or fix the permissions) and run the same command again (training runs: add --resume)",
    )


def atomic_write_text(path: str | Path, text: str) -> None:
    def write(p: Path) -> None:
        p.write_text(text, encoding="utf-8")

    atomic_write(path, write)


def is_stale_temp(path: Path) -> bool:
    """True for a temp file of an unfinished atomic write: ours, or the one safetensors makes inside it."""
    name = path.name
    return (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)) or bool(_LIBRARY_TEMP.fullmatch(name))


def remove_stale_temps(directory: str | Path) -> int:
    """Delete the temp files that killed writes left in `directory` (call only where one process writes)."""
    n = 0
    for p in Path(directory).iterdir():
        if is_stale_temp(p) and p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


class NotARegularFileError(UserError, ValueError):
    """A path the CLI or runtime would read is a FIFO, device, socket or directory, or is too large."""


_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))  # fmt: skip


def require_regular_file(path: str | Path, what: str = "file", max_bytes: int | None = None) -> int:
    """The size of `path` (symlinks followed) when it is a regular file of at most `max_bytes`; otherwise a
    NotARegularFileError saying what it is. FileNotFoundError when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise NotARegularFileError(f"{what} {path} is {kind}, not a regular file; give the path of a file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise NotARegularFileError(f"{what} {path} is {st.st_size:,} bytes, more than the {max_bytes:,} allowed")
    return st.st_size


def read_regular_file(path: str | Path, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `max_bytes` (see require_regular_file)."""
    require_regular_file(path, what, max_bytes)
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)  # the file may have grown since the stat
    if len(data) > max_bytes:
        raise NotARegularFileError(f"{what} {path} is more than the {max_bytes:,} bytes allowed")
    return data


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory (e.g. an .mlpackage): its files' relative paths and contents in order."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
            h.update(bytes.fromhex(sha256_of(f)))
        return h.hexdigest()
    require_regular_file(path, "bundle file")  # a FIFO here would block the hash forever
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
