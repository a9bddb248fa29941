"""fewstep distill-decoder: a tiny (TAESD-like) image decoder trained to reproduce a latent model's VAE decoder."""

from __future__ import annotations

import argparse
import json

from fewstep.commands import Command, add_command
from fewstep.commands.config_flags import add_run_flags, resolve_run_config
from fewstep.compress.tiny_decoder import DecoderDistillConfig, distill_decoder
from fewstep.compress.trainer import RESUMABLE_CHANGES

EPILOG = """At one or two denoiser steps the VAE decoder dominates latency. The tiny decoder learns the VAE
decoder's images (L1) on VAE latents of dataset images; the run ends with eval.json: PSNR against the VAE
decoder and against the real images, and ms per image of both decoders.

examples:
  fewstep distill-decoder --teacher /data/my-sd-pipeline --dataset imagefolder --data-path /data/imgs --out runs/taesd
  fewstep export runs/student --tiny-decoder runs/taesd --decoder tiny --out bundles/student
  fewstep generate bundles/student --decoder vae --prompt "a lighthouse"     # the bundle keeps both"""


def register(sub: argparse._SubParsersAction, command: Command) -> None:
    p = add_command(sub, command, EPILOG)
    add_run_flags(p, DecoderDistillConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_run_config(DecoderDistillConfig, args, RESUMABLE_CHANGES)
    if cfg is None:
        return 0
    path = distill_decoder(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    print(json.dumps(json.loads((path.parent / "eval.json").read_text()), indent=2))
    print(f"tiny decoder saved to {path}; bundle it: fewstep export STUDENT --tiny-decoder {path} --out BUNDLE")
    return 0
