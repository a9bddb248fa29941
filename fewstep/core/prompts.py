"""Prompt files: UTF-8 text, one prompt per line (generate, export calibration, report sweeps)."""

from __future__ import annotations

from pathlib import Path

from fewstep.core.fsio import read_regular_file

MAX_PROMPTS_FILE_BYTES = 64 * 2**20  # far above any prompt list; a file larger than this is a mistake
MAX_PROMPTS = 100_000  # default cap on the prompts read from one file (generate, calibration, sweeps)


def read_prompts_file(path: str | Path, max_prompts: int = MAX_PROMPTS) -> list[str]:
    """Non-empty lines of a UTF-8 text file: a regular file of at most 64 MiB and `max_prompts` prompts."""
    path = Path(path)
    raw = read_regular_file(path, MAX_PROMPTS_FILE_BYTES, "prompts file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"prompts file {path} is not UTF-8 text ({e})") from None
    prompts = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(prompts) > max_prompts:
        raise ValueError(f"prompts file {path} has {len(prompts):,} prompts, more than the {max_prompts:,} allowed; "
                         "split it, or raise the cap (fewstep generate --max-images)")  # fmt: skip
    return prompts
