"""fewstep distill METHOD: train a 1-4 step student from a teacher (resumable, torchrun-ready).

Each method is a subcommand with exactly the settings it reads (`fewstep distill METHOD --help`); the methods
and their configs come from `fewstep.compress.method_registry`.
"""

from __future__ import annotations

import argparse

from fewstep.commands import Command, add_command
from fewstep.commands.config_flags import add_run_flags, resolve_run_config
from fewstep.compress.distill import distill
from fewstep.compress.distributed import is_main
from fewstep.compress.method_registry import Method, methods
from fewstep.compress.trainer import RESUMABLE_CHANGES

EPILOG = """examples:
  fewstep pairs --out runs/pairs
  fewstep distill slimflow --pairs runs/pairs --student student-s --out runs/slimflow
  fewstep distill consistency --student-steps 4 --out runs/lcm
  fewstep distill progressive --start-steps 32 --student-steps 2 --steps 800 --out runs/pd
  fewstep distill guidance --then-progressive --start-steps 16 --student-steps 4 --out runs/gd4
  fewstep distill reflow --resume --out runs/reflow                   # continue a killed run, same settings
  fewstep distill reflow --resume --out runs/reflow --steps 4000      # ... and train it further
  torchrun --nproc_per_node 2 -m fewstep.cli distill reflow --pairs runs/pairs --out runs/r2   # data parallel
  fewstep distill dmd --pairs runs/pairs --student same --student-steps 4 --out runs/dmd4
  fewstep distill dmd --print-config > dmd.yaml; fewstep distill dmd --config dmd.yaml --out runs/dmd

`fewstep distill METHOD --help` lists that method's settings (the docs' method pages have the equations).
The student checkpoint (OUT/model.safetensors) records its sampler rule, timesteps and guidance mode:
`fewstep generate OUT/model.safetensors --prompt ...` uses its own schedule."""

METHOD_EPILOG = """--student takes a preset (`fewstep info`), 'same' (the teacher's architecture) or a UNet config
.json; --init scratch | teacher | sliced (teacher weights cut to the student's widths by channel importance) | auto |
a student checkpoint. --resume --out RUN continues RUN with the settings it saved (--steps and the
other settings that do not change the weights' trajectory may be given anew)."""


def register(sub: argparse._SubParsersAction, command: Command) -> None:
    p = add_command(sub, command, EPILOG)
    per_method = p.add_subparsers(dest="method_name", metavar="METHOD", required=True, parser_class=type(p))
    for m in methods():
        about = f"{m.summary}. From: {m.paper}." if m.paper else m.summary
        mp = per_method.add_parser(m.name, help=m.summary, description=about, epilog=METHOD_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        add_run_flags(mp, m.config)
        mp.set_defaults(run=run, method=m)


def run(args: argparse.Namespace) -> int:
    method: Method = args.method
    cfg = resolve_run_config(method.config, args, RESUMABLE_CHANGES)
    if cfg is None:
        return 0
    path = distill(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    if is_main():  # under torchrun every rank returns here; one says it
        print(f"student saved to {path}; try: fewstep generate {path} --prompt 'a red circle on the left'")
    return 0
