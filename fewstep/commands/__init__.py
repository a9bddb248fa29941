"""One module per `fewstep` subcommand, each with `register(subparsers, command)`; `COMMANDS` lists them with their
one-line help and the pip extra they need, so that `fewstep --help` imports none of them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str  # `fewstep NAME`
    module: str  # the module that builds its parser and runs it
    help: str  # one line for `fewstep --help`
    extra: str  # the pip extra it needs: runtime | serve | train | export


def _c(name: str, help: str, extra: str) -> Command:
    return Command(name, f"fewstep.commands.{name.replace('-', '_')}", help, extra)


COMMANDS = (
    _c("info", "list presets and shipped models, or describe a checkpoint or an engine bundle", "runtime"),
    _c("train-teacher", "train a flow-matching teacher on shapes, digits or your image folder", "train"),
    _c("pairs", "solve the teacher's ODE for many (noise, prompt) pairs, sharded and resumable", "train"),
    _c(
        "distill",
        "distill a teacher into a fast (and smaller) student: reflow, slimflow, instaflow, guidance, "
        "consistency, progressive, dmd",
        "train",
    ),
    _c(
        "distill-decoder",
        "distil a latent model's VAE decoder into a tiny TAESD-like decoder (the one-step latency fix)",
        "train",
    ),
    _c(
        "export",
        "export a model to an engine bundle (ONNX Runtime, OpenVINO, CoreML, TensorRT) with parity and speed gates",
        "export",
    ),
    _c(
        "export-optimum",
        "export a latent student as an ONNX pipeline directory that optimum's ORTDiffusionPipeline loads",
        "export",
    ),
    _c(
        "generate",
        "generate a PNG grid from a model or bundle for prompts and seeds (same seed -> same image)",
        "runtime",
    ),
    _c(
        "bench",
        "measure a bundle's latency per batch size and stage, cold start, memory, edge profiles; vs torch and teacher",
        "runtime",
    ),
    _c(
        "serve",
        "serve a bundle over HTTP: /v1/generate, OpenAI-style /v1/images/generations, /metrics, a web page at /",
        "serve",
    ),
    _c("eval", "measure domain FID, KID and prompt adherence of a model at several step counts", "train"),
    _c(
        "report",
        "measure quality (domain FID / KID, adherence) and latency of many systems; draw the Pareto chart",
        "train",
    ),
    _c(
        "train-judge", "train a judge (shapes attribute classifier or digit classifier) used by `fewstep eval`", "train"
    ),
    _c(
        "demo",
        "run the whole chain on the built-in default: distill, export, bench and a latency-vs-FID report",
        "train",
    ),
)


def add_command(sub: argparse._SubParsersAction, command: Command, epilog: str = "") -> argparse.ArgumentParser:
    """The subcommand's parser, its description the one-line help, `epilog` shown after the flags."""
    parser: argparse.ArgumentParser = sub.add_parser(
        command.name, help=command.help, description=command.help, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    return parser
