"""Every relative link in the repository's markdown files points at a file inside the repository that exists.

The docs site's own links are checked again, anchors included, by `mkdocs build --strict` (`make docs`); this test
also covers the README, the benchmark results and the files outside `docs/`, and runs without mkdocs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
EXTERNAL = ("http://", "https://", "mailto:")


def markdown_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "*.md"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
        return [ROOT / p for p in listed if (ROOT / p).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every markdown file outside the venvs
        return [p for p in ROOT.rglob("*.md") if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]


def relative_links(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # links inside code blocks are examples
    targets = [a or b for a, b in LINK.findall(text)]
    return [t for t in targets if not t.startswith(EXTERNAL) and not t.startswith("#")]


FILES = markdown_files()


def test_there_are_docs_to_check():
    names = {p.relative_to(ROOT).as_posix() for p in FILES}
    assert {"README.md", "docs/index.md", "CHANGELOG.md", "CONTRIBUTING.md"} <= names


@pytest.mark.parametrize("path", FILES, ids=[p.relative_to(ROOT).as_posix() for p in FILES])
def test_links_stay_inside_the_repository_and_resolve(path: Path):
    broken = []
    for target in relative_links(path.read_text(encoding="utf-8")):
        resolved = (path.parent / target.split("#")[0]).resolve()
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{target} (no such file)")
    assert not broken, f"{path.relative_to(ROOT)}: {', '.join(broken)}"


def test_no_file_cites_the_design_notes_that_are_not_in_the_repository():
    """The design notes the project started from are not shipped; docstrings and docs cite docs/ or a paper."""
    pattern = re.compile(r"\b(METHODS|DESIGN|TOOLCHAIN|STYLE)\.md\b")
    sources = [*FILES, *(ROOT / "fewstep").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    offenders = [p.relative_to(ROOT).as_posix() for p in sources if pattern.search(p.read_text(encoding="utf-8"))]
    assert not [o for o in offenders if o != "CHANGELOG.md"], offenders


def test_troubleshooting_names_every_error_class():
    """Every exception class fewstep defines (but the server's internal ClientGone) has a row in troubleshooting."""
    page = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    defined = set()
    for path in (ROOT / "fewstep").rglob("*.py"):
        defined |= set(re.findall(r"^class (\w+)\((?:[\w.]*(?:Error|Exception)\b[^)]*)\)", path.read_text(), re.M))
    missing = sorted(name for name in defined - {"ClientGone"} if f"`{name}`" not in page)
    assert len(defined) > 10 and not missing, missing
