"""Prompt files: UTF-8 text, one prompt per line (generate, export calibration, report sweeps)."""

from __future__ import annotations

from pathlib import Path


def read_prompts_file(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"prompts file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"prompts file {path} is not UTF-8 text ({e})") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]
