"""fewstep train-teacher: train a flow-matching teacher (resumable)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..config import load_config

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
    from ..compress.teacher import TeacherConfig

    p = sub.add_parser(
        "train-teacher",
        help=HELP,
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=False, help="run directory (created)")
    p.add_argument("--config", help="YAML file with config fields; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    for f in fields(TeacherConfig):
        typ = {"int": int, "float": float}.get(getattr(f.type, "__name__", str(f.type)), None)
        typ = typ or (int if f.type in ("int",) else float if f.type in ("float",) else str)
        p.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f"cfg_{f.name}",
            type=typ,
            default=None,
            help=f"(default: {f.default})",
        )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..compress.teacher import TeacherConfig, train_teacher
    from ..config import to_yaml

    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}
    cfg = load_config(TeacherConfig, args.config, overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if not args.out:
        raise ValueError("--out DIR is required (the run directory)")
    if args.threads:
        torch.set_num_threads(args.threads)
    path = train_teacher(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    print(f"teacher saved to {path}; generate with: fewstep generate {path} --prompt 'a red circle on the left'")
    return 0
