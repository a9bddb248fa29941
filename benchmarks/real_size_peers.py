"""Side by side at real size, one process, one machine: the same SD-family student run by

- diffusers' own `StableDiffusionPipeline` (torch, eager fp32) with the student's fused UNet and diffusers'
  `LCMScheduler` (the consistency sampling rule with diffusers' own timesteps and noise: latency, not identity);
- fewstep's torch path (`TorchPipeline`: the same diffusers UNet, VAE and CLIP modules, fewstep's sampler);
- fewstep's runtime on each engine of the bundle (ONNX Runtime, OpenVINO), with output identity against the torch
  path: PSNR of the decoded images from the same seed, and the max abs error of one denoiser call on the same
  inputs.

    python benchmarks/real_size_peers.py --run /tmp/fewstep-real/sd15/lora --bundle /tmp/fewstep-real/sd15/bundle \
        --engines onnx-fp32,openvino-int4w          # -> benchmarks/results/real-size/peers-sd15.json

With `--optimum-intel-python` (the interpreter of `bash scripts/install_optimum_intel_env.sh`'s environment) the
same run adds optimum-intel's `OVStableDiffusionPipeline`: the student's fused UNet is saved as a diffusers pipeline
directory, `optimum-cli export openvino` makes its fp32 and int8 IR (export time and peak RSS measured), and
`benchmarks/peers/optimum_intel_sd.py` times them beside diffusers' torch pipeline on the same latents (identity:
PSNR against it). optimum's ONNX Runtime pipeline is not part of it yet.

Latency is process-warm (one 1-step warm-up per system, then `--runs` timed generations per step count), one
512x512 image, batch 1. Engines are loaded one at a time and dropped before the next. `peak_rss_gb` is the
process's peak so far (each row includes those before it in the same process).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fewstep.runtime.bench import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "real-size"
PROMPT = "a red circle"


def peak_rss_gb() -> float:
    return round(peak_rss_mb() * 1024 * 1024 / 1e9, 2)  # VmHWM, in the GB the chain's stages use


def timed_runs(fn, steps_list: list[int], runs: int) -> dict[str, list[float]]:
    fn(1)  # warm-up: first-call allocations, OpenVINO compilation, thread pools
    out: dict[str, list[float]] = {}
    for steps in steps_list:
        for _ in range(runs):
            t0 = time.perf_counter()
            fn(steps)
            out.setdefault(str(steps), []).append(round(time.perf_counter() - t0, 2))
    return out


def diffusers_pipeline(pipe_dir: Path, unet, steps_list: list[int], runs: int) -> dict:
    import torch
    from diffusers import LCMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, unet=unet, safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)  # fmt: skip
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def run(steps: int) -> None:
        with torch.no_grad():
            pipe(PROMPT, num_inference_steps=steps, guidance_scale=1.0, height=512, width=512,
                 generator=torch.Generator().manual_seed(0), output_type="np")  # fmt: skip

    return {"system": "diffusers StableDiffusionPipeline + LCMScheduler (torch eager fp32)",
            "seconds": timed_runs(run, steps_list, runs), "peak_rss_gb": peak_rss_gb()}  # fmt: skip


def save_student_pipeline(unet, base: Path, out: Path) -> Path:
    """A diffusers pipeline directory of the student: its fused UNet saved, every other component linked from
    the base pipeline (what a user would hand to a peer tool)."""
    if not (out / "unet" / "config.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        for part in base.iterdir():
            if part.name != "unet" and not (out / part.name).exists():
                (out / part.name).symlink_to(part.resolve())
        unet.save_pretrained(out / "unet.partial", safe_serialization=True)
        (out / "unet.partial").rename(out / "unet")
    return out


def optimum_intel_rows(python: Path, student_dir: Path, work: Path, steps: str, runs: int) -> list[dict]:
    """Export the student with optimum-cli (fp32 and int8 weights) in the optimum-intel environment, then time
    its pipelines there; -> one row per system."""
    cli = python.parent / "optimum-cli"
    exports: dict[str, dict] = {}
    for fmt in ("fp32", "int8"):
        out = work / f"optimum-ov-{fmt}"
        if not (out / "model_index.json").exists():
            t0 = time.perf_counter()
            proc = subprocess.run(["/usr/bin/time", "-f", "%M", str(cli), "export", "openvino", "--model",
                                   str(student_dir), "--task", "text-to-image", "--weight-format", fmt, str(out)],
                                  capture_output=True, text=True)  # fmt: skip
            if proc.returncode != 0:
                raise RuntimeError(f"optimum-cli export ({fmt}) failed:\n{proc.stderr[-3000:]}")
            peak_kb = int(proc.stderr.strip().splitlines()[-1])
            info = {"export_s": round(time.perf_counter() - t0, 1), "export_peak_rss_gb": round(peak_kb / 1024**2, 2)}
            (out / "fewstep-export-figures.json").write_text(json.dumps(info))  # kept for a rerun that reuses it
        exports[fmt] = json.loads((out / "fewstep-export-figures.json").read_text())
        unet_bin = out / "unet" / "openvino_model.bin"
        exports[fmt]["unet_engine_mb"] = round(unet_bin.stat().st_size / 1024**2)
        print(json.dumps({f"optimum-cli export {fmt}": exports[fmt]}), flush=True)
    script = Path(__file__).resolve().parent / "peers" / "optimum_intel_sd.py"
    cmd = [str(python), str(script), "--pipeline", str(student_dir), "--steps", steps, "--runs", str(runs)]
    cmd += [a for fmt in exports for a in ("--ov", f"{fmt}={work / f'optimum-ov-{fmt}'}")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the optimum-intel peer failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    for row in rows:
        for fmt, info in exports.items():
            if row["system"].startswith(f"optimum-intel OVStableDiffusionPipeline {fmt} "):
                row.update(info)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="the distillation run (its model.safetensors)")
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument(
        "--engines",
        default="onnx-fp32,openvino-int4w",
        help="engine ids of --bundle; DIR::ID takes engine ID from bundle DIR",
    )
    ap.add_argument("--steps", default="1,2,4")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--name", default="sd15")
    ap.add_argument("--optimum-intel-python", type=Path, help="python of the optimum-intel environment")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fewstep-peers"), help="scratch for the optimum peers")
    args = ap.parse_args()
    steps_list = [int(s) for s in args.steps.split(",")]

    import torch

    from fewstep.core.imaging import psnr
    from fewstep.models.contract import Cond
    from fewstep.models.model_kinds import network_of
    from fewstep.models.pipeline import TorchPipeline
    from fewstep.runtime.generator import Generator

    torch.set_num_threads(os.cpu_count() or 1)
    ref = TorchPipeline.from_checkpoint(args.run / "model.safetensors")
    unet = network_of(ref.model)  # the fused diffusers UNet inside fewstep's flow-contract wrapper
    spec_pipe = Path(ref.spec["text_encoder"]["path"])
    if args.optimum_intel_python:
        student_dir = save_student_pipeline(unet, spec_pipe, args.work / "student-pipeline")
    rows = [diffusers_pipeline(spec_pipe, unet, steps_list, args.runs)]
    print(json.dumps(rows[-1]), flush=True)

    images: dict[int, np.ndarray] = {}

    def torch_run(steps: int) -> None:
        with torch.no_grad():
            cond = ref.encoder.encode([PROMPT])
            images[steps] = ref.decode(ref.sample(cond, [0], ref_times(steps), 1.0)).numpy()

    def ref_times(steps: int):
        from fewstep.models.pipeline import sampling_times

        return sampling_times(ref.spec, steps)

    rows.append({"system": "fewstep torch path (same diffusers modules, fewstep sampler)",
                 "seconds": timed_runs(torch_run, steps_list, args.runs), "peak_rss_gb": peak_rss_gb()})  # fmt: skip
    print(json.dumps(rows[-1]), flush=True)

    for spec in args.engines.split(","):
        bundle_dir, _, engine_id = spec.rpartition("::")
        gen = Generator.from_bundle(Path(bundle_dir) if bundle_dir else args.bundle, engine=engine_id)
        got: dict[int, np.ndarray] = {}

        def engine_run(steps: int, gen=gen, got=got) -> None:
            got[steps] = gen.generate_float([PROMPT], [0], steps=steps)

        row = {"system": f"fewstep runtime {engine_id}", "seconds": timed_runs(engine_run, steps_list, args.runs)}
        row["stage_s_last_call"] = {k: round(v, 2) for k, v in gen.stage_times.items()}
        if gen.decoder is not None:  # which backend decoded (beside a bf16 engine: OpenVINO in bf16)
            row["decoder_backend"] = gen.decoder.backend
        row["psnr_db_vs_torch"] = {str(s): round(float(psnr(got[s], images[s])), 2) for s in steps_list}
        # one denoiser call on identical inputs: the runtime's prompt encoding, seeded noise, the first time
        cond = gen.text.encode([PROMPT])
        x = np.random.default_rng(0).standard_normal((1, *gen.shape)).astype(np.float32)
        t = np.full(1, float(ref_times(1)[0]), np.float32)
        v_engine = gen.denoiser.run({"x": x, "t": t, **cond})["v"]
        tc = Cond(**{k: torch.from_numpy(v) for k, v in cond.items() if k in Cond.__dataclass_fields__})
        with torch.no_grad():
            v_torch = ref.model(torch.from_numpy(x), torch.from_numpy(t), tc).numpy()
        row["denoiser_max_abs_err"] = float(np.abs(v_engine - v_torch).max())
        row["denoiser_output_abs_max"] = float(np.abs(v_torch).max())
        row["peak_rss_gb"] = peak_rss_gb()
        rows.append(row)
        print(json.dumps(row), flush=True)
        del gen, engine_run
        gc.collect()

    if args.optimum_intel_python:
        del ref, unet
        gc.collect()
        rows += optimum_intel_rows(args.optimum_intel_python, student_dir, args.work, args.steps, args.runs)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    result = {"config": args.name, "date": time.strftime("%Y-%m-%d"), "commit": commit.strip(),
              "machine": f"{platform.machine()} {os.cpu_count()} cores", "command": "python " + " ".join(sys.argv),
              "prompt": PROMPT, "image": "512x512, batch 1", "runs": args.runs, "rows": rows}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"peers-{args.name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
