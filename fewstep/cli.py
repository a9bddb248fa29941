"""`fewstep`: one command for the whole chain. `fewstep SUBCOMMAND --help` explains each step."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from fewstep import __version__
from fewstep.core.errors import USER_ERRORS

COMMANDS = (
    "info",
    "train_teacher",
    "pairs",
    "distill",
    "distill_decoder",
    "export",
    "export_optimum",
    "generate",
    "bench",
    "serve",
    "eval",
    "report",
    "train_judge",
    "demo",
)
DESCRIPTION = """fewstep distills slow many-step image generators into fast 1-4 step students,
exports them to engines and measures latency next to quality.

the built-in chain, in order:
  fewstep info                      presets, shipped models, parameter counts and FLOPs
  fewstep train-teacher --out DIR   train a flow-matching teacher (the shapes teacher ships with fewstep)
  fewstep pairs --out DIR           teacher ODE solutions (noise, prompt) -> image, for pair-based methods
  fewstep distill METHOD --out DIR  a 1-4 step student: reflow slimflow instaflow guidance consistency progressive dmd
  fewstep distill-decoder --teacher PIPELINE --out DIR   a tiny (TAESD-like) image decoder for latent models
  fewstep export MODEL --out DIR    an engine bundle: ONNX / OpenVINO / CoreML / TensorRT, fp32 / fp16 / int8, gated
  fewstep export-optimum MODEL --out DIR   a latent student as an ONNX pipeline for optimum's ORTDiffusionPipeline
  fewstep generate MODEL --prompt P write a PNG grid (MODEL: a checkpoint path or 'shapes32-teacher')
  fewstep bench BUNDLE              latency per batch size and stage, cold start, memory, edge profiles, vs torch
  fewstep serve BUNDLE              HTTP server: /v1/generate, OpenAI-style images API, /metrics, a web page
  fewstep eval MODEL                domain FID / KID and prompt adherence at several step counts
  fewstep report SWEEP.yaml         every system (teacher, students, engines) measured alike: latency vs FID chart
  fewstep demo                      the whole chain on the built-in default
"""


class _ClearErrors(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own message and where to look (no 25-line usage dump)
        self.exit(2, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _ClearErrors(prog="fewstep", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fewstep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ClearErrors)
    for name in COMMANDS:
        importlib.import_module(f"fewstep.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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


if __name__ == "__main__":
    sys.exit(main())
