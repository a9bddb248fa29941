"""fewstep train-judge: train the classifier behind prompt adherence and domain FID."""

from __future__ import annotations

import argparse
import json

from fewstep.commands import Command, add_command
from fewstep.commands.config_flags import count
from fewstep.evaluation.train_judge import train_judge

EPILOG = """The shipped judges were made with:
  fewstep train-judge shapes --out fewstep/weights/shapes32-judge.safetensors
  fewstep train-judge digits --out fewstep/weights/digits32-judge.safetensors
Their held-out accuracy is stored in the file and printed by `fewstep info`."""


def register(sub: argparse._SubParsersAction, command: Command) -> None:
    p = add_command(sub, command, EPILOG)
    p.add_argument("kind", choices=("shapes", "digits"), help="which judge")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--n-train", type=int, default=20000, help="training images (shapes; digits uses its train split)")
    p.add_argument("--epochs", type=int, default=8, help="passes over the training images")
    p.add_argument("--seed", type=int, default=0, help="weights, data order and shapes images (default 0)")
    p.add_argument("--threads", type=count(1), help="torch CPU threads")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch  # train extra

    if args.threads:
        torch.set_num_threads(args.threads)
    acc = train_judge(args.kind, args.out, n_train=args.n_train, epochs=args.epochs, seed=args.seed)
    print(json.dumps({"judge": args.kind, "out": args.out, "held_out_accuracy": acc}, indent=2))
    return 0
