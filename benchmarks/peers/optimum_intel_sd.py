"""optimum-intel's `OVStableDiffusionPipeline` (OpenVINO, the engine behind FastSD CPU) on a diffusers pipeline
directory, beside diffusers' own torch pipeline in the same process: latency at 512x512 batch 1 and output
identity on the same latents.

Runs in its own environment (`bash scripts/install_optimum_intel_env.sh`: optimum-intel pins a transformers and
diffusers that fewstep's do not match), so it imports neither fewstep nor anything fewstep needs. The OpenVINO
IR directories are made beforehand by `optimum-cli export openvino` (see benchmarks/real_size_peers.py, which
runs this script as a subprocess and merges its rows). Prints one JSON row per system on stdout.

    .venv-optimum-intel/bin/python benchmarks/peers/optimum_intel_sd.py --pipeline DIR \
        --ov fp32=DIR_FP32 --ov int8=DIR_INT8 --steps 1,2,4
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

PROMPT = "a red circle"


def peak_rss_gb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: started as a subprocess, ru_maxrss would carry
    the parent's peak across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024**2, 2)
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)  # images in [0, 1]


def run_all(pipe, latents: torch.Tensor, steps_list: list[int], runs: int) -> tuple[dict, dict]:
    from diffusers import LCMScheduler

    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images: dict[int, np.ndarray] = {}

    def once(steps: int) -> None:
        with torch.no_grad():
            images[steps] = pipe(PROMPT, num_inference_steps=steps, guidance_scale=1.0, height=512, width=512,
                                 latents=latents.clone(), output_type="np").images[0]  # fmt: skip

    once(1)  # warm-up: first-call allocations and, for OpenVINO, nothing left to compile
    seconds: dict[str, list[float]] = {}
    for steps in steps_list:
        seconds[str(steps)] = []
        for _ in range(runs):
            t0 = time.perf_counter()
            once(steps)
            seconds[str(steps)].append(round(time.perf_counter() - t0, 2))
    return seconds, images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", type=Path, required=True, help="diffusers pipeline directory (the student)")
    ap.add_argument("--ov", action="append", default=[], help="NAME=DIR of an optimum-cli OpenVINO export")
    ap.add_argument("--steps", default="1,2,4")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    steps_list = [int(s) for s in args.steps.split(",")]
    torch.set_num_threads(os.cpu_count() or 1)
    latents = torch.randn((1, 4, 64, 64), generator=torch.Generator().manual_seed(0))

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.pipeline, safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True)  # fmt: skip
    seconds, reference = run_all(pipe, latents, steps_list, args.runs)
    print(json.dumps({"system": "diffusers StableDiffusionPipeline + LCMScheduler (torch eager fp32, optimum env)",
                      "seconds": seconds, "peak_rss_gb": peak_rss_gb()}), flush=True)  # fmt: skip
    del pipe
    gc.collect()

    from optimum.intel import OVStableDiffusionPipeline

    for item in args.ov:
        name, ov_dir = item.split("=", 1)
        t0 = time.perf_counter()
        # dynamic shapes, optimum-intel's default: its static `reshape` assumes CFG (a UNet batch of 2) for a UNet
        # without a guidance embedding, and this student samples without CFG
        pipe = OVStableDiffusionPipeline.from_pretrained(ov_dir, compile=True, local_files_only=True)
        load_s = round(time.perf_counter() - t0, 2)
        try:  # OpenVINO's CPU plugin computes in bf16 by default where the CPU has AMX or avx512_bf16
            hint = str(pipe.unet.request.get_property("INFERENCE_PRECISION_HINT"))
        except Exception as e:  # a figure to report, not a reason to stop
            hint = f"unknown ({type(e).__name__})"
        seconds, images = run_all(pipe, latents, steps_list, args.runs)
        print(json.dumps({"system": f"optimum-intel OVStableDiffusionPipeline {name} + LCMScheduler",
                          "seconds": seconds, "load_and_compile_s": load_s, "unet_inference_precision": hint,
                          "psnr_db_vs_diffusers_torch": {str(s): round(psnr(images[s], reference[s]), 2)
                                                         for s in steps_list},
                          "peak_rss_gb": peak_rss_gb()}), flush=True)  # fmt: skip
        del pipe
        gc.collect()


if __name__ == "__main__":
    main()
