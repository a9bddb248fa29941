"""fewstep pairs: build the trajectory-pair cache that reflow, SlimFlow, InstaFlow and DMD learn from."""

from __future__ import annotations

import argparse

from fewstep.commands import Command, add_command
from fewstep.commands.config_flags import add_run_flags, resolve_run_config
from fewstep.compress.pairs import PairsConfig, build_pairs

EPILOG = """examples:
  fewstep pairs --out runs/pairs                                  # 8192 pairs of the shapes teacher, CFG 3, Heun 16
  fewstep pairs --out runs/pairs                                  # again after a kill: finishes the missing shards
  torchrun --nproc_per_node 2 -m fewstep.cli pairs --out runs/pairs   # shards split over processes by rank
  fewstep pairs --teacher runs/teacher --guidance 1 --n 4096 --out runs/pairs-w1

The teacher checkpoint's sha256, the caption set, CFG scale, solver, steps and seed form the cache key; a
directory holding pairs of another key is refused. Then: fewstep distill reflow --pairs runs/pairs --out ..."""


def register(sub: argparse._SubParsersAction, command: Command) -> None:
    p = add_command(sub, command, EPILOG)
    add_run_flags(p, PairsConfig, resume=False, out_help="cache directory (created; a killed run's is finished)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_run_config(PairsConfig, args)
    if cfg is None:
        return 0
    out = build_pairs(cfg, args.out, progress=not args.no_progress)
    print(f"pairs in {out}; next: fewstep distill slimflow --pairs {out} --out runs/slimflow")
    return 0
