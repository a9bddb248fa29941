"""The runtime and the server against their targets, each figure a ratio measured side by side in one run.

    python benchmarks/runtime_serving.py          # exports the two shipped students if their bundles are missing

1. runtime end to end vs bare engine calls (runtime overhead), 4-step student, batch 1;
2. runtime vs the torch student run like a diffusers pipeline (torch eager + torch text encoder), batch 1, with
   the engine the runtime picks by default and with each engine of --runtime-engines pinned (`torch-fp32`: the
   same network in torch eager inside the runtime, which tells the engine's share of the gain from the pipeline's);
3. the 1-step student end to end vs the 50-step CFG teacher in torch, batch 1, per engine of --one-step-engines
   (fp32 as the default export keeps it, and int8);
4. cold start: process start -> first image (default engine, then each non-torch engine of --runtime-engines);
5. server throughput at concurrency 8 with micro-batching vs without (max batch 1): `fewstep serve` as users
   run it (each server times the bundle's engines at its own max batch and serves the fastest: the batched and
   the unbatched server may pick different engines, both recorded), then with each engine of --serve-engines
   pinned by `--engine ID` on both sides;
6. a bounded load test: 2,000 requests from 48 clients against a queue of 16 and batches of 8 (2x what the
   server holds), twice: status codes and p50/p99 of the second round, the server's memory at start, after the
   first round and after the second.
Writes benchmarks/results/runtime/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fewstep.runtime.bench import machine

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "runtime"
PROMPT = "a red circle on the left"


def ensure_bundle(model: str, root: Path, name: str | None = None, flags: tuple[str, ...] = (),
                  engines: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """`fewstep export MODEL --out ROOT/NAME FLAGS` unless that bundle exists; then `--to torch --precision fp32`
    into it when `engines` asks for `torch-fp32` (a re-export keeps every engine it does not rebuild)."""
    out = root / (name or model)
    export = [sys.executable, "-m", "fewstep.cli", "export", model, "--out", str(out), "--quiet"]
    if not (out / "manifest.json").is_file():
        subprocess.run([*export, *flags], check=True)
    have = {e["id"] for e in json.loads((out / "manifest.json").read_text())["engines"]}
    if "torch-fp32" in engines and "torch-fp32" not in have:
        subprocess.run([*export, *flags, "--to", "torch", "--precision", "fp32"], check=True)
    return out


def timed(fn, runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def ms(x: list[float]) -> float:
    return round(1e3 * float(np.median(x)), 3)


def one_request_inputs(gen, prompt: str) -> dict[str, np.ndarray]:
    """The engine inputs of one denoiser call for one image (both CFG branches where the engine runs CFG)."""
    from fewstep.core.noise import seeded_noise_np
    from fewstep.core.sampling_rules import resolve_guidance

    cond = gen.text.encode([prompt])
    x, t = seeded_noise_np([0], gen.shape), np.ones(1, np.float32)
    if gen.guidance_mode == "embedded":
        cond["guidance"] = np.full(1, resolve_guidance(gen.sampler, None), np.float32)
    if gen.guidance_mode == "cfg":
        null = gen.text.encode([""])
        cond = {k: np.concatenate([null[k], v]) for k, v in cond.items()}
        x, t = np.concatenate([x, x]), np.concatenate([t, t])
    return {"x": x, "t": t, **cond}


def runtime_vs_bare_and_torch(bundle: Path, runs: int, pinned: tuple[str, ...] = ()) -> dict:
    """The default engine's row, plus one row per engine id in `pinned` (`Generator.from_bundle(engine=...)`),
    each against the same torch pipeline timing."""
    import torch

    from fewstep.models.pipeline import TorchPipeline
    from fewstep.runtime import Generator

    seeds = iter(range(10**6))
    rows = []
    for engine in (None, *pinned):
        gen = Generator.from_bundle(bundle, engine=engine)
        steps = len(gen.sampler["timesteps"]) - 1
        inputs = one_request_inputs(gen, PROMPT)
        end_to_end = timed(lambda g=gen: g.generate([PROMPT], [next(seeds)]), runs)
        bare = timed(lambda g=gen, i=inputs, n=steps: [g.denoiser.run(i) for _ in range(n)], runs)
        rows.append({"engine": gen.engine_entry["id"], "pinned": engine is not None, "steps": steps,
                     "runtime_ms": ms(end_to_end), "bare_engine_calls_ms": ms(bare),
                     "runtime_overhead": round(ms(end_to_end) / ms(bare) - 1, 3)})  # fmt: skip
        del gen
    torch.set_num_threads(2)
    pipe = TorchPipeline.from_checkpoint(Generator.from_bundle(bundle).manifest["model"]["source"])
    torch_ms = ms(timed(lambda: pipe.generate([PROMPT], [next(seeds)]), runs))
    for row in rows:
        row.update(torch_student_ms=torch_ms, runtime_speedup_vs_torch=round(torch_ms / row["runtime_ms"], 2))
    return {"bundle": str(bundle), **rows[0], "pinned_engines": rows[1:]}


def one_step_vs_teacher(bundle: Path, runs: int, engines: tuple[str, ...]) -> dict:
    """The 1-step student end to end with each engine of `engines`, against one timing of the 50-step CFG teacher."""
    import torch

    from fewstep.models.pipeline import TorchPipeline
    from fewstep.runtime import Generator

    seeds = iter(range(10**6))
    rows = []
    for engine in engines:
        gen = Generator.from_bundle(bundle, engine=engine)
        entry = gen.engine_entry
        student = timed(lambda g=gen: g.generate([PROMPT], [next(seeds)]), runs)
        rows.append(
            {
                "engine": entry["id"],
                "precision": entry["precision"],
                "student_ms": ms(student),
                "parity_psnr_db": entry["gates"]["parity"].get("psnr_db"),
                "speed_gate": entry["gates"].get("speed"),
            }
        )
        del gen
    torch.set_num_threads(2)
    teacher = TorchPipeline.from_checkpoint("shapes32-teacher")
    teacher_ms = ms(timed(lambda: teacher.generate([PROMPT], [next(seeds)], steps=50, guidance=3.0), 5, warmup=1))
    for row in rows:
        row.update(teacher_50_step_cfg_ms=teacher_ms, speedup=round(teacher_ms / row["student_ms"], 1))
    return {"bundle": str(bundle), "engines": rows}


def cold(bundle: Path, pinned: tuple[str, ...] = ()) -> dict:
    """Cold start of the default engine, and of each engine in `pinned` under "pinned_engines"."""
    from fewstep.runtime.bench import cold_start

    return {**cold_start(bundle, runs=3), "pinned_engines": [cold_start(bundle, e, runs=3) for e in pinned]}


class Server:
    """`fewstep serve` in its own process (as users run it), on a free loopback port."""

    def __init__(self, bundle: Path, **flags):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        args = [sys.executable, "-m", "fewstep.cli", "serve", str(bundle), "--port", str(self.port)]
        for k, v in flags.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        import httpx

        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                ready = httpx.get(self.url + "/readyz", timeout=1)
                if ready.status_code == 200:
                    self.engine = ready.json()["engine"]  # the engine the server actually runs
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def rss_mb(self) -> float:
        return int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def load(url: str, requests: int, concurrency: int) -> dict:
    import threading

    import httpx

    local = threading.local()  # one keep-alive connection per client thread, as real clients hold

    def one(i: int) -> tuple[int | str, float]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=60)
        t0 = time.perf_counter()
        try:
            code = local.client.post("/v1/generate", json={"prompt": PROMPT, "seed": i}).status_code
        except httpx.HTTPError as e:
            code = type(e).__name__
        return code, time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        codes, lat = zip(*pool.map(one, range(requests)), strict=True)
    wall = time.perf_counter() - t0
    counts = {str(c): codes.count(c) for c in sorted(set(codes), key=str)}
    ok = [t for t, c in zip(lat, codes, strict=True) if c == 200]
    return {"requests": requests, "concurrency": concurrency, "seconds": round(wall, 2), "status": counts,
            "images_per_s": round(codes.count(200) / wall, 1),
            "p50_ms_2xx": ms(ok) if ok else None,
            "p99_ms_2xx": round(1e3 * float(np.percentile(ok, 99)), 1) if ok else None}  # fmt: skip


def batching_gain(bundle: Path, engine: str | None = None) -> dict:
    """Throughput at concurrency 8 with micro-batching (max batch 8, 5 ms) vs without (max batch 1)."""
    flags = {"engine": engine} if engine else {}
    result = {}
    for label, batch in (("batched", 8), ("unbatched", 1)):
        with Server(bundle, max_batch=batch, max_wait_ms=5, max_queue=64, **flags) as s:
            load(s.url, 16, 8)  # warm-up
            result[label] = {"engine": s.engine, **load(s.url, 400, 8)}
    result["throughput_gain"] = round(result["batched"]["images_per_s"] / result["unbatched"]["images_per_s"], 2)
    return result


def serving(bundle: Path, other_engines: tuple[str, ...]) -> dict:
    """Batching gain of the server as it starts by default and with engines pinned (`fewstep serve --engine ID`),
    then a bounded load test on the default server."""
    result = {"default_engine": batching_gain(bundle)}
    for engine in other_engines:
        result[engine] = batching_gain(bundle, engine)
    with Server(bundle, max_batch=8, max_wait_ms=5, max_queue=16, timeout=10) as s:
        started = s.rss_mb()
        first = load(s.url, 2000, 48)  # 48 clients against 16 queue slots + 8 in the engine
        before = s.rss_mb()
        result["load_test"] = load(s.url, 2000, 48)  # the same again: is memory flat once every path ran?
        result["load_test"].update(
            engine=s.engine, rss_mb_at_start=round(started, 1), first_round_status=first["status"],
            rss_mb_before=round(before, 1), rss_mb_after=round(s.rss_mb(), 1),
        )  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", default="runs/bench-runtime")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument(
        "--runtime-engines",
        default="openvino-int8,torch-fp32",
        help="engines to pin for the runtime-vs-torch rows besides the default one (comma-separated; torch-fp32, the "
        "network in torch eager inside the same runtime, splits the speedup into engine and pipeline)",
    )
    parser.add_argument(
        "--one-step-engines",
        default="onnx-fp32,onnx-int8-ort",
        help="engines of the 1-step student timed against the teacher (its bundle is exported with the speed gate "
        "recording only, so an int8 engine that passed parity is kept even where it is not faster)",
    )
    parser.add_argument(
        "--serve-engines",
        default="onnx-int8-ort,openvino-int8",
        help="engines to pin on both servers and measure the batching gain on (comma-separated)",
    )
    args = parser.parse_args()
    root = Path(args.bundles)
    pinned = tuple(e for e in args.runtime_engines.split(",") if e)
    one_step = tuple(e for e in args.one_step_engines.split(",") if e)
    four = ensure_bundle("shapes32-progressive-4step", root, engines=pinned)
    one = ensure_bundle("shapes32-slimflow", root, "shapes32-slimflow-speed-gate-off", ("--speed-gate", "false"))
    result = {
        "machine": machine(),
        "runtime": runtime_vs_bare_and_torch(four, args.runs, pinned),
        "one_step_vs_teacher": one_step_vs_teacher(one, args.runs, one_step),
        "cold_start": cold(four, tuple(e for e in pinned if not e.startswith("torch"))),
        "serving": serving(four, tuple(e for e in args.serve_engines.split(",") if e)),
        "bench_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
