"""fewstep bench: latency of an engine bundle (p50/p90/p99, images/s, per stage, cold start, memory, edge profiles),
side by side with the torch student and the teacher at its many-step CFG setting."""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

from fewstep.commands import Command, add_command
from fewstep.commands.config_flags import count
from fewstep.core.errors import install_hint
from fewstep.core.fsio import atomic_write_text
from fewstep.core.manifest import Manifest
from fewstep.core.shipped import SHIPPED
from fewstep.runtime.bench import (
    DEFAULT_PROMPTS,
    EDGE_PROFILES,
    bench_batches,
    cold_start,
    machine,
    percentiles,
    probe_timeout,
)
from fewstep.runtime.generator import Generator

COLD_START_RUNS = 10  # batch-1 latencies a cold-start probe times after its first image (at most --runs)

EPILOG = """examples:
  fewstep bench bundles/prog4                                  # best engine that loads here, batch 1,4,8
  fewstep bench bundles/prog4 --engine onnx-fp32 --batch-sizes 1,8 --runs 100 --out bench.json
  fewstep bench bundles/prog4 --edge --teacher shapes32-teacher   # + emulated devices, + the 50-step teacher
  fewstep bench bundles/prog4 --coreml-compute-units CPU_AND_NE   # on Apple hardware

Edge profiles run the bundle in a fresh process with a thread count and an address-space cap of a typical
device; they emulate the device's cores and memory, NOT its speed (labelled as such in the output).
The torch rows run the student's checkpoint (and the teacher) the way a diffusers pipeline would: torch eager,
torch text encoder, same prompts and seeds."""


def _ints(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; got {text!r}") from None


def register(sub: argparse._SubParsersAction, command: Command) -> None:
    p = add_command(sub, command, EPILOG)
    p.add_argument("bundle", help="engine bundle directory (fewstep export)")
    p.add_argument("--engine", help="engine id from the manifest (default: the first that loads here)")
    p.add_argument(
        "--decoder",
        choices=("vae", "tiny"),
        default=None,
        help="latent bundles: the image decoder to run (default: the bundle's default_decoder)",
    )
    p.add_argument("--batch-sizes", type=_ints, default=[1, 4, 8], help="comma-separated (default 1,4,8)")
    p.add_argument("--runs", type=count(1), default=50, help="timed runs per batch size (default 50)")
    p.add_argument("--warmup", type=count(0), default=5, help="untimed runs first (default 5)")
    p.add_argument("--threads", type=count(0), default=0, help="engine threads (default: the backend's)")
    p.add_argument("--edge", action="store_true", help="also run the emulated edge profiles")
    p.add_argument("--no-torch", action="store_true", help="skip the torch student comparison")
    p.add_argument("--teacher", default="auto",
                   help="teacher to compare at its default steps and CFG: a checkpoint/shipped name, 'auto' (the "
                        "bundle's teacher when it is a shipped model) or 'none'")  # fmt: skip
    p.add_argument("--teacher-runs", type=count(0), default=3, help="timed teacher runs at batch 1 (default 3)")
    p.add_argument("--coreml-compute-units", choices=("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"),
                   help="CoreML engines on Apple hardware")  # fmt: skip
    p.add_argument("--out", help="write the full result as JSON here")
    p.set_defaults(run=run)


def _torch_rows(manifest: Manifest, args: argparse.Namespace, prompt: str) -> list[dict]:
    """The student's checkpoint (and the teacher) run the way a diffusers pipeline would: torch eager."""
    import torch  # train extra: the comparison rows run the torch models

    from fewstep.models.pipeline import TorchPipeline  # train extra (torch, diffusers)

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    targets = []
    if not args.no_torch:
        targets.append(("torch student (eager, its own schedule)", manifest.model.source, None, args.runs))
    teacher = manifest.model.teacher if args.teacher == "auto" else args.teacher
    if args.teacher == "auto" and teacher not in SHIPPED:
        teacher = None
    if teacher and teacher != "none":
        targets.append((f"torch teacher {teacher} (default steps, CFG)", teacher, 50, args.teacher_runs))
    for label, source, steps, runs in targets:
        pipe = TorchPipeline.from_checkpoint(source)
        pipe.generate([prompt], [0], steps=steps)  # warm-up (and prompt cache)
        times = []
        for r in range(runs):
            t0 = time.perf_counter()
            pipe.generate([prompt], [r + 1], steps=steps)
            times.append(time.perf_counter() - t0)
        rows.append({"system": label, "batch": 1, "runs": runs, **percentiles(times)})
    return rows


def run(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.warmup < 0 or not args.batch_sizes or min(args.batch_sizes) < 1:
        raise ValueError("--runs must be >= 1, --warmup >= 0 and every batch size >= 1")
    options = {"compute_units": args.coreml_compute_units} if args.coreml_compute_units else {}
    gen = Generator.from_bundle(args.bundle, engine=args.engine, decoder=args.decoder, threads=args.threads or None,
                                **options)  # fmt: skip
    entry = gen.engine_entry
    result = {
        "bundle": str(args.bundle),
        "model": gen.manifest.model.name,
        "engine": entry.id,
        "backend": entry.backend,
        "precision": entry.precision,
        "threads": args.threads or "backend default",
        "sampler": {
            "rule": gen.sampler.rule,
            "timesteps": list(gen.sampler.schedule(None).tolist()),
            "guidance": gen.guidance_mode,
        },
        "machine": machine(),
        "batches": bench_batches(gen, args.batch_sizes, args.runs, args.warmup),
    }
    probe_runs = min(args.runs, COLD_START_RUNS)
    timeout = probe_timeout(result["batches"], probe_runs)
    result["cold_start"] = cold_start(args.bundle, entry.id, args.threads, runs=probe_runs, timeout=timeout)
    if args.edge:
        result["edge_profiles"] = [
            {"profile": p.name, "emulated": p.note + "; this CPU's speed, not the device's",
             **cold_start(args.bundle, entry.id, p.threads, p.memory_mb, probe_runs, timeout)}
            for p in EDGE_PROFILES
        ]  # fmt: skip
    if importlib.util.find_spec("torch") is None:
        result["torch"] = []
        result["torch_skipped"] = f"no torch here: the torch comparison rows need {install_hint('train')}"
    else:
        result["torch"] = _torch_rows(gen.manifest, args, DEFAULT_PROMPTS[0])
    b1 = next((r for r in result["batches"] if r["batch"] == 1), None)
    if b1:
        for row in result["torch"]:
            row["runtime_speedup"] = round(row["p50_ms"] / b1["p50_ms"], 2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


def table(r: dict) -> str:
    m = r["machine"]
    lines = [f"{r['model']}: engine {r['engine']} ({r['backend']}, {r['precision']}), {r['sampler']['rule']} "
             f"{len(r['sampler']['timesteps']) - (0 if r['sampler']['rule'] == 'consistency' else 1)} step(s), "
             f"guidance {r['sampler']['guidance']}; {m.get('cpu')} {' '.join(m.get('isa', []))}, "
             f"{m['cores']} cores, threads {r['threads']}",
             f"  {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'img/s':>8}  stages (p50 ms)"]  # fmt: skip
    for b in r["batches"]:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in b["stages_p50_ms"].items())
        lines.append(f"  {b['batch']:>5} {b['p50_ms']:>9.2f} {b['p90_ms']:>9.2f} {b['p99_ms']:>9.2f} "
                     f"{b['images_per_s']:>8.3g}  {stages}")  # fmt: skip
    c = r["cold_start"]
    if c.get("ok"):
        lines.append(f"  cold start: first image {c['first_image_s']:.2f} s after process start (bundle loaded at "
                     f"{c['load_s']:.2f} s), peak RSS {c['peak_rss_mb']:.0f} MB")  # fmt: skip
    else:
        lines.append(f"  cold start failed: {c.get('error')}")
    for e in r.get("edge_profiles", []):
        state = (f"first image {e['first_image_s']:.2f} s, p50 {e['p50_ms']:.2f} ms, peak RSS {e['peak_rss_mb']:.0f} MB"
                 if e.get("ok") else f"FAILS: {e.get('error')}")  # fmt: skip
        lines.append(f"  edge {e['profile']:<14} ({e['emulated']}): {state}")
    if "torch_skipped" in r:
        lines.append(f"  torch rows skipped: {r['torch_skipped']}")
    for t in r["torch"]:
        lines.append(f"  {t['system']}: p50 {t['p50_ms']:.1f} ms at batch 1 -> runtime is "
                     f"{t.get('runtime_speedup', float('nan')):.1f}x faster")  # fmt: skip
    return "\n".join(lines)
