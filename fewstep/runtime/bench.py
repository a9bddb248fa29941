"""Latency of a bundle as the runtime serves it: warm-up, N runs per batch size, p50/p90/p99, images/s, per-stage
medians (text encoding, each denoiser step, decoding, PNG encoding); cold start and peak memory in a fresh
process; edge profiles (thread count + address-space cap) emulated on this CPU. numpy + stdlib only."""

from __future__ import annotations

import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fewstep.runtime.generator import Generator


@dataclass(frozen=True)
class EdgeProfile:
    """A device emulated on this CPU by its core count and memory; its speed is NOT emulated."""

    name: str
    threads: int
    memory_mb: int | None
    note: str


EDGE_PROFILES = (
    EdgeProfile("server-2t", 2, None, "2 threads, no memory cap"),
    EdgeProfile("edge-1t-1g", 1, 1024, "1 thread, 1 GiB address space (a small single-board computer)"),
    EdgeProfile("phone-1t-512m", 1, 512, "1 thread, 512 MiB address space (an app's memory budget on a phone)"),
)

DEFAULT_PROMPTS = (
    "a red circle on the left",
    "a picture of a small blue square above a green cross",
    "a yellow triangle in the top right corner",
    "a large magenta cross to the right of a cyan circle",
)


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = 1e3 * np.asarray(seconds)
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)} | {
        "mean_ms": round(float(ms.mean()), 3)
    }


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def bench_batches(gen: Generator, batch_sizes: list[int], runs: int, warmup: int,
                  prompts: tuple[str, ...] = DEFAULT_PROMPTS) -> list[dict[str, Any]]:  # fmt: skip
    """End-to-end latency per batch size (distinct prompts cached after warm-up, as a server sees repeats)."""
    rows = []
    for b in batch_sizes:
        p = [prompts[i % len(prompts)] for i in range(b)]
        totals: list[float] = []
        stages: dict[str, list[float]] = {}
        for r in range(warmup + runs):
            seeds = list(range(r * b, (r + 1) * b))
            t0 = time.perf_counter()
            images = gen.generate(p, seeds)
            t1 = time.perf_counter()
            encoded = [png_bytes(im) for im in images]
            t2 = time.perf_counter()
            if r < warmup:
                continue
            totals.append(t2 - t0)
            for k, v in {**gen.stage_times, "image_encode_png": t2 - t1}.items():
                stages.setdefault(k, []).append(v)
            assert all(encoded)
        stats = percentiles(totals)
        rows.append({
            "batch": b,
            **stats,
            "images_per_s": float(f"{b / (stats['p50_ms'] / 1e3):.3g}"),
            "stages_p50_ms": {k: round(1e3 * float(np.median(v)), 3) for k, v in stages.items()},
        })  # fmt: skip
    return rows


_CHILD = """
import json, resource, sys, time
t_start = float(sys.argv[1])
cap = int(sys.argv[4])
if cap:
    resource.setrlimit(resource.RLIMIT_AS, (cap << 20, cap << 20))
try:
    from fewstep.runtime import Generator
    gen = Generator.from_bundle(sys.argv[2], engine=sys.argv[3] or None, threads=int(sys.argv[5]) or None)
    t_loaded = time.time()
    gen.generate(["a red circle on the left"], [0])
    t_first = time.time()
    lat = []
    for i in range(int(sys.argv[6])):
        t0 = time.perf_counter()
        gen.generate(["a red circle on the left"], [i + 1])
        lat.append(time.perf_counter() - t0)
    lat.sort()
    out = {"ok": True, "engine": gen.engine_entry.id, "load_s": t_loaded - t_start,
           "first_image_s": t_first - t_start, "p50_ms": 1e3 * lat[len(lat) // 2] if lat else None}
except BaseException as e:
    out = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
from fewstep.runtime.bench import peak_rss_mb
out["peak_rss_mb"] = peak_rss_mb()
print("FEWSTEP_BENCH " + json.dumps(out))
"""


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM, which exec resets (ru_maxrss keeps the parent's peak
    across exec, so a child started from a large process would report the parent's)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass

    return round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1
    )


def cold_start(bundle: str | Path, engine: str | None = None, threads: int = 0, memory_mb: int | None = None,
               runs: int = 10, timeout: float = 300) -> dict[str, Any]:  # fmt: skip
    """A fresh Python process: start -> bundle loaded -> first image, then `runs` batch-1 latencies; peak RSS."""
    return run_probe(_CHILD, [str(bundle), engine or "", str(memory_mb or 0), str(threads), str(runs)], threads,
                     timeout)  # fmt: skip


def probe_timeout(batches: list[dict[str, Any]], runs: int) -> float:
    """Seconds a fresh process gets to load a bundle and make 1 + `runs` single images: 5 minutes plus three times
    what they take at the smallest measured batch (an SD-size engine needs ~30 s an image on a small CPU)."""
    smallest = min(batches, key=lambda r: r["batch"])
    return 300.0 + 3 * (1 + runs) * float(smallest["p50_ms"]) / 1e3


def run_probe(code: str, args: list[str], threads: int, timeout: float) -> dict[str, Any]:
    """Run a probe script in a fresh Python (argv[1] = its start time) and parse the `FEWSTEP_BENCH {json}` line
    it prints; times are rounded to ms. A probe that dies is {"ok": False, "error": ...}, never an exception."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads or os.cpu_count() or 1))
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(time.time()), *args], capture_output=True,
                              text=True, timeout=timeout, env=env)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("FEWSTEP_BENCH ")), None)
    if line is None:
        return {"ok": False, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    out: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    for k in ("load_s", "first_image_s", "p50_ms"):
        if out.get(k) is not None:
            out[k] = round(out[k], 3)
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cores": os.cpu_count()}  # fmt: skip
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name"))
        flags = set(next(ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")))
        info["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or platform.machine()
    return info
