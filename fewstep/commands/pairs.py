"""fewstep pairs: build the trajectory-pair cache that reflow, SlimFlow, InstaFlow and DMD learn from."""

from __future__ import annotations

import argparse
from dataclasses import fields

from fewstep.commands.run_flags import count

HELP = "solve the teacher's ODE for many (noise, prompt) pairs, sharded and resumable"
EPILOG = """examples:
  fewstep pairs --out runs/pairs                                  # 8192 pairs of the shapes teacher, CFG 3, Heun 16
  fewstep pairs --out runs/pairs                                  # again after a kill: finishes the missing shards
  torchrun --nproc_per_node 2 -m fewstep.cli pairs --out runs/pairs   # shards split over processes by rank
  fewstep pairs --teacher runs/teacher --guidance 1 --n 4096 --out runs/pairs-w1

The teacher checkpoint's sha256, the caption set, CFG scale, solver, steps and seed form the cache key; a
directory holding pairs of another key is refused. Then: fewstep distill reflow --pairs runs/pairs --out ..."""


def register(sub: argparse._SubParsersAction) -> None:
    from fewstep.compress.pairs import PairsConfig

    p = sub.add_parser("pairs", help=HELP, description=HELP, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", required=True, help="cache directory (created; resumed when it exists)")
    p.add_argument("--threads", type=count(1), help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    for f in fields(PairsConfig):
        typ = {"int": int, "float": float}.get(str(f.type), str)
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f"cfg_{f.name}", type=typ, default=None,
                       help=f"(default: {f.default})")  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from fewstep.compress.pairs import PairsConfig, build_pairs
    from fewstep.core.config import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(PairsConfig, None, {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")})
    out = build_pairs(cfg, args.out, progress=not args.no_progress)
    print(f"pairs in {out}; next: fewstep distill slimflow --pairs {out} --out runs/slimflow")
    return 0
