"""The engine bundle format (DESIGN.md): a directory with `manifest.json` and the files it lists with sha256.

Shared by the exporter (which writes it) and the runtime (which reads it); stdlib only.
"""

from __future__ import annotations

import json
from pathlib import Path

from fewstep.core.fsio import sha256_of

BUNDLE_FORMAT = "fewstep-bundle/1"
MANIFEST = "manifest.json"
IN_PROGRESS = ".export-in-progress"  # present while an export writes into the bundle


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and what to do."""


def read_manifest(bundle: str | Path, allow_incomplete: bool = False) -> dict:
    """Parse `manifest.json`; refuse foreign formats and bundles whose export did not finish."""
    root = Path(bundle)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a directory (create one with `fewstep export MODEL --out DIR`)")
    if (root / IN_PROGRESS).exists() and not allow_incomplete:
        raise BundleError(
            f"bundle {root} is incomplete: an export into it did not finish; re-run the same `fewstep export`"
        )
    if not path.is_file():
        raise BundleError(f"bundle {root} has no {MANIFEST}: it is not a fewstep bundle or its export did not finish")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}); re-export the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path} has format {got!r}; this fewstep reads {BUNDLE_FORMAT!r}")
    _check_structure(manifest, path)
    return manifest


_SECTIONS = {"model": dict, "image": dict, "sampler": dict, "text_encoder": dict, "engines": list}


def _check_structure(manifest: dict, path: Path) -> None:
    """The sections every reader relies on, with the right types: a tampered manifest is named, not a KeyError."""
    for name, kind in _SECTIONS.items():
        if not isinstance(manifest.get(name), kind):
            got = type(manifest.get(name)).__name__ if name in manifest else "missing"
            raise BundleError(f"{path}: section {name!r} is {got}, expected a {kind.__name__}; re-export the bundle")
    for i, e in enumerate(manifest["engines"]):
        ok = isinstance(e, dict) and all(isinstance(e.get(k), str) for k in ("id", "backend", "precision"))
        files = e.get("files") if isinstance(e, dict) else None
        if (
            not ok
            or not isinstance(files, dict)
            or not files
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
        ):
            raise BundleError(f"{path}: engines[{i}] lacks a string id/backend/precision or its files map; re-export")
    img = manifest["image"]
    if not all(isinstance(img.get(k), int) and img[k] > 0 for k in ("channels", "height", "width")):
        raise BundleError(f"{path}: section 'image' needs positive integer channels, height and width; re-export")


def verify_file(root: Path, name: str, sha256: str) -> Path:
    """The path of a listed bundle file whose content still has its recorded sha256."""
    path = (root / name).resolve()
    if root.resolve() not in path.parents:
        raise BundleError(f"bundle {root} lists {name!r}, which lies outside the bundle")
    if not path.exists():
        raise BundleError(f"bundle {root} is missing {name}; re-export it")
    if sha256_of(path) != sha256:
        raise BundleError(f"bundle file {path} does not match its sha256 in {MANIFEST}: it was modified or damaged")
    return path


def engine_files(engine: dict) -> dict[str, str]:
    """{relative file name: sha256} of an engine entry (its main file and companions)."""
    return dict(engine.get("files", {}))
