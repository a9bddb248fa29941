"""Where a distilled student's equal-steps verdict lives (`verdict.json` beside its checkpoint), read without any
heavy dependency so export, runtime and report can show it. `fewstep.evaluation.verdict` measures it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fewstep.core.fsio import atomic_write_text

VERDICT_FILE = "verdict.json"
OUTCOMES = ("better", "worse", "mixed")


def write_verdict(run: Path, verdict: dict[str, Any]) -> Path:
    path = Path(run) / VERDICT_FILE
    atomic_write_text(path, json.dumps(verdict, indent=2) + "\n")
    return path


def read_verdict(checkpoint: Path, sha256: str | None = None) -> dict[str, Any] | None:
    """The verdict beside `checkpoint` (its run directory's verdict.json) when it is readable and, given the
    checkpoint's sha256, was measured on that very file; else None (a verdict of other weights is not theirs)."""
    path = Path(checkpoint).parent / VERDICT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("outcome") not in OUTCOMES:
        return None
    if sha256 is not None and data.get("student_sha256") != sha256:
        return None
    return data


def verdict_summary(verdict: dict[str, Any]) -> dict[str, Any]:
    """The part of a verdict a bundle manifest keeps: outcome, basis, steps, each system's metrics, the line."""
    keys = ("outcome", "basis", "steps", "teacher_full_steps", "prompts", "prompt_source", "systems", "line")
    return {k: verdict[k] for k in keys if k in verdict}


def verdict_label(verdict: dict[str, Any] | None) -> str:
    """'better at 4 steps' for tables; '-' when there is none."""
    if not verdict:
        return "-"
    word = "WORSE" if verdict["outcome"] == "worse" else verdict["outcome"]
    return f"{word} at {verdict.get('steps', '?')} steps"
