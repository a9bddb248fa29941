"""fewstep distill METHOD: train a 1-4 step student from a teacher (resumable, torchrun-ready)."""

from __future__ import annotations

import argparse

from fewstep.commands.run_flags import add_run_flags, resolve_run_config

HELP = "distill a teacher into a fast (and smaller) student: reflow, slimflow, instaflow, guidance, consistency, ..."
EPILOG = """methods (METHODS.md has the equations):
  reflow       k-rectified flow on teacher pairs: straighter paths, few Euler steps     needs --pairs
  slimflow     annealing reflow into a small student, then flow-guided distillation   needs --pairs; 1 step
               (--student-steps 4: stage 2 distils for 4 Euler steps, fewstep's few-step form)
  instaflow    one-step / k-step regression onto the (reflowed) teacher's pair images  needs --pairs
  guidance     CFG folded into a w input: one pass per step, guidance mode 'embedded'
               (--then-progressive true: then w-conditioned progressive rounds down to --student-steps)
  consistency  LCM-style consistency distillation; multistep sampling with re-noising
  progressive  repeated halving of steps, each round's student the next teacher
  dmd          distribution matching with a fake score (+ regression on pairs; DMD2: --reg-weight 0
               --fake-updates 5 [--adv-weight 0.1]; --student-steps 4: DMD2's multi-step generator,
               trained by backward simulation, sampled with re-noising)

examples:
  fewstep pairs --out runs/pairs
  fewstep distill slimflow --pairs runs/pairs --student student-s --out runs/slimflow
  fewstep distill consistency --student-steps 4 --out runs/lcm
  fewstep distill progressive --start-steps 32 --student-steps 2 --steps 800 --out runs/pd
  fewstep distill guidance --then-progressive true --start-steps 16 --student-steps 4 --out runs/gd4
  fewstep distill reflow --pairs runs/pairs --out runs/reflow --resume      # continue a killed run
  torchrun --nproc_per_node 2 -m fewstep.cli distill reflow --pairs runs/pairs --out runs/r2   # data parallel
  fewstep distill dmd --pairs runs/pairs --student same --student-steps 4 --out runs/dmd4
  fewstep distill dmd --print-config > dmd.yaml; fewstep distill dmd --config dmd.yaml --out runs/dmd

--student takes a preset (`fewstep info`), 'same' (the teacher's architecture) or a UNet config .json;
--init scratch | teacher | sliced (teacher weights cut to the student's widths by channel importance).
The student checkpoint (OUT/model.safetensors) records its sampler rule, timesteps and guidance mode:
`fewstep generate OUT/model.safetensors --prompt ...` uses its own schedule."""


def register(sub: argparse._SubParsersAction) -> None:
    from fewstep.compress.distill import METHODS, DistillConfig

    p = sub.add_parser("distill", help=HELP, description=HELP, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("method_name", metavar="METHOD", choices=METHODS, help=" | ".join(METHODS))
    add_run_flags(p, DistillConfig, skip=("method",))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fewstep.compress.distill import DistillConfig, distill

    cfg = resolve_run_config(DistillConfig, args, method=args.method_name)
    if cfg is None:
        return 0
    path = distill(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    from fewstep.compress.distributed import is_main

    if is_main():  # under torchrun every rank returns here; one says it
        print(f"student saved to {path}; try: fewstep generate {path} --prompt 'a red circle on the left'")
    return 0
