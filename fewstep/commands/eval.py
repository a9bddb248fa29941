"""fewstep eval: domain FID / KID and prompt adherence at several sampler settings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fewstep.commands import Command, add_command
from fewstep.commands.config_flags import count
from fewstep.core.fsio import atomic_write_text
from fewstep.evaluation.evaluate import DEFAULT_SETTINGS, Setting, evaluate

EPILOG = """examples:
  fewstep eval shapes32-teacher --out runs/eval-teacher                  # 50-step CFG and 1/2/4-step baselines
  fewstep eval runs/x/model.safetensors --setting euler:4:3 --setting heun:8:1 --n 256
  fewstep eval runs/digits/model.safetensors --dataset digits
  fewstep eval MODEL --inception-weights pt_inception-2015-12-05.pth     # FID-Inception (needs torch-fidelity)

A setting is SAMPLER:STEPS:GUIDANCE (guidance 1 = no CFG). Without Inception weights the score is a *domain*
FID in the feature space of the judge trained on the built-in data, and is labelled so. Prompt i uses seed i
for every setting. Writes eval.json and one sample grid per setting into --out."""


def register(sub: argparse._SubParsersAction, command: Command) -> None:
    p = add_command(sub, command, EPILOG)
    p.add_argument("model", help="checkpoint path, run directory or shipped model name")
    p.add_argument("--dataset", choices=("shapes", "digits"), default="shapes",
                   help="the built-in set whose held-out captions are the prompts and whose judge scores them "
                   "(default shapes)")  # fmt: skip
    p.add_argument("--n", type=int, default=512, help="prompts (= images per setting), default 512")
    p.add_argument("--setting", action="append", default=[], help="SAMPLER:STEPS:GUIDANCE (repeatable)")
    p.add_argument("--judge", help="judge checkpoint (default: the shipped one for --dataset)")
    p.add_argument("--inception-weights", help="local Inception-v3 weights for FID-Inception")
    p.add_argument("--out", default="runs/eval", help="output directory (default runs/eval)")
    p.add_argument("--threads", type=count(1), help="torch CPU threads")
    p.set_defaults(run=run)


def format_table(result: dict) -> str:
    head = (
        f"| setting | NFE | {result['feature_space']} | KID x1e3 | adherence | ms/image |\n|---|---|---|---|---|---|\n"
    )
    rows = "".join(
        f"| {s['label']} | {s['nfe']} | {s['fid']:.2f} | {1e3 * s['kid_mean']:.2f} | {100 * s['adherence']:.1f}% "
        f"| {s['ms_per_image']:.1f} |\n"
        for s in result["systems"]
    )
    return head + rows


def run(args: argparse.Namespace) -> int:
    import torch  # train extra

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n < 10:
        raise ValueError(f"--n must be >= 10 for FID/KID to mean anything; got {args.n}")
    settings = tuple(Setting.parse(s) for s in args.setting) or DEFAULT_SETTINGS
    result = evaluate(args.model, args.dataset, args.n, settings, args.judge, args.inception_weights, args.out)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval.json", json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    print(f"wrote {out / 'eval.json'} and sample grids in {out}")
    return 0
