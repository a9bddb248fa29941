"""Read a safetensors file's header (tensor names, dtypes, shapes and its metadata) with the standard library:
what `fewstep info` shows about a checkpoint where neither torch nor safetensors is installed.

Layout (safetensors' spec): 8 bytes little-endian header length N, then N bytes of JSON
{tensor name: {"dtype", "shape", "data_offsets"}, "__metadata__": {str: str}}. fewstep keeps its spec, as JSON,
under the metadata key "fewstep".
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

MAX_HEADER = 100 * 2**20  # safetensors itself refuses headers above 100 MB


class HeaderError(ValueError):
    """A file whose safetensors header cannot be read; the message names it."""


def read_header(path: str | Path) -> dict[str, Any]:
    """The header of a safetensors file, checked against the file's size."""
    path = Path(path)
    if not path.is_file():
        raise HeaderError(f"{path} is not a file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HeaderError(f"{path} is too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise HeaderError(f"{path} is not a safetensors file (its header length {n} does not fit the file)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise HeaderError(f"{path} has a corrupt safetensors header ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise HeaderError(f"{path} has a safetensors header that is not an object")
    return header


def fewstep_metadata(path: str | Path) -> dict[str, Any]:
    """The fewstep spec stored in a checkpoint's metadata."""
    meta = read_header(path).get("__metadata__") or {}
    raw = meta.get("fewstep") if isinstance(meta, dict) else None
    if not isinstance(raw, str):
        raise HeaderError(f"{path} has no fewstep metadata: it was not written by fewstep")
    try:
        spec = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        raise HeaderError(f"{path} has corrupt fewstep metadata ({type(e).__name__})") from None
    if not isinstance(spec, dict):
        raise HeaderError(f"{path} has fewstep metadata that is not an object")
    return spec
