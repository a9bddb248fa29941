"""Every `fewstep` command line the project documents (README, docs, the commands that made the committed results)
still parses: the CLI's flags are kept, or renamed with the docs updated. Commands that build a config (training,
distillation, pairs) also resolve it, so a documented value out of range or a removed choice fails here. The README's
quickstart blocks are run as written in `test_readme_quickstart.py`."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from fewstep.commands.dispatch import build_parser

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    ROOT / "README.md",
    *sorted(p for p in (ROOT / "docs").rglob("*.md") if p.name != "cli.md"),
    *sorted((ROOT / "benchmarks").rglob("*.md")),
]  # the generated CLI reference is checked on its own
# placeholders the docs write in capitals (MODEL, DIR, ...) are not flags; these stand for real values
SKIP = ("...", "<", "{", "|")
# commands whose flags build a validated config (`--print-config` resolves it without running anything)
CONFIG_COMMANDS = ("distill", "train-teacher", "pairs", "distill-decoder")


def _command_lines(text: str) -> list[str]:
    """`fewstep ...` commands in the code blocks of a markdown text (shell variables expanded, continuations
    joined)."""
    variables = dict(re.findall(r'^(\w+)="([^"]*)"', text, flags=re.M))
    code = "\n".join(re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S))
    joined = re.sub(r"\\\n\s*", " ", code)
    found = []
    for line in joined.splitlines():
        line = line.strip().strip("`")
        for cmd in re.split(r";\s*|&&\s*", line):
            cmd = cmd.strip()
            m = re.match(r"^(?:torchrun .*?-m fewstep\.cli |fewstep )(.*)", cmd)
            if not m or any(s in m.group(1) for s in SKIP):
                continue
            body = re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda v: variables.get(v.group(1) or v.group(2), ""), m.group(1))
            body = body.split("#")[0].split(">")[0].split("2>&1")[0].strip()
            if body and not body.startswith("-"):
                found.append(body)
    return found


def documented_commands() -> list[tuple[str, str]]:
    out = []
    for path in SOURCES:
        if path.is_file():
            out += [(str(path.relative_to(ROOT)), c) for c in _command_lines(path.read_text(encoding="utf-8"))]
    return out


COMMANDS = documented_commands()


def test_the_docs_hold_many_commands():
    assert len(COMMANDS) > 50 and any(c.startswith("distill ") for _, c in COMMANDS)


@pytest.mark.parametrize(("source", "command"), COMMANDS, ids=[f"{s}:{c[:60]}" for s, c in COMMANDS])
def test_documented_command_parses(source, command):
    argv = shlex.split(command)
    if any(a.isupper() and len(a) > 1 and a.isalpha() for a in argv):  # MODEL, BUNDLE, DIR: a usage pattern
        pytest.skip("a usage pattern with placeholders")
    try:
        build_parser(argv).parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{source}: `fewstep {command}` no longer parses (exit {e.code})")
    if argv[0] in CONFIG_COMMANDS and not {"--config", "--resume"} & set(argv):  # their files exist only in use
        # also resolve the settings: choices, ranges, the method's own fields
        from fewstep.commands.dispatch import main

        with contextlib.redirect_stdout(io.StringIO()):
            code = main([*argv, "--print-config"])
        assert code == 0, f"{source}: `fewstep {command}` parses but its settings are refused"


def help_examples() -> list[tuple[str, str]]:
    """The example lines of every subcommand's --help (its EPILOG)."""
    import importlib

    from fewstep.commands import COMMANDS as SUBCOMMANDS

    out = []
    for c in SUBCOMMANDS:
        module = importlib.import_module(c.module)
        for text in (getattr(module, "EPILOG", ""),):
            out += [(c.name, cmd) for cmd in _command_lines(f"```\n{text}\n```\n")]
    return out


EXAMPLES = help_examples()


@pytest.mark.parametrize(("command", "example"), EXAMPLES, ids=[f"{c}:{e[:60]}" for c, e in EXAMPLES])
def test_help_examples_parse(command, example):
    test_documented_command_parses(f"fewstep {command} --help", example)
