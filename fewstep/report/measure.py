"""Measure one system: images for quality (domain FID / KID / adherence), batch-1 latency, images/s, size, memory.

Torch systems run through `TorchPipeline`, engine systems through the torch-free `Generator` the server uses, so
a row of the report is what a user would get by deploying that system. Peak memory and cold start come from a
fresh process per system (the sweep's own process holds every model it has seen).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewstep.core.sampling_rules import Sampler, guidance_mode, resolve_guidance
from fewstep.core.verdict_record import read_verdict, verdict_label
from fewstep.models.loading import model_sha256, resolve_checkpoint
from fewstep.models.pipeline import TorchPipeline
from fewstep.report.sweep import SweepConfig, Unit
from fewstep.runtime import Generator
from fewstep.runtime.bench import cold_start, percentiles, run_probe


class UnsupportedRequest(ValueError):
    """The system cannot take the sweep's request (a step count or guidance scale it refuses)."""


def _probe(generate, steps: int | None, guidance: float | None) -> None:
    """One tiny request first: a step count or guidance the model refuses fails here, before the long pass."""
    try:
        generate(["a red circle"], [0], steps, guidance)
    except ValueError as e:
        raise UnsupportedRequest(str(e)) from None


@dataclass
class Loaded:
    """A system ready to generate: `generate(prompts, seeds, batch) -> uint8 (N, H, W, C)` + what it is."""

    generate: object
    info: dict


def nfe(sampler: Sampler | dict, steps: int, guidance: float) -> int:
    """Network evaluations per image: CFG runs two branches per step unless w = 1."""
    per_step = 2 if guidance_mode(sampler) == "cfg" and guidance != 1.0 else 1
    return steps * per_step


def _steps_of(sampler: Sampler | dict, steps: int | None) -> int:
    return steps if steps is not None else Sampler.parse(sampler).steps(None)


def load_torch(cfg: SweepConfig, unit: Unit, cache: dict) -> Loaded:
    """`cache`: models loaded earlier in this sweep (a teacher at six step counts is read and set up once)."""
    import torch  # train extra
    import transformers  # train extra

    transformers.utils.logging.disable_progress_bar()  # a bar per loaded text encoder would bury the sweep's own

    if cfg.latency.threads:
        torch.set_num_threads(cfg.latency.threads)
    model = cfg.resolve(unit.system.model)
    if ("torch", model) not in cache:
        cache.clear()  # one model held at a time: systems of a model are consecutive in a sweep
        cache["torch", model] = TorchPipeline.from_checkpoint(model)
    pipe = cache["torch", model]
    sampler = pipe.spec["sampler"]
    _probe(pipe.generate, unit.steps, unit.system.guidance)
    w = resolve_guidance(sampler, unit.system.guidance)
    steps = _steps_of(sampler, unit.steps)

    def generate(prompts: list[str], seeds: list[int], batch: int) -> np.ndarray:
        return pipe.generate(prompts, seeds, unit.steps, unit.system.guidance, batch_size=batch)

    path = _checkpoint_file(model)
    info = {
        "backend": "torch",
        "precision": "fp32",  # the pipeline computes in float32 whatever the stored dtype
        "params": pipe.spec.get("params"),
        "method": _method(pipe.spec),
        "rule": Sampler.parse(sampler).rule,
        "guidance_mode": guidance_mode(sampler),
        "guidance": w,
        "steps": steps,
        "nfe": nfe(sampler, steps, w),
        "size_bytes": path.stat().st_size if path else None,
        "artifact": str(path) if path else str(model),
        "verdict": _verdict_of(path),
    }
    return Loaded(generate, info)


def _verdict_of(path: Path | None) -> str:
    """The equal-steps verdict `fewstep distill` wrote beside this checkpoint ('-' without one or for other weights)."""
    verdict = read_verdict(path) if path else None
    return verdict_label(verdict if verdict and verdict.get("student_sha256") == model_sha256(path) else None)


def _method(spec: dict) -> str:
    return spec.get("training", {}).get("method") if spec.get("role") == "student" else "teacher"


def _checkpoint_file(model: str) -> Path | None:

    try:
        return resolve_checkpoint(model)
    except (ValueError, FileNotFoundError):
        return None


def load_engine(cfg: SweepConfig, unit: Unit, cache: dict) -> Loaded:

    bundle = cfg.resolve(unit.system.bundle, output=True)
    if ("engine", bundle, unit.engine) not in cache:
        cache.clear()
        cache["engine", bundle, unit.engine] = Generator.from_bundle(bundle, engine=unit.engine,
                                                                     threads=cfg.latency.threads or None)  # fmt: skip
    gen = cache["engine", bundle, unit.engine]
    sampler = gen.sampler
    _probe(gen.generate, unit.steps, unit.system.guidance)
    w = resolve_guidance(sampler, unit.system.guidance)
    steps = _steps_of(sampler, unit.steps)

    def generate(prompts: list[str], seeds: list[int], batch: int) -> np.ndarray:
        return gen.generate(prompts, seeds, unit.steps, unit.system.guidance, batch_size=batch)

    entry = gen.engine_entry
    info = {
        "backend": entry.backend,
        "precision": entry.precision,
        "params": gen.manifest.model.params,
        "method": gen.manifest.model.method or "",
        "rule": Sampler.parse(sampler).rule,
        "guidance_mode": guidance_mode(sampler),
        "guidance": w,
        "steps": steps,
        "nfe": nfe(sampler, steps, w),
        "size_bytes": entry.size_bytes,
        "artifact": f"{bundle}:{entry.id}",
        "verified": entry.verified,
        "verdict": verdict_label(gen.manifest.model.extra.get("equal_steps_verdict")),
    }
    return Loaded(generate, info)


def batch1_latency(loaded: Loaded, prompts: list[str], runs: int, warmup: int) -> dict:
    """End-to-end batch-1 requests (text encoding + every step + conversion to 8-bit RGB)."""
    seconds = []
    for r in range(warmup + runs):
        t0 = time.perf_counter()
        loaded.generate([prompts[r % len(prompts)]], [r], 1)
        if r >= warmup:
            seconds.append(time.perf_counter() - t0)
    return percentiles(seconds)


_TORCH_CHILD = """
import json, resource, sys, time
t_start = float(sys.argv[1])
try:
    import torch
    from fewstep.models.pipeline import TorchPipeline
    if int(sys.argv[3]):
        torch.set_num_threads(int(sys.argv[3]))
    pipe = TorchPipeline.from_checkpoint(sys.argv[2])
    t_loaded = time.time()
    steps = int(sys.argv[4]) or None
    w = float(sys.argv[5]) if sys.argv[5] else None
    pipe.generate(["a red circle on the left"], [0], steps, w)
    out = {"ok": True, "load_s": t_loaded - t_start, "first_image_s": time.time() - t_start}
except BaseException as e:
    out = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
from fewstep.runtime.bench import peak_rss_mb
out["peak_rss_mb"] = peak_rss_mb()
print("FEWSTEP_BENCH " + json.dumps(out))
"""


def fresh_process(cfg: SweepConfig, unit: Unit, timeout: float = 600) -> dict:
    """Peak RSS, load time and time to the first image of a fresh process serving this system (batch 1)."""
    if unit.system.kind == "engine":
        bundle = cfg.resolve(unit.system.bundle, output=True)
        return cold_start(bundle, unit.engine, threads=cfg.latency.threads, runs=0, timeout=timeout)
    args = [str(cfg.resolve(unit.system.model)), str(cfg.latency.threads), str(unit.steps or 0),
            "" if unit.system.guidance is None else str(unit.system.guidance)]  # fmt: skip
    return run_probe(_TORCH_CHILD, args, cfg.latency.threads, timeout)
