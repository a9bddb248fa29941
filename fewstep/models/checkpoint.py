"""Safe checkpoint I/O: weights only from safetensors (or `torch.load(weights_only=True)` for foreign files).

A fewstep checkpoint is ONE safetensors file whose metadata holds the JSON spec (architecture, image size,
text encoder, sampler rule, ...), so weights and description can never drift apart. Writes are atomic:
temp file in the same directory, fsync, rename; a crash or a full disk leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from fewstep.core.fsio import atomic_write

CHECKPOINT_FORMAT = "fewstep-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Atomically write tensors + a JSON-serialisable `meta` dict into one safetensors file."""
    from safetensors import SafetensorError  # train extra
    from safetensors.torch import save_file  # train extra

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        try:
            save_file(flat, str(tmp), metadata={"fewstep": json.dumps(meta)})
        except SafetensorError as e:  # its I/O errors (a full disk) become OSErrors that atomic_write names
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from e

    atomic_write(path, write)


def read_meta(path: str | Path) -> dict:
    """The fewstep metadata of a checkpoint without reading its tensors (same errors as `load_tensors`)."""
    return _read(path, with_tensors=False)[1]


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a safetensors file written by `save_tensors`; clear errors for missing, truncated or foreign files."""
    return _read(path, with_tensors=True)


def _read(path: str | Path, with_tensors: bool) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError, safe_open  # train extra

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta_raw = (f.metadata() or {}).get("fewstep")
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except (SafetensorError, OSError, ValueError) as e:
        hint = " (it looks like a pickle: use torch.load-compatible import, see `load_foreign_state_dict`)"
        raise CheckpointError(
            f"checkpoint {path} is not a readable safetensors file: {e}; it may be truncated or corrupt"
            + (hint if _looks_like_pickle(path) else "")
        ) from None
    if meta_raw is None:
        raise CheckpointError(f"checkpoint {path} has no fewstep metadata: it was not written by fewstep")
    try:
        meta = json.loads(meta_raw)
    except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: JSON nested beyond Python's stack
        raise CheckpointError(f"checkpoint {path} has corrupt metadata: {type(e).__name__}: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has metadata that is not an object; it was not written by fewstep")
    return tensors, meta


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head[:1] == b"\x80" or head[:2] == b"PK"  # pickle protocol 2+ or torch's zip format


def load_foreign_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A foreign weights file: `.safetensors`, or a torch file loaded with `weights_only=True` (never runs code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError  # train extra
        from safetensors.torch import load_file  # train extra

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"weights file {path} is not a readable safetensors file: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: it is a pickle that contains code or objects other than tensors ({e}). "
            "fewstep never unpickles code; convert it to safetensors with a tool you trust."
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"weights file {path} is not a readable torch file: {e}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"weights file {path} does not hold a flat dict of tensors")
    return obj


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict(strict=True)` with a message that names missing, unexpected and mis-shaped tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own.keys() & state.keys()
        if own[k].shape != state[k].shape
    ]
    dtypes = [
        f"{k}: checkpoint {state[k].dtype} vs model {own[k].dtype}"
        for k in own.keys() & state.keys()
        if own[k].is_floating_point() != state[k].is_floating_point()  # fp16 -> fp32 is fine, int -> float is not
    ]
    if missing or unexpected or shapes or dtypes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} with wrong shapes (e.g. {'; '.join(shapes[:3])})")
        if dtypes:
            parts.append(f"{len(dtypes)} with wrong dtypes (e.g. {'; '.join(dtypes[:3])})")
        raise CheckpointError(f"{source} does not match the model: " + ", ".join(parts))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source} has NaN/Inf values in {len(bad)} tensors (e.g. {bad[0]})")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
