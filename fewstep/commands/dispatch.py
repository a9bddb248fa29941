"""The `fewstep` parser and dispatch. `fewstep SUBCOMMAND --help` explains each step.

Subcommands are imported only when they run (or for `--help` of that subcommand), so `fewstep --help` and the
runtime's commands work in an install with only the `runtime` / `serve` extras; a subcommand whose extra is
missing says in one line which one to install.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from fewstep import __version__
from fewstep.commands import COMMANDS, Command
from fewstep.core.errors import USER_ERRORS, MissingExtra, install_hint

DESCRIPTION = """fewstep distills slow many-step image generators into fast 1-4 step students,
exports them to engines and measures latency next to quality.

the built-in chain, in order:
  fewstep info [MODEL|BUNDLE]       presets, shipped models; or what a checkpoint or bundle holds
  fewstep train-teacher --out DIR   train a flow-matching teacher (the shapes teacher ships with fewstep)
  fewstep pairs --out DIR           teacher ODE solutions (noise, prompt) -> image, for pair-based methods
  fewstep distill METHOD --out DIR  a 1-4 step student: {methods}
  fewstep distill-decoder --teacher PIPELINE --out DIR   a tiny (TAESD-like) image decoder for latent models
  fewstep export MODEL --out DIR    an engine bundle: ONNX / OpenVINO / CoreML / TensorRT, fp32 / fp16 / int8, gated
  fewstep export-optimum MODEL --out DIR   a latent student as an ONNX pipeline for optimum's ORTDiffusionPipeline
  fewstep generate MODEL --prompt P write a PNG grid (MODEL: a checkpoint, shipped name or engine bundle)
  fewstep bench BUNDLE              latency per batch size and stage, cold start, memory, edge profiles, vs torch
  fewstep serve BUNDLE              HTTP server: /v1/generate, OpenAI-style images API, /metrics, a web page
  fewstep eval MODEL                domain FID / KID and prompt adherence at several step counts
  fewstep report SWEEP.yaml         every system (teacher, students, engines) measured alike: latency vs FID chart
  fewstep demo                      the whole chain on the built-in default

info, generate, bench and serve run engine bundles with only `pip install 'fewstep[runtime,serve]'`."""
METHODS_LINE = "reflow slimflow instaflow guidance consistency progressive dmd meanflow shortcut"


class ClearErrors(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # one line and where to look, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line: its first word that is not an option."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in {c.name for c in COMMANDS} else None


def _missing_extra(sub: argparse._SubParsersAction, command: Command, error: ImportError) -> None:
    """A stand-in for a subcommand whose dependencies are not installed: any use says what to install."""
    p = sub.add_parser(command.name, help=command.help, add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    message = (f"`fewstep {command.name}` needs the {command.extra} extra ({error.name or error} is not installed): "
               f"{install_hint(command.extra)}")  # fmt: skip

    def run(_args: argparse.Namespace) -> int:
        raise MissingExtra(message)

    p.set_defaults(run=run)


def build_parser(argv: Sequence[str] | None = None, full: bool = False) -> argparse.ArgumentParser:
    """The `fewstep` parser. Only the subcommand in `argv` is built for real (others are listed by name and help);
    `full=True` builds every one (the CLI reference page)."""
    parser = ClearErrors(prog="fewstep", description=DESCRIPTION.format(methods=METHODS_LINE),
                         formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"fewstep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ClearErrors)
    chosen = None if full else _chosen(list(argv if argv is not None else sys.argv[1:]))
    for command in COMMANDS:
        if not full and command.name != chosen:
            sub.add_parser(command.name, help=command.help, add_help=False)  # listed; built when chosen
            continue
        try:
            module = importlib.import_module(command.module)
        except ImportError as e:
            if full or (e.name or "").startswith("fewstep"):
                raise
            _missing_extra(sub, command, e)
            continue
        module.register(sub, command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as e:  # bad input: one clear line, no traceback (FEWSTEP_DEBUG=1 shows it)
        if os.environ.get("FEWSTEP_DEBUG"):
            raise
        print(f"fewstep {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fewstep {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`fewstep info | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
