"""Gates every engine must pass before it is written into a bundle.

- parity: the final images the runtime makes with the engine (its text encoder, sampler rule and guidance
  mode included) against the torch student's, same prompts and seeds; PSNR in dB on [-1, 1] images mapped to
  [0, 1], with a floor per precision;
- speed: an fp16 / int8 engine must be faster than the fp32 engine of the same backend on this machine,
  both timed in one process (medians): interleaved runs when both fit in memory together, one engine after the
  other when they are SD-size (two such engines at once would double the export's peak memory).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from fewstep.core.imaging import psnr
from fewstep.runtime.engine import Engine

DEFAULT_MIN_PSNR = {"fp32": 60.0, "fp16": 40.0, "bf16": 30.0, "int8": 30.0, "int8w": 35.0, "int4w": 25.0,
                    "palette4": 25.0}  # fmt: skip


@dataclass(frozen=True)
class GateConfig:
    min_psnr: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIN_PSNR))
    parity_prompts: int = 32  # prompts (one seed each) whose final images are compared
    speed: bool = True  # off: record the timing but never refuse (e.g. exporting for another machine)
    min_speedup: float = 1.05  # a non-fp32 engine must be this much faster than fp32 (5%: beyond timing noise)
    speed_batch: int = 8
    speed_runs: int = 40


def parity_gate(images: np.ndarray, reference: np.ndarray, precision: str, config: GateConfig) -> dict:
    floor = config.min_psnr.get(precision, DEFAULT_MIN_PSNR.get(precision, 30.0))
    value = psnr(images, reference)
    result = {"psnr_db": round(value, 2) if np.isfinite(value) else 999.0, "min_psnr_db": floor}
    result["passed"] = bool(value >= floor)
    if not result["passed"]:
        result["reason"] = (
            f"final-image PSNR {value:.1f} dB vs the torch student is below the {precision} floor {floor} dB"
        )
    return result


def side_by_side_ms(engines: dict[str, Engine], inputs: dict[str, np.ndarray], runs: int) -> dict[str, float]:
    """Median latency of each engine on the same inputs, runs interleaved so that machine noise hits all alike."""
    for e in engines.values():  # warm-up
        for _ in range(3):
            e.run(inputs)
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(runs):
        for k, e in engines.items():
            t0 = time.perf_counter()
            e.run(inputs)
            times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def alone_ms(engine: Engine, inputs: dict[str, np.ndarray], runs: int) -> float:
    """Median latency of one engine (warm-up first), for engines too big to hold beside another."""
    return side_by_side_ms({"engine": engine}, inputs, runs)["engine"]


def speed_gate(engine: Engine, fp32: Engine, inputs: dict[str, np.ndarray], config: GateConfig) -> dict:
    ms = side_by_side_ms({"engine": engine, "fp32": fp32}, inputs, config.speed_runs)
    return speed_verdict(ms["engine"], ms["fp32"], len(inputs["t"]), config, "interleaved")


def speed_verdict(engine_ms: float, fp32_ms: float, batch: int, config: GateConfig, timed: str) -> dict:
    """The speed gate's record from two medians; `timed` says how they were measured."""
    speedup = fp32_ms / engine_ms
    result = {
        "batch": batch,
        "ms": round(engine_ms, 3),
        "fp32_ms": round(fp32_ms, 3),
        "speedup_vs_fp32": round(speedup, 3),
        "min_speedup": config.min_speedup,
        "enforced": config.speed,
        "timed": timed,
    }
    result["passed"] = bool(speedup >= config.min_speedup) or not config.speed
    if speedup < config.min_speedup:
        note = f"{speedup:.2f}x the fp32 engine's speed at batch {batch} on this machine"
        result["reason"] = ("not faster than fp32: " if config.speed else "warning (gate off): ") + note
    return result


def speed_inputs(calibration: list[dict[str, np.ndarray]], batch: int) -> dict[str, np.ndarray]:
    """A realistic batch for timing: calibration rows (the sampler's real inputs) stacked to `batch`."""
    rows: dict[str, list[np.ndarray]] = {}
    n = 0
    for item in calibration:
        for k, v in item.items():
            rows.setdefault(k, []).append(v)
        n += len(item["t"])
        if n >= batch:
            break
    stacked = {k: np.concatenate(v)[:batch] for k, v in rows.items()}
    if len(stacked["t"]) < batch:  # fewer calibration rows than the batch: repeat them
        reps = -(-batch // len(stacked["t"]))
        stacked = {k: np.concatenate([v] * reps)[:batch] for k, v in stacked.items()}
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in stacked.items()}
