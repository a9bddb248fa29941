"""fewstep generate: prompts x seeds -> a PNG grid."""

from __future__ import annotations

import argparse
from pathlib import Path

from fewstep.commands import Command, add_command
from fewstep.commands.config_flags import count
from fewstep.core.errors import require
from fewstep.core.imaging import captioned_grid, save_png
from fewstep.core.prompts import read_prompts_file
from fewstep.core.sampling_rules import Sampler
from fewstep.runtime.generator import Generator

MAX_IMAGES = 4096  # one grid file; a million-line prompts file is refused before any work

EPILOG = """examples:
  fewstep generate shapes32-teacher --prompt "a red circle to the left of a blue square" --out grid.png
  fewstep generate runs/teacher/model.safetensors --prompts-file prompts.txt --seeds 0,1,2,3 --steps 4
  fewstep generate shapes32-teacher --prompt "a green cross at the top" --steps 50 --guidance 1   # no CFG
  fewstep generate bundles/slimflow --prompt "a red circle" --engine onnx-fp32     # a bundle, torch-free runtime

MODEL is a checkpoint file, a run directory, or a shipped model name (`fewstep info` lists them).
Rows of the grid are prompts, columns are seeds."""


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds must be comma-separated integers, e.g. 0,1,2; got {text!r}"
        ) from None


def register(sub: argparse._SubParsersAction, command: Command) -> None:
    p = add_command(sub, command, EPILOG)
    p.add_argument("model", help="checkpoint path, run directory, shipped model name, or an engine bundle directory")
    p.add_argument("--engine", help="for a bundle: the engine id to run (default: the first that loads here)")
    p.add_argument(
        "--decoder",
        choices=("vae", "tiny"),
        default=None,
        help="latent bundles: the image decoder to run (default: the bundle's default_decoder)",
    )
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    p.add_argument("--prompts-file", help="UTF-8 text file, one prompt per line")
    p.add_argument(
        "--seeds", type=_seeds, default=[0, 1, 2, 3], help="comma-separated seeds per prompt (default 0,1,2,3)"
    )
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's own, 50 for teachers)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale w, 1 = off (default: the model's own)")
    p.add_argument("--sampler", choices=("euler", "heun"), default=None, help="ODE solver (default: the model's own)")
    p.add_argument("--out", default="grid.png", help="output PNG (default grid.png)")
    p.add_argument("--scale", type=int, default=4, help="upscale factor of the grid's tiles (default 4)")
    p.add_argument("--threads", type=count(1), help="CPU threads (torch, or the bundle's engine)")
    p.add_argument(
        "--max-images",
        type=count(1),
        default=MAX_IMAGES,
        help=f"refuse to start when prompts x seeds is more images than this (default {MAX_IMAGES}); "
        "a safety cap against a wrong file, not a limit of the tool",
    )
    p.set_defaults(run=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += read_prompts_file(args.prompts_file, max_prompts=args.max_images)
    if not prompts:
        raise ValueError("give at least one --prompt or a --prompts-file")
    return prompts


def run(args: argparse.Namespace) -> int:
    prompts = read_prompts(args)
    if len(prompts) * len(args.seeds) > args.max_images:
        raise ValueError(f"{len(prompts):,} prompt(s) x {len(args.seeds)} seed(s) = "
                         f"{len(prompts) * len(args.seeds):,} images, more than --max-images {args.max_images:,}; "
                         "use fewer prompts or seeds, or raise --max-images")  # fmt: skip
    rows = [p for p in prompts for _ in args.seeds]
    seeds = [s for _ in prompts for s in args.seeds]
    if (Path(args.model) / "manifest.json").is_file():  # an engine bundle: the torch-free runtime
        if args.sampler:
            raise ValueError("an engine bundle samples with its own rule; leave --sampler out")
        gen = Generator.from_bundle(args.model, engine=args.engine, decoder=args.decoder, threads=args.threads)
        images = gen.generate(rows, seeds, steps=args.steps, guidance=args.guidance)
        sampler, source = gen.sampler, f"engine {gen.engine_entry.id}"
    else:
        require("torch", "train", "generating from a checkpoint (a bundle needs only the runtime)")
        import torch  # train extra

        from fewstep.models.pipeline import TorchPipeline  # train extra (torch, diffusers)

        if args.decoder:
            raise ValueError("--decoder chooses between a bundle's image decoders; a checkpoint decodes with its VAE")
        if args.threads:
            torch.set_num_threads(args.threads)
        pipe = TorchPipeline.from_checkpoint(args.model)
        images = pipe.generate(rows, seeds, steps=args.steps, guidance=args.guidance, sampler=args.sampler)
        sampler, source = pipe.spec["sampler"], "torch"
    path = save_png(captioned_grid(images, prompts, nrow=len(args.seeds), scale=args.scale), args.out)
    sampler = Sampler.parse(sampler)
    w = sampler.resolve_guidance(args.guidance)
    rule = args.sampler or sampler.rule
    g = sampler.guidance
    guidance = f"guidance baked in (w {g.baked_scale or '?'})" if g.mode == "none" else f"guidance {w:g} ({g.mode})"
    print(f"wrote {path}: {len(prompts)} prompt(s) x {len(args.seeds)} seed(s), {rule} {sampler.steps(args.steps)} "
          f"step(s), {guidance}, {source}")  # fmt: skip
    return 0
