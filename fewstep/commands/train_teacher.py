"""fewstep train-teacher: train a flow-matching teacher (resumable)."""

from __future__ import annotations

import argparse

from fewstep.commands.run_flags import add_run_flags, resolve_run_config

HELP = "train a flow-matching teacher on shapes, digits or your image folder"
EPILOG = """examples:
  fewstep train-teacher --out runs/teacher                       # the built-in shapes teacher (~1-2 h on 2 cores)
  fewstep train-teacher --out runs/teacher --resume              # continue a killed run exactly where it stopped
  fewstep train-teacher --dataset digits --steps 2000 --out runs/digits
  fewstep train-teacher --dataset imagefolder --data-path my_images/ --out runs/mine
  fewstep train-teacher --config my.yaml --out runs/x            # YAML with any of the fields below

Every field of the config (YAML key = flag without dashes, '-' -> '_') is listed with its default by
`fewstep train-teacher --print-config`. The run directory gets config.yaml, metrics.jsonl,
model.safetensors (EMA weights), state.safetensors (for --resume), samples/*.png, training_curve.png."""


def register(sub: argparse._SubParsersAction) -> None:
    from fewstep.compress.teacher import TeacherConfig

    p = sub.add_parser(
        "train-teacher",
        help=HELP,
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_flags(p, TeacherConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fewstep.compress.teacher import TeacherConfig, train_teacher

    cfg = resolve_run_config(TeacherConfig, args)
    if cfg is None:
        return 0
    path = train_teacher(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    print(f"teacher saved to {path}; generate with: fewstep generate {path} --prompt 'a red circle on the left'")
    return 0
