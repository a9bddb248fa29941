"""fewstep export-optimum: a latent student -> an ONNX pipeline directory for optimum's ORTDiffusionPipeline."""

from __future__ import annotations

import argparse

from fewstep.commands import Command, add_command
from fewstep.export.optimum import OptimumExport

EPILOG = """examples:
  fewstep export-optimum runs/sd15-progressive --out sd15-2step-onnx
  # then, in an environment with optimum-onnx (no fewstep needed):
  #   from optimum.onnxruntime import ORTDiffusionPipeline
  #   pipe = ORTDiffusionPipeline.from_pretrained("sd15-2step-onnx")
  #   image = pipe("a red circle", num_inference_steps=2, guidance_scale=1.0).images[0]

from fewstep.commands import Command, add_command

What is written: optimum's own layout (model_index.json, scheduler/, tokenizer*/, text_encoder*/, unet/ or
transformer/, vae_decoder/; one model.onnx + config.json each). Text encoders, tokenizers and VAE are the teacher
pipeline's; the denoiser is the student, predicting a velocity, with a flow scheduler whose set_timesteps(k)
reproduces the student's Euler schedule exactly (SD3: FlowMatchEulerDiscreteScheduler; SD/SDXL: first-order
DPMSolverMultistepScheduler on flow predictions). fewstep.json in the directory gives the call arguments
(num_inference_steps = the student's steps; guidance_scale = 1 for students with guidance baked in).
Supported: Euler students (reflow, slimflow, instaflow, progressive, dmd, guidance with guidance baked in) of
SD 1.x/2.x, SDXL and SD3 pipeline teachers. Consistency students and students with a guidance input are refused
(no diffusers scheduler / pipeline reproduces them): export those to a bundle with `fewstep export`."""


def register(sub: argparse._SubParsersAction, command: Command) -> None:
    p = add_command(sub, command, EPILOG)
    p.add_argument("model", help="a student checkpoint or run directory of a diffusers pipeline teacher")
    p.add_argument("--out", required=True, help="the pipeline directory to write (replaced if it is an earlier one)")
    p.add_argument("--force", action="store_true", help="replace an --out that is not an earlier optimum export")
    p.add_argument("--quiet", action="store_true", help="print only the last line")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:

    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    record = OptimumExport(args.model, args.out, args.force, log).run()
    call = ", ".join(f"{k}={v}" for k, v in record["call"].items())
    print(f"load with ORTDiffusionPipeline.from_pretrained({args.out!r}); call pipe(prompt, {call})")
    return 0
