"""fewstep train-teacher: train a flow-matching teacher (resumable)."""

from __future__ import annotations

import argparse

from fewstep.commands import Command, add_command
from fewstep.commands.config_flags import add_run_flags, resolve_run_config
from fewstep.compress.teacher import TeacherConfig, train_teacher
from fewstep.compress.trainer import RESUMABLE_CHANGES

EPILOG = """examples:
  fewstep train-teacher --out runs/teacher                       # the built-in shapes teacher (~1-2 h on 2 cores)
  fewstep train-teacher --out runs/teacher --resume              # continue a killed run exactly where it stopped
  fewstep train-teacher --out runs/teacher --resume --steps 9000 # ... and train it further
  fewstep train-teacher --dataset digits --steps 2000 --out runs/digits
  fewstep train-teacher --dataset imagefolder --data-path my_images/ --out runs/mine
  fewstep train-teacher --print-config > my.yaml; fewstep train-teacher --config my.yaml --out runs/x

The run directory gets config.yaml, metrics.jsonl, model.safetensors (EMA weights), state.safetensors (for
--resume), samples/*.png and training_curve.png."""


def register(sub: argparse._SubParsersAction, command: Command) -> None:
    p = add_command(sub, command, EPILOG)
    add_run_flags(p, TeacherConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_run_config(TeacherConfig, args, RESUMABLE_CHANGES)
    if cfg is None:
        return 0
    path = train_teacher(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    print(f"teacher saved to {path}; generate with: fewstep generate {path} --prompt 'a red circle on the left'")
    return 0
