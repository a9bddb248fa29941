"""The CLI reference page (docs/reference/cli.md), generated from the parser itself so that it cannot drift:
`python -m fewstep.commands.reference > docs/reference/cli.md`; a test compares the committed page with it."""

from __future__ import annotations

import argparse
import os
import sys

from fewstep.commands.dispatch import build_parser

WIDTH = "100"  # the help's line width, fixed so that the page does not depend on the terminal

HEAD = """# CLI reference

Generated from the parser (`python -m fewstep.commands.reference > docs/reference/cli.md`); every flag's help is
the documentation of the config field behind it. `fewstep COMMAND --help` prints the same text.
"""


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def reference() -> str:
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser(full=True)
        parts = [HEAD, "## fewstep\n", "```text", parser.format_help().rstrip(), "```\n"]
        for name, sub in _subparsers(parser).items():
            parts += [f"## fewstep {name}\n", "```text", sub.format_help().rstrip(), "```\n"]
            for child, grand in _subparsers(sub).items():
                parts += [f"### fewstep {name} {child}\n", "```text", grand.format_help().rstrip(), "```\n"]
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(reference())
